"""The embedded offline task `synthetic` (rajax/synthetic.py, docs/synthetic.md).

One small-sized `prepare` (module fixture) builds real assets in a tmp dir; every other test is
seconds of numpy / tokenizer work.
"""
import json
import os
import time

import numpy as np
import pytest

from rajax import synthetic as syn


# ------------------------------------------------------------------------------------------------
# Generator and ground truth (no JAX)
# ------------------------------------------------------------------------------------------------
SMALL = dict(n_train=200, n_test=100, n_lm=50, n_clf=50)


def test_generator_is_seeded_and_deterministic():
    a, b, c = syn.generate(3, **SMALL), syn.generate(3, **SMALL), syn.generate(4, **SMALL)
    for f in ("train", "test", "lm", "clf"):
        assert getattr(a, f) == getattr(b, f)
    np.testing.assert_array_equal(a.train_labels, b.train_labels)
    assert a.train != c.train
    assert len(a.train) == 200 and len(a.test) == 100 and len(a.lm) == 50
    # test split: exactly half hostile, alternating, so any head of it is balanced too
    assert a.test_labels.sum() == 50 and a.test_labels[:10].sum() == 5
    # English-like: every word comes from the generator's vocabulary, sentences are capitalised
    words = {w for t in a.train for w in syn._WORD_RE.findall(t.lower())}
    known = set(syn._NOUNS + syn._VERBS + syn._ADJS + syn._ADVS + syn._FUNC + syn._PRONOUNS + syn._CONNECT
                + ["was", "up", "what"]) | syn._HOSTILE | syn._KIND
    assert words <= known, words - known
    assert all(t[0].isupper() and t.endswith(".") for t in a.train)


def test_hostile_prompts_score_lower_and_continue_hostile():
    c = syn.generate(0, n_train=2000, n_test=2, n_lm=1, n_clf=1)
    prompts = [" ".join(t.split()[:6]) for t in c.train]
    conts = [" ".join(t.split()[6:]) for t in c.train]
    h = c.train_labels == 1
    assert 0.2 < h.mean() < 0.4  # ~30% hostile, like the paper's 70/30 train splits
    gp = syn.ground_truth_score(prompts)
    assert gp[h].mean() < gp[~h].mean() - 3.0
    # hostile openings are continued with hostile words far more often (sticky hostility state)
    hostile_cont = syn.word_counts(conts)[:, 1] > 0
    assert hostile_cont[h].mean() > 0.8
    assert hostile_cont[~h].mean() < 0.5
    assert hostile_cont[h].mean() > 2 * hostile_cont[~h].mean()
    gc = syn.ground_truth_score(conts)
    assert gc[h].mean() < gc[~h].mean() - 1.5


def test_ground_truth_score_of_any_text():
    s = syn.ground_truth_score(["the dog saw a cat", "you stupid idiot, i hate you",
                                "what a lovely kind friend, thanks", "The DOG saw a CAT<|endoftext|>",
                                "", "zzz qqq 123 !!!"])
    assert s.dtype == np.float32 and s.shape == (6,)
    assert s[0] == pytest.approx(3.0)                        # neutral
    assert s[1] < -3.0 < 6.0 < s[2]                          # hostile << kind
    assert s[3] == pytest.approx(s[0])                       # case and <|endoftext|> ignored
    assert s[4] == pytest.approx(3.0) and s[5] == pytest.approx(3.0)
    assert syn.ground_truth_score("idiot " * 100)[0] == pytest.approx(-8.0)  # clipped
    assert syn.ground_truth_score("you stupid idiot").shape == (1,)
    # the classifier's soft label is sigmoid(-score)
    t = syn.toxic_target(["the dog", "idiot " * 30])
    assert t[0] == pytest.approx(1 / (1 + np.exp(3.0)), rel=1e-5) and t[1] > 0.99


def test_tokenizer_round_trips():
    c = syn.generate(1, n_train=300, n_test=2, n_lm=300, n_clf=1)
    tok = syn._train_tokenizer(c.lm + c.train)
    assert syn._train_tokenizer(c.lm + c.train).backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    assert tok.eos_token == tok.pad_token == syn.EOS and 300 < len(tok) <= syn.TOKENIZER_VOCAB
    for text in c.train[:50] + ["Unknown wörds 123, still fine." + syn.EOS]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    assert tok.encode("the dog")[0] != tok.eos_token_id  # no BOS, like GPT-2
    assert tok.encode(syn.EOS) == [tok.eos_token_id]
    # the vocabulary is word-level for the generator's words: a prompt of 8 tokens is ~6 words
    ids = [tok.encode(t) for t in c.train[:100]]
    words = syn.word_counts(c.train[:100])[:, 0]
    assert np.mean([len(i) for i in ids] / words) < 1.6
    ctok = syn._with_cls_prefix(tok)
    assert ctok("the dog")["input_ids"] == [tok.eos_token_id] + tok.encode("the dog")
    assert ctok("the dog", add_special_tokens=False)["input_ids"] == tok.encode("the dog")


# ------------------------------------------------------------------------------------------------
# prepare(): real (small) assets
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "cache"
    t = time.time()
    a = syn.prepare(root, small=True, progress=False)
    return a, time.time() - t


