"""rajax.tasks: prompts = decode(encode(text)[:P]), the paper's splits (spec §3, §4.1-4.2, §6.2).

Uses ../shared/data (the real GPT-2 tokenizer, the paper's Jigsaw-Gen test CSV and the RTP split
indices) through the ``shared_data`` fixture; those tests skip where it is absent.
"""
import csv
import json

import numpy as np
import pytest

from rajax import config as C
from rajax import tasks as T


class CharTok:
    """A stand-in tokenizer: one id per character (HF call / batch_decode interface)."""

    def __call__(self, texts, verbose=False):
        return {"input_ids": [[ord(c) for c in t] for t in texts]}

    def batch_decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=False):
        return ["".join(map(chr, x)) for x in ids]


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def cfg_for(task, **over):
    return C.load_config(task, overrides={k.replace("__", "."): v for k, v in over.items()})


# --- basics -----------------------------------------------------------------------------------
def test_left_pad_and_encode_prompts():
    ids, mask = T.left_pad([[5, 6], [7], []], 3, 0)
    np.testing.assert_array_equal(ids, [[0, 5, 6], [0, 0, 7], [0, 0, 0]])
    np.testing.assert_array_equal(mask, [[0, 1, 1], [0, 0, 1], [0, 0, 0]])
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    with pytest.raises(ValueError, match="width"):
        T.left_pad([[1, 2, 3, 4]], 3, 0)
    ps = T.encode_prompts(["hello world", "ab"], CharTok(), 4, labels=[1, 0])
    assert ps.ids == [[104, 101, 108, 108], [97, 98]] and ps.texts == ["hell", "ab"]
    assert ps.sources == ["hello world", "ab"] and list(ps.labels) == [1, 0]
    sub = ps.select([1])
    assert sub.texts == ["ab"] and list(sub.labels) == [0] and len(sub) == 1
    assert T.build_prompts(["hello world"], CharTok(), 5) == ["hello"]
    assert T.clean_up_tokenization("I do n't know , he 's here .") == "I don't know, he's here."


def test_split_arithmetic_matches_datasets():
    datasets = pytest.importorskip("datasets")
    n = 103
    ds = datasets.Dataset.from_dict({"i": list(range(n))})
    tr, te = T.hf_train_test_split(n, 0.2, 42)
    sp = ds.train_test_split(test_size=0.2, seed=42)
    assert list(tr) == sp["train"]["i"] and list(te) == sp["test"]["i"]
    assert list(T.hf_shuffle(n, 42)) == ds.shuffle(seed=42)["i"]
    assert T.ratio_count(17395) == 40588 and T.ratio_count(11092) == 25881


# --- RTP: the paper's splits, index for index (spec §6.2) --------------------------------------
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
    s = T.rtp_split_indices(synthetic_rtp_toxicity(rtp_npz))
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
    d = T.load_task_data(cfg, CharTok())
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
    d = T.load_task_data(cfg, CharTok())
    full = T.rtp_split_indices([None if i % 50 == 0 else t for i, t in enumerate(tox)])
    assert d.train.texts == [f"prompt number {i}"[:9] for i in full["train"]]
    assert d.train.sources == [f"prompt number {i}" for i in full["train"]]
    test_sources = [f"prompt number {i}" for i in full["test"]]
    assert len(d.test) == 10 and all(s in test_sources for s in d.test.sources)
    pos = [test_sources.index(s) for s in d.test.sources]
    assert pos == sorted(pos)  # a subset kept in file order


