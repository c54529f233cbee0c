"""rajax.sft (docs/paper.md §3 SFT rows, quirk #16): loss masking, TRL-style encoding, batching, train_lm."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rajax import sft
from rajax.models import gpt2

CFG = gpt2.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)


@pytest.fixture(scope="module")
def params():
    return gpt2.init(CFG, jax.random.key(0))


def test_loss_ignores_pad_positions(params):
    loss = jax.jit(lambda *a: sft.lm_loss(CFG, params, *a))
    row = np.array([5, 9, 12, 7, 3], np.int32)
    alone, n1 = loss(row[None], np.ones((1, 5), np.int32), np.ones((1, 5), np.int32))
    # the same row right-padded with garbage pad ids (= eos): masked, so the loss is unchanged
    padded = np.array([[5, 9, 12, 7, 3, 63, 63, 63]], np.int32)
    attn = np.array([[1, 1, 1, 1, 1, 0, 0, 0]], np.int32)
    got, n2 = loss(padded, attn, attn)
    assert float(n1) == float(n2) == 4.0
    np.testing.assert_allclose(float(got), float(alone), rtol=1e-5)
    # labels at pad positions would change it (the check can fail)
    bad, _ = loss(padded, attn, np.ones_like(attn))
    assert abs(float(bad) - float(alone)) > 1e-3
    # no target at all: zero loss (and so zero gradient)
    zero, n0 = loss(padded, attn, np.zeros_like(attn))
    assert float(zero) == 0.0 and float(n0) == 0.0


class _Tok:
    """Whitespace tokenizer with the transformers call signature the SFT encoder uses."""

    pad_token_id = 0
    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=True, truncation=False, max_length=None):
        out = []
        for t in texts:
            ids = [0 if w == "<eos>" else int(w) for w in t.split()]
            if add_special_tokens:
                ids = ids + [0]
            out.append(ids[:max_length] if truncation else ids)
        return {"input_ids": out}


def test_tokenize_for_sft_truncates_and_appends_no_eos():
    ids, attn, labels = sft.tokenize_for_sft(_Tok(), ["1 2 3 4 5 6 7", "8 9", "4 <eos> 5", ""], max_tokens=5)
    # empty texts are dropped; width = min(max_tokens, longest); no EOS appended after a text
    assert ids.shape == (3, 5)
    np.testing.assert_array_equal(ids[0], [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(ids[1], [8, 9, 0, 0, 0])
    np.testing.assert_array_equal(attn[1], [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(labels[1], [1, 1, 0, 0, 0])
    # a literal eos inside a text keeps attention but is masked from the labels (pad id == eos id)
    np.testing.assert_array_equal(attn[2], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(labels[2], [1, 0, 1, 0, 0])
    with pytest.raises(ValueError):
        sft.tokenize_for_sft(_Tok(), ["", ""], max_tokens=5)


def test_epoch_batches_cover_every_row_once():
    rng = np.random.default_rng(0)
    idx = sft.epoch_batches(21, micro_batch=4, grad_accum=2, rng=rng)
    # 21 rows -> 6 micro-batches (last partial) -> 3 optimizer steps
    assert idx.shape == (3, 2, 4) and sft.steps_per_epoch(21, 4, 2) == 3
    real = idx[idx >= 0]
    assert sorted(real.tolist()) == list(range(21))
    # all empty slots are at the end of the epoch
    flat = idx.ravel()
    assert (flat[:21] >= 0).all() and (flat[21:] == -1).all()


def _corpus(n=48, t=12, seed=0):
    """Rows counting up mod 60 from a random start, random lengths, right-padded."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, t), np.int32)
    mask = np.zeros((n, t), np.int32)
    for i in range(n):
        L = rng.integers(6, t + 1)
        ids[i, :L] = (rng.integers(0, 60) + np.arange(L)) % 60 + 1
        mask[i, :L] = 1
    return ids, mask


def test_train_lm_lowers_loss_and_data_parallel_matches_one_device(params):
    ids, mask = _corpus()
    logs = []
    kw = dict(epochs=5, lr=1e-2, micro_batch=8, grad_accum=2, seed=0, progress=False, dropout=False)
    eval_loss = jax.jit(lambda p: sft.lm_loss(CFG, p, ids, mask, mask)[0])
    before = float(eval_loss(params))
    out = sft.train_lm(CFG, params, ids, mask, log_fn=lambda s, m: logs.append((s, m)), **kw)
    after = float(eval_loss(jax.tree.map(jnp.asarray, out)))
    # 48 rows / 8 = 6 micro-batches / 2 = 3 steps per epoch; linear decay to 0 from lr
    assert [s for s, _ in logs] == list(range(1, 16))
    assert logs[0][1]["lr"] == pytest.approx(1e-2) and logs[-1][1]["lr"] == pytest.approx(1e-2 / 15)
    assert after < 0.7 * before, (before, after)
    # the value head gets no gradient from the LM loss
    np.testing.assert_array_equal(np.asarray(out["v_head"]["kernel"]), np.asarray(params["v_head"]["kernel"]))
    # the same run on one device (no mesh) gives the same parameters (up to reduction order, which
    # 15 Adam steps at lr 1e-2 amplify to ~1e-5; a missing gradient all-reduce would differ by ~1e-2)
    assert sft._mesh_for(8).size == 8
    one = sft.train_lm(CFG, params, ids, mask, data_parallel=False, **kw)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-4), out, one)
    with pytest.raises(ValueError):
        sft.train_lm(CFG, params, ids[:, :3], mask, epochs=1, lr=1e-3, micro_batch=8, grad_accum=1, seed=0)


# ----------------------------------------------------------------------------------- bin/sft e2e
