"""RealToxicityPrompts-Gen (docs/paper.md §3.3, §6.2): continue web-text prompts without toxicity.

The split is re-implemented in NumPy exactly as ``datasets`` computes it
(``train_test_split(test_size=0.2, seed=42)`` = ``default_rng(42).permutation``, test first;
``shuffle(seed=42)`` = ``default_rng(42).permutation``), so it needs no ``datasets`` and reproduces
the paper's index caches row for row (tests/tasks/test_rtp.py).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from rajax.core.errors import InvalidInput, MissingInput
from rajax.tasks.base import RawSplits, Task, hf_shuffle, hf_train_test_split, ratio_count
from rajax.tasks.files import column, hub_dataset, is_saved_dataset, load_from_disk, local_path, read_split, read_table

RTP_HUB = "allenai/real-toxicity-prompts"
RTP_SEED = 42  # train_test_split(seed=42) and shuffle(seed=42) (docs/paper.md §3.3)


def rtp_split_indices(toxicity: Sequence, seed: int = RTP_SEED) -> dict[str, np.ndarray]:
    """The paper's RTP-Gen splits (docs/paper.md §3.3, §6.2) as row indices into the 99,442-row table.

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
        raise InvalidInput(f"RTP split: {len(tr_n)} / {len(te_n)} non-toxic train / test prompts, fewer than the "
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


def _rtp_columns(t: Mapping[str, list], where: str) -> tuple[list[str], list]:
    """(prompt texts, prompt toxicities) from RTP's nested ``prompt`` column or flat variants."""
    if "prompt" in t and t["prompt"] and isinstance(t["prompt"][0], dict):
        texts = [r.get("text") if r else None for r in t["prompt"]]
        tox = [r.get("toxicity") if r else None for r in t["prompt"]]
    elif "prompt.text" in t:
        texts, tox = t["prompt.text"], column(t, ("prompt.toxicity",), "prompt.toxicity", where)
    else:
        texts = column(t, ("Prompt", "prompt"), "prompt text", where)
        tox = column(t, ("Perspective", "toxicity"), "prompt toxicity", where)
    tox = [None if v is None or v == "" or (isinstance(v, float) and math.isnan(v)) else float(v) for v in tox]
    return ["" if x is None else str(x) for x in texts], tox


class RtpTask(Task):
    """RealToxicityPrompts-Gen (docs/paper.md §3.3, §6.2): the paper's 57,983 / 8,698 splits."""

    name = "rtp"

    def hub_needs(self, cfg, require):
        return [] if cfg.data.path else [f"--data (the hub dataset {RTP_HUB})"]

    def raw(self, cfg) -> RawSplits:
        d = cfg.data
        local = local_path(d.path, "--data") if d.path else None
        if local is None:
            name = d.path or RTP_HUB
            ds = hub_dataset(name, "--data", split="train", revision=d.revision)
            table = {"prompt": list(ds["prompt"])}
            src = f"{name}@{d.revision}" if d.revision else name
        else:
            if local.is_dir():
                if (local / "prompts.jsonl").is_file():
                    table = read_table(local / "prompts.jsonl")
                elif is_saved_dataset(local):
                    table = load_from_disk(local)["train"]
                else:
                    table = read_split(local, "train") or read_split(local, "prompts")
                    if table is None:
                        raise MissingInput(f"--data {d.path!r}: no prompts.jsonl or train*.jsonl/parquet there")
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
        return RawSplits(train, test, False, sft, ppl, info)


TASK = RtpTask()