# --- Jigsaw (spec §3.2) -----------------------------------------------------------------------
def test_jigsaw_gen_prompts_from_the_paper_test_csv(shared_data):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(shared_data / "gpt2-tokenizer"))
    test_csv = shared_data / "jigsaw" / "jigsaw_gen_test.csv"
    comments = T.read_table(test_csv)["comment_text"]
    cfg = cfg_for("jigsaw", data__test_path=str(test_csv))
    assert cfg.reward.clean_up_spaces  # the preset decodes as the paper's transformers 4 did
    d = T.load_task_data(cfg, tok, require=("test",))
    assert d.train is None and len(d.test) == 7708 and int(d.test.labels.sum()) == 3854
    assert sum(len(x) == 8 for x in d.test.ids) == 7707  # one comment ("WTF U....") is only 6 tokens
    for i in np.random.default_rng(0).choice(len(comments), 300, replace=False):  # per row, as the spec writes it
        ids = tok.encode(comments[i])[:8]
        assert d.test.ids[i] == ids and d.test.texts[i] == T.clean_up_tokenization(tok.decode(ids))
    toxic = d.test.labels
    assert d.ppl_texts == [c[:500] for c, y in zip(comments, toxic) if y == 0]  # §4.2
    # Share of prompts that are a prefix of their comment: the spec's 99.1% for the paper's prompts
    # (§6.1) with the transformers-4 cleanup, 99.8% for plain decode(encode(c)[:8]).
    raw = T.decode_all(tok, d.test.ids)
    rate = np.mean([c.startswith(p) for c, p in zip(comments, d.test.texts)])
    raw_rate = np.mean([c.startswith(p) for c, p in zip(comments, raw)])
    assert abs(rate - 0.991) < 0.0005 and raw_rate > 0.997, (rate, raw_rate)


