"""The study table: mean ± sample std over seeds, one row per method."""
from rajax.study import row, table


def test_table_mean_and_std_over_seeds():
    m = lambda r: {"reward": r, "tail": r - 1, "cvar": {"0.1": r - 2}, "perplexity": 10 * r,
                   "extra": {"ground_truth": r / 2}}
    md = table({"rlhf": [row(m(1.0)), row(m(3.0))], "ra-rlhf": [row(m(2.0))]})
    lines = md.splitlines()
    assert lines[0] == "| method | seeds | reward | tail | CVaR 0.1 | ground_truth | perplexity |"
    assert lines[2] == "| rlhf | 2 | 2.000 ± 1.414 | 1.000 ± 1.414 | 0.000 ± 1.414 | 1.000 ± 0.707 | 20.000 ± 14.142 |"
    assert lines[3] == "| ra-rlhf | 1 | 2.000 | 1.000 | 0.000 | 1.000 | 20.000 |"
