"""Where checkpoints come from: a local directory or a Hugging Face hub id, resolved one way for every
model kind, and the tensors in it read one way (safetensors, a sharded index, or pytorch_model.bin).

Hub access goes through ``huggingface_hub``, which honours ``HF_HUB_OFFLINE`` and its cache. Every
failure is a one-line ``ValueError`` (or ``FileNotFoundError`` for a local path that does not exist)
that starts with the flag it came from (``what``, e.g. ``--policy``), so a user sees what to fix.
"""
from __future__ import annotations

import json
import os
import pathlib
import socket
import urllib.parse

import numpy as np

from rajax.core.errors import InvalidInput, MissingInput, one_line

# What a checkpoint snapshot needs: configs, tokenizer files and safetensors weights. The .bin
# weights are fetched only when a repo has no safetensors (repos that ship both are not fetched twice).
_SNAPSHOT = ["*.json", "*.safetensors", "*.txt", "*.model"]
_SNAPSHOT_BIN = ["*.json", "pytorch_model*.bin", "*.txt", "*.model"]


def error(what: str | None, name, reason: str) -> str:
    """``"--flag 'name': reason"``: the one-line message every loader raises."""
    return f"{what} {str(name)!r}: {reason}" if what else f"{str(name)!r}: {reason}"


def looks_local(name: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else (absolute, ./, ~, deeper) is a path."""
    return (os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1
            or os.sep != "/" and os.sep in name)


def resolve(name_or_path, *, what: str | None = None) -> pathlib.Path:
    """A local checkpoint directory for ``name_or_path``: the directory itself, or a hub snapshot
    (downloaded, or from the cache when offline)."""
    name = str(name_or_path)
    p = pathlib.Path(name).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise InvalidInput(error(what, name, "is a file; pass the checkpoint directory that holds config.json"))
    if looks_local(name) or not name:
        raise MissingInput(error(what, name, "no such directory"))
    from huggingface_hub import errors as hfe
    from huggingface_hub import snapshot_download  # imported here: it is slow to import and often unused

    # Asked first, within seconds: an unreachable hub otherwise costs huggingface_hub's retries (about
    # a minute) before the same error. It also honours HF_HUB_OFFLINE set after huggingface_hub was
    # imported (its own flag is read once, at import).
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except hfe.HFValidationError:
        raise InvalidInput(error(what, name, "not a local directory nor a valid Hugging Face hub id")) from None
    local_only = not reachable()
    if local_only and not in_cache(name):
        raise InvalidInput(error(what, name, "not a local directory and the Hugging Face hub is unreachable "
                                           "(offline); pass a local checkpoint directory"))
    try:
        d = pathlib.Path(snapshot_download(name, allow_patterns=_SNAPSHOT, local_files_only=local_only))
        if not any(f.suffix == ".safetensors" for f in d.iterdir()):
            d = pathlib.Path(snapshot_download(name, allow_patterns=_SNAPSHOT_BIN, local_files_only=local_only))
        return d
    except hfe.HFValidationError:
        raise InvalidInput(error(what, name, "not a local directory nor a valid Hugging Face hub id")) from None
    except (hfe.RepositoryNotFoundError, hfe.GatedRepoError):
        raise InvalidInput(error(what, name, "no such local directory or Hugging Face hub model")) from None
    except hfe.LocalEntryNotFoundError:  # offline (HF_HUB_OFFLINE or no connection) and not cached
        raise InvalidInput(error(what, name, "not a local directory and the Hugging Face hub is unreachable "
                                           "(offline); pass a local checkpoint directory")) from None
    except Exception as e:  # DNS failure, timeouts, HTTP errors
        raise InvalidInput(error(what, name, f"not a local directory and not available from the Hugging Face "
                                           f"hub ({type(e).__name__}); pass a local checkpoint directory")) from None


def read_config(d: pathlib.Path, *, what: str | None = None, name=None) -> dict:
    """``config.json`` of a checkpoint directory."""
    f = pathlib.Path(d) / "config.json"
    if not f.is_file():
        raise InvalidInput(error(what, name or d, "the directory has no config.json (not a transformers checkpoint)"))
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise InvalidInput(error(what, name or d, f"config.json is unreadable ({type(e).__name__})")) from None


def read_state_dict(d: pathlib.Path, *, what: str | None = None, name=None) -> dict[str, np.ndarray]:
    """Tensors of a checkpoint directory (float32 NumPy for .bin): model.safetensors, a sharded
    index, or pytorch_model.bin."""
    from safetensors.numpy import load_file as _load_file

    d = pathlib.Path(d)

    def load_file(f: pathlib.Path):
        try:
            return _load_file(f)
        except Exception as e:  # noqa: BLE001 - safetensors' errors for a truncated or damaged file
            raise InvalidInput(error(what, name or d, f"{f.name} is unreadable ({type(e).__name__}: "
                                                      f"{one_line(e)[:120]}); re-download or re-export it")) from None

    if (d / "model.safetensors").is_file():
        return dict(load_file(d / "model.safetensors"))
    index = d / "model.safetensors.index.json"
    if index.is_file():
        sd = {}
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InvalidInput(error(what, name or d, f"{index.name} is unreadable ({type(e).__name__})")) from None
        for shard in shards:
            if not (d / shard).is_file():
                raise MissingInput(error(what, name or d, f"the shard {shard} named by {index.name} is missing"))
            sd.update(load_file(d / shard))
        return sd
    if (d / "pytorch_model.bin").is_file():
        try:
            import torch  # optional: only old checkpoints need it
        except ImportError:
            raise InvalidInput(error(what, name or d, "pytorch_model.bin needs torch to read; install torch or "
                                                    "convert the checkpoint to model.safetensors")) from None
        try:
            sd = torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch's errors for a truncated or damaged file
            raise InvalidInput(error(what, name or d, f"pytorch_model.bin is unreadable ({type(e).__name__}); "
                                                      "re-download or re-export it")) from None
        return {k: v.detach().to(torch.float32).numpy() for k, v in sd.items() if hasattr(v, "numpy")}
    raise InvalidInput(error(what, name or d, "no model.safetensors, model.safetensors.index.json or "
                                            "pytorch_model.bin"))


# --------------------------------------------------------------------------------------------
# fail fast, before loading anything
# --------------------------------------------------------------------------------------------
_DATA_EXTS = (".csv", ".tsv", ".json", ".jsonl", ".parquet", ".arrow")


def in_cache(repo_id: str, filename: str = "config.json") -> bool:
    """True when the hub repo ``repo_id``'s ``filename`` is in the local hub cache (usable offline)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except Exception:  # malformed ids are not cached ids
        return False


def endpoint() -> tuple[str, int]:
    """The hub's host and port: ``HF_ENDPOINT`` (a mirror) when set, else huggingface.co:443."""
    url = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def reachable(timeout: float = 3.0) -> bool:
    """Whether the hub (or the mirror in ``HF_ENDPOINT``) answers; False at once under ``HF_HUB_OFFLINE``."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection(endpoint(), timeout=timeout):
            return True
    except OSError:
        return False


def preflight(sources: list[tuple[str, str | None]], needs: list[str], *, hint: str = "") -> None:
    """Fail within seconds, in one line, before any model is loaded.

    ``sources``: ``(flag, value)`` pairs (local paths or hub ids; data flags start with ``--data`` or
    ``--test-path``). A local-looking path that does not exist is named; hub ids that are not cached
    (and ``needs``, hub resources a task wants) raise when the hub cannot be reached. ``hint`` ends
    that message (e.g. which tasks run offline).
    """
    hub = list(needs)
    for flag, value in sources:
        if not value or os.path.exists(value):
            continue
        is_data = flag.startswith(("--data", "--test-path"))
        if looks_local(value) or value.endswith(_DATA_EXTS) or flag == "--test-path":
            raise MissingInput(f"{flag} {value}: no such file or directory")
        if is_data or not in_cache(value):
            hub.append(f"{flag} {value}")
    if hub and not reachable():
        host = endpoint()[0]
        where = "the Hugging Face hub" if host == "huggingface.co" else f"the Hugging Face hub mirror {host}"
        raise InvalidInput(f"{where} is unreachable and these need it: " + ", ".join(hub)
                           + "; pass local paths with those flags" + (f", {hint}" if hint else ""))
