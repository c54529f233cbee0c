"""rajax.evaluation.report: the metrics table, strict JSON, and every file of an evaluation directory."""
import json
import math
import os

import numpy as np
import pandas as pd
import pytest
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


@pytest.fixture
def saved(monkeypatch):
    """Every figure ``report`` saves, by file name, with the boxes (in pixels) of its axis labels,
    titles and legends as drawn at save time and the figure's own box."""
    from matplotlib.figure import Figure

    got, orig = {}, Figure.savefig

    def savefig(fig, path, *a, **k):
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        texts = [t for ax in fig.axes for t in (ax.title, ax.xaxis.label, ax.yaxis.label)]
        texts += [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        boxes = [(getattr(t, "get_text", lambda: "legend")(), t.get_window_extent(r)) for t in texts
                 if t.get_visible() and getattr(t, "get_text", lambda: "x")()]
        got[os.path.basename(str(path))] = (fig, boxes, fig.bbox)
        return orig(fig, path, *a, **k)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return got


def _four_samples():
    """6 prompts x 4 samples, rows prompt by prompt (as rajax.evaluation.run lays them out)."""
    rng = np.random.default_rng(0)
    k, n = 4, 6
    scores = np.repeat(np.array([-3.0, -1.0, 0.5, 1.0, 2.0, 5.0]), k)
    labels = np.repeat(np.array([1, 1, 0, 1, 0, 0]), k)
    rewards = {"a": rng.normal(0, 1, n * k), "b": rng.normal(3, 2, n * k)}
    m = {**_metrics(), "n_test": n, "samples_per_prompt": k}
    table = {"prompt": [f"p{i // k}" for i in range(n * k)], "prompt_score": scores, "sample": np.tile(np.arange(k), n),
             "label": list(labels), **{f"reward_{q}": v for q, v in rewards.items()}}
    return m, table, scores, labels, rewards


def test_figures_share_bins_and_axes_count_prompts_once_and_nothing_is_clipped(tmp_path, saved):
    m, table, scores, labels, rewards = _four_samples()
    report.write(str(tmp_path), m, table, prompt_scores=scores, rewards_by=rewards,
                 returns_by={q: v - 0.1 for q, v in rewards.items()}, labels=list(labels),
                 class_names={0: "Non toxic", 1: "Toxic"}, max_new_tokens=7, ppl_max_chars=30)
    rep = (tmp_path / "report.md").read_text()
    assert "6 test prompts, 4 sampled continuations per prompt and policy" in rep and "one sampled" not in rep
    fig, _, _ = saved["hist.png"]
    edges = {tuple(np.round([p.get_x() for p in ax.patches], 9)) for ax in fig.axes}
    edges_per_class = {tuple(np.round([p.get_x() for p in c], 9)) for ax in fig.axes for c in ax.containers}
    assert len(edges) == 1 and len(edges_per_class) == 1  # one set of bins for every panel and class
    assert len({ax.get_ylim() for ax in fig.axes}) == 1 and len({ax.get_xlim() for ax in fig.axes}) == 1
    for ax in fig.axes:  # every panel sums to the 6 prompts (the prompt score once per prompt, samples 1/4)
        assert sum(p.get_height() for p in ax.patches) == pytest.approx(6), ax.get_title()
    for name, (fig, boxes, box) in saved.items():
        for text, b in boxes:  # each label, title and legend lies inside the saved figure
            assert b.x0 >= 0 and b.y0 >= 0 and b.x1 <= box.x1 + 0.5 and b.y1 <= box.y1 + 0.5, (name, text, b)
    for f in report.FIGURES:
        assert (tmp_path / f"{f}.pdf").read_bytes()[:5] == b"%PDF-"  # the vector copy beside the PNG
        assert f"{f}.pdf" in report.FILES
    for f in ("quantile.png", "quantile_returns.png"):  # one shaded band per policy
        fig = saved[f][0]
        assert len(fig.axes[0].collections) == len(rewards), f


def test_the_band_resamples_prompts_not_samples():
    """Each prompt's samples are -1 and +1 (mean 0): resampling prompts never moves the whole-set mean
    (q = 100) off 0, while resampling the samples themselves would."""
    k, n = 2, 50
    scores = np.repeat(np.arange(n, dtype=float), k)
    rewards = np.tile([-1.0, 1.0], n)
    lo, hi = report.quantile_band(scores, rewards, [50, 100], samples_per_prompt=k, n_boot=200)
    assert lo[1] == hi[1] == 0.0
    curve = report.quantile_curve(scores, rewards, [50, 100])
    assert np.all(lo <= curve + 1e-12) and np.all(curve <= hi + 1e-12)
    # With k = 1 the same rows are 100 independent prompts: the full-set mean then varies.
    lo1, hi1 = report.quantile_band(scores, rewards, [100], samples_per_prompt=1, n_boot=200)
    assert lo1[0] < 0 < hi1[0]
    with pytest.raises(ValueError, match="not 3 samples"):
        report.quantile_band(scores, rewards, [100], samples_per_prompt=3)
