"""Batched autoregressive sampling with a KV cache carried through ``lax.while_loop``.

One jitted call: prefill the (left-padded) prompts into the cache, then decode up to
``max_new_tokens`` steps, stopping early once every row has emitted EOS. Shapes are static, so
there is one compilation per (batch, prompt width, max_new_tokens, static options).

Layout of the result (the same for every row, which keeps PPO shapes static):
``[left pad | prompt | response | pad]``, prompt width P, response width N. The first response token
of every row is predicted at sequence position P-1.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rajax.models import gpt2


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
    static_argnames=("cfg", "max_new_tokens", "top_k", "top_p", "eos_id", "pad_id", "greedy", "dropout"),
)
def sample(
    cfg: gpt2.GPT2Config,
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

    ``min_new_tokens`` (scalar or [B]) suppresses EOS until that many tokens were generated.
    ``temperature`` is traced (changing it does not recompile). ``greedy`` takes the argmax instead.
    ``dropout`` samples with GPT-2's dropout active (the original code's train-mode rollouts,
    spec quirk #10). Rows stop at their first EOS (kept, mask 1); later slots are ``pad_id`` (mask 0).
    """
    b, p = prompt_ids.shape
    n = max_new_tokens
    if p + n > cfg.n_positions:
        # Position embeddings past n_positions would be silently clamped by the gather.
        raise ValueError(f"prompt width {p} + max_new_tokens {n} exceeds the model's n_positions "
                         f"{cfg.n_positions}; shorten the prompt or generate fewer tokens")
    pad_id = eos_id if pad_id is None else pad_id
    min_new = jnp.broadcast_to(jnp.asarray(min_new_tokens, jnp.int32), (b,))
    sample_key, drop_key = jax.random.split(key)

    def drop(i):
        return jax.random.fold_in(drop_key, i) if dropout else None

    cache = gpt2.init_cache(cfg, b, p + n)
    out = gpt2.apply(cfg, params, prompt_ids, prompt_mask, cache=cache, dropout_key=drop(n))
    init = dict(
        step=jnp.zeros((), jnp.int32),
        cache=out.cache,
        logits=gpt2.lm_head(cfg, params, out.hidden[:, -1]),  # only the last prompt position
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
        logp = gpt2.logprobs_of(logits[:, None], tok[:, None])[:, 0]
        live = ~c["done"]
        tok = jnp.where(live, tok, pad_id)
        tokens = c["tokens"].at[:, i].set(tok)
        mask = c["mask"].at[:, i].set(live.astype(jnp.int32))
        logprobs = c["logprobs"].at[:, i].set(jnp.where(live, logp, 0.0))
        done = c["done"] | (tok == eos_id)
        o = gpt2.apply(cfg, params, tok[:, None], live[:, None].astype(jnp.int32), cache=c["cache"],
                       dropout_key=drop(i))
        return dict(step=i + 1, cache=o.cache, logits=o.logits[:, -1], done=done, tokens=tokens,
                    mask=mask, logprobs=logprobs)

    final = jax.lax.while_loop(cond, body, init)
    return Sample(final["tokens"], final["mask"], final["logprobs"])


def sequences(prompt_ids, prompt_mask, s: Sample):
    """[prompt | response] ids and attention mask, as the PPO passes consume them."""
    ids = jnp.concatenate([prompt_ids, s.tokens], axis=1)
    mask = jnp.concatenate([prompt_mask.astype(jnp.int32), s.mask], axis=1)
    return ids, mask


def min_new_tokens_like_trl(prompt_mask, min_length: int, group: int = 4):
    """The original code's effective minimum (spec quirk #12).

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
