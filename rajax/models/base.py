"""The one interface every causal-LM family implements, so nothing above ``rajax.models`` names a family.

A family is a frozen, hashable config dataclass that inherits ``CausalLM`` and implements three
methods, ``apply``, ``lm_head`` and ``init_cache``. The mixin derives from them everything the rest
of rajax uses: ``logits`` (perplexity, SFT), ``extend`` (the sampler's KV-cache step) and
``forward`` (the PPO passes: response log-probs, values, entropies). The config object itself is
the model handle that jitted functions take as a static argument (``rajax.core.rollout.Policy``).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rajax.core.errors import InvalidInput
from rajax.core.rollout import logprobs_and_entropy


class Output(NamedTuple):
    logits: jax.Array  # [B, T, V] float32 (XLA drops it when only ``hidden`` is used)
    values: jax.Array  # [B, T] float32 value-head outputs
    cache: Any  # updated KV cache, or None
    hidden: jax.Array  # [B, T, E] final hidden state (after the last norm), compute dtype


class CausalLM:
    """Mixin for a family's config: the rollout/PPO interface from ``apply``/``lm_head``/``init_cache``.

    A family's config also has a ``vocab_size`` field (its embedding rows), which every command
    checks against the tokenizer.
    """

    vocab_size: int

    # --- what a family implements --------------------------------------------------------------
    @property
    def context_length(self) -> int:
        raise NotImplementedError

    @property
    def hidden_size(self) -> int:
        """Width of the final hidden state (the value head's input)."""
        raise NotImplementedError

    def apply(self, params, input_ids, attention_mask=None, *, cache=None, dropout_key=None) -> Output:
        """Full causal pass (``cache=None``) or T new tokens appended to ``cache``."""
        raise NotImplementedError

    def lm_head(self, params, hidden) -> jax.Array:
        """float32 logits of some final hidden states."""
        raise NotImplementedError

    def init_cache(self, batch: int, length: int) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        """A short name for logs, e.g. "GPT-2 12x768"."""
        return type(self).__name__

    def lora_sites(self) -> dict:
        """``{(layer, target): path of the dense kernel in params}`` for every LoRA target the family
        supports (``rajax.models.lora``); a family without LoRA support raises."""
        raise InvalidInput(f"{self.describe()} does not support LoRA adapters")

    @property
    def default_lora_targets(self) -> tuple[str, ...]:
        """The targets of ``model.lora_targets`` left empty: PEFT's default for the family (q_proj and
        v_proj for Llama, Qwen2 and GPT-J; GPT-2 overrides it)."""
        return ("q_proj", "v_proj")

    # --- derived -------------------------------------------------------------------------------
    def logits(self, params, input_ids, attention_mask=None) -> jax.Array:
        """[B, T, V] float32 logits of every position."""
        return self.lm_head(params, self.apply(params, input_ids, attention_mask).hidden)

    def extend(self, params, ids_BxT, mask_BxT, cache, dropout_key=None):
        """Append T tokens to ``cache`` -> (float32 logits of the last position [B, V], new cache).

        The LM head runs on the last position only: the sampler never needs the others."""
        out = self.apply(params, ids_BxT, mask_BxT, cache=cache, dropout_key=dropout_key)
        return self.lm_head(params, out.hidden[:, -1]), out.cache

    def forward(self, params, input_ids, attention_mask, prompt_width: int):
        """Eval-mode pass (no dropout, docs/paper.md quirk #11) -> (logp_BxN, values_BxN, entropy_BxN).

        Position P-1+i predicts response token i (at P+i); values are V(h_{P-1+i}). The LM head runs
        on the response positions only: over the prompt it would be wasted work (and [B, T, V] float32
        of memory)."""
        p = int(prompt_width)
        if not 0 < p < input_ids.shape[1]:
            raise InvalidInput(f"prompt_width={p} must be in [1, {input_ids.shape[1] - 1}] for sequences of "
                             f"length {input_ids.shape[1]}")
        out = self.apply(params, input_ids, attention_mask)
        logits = self.lm_head(params, out.hidden[:, p - 1:-1])
        logp, entropy = logprobs_and_entropy(logits, input_ids[:, p:])
        return logp, out.values[:, p - 1:-1], entropy


def positions_from_mask(mask_BxT: jax.Array, offset: jax.Array | int = 0) -> jax.Array:
    """Position ids from a 0/1 mask: real tokens count ``offset``, ``offset`` + 1, ...; pads get 0."""
    pos = jnp.cumsum(mask_BxT, axis=-1) - 1 + offset
    return jnp.where(mask_BxT > 0, pos, 0).astype(jnp.int32)


def attention_layout(mask_BxT: jax.Array | None, ids_BxT: jax.Array, cache: dict | None):
    """Positions, the boolean key mask and the cache bookkeeping of one causal pass, for families whose
    cache is ``{"k", "v", "mask" [B, S], "index"}`` (GPT-2's layout; Llama and GPT-J use it).

    Returns ``(mask_BxT, positions_BxT, key_mask_BxTxS, write_index, slot_mask_BxS or None)``. Without
    a cache S = T and the pass is causal over ``mask``; with one, the T tokens go to slots
    ``[index, index + T)`` and see every earlier valid slot; positions continue from the real tokens
    already cached, so a left-padded prompt gives the positions of the unpadded one. A query whose row
    has no valid key (a pad) sees itself, so softmax never runs over nothing (its output is unused).
    """
    b, t = ids_BxT.shape
    mask_BxT = jnp.ones((b, t), jnp.int32) if mask_BxT is None else mask_BxT.astype(jnp.int32)
    if cache is None:
        causal = jnp.tril(jnp.ones((t, t), bool))
        key_mask = (causal[None] & (mask_BxT[:, None, :] > 0)) | jnp.eye(t, dtype=bool)[None]
        return mask_BxT, positions_from_mask(mask_BxT), key_mask, 0, None
    index = cache["index"]
    s = cache["mask"].shape[1]
    seen = cache["mask"].sum(-1, keepdims=True)
    slot_mask = jax.lax.dynamic_update_slice(cache["mask"], mask_BxT, (0, index))
    slots = jnp.arange(s)[None, :]
    query_slot = index + jnp.arange(t)[:, None]
    key_mask = ((slots <= query_slot)[None] & (slot_mask[:, None, :] > 0)) | (slots == query_slot)[None]
    return mask_BxT, positions_from_mask(mask_BxT, seen), key_mask, index, slot_mask


def init_value_head(hidden_size: int, key: jax.Array) -> dict:
    """A fresh value head, U(-1/sqrt(E), 1/sqrt(E)) like PyTorch's nn.Linear default (TRL's ValueHead)."""
    bound = hidden_size**-0.5
    k1, k2 = jax.random.split(key)
    return {
        "kernel": jax.random.uniform(k1, (hidden_size, 1), jnp.float32, -bound, bound),
        "bias": jax.random.uniform(k2, (1,), jnp.float32, -bound, bound),
    }
