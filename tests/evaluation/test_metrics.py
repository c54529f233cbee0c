"""rajax.evaluation.metrics: tail, CVaR and the quantile curve against hand-computed values."""
import math

import numpy as np
import pytest

from rajax.evaluation import metrics as E

# A fixed table of 10 prompts: prompt scores and one policy's rewards.
SCORES = np.array([3.0, -1.0, 7.0, 5.0, 0.5, 6.0, -4.0, 5.0, 2.0, 8.0])
REWARDS = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])


def test_tail_mean_strict_and_inclusive():
    # prompt score < 5: rows 0,1,4,6,8 -> rewards 1,2,5,7,9
    assert E.tail_mean(REWARDS, SCORES, 5.0) == pytest.approx(24 / 5)
    # <= 5 also takes rows 3 and 7 (score exactly 5) -> + 4, 8
    assert E.tail_mean(REWARDS, SCORES, 5.0, inclusive=True) == pytest.approx(36 / 7)
    assert math.isnan(E.tail_mean(REWARDS, SCORES, -10.0))
    with pytest.raises(ValueError):
        E.tail_mean(REWARDS, SCORES[:3], 0.0)


def test_cvar_convention():
    x = np.array([5.0, -2.0, 3.0, 9.0, 0.0, 1.0, 7.0, -6.0, 4.0, 2.0])  # sorted: -6 -2 0 1 2 3 4 5 7 9
    assert E.cvar(x, 0.1) == pytest.approx(-6.0)  # ceil(1.0) = 1
    assert E.cvar(x, 0.2) == pytest.approx(-4.0)  # 2 rows
    assert E.cvar(x, 0.25) == pytest.approx(-8 / 3)  # ceil(2.5) = 3 rows: -6, -2, 0
    assert E.cvar(x, 0.05) == pytest.approx(-6.0)  # at least one row
    assert E.cvar(x, 1.0) == pytest.approx(x.mean())
    # float noise must not add a row: 0.1 * 30 = 3.0000000000000004 -> 3 rows, not 4
    assert E.cvar_count(30, 0.1) == 3
    assert E.cvar(np.arange(30.0), 0.1) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        E.cvar(x, 0.0)


def test_quantile_curve_cumulative_lower_tail():
    # sorted by prompt score (stable): rows 6(-4),1(-1),4(.5),8(2),0(3),3(5),7(5),5(6),2(7),9(8)
    # -> rewards 7, 2, 5, 9, 1, 4, 8, 6, 3, 10
    c = E.quantile_curve(SCORES, REWARDS, qs=[5, 10, 20, 30, 50, 70, 100])
    assert math.isnan(c[0])  # int(0.05 * 10) = 0 rows
    np.testing.assert_allclose(c[1:], [7.0, 4.5, 14 / 3, 24 / 5, 36 / 7, 55 / 10])
    full = E.quantile_curve(SCORES, REWARDS)
    assert full.shape == (100,)
    assert full[-1] == pytest.approx(REWARDS.mean())
    # the plotting scripts' int(q / 100 * N): 29/100*100 = 28.999999999999996 -> 28 rows
    r = np.arange(100.0)
    assert E.quantile_curve(r, r, qs=[29])[0] == pytest.approx(np.arange(28.0).mean())
