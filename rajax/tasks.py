"""Task data: prompts with the paper's exact splits for IMDB-Gen, Jigsaw-Gen and RTP-Gen, or a local file.

Spec references (``/work/shared/docs/ra-rlhf-spec.md``): §3 (sources, filters, prompt lengths, SFT
texts), §4.1 (test sets), §4.2 (perplexity texts), §6.2 (the RTP split procedure), quirk #26
(the policy consumes the truncated ids, the reward model the decoded strings). See docs/tasks.md.

* Prompts are ``decode(encode(text)[:P])`` (no BOS; byte-level BPE can split a multi-byte
  character, leaving "\\ufffd"). ``PromptSet.ids`` keep the truncated ids for the policy and
  ``PromptSet.texts`` the decoded strings for the reward model.
* ``load_task_data(cfg, tokenizer)`` returns ``TaskData(train, test, ppl_texts, sft_texts, info)``.
  Hub datasets (IMDB, RTP) are read through ``datasets`` (imported lazily: the GPU image lacks it);
  every task also reads local files with the standard library (csv / jsonl) or pyarrow (parquet).
* The RTP split is re-implemented in NumPy exactly as ``datasets`` computes it
  (``train_test_split(test_size=0.2, seed=42)`` = ``default_rng(42).permutation``, test first;
  ``shuffle(seed=42)`` = ``default_rng(42).permutation``), so it needs no ``datasets`` and
  reproduces the paper's index caches row for row (tests/test_tasks.py).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pathlib
import sys
from typing import Any, Mapping, Sequence

import numpy as np

IMDB_HUB = "stanfordnlp/imdb"
RTP_HUB = "allenai/real-toxicity-prompts"
IMDB_MIN_CHARS = 200  # keep reviews with len(review) > 200 (spec §3.1)
JIGSAW_MIN_CHARS = 64  # keep comments with len(comment_text) > 64 (spec §3.2)
JIGSAW_SAMPLE_SEED = 42  # the non-toxic draw of the 70/30 train split (eda.py's random_state=42)
IMDB_TEST_SEED = 0  # shuffle(seed=0).select(range(5000)) (spec §4.1; PPOConfig's default seed)
IMDB_PPL_SEED = 42  # shuffle(seed=42).select(range(5000)) (spec §4.2)
RTP_SEED = 42  # train_test_split(seed=42) and shuffle(seed=42) (spec §3.3)
SUBSET_SEED = 0  # eval.test_size < the test set (Jigsaw / RTP / file): a seeded subset in file order
JIGSAW_LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")


# ------------------------------------------------------------------------------------------------
# Containers
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class PromptSet:
    """Prompts of one split. ``ids[i]`` = ``encode(sources[i])[:P]``; ``texts[i]`` = ``decode(ids[i])``.

    ``labels`` (int array or None): IMDB ``label`` (1 = positive), Jigsaw ``toxic``, RTP ``Label``
    (1 = prompt toxicity > 0.5). ``sources``: the full source texts (None when not kept).
    """

    ids: list[list[int]]
    texts: list[str]
    labels: np.ndarray | None = None
    sources: list[str] | None = None

    def __post_init__(self):
        n = len(self.ids)
        if len(self.texts) != n or (self.labels is not None and len(self.labels) != n) or (
                self.sources is not None and len(self.sources) != n):
            raise ValueError("PromptSet fields must all have one entry per prompt")

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, idx) -> "PromptSet":
        """The rows ``idx`` (an int sequence), in that order."""
        idx = [int(i) for i in idx]
        return PromptSet(
            ids=[self.ids[i] for i in idx], texts=[self.texts[i] for i in idx],
            labels=None if self.labels is None else np.asarray(self.labels)[idx],
            sources=None if self.sources is None else [self.sources[i] for i in idx])

    def padded(self, pad_id: int, width: int | None = None):
        """``left_pad(self.ids, width or the longest prompt, pad_id)``."""
        return left_pad(self.ids, width or max((len(x) for x in self.ids), default=1), pad_id)


@dataclasses.dataclass(frozen=True, eq=False)
class TaskData:
    """Everything a run needs from the task's data.

    ``train`` / ``test``: ``PromptSet`` (None when not available and not required).
    ``ppl_texts``: human texts for the perplexity metric (spec §4.2), already cut to
    ``eval.ppl_max_chars`` characters and ``eval.ppl_num_texts`` texts.
    ``sft_texts``: the texts of the task's SFT step (spec §3), full length.
    ``info``: counts and sources, for logs.
    """

    train: PromptSet | None
    test: PromptSet | None
    ppl_texts: list[str]
    sft_texts: list[str]
    info: dict = dataclasses.field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# Tokenisation (HF tokenizers, or a bare `tokenizers.Tokenizer`)
# ------------------------------------------------------------------------------------------------
def clean_up_tokenization(s: str) -> str:
    """transformers-4's ``clean_up_tokenization`` (default on for GPT-2 decode then; off in v5).

    Use it on prompts AND responses when ``reward.clean_up_spaces`` is set, so the reward model
    reads the strings the paper's did (see ``rajax.config.RewardConfig``).
    """
    return (s.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
            .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s")
            .replace(" 've", "'ve").replace(" 're", "'re"))


def encode_all(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """``[tokenizer.encode(t) for t in texts]`` in one batched call (special tokens as ``encode``)."""
    texts = list(texts)
    if not texts:
        return []
    if hasattr(tokenizer, "encode_batch") and not callable(getattr(tokenizer, "batch_decode", None)):
        return [e.ids for e in tokenizer.encode_batch(texts)]  # tokenizers.Tokenizer
    try:
        out = tokenizer(texts, verbose=False)
    except TypeError:  # tokenizers without the `verbose` flag
        out = tokenizer(texts)
    return [list(x) for x in out["input_ids"]]


def decode_all(tokenizer, ids: Sequence[Sequence[int]], *, clean_up: bool = False) -> list[str]:
    """Decode each id list WITH special tokens (spec §3: "<|endoftext|>" reaches the classifier)."""
    ids = [list(map(int, x)) for x in ids]
    if not ids:
        return []
    if callable(getattr(tokenizer, "batch_decode", None)):
        try:
            out = tokenizer.batch_decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        except TypeError:
            out = tokenizer.batch_decode(ids)
    else:
        out = tokenizer.decode_batch(ids, skip_special_tokens=False)  # tokenizers.Tokenizer
    return [clean_up_tokenization(s) for s in out] if clean_up else list(out)


def build_prompts(texts: Sequence[str], tokenizer, prompt_tokens: int, *, clean_up: bool = False) -> list[str]:
    """``decode(encode(t)[:P])`` for each text (spec §3; quirk #26)."""
    return encode_prompts(texts, tokenizer, prompt_tokens, clean_up=clean_up, keep_sources=False).texts


def encode_prompts(texts: Sequence[str], tokenizer, prompt_tokens: int, *, labels=None,
                   clean_up: bool = False, keep_sources: bool = True) -> PromptSet:
    """A ``PromptSet``: ids = ``encode(t)[:P]`` (policy input), texts = their decodings (reward input)."""
    if prompt_tokens < 1:
        raise ValueError(f"prompt_tokens must be >= 1, got {prompt_tokens}")
    texts = [str(t) for t in texts]
    ids = [x[:prompt_tokens] for x in encode_all(tokenizer, texts)]
    return PromptSet(ids=ids, texts=decode_all(tokenizer, ids, clean_up=clean_up),
                     labels=None if labels is None else np.asarray(labels, np.int32),
                     sources=texts if keep_sources else None)


def left_pad(ids_list: Sequence[Sequence[int]], width: int, pad_id: int):
    """``(ids [N, width] int32, mask [N, width] int32)``, each row right-aligned (rajax layout:
    ``[left pad | prompt | response | pad]``). A row longer than ``width`` is an error."""
    n = len(ids_list)
    ids = np.full((n, width), pad_id, np.int32)
    mask = np.zeros((n, width), np.int32)
    for i, row in enumerate(ids_list):
        k = len(row)
        if k > width:
            raise ValueError(f"prompt {i} has {k} tokens > width {width}; truncate prompts to "
                             f"generation.prompt_tokens first (encode_prompts)")
        if k:
            ids[i, width - k:] = np.asarray(row, np.int32)
            mask[i, width - k:] = 1
    return ids, mask


# ------------------------------------------------------------------------------------------------
# `datasets`-exact index arithmetic (spec §6.2)
# ------------------------------------------------------------------------------------------------
def hf_shuffle(n: int, seed: int) -> np.ndarray:
    """The row order of ``Dataset.shuffle(seed=seed)`` on ``n`` rows."""
    return np.random.default_rng(seed).permutation(n)


def hf_train_test_split(n: int, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, test_idx)`` of ``Dataset.train_test_split(test_size=<float>, seed=seed)``:
    ``n_test = ceil(test_size*n)``; one permutation, test = its head, train = the rest."""
    n_test = math.ceil(test_size * n)
    perm = np.random.default_rng(seed).permutation(n)
    return perm[n_test:], perm[:n_test]


def ratio_count(n_minority: int, majority_pct: int = 70, minority_pct: int = 30) -> int:
    """``int(n * 70 / 30)``: the non-toxic count of the paper's 70/30 splits (float, as the paper)."""
    return int(n_minority * majority_pct / minority_pct)


def rtp_split_indices(toxicity: Sequence, seed: int = RTP_SEED) -> dict[str, np.ndarray]:
    """The paper's RTP-Gen splits (spec §3.3, §6.2) as row indices into the 99,442-row table.

    ``toxicity[i]``: ``prompt.toxicity`` of row i (None / NaN = unlabeled). Label = toxicity > 0.5.
    Per class ``train_test_split(test_size=0.2, seed=42)``; the non-toxic parts are
    ``shuffle(seed=42).select(range(k))`` with k = int(17,395·70/30) = 40,588 (train) and
    k = 4,349 (test, = the toxic test count). train = toxic_train ++ nontoxic_train_sel,
    test = toxic_test ++ nontoxic_test_sel, in that order.
    """
    tox = np.array([np.nan if v is None else float(v) for v in toxicity], np.float64)
    labeled = np.flatnonzero(~np.isnan(tox))
    is_toxic = tox[labeled] > 0.5
    toxic, nontoxic = labeled[is_toxic], labeled[~is_toxic]
    tr_t, te_t = hf_train_test_split(len(toxic), 0.2, seed)
    tr_n, te_n = hf_train_test_split(len(nontoxic), 0.2, seed)
    train_toxic, test_toxic = toxic[tr_t], toxic[te_t]
    k_train = ratio_count(len(train_toxic))
    k_test = len(test_toxic)
    if k_train > len(tr_n) or k_test > len(te_n):
        raise ValueError(f"RTP split: {len(tr_n)} / {len(te_n)} non-toxic train / test prompts, fewer than the "
                         f"{k_train} / {k_test} the 70/30 train and 50/50 test need")
    nt_train, nt_test = nontoxic[tr_n], nontoxic[te_n]
    train_nontoxic = nt_train[hf_shuffle(len(nt_train), seed)[:k_train]]
    test_nontoxic = nt_test[hf_shuffle(len(nt_test), seed)[:k_test]]
    return {
        "labeled": labeled, "toxic": toxic, "nontoxic": nontoxic,
        "train_toxic": train_toxic, "test_toxic": test_toxic,
        "train_nontoxic": train_nontoxic, "test_nontoxic": test_nontoxic,
        "train": np.concatenate([train_toxic, train_nontoxic]),
        "test": np.concatenate([test_toxic, test_nontoxic]),
    }


def jigsaw_train_indices(texts: Sequence[str], toxic: Sequence[int], seed: int = JIGSAW_SAMPLE_SEED):
    """The 70/30 Jigsaw-Gen train split (spec §3.2) as ``(toxic_rows, nontoxic_rows)`` indices.

    Comments longer than 64 characters; every toxic one, plus int(n_toxic·70/30) non-toxic ones
    drawn with ``default_rng(seed).permutation`` and kept in file order. On the full Kaggle
    ``train.csv`` this gives 11,092 + 25,881 = 36,973 rows (PAPER B.1). The paper's own draw
    (``jigsaw_train_70_30.csv``) is lost, so the non-toxic rows differ from it; the counts match.
    """
    toxic = np.asarray(toxic)
    long = np.array([len(t) > JIGSAW_MIN_CHARS for t in texts], bool)
    tox_rows = np.flatnonzero(long & (toxic == 1))
    non_rows = np.flatnonzero(long & (toxic == 0))
    k = min(ratio_count(len(tox_rows)), len(non_rows))
    pick = np.sort(np.random.default_rng(seed).permutation(len(non_rows))[:k])
    return tox_rows, non_rows[pick]


# ------------------------------------------------------------------------------------------------
# Local tables: csv / tsv / jsonl / json / parquet, or a directory of split files
# ------------------------------------------------------------------------------------------------
_EXTS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


def read_table(path) -> dict[str, list]:
    """A local table as ``{column: [values]}`` (CSV values are strings; JSON keeps nested dicts)."""
    p = pathlib.Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{str(path)!r}: no such file")
    suf = p.suffix.lower()
    if suf in (".csv", ".tsv"):
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
        with open(p, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if suf == ".tsv" else ","))
        cols = list(rows[0].keys()) if rows else []
        return {c: [r.get(c) for r in rows] for c in cols}
    if suf in (".jsonl", ".json"):
        text = p.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
            rows = data if isinstance(data, list) else None
        except json.JSONDecodeError:
            rows = None
        if rows is None:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        cols: dict[str, None] = {}
        for r in rows:
            if not isinstance(r, dict):
                raise ValueError(f"{str(path)!r}: every JSON record must be an object")
            cols.update(dict.fromkeys(r))
        return {c: [r.get(c) for r in rows] for c in cols}
    if suf == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"{str(path)!r}: reading parquet needs pyarrow (pip install pyarrow); "
                             "or pass a csv / jsonl file") from None
        return pq.read_table(p).to_pydict()
    raise ValueError(f"{str(path)!r}: unsupported file type {suf!r}; use one of {', '.join(_EXTS)}")


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


