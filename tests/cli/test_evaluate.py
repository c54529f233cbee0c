"""bin/evaluate end to end on tiny_lm random models: the files it writes agree with the metric functions,
and user mistakes are one line."""
import json
import math

import numpy as np
import pytest
from tiny import TEST_ROWS

from rajax.cli import evaluate as cli_evaluate
from rajax.evaluation import metrics, perplexity


def test_bin_evaluate_writes_csv_metrics_figures_report(eval_run, tiny_lm):
    import pandas as pd
    from matplotlib.image import imread

    out, stdout = eval_run
    df = pd.read_csv(out / "generations.csv", keep_default_na=False)
    assert len(df) == 9
    assert df["response_a"].map(lambda r: isinstance(r, str)).all()
    for c in ("prompt", "prompt_score", "label", "response_a", "reward_a", "response_b", "reward_b"):
        assert c in df.columns
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_test"] == 9 and set(m["policies"]) == {"a", "b"}
    for name in ("a", "b"):
        r = df[f"reward_{name}"].to_numpy()
        pm = m["policies"][name]
        # metrics.json agrees with the CSV through the pure metric functions
        assert pm["reward"] == pytest.approx(r.mean(), rel=1e-6)
        tail = metrics.tail_mean(r, df["prompt_score"].to_numpy(), 5.0, False)
        assert (pm["tail"] is None and math.isnan(tail)) or pm["tail"] == pytest.approx(tail, rel=1e-6)
        assert pm["cvar"]["0.2"] == pytest.approx(np.sort(r)[:2].mean(), rel=1e-6)
        assert pm["cvar"]["0.5"] == pytest.approx(np.sort(r)[:5].mean(), rel=1e-6)
        assert pm["perplexity"] > 1.0
    # the perplexity texts of a file task are its test texts, cut to 30 characters
    texts = [t for t, _ in TEST_ROWS][:5]
    want = perplexity.perplexities(tiny_lm["cfg"], tiny_lm["params"], tiny_lm["tok"], texts, batch_size=4, max_chars=30).mean()
    assert m["policies"]["a"]["perplexity"] == pytest.approx(want, rel=1e-5)
    # rewards are on prompt + response, prompt scores on the prompt alone: they differ
    assert not np.allclose(df["reward_a"], df["prompt_score"])
    for fig in ("hist.png", "quantile.png"):
        img = imread(out / fig)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0
    # R̄ = reward - 0.2 * KL to the reference (the first policy, a): for a itself it is the reward.
    np.testing.assert_allclose(df["R_bar_a"], df["reward_a"], atol=1e-9)
    assert not np.allclose(df["R_bar_b"], df["reward_b"])
    for name in ("a", "b"):
        assert m["policies"][name]["return"] == pytest.approx(df[f"R_bar_{name}"].mean(), rel=1e-6)
    assert m["kl_reference"] == "a" and m["kl_beta"] == pytest.approx(0.2)
    img = imread(out / "quantile_returns.png")
    assert img.ndim == 3 and img.std() > 0
    rep = (out / "report.md").read_text()
    assert "hist.png" in rep and "quantile.png" in rep and "| a |" in rep and "| b |" in rep
    assert "quantile_returns.png" in rep
    assert "| a |" in (out / "metrics.md").read_text() and "| a |" in stdout


def test_bin_evaluate_one_line_errors(tmp_path, capsys):
    rc = cli_evaluate.main(["--task", "jigsaw", "--policy", f"x={tmp_path / 'nope'}", "--out", str(tmp_path / "o"),
                          "--reward-model", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("rajax: error: ") and len(err.strip().splitlines()) == 1
    assert cli_evaluate.main(["--task", "nosuchtask", "--policy", "x=y"]) == 2
    assert "unknown task" in capsys.readouterr().err
    with pytest.raises(ValueError):
        cli_evaluate.parse_policy("=path")
    assert cli_evaluate.parse_policy("runs/sft/") == ("sft", "runs/sft/")
