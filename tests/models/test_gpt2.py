"""GPT-2 numerics (rajax.models.gpt2): parity with transformers' PyTorch GPT-2, KV cache, bf16,
dropout, remat (docs/paper.md §2.3, §7)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rajax.core import rollout
from rajax.io import hf
from rajax.models import gpt2

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CFG = gpt2.GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4)
B, T = 4, 12
LENGTHS = np.array([12, 9, 5, 1])


@pytest.fixture(scope="module")
def torch_model():
    """A tiny random transformers GPT-2 (float32, eval mode) and the same weights as rajax params."""
    torch.manual_seed(0)
    tcfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=64)
    model = transformers.GPT2LMHeadModel(tcfg).eval()
    # HF's init has std 0.02 and zero LN/bias; perturb every tensor so biases and LN params matter.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    return model, hf.from_state_dict(CFG, sd)


@pytest.fixture(scope="module")
def fwd():
    return jax.jit(gpt2.apply, static_argnums=0)


def _ids(seed=1):
    return np.random.default_rng(seed).integers(0, CFG.vocab_size, (B, T))


def _torch_logits(model, ids, mask):
    ids_t, mask_t = torch.tensor(ids), torch.tensor(mask)
    pos = (mask_t.cumsum(-1) - 1).clamp(min=0)  # as transformers' generate builds them
    with torch.no_grad():
        return model(input_ids=ids_t, attention_mask=mask_t, position_ids=pos).logits.numpy()


@pytest.mark.parametrize("side", ["right", "left"])
def test_logits_match_torch_on_padded_batches(torch_model, fwd, side):
    model, params = torch_model
    ids = _ids()
    ar = np.arange(T)[None]
    mask = (ar < LENGTHS[:, None]) if side == "right" else (ar >= T - LENGTHS[:, None])
    mask = mask.astype(np.int64)
    ours = np.asarray(fwd(CFG, params, jnp.asarray(ids), jnp.asarray(mask)).logits)
    ref = _torch_logits(model, ids, mask)
    real = mask.astype(bool)
    chex.assert_shape(ours, (B, T, CFG.vocab_size))
    err = np.abs(ours - ref)[real].max()
    assert err <= 1e-4, err
    # Logits are not trivially small: the comparison means something.
    assert np.abs(ref[real]).max() > 0.5


def test_left_padding_equals_unpadded_row(torch_model, fwd):
    """A left-padded row gives the same logits as the same tokens alone (positions from the mask)."""
    _, params = torch_model
    ids = _ids(2)
    mask = (np.arange(T)[None] >= T - LENGTHS[:, None]).astype(np.int32)
    full = np.asarray(fwd(CFG, params, jnp.asarray(ids), jnp.asarray(mask)).logits)
    n = LENGTHS[2]
    alone = np.asarray(fwd(CFG, params, jnp.asarray(ids[2:3, T - n:])).logits)
    np.testing.assert_allclose(full[2, T - n:], alone[0], atol=1e-5)


def test_kv_cache_matches_full_recompute(torch_model, fwd):
    """Prefill a left-padded prompt, then decode one token at a time and in 3-token chunks: every
    step's logits and values equal the full forward pass over the whole sequence."""
    _, params = torch_model
    p, n = 3, 9
    rng = np.random.default_rng(3)
    ids = rng.integers(0, CFG.vocab_size, (B, p + n))
    plen = np.array([3, 2, 1, 1])
    mask = np.ones((B, p + n), np.int32)
    mask[:, :p] = np.arange(p)[None] >= p - plen[:, None]
    mask[1, p + 2:] = 0  # a finished row whose later slots are padding (as the sampler does)
    full = fwd(CFG, params, jnp.asarray(ids), jnp.asarray(mask))
    cache = gpt2.init_cache(CFG, B, p + n)
    got_l, got_v = [], []
    for lo, hi in [(0, 3), (3, 4), (4, 5), (5, 6), (6, 9), (9, 12)]:
        out = fwd(CFG, params, jnp.asarray(ids[:, lo:hi]), jnp.asarray(mask[:, lo:hi]), cache=cache)
        got_l.append(out.logits)
        got_v.append(out.values)
        cache = out.cache
    assert int(cache["index"]) == p + n
    logits = np.concatenate([np.asarray(x) for x in got_l], axis=1)
    values = np.concatenate([np.asarray(x) for x in got_v], axis=1)
    real = mask.astype(bool)
    np.testing.assert_allclose(logits[real], np.asarray(full.logits)[real], atol=1e-5)
    np.testing.assert_allclose(values[real], np.asarray(full.values)[real], atol=1e-5)


def test_bfloat16_close_to_float32(torch_model, fwd):
    _, params = torch_model
    ids = jnp.asarray(_ids())
    f32 = np.asarray(fwd(CFG, params, ids).logits)
    bf = fwd(CFG.replace(dtype="bfloat16"), params, ids)
    assert bf.logits.dtype == jnp.float32 and bf.values.dtype == jnp.float32
    err = np.abs(np.asarray(bf.logits) - f32).max()
    assert 0 < err <= 0.03 * np.abs(f32).max(), (err, np.abs(f32).max())


# Dropout and remat compile expensive programs (RNG per call site, two backward passes), so they
# use a 1-layer model: the first block of the tiny model.
CFG1 = CFG.replace(n_layer=1)


def _one_layer(params):
    return {**params, "h": {0: params["h"][0]}}


def test_dropout_key(torch_model, fwd):
    params = _one_layer(torch_model[1])
    ids = jnp.asarray(_ids())
    a = fwd(CFG1, params, ids).logits
    b = fwd(CFG1, params, ids).logits
    np.testing.assert_array_equal(a, b)
    k = jax.random.key(0)
    d1 = fwd(CFG1, params, ids, dropout_key=k).logits
    d2 = fwd(CFG1, params, ids, dropout_key=k).logits
    d3 = fwd(CFG1, params, ids, dropout_key=jax.random.key(1)).logits
    np.testing.assert_array_equal(d1, d2)
    assert np.abs(np.asarray(d1 - a)).max() > 1e-3
    assert np.abs(np.asarray(d1 - d3)).max() > 1e-3


def test_remat_gives_identical_gradients(torch_model):
    params = _one_layer(torch_model[1])
    ids = jnp.asarray(_ids())

    def loss(cfg, p):
        o = gpt2.apply(cfg, p, ids)
        return rollout.logprobs_of(o.logits[:, :-1], ids[:, 1:]).mean() + jnp.square(o.values).mean()

    g0 = jax.jit(jax.grad(lambda p: loss(CFG1, p)))(params)
    g1 = jax.jit(jax.grad(lambda p: loss(CFG1.replace(remat=True), p)))(params)
    chex.assert_trees_all_close(g0, g1, atol=1e-6, rtol=1e-5)
    assert float(jnp.abs(g0["h"][0]["attn"]["c_attn"]["kernel"]).max()) > 0
