"""The sampler (rajax.sampling): greedy == transformers generate, top-k/top-p support and
frequencies, min_new_tokens, EOS/pad layout, key determinism, no retracing (docs/paper.md §2.3, §3, §7)."""
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
EOS = CFG.vocab_size - 1
B, P, N = 4, 8, 20
_fwd = jax.jit(gpt2.apply, static_argnums=0)
PLEN = np.array([8, 5, 3, 1])


def _prompts(seed=0):
    ids = np.random.default_rng(seed).integers(0, EOS, (B, P))  # no EOS inside prompts
    mask = (np.arange(P)[None] >= P - PLEN[:, None]).astype(np.int32)
    ids = np.where(mask > 0, ids, EOS)  # left pad with EOS, as the tokenizer (pad = eos) does
    return ids, mask


@pytest.fixture(scope="module")
def torch_and_params():
    torch.manual_seed(0)
    tcfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=64,
                                   bos_token_id=EOS, eos_token_id=EOS)
    m = transformers.GPT2LMHeadModel(tcfg).eval()
    with torch.no_grad():  # spread the logits so greedy argmaxes are well separated
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m, hf.from_state_dict(CFG, {k: v.numpy() for k, v in m.state_dict().items()})


def test_greedy_matches_transformers_generate(torch_and_params):
    m, params = torch_and_params
    ids, mask = _prompts()
    ours = rollout.sample(CFG, params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(0), N,
                           max_new_tokens=N, eos_id=EOS, greedy=True)
    with torch.no_grad():
        ref = m.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                         max_new_tokens=N, min_new_tokens=N, pad_token_id=EOS, eos_token_id=EOS)
    ref = ref[:, P:].numpy()
    chex.assert_shape(ours.tokens, (B, N))
    np.testing.assert_array_equal(np.asarray(ours.tokens), ref)
    np.testing.assert_array_equal(np.asarray(ours.mask), np.ones((B, N)))
    # The returned log-probs are those of the (EOS-suppressed) next-token distribution.
    seq, smask = rollout.sequences(jnp.asarray(ids), jnp.asarray(mask), ours)
    logits = _fwd(CFG, params, seq, smask).logits[:, P - 1:-1]
    logits = logits.at[..., EOS].set(-jnp.inf)
    np.testing.assert_allclose(ours.logprobs, rollout.logprobs_of(logits, ours.tokens), atol=1e-4)


