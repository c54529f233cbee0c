"""bin/study: RLHF and RA-RLHF for each seed on the tiny training world, then the side-by-side table."""
import json

from tiny import TRAIN_TINY

from rajax.cli import study as cli_study


def test_study_runs_both_arms_per_seed_and_writes_the_table(train_world, tmp_path, capsys):
    out = tmp_path / "study"
    train_args = ["--policy", str(train_world / "policy"), "--reward-model", str(train_world / "reward"),
                  "--data", str(train_world / "prompts.jsonl"), "--iterations", "2", "--risk-n", "0",
                  "--risk-rho", "0.5", "--risk-M", "2"]
    for s in TRAIN_TINY:
        train_args += ["--set", s]
    assert cli_study.main(["--task", "rtp", "--seeds", "0", "1", "--alpha", "0.25", "--out", str(out),
                           "--", *train_args]) == 0
    res = json.loads((out / "study.json").read_text())
    assert set(res) == {"init", "rlhf", "ra-rlhf"} and all(len(v) == 2 for v in res.values())
    for method, alpha in (("rlhf", 1.0), ("ra-rlhf", 0.25)):
        for seed in (0, 1):
            cfg = (out / f"{method}-s{seed}" / "config.yaml").read_text()
            assert f"alpha: {alpha}" in cfg and f"seed: {seed}" in cfg
    md = (out / "study.md").read_text()
    assert "| rlhf | 2 |" in md and "| ra-rlhf | 2 |" in md and "| init | 2 |" in md
    assert "| ra-rlhf | 2 |" in capsys.readouterr().out
