"""bfloat16 compute must not change the algorithm: the same seeded iteration in float32 and bfloat16
(float32 master parameters and Adam state in both) agrees on reward inputs, KL and losses.

Stated tolerances (tiny random GPT-2, CPU): per-token log-probs within 0.05 absolute, the KL statistic
and losses within 5% relative (+0.02 absolute), and the parameter update direction cosine > 0.99.
"""
import jax
import jax.numpy as jnp
import numpy as np

from rajax.core import ppo, rollout
from rajax.models import gpt2

CFG = gpt2.GPT2Config(vocab_size=96, n_positions=32, n_embd=32, n_layer=2, n_head=2)
B, P, N = 8, 5, 6


def _iteration(dtype, params, prompt_ids, prompt_mask, s, scores):
    cfg = CFG.replace(dtype=dtype)
    pcfg = ppo.PPOConfig(learning_rate=1e-3, mini_batch_size=B)
    ids, attn = rollout.sequences(prompt_ids, prompt_mask, s)
    logp, values, ref_logp = rollout.policy_and_reference(cfg, params, jax.tree.map(jnp.copy, params), ids, attn,
                                                          prompt_width=P)
    # A reference that differs from the policy, so the KL terms are not trivially zero.
    ref_logp = ref_logp - 0.1 * s.mask
    batch = rollout.Rollout(ids, attn, s.mask, logp, ref_logp, values, scores)
    p0 = jax.tree.map(jnp.copy, params)
    opt = ppo.default_optimizer(pcfg).init(p0)
    new, _, stats, keep = ppo.ppo_step(cfg, pcfg, p0, opt, batch, 0.2, 3, jax.random.key(5))
    return logp, {k: float(v) for k, v in stats.items()}, np.asarray(keep), new


def test_float32_and_bfloat16_iterations_agree():
    params = gpt2.init(CFG, jax.random.key(0))
    prompt_ids = jax.random.randint(jax.random.key(1), (B, P), 0, CFG.vocab_size - 1)
    prompt_mask = jnp.ones((B, P), jnp.int32).at[:2, :2].set(0)
    s = rollout.sample(CFG, params, prompt_ids, prompt_mask, jax.random.key(2), max_new_tokens=N,
                       eos_id=CFG.vocab_size - 1)
    scores = jnp.linspace(-1.0, 1.0, B)
    lp32, st32, keep32, new32 = _iteration("float32", params, prompt_ids, prompt_mask, s, scores)
    lp16, st16, keep16, new16 = _iteration("bfloat16", params, prompt_ids, prompt_mask, s, scores)
    assert lp16.dtype == jnp.float32  # log-softmax always in float32
    np.testing.assert_allclose(np.asarray(lp16), np.asarray(lp32), atol=0.05)
    np.testing.assert_array_equal(keep16, keep32)  # same risk mask
    for k in ("objective/kl", "ppo/loss/policy", "ppo/loss/value", "ppo/returns/mean", "risk/quantile"):
        assert abs(st16[k] - st32[k]) <= 0.05 * abs(st32[k]) + 0.02, (k, st16[k], st32[k])
    d32 = np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(new32), jax.tree.leaves(params))])
    d16 = np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(new16), jax.tree.leaves(params))])
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new16))  # float32 master parameters
    cos = float(d32 @ d16 / np.linalg.norm(d32) / np.linalg.norm(d16))
    assert cos > 0.99, cos
