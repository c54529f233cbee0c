"""rajax.evaluation.report: the metrics table, strict JSON, and every file of an evaluation directory."""
import json
import math

import numpy as np
import pandas as pd
from matplotlib.image import imread

from rajax.evaluation import report


def _metrics(tail_b=float("nan")):
    pol = lambda r, t, ppl: {"reward": r, "return": r - 0.1, "tail": t, "cvar": {"0.1": r - 2, "0.5": r - 1},  # noqa: E731
                             "perplexity": ppl, "extra": {"ground_truth": r + 1}}
    return {"task": "toy", "n_test": 4, "n_tail": 2, "tail_threshold": 0.0, "tail_inclusive": False,
            "cvar_alphas": [0.1, 0.5], "n_ppl_texts": 3, "kl_reference": "a", "kl_beta": 0.2,
            "prompt_score": {"mean": 0.5, "tail": -1.0},
            "policies": {"a": pol(1.0, 0.25, 12.5), "b": pol(2.0, tail_b, float("nan"))}}


def test_metrics_table_has_one_row_per_policy_and_prints_nan():
    md = report.metrics_table(_metrics()).splitlines()
    assert md[0] == "| policy | reward | tail | CVaR@0.1 | CVaR@0.5 | R̄ | perplexity | ground_truth |"
    assert md[2] == "| a | 1.000 | 0.250 | -1.000 | 0.000 | 0.900 | 12.500 | 2.000 |"
    assert md[3] == "| b | 2.000 | nan | 0.000 | 1.000 | 1.900 | nan | 3.000 |"


def test_write_produces_every_file(tmp_path):
    m = _metrics()
    scores = np.array([-2.0, -1.0, 1.0, 4.0])
    rewards = {"a": np.array([0.0, 1.0, 1.5, 1.5]), "b": np.array([1.0, 2.0, 2.0, 3.0])}
    table = {"prompt": ["p,1", "p\r2", "p3", "p4"], "prompt_score": scores, "label": [1, 1, 0, 0],
             **{f"reward_{k}": v for k, v in rewards.items()}}
    report.write(str(tmp_path), m, table, prompt_scores=scores, rewards_by=rewards,
                 returns_by={k: v - 0.1 for k, v in rewards.items()}, labels=[1, 1, 0, 0],
                 class_names={0: "Non toxic", 1: "Toxic"}, max_new_tokens=7, ppl_max_chars=30)
    j = json.loads((tmp_path / "metrics.json").read_text())  # strict JSON: NaN became null
    assert j["policies"]["b"]["tail"] is None and j["policies"]["a"]["tail"] == 0.25
    df = pd.read_csv(tmp_path / "generations.csv", keep_default_na=False)
    assert list(df["prompt"]) == ["p,1", "p\r2", "p3", "p4"]  # quoted: a bare \r does not split a row
    np.testing.assert_array_equal(df["reward_b"], rewards["b"])
    assert (tmp_path / "metrics.md").read_text().strip() == report.metrics_table(m)
    rep = (tmp_path / "report.md").read_text()
    assert "# Evaluation: toy" in rep and "max 7 new tokens" in rep and "score < 0 (2 prompts)" in rep
    assert "first 30 characters" in rep and "reference: a" in rep and "| b |" in rep
    for fig in ("hist.png", "quantile.png", "quantile_returns.png"):
        img = imread(tmp_path / fig)
        assert img.ndim == 3 and img.std() > 0 and min(img.shape[:2]) > 100
    assert not math.isnan(j["policies"]["a"]["perplexity"])
