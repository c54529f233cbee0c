"""KL coefficient β: TRL's adaptive and fixed controllers as pure state updates, and the KL
statistic the controller observes under the risk mask.

Spec references: §1.6 (``objective/kl`` and ``kl_ctl.update``; the "diluted" KL, quirk #4),
§2.1 (init 0.2, target 6, horizon 10000, n_steps = batch size), PAPER Eq. 12 ("kept_mean").
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

KL_STATS = ("diluted", "kept_mean", "all")


class KLState(NamedTuple):
    """Controller state (a pytree, so it can be checkpointed): the current coefficient β."""

    beta: jax.Array  # float32 scalar


def init(init_kl_coef: float = 0.2) -> KLState:
    """β₀ (``init_kl_coef``, default 0.2, spec §2.1)."""
    if init_kl_coef < 0:
        raise ValueError(f"init_kl_coef must be >= 0, got {init_kl_coef}")
    return KLState(jnp.asarray(init_kl_coef, jnp.float32))


def update(state: KLState, observed_kl, *, target: float = 6.0, horizon: float = 10000.0,
           n_steps: int, adaptive: bool = True) -> KLState:
    """One controller update, run once per iteration after the PPO epochs (spec §1.6).

    Adaptive (TRL ``AdaptiveKLController``): e = clip(KL_obs/target - 1, -0.2, 0.2);
    β ← β·(1 + e·n_steps/horizon), with n_steps = the batch size (K_β = 128/10000 = 0.0128).
    Fixed (``adaptive=False``): β is unchanged.
    """
    if not adaptive:
        return state
    if target <= 0 or horizon <= 0:
        raise ValueError(f"KL target and horizon must be > 0, got target={target}, horizon={horizon}")
    e = jnp.clip(jnp.asarray(observed_kl, jnp.float32) / target - 1.0, -0.2, 0.2)
    return KLState(state.beta * (1.0 + e * n_steps / horizon))


def kl_statistic(kl_BxN: jax.Array, rmask_BxN: jax.Array, mask_BxN: jax.Array, keep_B: jax.Array,
                 kind: str = "diluted") -> jax.Array:
    """The episode KL the controller sees (``objective/kl``), kl = logπ - logπ_ref per token.

    * ``"diluted"`` (original code, faithful default): (1/B)·Σ_{j kept} Σ_t kl·rmask; dropped
      episodes count as 0 in a mean over all B (the in-place mask of quirk #4).
    * ``"kept_mean"`` (PAPER Eq. 12): mean over kept episodes of Σ_t kl·mask.
    * ``"all"``: mean over all B episodes with the unmasked response mask (plain-PPO view).
    """
    per_ep = (kl_BxN * mask_BxN).sum(-1)
    if kind == "diluted":
        return (kl_BxN * rmask_BxN).sum(-1).mean()
    if kind == "kept_mean":
        keep = keep_B.astype(kl_BxN.dtype)
        return (per_ep * keep).sum() / jnp.maximum(keep.sum(), 1.0)
    if kind == "all":
        return per_ep.mean()
    raise ValueError(f"unknown kl_stat {kind!r}; choose one of {KL_STATS}")
