"""Reward functions: label/sign selection, bucketing without recompiles, torch parity, PythonReward."""
import numpy as np
import pytest
from tiny import IMDB_LABELS, TOXIC_LABELS, sample_texts, torch_logits

from rajax import rewards


@pytest.fixture(scope="session")
def toxic(bert_ckpts):
    return rewards.toxic_bert(bert_ckpts["bert"], buckets=(8, 16, 32))


@pytest.fixture(scope="session")
def imdb(bert_ckpts):
    return rewards.distilbert_imdb(bert_ckpts["distil"], buckets=(8, 16, 32))


def test_presets_match_torch(bert_ckpts, toxic, imdb):
    texts = sample_texts(5, seed=4)
    tok = bert_ckpts["tokenizer"]
    assert (toxic.label, toxic.index, toxic.sign) == ("toxic", 0, -1.0)
    assert (imdb.label, imdb.index, imdb.sign) == ("POSITIVE", 1, 1.0)
    ref_tox = -torch_logits(bert_ckpts["models"]["bert"], tok, texts)[:, 0]
    ref_pos = torch_logits(bert_ckpts["models"]["distil"], tok, texts)[:, 1]
    got_tox, got_pos = toxic.score_texts(texts), imdb.score_texts(texts)
    assert got_tox.dtype == np.float32 and got_tox.shape == (5,)
    np.testing.assert_allclose(got_tox, ref_tox, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_pos, ref_pos, atol=1e-4, rtol=0)
    assert np.std(got_tox) > 0.01  # distinct texts, distinct scores
    # All logits, in id2label order.
    np.testing.assert_allclose(toxic.logits(texts), torch_logits(bert_ckpts["models"]["bert"], tok, texts),
                               atol=1e-4)


def test_call_scores_prompt_plus_response(toxic):
    prompts = ["the movie was", "i hate this", "thanks for the edit"]
    responses = [" great fun.<|endoftext|>", " stupid plot", " and the talk page!"]
    np.testing.assert_array_equal(toxic(prompts, responses),
                                  toxic.score_texts([p + r for p, r in zip(prompts, responses)]))
    with pytest.raises(ValueError, match="3 prompts but 2 responses"):
        toxic(prompts, responses[:2])
    assert toxic.score_texts([]).shape == (0,)


def test_buckets_same_scores_and_no_recompile(toxic):
    assert toxic.max_length == 64 and toxic.buckets == (8, 16, 32, 64)
    short = "the movie was great"
    longer = sample_texts(7, seed=5, lo=12, hi=20)
    very_long = " ".join(["the movie was really very good"] * 20)  # > 64 tokens: truncated
    batches = toxic.encode([short] + longer)
    assert [b[0].shape for b in batches] == [(8, 32)]
    alone = toxic.score_texts([short])
    assert toxic.encode([short])[0][0].shape == (8, 8)
    full = toxic.score_texts([short] + longer)  # bucket 32
    mixed = toxic.score_texts([short, very_long])  # bucket 64
    np.testing.assert_allclose(full[0], alone[0], atol=1e-5)
    np.testing.assert_allclose(mixed[0], alone[0], atol=1e-5)
    # Truncation like pipeline(truncation=True) at 64 tokens.
    tok = toxic.tokenizer
    cut = tok.decode(tok(very_long, truncation=True, max_length=64)["input_ids"][1:-1])
    np.testing.assert_allclose(mixed[1], toxic.score_texts([cut])[0], atol=1e-5)
    # New texts of already-seen shapes hit the compiled cache.
    n = toxic.fn._cache_size()
    toxic.score_texts(["i love this film"])
    toxic.score_texts(sample_texts(8, seed=6, lo=12, hi=20))
    toxic(["you are"], [" kind"])
    assert toxic.fn._cache_size() == n


def test_fixed_batch_size_chunks(bert_ckpts, toxic):
    rm = rewards.toxic_bert(bert_ckpts["bert"], buckets=(8, 16, 32), batch_size=4)
    texts = sample_texts(10, seed=7)
    chunks = rm.encode(texts)
    assert [c[0].shape[0] for c in chunks] == [4, 4, 4] and [c[2] for c in chunks] == [4, 4, 2]
    np.testing.assert_allclose(rm.score_texts(texts), toxic.score_texts(texts), atol=1e-5)


def test_label_selection_and_errors(bert_ckpts):
    rm = rewards.load_reward_model(bert_ckpts["bert"], label="INSULT")
    assert (rm.index, rm.label, rm.sign) == (4, "insult", 1.0)
    assert rewards.load_reward_model(bert_ckpts["bert"], label="toxic", index=2).label == "obscene"
    assert rewards.load_reward_model(bert_ckpts["distil"], label="positive", sign=-1).index == 1
    t = rewards.reward_for_task("toxic", bert_ckpts["bert"])
    p = rewards.reward_for_task("positive", bert_ckpts["distil"], max_length=16)
    assert (t.label, t.sign, p.label, p.sign, p.buckets) == ("toxic", -1.0, "POSITIVE", 1.0, (8, 16))
    o = rewards.reward_for_task("toxic", bert_ckpts["bert"], label="insult", sign=1)  # presets are overridable
    assert (o.label, o.sign) == ("insult", 1.0)
    with pytest.raises(ValueError, match=r"label 'funny' is not one of the checkpoint's labels \['NEGATIVE', "
                                         r"'POSITIVE'\]"):
        rewards.load_reward_model(bert_ckpts["distil"], label="funny")
    with pytest.raises(ValueError, match="choose a label .*severe_toxic"):
        rewards.load_reward_model(bert_ckpts["bert"])
    with pytest.raises(ValueError, match="index 9 out of range"):
        rewards.load_reward_model(bert_ckpts["bert"], index=9)
    with pytest.raises(ValueError, match="unknown reward kind 'sarcasm'"):
        rewards.reward_for_task("sarcasm", bert_ckpts["bert"])
    with pytest.raises(ValueError, match="sign must be"):
        rewards.load_reward_model(bert_ckpts["bert"], label="toxic", sign=2)
    with pytest.raises(FileNotFoundError, match="--reward-model '/no/such/ckpt'"):
        rewards.toxic_bert("/no/such/ckpt")
    assert TOXIC_LABELS[4] == "insult" and IMDB_LABELS[1] == "POSITIVE"


def test_python_reward(toxic):
    r = rewards.PythonReward(lambda text: float(text.lower().count("great")))
    out = r(["The movie was", "bad"], [" great, just great.", " film"])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [2.0, 0.0])
    rb = rewards.PythonReward(lambda texts: [len(t) for t in texts], batched=True)
    np.testing.assert_array_equal(rb.score_texts(["ab", "abcd"]), [2.0, 4.0])
    for reward in (r, rb, toxic):
        assert isinstance(reward, rewards.Reward)
    bad = rewards.PythonReward(lambda t: float("nan") if "x" in t else 1.0)
    with pytest.raises(ValueError, match="returned nan for text 2"):
        bad.score_texts(["a", "b", "x", "y"])
    with pytest.raises(ValueError, match="returned inf for text 0"):
        rewards.PythonReward(lambda ts: [np.inf, 0.0], batched=True).score_texts(["a", "b"])
    with pytest.raises(ValueError, match="returned 1 scores for 2 texts"):
        rewards.PythonReward(lambda ts: [0.0], batched=True).score_texts(["a", "b"])
    with pytest.raises(ValueError, match="must return numbers"):
        rewards.PythonReward(lambda t: "high").score_texts(["a"])