def _read_split(d: pathlib.Path, split: str) -> dict[str, list] | None:
    files = _split_files(d, split)
    return _concat([read_table(f) for f in files]) if files else None


def _load_from_disk(d: pathlib.Path):
    """A ``datasets.save_to_disk`` directory as ``{split: table}`` (or ``{"train": table}``)."""
    try:
        import datasets
    except ImportError:
        raise ValueError(f"{str(d)!r} is a `datasets` save_to_disk directory, which needs the `datasets` "
                         "package; export it to csv / jsonl / parquet instead") from None
    ds = datasets.load_from_disk(str(d))
    if isinstance(ds, datasets.DatasetDict):
        return {k: v.to_dict() for k, v in ds.items()}
    return {"train": ds.to_dict()}


def _is_saved_dataset(d: pathlib.Path) -> bool:
    return (d / "dataset_dict.json").is_file() or (d / "state.json").is_file()


def _local_path(path: str, flag: str) -> pathlib.Path | None:
    """``path`` as an existing local path; None when it may be a hub id; FileNotFoundError when it
    looks local (absolute, ./, ~, a file extension, or several '/') but does not exist."""
    p = pathlib.Path(path).expanduser()
    if p.exists():
        return p
    looks_local = (os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1
                   or p.suffix.lower() in _EXTS)
    if looks_local:
        raise FileNotFoundError(f"{flag} {path!r}: no such file or directory")
    return None


