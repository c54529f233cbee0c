"""The Llama block family (rajax.models.llama): parity with transformers' LlamaForCausalLM (grouped-query
attention, Llama 3.1 rope scaling, untied head) and Qwen2ForCausalLM (q/k/v bias, tied head) on tiny
random checkpoints, right- and left-padded; greedy decoding against generate(); the KV cache against a
full recomputation; rope frequencies against transformers' own rule."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_lms import padded_batch, torch_logits

from rajax.core import rollout
from rajax.io import hf
from rajax.models import llama

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

KINDS = ("llama", "qwen2")
LENGTHS = [12, 9, 5, 1]


@pytest.fixture(scope="module")
def models(tiny_causal_lm):
    out = {}
    for kind in KINDS:
        d, tm = tiny_causal_lm(kind)
        out[kind] = (tm, *hf.load(d))
    return out


def test_configs_read_the_family_features(models):
    _, c, _ = models["llama"]
    assert (c.n_head, c.n_kv_head, c.head_dim, c.tie_embeddings, c.qkv_bias) == (4, 2, 8, False, False)
    assert (c.rope_type, c.rope_factor, c.rope_original_max, c.rope_theta) == ("llama3", 8.0, 16, 500000.0)
    _, q, params = models["qwen2"]
    assert (q.n_kv_head, q.tie_embeddings, q.qkv_bias, q.o_bias, q.model_type) == (1, True, True, False, "qwen2")
    assert "lm_head" not in params and "bias" in params["layers"][0]["self_attn"]["k_proj"]
    assert q.describe() == "Qwen2 2x32 (heads 4/1)" and hash(q) == hash(q.replace())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("side", ["right", "left"])
def test_logits_match_transformers_on_padded_batches(models, jit_lm, kind, side):
    tm, cfg, params = models[kind]
    ids, mask = padded_batch(LENGTHS, 12, side=side)
    ours = np.asarray(jit_lm(cfg, params, ids, mask)[0])
    ref = torch_logits(tm, ids, mask)
    real = mask.astype(bool)
    err = np.abs(ours - ref)[real].max()
    assert err <= 1e-4, err
    assert np.abs(ref[real]).max() > 0.5  # O(1) logits: the tolerance means something


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_decoding_equals_generate(models, kind):
    """16 greedy tokens from left-padded prompts of different lengths, EOS suppressed in both."""
    tm, cfg, params = models[kind]
    ids, mask = padded_batch([6, 4, 2, 5], 6, side="left", seed=5)
    eos = 3
    s = rollout.sample(cfg, params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(0), 16,
                       max_new_tokens=16, eos_id=eos, greedy=True)
    with torch.no_grad():
        out = tm.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                          max_new_tokens=16, min_new_tokens=16, eos_token_id=eos, pad_token_id=eos)
    np.testing.assert_array_equal(np.asarray(s.tokens), out[:, 6:].numpy())
    assert len(np.unique(np.asarray(s.tokens))) > 3  # not one repeated token


@pytest.mark.parametrize("kind", KINDS)
def test_kv_cache_decode_equals_full_recompute(models, jit_lm, kind):
    """Prefill a left-padded prompt, then one token at a time (a finished row padded, as the sampler
    does): every step's logits and values equal the full pass over the whole sequence."""
    _, cfg, params = models[kind]
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
    assert int(cache["index"]) == p + n and cache["k"].shape == (2, 4, p + n, cfg.n_kv_head, cfg.head_dim)


def test_rope_frequencies_equal_transformers_rule():
    """Llama-3.2-1B's rope (theta 5e5, llama3 factor 32, 8192 original) and a linear one."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rp = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    tc = transformers.LlamaConfig(hidden_size=2048, num_attention_heads=32, head_dim=64, rope_parameters=rp,
                                  max_position_embeddings=131072)
    want = ROPE_INIT_FUNCTIONS["llama3"](tc, "cpu")[0].numpy()
    ours = llama.inv_freq(llama.LlamaConfig(head_dim=64, rope_theta=5e5, rope_type="llama3", rope_factor=32.0,
                                            rope_original_max=8192))
    np.testing.assert_allclose(ours, want, rtol=1e-6)
    assert not np.allclose(ours, llama.inv_freq(llama.LlamaConfig(head_dim=64, rope_theta=5e5)))
    lin = llama.inv_freq(llama.LlamaConfig(head_dim=64, rope_type="linear", rope_factor=4.0))
    np.testing.assert_allclose(lin * 4.0, llama.inv_freq(llama.LlamaConfig(head_dim=64)), rtol=1e-6)


def test_bfloat16_close_to_float32(models, jit_lm):
    _, cfg, params = models["llama"]
    ids, mask = padded_batch(LENGTHS, 12)
    f32 = np.asarray(jit_lm(cfg, params, ids, mask)[0])
    bf, values, _ = jit_lm(cfg.replace(dtype="bfloat16"), params, ids, mask)
    assert bf.dtype == jnp.float32 and values.dtype == jnp.float32
    err = np.abs(np.asarray(bf) - f32)[mask.astype(bool)].max()
    assert 0 < err <= 0.05 * np.abs(f32).max(), err


def test_remat_gives_identical_gradients():
    cfg = llama.LlamaConfig(vocab_size=50, max_position=16, n_embd=16, n_layer=1, n_head=2, n_kv_head=1,
                            head_dim=8, intermediate=24)
    params = llama.init(cfg, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (2, 6), 0, 50)

    def grads(c):
        def loss(p):
            o = c.apply(p, ids)
            return rollout.logprobs_of(c.lm_head(p, o.hidden)[:, :-1], ids[:, 1:]).mean() + jnp.square(o.values).mean()
        return jax.jit(jax.grad(loss))(params)

    g0, g1 = grads(cfg), grads(cfg.replace(remat=True))
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
    assert float(jnp.abs(g0["layers"][0]["self_attn"]["q_proj"]["kernel"]).max()) > 0


def test_invalid_configs_are_one_line():
    with pytest.raises(ValueError, match="multiple of n_kv_head"):
        llama.LlamaConfig(n_head=6, n_kv_head=4)
    with pytest.raises(ValueError, match="rope_type 'yarn' is not implemented"):
        llama.LlamaConfig(rope_type="yarn")
    cfg = llama.LlamaConfig(vocab_size=10, max_position=4, n_embd=8, n_layer=1, n_head=2, n_kv_head=2, head_dim=4,
                            intermediate=8)
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings 4"):
        cfg.apply(llama.init(cfg, jax.random.key(0)), jnp.zeros((1, 5), jnp.int32))
