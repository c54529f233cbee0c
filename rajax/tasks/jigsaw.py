"""Jigsaw-Gen (docs/paper.md §3.2): continue Wikipedia talk comments without toxicity.

The data is local only: the Kaggle "Jigsaw Toxic Comment Classification Challenge" ``train.csv`` for
the 70/30 train split, and the paper's 7,708-row test set (``jigsaw_test.csv`` of the original
repository) for evaluation and perplexity (its non-toxic comments, §4.2).
"""
from __future__ import annotations

import pathlib
from typing import Any, Sequence

import numpy as np

from rajax.core.errors import InvalidInput, MissingInput
from rajax.tasks.base import RawSplits, Task, ratio_count
from rajax.tasks.files import column, int_labels, local_path, read_table

JIGSAW_MIN_CHARS = 64  # keep comments with len(comment_text) > 64 (docs/paper.md §3.2)
JIGSAW_SAMPLE_SEED = 42  # the non-toxic draw of the 70/30 train split (eda.py's random_state=42)
JIGSAW_LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")


def jigsaw_train_indices(texts: Sequence[str], toxic: Sequence[int], seed: int = JIGSAW_SAMPLE_SEED):
    """The 70/30 Jigsaw-Gen train split (docs/paper.md §3.2) as ``(toxic_rows, nontoxic_rows)`` indices.

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


class JigsawTask(Task):
    """Jigsaw-Gen (docs/paper.md §3.2, §4.1, §4.2): Kaggle train.csv + the paper's 7,708-row test CSV."""

    name = "jigsaw"

    def hub_needs(self, cfg, require):
        if "train" in require and not cfg.data.path:
            raise InvalidInput("the Jigsaw task needs the Kaggle CSVs: pass --data DIR (and --test-path CSV)")
        return []

    def raw(self, cfg) -> RawSplits:
        d = cfg.data
        train = sft = None
        info: dict[str, Any] = {}
        test_file = None
        if d.path:
            p = local_path(d.path, "--data")
            if p is None:
                raise MissingInput(f"--data {d.path!r}: no such file or directory (Jigsaw needs the Kaggle "
                                        "competition train.csv, or the directory holding it)")
            if p.is_dir():
                train_file = p / "train.csv"
                if not train_file.is_file():
                    raise MissingInput(f"--data {d.path!r}: no train.csv there (the Kaggle Jigsaw Toxic Comment "
                                            "Classification Challenge train.csv)")
                for name in ("jigsaw_gen_test.csv", "jigsaw_test.csv"):
                    if (p / name).is_file():
                        test_file = p / name
                        break
            else:
                train_file = p
            t = read_table(train_file)
            texts = [str(x) for x in column(t, ("comment_text",), "comment_text", str(train_file))]
            toxic = int_labels(column(t, ("toxic",), "toxic", str(train_file)), str(train_file))
            tox_rows, non_rows = jigsaw_train_indices(texts, toxic)
            rows = np.concatenate([tox_rows, non_rows])
            train = ([texts[i] for i in rows], toxic[rows])
            sft = [texts[i] for i in non_rows]  # SFT: the non-toxic comments of the 70/30 train split
            info.update(train_file=str(train_file), train_toxic=len(tox_rows), train_nontoxic=len(non_rows))
        if d.test_path:
            test_file = pathlib.Path(d.test_path).expanduser()
            if not test_file.is_file():
                raise MissingInput(f"--test-path {d.test_path!r}: no such file (the jigsaw_gen_test.csv format)")
        test = None
        ppl: list[str] = []
        if test_file is not None:
            t = read_table(test_file)
            texts = [str(x) for x in column(t, ("comment_text",), "comment_text", str(test_file))]
            toxic = int_labels(column(t, ("toxic",), "toxic", str(test_file)), str(test_file))
            test = (texts, toxic)
            ppl = [x for x, y in zip(texts, toxic) if y == 0]  # non-toxic test comments, file order
            info.update(test_file=str(test_file))
        if train is None and test is None:
            raise InvalidInput("the Jigsaw task has no hub source: pass --data DIR (the Kaggle competition train.csv) "
                             "and --test-path jigsaw_gen_test.csv (data.path / data.test_path)")
        return RawSplits(train, test, False, sft or [], ppl, info)


TASK = JigsawTask()