def _hub_dataset(name: str, flag: str, **kw):
    """``datasets.load_dataset(name, **kw)``; a one-line ValueError naming ``flag`` when it fails."""
    try:
        import datasets
    except ImportError:
        raise ValueError(f"loading {name!r} from the Hugging Face Hub needs the `datasets` package, which is "
                         f"not installed; pass a local copy with {flag} PATH") from None
    kw = {k: v for k, v in kw.items() if v is not None}
    try:
        return datasets.load_dataset(name, **kw)
    except Exception as e:  # offline, unreachable, missing revision, ...
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"could not load the hub dataset {name!r} ({type(e).__name__}: {reason}); "
                         f"pass a local copy with {flag} PATH (data.path)") from None


def _column(table: Mapping[str, list], names: Sequence[str], what: str, where: str) -> list:
    for n in names:
        if n in table:
            return table[n]
    raise ValueError(f"{where}: no {what} column (looked for {', '.join(map(repr, names))}); "
                     f"columns are {', '.join(map(repr, table)) or '(none)'}")


def _int_labels(values: Sequence, where: str) -> np.ndarray:
    out = np.empty(len(values), np.int32)
    for i, v in enumerate(values):
        try:
            out[i] = int(float(v)) if not isinstance(v, bool) else int(v)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: label {v!r} in row {i} is not an integer") from None
    return out


# ------------------------------------------------------------------------------------------------
# Per-task raw splits: (train texts, train labels), (test texts, test labels), sft texts, ppl texts
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Raw:
    train: tuple[list[str], np.ndarray | None] | None
    test: tuple[list[str], np.ndarray | None] | None
    test_shuffled: bool  # the test order is already a seeded shuffle (IMDB): subset = the head
    sft: list[str]
    ppl: list[str]  # full texts, in the task's order (cut to ppl_max_chars / ppl_num_texts later)
    info: dict


def _imdb(cfg) -> _Raw:
    """IMDB-Gen (spec §3.1, §4.1, §4.2)."""
    d = cfg.data
    local = _local_path(d.path, "--data") if d.path else None
    if local is None:
        ds = _hub_dataset(d.path or IMDB_HUB, "--data", revision=d.revision)
        splits = {k: {"text": list(ds[k]["text"]), "label": list(ds[k]["label"])} for k in ("train", "test") if k in ds}
        src = d.path or IMDB_HUB
    elif local.is_dir():
        splits = _load_from_disk(local) if _is_saved_dataset(local) else {
            k: t for k in ("train", "test") if (t := _read_split(local, k)) is not None}
        src = str(local)
    else:
        raise ValueError(f"--data {d.path!r}: IMDB needs a directory with train and test files "
                         "(csv / jsonl / parquet with text and label columns), or a hub dataset id")
    for k in ("train", "test"):
        if k not in splits:
            raise ValueError(f"--data {src!r}: no {k} split found (expected files named {k}*.csv/jsonl/parquet)")
    cols = {}
    for k in ("train", "test"):
        t = splits[k]
        texts = [str(x) for x in _column(t, ("text", "review"), "text", f"IMDB {k} split")]
        labels = _int_labels(_column(t, ("label",), "label", f"IMDB {k} split"), f"IMDB {k} split")
        cols[k] = (texts, labels)
    tr_texts, tr_labels = cols["train"]
    te_texts, te_labels = cols["test"]
    sft = [t for t, y in zip(tr_texts, tr_labels) if y == 1]  # SFT: every positive train review
    keep = [i for i, t in enumerate(tr_texts) if len(t) > IMDB_MIN_CHARS]
    train = ([tr_texts[i] for i in keep], tr_labels[keep])
    te_keep = np.array([i for i, t in enumerate(te_texts) if len(t) > IMDB_MIN_CHARS], np.int64)
    order = te_keep[hf_shuffle(len(te_keep), IMDB_TEST_SEED)]  # filter -> shuffle(seed=0)
    test = ([te_texts[i] for i in order], te_labels[order])
    pos = te_keep[te_labels[te_keep] == 1]
    ppl_rows = pos[hf_shuffle(len(pos), IMDB_PPL_SEED)]  # filter(len>200, label==1) -> shuffle(seed=42)
    ppl = [te_texts[i] for i in ppl_rows]
    return _Raw(train, test, True, sft, ppl, {"source": src, "train_reviews": len(tr_texts),
                                              "test_reviews": len(te_texts)})


