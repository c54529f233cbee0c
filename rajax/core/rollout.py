"""Rollouts: sample continuations, score them, and run the policy and reference passes.

``collect`` is the first half of one RA-RLHF iteration (docs/paper.md §1.2): sample -> decode ->
reward -> policy/reference passes -> a ``Rollout`` that ``rajax.core.ppo.ppo_step`` trains on. The
trainer, the benchmark and the library example all call it, so there is one copy of that path.

The core never names a model family. A policy is any hashable object with the ``Policy`` methods
below (``rajax.models`` provides them for every family it supports), so the jitted sampler and
passes take it as a static argument and compile once per model shape.

Layout of every rollout (the same for each row, which keeps PPO shapes static):
``[left pad | prompt | response | pad]``, prompt width P, response width N. The first response
token of every row is predicted at sequence position P-1 (docs/paper.md §7).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rajax.core import parallel
from rajax.core.errors import InvalidInput


class Policy(Protocol):
    """What the core needs of a causal LM with a value head. Implementations are frozen, hashable
    dataclasses (jit static arguments), e.g. ``rajax.models.gpt2.GPT2Config``."""

    context_length: int  # the longest sequence the model accepts (GPT-2: n_positions)

    def init_cache(self, batch: int, length: int) -> Any:
        """An empty KV cache for ``batch`` rows of up to ``length`` tokens (a pytree)."""

    def extend(self, params, ids_BxT, mask_BxT, cache, dropout_key=None):
        """Append T tokens to the cache -> ``(logits_BxV of the last position (float32), cache)``."""

    def forward(self, params, input_ids_BxS, attention_mask_BxS, prompt_width: int):
        """Eval-mode pass over whole sequences -> ``(logp_BxN, values_BxN, entropy_BxN)`` of the
        N = S - P response positions: logp of each response token, V(h) at the position that
        predicts it, and the entropy of that prediction."""


# --------------------------------------------------------------------------------------------
# token distributions
# --------------------------------------------------------------------------------------------
def logprobs_of(logits_BxTxV: jax.Array, tokens_BxT: jax.Array) -> jax.Array:
    """log softmax(logits)[token], always in float32 (bfloat16 log-softmax over 50k entries is lossy).

    Computed as logits[token] - logsumexp(logits): the same value as gathering from the full
    log-softmax up to rounding, without writing the [B, T, V] log-softmax (on a CPU its value and
    gradient take 28% less time; bench/block.py). Where the entropy is needed too,
    ``logprobs_and_entropy`` computes both from one exponential.
    """
    logits = logits_BxTxV.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, tokens_BxT[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def _logsumexp_and_mean_logit(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(logsumexp(l), Σ softmax(l)·l) over the last axis, float32, from one exponential."""
    top = jax.lax.stop_gradient(logits.max(-1, keepdims=True))
    top = jnp.where(jnp.isfinite(top), top, 0.0)  # as jax.nn.logsumexp: all -inf rows give -inf, not NaN
    e = jnp.exp(logits - top)
    total = e.sum(-1)
    return jnp.log(total) + top[..., 0], (e * logits).sum(-1) / total


def entropy_from_logits(logits: jax.Array) -> jax.Array:
    """Per-position entropy of softmax(logits): logsumexp(l) - Σ p·l (TRL's formula)."""
    lse, mean_logit = _logsumexp_and_mean_logit(logits.astype(jnp.float32))
    return lse - mean_logit


