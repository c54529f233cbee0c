"""The paper's evaluation metrics (docs/paper.md §4.1), as NumPy functions of finished results.

* ``tail_mean``: the mean reward over prompts whose prompt score is below a threshold ("Tail (r)");
* ``cvar``: the mean of the lowest ``ceil(a*N)`` rewards (from ``rajax.core.risk``);
* ``quantile_curve``: the "reward vs quantile" curve, a cumulative lower-tail mean over prompts
  sorted by prompt score.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rajax.core.errors import InvalidInput
from rajax.core.risk import cvar, cvar_count

__all__ = ["cvar", "cvar_count", "quantile_curve", "tail_mean"]


def tail_mean(rewards, prompt_scores, threshold: float, inclusive: bool = False) -> float:
    """Mean reward over rows with ``prompt_score < threshold`` (``<=`` if ``inclusive``); NaN if none.

    The paper's "Tail (r)" (§4.1): IMDB prompt score <= -2.5, Jigsaw <= 5, RTP < 5.
    """
    r = np.asarray(rewards, np.float64)
    s = np.asarray(prompt_scores, np.float64)
    if r.shape != s.shape:
        raise InvalidInput(f"rewards {r.shape} and prompt_scores {s.shape} must have the same shape")
    sel = s <= threshold if inclusive else s < threshold
    return float(r[sel].mean()) if sel.any() else float("nan")


def quantile_curve(prompt_scores, rewards, qs: Sequence[int] = tuple(range(1, 101))) -> np.ndarray:
    """The paper's "reward vs quantile" curve (§4.1): the cumulative lower-tail mean.

    Sort rows by prompt score (ascending, stable), then for each q (in %) average ``rewards`` over
    the first ``int(q / 100 * N)`` rows (the plotting scripts' own float expression, kept for
    fidelity). A q that selects no row gives NaN.
    """
    s = np.asarray(prompt_scores, np.float64)
    r = np.asarray(rewards, np.float64)
    if r.shape != s.shape or r.ndim != 1:
        raise InvalidInput(f"prompt_scores {s.shape} and rewards {r.shape} must be 1-D and the same shape")
    n = len(s)
    csum = np.concatenate([[0.0], np.cumsum(r[np.argsort(s, kind="stable")])])
    out = np.full(len(qs), np.nan)
    for i, q in enumerate(qs):
        k = int(q / 100 * n)
        if k > 0:
            out[i] = csum[k] / k
    return out
