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


def _err(what: str | None, name, reason: str) -> str:
    msg = f"cannot load tokenizer from {str(name)!r}: {reason}"
    return f"{what}: {msg}" if what else msg


def load_tokenizer(name_or_path, *, padding_side: str = "left", what: str | None = None):
    """A fast transformers tokenizer for a local directory or a hub id; pad = EOS if unset.

    ``what`` (e.g. ``"--tokenizer"``) prefixes error messages. Errors are one-line ``ValueError``
    (bad argument, unreachable hub) or ``FileNotFoundError`` (a local path that does not exist).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    name = str(name_or_path)
    p = pathlib.Path(name).expanduser()
    if p.exists() and not p.is_dir():
        raise ValueError(_err(what, name, "is a file; pass the directory that holds tokenizer.json "
                                          "or vocab.json + merges.txt"))
    looks_local = os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1
    if not p.exists() and looks_local:
        raise FileNotFoundError(_err(what, name, "no such directory"))
    if p.is_dir() and not ((p / "tokenizer.json").is_file() or (p / "vocab.json").is_file()):
        raise ValueError(_err(what, name, "the directory has neither tokenizer.json nor vocab.json"))

    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(p) if p.is_dir() else name)
    except (OSError, ValueError) as e:
        if p.is_dir():
            raise ValueError(_err(what, name, f"{type(e).__name__}: {str(e).splitlines()[0]}")) from None
        offline = os.environ.get("HF_HUB_OFFLINE") or "offline" in repr(e).lower() or "connect" in repr(e).lower()
        reason = ("not a local directory and the Hugging Face hub is unreachable (offline); pass a local "
                  "tokenizer directory") if offline else "no such local directory or Hugging Face hub tokenizer"
        raise ValueError(_err(what, name, reason)) from None
    if not getattr(tok, "is_fast", False):
        raise ValueError(_err(what, name, "no fast (tokenizers) tokenizer could be built"))
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(_err(what, name, "the tokenizer has neither a pad nor an EOS token"))
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok
