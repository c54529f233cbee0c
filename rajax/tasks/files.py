"""Reading task data: local tables (csv / tsv / jsonl / json / parquet, a directory of split files, a
``datasets.save_to_disk`` directory) and hub datasets, and the ``file`` task built on them.

Data errors name the file (and, where there is one, the row) so a user knows what to fix.
"""
from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import sys
from typing import Mapping, Sequence

import numpy as np

from rajax.core.errors import InvalidInput, MissingInput, one_line
from rajax.tasks.base import RawSplits, Task

_EXTS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


def _text(p: pathlib.Path) -> str:
    """The file as UTF-8 text; a bad byte is one line naming the file, the line and the byte."""
    data = p.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InvalidInput(f"{p}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as UTF-8") from None


def read_table(path) -> dict[str, list]:
    """A local table as ``{column: [values]}`` (CSV values are strings; JSON keeps nested dicts).

    Malformed content is a one-line ``InvalidInput`` naming the file and the line.
    """
    p = pathlib.Path(path).expanduser()
    if not p.is_file():
        raise MissingInput(f"{str(path)!r}: no such file")
    suf = p.suffix.lower()
    if suf in (".csv", ".tsv"):
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
        reader = csv.DictReader(io.StringIO(_text(p), newline=""), delimiter="\t" if suf == ".tsv" else ",")
        try:
            rows = list(reader)
        except csv.Error as e:
            raise InvalidInput(f"{p}:{reader.line_num}: malformed {suf[1:].upper()} ({e})") from None
        cols = list(rows[0].keys()) if rows else []
        return {c: [r.get(c) for r in rows] for c in cols}
    if suf in (".jsonl", ".json"):
        text = _text(p)
        try:
            data = json.loads(text)
            rows = data if isinstance(data, list) else None
        except json.JSONDecodeError:
            rows = None
        if rows is None:
            rows = []
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InvalidInput(f"{p}:{n}: not valid JSON ({e.msg} at column {e.colno}); one JSON object "
                                       "per line") from None
        cols: dict[str, None] = {}
        for n, r in enumerate(rows, 1):
            if not isinstance(r, dict):
                raise InvalidInput(f"{p}: record {n} is a {type(r).__name__}; every JSON record must be an object")
            cols.update(dict.fromkeys(r))
        return {c: [r.get(c) for r in rows] for c in cols}
    if suf == ".parquet":
        try:
            import pyarrow.parquet as pq  # optional: only for parquet files
        except ImportError:
            raise InvalidInput(f"{str(path)!r}: reading parquet needs pyarrow (pip install pyarrow); "
                               "or pass a csv / jsonl file") from None
        try:
            return pq.read_table(p).to_pydict()
        except Exception as e:  # noqa: BLE001 - pyarrow's errors for a damaged file
            raise InvalidInput(f"{p}: unreadable parquet ({type(e).__name__}: {one_line(e)[:160]})") from None
    raise InvalidInput(f"{str(path)!r}: unsupported file type {suf!r}; use one of {', '.join(_EXTS)}")


def _concat(tables: list[dict]) -> dict[str, list]:
    """Row-wise concatenation of tables (the columns of the first; missing ones filled with None)."""
    out: dict[str, list] = {c: [] for c in tables[0]}
    for t in tables:
        n = len(next(iter(t.values()), []))
        for c in out:
            out[c].extend(t.get(c, [None] * n))
    return out


def _split_files(d: pathlib.Path, split: str) -> list[pathlib.Path]:
    """Files under ``d`` whose name starts with ``split`` (``train.csv``, ``train-00000-of-00001.parquet``,
    ``plain_text/test-….parquet``), sorted."""
    return sorted(p for p in d.rglob(f"{split}*") if p.is_file() and p.suffix.lower() in _EXTS)


def read_split(d: pathlib.Path, split: str) -> dict[str, list] | None:
    files = _split_files(d, split)
    return _concat([read_table(f) for f in files]) if files else None


def load_from_disk(d: pathlib.Path):
    """A ``datasets.save_to_disk`` directory as ``{split: table}`` (or ``{"train": table}``)."""
    try:
        import datasets
    except ImportError:
        raise InvalidInput(f"{str(d)!r} is a `datasets` save_to_disk directory, which needs the `datasets` "
                         "package; export it to csv / jsonl / parquet instead") from None
    ds = datasets.load_from_disk(str(d))
    if isinstance(ds, datasets.DatasetDict):
        return {k: v.to_dict() for k, v in ds.items()}
    return {"train": ds.to_dict()}


def is_saved_dataset(d: pathlib.Path) -> bool:
    return (d / "dataset_dict.json").is_file() or (d / "state.json").is_file()


