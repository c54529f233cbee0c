"""bin/train end to end on tiny random local models and a tiny RTP-format JSONL.

Covers: the paper's command shape (`--task rtp --alpha 0.2` with --policy/--reward-model/--data) for
two iterations and everything a run leaves; exact resume after SIGKILL; the offline one-line error;
out-of-range values; a failed checkpoint write; SIGTERM; two hosts.
"""
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from tiny import train_args

from rajax.cli import train
from rajax.core.errors import train_command
from rajax.io import hf
from rajax.io.checkpoint import Checkpointer


def test_rtp_command_two_iterations_leaves_everything(train_world, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(train_args(train_world, out)) == 0
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in recs] == [0, 1]
    # α′ follows the schedule: whole batch at m=0 (m <= n), ⌈0.2·8⌉ = 2 at m = ⌈ρM⌉ = 1.
    assert [r["risk/alpha_prime"] for r in recs] == [8.0, 2.0]
    for tag in ("env/reward_mean", "env/reward_std", "objective/kl", "objective/kl_coef", "objective/entropy",
                "ppo/returns/mean", "tokens/responses_len_mean", "risk/alpha_prime", "risk/quantile",
                "risk/tail_frac", "risk/kept_tail_frac"):
        assert tag in recs[0], tag
    assert recs[0]["risk/kept_tail_frac"] == recs[0]["risk/tail_frac"]  # α′ = B keeps every episode
    assert recs[1]["objective/kl_coef"] != recs[0]["objective/kl_coef"]  # adaptive KL moved β
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (out / "samples").glob("*.csv")) == ["iter_00000.csv", "iter_00001.csv"]
    assert (out / "config.yaml").exists() and (out / "curves.png").stat().st_size > 1000
    assert "value_head: checkpoint" in (out / "config.yaml").read_text()  # auto, resolved and recorded
    assert 2 in [int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()]
    # The exported policy loads in transformers and in rajax.
    import transformers

    model = transformers.GPT2LMHeadModel.from_pretrained(out / "model")
    assert model.config.n_layer == 2
    assert (out / "eval" / "report.md").exists() and (out / "eval" / "metrics.json").exists()


def _final_params(out):
    return hf.load(out / "model")[1]


