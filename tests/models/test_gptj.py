"""GPT-J (rajax.models.gptj): parity with transformers' GPTJForCausalLM on a tiny random checkpoint with
partial rotary (rotary_dim 4 of 8 channels per head) and an untied head with bias, right- and
left-padded; greedy decoding against generate(); the KV cache against a full recomputation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_lms import padded_batch, torch_logits

from rajax.core import rollout
from rajax.io import hf
from rajax.models import gptj

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model(tiny_causal_lm):
    d, tm = tiny_causal_lm("gptj")
    return (tm, *hf.load(d))


def test_config_and_params(model):
    _, cfg, params = model
    assert (cfg.rotary_dim, cfg.head_dim, cfg.inner, cfg.describe()) == (4, 8, 128, "GPT-J 2x32")
    assert params["lm_head"]["kernel"].shape == (32, 97) and params["lm_head"]["bias"].shape == (97,)
    assert "bias" not in params["h"][0]["attn"]["q_proj"] and "bias" in params["h"][0]["mlp"]["fc_in"]


@pytest.mark.parametrize("side", ["right", "left"])
def test_logits_match_transformers_on_padded_batches(model, jit_lm, side):
    tm, cfg, params = model
    ids, mask = padded_batch([12, 9, 5, 1], 12, side=side)
    ours = np.asarray(jit_lm(cfg, params, ids, mask)[0])
    ref = torch_logits(tm, ids, mask)
    real = mask.astype(bool)
    err = np.abs(ours - ref)[real].max()
    assert err <= 1e-4, err
    assert np.abs(ref[real]).max() > 0.5


def test_greedy_decoding_equals_generate(model):
    tm, cfg, params = model
    ids, mask = padded_batch([6, 4, 2, 5], 6, side="left", seed=5)
    s = rollout.sample(cfg, params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(0), 16,
                       max_new_tokens=16, eos_id=3, greedy=True)
    with torch.no_grad():
        out = tm.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                          max_new_tokens=16, min_new_tokens=16, eos_token_id=3, pad_token_id=3)
    np.testing.assert_array_equal(np.asarray(s.tokens), out[:, 6:].numpy())
    assert len(np.unique(np.asarray(s.tokens))) > 3


def test_kv_cache_decode_equals_full_recompute(model, jit_lm):
    _, cfg, params = model
    p, n = 3, 6
    ids = np.random.default_rng(3).integers(0, cfg.vocab_size, (4, p + n))
    mask = np.ones((4, p + n), np.int32)
    mask[:, :p] = np.arange(p)[None] >= p - np.array([3, 2, 1, 1])[:, None]
    mask[1, p + 2:] = 0
    full_l, full_v, _ = jit_lm(cfg, params, ids, mask)
    cache = cfg.init_cache(4, p + n)
    got_l, got_v = [], []
    for lo, hi in [(0, 3)] + [(i, i + 1) for i in range(3, p + n)]:
        lg, v, cache = jit_lm(cfg, params, ids[:, lo:hi], mask[:, lo:hi], cache)
        got_l.append(np.asarray(lg))
        got_v.append(np.asarray(v))
    real = mask.astype(bool)
    np.testing.assert_allclose(np.concatenate(got_l, 1)[real], np.asarray(full_l)[real], atol=1e-5)
    np.testing.assert_allclose(np.concatenate(got_v, 1)[real], np.asarray(full_v)[real], atol=1e-5)


def test_rotary_touches_only_the_first_rotary_dim_channels():
    cfg = gptj.GPTJConfig(n_embd=32, n_head=4, rotary_dim=4)
    x = jax.random.normal(jax.random.key(0), (1, 3, 4, 8))
    sin, cos = gptj.sincos(cfg, jnp.array([[0, 1, 7]]))
    y = gptj.rotate(x, sin, cos, 4)
    np.testing.assert_array_equal(y[..., 4:], x[..., 4:])
    np.testing.assert_allclose(y[:, 0], x[:, 0], atol=1e-7)  # position 0: no rotation
    assert float(jnp.abs(y[:, 2, :, :4] - x[:, 2, :, :4]).max()) > 0.1
    # Each interleaved pair is rotated as a unit: its norm is kept.
    np.testing.assert_allclose(jnp.linalg.norm(y[..., :4].reshape(1, 3, 4, 2, 2), axis=-1),
                               jnp.linalg.norm(x[..., :4].reshape(1, 3, 4, 2, 2), axis=-1), rtol=1e-6)


def test_invalid_configs_are_one_line():
    with pytest.raises(ValueError, match="rotary_dim=12 must be even and in"):
        gptj.GPTJConfig(n_embd=32, n_head=4, rotary_dim=12)
    with pytest.raises(ValueError, match="multiple of n_head"):
        gptj.GPTJConfig(n_embd=30, n_head=4)
