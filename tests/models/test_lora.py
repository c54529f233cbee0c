"""rajax.models.lora: adapters leave a fresh model unchanged, change it once trained, equal their merged
weights, switch off with cfg.replace(lora=None) on the same tree, and only they (and the value head)
are the trainable subset."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rajax.core import ppo
from rajax.models import gpt2, gptj, llama, lora

LLAMA = llama.LlamaConfig(vocab_size=61, max_position=32, n_embd=32, n_layer=2, n_head=4, n_kv_head=2,
                          head_dim=8, intermediate=48, qkv_bias=True)
GPTJ = gptj.GPTJConfig(vocab_size=61, n_positions=32, n_embd=32, n_layer=2, n_head=4, rotary_dim=4)
SPEC = lora.LoRA(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "down_proj"))


def _batch():
    ids = jax.random.randint(jax.random.key(1), (3, 7), 0, 61)
    return ids, jnp.ones((3, 7), jnp.int32).at[1, :2].set(0)


def _trained(tree, key):
    """Adapters as after some training: B no longer zero."""
    return jax.tree.map(lambda x: x + 0.05 * jax.random.normal(key, x.shape), tree)


GPT2 = gpt2.GPT2Config(vocab_size=61, n_positions=32, n_embd=32, n_layer=2, n_head=4)


@pytest.mark.parametrize("base,targets", [(LLAMA, SPEC.targets), (GPTJ, ("q_proj", "v_proj", "fc_out")),
                                          (GPT2, ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"))])
def test_adapters_fresh_trained_merged_and_off(base, targets, jit_lm):
    init = {llama.LlamaConfig: llama.init, gptj.GPTJConfig: gptj.init, gpt2.GPT2Config: gpt2.init}[type(base)]
    params = init(base, jax.random.key(0))
    cfg = base.replace(lora=lora.LoRA(rank=4, alpha=8.0, targets=targets))
    ad = lora.init(cfg, params, jax.random.key(2))
    assert sorted(ad) == [0, 1] and sorted(ad[0]) == sorted(targets)
    some = ad[0][targets[0]]
    assert some["a"].dtype == jnp.float32 and some["a"].shape[1] == 4 and not np.any(np.asarray(some["b"]))
    bound = some["a"].shape[0] ** -0.5
    assert float(jnp.abs(some["a"]).max()) <= bound
    ids, mask = _batch()
    ref = np.asarray(jit_lm(base, params, ids, mask)[0])
    fresh = {**params, "lora": ad}
    # B = 0: no change, up to rounding (XLA may fuse the zero term into the projection differently: GPT-2 ~1e-8)
    np.testing.assert_allclose(np.asarray(jit_lm(cfg, fresh, ids, mask)[0]), ref, rtol=0, atol=1e-6)
    tuned = {**params, "lora": _trained(ad, jax.random.key(3))}
    on = np.asarray(jit_lm(cfg, tuned, ids, mask)[0])
    assert np.abs(on - ref).max() > 1e-3
    # The reference of a LoRA policy: the same tree read with adapters off.
    np.testing.assert_array_equal(np.asarray(jit_lm(cfg.replace(lora=None), tuned, ids, mask)[0]), ref)
    mcfg, merged = lora.merge(cfg, tuned)
    assert mcfg.lora is None and "lora" not in merged
    np.testing.assert_allclose(np.asarray(jit_lm(mcfg, merged, ids, mask)[0]), on, atol=1e-5)


def test_trainable_subset_gets_the_only_gradients():
    params = llama.init(LLAMA, jax.random.key(0))
    cfg = LLAMA.replace(lora=SPEC)
    params["lora"] = _trained(lora.init(cfg, params, jax.random.key(2)), jax.random.key(4))
    trainable, frozen = lora.split(params)
    assert sorted(trainable) == ["lora", "v_head"] and "lora" not in frozen and "embed_tokens" in frozen
    frozen = lora.cast(frozen, jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(frozen))
    ids, mask = _batch()

    def loss(t):
        logp, values, _ = cfg.replace(dtype="bfloat16").forward(ppo.with_frozen(t, frozen), ids, mask, 3)
        return logp.mean() + jnp.square(values).mean()

    g = jax.jit(jax.grad(loss))(trainable)
    assert jax.tree.structure(g) == jax.tree.structure(trainable)
    assert all(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(g))
    n_ad = lora.num_params(trainable["lora"])
    assert n_ad == 2 * (32 * 4 + 4 * 32 + 32 * 4 + 4 * 16 + 48 * 4 + 4 * 32)  # q, v, down per layer


def test_dropout_only_with_a_key():
    params = llama.init(LLAMA, jax.random.key(0))
    cfg = LLAMA.replace(lora=lora.LoRA(rank=4, alpha=8.0, dropout=0.5))
    params["lora"] = _trained(lora.init(cfg, params, jax.random.key(2)), jax.random.key(3))
    ids, mask = _batch()
    a = cfg.apply(params, ids, mask).hidden
    np.testing.assert_array_equal(a, cfg.apply(params, ids, mask).hidden)
    b = cfg.apply(params, ids, mask, dropout_key=jax.random.key(5)).hidden
    assert float(jnp.abs(a - b).max()) > 1e-4


def test_bad_specs_and_families_are_one_line():
    with pytest.raises(ValueError, match="rank must be >= 1"):
        lora.LoRA(rank=0, alpha=1.0)
    with pytest.raises(ValueError, match="dropout must be in"):
        lora.LoRA(rank=2, alpha=1.0, dropout=1.0)
    cfg = LLAMA.replace(lora=lora.LoRA(rank=2, alpha=1.0, targets=("c_attn",)))
    with pytest.raises(ValueError, match=r"LoRA targets \['c_attn'\] are not projections of Llama"):
        lora.init(cfg, llama.init(LLAMA, jax.random.key(0)), jax.random.key(1))
    # GPT-2's targets are its four Conv1D projections, named as PEFT matches them (two are c_proj).
    assert sorted({t for _, t in GPT2.lora_sites()}) == ["attn.c_proj", "c_attn", "c_fc", "mlp.c_proj"]
    assert GPT2.default_lora_targets == ("c_attn",) and LLAMA.default_lora_targets == ("q_proj", "v_proj")
    with pytest.raises(ValueError, match=r"LoRA targets \['q_proj'\] are not projections of GPT-2 2x32 \+ LoRA r2; "
                                         r"choose from \['attn.c_proj', 'c_attn', 'c_fc', 'mlp.c_proj'\]"):
        lora.init(GPT2.replace(lora=lora.LoRA(rank=2, alpha=1.0, targets=("q_proj",))), gpt2.init(GPT2, jax.random.key(0)),
                  jax.random.key(1))
    assert lora.LoRA(rank=8, alpha=16.0).scale == 2.0


def test_gpt2_adapter_dropout_only_with_a_key_and_the_plain_model_is_unchanged():
    """GPT-2's adapter dropout draws from keys folded off the branch's own, so a LoRA-free GPT-2 with
    dropout on gives the same values as before adapters existed (its key splits did not change)."""
    params = gpt2.init(GPT2, jax.random.key(0))
    cfg = GPT2.replace(lora=lora.LoRA(rank=4, alpha=8.0, targets=("c_attn", "c_fc"), dropout=0.5))
    tuned = {**params, "lora": _trained(lora.init(cfg, params, jax.random.key(2)), jax.random.key(3))}
    ids, mask = _batch()
    a = cfg.apply(tuned, ids, mask).hidden
    np.testing.assert_array_equal(a, cfg.apply(tuned, ids, mask).hidden)
    k = jax.random.key(5)
    assert float(jnp.abs(a - cfg.apply(tuned, ids, mask, dropout_key=k).hidden).max()) > 1e-4
    # Dropout on, adapters present but zero-rate vs absent: the base's own dropout pattern is the same.
    no_drop = cfg.replace(lora=lora.LoRA(rank=4, alpha=8.0, targets=("c_attn", "c_fc")))
    fresh = {**params, "lora": lora.init(no_drop, params, jax.random.key(2))}
    np.testing.assert_array_equal(np.asarray(no_drop.apply(fresh, ids, mask, dropout_key=k).hidden),
                                  np.asarray(GPT2.apply(params, ids, mask, dropout_key=k).hidden))
