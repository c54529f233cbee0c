"""rajax.tasks.rtp: the paper's RTP-Gen splits, reproduced index for index (docs/paper.md §3.3, §6.2).

The split-index check uses the real reference indices through the ``shared_data`` fixture; it skips
where they are absent.
"""
import json

import numpy as np
import pytest
from tiny import CharTok, cfg_for, write_csv

from rajax import tasks
from rajax.tasks import rtp


# --- RTP: the paper's splits, index for index (docs/paper.md §6.2) --------------------------------------
@pytest.fixture(scope="module")
def rtp_npz(request):
    shared = request.getfixturevalue("shared_data")
    path = shared / "rtp" / "paper_splits.npz"
    if not path.is_file():
        pytest.skip("rtp/paper_splits.npz is absent")
    z = np.load(path)
    return {k: z[k] for k in z.files}


def synthetic_rtp_toxicity(z, n=99442):
    """Per-row prompt toxicity with the paper's labels at the paper's rows: 0.9 / 0.1 / None."""
    tox = [None] * n
    for i in z["toxic"]:
        tox[i] = 0.9
    for i in z["nontoxic"]:
        tox[i] = 0.1
    return tox


def test_rtp_split_indices_reproduce_paper_splits(rtp_npz):
    s = rtp.rtp_split_indices(synthetic_rtp_toxicity(rtp_npz))
    for k in ("labeled", "toxic", "nontoxic", "train_toxic", "test_toxic", "train_nontoxic", "test_nontoxic",
              "train", "test"):
        np.testing.assert_array_equal(s[k], rtp_npz[k], err_msg=k)
    assert (len(s["train"]), len(s["test"])) == (57983, 8698)


def test_rtp_loader_on_a_local_jsonl_reproduces_paper_splits(rtp_npz, tmp_path):
    tox = synthetic_rtp_toxicity(rtp_npz)
    path = tmp_path / "prompts.jsonl"
    with open(path, "w") as f:  # the hub file's nested layout: {"prompt": {"text", "toxicity", ...}, ...}
        for i, t in enumerate(tox):
            f.write(json.dumps({"filename": f"{i}.txt", "prompt": {"text": f"p{i}", "toxicity": t},
                                "continuation": {"text": "c", "toxicity": 0.0}}) + "\n")
    cfg = cfg_for("rtp", data__path=str(tmp_path), eval__ppl_max_chars=3)
    d = tasks.load(cfg, CharTok())
    assert d.train.texts == [f"p{i}" for i in rtp_npz["train"]]
    assert d.test.texts == [f"p{i}" for i in rtp_npz["test"]]
    assert d.train.labels.sum() == 17395 and d.test.labels.sum() == 4349
    assert list(d.test.labels[:4349]) == [1] * 4349 and not d.test.labels[4349:].any()
    assert d.sft_texts == [f"p{i}" for i in rtp_npz["train_nontoxic"]]
    assert d.ppl_texts == [f"p{i}"[:3] for i in rtp_npz["test_nontoxic"]]  # preset: all 4,349 non-toxic
    assert d.info["labeled"] == 99016


def test_rtp_flat_columns_and_test_subset(tmp_path):
    rng = np.random.default_rng(1)
    n = 400
    tox = rng.uniform(0, 1, n) ** 2  # about 30% toxic
    path = tmp_path / "rtp.csv"
    write_csv(path, ["Prompt", "Perspective"], [[f"prompt number {i}", "" if i % 50 == 0 else t]
                                                 for i, t in enumerate(tox)])
    cfg = cfg_for("rtp", data__path=str(path), eval__test_size=10, generation__prompt_tokens=9)
    d = tasks.load(cfg, CharTok())
    full = rtp.rtp_split_indices([None if i % 50 == 0 else t for i, t in enumerate(tox)])
    assert d.train.texts == [f"prompt number {i}"[:9] for i in full["train"]]
    assert d.train.sources == [f"prompt number {i}" for i in full["train"]]
    test_sources = [f"prompt number {i}" for i in full["test"]]
    assert len(d.test) == 10 and all(s in test_sources for s in d.test.sources)
    pos = [test_sources.index(s) for s in d.test.sources]
    assert pos == sorted(pos)  # a subset kept in file order
