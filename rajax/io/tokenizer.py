"""The GPT-2 tokenizer, loaded offline-friendly (docs/paper.md §3).

``load_tokenizer(dir_or_hub_id)`` returns transformers' fast (tokenizers-backed) tokenizer with
``pad_token = eos_token`` when the checkpoint defines no pad token, as the original code does
(GPT-2: pad == eos == 50256). Sampling wants left padding (the rajax sequence layout is
``[left pad | prompt | response | pad]``), hence the default ``padding_side="left"``.

A directory needs ``tokenizer.json`` or ``vocab.json`` + ``merges.txt`` (never build a GPT2Tokenizer
with ``vocab_file=``: transformers 5 silently makes an empty tokenizer from it).
"""
from __future__ import annotations

import os
import pathlib

from rajax.core.errors import InvalidInput, MissingInput, one_line
from rajax.io import hub

_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json")  # any one: the repo is cached


def _err(what: str | None, name, reason: str) -> str:
    msg = f"{str(name)!r}: no tokenizer ({reason})" if reason.startswith("no such") else f"{str(name)!r}: {reason}"
    return f"{what} {msg}" if what else msg


def load_tokenizer(name_or_path, *, padding_side: str = "left", what: str | None = None):
    """A fast transformers tokenizer for a local directory or a hub id; pad = EOS if unset.

    ``what`` (e.g. ``"--tokenizer"``) prefixes error messages. Errors are one-line ``ValueError``
    (bad argument, unreachable hub) or ``FileNotFoundError`` (a local path that does not exist).
    """
    if padding_side not in ("left", "right"):
        raise InvalidInput(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    name = str(name_or_path)
    p = pathlib.Path(name).expanduser()
    if p.exists() and not p.is_dir():
        raise InvalidInput(_err(what, name, "is a file; pass the directory that holds tokenizer.json "
                                          "or vocab.json + merges.txt"))
    looks_local = os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1
    if not p.exists() and looks_local:
        raise MissingInput(_err(what, name, "no such directory"))
    if p.is_dir() and not ((p / "tokenizer.json").is_file() or (p / "vocab.json").is_file()):
        raise InvalidInput(_err(what, name, "the directory has neither tokenizer.json nor vocab.json"))

    offline_msg = ("not a local directory and the Hugging Face hub is unreachable (offline); pass a local "
                   "tokenizer directory")
    # A hub id: whether the hub answers is asked first, within seconds (hub.reachable, which also
    # honours HF_HUB_OFFLINE set at any time); unreachable, only the cache is read. transformers would
    # otherwise retry for about a minute before failing with the same message.
    local_only = not p.is_dir() and not hub.reachable()
    if local_only and not any(hub.in_cache(name, f) for f in _TOKENIZER_FILES):
        raise InvalidInput(_err(what, name, offline_msg))

    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(p) if p.is_dir() else name, local_files_only=local_only)
    except Exception as e:  # noqa: BLE001 - transformers/tokenizers raise many types for a bad directory
        if p.is_dir():
            raise InvalidInput(_err(what, name, f"{type(e).__name__}: {one_line(e)[:160]}")) from None
        offline = local_only or "offline" in repr(e).lower() or "connect" in repr(e).lower()
        reason = offline_msg if offline else "no such local directory or Hugging Face hub tokenizer"
        raise InvalidInput(_err(what, name, reason)) from None
    if not getattr(tok, "is_fast", False):
        raise InvalidInput(_err(what, name, "no fast (tokenizers) tokenizer could be built"))
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise InvalidInput(_err(what, name, "the tokenizer has neither a pad nor an EOS token"))
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def check_fits(tokenizer, vocab_size: int, *, tokenizer_name, model_name, tokenizer_flag: str = "--tokenizer",
               model_flag: str = "--policy", roles=("pad", "EOS")) -> None:
    """One line when ``tokenizer`` cannot feed a model with ``vocab_size`` embedding rows: more token
    ids (added tokens included) than rows, or pad / EOS ids outside the rows. Ids beyond the embedding
    would silently read wrong rows (or NaN), so every command checks at load time."""
    n = len(tokenizer)
    if n > vocab_size:
        raise InvalidInput(f"{tokenizer_flag} {tokenizer_name} has {n} tokens but {model_flag} {model_name} has "
                           f"{vocab_size} embedding rows; pass the tokenizer the model was trained with")
    ids = {"pad": tokenizer.pad_token_id, "EOS": tokenizer.eos_token_id}
    for role, i in ((r, ids[r]) for r in roles):
        if i is None or not 0 <= int(i) < vocab_size:
            raise InvalidInput(f"{tokenizer_flag} {tokenizer_name}: its {role} id {i} is not one of the "
                               f"{vocab_size} embedding rows of {model_flag} {model_name}")