def _jigsaw(cfg) -> _Raw:
    """Jigsaw-Gen (spec §3.2, §4.1, §4.2): Kaggle train.csv + the paper's 7,708-row test CSV."""
    d = cfg.data
    train = sft = None
    info: dict[str, Any] = {}
    test_file = None
    if d.path:
        p = _local_path(d.path, "--data")
        if p is None:
            raise FileNotFoundError(f"--data {d.path!r}: no such file or directory (Jigsaw needs the Kaggle "
                                    "competition train.csv, or the directory holding it)")
        if p.is_dir():
            train_file = p / "train.csv"
            if not train_file.is_file():
                raise FileNotFoundError(f"--data {d.path!r}: no train.csv there (the Kaggle Jigsaw Toxic Comment "
                                        "Classification Challenge train.csv)")
            for name in ("jigsaw_gen_test.csv", "jigsaw_test.csv"):
                if (p / name).is_file():
                    test_file = p / name
                    break
        else:
            train_file = p
        t = read_table(train_file)
        texts = [str(x) for x in _column(t, ("comment_text",), "comment_text", str(train_file))]
        toxic = _int_labels(_column(t, ("toxic",), "toxic", str(train_file)), str(train_file))
        tox_rows, non_rows = jigsaw_train_indices(texts, toxic)
        rows = np.concatenate([tox_rows, non_rows])
        train = ([texts[i] for i in rows], toxic[rows])
        sft = [texts[i] for i in non_rows]  # SFT: the non-toxic comments of the 70/30 train split
        info.update(train_file=str(train_file), train_toxic=len(tox_rows), train_nontoxic=len(non_rows))
    if d.test_path:
        test_file = pathlib.Path(d.test_path).expanduser()
        if not test_file.is_file():
            raise FileNotFoundError(f"--test-path {d.test_path!r}: no such file (the jigsaw_gen_test.csv format)")
    test = None
    ppl: list[str] = []
    if test_file is not None:
        t = read_table(test_file)
        texts = [str(x) for x in _column(t, ("comment_text",), "comment_text", str(test_file))]
        toxic = _int_labels(_column(t, ("toxic",), "toxic", str(test_file)), str(test_file))
        test = (texts, toxic)
        ppl = [x for x, y in zip(texts, toxic) if y == 0]  # non-toxic test comments, file order
        info.update(test_file=str(test_file))
    if train is None and test is None:
        raise ValueError("the Jigsaw task has no hub source: pass --data DIR (the Kaggle competition train.csv) "
                         "and --test-path jigsaw_gen_test.csv (data.path / data.test_path)")
    return _Raw(train, test, False, sft or [], ppl, info)