def logprobs_and_entropy(logits_BxTxV: jax.Array, tokens_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(logprobs_of(logits, tokens), entropy_from_logits(logits))`` from one pass over the vocabulary.

    Both need exp(l - max): written separately, XLA computed that [B, T, V] exponential twice (once
    behind logsumexp's guard against an infinite max). Here one exponential feeds both sums, Σ e and
    Σ e·l; on a CPU the PPO step's vocabulary part (LM head, this, backward) takes 3-8% less time
    (bench/block.py's ``lmhead``). Both outputs are differentiable: the max only shifts the exponent
    and cancels in e / Σ e.
    """
    logits = logits_BxTxV.astype(jnp.float32)
    lse, mean_logit = _logsumexp_and_mean_logit(logits)
    picked = jnp.take_along_axis(logits, tokens_BxT[..., None], axis=-1)[..., 0]
    return picked - lse, lse - mean_logit


# --------------------------------------------------------------------------------------------
# the sampler
# --------------------------------------------------------------------------------------------
class Sample(NamedTuple):
    tokens: jax.Array  # [B, N] int32 sampled tokens, pad after EOS
    mask: jax.Array  # [B, N] int32, 1 up to and including the first EOS
    logprobs: jax.Array  # [B, N] float32 log-prob of each token under the sampling policy (0 when masked)


def filter_logits(logits_BxV: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Top-k then nucleus (top-p) filtering as transformers' warpers do; removed entries -> -inf.

    top_k = 0 and top_p = 1.0 are no-ops (and cost nothing: both are static).
    """
    neg = jnp.finfo(logits_BxV.dtype).min
    if top_k > 0:
        kth = jax.lax.top_k(logits_BxV, top_k)[0][..., -1:]
        logits_BxV = jnp.where(logits_BxV < kth, neg, logits_BxV)
    if top_p < 1.0:
        sorted_desc = jnp.sort(logits_BxV, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (the token crossing it is kept).
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep_sorted = mass_before < top_p
        keep_sorted = keep_sorted.at[..., 0].set(True)
        cutoff = jnp.min(jnp.where(keep_sorted, sorted_desc, jnp.inf), axis=-1, keepdims=True)
        logits_BxV = jnp.where(logits_BxV < cutoff, neg, logits_BxV)
    return logits_BxV


@functools.partial(
    jax.jit,
    static_argnames=("policy", "max_new_tokens", "top_k", "top_p", "eos_id", "pad_id", "greedy", "dropout"),
)
def sample(
    policy: Policy,
    params,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    key: jax.Array,
    min_new_tokens: jax.Array | int = 0,
    temperature: jax.Array | float = 1.0,
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int | None = None,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    dropout: bool = False,
) -> Sample:
    """Sample continuations of left-padded prompts ``prompt_ids`` [B, P] (mask [B, P]).

    One jitted call: prefill the prompts into the KV cache, then a ``lax.while_loop`` decodes up to
    ``max_new_tokens`` steps, stopping early once every row has emitted EOS.
    ``min_new_tokens`` (scalar or [B]) suppresses EOS until that many tokens were generated.
    ``temperature`` is traced (changing it does not recompile). ``greedy`` takes the argmax instead.
    ``dropout`` samples with the model's dropout active (the original code's train-mode rollouts,
    docs/paper.md quirk #10). Rows stop at their first EOS (kept, mask 1); later slots are ``pad_id``.
    """
    b, p = prompt_ids.shape
    n = max_new_tokens
    if p + n > policy.context_length:
        # Position embeddings past the context would be silently clamped by the gather.
        raise InvalidInput(f"prompt width {p} + max_new_tokens {n} exceeds the model's context of "
                         f"{policy.context_length}; shorten the prompt or generate fewer tokens")
    pad_id = eos_id if pad_id is None else pad_id
    min_new = jnp.broadcast_to(jnp.asarray(min_new_tokens, jnp.int32), (b,))
    sample_key, drop_key = jax.random.split(key)

    def drop(i):
        return jax.random.fold_in(drop_key, i) if dropout else None

    logits, cache = policy.extend(params, prompt_ids, prompt_mask, policy.init_cache(b, p + n), drop(n))
    init = dict(
        step=jnp.zeros((), jnp.int32),
        cache=cache,
        logits=logits,
        done=jnp.zeros((b,), bool),
        tokens=jnp.full((b, n), pad_id, jnp.int32),
        mask=jnp.zeros((b, n), jnp.int32),
        logprobs=jnp.zeros((b, n), jnp.float32),
    )

    def cond(c):
        return (c["step"] < n) & ~jnp.all(c["done"])

    def body(c):
        i = c["step"]
        logits = c["logits"] / temperature
        logits = jnp.where(
            (i < min_new)[:, None] & (jnp.arange(logits.shape[-1]) == eos_id)[None], -jnp.inf, logits)
        logits = filter_logits(logits, top_k, top_p)
        if greedy:
            tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        else:
            tok = jax.random.categorical(jax.random.fold_in(sample_key, i), logits).astype(jnp.int32)
        logp = logprobs_of(logits[:, None], tok[:, None])[:, 0]
        live = ~c["done"]
        tok = jnp.where(live, tok, pad_id)
        tokens = c["tokens"].at[:, i].set(tok)
        mask = c["mask"].at[:, i].set(live.astype(jnp.int32))
        logprobs = c["logprobs"].at[:, i].set(jnp.where(live, logp, 0.0))
        done = c["done"] | (tok == eos_id)
        next_logits, cache = policy.extend(params, tok[:, None], live[:, None].astype(jnp.int32), c["cache"],
                                           drop(i))
        return dict(step=i + 1, cache=cache, logits=next_logits, done=done, tokens=tokens, mask=mask,
                    logprobs=logprobs)

    final = jax.lax.while_loop(cond, body, init)
    return Sample(final["tokens"], final["mask"], final["logprobs"])


@jax.jit
def tail_tokens(prompt_ids, prompt_mask, s: Sample) -> Sample:
    """The original GPT-J scripts' response, ``generate(...)[-N:]`` (docs/paper.md quirk #20): the last
    N = max_new_tokens tokens of each row's real prompt + response, so a response that stopped after
    L < N tokens takes the prompt's last N - L tokens in front of it. Left-aligned, mask 1 on every
    token (0 only when prompt + response has fewer than N tokens); ``logprobs`` are those of the same
    tokens where they were sampled, 0 elsewhere (the PPO passes recompute every log-prob anyway)."""
    b, p = prompt_ids.shape
    n = s.tokens.shape[1]
    ids = jnp.concatenate([prompt_ids, s.tokens], axis=1)
    lp = jnp.concatenate([jnp.zeros((b, p), jnp.float32), s.logprobs], axis=1)
    n_gen = s.mask.sum(-1)
    start = jnp.maximum(p + n_gen - n, p - prompt_mask.sum(-1))  # first real token when the row is short
    idx = jnp.clip(start[:, None] + jnp.arange(n)[None], 0, p + n - 1)
    valid = (start[:, None] + jnp.arange(n)[None]) < (p + n_gen)[:, None]
    pad = s.tokens[:, -1:]  # any pad id: masked
    tokens = jnp.where(valid, jnp.take_along_axis(ids, idx, axis=1), pad).astype(jnp.int32)
    logprobs = jnp.where(valid, jnp.take_along_axis(lp, idx, axis=1), 0.0)
    return Sample(tokens, valid.astype(jnp.int32), logprobs)


def sequences(prompt_ids, prompt_mask, s: Sample):
    """[prompt | response] ids and attention mask, as the PPO passes consume them."""
    ids = jnp.concatenate([prompt_ids, s.tokens], axis=1)
    mask = jnp.concatenate([prompt_mask.astype(jnp.int32), s.mask], axis=1)
    return ids, mask


MIN_LENGTH_MODES = ("trl", "new_tokens")


def min_new_tokens_like_trl(prompt_mask, min_length: int, group: int = 4):
    """The original code's effective minimum (docs/paper.md quirk #12).

    HF's ``min_length`` counts the prompt *and* the left padding of each generation sub-batch of
    ``group`` prompts (TRL 0.7 generates in chunks of 4), so the minimum number of new tokens is
    ``max(0, min_length - longest prompt in the row's group)``.
    """
    lengths = jnp.asarray(prompt_mask).sum(-1)
    b = lengths.shape[0]
    pad = (-b) % group
    grouped = jnp.pad(lengths, (0, pad)).reshape(-1, group).max(-1)
    longest = jnp.repeat(grouped, group)[:b]
    return jnp.maximum(0, min_length - longest).astype(jnp.int32)


def min_new_tokens(prompt_mask, min_length: int, mode: str = "trl") -> np.ndarray:
    """Per-row minimum number of new tokens [B] (int32, host) from ``min_length`` and its mode:
    ``"trl"`` counts prompt and group padding as the original code (quirk #12); ``"new_tokens"``
    is a plain minimum of new tokens."""
    if mode == "trl":
        return np.asarray(min_new_tokens_like_trl(prompt_mask, int(min_length)))
    if mode == "new_tokens":
        return np.full((len(prompt_mask),), int(min_length), np.int32)
    raise InvalidInput(f"generation.min_length_mode must be one of {MIN_LENGTH_MODES}, got {mode!r}")


@dataclasses.dataclass(frozen=True)
class SampleSettings:
    """How rollouts are sampled (docs/paper.md §3: ancestral sampling at T = 1, top_k 0, top_p 1)."""

    max_new_tokens: int
    eos_id: int
    pad_id: int | None = None
    min_length: int = 0
    min_length_mode: str = "trl"
    top_k: int = 0
    top_p: float = 1.0
    temperature: float = 1.0
    tail_slice: bool = False  # responses = tail_tokens(...) (the GPT-J scripts' slicing, quirk #20)

    def sample(self, policy: Policy, params, prompt_ids, prompt_mask_host, key, *, prompt_mask=None,
               dropout: bool = False) -> Sample:
        """``sample`` with these settings; ``prompt_mask_host`` (NumPy) sets the minimum lengths,
        ``prompt_mask`` (default: the same) is what the model sees (e.g. the sharded copy)."""
        mask = prompt_mask_host if prompt_mask is None else prompt_mask
        return sample(policy, params, prompt_ids, mask, key,
                      min_new_tokens(prompt_mask_host, self.min_length, self.min_length_mode), self.temperature,
                      max_new_tokens=self.max_new_tokens, eos_id=self.eos_id, pad_id=self.pad_id,
                      top_k=self.top_k, top_p=self.top_p, dropout=dropout)


# --------------------------------------------------------------------------------------------
# a rollout
# --------------------------------------------------------------------------------------------
class Rollout(NamedTuple):
    """One PPO batch. ``[left pad | prompt | response | pad]``; response arrays are [B, N]."""

    input_ids: jax.Array  # [B, P+N] int32
    attention_mask: jax.Array  # [B, P+N] int32
    mask: jax.Array  # [B, N] response mask (1 up to and including EOS)
    logp: jax.Array  # [B, N] old-policy log-probs (eval-mode forward)
    ref_logp: jax.Array  # [B, N] reference-model log-probs
    values: jax.Array  # [B, N] old value estimates V(h_{P-1+i})
    scores: jax.Array  # [B] reward-model scores


@functools.partial(jax.jit, static_argnames=("policy", "prompt_width", "reference"))
def policy_and_reference(policy: Policy, params, ref_params, input_ids, attention_mask, *, prompt_width: int,
                         reference: Policy | None = None):
    """Old-policy log-probs and values, and reference log-probs: both eval mode (quirk #11), one jit.

    ``reference`` is the reference's model handle when it is not ``policy`` (another family or size
    with the same token ids); the KL is always taken on the policy's sampled ids. ``ref_params=None``
    makes the reference read ``params`` itself, e.g. a LoRA policy whose reference is its base with
    adapters off: one copy of the weights."""
    logp, values = policy.forward(params, input_ids, attention_mask, prompt_width)[:2]
    ref = policy if reference is None else reference
    ref_logp = ref.forward(params if ref_params is None else ref_params, input_ids, attention_mask, prompt_width)[0]
    return logp, values, ref_logp


class Collected(NamedTuple):
    """What ``collect`` returns: the device ``Rollout`` and its host-side view."""

    rollout: Rollout
    responses: list[str]  # decoded responses (special tokens kept, quirk #13)
    scores: np.ndarray  # [B] float32 rewards of prompt + response
    response_mask: np.ndarray  # [B, N] host copy of the response mask
    timings: dict[str, float]  # seconds: time/sampling, time/reward, time/forward_wait (or time/forward)


def collect(policy: Policy, params, ref_params, prompt_ids: np.ndarray, prompt_mask: np.ndarray,
            prompt_texts: Sequence[str], key: jax.Array, *, reward: Callable[[Sequence[str], Sequence[str]], Any],
            decode: Callable[[list[np.ndarray]], list[str]], settings: SampleSettings,
            mesh: jax.sharding.Mesh, dropout: bool = False, overlap: bool = True,
            reference: Policy | None = None) -> Collected:
    """Sample a batch, score it and run both passes: one iteration's rollout (docs/paper.md §1.2).

    ``prompt_ids``/``prompt_mask`` are host arrays [B, P] (left-padded), ``prompt_texts`` their decoded
    strings (what the reward model reads in front of the response, quirk #26). ``reward(prompts,
    responses)`` returns B scores; ``decode(list of token arrays)`` returns the response strings.

    With ``overlap`` the policy/reference passes are dispatched before the host decodes and scores:
    JAX runs them asynchronously, so the device computes them while the host tokenises, and
    ``time/forward_wait`` is what the overlap did not hide. ``overlap=False`` waits for each phase
    (``time/forward`` is then the passes alone), for benchmarks that compare phases. ``reference``
    and ``ref_params=None``: see ``policy_and_reference``. ``params`` and ``ref_params`` may be on the
    mesh or not (e.g. straight from ``rajax.io.hf.load``): they are placed on ``mesh`` first, so the
    jitted sampler and passes compile once whichever the caller gives.
    """
    t = time.perf_counter()
    timings = {}
    # Parameters on the mesh whoever loaded them: a jit cache entry is keyed on the mesh of its inputs,
    # and the PPO step returns them on it (parallel.on_mesh; a no-op on placed trees).
    params, ref_params = parallel.on_mesh((params, ref_params), mesh)
    ids_d, mask_d = parallel.shard_batch((prompt_ids, prompt_mask), mesh)
    s = settings.sample(policy, params, ids_d, prompt_mask, key, prompt_mask=mask_d, dropout=dropout)
    if settings.tail_slice:
        s = tail_tokens(ids_d, mask_d, s)
    input_ids, attn = sequences(ids_d, mask_d, s)
    if not overlap:
        jax.block_until_ready(s)
        timings["time/sampling"] = time.perf_counter() - t
        t = time.perf_counter()
    passes = policy_and_reference(policy, params, ref_params, input_ids, attn, prompt_width=prompt_ids.shape[1],
                                  reference=reference)
    if not overlap:
        jax.block_until_ready(passes)
        timings["time/forward"] = time.perf_counter() - t
        t = time.perf_counter()
    tokens, rmask = parallel.to_host((s.tokens, s.mask))
    if overlap:
        timings["time/sampling"] = time.perf_counter() - t
        t = time.perf_counter()
    responses = decode([row[m > 0] for row, m in zip(tokens, rmask)])
    scores = np.asarray(reward(list(prompt_texts), responses), np.float32)
    timings["time/reward"] = time.perf_counter() - t
    if scores.shape != (len(prompt_ids),):
        raise InvalidInput(f"the reward returned {scores.shape[0] if scores.ndim else 0} scores for "
                         f"{len(prompt_ids)} episodes; it must return one number per prompt + response")
    t = time.perf_counter()
    logp, values, ref_logp = jax.block_until_ready(passes)
    if overlap:
        timings["time/forward_wait"] = time.perf_counter() - t
    rollout = Rollout(input_ids=input_ids, attention_mask=attn, mask=s.mask, logp=logp, ref_logp=ref_logp,
                      values=values, scores=parallel.shard_batch(scores, mesh))
    return Collected(rollout, responses, scores, rmask, timings)
