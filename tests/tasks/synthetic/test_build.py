"""rajax.tasks.synthetic.build: the tokenizer, the pretrained policy and the reward classifier, and
the asset cache. One small-sized build (the session fixture ``synthetic_assets``) serves every test.
"""
import json
import os
import shutil

import numpy as np

from rajax.tasks.synthetic import build, world


def test_tokenizer_round_trips():
    c = world.generate(1, n_train=300, n_test=2, n_lm=300, n_clf=1)
    tok = build._train_tokenizer(c.lm + c.train)
    assert build._train_tokenizer(c.lm + c.train).backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    assert tok.eos_token == tok.pad_token == world.EOS and 300 < len(tok) <= build.TOKENIZER_VOCAB
    for text in c.train[:50] + ["Unknown wörds 123, still fine." + world.EOS]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    assert tok.encode("the dog")[0] != tok.eos_token_id  # no BOS, like GPT-2
    assert tok.encode(world.EOS) == [tok.eos_token_id]
    # the vocabulary is word-level for the generator's words: a prompt of 8 tokens is ~6 words
    ids = [tok.encode(t) for t in c.train[:100]]
    words = world.word_counts(c.train[:100])[:, 0]
    assert np.mean([len(i) for i in ids] / words) < 1.6
    ctok = build._with_cls_prefix(tok)
    assert ctok("the dog")["input_ids"] == [tok.eos_token_id] + tok.encode("the dog")
    assert ctok("the dog", add_special_tokens=False)["input_ids"] == tok.encode("the dog")


def test_prepare_builds_loadable_assets(synthetic_assets):
    from transformers import AutoTokenizer

    from rajax import rewards
    from rajax.io import hf

    a, _ = synthetic_assets
    assert not any(p.name.startswith(".") for p in os.scandir(os.path.dirname(a.root)))  # no tmp left
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    assert tok.eos_token_id == 0 and tok.decode(tok.encode("Shut up, you idiot.")) == "Shut up, you idiot."
    cfg, params = hf.load(a.policy)
    assert cfg.vocab_size == len(tok) and cfg.n_layer == build.POLICY["n_layer"]
    assert params["wte"]["embedding"].shape == (len(tok), build.POLICY["n_embd"])
    assert AutoTokenizer.from_pretrained(a.policy).encode("the dog") == tok.encode("the dog")
    rm = rewards.load_reward_model(a.reward_model, label="toxic", sign=-1)
    assert rm.labels == ["toxic"]
    test = build.read_jsonl(os.path.join(a.data, "test.jsonl"))
    texts = [r["text"] for r in test]
    labels = np.array([r["label"] for r in test])
    r = rm.score_texts(texts)
    gt = world.ground_truth_score(texts)
    # the small classifier already beats chance clearly on the held-out test documents
    acc = np.mean((r > 0) == (gt >= 0))
    assert acc > 0.75, acc
    assert np.corrcoef(r, gt)[0, 1] > 0.5
    assert r[labels == 1].mean() < r[labels == 0].mean()
    rep = build.build_report(a)
    assert rep["counts"]["test"] == len(texts) and rep["classifier"]["test_accuracy"] > 0.75


def test_prepare_hits_the_cache_and_rebuilds_on_a_new_stamp(synthetic_assets, tmp_path, monkeypatch):
    a, _ = synthetic_assets
    stamp = os.path.join(a.root, build.STAMP)
    mtime = os.path.getmtime(stamp)
    assert build.prepare(a.root, small=True, progress=False) == a  # a cache hit rewrites nothing
    assert os.path.getmtime(stamp) == mtime
    # On a copy: count the builds (a stand-in for the expensive _build that writes a marker).
    root = tmp_path / "copy"
    shutil.copytree(a.root, root)
    calls = []

    def counting_build(out, seed, size, progress):
        calls.append((seed, size))
        (out / "marker").write_text("rebuilt")
        return {"seconds": 0.0}

    monkeypatch.setattr(build, "_build", counting_build)
    build.prepare(root, small=True, progress=False)
    assert calls == []  # same stamp: no rebuild
    monkeypatch.setattr(build, "VERSION", "synthetic-v0-test")
    build.prepare(root, small=True, progress=False)
    assert calls == [(0, "small")]  # a new generator version rebuilds once
    assert (root / "marker").read_text() == "rebuilt" and not (root / "policy").exists()  # replaced, not mixed
    assert json.loads((root / build.STAMP).read_text())["build"]["version"] == "synthetic-v0-test"
    build.prepare(root, small=True, progress=False)
    assert len(calls) == 1  # and is a cache hit afterwards
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary directory left
    # Seed and size are part of the stamp as well.
    assert not build._is_built(root, build._stamp(1, "small")) and not build._is_built(root, build._stamp(0, "full"))
