"""Sampling the evaluation's responses, and the KL part of the paper's return R̄ (docs/paper.md §4.1).

Every policy continues every test prompt (``eval.samples_per_prompt`` times, each row sampled on its
own), with the training sampler and settings; responses
are decoded exactly as in training (special tokens kept, quirk #13), so rewards are comparable.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rajax.core import rollout
from rajax.core.errors import InvalidInput
from rajax.tasks import decode_all, left_pad


def _get(obj, name, default=None):
    return obj.get(name, default) if isinstance(obj, Mapping) else getattr(obj, name, default)


def prompt_arrays(prompt_set, pad_id: int):
    """(ids [N,P], mask [N,P]) left-padded from a PromptSet (arrays, or a list of id lists)."""
    ids = _get(prompt_set, "ids")
    mask = _get(prompt_set, "mask")
    if mask is None:
        mask = _get(prompt_set, "attention_mask")
    if mask is not None and not isinstance(ids, list):
        return np.asarray(ids, np.int32), np.asarray(mask, np.int32)
    rows = [list(map(int, r)) for r in ids]
    return left_pad(rows, max([len(r) for r in rows] + [1]), pad_id)


def generate(policy, params, tokenizer, prompt_set, *, settings: rollout.SampleSettings, batch_size: int,
             key: jax.Array, progress: bool = False, desc: str = "generate", clean_up: bool = False,
             return_tokens: bool = False):
    """One sampled continuation per prompt, decoded WITH special tokens (EOS kept, quirk #13).

    Returns the response strings, or with ``return_tokens`` ``(strings, tokens [N, max_new],
    response mask [N, max_new])``.

    Prompts are processed in file order in batches of ``batch_size`` (the last one is padded with
    copies so every call has the same shape); the minimum length is computed over the whole set
    in TRL's groups of 4 (quirk #12) before batching, so it does not depend on ``batch_size``.
    """
    ids, mask = prompt_arrays(prompt_set, settings.eos_id if settings.pad_id is None else settings.pad_id)
    n = len(ids)
    if n == 0:
        return ([], np.zeros((0, settings.max_new_tokens), np.int32),
                np.zeros((0, settings.max_new_tokens), np.int32)) if return_tokens else []
    max_new = settings.max_new_tokens
    if ids.shape[1] + max_new > policy.context_length:
        raise InvalidInput(f"prompt width {ids.shape[1]} + max_new_tokens {max_new} exceeds the model's "
                         f"context of {policy.context_length}")
    mins = rollout.min_new_tokens(mask, settings.min_length, settings.min_length_mode)
    kw = dict(max_new_tokens=max_new, eos_id=settings.eos_id,
              pad_id=settings.eos_id if settings.pad_id is None else settings.pad_id,
              top_k=settings.top_k, top_p=settings.top_p)
    bs = max(1, min(batch_size, n))
    responses: list[str] = []
    tok_rows, mask_rows = [], []
    starts = range(0, n, bs)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", dynamic_ncols=True, disable=None)  # off without a terminal
    for b, start in enumerate(starts):
        rows = np.arange(start, min(start + bs, n))
        take = np.concatenate([rows, np.full(bs - len(rows), rows[-1])])
        s = rollout.sample(policy, params, jnp.asarray(ids[take]), jnp.asarray(mask[take]),
                           jax.random.fold_in(key, b), jnp.asarray(mins[take]), settings.temperature, **kw)
        toks, m = jax.device_get((s.tokens, s.mask))
        responses += decode_all(tokenizer, [toks[j][m[j] > 0] for j in range(len(rows))], clean_up=clean_up)
        tok_rows.append(toks[:len(rows)])
        mask_rows.append(m[:len(rows)])
    if return_tokens:
        return responses, np.concatenate(tok_rows), np.concatenate(mask_rows)
    return responses


@functools.partial(jax.jit, static_argnames=("policy", "reference"))
def _kl_sums(policy, params, ref_params, ids, mask, toks, rmask, reference=None):
    seq = jnp.concatenate([ids, toks], axis=1)
    attn = jnp.concatenate([mask, rmask], axis=1)
    logp, _, ref_logp = rollout.policy_and_reference(policy, params, ref_params, seq, attn,
                                                     prompt_width=ids.shape[1], reference=reference)
    return ((logp - ref_logp) * rmask).sum(-1)


def kl_sums(policy, params, ref_params, prompt_ids, prompt_mask, tokens, response_mask, *, batch_size: int,
            reference=None):
    """Σ_t (log π − log π_ref) over each response's tokens (the KL part of R̄, docs/paper.md §4.1).

    ``reference`` is the reference's model handle when it is another family or size than ``policy``."""
    n = len(tokens)
    bs = max(1, min(batch_size, n))
    out = []
    for start in range(0, n, bs):
        rows = np.arange(start, min(start + bs, n))
        take = np.concatenate([rows, np.full(bs - len(rows), rows[-1])])  # one shape, one compile
        out.append(np.asarray(_kl_sums(policy, params, ref_params, prompt_ids[take], prompt_mask[take],
                                       tokens[take], response_mask[take], reference))[:len(rows)])
    return np.concatenate(out).astype(np.float64)