def local_path(path: str, flag: str) -> pathlib.Path | None:
    """``path`` as an existing local path; None when it may be a hub id; FileNotFoundError when it
    looks local (absolute, ./, ~, a file extension, or several '/') but does not exist."""
    p = pathlib.Path(path).expanduser()
    if p.exists():
        return p
    looks_local = (os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1
                   or p.suffix.lower() in _EXTS)
    if looks_local:
        raise MissingInput(f"{flag} {path!r}: no such file or directory")
    return None


def hub_dataset(name: str, flag: str, **kw):
    """``datasets.load_dataset(name, **kw)``; a one-line ValueError naming ``flag`` when it fails."""
    try:
        import datasets
    except ImportError:
        raise InvalidInput(f"loading {name!r} from the Hugging Face Hub needs the `datasets` package, which is "
                         f"not installed; pass a local copy with {flag} PATH") from None
    kw = {k: v for k, v in kw.items() if v is not None}
    try:
        return datasets.load_dataset(name, **kw)
    except Exception as e:  # offline, unreachable, missing revision, ...
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise InvalidInput(f"could not load the hub dataset {name!r} ({type(e).__name__}: {reason}); "
                         f"pass a local copy with {flag} PATH (data.path)") from None


def column(table: Mapping[str, list], names: Sequence[str], what: str, where: str) -> list:
    for n in names:
        if n in table:
            return table[n]
    raise InvalidInput(f"{where}: no {what} column (looked for {', '.join(map(repr, names))}); "
                     f"columns are {', '.join(map(repr, table)) or '(none)'}")


def int_labels(values: Sequence, where: str) -> np.ndarray:
    out = np.empty(len(values), np.int32)
    for i, v in enumerate(values):
        try:
            out[i] = int(float(v)) if not isinstance(v, bool) else int(v)
        except (TypeError, ValueError):
            raise InvalidInput(f"{where}: label {v!r} in row {i} is not an integer") from None
    return out


def _hub_table(ds, where: str) -> dict[str, list]:
    try:
        return ds.to_dict()
    except AttributeError:
        raise InvalidInput(f"{where}: the hub dataset has several splits ({', '.join(ds)}); name one with "
                           "--data-split (data.split)") from None


class FileTask(Task):
    """``data.source: file``: prompts from local csv / jsonl / parquet files, or from a hub dataset id
    (through ``datasets``: ``data.split``, ``data.test_split``), with a column mapping."""

    name = "file"

    def resolve(self, cfg, *, progress: bool = True):
        if not cfg.data.path:
            raise InvalidInput(f"data.source={self.name} needs data.path: pass --data FILE (csv, jsonl or parquet) "
                               "or a hub dataset id")
        return cfg

    def raw(self, cfg) -> RawSplits:
        d = cfg.data
        self.resolve(cfg)
        p = local_path(d.path, "--data")
        test_table = None
        if p is None:  # a hub dataset id
            train_table = _hub_table(hub_dataset(d.path, "--data", split=d.split, revision=d.revision), d.path)
            if d.test_split:
                test_table = _hub_table(hub_dataset(d.path, "--data", split=d.test_split, revision=d.revision), d.path)
        elif p.is_dir():
            train_table = read_split(p, "train")
            if train_table is None:
                raise MissingInput(f"--data {d.path!r}: no train*.csv/jsonl/parquet file there")
            test_table = read_split(p, "test")
        elif p is not None:
            train_table = read_table(p)
        if d.test_path:
            tp = pathlib.Path(d.test_path).expanduser()
            if not tp.is_file():
                raise MissingInput(f"--test-path {d.test_path!r}: no such file")
            test_table = read_table(tp)
        text_col = d.text_column or "text"

        def split(t, where):
            texts = ["" if x is None else str(x) for x in column(t, (text_col,), f"text ({text_col!r})", where)]
            labels = None
            if d.label_column:
                labels = int_labels(column(t, (d.label_column,), f"label ({d.label_column!r})", where), where)
            keep = [i for i, x in enumerate(texts) if x.strip()]  # an empty prompt cannot be sampled from
            return [texts[i] for i in keep], None if labels is None else labels[keep]

        train = split(train_table, f"--data {d.path!r}")
        test = split(test_table, f"--test-path {d.test_path or d.path!r}") if test_table is not None else None
        return RawSplits(train, test, False, list(train[0]), list(test[0]) if test else [],
                         {"source": str(p or d.path), "text_column": text_col, "label_column": d.label_column})


class HubTask(FileTask):
    """``data.source: hub``: the ``file`` task for a hub dataset id (``--data ID --data-split train``)."""

    name = "hub"

    def resolve(self, cfg, *, progress: bool = True):
        super().resolve(cfg, progress=progress)
        if local_path(cfg.data.path, "--data") is not None:
            raise InvalidInput(f"data.source=hub: --data {cfg.data.path} is a local path; use data.source=file")
        return cfg


TASK = FileTask()
HUB_TASK = HubTask()