def _np_filter(logits, top_k, top_p):
    """transformers' TopKLogitsWarper then TopPLogitsWarper (ascending-cumsum form), in NumPy."""
    x = logits.astype(np.float64).copy()
    if top_k > 0:
        kth = np.sort(x, -1)[:, -top_k][:, None]
        x[x < kth] = -np.inf
    if top_p < 1.0:
        order = np.argsort(x, -1)  # ascending
        sx = np.take_along_axis(x, order, -1)
        pr = np.exp(sx - sx.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        remove = np.cumsum(pr, -1) <= 1 - top_p
        remove[:, -1] = False  # min_tokens_to_keep = 1
        np.put_along_axis(x, order, np.where(remove, -np.inf, sx), -1)
    return x


@pytest.mark.parametrize("top_k,top_p", [(1, 1.0), (7, 1.0), (0, 0.3), (0, 0.9), (12, 0.6), (0, 1.0)])
def test_filter_logits_support_matches_reference(top_k, top_p):
    logits = np.random.default_rng(top_k + int(10 * top_p)).normal(0, 2, (16, 50)).astype(np.float32)
    got = np.asarray(rollout.filter_logits(jnp.asarray(logits), top_k, top_p))
    ref = _np_filter(logits, top_k, top_p)
    kept = got > np.finfo(np.float32).min
    np.testing.assert_array_equal(kept, np.isfinite(ref))
    np.testing.assert_array_equal(got[kept], logits[kept])
    if top_k:
        assert (kept.sum(-1) <= top_k).all()
    assert kept.any(-1).all()


def test_sampled_frequencies_match_filtered_softmax(torch_and_params):
    """2048 rows with the same prompt, one token each, temperature 0.5, top_k=10, top_p=0.8: the
    empirical distribution matches softmax(filter(logits / T)) and nothing outside it is drawn."""
    _, params = torch_and_params
    n, temp, k, p = 2048, 0.5, 10, 0.8
    ids, mask = _prompts(1)
    ids_n, mask_n = np.repeat(ids[:1], n, 0), np.repeat(mask[:1], n, 0)
    s = rollout.sample(CFG, params, jnp.asarray(ids_n), jnp.asarray(mask_n), jax.random.key(5), 0, temp,
                        max_new_tokens=1, eos_id=EOS, top_k=k, top_p=p)
    last = np.asarray(_fwd(CFG, params, jnp.asarray(ids[:1]), jnp.asarray(mask[:1])).logits[0, -1])
    ref = _np_filter(last[None] / temp, k, p)[0]
    probs = np.exp(ref - ref.max())
    probs /= probs.sum()
    support = probs > 0
    assert 2 <= support.sum() <= k  # a non-trivial test: several tokens, some removed
    counts = np.bincount(np.asarray(s.tokens[:, 0]), minlength=CFG.vocab_size)
    assert counts[~support].sum() == 0
    expected = n * probs[support]
    chi2 = float((np.square(counts[support] - expected) / expected).sum())
    assert chi2 < 30, (chi2, counts[support], expected)  # df <= 9; p(chi2 > 30) < 1e-3
    np.testing.assert_allclose(np.asarray(s.logprobs[:, 0]), np.log(probs[np.asarray(s.tokens[:, 0])]),
                               atol=1e-4)


@pytest.fixture(scope="module")
def eos_params(torch_and_params):
    """Params whose next token is EOS with probability ~1 - 1e-5 at every position: ln_f outputs a
    constant vector u (scale 0, bias u) and wte[EOS] = u, so logit(EOS) = |u|^2 = 16."""
    _, params = torch_and_params
    u = np.random.default_rng(0).normal(size=CFG.n_embd)
    u = 4.0 * u / np.linalg.norm(u)
    p = jax.tree.map(lambda x: x, params)
    p["ln_f"] = {"scale": jnp.zeros(CFG.n_embd), "bias": jnp.asarray(u, jnp.float32)}
    p["wte"] = {"embedding": params["wte"]["embedding"].at[EOS].set(jnp.asarray(u, jnp.float32))}
    return p


def _run(params, key, min_new, **kw):
    ids, mask = _prompts()
    return rollout.sample(CFG, params, jnp.asarray(ids), jnp.asarray(mask), key,
                           jnp.asarray(min_new, jnp.int32), max_new_tokens=N, eos_id=EOS, pad_id=0, **kw)


def test_min_new_tokens_and_eos_layout(eos_params):
    min_new = np.array([0, 3, 7, N])
    s = _run(eos_params, jax.random.key(0), min_new)
    tok, msk, lp = (np.asarray(x) for x in s)
    for r, m in enumerate(min_new):
        assert not (tok[r, :m] == EOS).any()  # EOS suppressed before min_new_tokens
        assert (lp[r, :m] < 0).all()
        if m < N:
            assert tok[r, m] == EOS and msk[r, m] == 1 and lp[r, m] > -1e-3  # EOS kept, mask 1
            assert (tok[r, m + 1:] == 0).all()  # then pad_id ...
            assert (msk[r, m + 1:] == 0).all() and (lp[r, m + 1:] == 0).all()  # ... mask 0, logp 0
        np.testing.assert_array_equal(msk[r, :min(m + 1, N)], 1)
    np.testing.assert_array_equal(msk.sum(-1), np.minimum(min_new + 1, N))


def test_keys_determinism_and_no_retrace(torch_and_params):
    _, params = torch_and_params
    a = _run(params, jax.random.key(1), [0, 0, 0, 0])
    size = rollout.sample._cache_size()
    b = _run(params, jax.random.key(1), [0, 0, 0, 0])
    c = _run(params, jax.random.key(2), [2, 3, 4, 5])
    assert rollout.sample._cache_size() == size  # new key / min_new values: no new compilation
    chex.assert_trees_all_equal(a, b)
    assert (np.asarray(a.tokens) != np.asarray(c.tokens)).any()
    # Rows that stop early are padded consistently with the mask.
    np.testing.assert_array_equal(np.asarray(a.tokens)[np.asarray(a.mask) == 0], 0)


def test_dropout_sampling(torch_and_params):
    """dropout=True (TRL's train-mode rollouts, quirk #10) changes samples; it is still a
    deterministic function of the key."""
    _, params = torch_and_params
    ids, mask = _prompts()
    run = lambda key, d: rollout.sample(CFG, params, jnp.asarray(ids), jnp.asarray(mask), key, N,
                                         max_new_tokens=N, eos_id=EOS, greedy=True, dropout=d)
    base = run(jax.random.key(0), False)
    d1, d2 = run(jax.random.key(0), True), run(jax.random.key(0), True)
    chex.assert_trees_all_equal(d1, d2)
    assert (np.asarray(d1.tokens) != np.asarray(base.tokens)).any()


def test_min_new_tokens_like_trl():
    mask = np.zeros((6, 10), np.int32)
    for r, n in enumerate([3, 10, 2, 4, 7, 1]):
        mask[r, 10 - n:] = 1
    got = np.asarray(rollout.min_new_tokens_like_trl(jnp.asarray(mask), 12, group=4))
    # Groups of 4: rows 0-3 longest 10 -> 2; rows 4-5 longest 7 -> 5.
    np.testing.assert_array_equal(got, [2, 2, 2, 2, 5, 5])
    # min_new_tokens: the same in "trl" mode, a plain minimum in "new_tokens" mode.
    np.testing.assert_array_equal(rollout.min_new_tokens(mask, 12, "trl"), got)
    np.testing.assert_array_equal(rollout.min_new_tokens(mask, 3, "new_tokens"), [3] * 6)
    assert rollout.min_new_tokens(mask, 3, "new_tokens").dtype == np.int32
    with pytest.raises(ValueError, match="min_length_mode"):
        rollout.min_new_tokens(mask, 5, "bogus")


def test_too_long_is_an_error(torch_and_params):
    _, params = torch_and_params
    ids, mask = _prompts()
    with pytest.raises(ValueError, match="context of"):
        rollout.sample(CFG, params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(0),
                        max_new_tokens=CFG.n_positions - P + 1, eos_id=EOS)
    with pytest.raises(ValueError, match="n_positions"):
        gpt2.apply(CFG, params, jnp.zeros((1, CFG.n_positions + 1), jnp.int32))


def test_tail_tokens_is_the_gptj_scripts_slice():
    """``generate(...)[-N:]`` per row (docs/paper.md quirk #20): a response of L < N tokens takes the
    prompt's last N - L tokens in front of it; a full one is unchanged; a row shorter than N in all
    keeps what it has, left-aligned (N = 4 here)."""
    prompt = np.array([[0, 11, 12, 13, 14], [0, 0, 21, 22, 23], [0, 0, 0, 0, 31]], np.int32)
    pmask = (prompt > 0).astype(np.int32)
    tokens = np.array([[51, 52, 53, 54], [61, 9, 9, 9], [71, 72, 9, 9]], np.int32)
    mask = np.array([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]], np.int32)
    logp = np.where(mask > 0, -np.arange(1, 5, dtype=np.float32)[None], 0.0).astype(np.float32)
    s = rollout.tail_tokens(jnp.asarray(prompt), jnp.asarray(pmask), rollout.Sample(tokens, mask, logp))
    np.testing.assert_array_equal(np.asarray(s.tokens)[:2], [[51, 52, 53, 54], [21, 22, 23, 61]])
    np.testing.assert_array_equal(np.asarray(s.tokens)[2, :3], [31, 71, 72])
    np.testing.assert_array_equal(np.asarray(s.mask), [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]])
    np.testing.assert_array_equal(np.asarray(s.logprobs)[1], [0, 0, 0, -1])  # prompt tokens were not sampled


