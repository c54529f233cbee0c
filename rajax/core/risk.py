"""Risk side of RA-RLHF: the soft-risk schedule, the per-episode statistic, and risk measures.

References are to docs/paper.md:
  * §1.3  soft-risk level α′ (an episode count) per iteration: ``soft_risk_level``.
  * §1.4  the statistic ranked by the quantile (GAE λ-return at the first response token by default).
  * §1.5  the CVaR mask: keep every episode whose statistic is ≤ the α′-th smallest (ties kept).
  * §1.7  the paper's Eq. 7 CVaR policy-gradient weighting, which the original code does NOT use;
          it is offered as a second, opt-in risk measure.

Everything on arrays is pure and jit-friendly: the batch axis may be sharded over devices, and the
sort in ``cvar_threshold`` is then a global sort (jit/GSPMD partitions it, it does not localise it).
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rajax.core import plugins
from rajax.core.errors import InvalidInput

SCHEDULERS = ("new", "old")
EPISODE_STATS = ("gae_return", "mc_return", "env_score")


# --------------------------------------------------------------------------------------------
# §1.3 soft-risk schedule (host-side integer arithmetic on Python floats, as the original code)
# --------------------------------------------------------------------------------------------
def soft_risk_level(m: int, *, batch_size: int, alpha: float, n: int, rho: float, M: int,
                    scheduler: str = "new") -> int:
    """α′ at 0-based iteration ``m`` (docs/paper.md §1.3, ``get_current_risk_level``).

    "new" (paper Eq. 8-10, every active run): B while m ≤ n, then a linear decrease that reaches
    ⌈αB⌉ at m = ⌈ρM⌉.  "old" (the code's unused default): decreases with slope (1-α)/(ρM) and only
    reaches α at m = n + ρM, i.e. never within M iterations when n > (1-ρ)M.
    Uses ``math.ceil`` on Python floats so the values match the original code exactly.
    """
    B = int(batch_size)
    if B < 1:
        raise InvalidInput(f"batch_size must be >= 1, got {batch_size}")
    if not 0.0 < alpha <= 1.0:
        raise InvalidInput(f"risk alpha must be in (0, 1], got {alpha}")
    if scheduler not in SCHEDULERS:
        raise InvalidInput(f"unknown risk scheduler {scheduler!r}; choose one of {SCHEDULERS}")
    if m <= n:
        return B
    if scheduler == "old":
        return math.ceil(B * max(alpha, 1 - (1 - alpha) * (m - n) / (rho * M)))
    end = math.ceil(rho * M)
    if m >= end:
        return math.ceil(alpha * B)
    K = (1 - alpha) / (end - n)
    return math.ceil(B * max(alpha, 1 - K * (m - n)))


def soft_risk_schedule(num_iters: int, *, batch_size: int, alpha: float, n: int, rho: float,
                       M: int | None = None, scheduler: str = "new") -> np.ndarray:
    """α′ for m = 0 .. num_iters-1 as an int64 NumPy array (M defaults to num_iters); for plots/tests."""
    M = num_iters if M is None else M
    return np.array([soft_risk_level(m, batch_size=batch_size, alpha=alpha, n=n, rho=rho, M=M,
                                     scheduler=scheduler) for m in range(num_iters)], np.int64)


# --------------------------------------------------------------------------------------------
# §1.4 the per-episode statistic
# --------------------------------------------------------------------------------------------
def episode_statistic(kind: str, *, returns_BxN: jax.Array, rewards_BxN: jax.Array,
                      mask_BxN: jax.Array, scores_B: jax.Array) -> jax.Array:
    """The per-episode number the CVaR quantile ranks (docs/paper.md §1.4, quirks #2-3).

    * ``"gae_return"`` (faithful default): GAE λ-return at the first response token,
      ``returns[j, len(q_j)-1]`` in the original layout = ``returns_BxN[:, 0]`` here.
    * ``"mc_return"`` (the paper's text, R_r̄(τ)): Σ_t of the KL-penalised per-token rewards.
    * ``"env_score"``: the raw reward-model score (no KL terms).
    """
    if kind == "gae_return":
        return returns_BxN[:, 0]
    if kind == "mc_return":
        return (rewards_BxN * mask_BxN).sum(-1)
    if kind == "env_score":
        return scores_B.astype(jnp.float32)
    raise InvalidInput(f"unknown risk statistic {kind!r}; choose one of {EPISODE_STATS}")


# --------------------------------------------------------------------------------------------
# CVaR of a finished batch (NumPy): the training metric env/reward_cvar and the evaluation's CVaR@a
# --------------------------------------------------------------------------------------------
def cvar_count(n: int, alpha: float) -> int:
    """How many of ``n`` values CVaR_alpha averages: ``ceil(alpha * n)``, at least 1.

    ``alpha * n`` is rounded to 9 decimals first so that float noise (0.1 * 30 = 3.0000000000000004)
    does not add a row.
    """
    return max(1, math.ceil(round(alpha * n, 9)))


def cvar(x, alpha: float) -> float:
    """Lower-tail CVaR: the mean of the lowest ``ceil(alpha * N)`` values of ``x``.

    Convention: the empirical lower tail with a whole number of rows, rounding the tail size up
    (the same rounding as the paper's risk level alpha' = ceil(alpha B), §1.3); alpha = 1 is the mean.
    """
    v = np.sort(np.asarray(x, np.float64).ravel())
    if v.size == 0:
        raise InvalidInput("cvar of an empty array")
    if not 0.0 < alpha <= 1.0:
        raise InvalidInput(f"cvar alpha must be in (0, 1], got {alpha}")
    return float(v[: cvar_count(v.size, alpha)].mean())


# --------------------------------------------------------------------------------------------
# §1.5 CVaR mask and the risk-measure registry
# --------------------------------------------------------------------------------------------
def cvar_threshold(stat_B: jax.Array, k) -> jax.Array:
    """q = the k-th smallest statistic (k is 1-based, may be traced; clipped into [1, B])."""
    b = stat_B.shape[0]
    k = jnp.clip(jnp.asarray(k, jnp.int32), 1, b)
    return jnp.take(jnp.sort(stat_B), k - 1)


def cvar_mask(stat_B: jax.Array, k) -> jax.Array:
    """keep_B (bool): episodes with stat ≤ the k-th smallest (docs/paper.md §1.5; ties at q are all kept,
    so at least k are kept; k = B keeps everything, i.e. plain PPO)."""
    return stat_B <= cvar_threshold(stat_B, k)


RiskMeasure = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
"""A risk measure maps (stat_B, k) -> (weights_B >= 0, threshold q). ``ppo.ppo_step`` multiplies
the token mask of episode j by weights_j / max(weights), so 0/1 weights select episodes and other
weights become weighted masked means. ``register`` one under a name, or name it by a
``module:function`` spec (``rajax.core.plugins``) in ``ppo.risk_measure``."""


def cvar_weights(stat_B: jax.Array, k) -> tuple[jax.Array, jax.Array]:
    """The original code's measure (docs/paper.md §1.5): 0/1 weights = ``cvar_mask``."""
    q = cvar_threshold(stat_B, k)
    return (stat_B <= q).astype(jnp.float32), q


def cvar_pg_weights(stat_B: jax.Array, k) -> tuple[jax.Array, jax.Array]:
    """The paper's Eq. 7 CVaR policy-gradient weighting, NOT what the original code runs (§1.7).

    weight_j = (q̂ - R_j)_+ / k with q̂ the k-th smallest statistic (αB = k): the further below the
    quantile, the larger the weight; episodes at or above q̂ get 0. (With k = 1 every weight is 0.)
    """
    q = cvar_threshold(stat_B, k)
    k = jnp.clip(jnp.asarray(k, jnp.float32), 1.0, stat_B.shape[0])
    return jnp.maximum(q - stat_B, 0.0).astype(jnp.float32) / k, q


RISK_MEASURES: dict[str, RiskMeasure] = {"cvar": cvar_weights, "cvar_pg": cvar_pg_weights}


def register(name: str, fn: RiskMeasure) -> RiskMeasure:
    """Make ``fn`` the risk measure ``ppo.risk_measure=name`` selects (returns ``fn``). Registering a
    name again replaces its function, and the next ``ppo_step`` uses the new one: the jitted step is
    keyed on the function, not on the name."""
    if not isinstance(name, str) or not name or ":" in name:
        raise InvalidInput(f"a risk measure's name must be a non-empty string without ':' (the spec "
                           f"separator), got {name!r}")
    if not callable(fn):
        raise InvalidInput(f"risk measure {name!r} must be a function (stat_B, k) -> (weights_B, q)")
    RISK_MEASURES[name] = fn
    return fn


def measure(name_or_spec: str) -> RiskMeasure:
    """The function ``ppo.risk_measure`` names: a registered name (``RISK_MEASURES``) or a spec of a
    user's function, ``module:function`` or ``path/to/file.py:function`` (``rajax.core.plugins``)."""
    if name_or_spec in RISK_MEASURES:
        return RISK_MEASURES[name_or_spec]
    if plugins.is_spec(name_or_spec):
        return plugins.load_callable(name_or_spec, what="ppo.risk_measure")
    raise InvalidInput(f"unknown risk measure {name_or_spec!r}; choose one of {sorted(RISK_MEASURES)} "
                       f"(registered with rajax.core.risk.register) or give {plugins.FORMS}")


def risk_weights(name_or_spec: str, stat_B: jax.Array, k) -> tuple[jax.Array, jax.Array]:
    """Apply the risk measure ``name_or_spec`` names (``measure``); returns (weights_B, q)."""
    return measure(name_or_spec)(stat_B, k)