def _rtp_columns(t: Mapping[str, list], where: str) -> tuple[list[str], list]:
    """(prompt texts, prompt toxicities) from RTP's nested ``prompt`` column or flat variants."""
    if "prompt" in t and t["prompt"] and isinstance(t["prompt"][0], dict):
        texts = [r.get("text") if r else None for r in t["prompt"]]
        tox = [r.get("toxicity") if r else None for r in t["prompt"]]
    elif "prompt.text" in t:
        texts, tox = t["prompt.text"], _column(t, ("prompt.toxicity",), "prompt.toxicity", where)
    else:
        texts = _column(t, ("Prompt", "prompt"), "prompt text", where)
        tox = _column(t, ("Perspective", "toxicity"), "prompt toxicity", where)
    tox = [None if v is None or v == "" or (isinstance(v, float) and math.isnan(v)) else float(v) for v in tox]
    return ["" if x is None else str(x) for x in texts], tox


def _rtp(cfg) -> _Raw:
    """RealToxicityPrompts-Gen (spec §3.3, §6.2): the paper's 57,983 / 8,698 splits."""
    d = cfg.data
    local = _local_path(d.path, "--data") if d.path else None
    if local is None:
        name = d.path or RTP_HUB
        ds = _hub_dataset(name, "--data", split="train", revision=d.revision)
        table = {"prompt": list(ds["prompt"])}
        src = f"{name}@{d.revision}" if d.revision else name
    else:
        if local.is_dir():
            if (local / "prompts.jsonl").is_file():
                table = read_table(local / "prompts.jsonl")
            elif _is_saved_dataset(local):
                table = _load_from_disk(local)["train"]
            else:
                table = _read_split(local, "train") or _read_split(local, "prompts")
                if table is None:
                    raise FileNotFoundError(f"--data {d.path!r}: no prompts.jsonl or train*.jsonl/parquet there")
        else:
            table = read_table(local)
        src = str(local)
    texts, tox = _rtp_columns(table, f"RTP data {src!r}")
    s = rtp_split_indices(tox)
    label = np.array([0 if v is None else int(v > 0.5) for v in tox], np.int32)
    train = ([texts[i] for i in s["train"]], label[s["train"]])
    test = ([texts[i] for i in s["test"]], label[s["test"]])
    sft = [texts[i] for i in s["train_nontoxic"]]  # SFT: the non-toxic train prompts
    ppl = [texts[i] for i in s["test_nontoxic"]]  # perplexity: the non-toxic test prompts (Table 8 order)
    info = {"source": src, "rows": len(texts), "labeled": len(s["labeled"]),
            **{k: len(s[k]) for k in ("train_toxic", "train_nontoxic", "test_toxic", "test_nontoxic")}}
    return _Raw(train, test, False, sft, ppl, info)


