"""Perplexity as HF ``evaluate``'s perplexity measurement computes it (docs/paper.md §4.2).

Texts are dataset text (not generations), tokenized without special tokens, with BOS prepended;
a text's perplexity is ``exp(mean NLL of its tokens)`` and the paper reports the arithmetic mean.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rajax.core.errors import InvalidInput
from rajax.core.rollout import logprobs_of

PPL_MAX_BATCH = 32  # full-vocabulary logits of [batch, ~256 tokens] cost ~50 MB per row for GPT-2


def _nll_sums(policy, params, ids_BxT, mask_BxT):
    """Per-row sum of next-token NLL over real targets, and their count."""
    logits = policy.logits(params, ids_BxT, mask_BxT)
    logp = logprobs_of(logits[:, :-1], ids_BxT[:, 1:])
    w = mask_BxT[:, 1:].astype(jnp.float32)
    return -(logp * w).sum(-1), w.sum(-1)


_nll_sums_jit = jax.jit(_nll_sums, static_argnums=0)


def _bucket(n: int, quantum: int = 16) -> int:
    """Padded length: next power of two up to 64, then multiples of 64 (few distinct shapes)."""
    if n <= quantum:
        return quantum
    if n <= 64:
        return 1 << (n - 1).bit_length()
    return -(-n // 64) * 64


def encode_for_perplexity(tokenizer, texts: Sequence[str], *, max_chars: int | None = None,
                          bos_id: int | None = None, max_len: int | None = None) -> list[list[int]]:
    """The measurement's encoding: ``text[:max_chars]``, no special tokens, no truncation, BOS first.

    BOS is the tokenizer's BOS (GPT-2: ``<|endoftext|>`` = the EOS id 50256). ``max_len`` (the
    model's context) cuts longer sequences instead of failing; the paper's texts never reach it.
    """
    if bos_id is None:
        bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos_id is None:
        raise InvalidInput("the tokenizer has no BOS/EOS token to prepend for perplexity")
    texts = [t[:max_chars] if max_chars else t for t in texts]
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    seqs = [[int(bos_id)] + list(e) for e in enc]
    if max_len is not None:
        seqs = [s[:max_len] for s in seqs]
    return seqs


def perplexities(cfg, params, tokenizer, texts: Sequence[str], *, batch_size: int = 16,
                 max_chars: int | None = None) -> np.ndarray:
    """Per-text perplexity, ``exp(mean NLL of the text's tokens)`` with the first token predicted
    from BOS (docs/paper.md §4.2). The paper reports the arithmetic mean of these values.

    Texts are sorted by length and right-padded into length buckets, with a fixed batch size, so
    only a few shapes compile. A text with no tokens gets NaN.
    """
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be >= 1, got {batch_size}")
    seqs = encode_for_perplexity(tokenizer, texts, max_chars=max_chars, max_len=cfg.context_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else seqs[0][0] if seqs else 0
    out = np.full(len(seqs), np.nan)
    order = np.argsort([len(s) for s in seqs], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = min(_bucket(max(len(seqs[i]) for i in rows)), cfg.context_length)
        ids = np.full((batch_size, width), pad, np.int32)
        mask = np.zeros((batch_size, width), np.int32)
        for j, i in enumerate(rows):
            ids[j, : len(seqs[i])] = seqs[i]
            mask[j, : len(seqs[i])] = 1
        nll, cnt = jax.device_get(_nll_sums_jit(cfg, params, jnp.asarray(ids), jnp.asarray(mask)))
        nll, cnt = np.asarray(nll[: len(rows)], np.float64), np.asarray(cnt[: len(rows)])
        with np.errstate(invalid="ignore", divide="ignore"):
            out[rows] = np.where(cnt > 0, np.exp(nll / np.maximum(cnt, 1)), np.nan)
    return out
