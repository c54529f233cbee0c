"""rajax.tasks.imdb: a local directory gives what the paper's `datasets` pipeline gives (docs/paper.md §3.1)."""
import numpy as np
import pytest
from tiny import CharTok, cfg_for, write_csv

from rajax import tasks


# --- IMDB (docs/paper.md §3.1, §4.1, §4.2) ---------------------------------------------------------------
def test_imdb_local_dir_matches_the_datasets_pipeline(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(3)
    d = tmp_path / "imdb"
    d.mkdir()
    splits = {}
    for split, n in (("train", 60), ("test", 80)):
        rows = [[f"{split} review {i} " + "w" * int(rng.integers(150, 260)), int(rng.integers(0, 2))]
                for i in range(n)]
        write_csv(d / f"{split}.csv", ["text", "label"], rows)
        splits[split] = rows
    cfg = cfg_for("imdb", data__path=str(d), eval__test_size=7, eval__ppl_num_texts=5, eval__ppl_max_chars=20,
                  generation__prompt_tokens=16)
    data = tasks.load(cfg, CharTok())

    def hf(split):
        return datasets.Dataset.from_dict({"review": [r[0] for r in splits[split]],
                                           "label": [r[1] for r in splits[split]]})

    train = hf("train").filter(lambda x: len(x["review"]) > 200)
    test = hf("test").filter(lambda x: len(x["review"]) > 200).shuffle(seed=0).select(range(7))
    ppl = hf("test").filter(lambda x: len(x["review"]) > 200 and x["label"] == 1).shuffle(seed=42).select(range(5))
    assert data.train.sources == train["review"] and list(data.train.labels) == train["label"]
    assert data.test.sources == test["review"] and list(data.test.labels) == test["label"]
    assert data.test.texts == [r[:16] for r in test["review"]]
    assert data.ppl_texts == [r[:20] for r in ppl["review"]]
    assert data.sft_texts == [r[0] for r in splits["train"] if r[1] == 1]  # all positive, no length filter
