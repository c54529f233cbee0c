"""IMDB-Gen (docs/paper.md §3.1): continue movie-review openings positively.

Train prompts are the train reviews longer than 200 characters (64 tokens each); the test set is the
filtered test split in ``shuffle(seed=0)`` order (the paper evaluates its first 5,000); perplexity is
measured on positive test reviews in ``shuffle(seed=42)`` order (§4.2); SFT uses every positive
train review. Reads the hub dataset through ``datasets`` or a local directory of split files.
"""
from __future__ import annotations

import numpy as np

from rajax.core.errors import InvalidInput
from rajax.tasks.base import RawSplits, Task, hf_shuffle
from rajax.tasks.files import column, hub_dataset, int_labels, is_saved_dataset, load_from_disk, local_path, read_split

IMDB_HUB = "stanfordnlp/imdb"
IMDB_MIN_CHARS = 200  # keep reviews with len(review) > 200 (docs/paper.md §3.1)
IMDB_TEST_SEED = 0  # shuffle(seed=0).select(range(5000)) (§4.1; PPOConfig's default seed)
IMDB_PPL_SEED = 42  # shuffle(seed=42).select(range(5000)) (§4.2)


class ImdbTask(Task):
    """IMDB-Gen (docs/paper.md §3.1, §4.1, §4.2)."""

    name = "imdb"
    class_names = {0: "Negative", 1: "Positive"}

    def hub_needs(self, cfg, require):
        return [] if cfg.data.path else [f"--data (the hub dataset {IMDB_HUB})"]

    def raw(self, cfg) -> RawSplits:
        d = cfg.data
        local = local_path(d.path, "--data") if d.path else None
        if local is None:
            ds = hub_dataset(d.path or IMDB_HUB, "--data", revision=d.revision)
            splits = {k: {"text": list(ds[k]["text"]), "label": list(ds[k]["label"])} for k in ("train", "test") if k in ds}
            src = d.path or IMDB_HUB
        elif local.is_dir():
            splits = load_from_disk(local) if is_saved_dataset(local) else {
                k: t for k in ("train", "test") if (t := read_split(local, k)) is not None}
            src = str(local)
        else:
            raise InvalidInput(f"--data {d.path!r}: IMDB needs a directory with train and test files "
                             "(csv / jsonl / parquet with text and label columns), or a hub dataset id")
        for k in ("train", "test"):
            if k not in splits:
                raise InvalidInput(f"--data {src!r}: no {k} split found (expected files named {k}*.csv/jsonl/parquet)")
        cols = {}
        for k in ("train", "test"):
            t = splits[k]
            texts = [str(x) for x in column(t, ("text", "review"), "text", f"IMDB {k} split")]
            labels = int_labels(column(t, ("label",), "label", f"IMDB {k} split"), f"IMDB {k} split")
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
        return RawSplits(train, test, True, sft, ppl, {"source": src, "train_reviews": len(tr_texts),
                                                  "test_reviews": len(te_texts)})


TASK = ImdbTask()