def make_kaggle_dir(tmp_path, n=300, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        toxic = int(rng.uniform() < 0.2)
        text = f"comment {i} " + "x" * int(rng.integers(30, 90))
        rows.append([f"id{i}", text, toxic, 0, 0, 0, 0, 0])
    d = tmp_path / "kaggle"
    d.mkdir()
    write_csv(d / "train.csv", ["id", "comment_text", *T.JIGSAW_LABELS], rows)
    return d, rows


def test_jigsaw_train_split_from_kaggle_csv(tmp_path):
    d, rows = make_kaggle_dir(tmp_path)
    test = tmp_path / "jigsaw_gen_test.csv"
    write_csv(test, ["comment_text", *T.JIGSAW_LABELS, "reward"],
              [["a long toxic comment " * 5, 1, 0, 0, 0, 0, 0, -3.0], ["a long nice comment " * 5, 0, 0, 0, 0, 0, 0, 7.0]])
    cfg = cfg_for("jigsaw", data__path=str(d), data__test_path=str(test), generation__prompt_tokens=12)
    data = T.load_task_data(cfg, CharTok(), require=("train", "test"))
    long_tox = [r[1] for r in rows if r[2] == 1 and len(r[1]) > 64]
    long_non = [r[1] for r in rows if r[2] == 0 and len(r[1]) > 64]
    k = int(len(long_tox) * 70 / 30)
    assert k < len(long_non)
    assert len(data.train) == len(long_tox) + k
    assert data.train.sources[:len(long_tox)] == long_tox  # every toxic comment > 64 chars, file order
    sampled = data.train.sources[len(long_tox):]
    assert set(sampled) <= set(long_non) and len(set(sampled)) == k
    assert sampled == [t for t in long_non if t in set(sampled)]  # file order
    assert list(data.train.labels) == [1] * len(long_tox) + [0] * k
    assert data.sft_texts == sampled and all(len(t) > 64 for t in data.train.sources)
    assert data.test.texts == [("a long toxic comment " * 5)[:12], ("a long nice comment " * 5)[:12]]
    assert data.ppl_texts == [("a long nice comment " * 5)[:500]]
    again = T.load_task_data(cfg, CharTok())
    assert again.train.sources == data.train.sources  # seeded
    # the test CSV is also found next to train.csv
    (d / "jigsaw_gen_test.csv").write_bytes(test.read_bytes())
    assert len(T.load_task_data(cfg_for("jigsaw", data__path=str(d)), CharTok()).test) == 2


# --- IMDB (spec §3.1, §4.1, §4.2) ---------------------------------------------------------------
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
    data = T.load_task_data(cfg, CharTok())

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


# --- file source and errors -------------------------------------------------------------------
def test_file_source(tmp_path):
    write_csv(tmp_path / "train.csv", ["body", "y"], [["first prompt", 1], ["", 0], ["second one", 0]])
    with open(tmp_path / "held.jsonl", "w") as f:
        f.write(json.dumps({"body": "held out", "y": 1}) + "\n")
    cfg = cfg_for("rtp", data__source="file", data__path=str(tmp_path / "train.csv"), data__text_column="body",
                  data__label_column="y", data__test_path=str(tmp_path / "held.jsonl"), generation__prompt_tokens=5)
    d = T.load_task_data(cfg, CharTok())
    assert d.train.texts == ["first", "secon"] and list(d.train.labels) == [1, 0]  # the empty row is dropped
    assert d.test.texts == ["held "] and d.ppl_texts == ["held out"] and d.sft_texts == ["first prompt", "second one"]
    spaced = T.load_task_data(C.load_config(cfg, None, ["generation.prompt_tokens=20", "reward.clean_up_spaces=true"]),
                              CharTok())
    assert spaced.test.texts == ["held out"]
    write_csv(tmp_path / "train.csv", ["body"], [["it 's here , ok ."]])
    plain = cfg_for("rtp", data__source="file", data__path=str(tmp_path / "train.csv"), data__text_column="body",
                    reward__clean_up_spaces=False)
    assert T.load_task_data(plain, CharTok()).train.texts == ["it 's here , ok ."]
    cleaned = C.load_config(plain, None, ["reward.clean_up_spaces=true"])
    assert T.load_task_data(cleaned, CharTok()).train.texts == ["it's here, ok."]
    bad = cfg_for("rtp", data__source="file", data__path=str(tmp_path / "train.csv"), data__text_column="text")
    with pytest.raises(ValueError, match="'body'") as ei:
        T.load_task_data(bad, CharTok())
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize("task", ["imdb", "rtp", "jigsaw"])
def test_no_hub_and_no_local_path_names_the_flag(task):
    with pytest.raises(ValueError, match="--data") as ei:
        T.load_task_data(C.load_config(task), CharTok())
    assert "\n" not in str(ei.value)


def test_missing_local_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data"):
        T.load_task_data(cfg_for("rtp", data__path=str(tmp_path / "nope.jsonl")), CharTok())
    with pytest.raises(FileNotFoundError, match="train.csv"):
        T.load_task_data(cfg_for("jigsaw", data__path=str(tmp_path)), CharTok())
    d, _ = make_kaggle_dir(tmp_path)
    with pytest.raises(ValueError, match="--test-path"):
        T.load_task_data(cfg_for("jigsaw", data__path=str(d)), CharTok(), require=("train", "test"))


def test_hub_datasets_are_converted(monkeypatch):
    """The hub path (datasets.load_dataset) with stand-in tables of the hub layouts."""
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load(name, **kw):
        calls.append((name, kw))
        if name == T.IMDB_HUB:
            mk = lambda s: datasets.Dataset.from_dict({"text": [f"{s} {i} " + "z" * 210 for i in range(6)],
                                                        "label": [0, 1] * 3})
            return datasets.DatasetDict({"train": mk("tr"), "test": mk("te"), "unsupervised": mk("u")})
        tox = [0.9] * 10 + [0.1] * 30 + [None] * 2
        return datasets.Dataset.from_dict({"prompt": [{"text": f"p{i}", "toxicity": t} for i, t in enumerate(tox)]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    d = T.load_task_data(cfg_for("imdb", generation__prompt_tokens=4), CharTok())
    assert len(d.train) == 6 and d.train.texts[0] == "tr 0" and d.sft_texts == [f"tr {i} " + "z" * 210 for i in (1, 3, 5)]
    assert sorted(d.test.texts) == ["te 0", "te 1", "te 2", "te 3", "te 4", "te 5"]
    r = T.load_task_data(C.load_config("rtp"), CharTok())
    s = T.rtp_split_indices([0.9] * 10 + [0.1] * 30 + [None] * 2)
    assert r.train.texts == [f"p{i}" for i in s["train"]] and len(r.test) == 4
    assert calls[1] == (T.RTP_HUB, {"split": "train", "revision": C.load_config("rtp").data.revision})