def test_logprobs_of_equals_the_gathered_log_softmax():
    # logits[token] - logsumexp(logits) is the full log-softmax gathered, without writing it: check it
    # at a vocabulary of GPT-2's size, with large offsets and a spread that float32 must survive.
    logits = jax.random.normal(jax.random.key(0), (2, 3, 50257)) * 8.0 + 300.0
    logits = logits.at[0, 0, 7].set(400.0).astype(jnp.bfloat16)
    tokens = jnp.asarray([[7, 0, 50256], [1, 2, 3]])
    want = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32), -1), tokens[..., None], -1)[..., 0]
    got = rollout.logprobs_of(logits, tokens)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)


def _entropy_by_definition(x):
    return -(jax.nn.softmax(x, -1) * jax.nn.log_softmax(x, -1)).sum(-1)


def test_logprobs_and_entropy_equal_the_separate_functions_with_their_gradients():
    # The one-pass form must give the same values and the same gradients (an entropy bonus would
    # differentiate it) as logprobs_of and the entropy by its definition, -Σ p log p, at GPT-2's
    # vocabulary size; entropy_from_logits (TRL's formula) must agree too.
    logits = jax.random.normal(jax.random.key(1), (2, 3, 50257)) * 4.0 + 50.0
    logits = logits.at[1, 2, 9].set(90.0)
    tokens = jnp.asarray([[7, 0, 50256], [1, 2, 9]])
    lp, ent = rollout.logprobs_and_entropy(logits, tokens)
    np.testing.assert_allclose(lp, rollout.logprobs_of(logits, tokens), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(ent, _entropy_by_definition(logits), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rollout.entropy_from_logits(logits), _entropy_by_definition(logits), rtol=1e-5, atol=1e-5)
    assert float(ent[1, 2]) < 0.5 * float(ent[0, 0])  # the peaked row is not averaged away
    w = jax.random.normal(jax.random.key(2), (2, 3))

    def ours(x):
        a, b = rollout.logprobs_and_entropy(x, tokens)
        return (w * a).sum() + (w * b).sum()

    def separate(x):
        return (w * rollout.logprobs_of(x, tokens)).sum() + (w * _entropy_by_definition(x)).sum()

    g, g_want = jax.grad(ours)(logits), jax.grad(separate)(logits)
    assert float(jnp.abs(g_want).max()) > 0.1
    np.testing.assert_allclose(g, g_want, atol=1e-5)  # float32 rounding of l·p terms at |l| ~ 50-90
    # A row of -inf logits but one: the log-prob is finite, as with jax.nn.logsumexp. (Its entropy is
    # NaN, 0·(-inf), as TRL's formula and the two-function form gave; the models' logits are finite.)
    inf_row = jnp.full((1, 1, 5), -jnp.inf).at[0, 0, 2].set(0.0)
    lp1, _ = rollout.logprobs_and_entropy(inf_row, jnp.asarray([[2]]))
    assert float(lp1[0, 0]) == 0.0
