"""bin/train end to end on tiny random local models and a tiny RTP-format JSONL.

Covers: the paper's command shape (`--task rtp --alpha 0.2` with --policy/--reward-model/--data) for
two iterations and everything a run leaves; exact resume after SIGKILL; the offline one-line error;
out-of-range values; a non-finite reward stopping the run with the last good checkpoint intact.
"""
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from rajax import train
from rajax.models import bert, gpt2, hf
from tiny import bpe_tokenizer

WORDS = ("the a cat dog bird runs sleeps eats fast slow very you idiot stupid awful nice kind good "
         "bad happy sad tree house river sun moon walks talks sings loud quiet").split()

TINY = [
    "generation.prompt_tokens=8", "generation.max_new_tokens=6", "generation.min_length=10",
    "train.batch_size=8", "ppo.mini_batch_size=8", "ppo.learning_rate=1e-3",
    "eval.test_size=16", "eval.ppl_num_texts=8", "eval.batch_size=8",
    "train.sample_every=1", "train.checkpoint_every=1",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tokenizer + random GPT-2 policy + random BERT classifier + an RTP-format prompts.jsonl."""
    root = tmp_path_factory.mktemp("world")
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(WORDS, size=rng.integers(5, 14))) for _ in range(400)]
    tok = bpe_tokenizer(sentences)
    cfg = gpt2.GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2)
    hf.save(root / "policy", cfg, gpt2.init(cfg, jax.random.key(0)), tokenizer=tok)
    bcfg = bert.BertConfig(vocab_size=len(tok), hidden=32, layers=1, heads=2, intermediate=37,
                           max_position=128, num_labels=2)
    bert.save_classifier(str(root / "reward"), bcfg, bert.init(bcfg, jax.random.key(1)),
                         ["toxic", "severe_toxic"], tokenizer=tok)
    with (root / "prompts.jsonl").open("w") as f:
        for s in sentences:
            tox = 0.9 if rng.random() < 0.25 else 0.1
            f.write(json.dumps({"prompt": {"text": s, "toxicity": tox}, "continuation": {"text": "x"}}) + "\n")
    return root


def _args(world, out, *extra, iterations=2):
    args = ["--task", "rtp", "--alpha", "0.2", "--risk-n", "0", "--risk-rho", "0.5", "--risk-M", "2",
            "--policy", str(world / "policy"), "--reward-model", str(world / "reward"),
            "--data", str(world / "prompts.jsonl"), "--out", str(out), "--iterations", str(iterations),
            "--quiet"]
    for s in TINY:
        args += ["--set", s]
    return args + list(extra)


def test_rtp_command_two_iterations_leaves_everything(world, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(_args(world, out)) == 0
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in recs] == [0, 1]
    # α′ follows the schedule: whole batch at m=0 (m <= n), ⌈0.2·8⌉ = 2 at m = ⌈ρM⌉ = 1.
    assert [r["risk/alpha_prime"] for r in recs] == [8.0, 2.0]
    for tag in ("env/reward_mean", "env/reward_std", "objective/kl", "objective/kl_coef", "objective/entropy",
                "ppo/returns/mean", "tokens/responses_len_mean", "risk/alpha_prime", "risk/quantile"):
        assert tag in recs[0], tag
    assert recs[1]["objective/kl_coef"] != recs[0]["objective/kl_coef"]  # adaptive KL moved β
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (out / "samples").glob("*.csv")) == ["iter_00000.csv", "iter_00001.csv"]
    assert (out / "config.yaml").exists() and (out / "curves.png").stat().st_size > 1000
    assert 2 in [int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()]
    # The exported policy loads in transformers and in rajax.
    import transformers

    model = transformers.GPT2LMHeadModel.from_pretrained(out / "model")
    assert model.config.n_layer == 2
    assert (out / "eval" / "report.md").exists() and (out / "eval" / "metrics.json").exists()


def _final_params(out):
    return hf.load(out / "model")[1]


def test_resume_after_sigkill_is_exact(world, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert train.main(_args(world, full, "--no-eval", iterations=4)) == 0
    # Same run in a child process that SIGKILLs itself right after writing checkpoint 2.
    code = (
        "import os, sys, signal\n"
        "import rajax.train as t\n"
        "orig = t.Trainer.save\n"
        "def save(self, ck, m):\n"
        "    orig(self, ck, m)\n"
        "    if m == 2:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "t.Trainer.save = save\n"
        f"sys.exit(t.main({_args(world, killed, '--no-eval', iterations=4)!r}))\n"
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
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.time()
    assert train.main(["--task", "rtp", "--alpha", "0.2", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert time.time() - t < 10
    assert len(err.splitlines()) == 1, err
    assert "--policy" in err and "--reward-model" in err and "--task synthetic" in err


@pytest.mark.parametrize("flag,value,needle", [
    ("--alpha", "1.5", "alpha"), ("--risk-rho", "0", "rho"), ("--batch-size", "12", "batch"),
])
def test_out_of_range_values_are_one_line_errors(world, tmp_path, capsys, flag, value, needle):
    assert train.main(_args(world, tmp_path / "bad", flag, value)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err.lower(), err


def test_non_finite_reward_stops_and_keeps_last_good_checkpoint(world, tmp_path):
    args = train.build_parser().parse_args(_args(world, tmp_path / "nan", iterations=3))
    trainer = train.Trainer(train.config_from_args(args), tmp_path / "nan", progress=False, log=lambda *_: None)
    calls = {"n": 0}

    def broken_classifier(prompts, responses):  # e.g. a reward model whose weights went bad
        calls["n"] += 1
        return np.full(len(prompts), np.nan if calls["n"] == 2 else 1.0, np.float32)

    trainer.reward = broken_classifier
    with pytest.raises(train.NonFinite, match=r"iteration 1.*last good checkpoint is iteration 1"):
        trainer.run()
    from rajax.checkpoint import Checkpointer

    assert Checkpointer(tmp_path / "nan" / "checkpoints").latest_step() == 1


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_host_run_matches_one_host(world, tmp_path):
    """Two processes x 4 CPU devices through jax.distributed == one process x 8 devices."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert train.main(_args(world, one, "--no-eval", iterations=2)) == 0
    port = _free_port()
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "4"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "rajax.train", *_args(world, two, "--no-eval", iterations=2), "--distributed",
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


def test_failed_checkpoint_write_is_one_line_and_keeps_previous(world, tmp_path, capsys, monkeypatch):
    from rajax.checkpoint import Checkpointer

    real_save = Checkpointer.save

    def save(self, step, state, meta):
        if step == 2:
            raise OSError(28, "No space left on device")
        return real_save(self, step, state, meta)

    monkeypatch.setattr(Checkpointer, "save", save)
    out = tmp_path / "full-disk"
    assert train.main(_args(world, out, "--no-eval", iterations=3)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "writing checkpoint 2 failed (No space left on device)" in err and "checkpoint 1" in err
    monkeypatch.undo()
    assert Checkpointer(out / "checkpoints").latest_step() == 1


def test_nothing_recompiles_after_the_first_iteration(world, tmp_path):
    from rajax import ppo, sampling

    args = train.build_parser().parse_args(_args(world, tmp_path / "rc", iterations=3))
    trainer = train.Trainer(train.config_from_args(args), tmp_path / "rc", progress=False, log=lambda *_: None)
    fns = (sampling.sample, ppo.forward_pair, ppo._ppo_step_jit, trainer.reward.fn)

    def sizes():
        return [f._cache_size() for f in fns]

    trainer.iteration(0)
    after_first = sizes()
    trainer.iteration(1)  # α′ changes from 8 to 2 here: traced, so no new program
    trainer.iteration(2)
    assert sizes() == after_first


def test_missing_local_path_is_named(world, tmp_path, capsys):
    args = _args(world, tmp_path / "x")
    args[args.index("--policy") + 1] = str(tmp_path / "no-such-model")
    assert train.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --policy {tmp_path / 'no-such-model'}: no such file or directory"


def test_sigterm_finishes_the_iteration_checkpoints_and_exits(world, tmp_path):
    import signal

    from rajax.checkpoint import Checkpointer

    out = tmp_path / "term"
    proc = subprocess.Popen([sys.executable, "-m", "rajax.train", *_args(world, out, "--no-eval", iterations=34)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not (out / "checkpoints" / "1").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output[-3000:]
    done = len((out / "metrics.jsonl").read_text().splitlines())
    assert 1 <= done < 34
    assert Checkpointer(out / "checkpoints").latest_step() == done  # the stopping iteration is saved
    assert f"bin/train --resume {out}" in output
