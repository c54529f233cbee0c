"""bin/study on the tiny training world: RLHF and RA-RLHF per seed plus an ablation, the tables with
intervals and paired differences, the figures, and a study that continues after an interruption."""
import json
import shutil

import pytest
from tiny import TRAIN_TINY

from rajax.cli import study as cli_study


def _train_args(world):
    args = ["--policy", str(world / "policy"), "--reward-model", str(world / "reward"),
            "--data", str(world / "prompts.jsonl"), "--iterations", "2", "--risk-n", "0",
            "--risk-rho", "0.5", "--risk-M", "2"]
    for s in TRAIN_TINY:
        args += ["--set", s]
    return args


def test_study_runs_arms_and_ablations_and_continues_where_it_stopped(train_world, tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["--task", "rtp", "--seeds", "0", "1", "--alphas", "0.25", "--ablations", "kl_kept_mean",
            "--out", str(out), "--", *_train_args(train_world)]
    assert cli_study.main(argv) == 0
    printed = capsys.readouterr().out
    assert "study: 6 runs" in printed and "expected duration: unknown until the first run ends" in printed
    assert "[6/6] kl_kept_mean/ra0.25-s1" in printed
    for setting, arm, alpha in (("main", "rlhf", 1.0), ("main", "ra0.25", 0.25), ("kl_kept_mean", "ra0.25", 0.25)):
        for seed in (0, 1):
            cfg = (out / setting / f"{arm}-s{seed}" / "config.yaml").read_text()
            assert f"alpha: {alpha}" in cfg and f"seed: {seed}" in cfg
            assert ("kl_stat: kept_mean" in cfg) == (setting == "kl_kept_mean")
            assert (out / "logs" / f"{setting}-{arm}-s{seed}.log").read_text().startswith("$ ")
    res = json.loads((out / "study.json").read_text())
    assert set(res["arms"]) == {"init", "rlhf", "ra0.25", "kl_kept_mean/ra0.25"}
    assert set(res["paired"]) == {"α=0.25 − RLHF", "kl_kept_mean: α=0.25 − RLHF"}
    p = res["paired"]["α=0.25 − RLHF"]["tail"]
    per = {(r["arm"], r["seed"]): r["metrics"]["tail"] for r in res["runs"] if r["setting"] == "main"}
    assert p["diffs"] == pytest.approx([per[("ra0.25", s)] - per[("rlhf", s)] for s in (0, 1)])
    assert p["decision"] in ("improves", "hurts", "no detectable difference")
    assert len(res["mechanism"]["ra0.25"]["risk/kept_tail_frac"]["mean"]) == 2
    md = (out / "study.md").read_text()
    assert "| metric | init (n=2) | rlhf (n=2) | ra0.25 (n=2) |" in md and "kl_kept_mean: α=0.25 − RLHF" in md
    assert (out / "study.png").stat().st_size > 5000 and (out / "mechanism.png").stat().st_size > 5000

    # An interrupted study: one run lost its evaluation (resumes from its checkpoint), one never
    # started. Running the same command again redoes only those two.
    shutil.rmtree(out / "main" / "ra0.25-s1" / "eval")
    shutil.rmtree(out / "kl_kept_mean" / "ra0.25-s0")
    before = (out / "main" / "rlhf-s0" / "metrics.jsonl").read_text()
    assert cli_study.main(argv) == 0
    printed = capsys.readouterr().out
    assert "4 already done" in printed and "[6/6]" in printed and "[5/6]" in printed and "[4/6]" not in printed
    assert "--resume" in (out / "logs" / "main-ra0.25-s1.log").read_text()
    assert (out / "main" / "rlhf-s0" / "metrics.jsonl").read_text() == before
    assert (out / "kl_kept_mean" / "ra0.25-s0" / "eval" / "metrics.json").is_file()


def test_study_refusals(train_world, tmp_path, capsys):
    out = tmp_path / "study"
    (out / "mine").mkdir(parents=True)
    base = ["--task", "rtp", "--seeds", "0", "--alphas", "0.25", "--out", str(out), "--", *_train_args(train_world)]
    assert cli_study.main(base) == 2
    assert "is not empty and holds no study" in capsys.readouterr().err
    assert cli_study.main(["--task", "rtp", "--seeds", "0", "--", "--alpha", "0.3"]) == 2
    assert "--alpha after -- would change one arm" in capsys.readouterr().err
    assert cli_study.main(["--task", "rtp", "--ablations", "bogus", "--out", str(tmp_path / "x")]) == 2
    assert "unknown ablation 'bogus'" in capsys.readouterr().err
    # A study directory remembers its plan: other seeds are refused, the same command continues.
    (out / "mine").rmdir()
    out.rmdir()
    assert cli_study.main(base + ["--set", "train.checkpoint_every=0"]) == 0
    capsys.readouterr()
    other = ["--task", "rtp", "--seeds", "0", "1", "--alphas", "0.25", "--out", str(out), "--",
             *_train_args(train_world), "--set", "train.checkpoint_every=0"]
    kept = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert cli_study.main(other) == 2
    assert "holds a study with other seeds" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == kept  # nothing touched


def test_dry_run_lists_the_runs_and_the_expected_duration(capsys):
    """--dry-run runs nothing; the offline task's measured run times give the estimate."""
    assert cli_study.main(["--task", "synthetic", "--seeds", "0", "1", "--alphas", "0.2",
                           "--ablations", "small_batch", "--out", "/nonexistent/study", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("main/rlhf-s0: ") and "--alpha 1 " in out[0] + " "
    assert any(line.startswith("small_batch/ra0.2-s1: ") and "--batch-size 32" in line for line in out)
    # 4 main runs x 19.4 s + 4 small-batch runs x 10.5 s = 119.6 s
    assert out[-1] == "8 runs; expected duration: 2.0 min"
