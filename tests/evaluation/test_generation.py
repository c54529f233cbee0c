"""rajax.evaluation.generation: responses keep EOS and special tokens, and R̄'s KL sums match transformers."""
import dataclasses

import jax
import numpy as np
import pytest

from rajax import tasks
from rajax.core import rollout
from rajax.evaluation import generation as E


def _eos_policy(tiny_lm, eos_logit=2000.0):
    """The tiny policy, changed so that its next token is EOS with probability ~1 everywhere: the
    final LayerNorm outputs a constant, a large multiple of EOS's (tied) output embedding."""
    params = jax.tree.map(np.asarray, tiny_lm["params"])
    wte = params["wte"]["embedding"]
    eos = tiny_lm["tok"].eos_token_id
    bias = eos_logit * wte[eos] / np.square(wte[eos]).sum()  # hidden . wte[eos] = eos_logit
    params = {**params, "ln_f": {"scale": np.zeros_like(params["ln_f"]["scale"]), "bias": bias}}
    logits = wte @ params["ln_f"]["bias"]
    assert logits.argmax() == eos and np.sort(logits)[-1] - np.sort(logits)[-2] > 20  # EOS wins by far
    return params


def test_generate_keeps_eos_and_decodes_with_special_tokens(tiny_lm):
    """Responses stop at their first EOS, keep it (mask 1) and decode it as the literal
    "<|endoftext|>" (quirk #13); min_length suppresses it for the first tokens; same key, same text."""
    tok = tiny_lm["tok"]
    params = _eos_policy(tiny_lm)
    texts = ["the cat sat", "a quiet town had a small", "we", "this film was wonderful"]
    enc = [tok(t, add_special_tokens=False)["input_ids"][:4] for t in texts]
    ps = {"ids": enc, "prompts": [tok.decode(e) for e in enc]}
    eos, n = tok.eos_token_id, 6
    settings = rollout.SampleSettings(max_new_tokens=n, eos_id=eos, pad_id=eos, min_length=0,
                                      min_length_mode="new_tokens")
    resp, toks, mask = E.generate(tiny_lm["cfg"], params, tok, ps, settings=settings, batch_size=3,
                                  key=jax.random.key(0), return_tokens=True)
    assert resp == ["<|endoftext|>"] * 4  # EOS first, kept, decoded with special tokens
    np.testing.assert_array_equal(mask, np.eye(1, n, dtype=np.int32).repeat(4, 0))
    assert (toks[:, 0] == eos).all()
    # With at least 3 new tokens: 3 other tokens, then EOS, then padding (mask 0).
    three = dataclasses.replace(settings, min_length=3)
    resp, toks, mask = E.generate(tiny_lm["cfg"], params, tok, ps, settings=three, batch_size=3,
                                  key=jax.random.key(0), return_tokens=True)
    assert (mask.sum(1) == 4).all() and (toks[:, 3] == eos).all() and not (toks[:, :3] == eos).any()
    assert all(r.endswith("<|endoftext|>") and r.count("<|endoftext|>") == 1 for r in resp)
    assert resp == tasks.decode_all(tok, [t[:4] for t in toks])
    again = E.generate(tiny_lm["cfg"], params, tok, ps, settings=three, batch_size=4, key=jax.random.key(0))
    assert len(again) == 4 and all(r.endswith("<|endoftext|>") for r in again)


def test_kl_sums_match_transformers(eval_run, tiny_lm):
    """Σ_t (log π_b − log π_a) over ragged responses after left-padded prompts, against torch per row."""
    import torch
    from transformers import GPT2LMHeadModel

    from rajax.io import hf

    root = tiny_lm["root"]
    cfg_b, params_b = hf.load(str(root / "gpt2b"))
    tm_a, tm_b = tiny_lm["torch_model"], GPT2LMHeadModel.from_pretrained(root / "gpt2b")
    rng = np.random.default_rng(0)
    B, P, N, V = 5, 4, 6, tiny_lm["cfg"].vocab_size
    ids = rng.integers(0, V - 1, (B, P)).astype(np.int32)
    pmask = np.ones((B, P), np.int32)
    pmask[1, :2] = 0
    pmask[3, :3] = 0
    toks = rng.integers(0, V - 1, (B, N)).astype(np.int32)
    lens = np.array([6, 3, 1, 5, 6])
    rmask = (np.arange(N)[None] < lens[:, None]).astype(np.int32)
    got = E.kl_sums(cfg_b, params_b, tiny_lm["params"], ids, pmask, toks, rmask, batch_size=2)
    for j in range(B):
        seq = np.concatenate([ids[j][pmask[j] > 0], toks[j][: lens[j]]])
        x = torch.tensor(seq[None].astype(np.int64))
        with torch.no_grad():
            la = torch.log_softmax(tm_a(x).logits[0].double(), -1)
            lb = torch.log_softmax(tm_b(x).logits[0].double(), -1)
        p = int(pmask[j].sum())
        want = sum(float(lb[p - 1 + t, seq[p + t]] - la[p - 1 + t, seq[p + t]]) for t in range(lens[j]))
        assert got[j] == pytest.approx(want, abs=1e-4)