def test_resume_after_sigkill_is_exact(train_world, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert train.main(train_args(train_world, full, "--no-eval", iterations=4)) == 0
    # Same run in a child process that SIGKILLs itself right after writing checkpoint 2.
    code = (
        "import os, sys, signal\n"
        "import rajax.cli.train as t\n"
        "import rajax.trainer as tr\n"
        "orig = tr.Trainer.save\n"
        "def save(self, ck, m):\n"
        "    orig(self, ck, m)\n"
        "    if m == 2:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "tr.Trainer.save = save\n"
        f"sys.exit(t.main({train_args(train_world, killed, '--no-eval', iterations=4)!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (killed / "model").exists()
    assert train.main(["--resume", str(killed), "--no-eval", "--quiet"]) == 0
    a, b = _final_params(full), _final_params(killed)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    its = [json.loads(x)["iteration"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert its == [0, 1, 2, 3]


def test_offline_without_local_paths_fails_fast_in_one_line(tmp_path, capsys, monkeypatch):
    """The preflight stops before anything is loaded or fetched (no timing assert: nothing may be tried)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def must_not_run(*a, **k):
        raise AssertionError("a model was loaded before the preflight stopped the run")

    from rajax.io import hub

    monkeypatch.setattr(hf, "load", must_not_run)
    monkeypatch.setattr(hub, "resolve", must_not_run)
    assert train.main(["--task", "rtp", "--alpha", "0.2", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "--policy" in err and "--reward-model" in err and "--task synthetic" in err


@pytest.mark.parametrize("flag,value,needle", [
    ("--alpha", "1.5", "alpha"), ("--risk-rho", "0", "rho"), ("--batch-size", "12", "batch"),
])
def test_out_of_range_values_are_one_line_errors(train_world, tmp_path, capsys, flag, value, needle):
    assert train.main(train_args(train_world, tmp_path / "bad", flag, value)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err.lower(), err


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_host_run_matches_one_host(train_world, tmp_path):
    """Two processes x 4 CPU devices through jax.distributed == one process x 8 devices."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert train.main(train_args(train_world, one, "--no-eval", iterations=2)) == 0
    port = _free_port()
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "4"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "rajax.cli.train", *train_args(train_world, two, "--no-eval", iterations=2), "--distributed",
             "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    a, b = _final_params(one), _final_params(two)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)
    m1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["risk/alpha_prime"] for r in m1] == [r["risk/alpha_prime"] for r in m2]
    np.testing.assert_allclose([r["env/reward_mean"] for r in m2], [r["env/reward_mean"] for r in m1], atol=1e-5)


def test_failed_checkpoint_write_is_one_line_and_keeps_previous(train_world, tmp_path, capsys, monkeypatch):
    real_save = Checkpointer.save

    def save(self, step, state, meta):
        if step == 2:
            raise OSError(28, "No space left on device")
        return real_save(self, step, state, meta)

    monkeypatch.setattr(Checkpointer, "save", save)
    out = tmp_path / "full-disk"
    assert train.main(train_args(train_world, out, "--no-eval", iterations=3)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "writing checkpoint 2 failed (No space left on device)" in err and "checkpoint 1" in err
    monkeypatch.undo()
    assert Checkpointer(out / "checkpoints").latest_step() == 1


def test_missing_local_path_is_named(train_world, tmp_path, capsys):
    args = train_args(train_world, tmp_path / "x")
    args[args.index("--policy") + 1] = str(tmp_path / "no-such-model")
    assert train.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"rajax: error: --policy {tmp_path / 'no-such-model'}: no such file or directory"


def test_sigterm_finishes_the_iteration_checkpoints_and_exits(train_world, tmp_path):
    import signal

    out = tmp_path / "term"
    proc = subprocess.Popen([sys.executable, "-m", "rajax.cli.train", *train_args(train_world, out, "--no-eval", iterations=34)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not (out / "checkpoints" / "1").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, output[-3000:]  # 128 + SIGTERM, the shell convention (SIGINT: 130)
    done = len((out / "metrics.jsonl").read_text().splitlines())
    assert 1 <= done < 34
    assert Checkpointer(out / "checkpoints").latest_step() == done  # the stopping iteration is saved
    assert f"{train_command()} --resume {out}" in output  # the hint names the command the user typed


USER_EXT = '''
import jax.numpy as jnp
import optax

OPTIMIZERS = []


def lowest_one(stat_B, k):
    """Keeps only the lowest episode, whatever the schedule's k."""
    return (stat_B == stat_B.min()).astype(jnp.float32), stat_B.min()


def sgd(cfg):
    OPTIMIZERS.append(cfg.learning_rate)
    return optax.sgd(cfg.learning_rate)


def length(texts):
    return [float(len(t)) for t in texts]
'''


def test_a_users_risk_measure_optimizer_and_reward_run_from_the_command_line(train_world, tmp_path, capsys,
                                                                            monkeypatch):
    """module:function specs in --set reach a user's module beside the run (not installed, not on
    sys.path: `rajax` finds it in the working directory), and --resume loads them again from config.yaml."""
    import csv

    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "rajax_test_user_ext.py").write_text(USER_EXT)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    specs = ["--set", "ppo.risk_measure=rajax_test_user_ext:lowest_one", "--set", "ppo.optimizer=rajax_test_user_ext:sgd",
             "--set", "reward.fn=rajax_test_user_ext:length"]
    assert train.main(train_args(train_world, out, "--no-eval", *specs, iterations=1)) == 0
    assert train.main(["--resume", str(out), "--iterations", "2", "--quiet", "--no-eval"]) == 0
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["risk/kept"] for r in recs] == [1.0, 1.0]  # cvar would keep all 8 at iteration 0
    for it in (0, 1):
        with (out / "samples" / f"iter_0000{it}.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert [float(r["reward"]) for r in rows] == [float(len(r["prompt"] + r["response"])) for r in rows]
    assert sys.modules["rajax_test_user_ext"].OPTIMIZERS == [1e-3]  # one config, one transformation
    assert "risk_measure: rajax_test_user_ext:lowest_one" in (out / "config.yaml").read_text()
    capsys.readouterr()
    for spec, needle in (("ppo.risk_measure=rajax_test_no_such_module:f", "no module named 'rajax_test_no_such_module'"),
                         ("ppo.risk_measure=rajax_test_user_ext:nope", "rajax_test_user_ext has no attribute 'nope'"),
                         ("ppo.risk_measure=mine", "ppo.risk_measure='mine' is not valid"),
                         ("reward.fn=rajax_test_user_ext", "reward.fn='rajax_test_user_ext': expected module:function")):
        assert train.main(train_args(train_world, tmp_path / "bad", "--set", spec)) == 2, spec
        err = capsys.readouterr().err
        assert err.startswith("rajax: error: ") and needle in err and err.count("\n") == 1, err
        assert not (tmp_path / "bad").exists()


def test_wandb_ids_differ_for_same_named_runs_and_resume_keeps_its_id(train_world, tmp_path, monkeypatch):
    """The W&B run id is drawn once per run and kept in the run's manifest: two runs both called
    ``run`` get two ids, and ``--resume`` logs to the run's own."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")

    def wandb_ids(out):
        return sorted({p.name.rsplit("-", 1)[-1] for p in (out / "wandb").glob("offline-run-*")})

    a, b = tmp_path / "a" / "run", tmp_path / "b" / "run"
    for out in (a, b):
        assert train.main(train_args(train_world, out, "--no-eval", "--report-to", "wandb", iterations=1)) == 0
    assert len(wandb_ids(a)) == 1 and wandb_ids(a) != wandb_ids(b)
    manifest = {out: json.loads((out / ".rajax-run.json").read_text()) for out in (a, b)}
    assert wandb_ids(a) == [manifest[a]["wandb_id"]] and wandb_ids(b) == [manifest[b]["wandb_id"]]
    assert train.main(["--resume", str(a), "--iterations", "2", "--no-eval", "--quiet"]) == 0
    assert wandb_ids(a) == [manifest[a]["wandb_id"]]  # the resumed run logged to the same W&B run
    assert json.loads((a / ".rajax-run.json").read_text())["wandb_id"] == manifest[a]["wandb_id"]


def test_report_to_wandb_without_wandb_fails_before_anything_is_made(train_world, tmp_path, capsys, monkeypatch):
    """wandb missing: one line at once, and no run directory left behind (it used to fail after loading
    the models, leaving a directory that then needed --overwrite)."""
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    out = tmp_path / "run"
    t = time.time()
    assert train.main(train_args(train_world, out, "--report-to", "tensorboard,wandb")) == 2
    err = capsys.readouterr().err.strip()
    assert err == "rajax: error: --report-to wandb needs the wandb package: pip install 'rajax[wandb]'"
    assert not out.exists() and time.time() - t < 10
    assert train.main(train_args(train_world, out, "--report-to", "wandb", "--print-config")) == 0  # prints only