def test_prepare_builds_loadable_assets(assets):
    from transformers import AutoTokenizer

    from rajax import rewards
    from rajax.models import hf

    a, _ = assets
    assert not any(p.name.startswith(".") for p in os.scandir(os.path.dirname(a.root)))  # no tmp left
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    assert tok.eos_token_id == 0 and tok.decode(tok.encode("Shut up, you idiot.")) == "Shut up, you idiot."
    cfg, params = hf.load(a.policy)
    assert cfg.vocab_size == len(tok) and cfg.n_layer == syn.POLICY["n_layer"]
    assert params["wte"]["embedding"].shape == (len(tok), syn.POLICY["n_embd"])
    assert AutoTokenizer.from_pretrained(a.policy).encode("the dog") == tok.encode("the dog")
    rm = rewards.load_reward_model(a.reward_model, label="toxic", sign=-1)
    assert rm.labels == ["toxic"]
    test = syn.read_jsonl(os.path.join(a.data, "test.jsonl"))
    texts = [r["text"] for r in test]
    labels = np.array([r["label"] for r in test])
    r = rm.score_texts(texts)
    gt = syn.ground_truth_score(texts)
    # the small classifier already beats chance clearly on the held-out test documents
    acc = np.mean((r > 0) == (gt >= 0))
    assert acc > 0.75, acc
    assert np.corrcoef(r, gt)[0, 1] > 0.5
    assert r[labels == 1].mean() < r[labels == 0].mean()
    rep = syn.build_report(a)
    assert rep["counts"]["test"] == len(texts) and rep["classifier"]["test_accuracy"] > 0.75


def test_prepare_hits_the_cache_and_rebuilds_on_a_new_stamp(assets, monkeypatch):
    a, built_s = assets
    stamp = os.path.join(a.root, syn.STAMP)
    mtime = os.path.getmtime(stamp)
    t = time.time()
    b = syn.prepare(a.root, small=True, progress=False)
    assert b == a and time.time() - t < 0.5 < built_s
    assert os.path.getmtime(stamp) == mtime
    # a changed generator version (or seed / size) no longer matches the stamp -> would rebuild
    import pathlib

    assert syn._is_built(pathlib.Path(a.root), syn._stamp(0, "small"))
    assert not syn._is_built(pathlib.Path(a.root), syn._stamp(1, "small"))
    assert not syn._is_built(pathlib.Path(a.root), syn._stamp(0, "full"))
    monkeypatch.setattr(syn, "VERSION", "synthetic-v0-test")
    assert not syn._is_built(pathlib.Path(a.root), syn._stamp(0, "small"))
    rec = json.loads(open(stamp).read())
    assert rec["build"]["version"] != syn.VERSION


def test_resolve_and_load_task_data(assets):
    from rajax import config, tasks

    a, _ = assets
    cfg = config.load_config("synthetic")
    config.validate(cfg, num_devices=8)
    assert cfg.model.policy == cfg.reward.model == "synthetic" and cfg.data.source == "synthetic"
    r = syn.resolve(cfg, cache_dir=a.root, small=True, progress=False)
    assert (r.model.policy, r.model.ref_policy, r.model.tokenizer, r.reward.model, r.data.path) == (
        a.policy, None, a.tokenizer, a.reward_model, a.data)
    r2 = syn.resolve(config.load_config(cfg, overrides=["model.ref_policy=synthetic"]), cache_dir=a.root,
                     small=True, progress=False)
    assert r2.model.ref_policy == a.policy
    assert r.ppo == cfg.ppo and r.generation == cfg.generation
    assert syn.resolve(r) is r  # nothing left to fill
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    r = config.load_config(r, overrides=["eval.test_size=10", "eval.ppl_num_texts=5", "eval.ppl_max_chars=20"])
    td = tasks.load_task_data(r, tok)  # dispatches to synthetic.load_task_data
    P = r.generation.prompt_tokens
    assert isinstance(td, tasks.TaskData) and len(td.train) == syn.SIZES["small"]["n_train"]
    assert all(len(i) == P for i in td.train.ids)  # every document is longer than the prompt
    assert td.train.texts[0] == tok.decode(td.train.ids[0])
    assert len(td.test) == 10 and td.test.labels.sum() == 5
    assert len(td.ppl_texts) == 5 and all(len(t) <= 20 for t in td.ppl_texts)
    nonhostile = [x["text"][:20] for x in syn.read_jsonl(os.path.join(a.data, "test.jsonl")) if x["label"] == 0]
    assert td.ppl_texts == nonhostile[:5]  # the paper's choice: non-toxic test texts
    assert len(td.sft_texts) == syn.SIZES["small"]["n_lm"]
    bad = config.load_config(r, overrides=[f"data.path={a.root}"])
    with pytest.raises(FileNotFoundError, match="not a synthetic data directory"):
        syn.load_task_data(bad, tok)


def test_library_example_runs(assets):
    """examples/custom_reward.py: the RA-RLHF loop written against the library, with a Python reward."""
    import importlib.util
    import math
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "custom_reward.py"
    spec = importlib.util.spec_from_file_location("custom_reward", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    last = mod.main(["--iterations", "3", "--batch", "8", "--cache", assets[0].root, "--small"])
    assert math.isfinite(last)
