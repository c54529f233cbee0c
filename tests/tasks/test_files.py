"""rajax.tasks.files: local tables, the `file` task, hub datasets, and one-line data errors."""
import json

import pytest
from tiny import CharTok, cfg_for, make_kaggle_dir, write_csv

from rajax import config as C
from rajax import tasks
from rajax.tasks import imdb, rtp


# --- file source and errors -------------------------------------------------------------------
def test_file_source(tmp_path):
    write_csv(tmp_path / "train.csv", ["body", "y"], [["first prompt", 1], ["", 0], ["second one", 0]])
    with open(tmp_path / "held.jsonl", "w") as f:
        f.write(json.dumps({"body": "held out", "y": 1}) + "\n")
    cfg = cfg_for("rtp", data__source="file", data__path=str(tmp_path / "train.csv"), data__text_column="body",
                  data__label_column="y", data__test_path=str(tmp_path / "held.jsonl"), generation__prompt_tokens=5)
    d = tasks.load(cfg, CharTok())
    assert d.train.texts == ["first", "secon"] and list(d.train.labels) == [1, 0]  # the empty row is dropped
    assert d.test.texts == ["held "] and d.ppl_texts == ["held out"] and d.sft_texts == ["first prompt", "second one"]
    spaced = tasks.load(C.load_config(cfg, None, ["generation.prompt_tokens=20", "reward.clean_up_spaces=true"]),
                              CharTok())
    assert spaced.test.texts == ["held out"]
    write_csv(tmp_path / "train.csv", ["body"], [["it 's here , ok ."]])
    plain = cfg_for("rtp", data__source="file", data__path=str(tmp_path / "train.csv"), data__text_column="body",
                    reward__clean_up_spaces=False)
    assert tasks.load(plain, CharTok()).train.texts == ["it 's here , ok ."]
    cleaned = C.load_config(plain, None, ["reward.clean_up_spaces=true"])
    assert tasks.load(cleaned, CharTok()).train.texts == ["it's here, ok."]
    bad = cfg_for("rtp", data__source="file", data__path=str(tmp_path / "train.csv"), data__text_column="text")
    with pytest.raises(ValueError, match="'body'") as ei:
        tasks.load(bad, CharTok())
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize("task", ["imdb", "rtp", "jigsaw"])
def test_no_hub_and_no_local_path_names_the_flag(task):
    with pytest.raises(ValueError, match="--data") as ei:
        tasks.load(C.load_config(task), CharTok())
    assert "\n" not in str(ei.value)


def test_missing_local_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data"):
        tasks.load(cfg_for("rtp", data__path=str(tmp_path / "nope.jsonl")), CharTok())
    with pytest.raises(FileNotFoundError, match="train.csv"):
        tasks.load(cfg_for("jigsaw", data__path=str(tmp_path)), CharTok())
    d, _ = make_kaggle_dir(tmp_path)
    with pytest.raises(ValueError, match="--test-path"):
        tasks.load(cfg_for("jigsaw", data__path=str(d)), CharTok(), require=("train", "test"))


def test_hub_datasets_are_converted(monkeypatch):
    """The hub path (datasets.load_dataset) with stand-in tables of the hub layouts."""
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load(name, **kw):
        calls.append((name, kw))
        if name == imdb.IMDB_HUB:
            mk = lambda s: datasets.Dataset.from_dict({"text": [f"{s} {i} " + "z" * 210 for i in range(6)],
                                                        "label": [0, 1] * 3})
            return datasets.DatasetDict({"train": mk("tr"), "test": mk("te"), "unsupervised": mk("u")})
        tox = [0.9] * 10 + [0.1] * 30 + [None] * 2
        return datasets.Dataset.from_dict({"prompt": [{"text": f"p{i}", "toxicity": t} for i, t in enumerate(tox)]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    d = tasks.load(cfg_for("imdb", generation__prompt_tokens=4), CharTok())
    assert len(d.train) == 6 and d.train.texts[0] == "tr 0" and d.sft_texts == [f"tr {i} " + "z" * 210 for i in (1, 3, 5)]
    assert sorted(d.test.texts) == ["te 0", "te 1", "te 2", "te 3", "te 4", "te 5"]
    r = tasks.load(C.load_config("rtp"), CharTok())
    s = rtp.rtp_split_indices([0.9] * 10 + [0.1] * 30 + [None] * 2)
    assert r.train.texts == [f"p{i}" for i in s["train"]] and len(r.test) == 4
    assert calls[1] == (rtp.RTP_HUB, {"split": "train", "revision": C.load_config("rtp").data.revision})


def test_a_hub_dataset_id_through_datasets(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load(name, **kw):
        calls.append((name, kw))
        texts = {"train": ["alpha one", "", "beta two"], "validation": ["gamma three"]}[kw["split"]]
        return datasets.Dataset.from_dict({"body": texts})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    for source in ("file", "hub"):
        cfg = cfg_for("rtp", data__source=source, data__path="someone/headlines", data__text_column="body",
                      data__split="train", data__test_split="validation", generation__prompt_tokens=20,
                      data__revision="null")
        d = tasks.load(cfg, CharTok(), require=("train", "test"))
        assert d.train.texts == ["alpha one", "beta two"] and d.test.texts == ["gamma three"]
    assert calls[0] == ("someone/headlines", {"split": "train"})
    with pytest.raises(ValueError, match="data.source=hub: --data .* is a local path"):
        tasks.prepare(cfg_for("rtp", data__source="hub", data__path="."), check_hub=False)