def _file(cfg) -> _Raw:
    """Any task from local csv / jsonl / parquet files with a column mapping (source=file)."""
    d = cfg.data
    if not d.path:
        raise ValueError("data.source=file needs --data FILE (csv, jsonl or parquet) and data.text_column")
    p = _local_path(d.path, "--data")
    if p is None:
        raise FileNotFoundError(f"--data {d.path!r}: no such file or directory")
    test_table = None
    if p.is_dir():
        train_table = _read_split(p, "train")
        if train_table is None:
            raise FileNotFoundError(f"--data {d.path!r}: no train*.csv/jsonl/parquet file there")
        test_table = _read_split(p, "test")
    else:
        train_table = read_table(p)
    if d.test_path:
        tp = pathlib.Path(d.test_path).expanduser()
        if not tp.is_file():
            raise FileNotFoundError(f"--test-path {d.test_path!r}: no such file")
        test_table = read_table(tp)
    text_col = d.text_column or "text"

    def split(t, where):
        texts = ["" if x is None else str(x) for x in _column(t, (text_col,), f"text ({text_col!r})", where)]
        labels = None
        if d.label_column:
            labels = _int_labels(_column(t, (d.label_column,), f"label ({d.label_column!r})", where), where)
        keep = [i for i, x in enumerate(texts) if x.strip()]  # an empty prompt cannot be sampled from
        return [texts[i] for i in keep], None if labels is None else labels[keep]

    train = split(train_table, f"--data {d.path!r}")
    test = split(test_table, f"--test-path {d.test_path or d.path!r}") if test_table is not None else None
    return _Raw(train, test, False, list(train[0]), list(test[0]) if test else [],
                {"source": str(p), "text_column": text_col, "label_column": d.label_column})


_LOADERS = {"imdb": _imdb, "jigsaw": _jigsaw, "rtp": _rtp, "file": _file}


def load_task_data(cfg, tokenizer, *, require: Sequence[str] = ("train",)) -> TaskData:
    """The task's prompts (P = ``generation.prompt_tokens``), perplexity texts and SFT texts.

    ``require``: the parts that must be present (``"train"``, ``"test"``); a missing one raises a
    one-line ValueError naming the flag to pass. ``eval.test_size`` cuts the test set: IMDB keeps the
    head of its seeded shuffle (the paper's 5,000); the other tasks keep a ``default_rng(0)`` subset
    in file order (both classes stay represented).
    """
    src = cfg.data.source
    if src == "synthetic":
        from rajax import synthetic

        return synthetic.load_task_data(cfg, tokenizer, require=require)
    if src not in _LOADERS:
        raise ValueError(f"data.source={src!r} is not valid; choose one of imdb, jigsaw, rtp, synthetic, file")
    raw = _LOADERS[src](cfg)
    for part in require:
        if getattr(raw, part) is None:
            flag = "--test-path FILE (data.test_path)" if part == "test" else "--data PATH (data.path)"
            raise ValueError(f"task {cfg.task!r} has no {part} prompts; pass {flag}")
    P = cfg.generation.prompt_tokens
    clean = bool(getattr(cfg.reward, "clean_up_spaces", False))
    e = cfg.eval

    train = test = None
    if raw.train is not None:
        train = encode_prompts(raw.train[0], tokenizer, P, labels=raw.train[1], clean_up=clean)
    if raw.test is not None:
        texts, labels = raw.test
        n = len(texts)
        if e.test_size is not None and e.test_size < n:
            rows = (np.arange(e.test_size) if raw.test_shuffled
                    else np.sort(np.random.default_rng(SUBSET_SEED).permutation(n)[:e.test_size]))
            texts = [texts[i] for i in rows]
            labels = None if labels is None else labels[rows]
        test = encode_prompts(texts, tokenizer, P, labels=labels, clean_up=clean)
    ppl = raw.ppl if e.ppl_num_texts is None else raw.ppl[:e.ppl_num_texts]
    if e.ppl_max_chars is not None:
        ppl = [t[:e.ppl_max_chars] for t in ppl]
    info = dict(task=cfg.task, data_source=src, prompt_tokens=P,
                train=None if train is None else len(train), test=None if test is None else len(test),
                ppl_texts=len(ppl), sft_texts=len(raw.sft), **raw.info)
    return TaskData(train=train, test=test, ppl_texts=ppl, sft_texts=list(raw.sft), info=info)
