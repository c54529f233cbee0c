"""rajax.models.base: the family-independent interface (logits, extend, forward) derived from a family's
apply / lm_head / init_cache, checked on GPT-2 against its full forward pass."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rajax.core import rollout
from rajax.models import base, gpt2

CFG = gpt2.GPT2Config(vocab_size=40, n_positions=24, n_embd=16, n_layer=2, n_head=2, dropout=0.0)


@pytest.fixture(scope="module")
def params():
    return gpt2.init(CFG, jax.random.key(0))


def _batch(b=3, t=9):
    ids = jax.random.randint(jax.random.key(1), (b, t), 0, CFG.vocab_size)
    mask = jnp.ones((b, t), jnp.int32).at[1, :3].set(0)  # a left-padded row
    return ids, mask


def test_the_handle_is_hashable_and_describes_itself():
    assert isinstance(CFG, base.CausalLM) and hash(CFG) == hash(CFG.replace())
    assert CFG.context_length == 24 and CFG.hidden_size == 16 and CFG.describe() == "GPT-2 2x16"
    with pytest.raises(NotImplementedError):
        base.CausalLM().apply({}, None)


def test_logits_and_forward_match_the_full_pass(params):
    ids, mask = _batch()
    full = gpt2.apply(CFG, params, ids, mask)
    np.testing.assert_allclose(CFG.logits(params, ids, mask), full.logits, atol=1e-6)
    P = 4
    logp, values, ent = jax.jit(CFG.forward, static_argnums=3)(params, ids, mask, P)
    want = rollout.logprobs_of(full.logits[:, P - 1:-1], ids[:, P:])
    np.testing.assert_allclose(logp, want, atol=1e-5)
    np.testing.assert_allclose(values, full.values[:, P - 1:-1], atol=1e-6)
    np.testing.assert_allclose(ent, rollout.entropy_from_logits(full.logits[:, P - 1:-1]), atol=1e-5)
    assert logp.shape == values.shape == ent.shape == (3, ids.shape[1] - P)
    with pytest.raises(ValueError, match="prompt_width=0"):
        CFG.forward(params, ids, mask, 0)


def test_extend_is_the_last_position_of_a_cached_pass(params):
    ids, mask = _batch()
    cache = CFG.init_cache(3, ids.shape[1] + 1)
    logits, cache = CFG.extend(params, ids, mask, cache)
    full = gpt2.apply(CFG, params, ids, mask).logits[:, -1]
    np.testing.assert_allclose(logits, full, atol=1e-5)
    nxt = jnp.full((3, 1), 5, jnp.int32)
    step, _ = CFG.extend(params, nxt, jnp.ones((3, 1), jnp.int32), cache)
    whole = gpt2.apply(CFG, params, jnp.concatenate([ids, nxt], 1), jnp.concatenate([mask, jnp.ones((3, 1), jnp.int32)], 1))
    np.testing.assert_allclose(step, whole.logits[:, -1], atol=1e-5)


def test_value_head_init_is_seeded_and_bounded():
    a, b = base.init_value_head(64, jax.random.key(3)), base.init_value_head(64, jax.random.key(3))
    np.testing.assert_array_equal(a["kernel"], b["kernel"])
    assert a["kernel"].shape == (64, 1) and a["bias"].shape == (1,)
    assert float(jnp.abs(a["kernel"]).max()) <= 64**-0.5  # U(-1/sqrt(E), 1/sqrt(E)), nn.Linear's default
    assert not np.array_equal(a["kernel"], base.init_value_head(64, jax.random.key(4))["kernel"])
