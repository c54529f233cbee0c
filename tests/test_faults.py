"""Fault injection: bad input and faults against bin/train, bin/sft, bin/evaluate and bin/study.

For every case: the exit status; stderr holds exactly one `rajax: error:` line (the last one) and no
traceback; what existed before is byte-identical afterwards; what was promised is there. Commands
run in-process (file-descriptor capture, so library logging is seen too); concurrency and signals
run as separate processes. Set RAJAX_FAULT_TABLE=path to write the table of cases and lines.
"""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from tiny import TRAIN_TINY, train_args, tree_hash, unchanged

from rajax.cli import evaluate as cli_evaluate
from rajax.cli import sft as cli_sft
from rajax.cli import study as cli_study
from rajax.cli import train as cli_train
from rajax.core.errors import train_command
from rajax.io import hf, hf_bert
from rajax.io.checkpoint import Checkpointer

TABLE = []  # (case, exit code, the error line), written to $RAJAX_FAULT_TABLE at the end


def snapshot(root: pathlib.Path) -> dict:
    """Every file under ``root`` (lock and manifest included) with its bytes."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run(main, argv, capfd, case, code=2):
    """Run a command's main; check the exit status and stderr; return the error line (or None)."""
    rc = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    assert "Traceback" not in err and "Traceback" not in out, (case, err[-3000:])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "rajax: error:" in ln]
    assert rc == code, (case, rc, err[-2000:])
    if code == 2:
        assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("rajax: error: "), (case, err)
        TABLE.append((case, rc, errors[0]))
        return errors[0]
    assert not errors, (case, err)
    TABLE.append((case, rc, "(no error)"))
    return None


@pytest.fixture(scope="module", autouse=True)
def _write_table():
    yield
    if os.environ.get("RAJAX_FAULT_TABLE"):
        pathlib.Path(os.environ["RAJAX_FAULT_TABLE"]).write_text(json.dumps(TABLE, indent=1))


@pytest.fixture(scope="module")
def broken(train_world, tmp_path_factory):
    """Damaged and mismatched assets built from the tiny training world."""
    from rajax.io.tokenizer import load_tokenizer
    from rajax.models import gpt2

    root = tmp_path_factory.mktemp("broken")
    tok = load_tokenizer(train_world / "policy")
    big = load_tokenizer(train_world / "policy")
    big.add_tokens([f"<extra{i}>" for i in range(600)])
    big.save_pretrained(root / "big_tok")
    # A truncated model.safetensors.
    shutil.copytree(train_world / "policy", root / "truncated")
    f = root / "truncated" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    # A policy without config.json.
    shutil.copytree(train_world / "policy", root / "noconfig")
    (root / "noconfig" / "config.json").unlink()
    # A policy whose weights are NaN.
    cfg, params = hf.load(train_world / "policy")
    params = jax.tree.map(np.asarray, params)
    params["wte"]["embedding"] = np.full_like(params["wte"]["embedding"], np.nan)
    hf.save(root / "nan_policy", cfg, params, tokenizer=tok)
    # A reference with fewer embedding rows than the policy's tokenizer has tokens.
    other = gpt2.GPT2Config(vocab_size=cfg.vocab_size - 16, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    hf.save(root / "small_vocab", other, gpt2.init(other, jax.random.key(3)))
    # A reference whose tokenizer gives other ids (trained on other text).
    from tiny import bpe_tokenizer

    alien = bpe_tokenizer(["zebra quantum xylophone jazz " * 3, "pfft brrr grrr hmm " * 3], vocab_size=280)
    hf.save(root / "alien_tok", cfg, params | {"wte": {"embedding": np.zeros_like(params["wte"]["embedding"])}},
            tokenizer=alien)
    # A reward model whose weights are NaN, and one whose tokenizer is larger than its embedding.
    bcfg, bparams, labels, btok = hf_bert.load_classifier(str(train_world / "reward"))
    nan_b = jax.tree.map(lambda x: np.full_like(np.asarray(x), np.nan), bparams)
    hf_bert.save_classifier(str(root / "nan_reward"), bcfg, nan_b, labels, tokenizer=btok)
    shutil.copytree(train_world / "reward", root / "reward_big_tok")
    big.save_pretrained(root / "reward_big_tok")
    # Data: a bad UTF-8 byte on line 3, a malformed JSON line 2, a CSV without the text column.
    good = (train_world / "prompts.jsonl").read_text().splitlines()
    (root / "bad_utf8.jsonl").write_bytes(("\n".join(good[:2]) + "\n").encode() + b'{"prompt": {"text": "caf\xe9"}}\n')
    (root / "bad_json.jsonl").write_text(good[0] + "\n{not json\n")
    (root / "notext.csv").write_text("body,label\nhello there,1\n")
    (root / "a_file").write_text("not a directory\n")
    return root


def _tiny_sets(*extra):
    out = []
    for s in TRAIN_TINY:
        out += ["--set", s]
    return out + list(extra)


# ------------------------------------------------------------------------------------------------
# bin/train: bad values, paths and files
# ------------------------------------------------------------------------------------------------
TRAIN_BAD_VALUES = [
    ("alpha out of range", ["--alpha", "1.5"], "risk.alpha=1.5 must be in (0, 1]"),
    ("rho zero", ["--risk-rho", "0"], "risk.rho=0.0 must be in (0, 1]"),
    ("batch not a multiple of the minibatch", ["--batch-size", "12"], "must divide train.batch_size=12"),
    ("batch not a multiple of the devices", ["--batch-size", "12", "--set", "ppo.mini_batch_size=4"],
     "multiple of the 8 devices"),
    ("batch larger than the data", ["--batch-size", "4096"], "fewer than one batch of 4096"),
    ("lr nan", ["--lr", "nan"], "learning_rate"),
    ("lr negative", ["--lr", "-1"], "learning_rate"),
    ("unknown config key", ["--set", "ppo.lr=1"], "unknown config key 'ppo.lr'"),
    ("top_p out of range", ["--set", "generation.top_p=2"], "generation.top_p=2.0 must be in (0, 1]"),
    ("unknown task (data source)", ["--set", "data.source=web"], "data.source='web' is not valid"),
    ("too many iterations", ["--iterations", "1000"], "set --iterations to at most"),
    ("no perplexity texts", ["--set", "eval.ppl_num_texts=0"], "eval.ppl_num_texts=0 must be >= 1"),
    ("non-numeric value", ["--set", "ppo.cliprange=wide"], "ppo.cliprange: expected a number"),
]


@pytest.mark.parametrize("case,extra,needle", TRAIN_BAD_VALUES, ids=[c[0] for c in TRAIN_BAD_VALUES])
def test_train_bad_values(train_world, tmp_path, capfd, case, extra, needle):
    out = tmp_path / "run"
    line = run(cli_train.main, train_args(train_world, out) + extra, capfd, f"train: {case}")
    assert needle in line, line
    assert not (out / "checkpoints").exists() and not (out / "model").exists()


def test_train_bad_paths_and_files(train_world, broken, tmp_path, capfd):
    w, b = train_world, broken
    cases = [
        ("missing --config file", ["--config", tmp_path / "missing.yaml"], "no such file"),
        ("unknown task", ["--task", "nosuchtask"], "unknown task 'nosuchtask'"),
        ("missing policy dir", ["--policy", tmp_path / "no-model"], "no such file or directory"),
        ("truncated model.safetensors", ["--policy", b / "truncated"], "model.safetensors is unreadable"),
        ("policy without config.json", ["--policy", b / "noconfig"], "no config.json"),
        ("tokenizer larger than the embedding", ["--tokenizer", b / "big_tok"], "embedding rows"),
        ("reference smaller than the tokenizer", ["--ref-policy", b / "small_vocab"], "embedding rows"),
        ("reference whose tokenizer gives other ids", ["--ref-policy", b / "alien_tok"], "the same token ids"),
        ("policy with NaN weights", ["--policy", b / "nan_policy"], "non-finite parameters"),
        ("missing reward model", ["--reward-model", tmp_path / "no-reward"], "no such file or directory"),
        ("reward tokenizer larger than its embedding", ["--reward-model", b / "reward_big_tok"], "embedding rows"),
        ("missing data file", ["--data", tmp_path / "none.jsonl"], "no such file or directory"),
        ("bad UTF-8 in the data", ["--data", b / "bad_utf8.jsonl"], "bad_utf8.jsonl:3: not UTF-8"),
        ("malformed JSONL line", ["--data", b / "bad_json.jsonl"], "bad_json.jsonl:2: not valid JSON"),
        ("file data without its text column", ["--data", b / "notext.csv", "--set", "data.source=file"],
         "no text ('text') column"),
        ("--out is a file", ["--out", b / "a_file"], "is a file"),
        ("--out cannot be created", ["--out", b / "a_file" / "sub"], "not writable"),
    ]
    (tmp_path / "bad.yaml").write_text("risk: [unclosed\n")
    cases.append(("invalid YAML --config", ["--config", tmp_path / "bad.yaml"], "not valid YAML"))
    before = snapshot(b)
    for i, (case, extra, needle) in enumerate(cases):
        argv = train_args(w, tmp_path / f"run{i}") + [str(x) for x in extra]
        line = run(cli_train.main, argv, capfd, f"train: {case}")
        assert needle in line, (case, line)
    assert snapshot(b) == before


def test_train_nan_reward_stops_at_once(train_world, broken, tmp_path, capfd):
    out = tmp_path / "run"
    line = run(cli_train.main, train_args(train_world, out, "--reward-model", broken / "nan_reward"), capfd,
               "train: reward model returns NaN")
    assert "non-finite scores at iteration 0" in line and "no checkpoint was written yet" in line
    assert not (out / "model").exists()


# ------------------------------------------------------------------------------------------------
# bin/train: run directories
# ------------------------------------------------------------------------------------------------
def test_reusing_a_run_directory_loses_nothing(train_world, tmp_path, capfd):
    out = tmp_path / "run"
    run(cli_train.main, train_args(train_world, out, "--no-eval"), capfd, "train: first run", code=0)
    first = snapshot(out)
    assert {"config.yaml", "metrics.jsonl", "model/model.safetensors", ".rajax-run.json"} <= set(first)
    # A second run (another seed and alpha) on the same --out is refused; nothing changes.
    line = run(cli_train.main, train_args(train_world, out, "--no-eval", "--seed", "9", "--alpha", "0.5"), capfd,
               "train: reuse --out of an earlier run")
    assert "--resume" in line and "--overwrite" in line
    assert snapshot(out) == first
    # A user's own files beside and inside the run.
    (out / "notes.txt").write_text("mine\n")
    (out / "model" / "README.md").write_text("my model card\n")
    line = run(cli_train.main, train_args(train_world, out, "--no-eval"), capfd, "train: reuse --out with user files")
    assert snapshot(out) == {**first, "notes.txt": b"mine\n", "model/README.md": b"my model card\n"}
    # --overwrite replaces what the run wrote, never the user's files.
    run(cli_train.main, train_args(train_world, out, "--no-eval", "--seed", "9", "--overwrite"), capfd,
        "train: --overwrite keeps user files", code=0)
    assert (out / "notes.txt").read_text() == "mine\n" and (out / "model" / "README.md").read_text() == "my model card\n"
    assert "seed: 9" in (out / "config.yaml").read_text()
    assert [json.loads(x)["iteration"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert Checkpointer(out / "checkpoints").all_steps() == [1, 2]  # the new run's, not a mix
    mask = os.umask(0)
    os.umask(mask)
    assert (out / "model").stat().st_mode & 0o777 == 0o777 & ~mask  # an export is shareable (not 0700)
    # A directory of the user's own that is not a run: refused, untouched.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.csv").write_text("a,b\n")
    line = run(cli_train.main, train_args(train_world, mine), capfd, "train: --out is a user's directory")
    assert "not a rajax run" in line and snapshot(mine) == {"data.csv": b"a,b\n"}
    (mine / "config.yaml").write_text("my own config\n")
    line = run(cli_train.main, train_args(train_world, mine, "--overwrite"), capfd,
               "train: --overwrite over a user's config.yaml")
    assert "config.yaml is not a rajax run's" in line
    assert snapshot(mine) == {"data.csv": b"a,b\n", "config.yaml": b"my own config\n"}


def test_resume_flags_missing_checkpoint_and_corrupt_newest(train_world, tmp_path, capfd):
    out = tmp_path / "run"
    run(cli_train.main, train_args(train_world, out, "--no-eval", iterations=3), capfd, "train: run to resume",
        code=0)
    before = snapshot(out)
    line = run(cli_train.main, ["--resume", out, "--lr", "0.1", "--quiet"], capfd, "train: --resume with --lr")
    assert "--lr would change it" in line and snapshot(out) == before
    line = run(cli_train.main, ["--resume", tmp_path], capfd, "train: --resume a directory that is not a run")
    assert "not a rajax run directory" in line
    # Corrupt the newest checkpoint (truncate one of its data files): resume falls back to the previous one.
    newest = out / "checkpoints" / "3"
    data = sorted((p for p in newest.rglob("*") if p.is_file() and p.stat().st_size > 200), key=lambda p: -p.stat().st_size)[0]
    data.write_bytes(data.read_bytes()[:64])
    damaged = snapshot(newest)
    shutil.rmtree(out / "model")
    rc = cli_train.main(["--resume", str(out), "--no-eval", "--quiet"])
    o, err = capfd.readouterr()
    assert rc == 0 and "Traceback" not in err + o, err[-2000:]
    note = [ln for ln in o.splitlines() if "unreadable" in ln]
    assert len(note) == 1 and "checkpoint 3" in note[0] and "restoring checkpoint 2 instead" in note[0], o
    TABLE.append(("train: --resume with a corrupt newest checkpoint", rc, note[0]))
    assert snapshot(out / "checkpoints" / "3.unreadable") == damaged  # kept, byte for byte, never deleted
    assert (out / "model" / "model.safetensors").is_file()
    assert [json.loads(x)["iteration"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    # A run that never checkpointed: resume says so, then starts at 0.
    fresh = tmp_path / "fresh"
    run(cli_train.main, train_args(train_world, fresh, "--no-eval", "--iterations", "2"), capfd,
        "train: run for the no-checkpoint case", code=0)
    shutil.rmtree(fresh / "checkpoints")
    rc = cli_train.main(["--resume", str(fresh), "--no-eval", "--quiet"])
    o, err = capfd.readouterr()
    assert rc == 0 and f"{fresh} has no checkpoint yet: starting at iteration 0" in o
    TABLE.append(("train: --resume a run without a checkpoint", rc, "(prints) has no checkpoint yet: starting at 0"))


def _spawn(argv, **kw):
    return subprocess.Popen([sys.executable, "-m", "rajax.cli.train", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_two_processes_on_one_run_directory(train_world, tmp_path):
    out = tmp_path / "run"
    first = _spawn(train_args(train_world, out, "--no-eval", iterations=20))
    deadline = time.time() + 240
    while not (out / "metrics.jsonl").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    second = _spawn(train_args(train_world, out, "--no-eval", "--overwrite", iterations=20))
    o2, e2 = second.communicate(timeout=240)
    o1, e1 = first.communicate(timeout=600)
    assert first.returncode == 0, e1[-2000:]
    assert second.returncode == 2 and "Traceback" not in e2
    lines = [ln for ln in e2.splitlines() if ln.strip()]
    assert len(lines) >= 1 and lines[-1].startswith("rajax: error: ") and f"pid {first.pid}" in lines[-1], e2
    TABLE.append(("train: a second process on the same --out", 2, lines[-1]))
    its = [json.loads(x)["iteration"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert its == list(range(20))  # one trajectory, in order, untouched by the second process
    assert "seed: 4" in (out / "config.yaml").read_text()


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_checkpoint_and_exit(train_world, tmp_path, sig, code):
    out = tmp_path / "run"
    proc = _spawn(train_args(train_world, out, "--no-eval", iterations=30))
    deadline = time.time() + 240
    while not (out / "checkpoints" / "1").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(sig)
    o, e = proc.communicate(timeout=240)
    assert proc.returncode == code and "Traceback" not in e, e[-2000:]
    done = len((out / "metrics.jsonl").read_text().splitlines())
    assert Checkpointer(out / "checkpoints").latest_step() == done and f"{train_command()} --resume {out}" in o
    TABLE.append((f"train: {signal.Signals(sig).name} during a run", code, "(stdout) stopped by signal ...; continue "
                                                                            "with: rajax train --resume DIR"))


def _tmpfs(path: pathlib.Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture
def full_disk(tmp_path, monkeypatch):
    """A place whose disk fills: a small tmpfs where one can be mounted (root), else Orbax's write is made to
    fail the way a full disk does (tensorstore's RESOURCE_EXHAUSTED error, after its temporary directory exists)."""
    mnt = tmp_path / "small"
    if _tmpfs(mnt, "160k"):
        yield mnt, "tmpfs"
        subprocess.run(["umount", str(mnt)], capture_output=True)
        return
    import orbax.checkpoint as ocp

    real = ocp.CheckpointManager.save

    def save(self, step, *a, **k):
        if step >= 2 or not any(self.directory.glob("[0-9]")):
            (pathlib.Path(self.directory) / f"{step}.orbax-checkpoint-tmp-0").mkdir(parents=True, exist_ok=True)
            raise ValueError("RESOURCE_EXHAUSTED: Error writing: Failed to write: No space left on device "
                             "[os_error_code='28']")
        return real(self, step, *a, **k)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    yield mnt, "injected"


def test_full_disk_on_the_first_checkpoint(train_world, full_disk, capfd):
    mnt, how = full_disk
    out = mnt / "run"
    line = run(cli_train.main, train_args(train_world, out, "--no-eval", iterations=3), capfd,
               f"train: disk full at the first checkpoint ({how})")
    assert "writing checkpoint 1 failed (No space left on device); no earlier checkpoint" in line
    assert not list((out / "checkpoints").glob("*tmp*"))  # no orphaned temporary step


# ------------------------------------------------------------------------------------------------
# bin/sft
# ------------------------------------------------------------------------------------------------
def _sft_args(world, out, *extra):
    return ["--task", "rtp", "--policy", world / "policy", "--data", world / "prompts.jsonl", "--out", out,
            "--epochs", "1", "--batch", "8", "--micro-batch", "8", "--max-tokens", "16", "--no-progress", *extra]


def test_sft_faults(train_world, broken, tmp_path, capfd):
    w = train_world
    cases = [
        ("lr nan", ["--lr", "nan"], "--lr nan must be a positive number"),
        ("lr negative", ["--lr", "-1"], "--lr -1.0 must be a positive number"),
        ("zero epochs", ["--epochs", "0"], "--epochs 0 must be >= 1"),
        ("batch not a multiple of the micro-batch", ["--batch", "12"], "must be a positive multiple"),
        ("tokenizer larger than the embedding", ["--set", f"model.tokenizer={broken / 'big_tok'}"], "embedding rows"),
        ("policy with NaN weights", ["--policy", broken / "nan_policy"], "non-finite parameters"),
        ("missing policy", ["--policy", tmp_path / "nope"], "no tokenizer (no such directory)"),
        ("diverging learning rate", ["--lr", "1e30"], "the SFT loss is"),
    ]
    for i, (case, extra, needle) in enumerate(cases):
        out = tmp_path / f"sft{i}"
        line = run(cli_sft.main, _sft_args(w, out, *extra), capfd, f"sft: {case}")
        assert needle in line, (case, line)
        assert not (out / "model.safetensors").exists()  # a non-finite model is never saved
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    line = run(cli_sft.main, _sft_args(w, mine), capfd, "sft: --out is a user's directory")
    assert "not empty" in line and snapshot(mine) == {"keep.txt": b"x"}


# ------------------------------------------------------------------------------------------------
# bin/evaluate
# ------------------------------------------------------------------------------------------------
def _eval_args(world, out, *extra, policy=None):
    return ["--task", "rtp", "--policy", f"p={policy or world / 'policy'}", "--reward-model", world / "reward",
            "--data", world / "prompts.jsonl", "--out", out, "--no-progress", "--test-size", "8",
            *_tiny_sets(), *extra]


def test_evaluate_faults(train_world, broken, tmp_path, capfd):
    w = train_world
    cases = [
        ("policy with NaN weights", dict(policy=broken / "nan_policy"), [], "non-finite parameters"),
        ("tokenizer larger than the embedding", {}, ["--tokenizer", broken / "big_tok"], "embedding rows"),
        ("no perplexity texts", {}, ["--set", "eval.ppl_num_texts=0"], "eval.ppl_num_texts=0"),
        ("missing policy", dict(policy=tmp_path / "nope"), [], "no tokenizer (no such directory)"),
        ("tail undefined", {}, ["--set", "eval.tail_threshold=-1000"], "the tail of policy 'p' is nan"),
        ("duplicate policy names", {}, ["--policy", f"p={w / 'policy'}"], "same NAME"),
    ]
    for i, (case, kw, extra, needle) in enumerate(cases):
        line = run(cli_evaluate.main, _eval_args(w, tmp_path / f"ev{i}", *extra, **kw), capfd, f"evaluate: {case}")
        assert needle in line, (case, line)
    # An evaluation into a training run's directory is refused; the run is untouched.
    train_out = tmp_path / "trained"
    run(cli_train.main, train_args(w, train_out, "--no-eval"), capfd, "train: a run to evaluate into", code=0)
    before = snapshot(train_out)
    line = run(cli_evaluate.main, _eval_args(w, train_out), capfd, "evaluate: --out is a training run")
    assert "holds a rajax train run" in line and snapshot(train_out) == before
    # Re-running into its own directory replaces its files and keeps the user's.
    ev = tmp_path / "ev"
    run(cli_evaluate.main, _eval_args(w, ev), capfd, "evaluate: first evaluation", code=0)
    (ev / "mine.txt").write_text("keep\n")
    run(cli_evaluate.main, _eval_args(w, ev, "--seed", "7"), capfd, "evaluate: re-run into its own --out", code=0)
    assert (ev / "mine.txt").read_text() == "keep\n" and (ev / "metrics.json").is_file()
    (ev / "report.md").unlink()
    (ev / "report.md").write_text("my report\n")  # now a user's file of a name evaluate writes
    manifest = json.loads((ev / ".rajax-run.json").read_text())
    manifest["entries"].remove("report.md")
    (ev / ".rajax-run.json").write_text(json.dumps(manifest))
    line = run(cli_evaluate.main, _eval_args(w, ev), capfd, "evaluate: a user's report.md in --out")
    assert "report.md is not a rajax run's" in line and (ev / "report.md").read_text() == "my report\n"


# ------------------------------------------------------------------------------------------------
# bin/study
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra,needle", [(["--alpha", "0.5"], "--alpha after --"), (["--seed", "3"], "--seed after --"),
                                          (["--set", "risk.alpha=0.3"], "--set risk.alpha=0.3 after --"),
                                          (["--out", "x"], "--out after --")],
                         ids=["alpha", "seed", "set risk.alpha", "out"])
def test_study_refuses_flags_that_change_one_arm(tmp_path, capfd, extra, needle):
    line = run(cli_study.main, ["--out", tmp_path / "s", "--", *extra], capfd, f"study: -- {' '.join(extra)}")
    assert needle in line and not (tmp_path / "s").exists()


def test_a_bug_still_shows_its_traceback(train_world, tmp_path, monkeypatch):
    """Only user errors are one line: an unexpected exception propagates with its traceback."""
    from rajax import trainer

    def boom(self, m):
        raise KeyError("a bug")

    monkeypatch.setattr(trainer.Trainer, "iteration", boom)
    with pytest.raises(KeyError, match="a bug"):
        cli_train.main(train_args(train_world, tmp_path / "run"))



# ------------------------------------------------------------------------------------------------
# Validate, then act; stay inside the run directory; one net for parsing (issue 22). Each case
# hashes the trees it must leave alone, before and after.
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(train_world, tmp_path_factory):
    """A finished training run (two checkpoints, model/, eval/), made once; tests copy it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert cli_train.main([str(a) for a in train_args(train_world, out)]) == 0
    return out


def _copy_run(src, dst):
    shutil.copytree(src, dst, symlinks=True)
    return dst


def test_overwrite_with_a_bad_input_keeps_the_earlier_run(train_world, finished_run, tmp_path, capfd):
    run_dir = _copy_run(finished_run, tmp_path / "R")
    before = tree_hash(run_dir)
    line = run(cli_train.main, train_args(train_world, run_dir, "--no-eval", "--overwrite", "--policy", tmp_path / "nope"),
               capfd, "train: --overwrite with a missing --policy")
    assert "no such file or directory" in line and unchanged(run_dir, before)


def test_overwrite_that_fails_in_its_first_iteration_restores_the_earlier_run(train_world, finished_run, broken,
                                                                              tmp_path, capfd):
    """The inputs pass the checks, then the first iteration fails (a NaN reward): the earlier run,
    moved aside when the new one started, is put back whole since no new checkpoint was written."""
    run_dir = _copy_run(finished_run, tmp_path / "R")
    before = tree_hash(run_dir)
    line = run(cli_train.main, train_args(train_world, run_dir, "--no-eval", "--overwrite", "--reward-model",
                                          broken / "nan_reward"), capfd, "train: --overwrite, NaN reward at iteration 0")
    assert "non-finite scores at iteration 0" in line
    assert unchanged(run_dir, before) and not list(run_dir.glob(".rajax-old-*"))


def test_evaluate_with_a_bad_policy_keeps_the_earlier_evaluation(train_world, tmp_path, capfd):
    ev = tmp_path / "E"
    run(cli_evaluate.main, _eval_args(train_world, ev), capfd, "evaluate: an evaluation to keep", code=0)
    before = tree_hash(ev)
    line = run(cli_evaluate.main, _eval_args(train_world, ev, policy=tmp_path / "nope"), capfd,
               "evaluate: a bad --policy into an earlier evaluation's --out")
    assert "no tokenizer (no such directory)" in line and unchanged(ev, before)
    assert {"report.md", "metrics.json", "generations.csv"} <= {p.name for p in ev.iterdir()}


def test_sft_overwrite_that_diverges_keeps_the_earlier_model(train_world, tmp_path, capfd):
    out = tmp_path / "sft"
    run(cli_sft.main, _sft_args(train_world, out), capfd, "sft: a model to keep", code=0)
    before = tree_hash(out)
    line = run(cli_sft.main, _sft_args(train_world, out, "--overwrite", "--lr", "1e30"), capfd,
               "sft: --overwrite --lr 1e30 over an earlier SFT")
    assert "the SFT loss is" in line and unchanged(out, before)


def test_a_users_folder_of_a_run_name_is_found_before_anything_goes(train_world, finished_run, tmp_path, capfd):
    run_dir = tmp_path / "R"
    run(cli_train.main, train_args(train_world, run_dir, "--no-eval"), capfd, "train: a run without eval/", code=0)
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "mine.txt").write_text("my notes\n")
    before = tree_hash(run_dir)
    line = run(cli_train.main, train_args(train_world, run_dir, "--overwrite"), capfd,
               "train: --overwrite with a user's eval/")
    assert "eval is not a rajax run's" in line and unchanged(run_dir, before)


@pytest.mark.parametrize("entry", ["../outside.txt", "/ABS", ".", "a/../../outside.txt", "model/../../outside.txt"],
                         ids=["dotdot", "absolute", "dot", "nested dotdot", "through model"])
def test_manifest_entries_outside_the_run_are_refused(train_world, finished_run, tmp_path, capfd, entry):
    run_dir = _copy_run(finished_run, tmp_path / "R")
    (tmp_path / "outside.txt").write_text("not the run's\n")
    entry = str(tmp_path / "outside.txt") if entry == "/ABS" else entry
    m = json.loads((run_dir / ".rajax-run.json").read_text())
    m["entries"].append(entry)
    (run_dir / ".rajax-run.json").write_text(json.dumps(m))
    before = tree_hash(tmp_path)
    line = run(cli_train.main, train_args(train_world, run_dir, "--no-eval", "--overwrite"), capfd,
               f"train: --overwrite, manifest entry {entry}")
    assert f"its entry {entry!r}" in line and "inside the run directory" in line, line
    assert unchanged(tmp_path, before)


def test_user_notes_inside_checkpoints_and_tb_survive_overwrite(train_world, finished_run, tmp_path, capfd):
    run_dir = _copy_run(finished_run, tmp_path / "R")
    (run_dir / "checkpoints" / "NOTES.md").write_text("lr sweep: this one was best\n")
    (run_dir / "tb" / "notes.txt").write_text("see the KL spike\n")
    m = json.loads((run_dir / ".rajax-run.json").read_text())
    assert not {"checkpoints", "tb"} & set(m["entries"])  # files, not folders
    run(cli_train.main, train_args(train_world, run_dir, "--no-eval", "--overwrite", "--seed", "9"), capfd,
        "train: --overwrite with notes in checkpoints/ and tb/", code=0)
    assert (run_dir / "checkpoints" / "NOTES.md").read_text() == "lr sweep: this one was best\n"
    assert (run_dir / "tb" / "notes.txt").read_text() == "see the KL spike\n"
    assert "seed: 9" in (run_dir / "config.yaml").read_text() and not list(run_dir.glob(".rajax-old-*"))
    assert Checkpointer(run_dir / "checkpoints").all_steps() == [1, 2]


def test_a_symlinked_model_dir_is_never_followed(train_world, finished_run, tmp_path, capfd):
    run_dir = _copy_run(finished_run, tmp_path / "R")
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(run_dir / "model", elsewhere)  # someone else's files, named like the run's
    shutil.rmtree(run_dir / "model")
    (run_dir / "model").symlink_to(elsewhere, target_is_directory=True)
    before_run, before_else = tree_hash(run_dir), tree_hash(elsewhere)
    line = run(cli_train.main, train_args(train_world, run_dir, "--no-eval", "--overwrite"), capfd,
               "train: --overwrite with model/ a symlink elsewhere")
    assert "symbolic link model" in line
    assert unchanged(run_dir, before_run) and unchanged(elsewhere, before_else)


@pytest.mark.parametrize("kind", ["symlink", "directory"])
def test_a_lock_that_is_not_a_plain_file_is_refused_unchanged(train_world, finished_run, tmp_path, capfd, kind):
    run_dir = _copy_run(finished_run, tmp_path / "R")
    lock = run_dir / ".rajax-run.lock"
    lock.unlink()
    target = tmp_path / "precious.txt"
    target.write_text("a user's file that a followed lock would truncate\n")
    if kind == "symlink":
        lock.symlink_to(target)
    else:
        lock.mkdir()
    before = tree_hash(tmp_path)
    for argv, what in [(train_args(train_world, run_dir, "--no-eval", "--overwrite"), "--overwrite"),
                       (["--resume", run_dir, "--quiet", "--no-eval"], "--resume")]:
        line = run(cli_train.main, argv, capfd, f"train: {what}, the lock is a {kind}")
        assert "its lock .rajax-run.lock is" in line, line
        assert unchanged(tmp_path, before)


def test_a_refused_run_leaves_the_lock_file_as_it_was(train_world, finished_run, tmp_path, capfd):
    run_dir = _copy_run(finished_run, tmp_path / "R")
    (run_dir / ".rajax-run.lock").write_text("12345\n")  # the pid an earlier run left there
    before = tree_hash(run_dir)
    run(cli_train.main, train_args(train_world, run_dir, "--no-eval"), capfd, "train: refused (not empty), lock kept")
    run(cli_train.main, train_args(train_world, run_dir, "--no-eval", "--overwrite", "--alpha", "7"), capfd,
        "train: refused (bad alpha), lock kept")
    assert unchanged(run_dir, before)


@pytest.mark.parametrize("content", ['"x"', "[1, 2]", "{not json", '{"entries": "model"}', '{"entries": [3]}',
                                     '{"kind": 5, "entries": []}'],
                         ids=["string", "list", "not json", "entries a string", "entry a number", "kind a number"])
def test_a_damaged_manifest_is_one_line(train_world, finished_run, tmp_path, capfd, content):
    run_dir = _copy_run(finished_run, tmp_path / "R")
    (run_dir / ".rajax-run.json").write_text(content)
    before = tree_hash(run_dir)
    for argv, what in [(train_args(train_world, run_dir, "--no-eval", "--overwrite"), "--overwrite"),
                       (["--resume", run_dir, "--quiet"], "--resume")]:
        line = run(cli_train.main, argv, capfd, f"train: {what}, manifest {content}")
        assert "manifest .rajax-run.json" in line and ("damaged" in line or "is not a path" in line), line
        assert unchanged(run_dir, before)


PARSE_CASES = [
    ("--set list not closed", ["--set", "eval.cvar_alphas=[0.1"], "eval.cvar_alphas: '[0.1' is not a valid value"),
    ("--seed -1", ["--seed", "-1"], "train.seed: -1 is out of range; give an integer in [0, 4294967295]"),
    ("--seed past 2**64", ["--seed", str(2**64 + 1)], "train.seed: 18446744073709551617 is out of range"),
    ("--seed past 2**32", ["--seed", str(2**32)], "train.seed: 4294967296 is out of range"),
    ("--lr inf", ["--lr", "inf"], "ppo.learning_rate: inf is not a finite number"),
    ("a flag without its value", ["--iterations"], "--iterations: expected one argument"),
    ("a task name too long for the file system", ["--task", "x" * 300], "unknown task 'xxxx"),
]


@pytest.mark.parametrize("case,extra,needle", PARSE_CASES, ids=[c[0] for c in PARSE_CASES])
def test_parsing_mistakes_are_one_line(train_world, finished_run, tmp_path, capfd, case, extra, needle):
    run_dir = _copy_run(finished_run, tmp_path / "R")
    before = tree_hash(tmp_path)
    argv = [str(a) for a in train_args(train_world, run_dir, "--overwrite")] + extra
    try:
        rc = cli_train.main(argv)
    except SystemExit as e:  # argparse's own checks end the process, as they do from the shell
        rc = e.code
    out, err = capfd.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and "Traceback" not in err and len(lines) == 1 and lines[0].startswith("rajax: error: "), err
    assert needle in lines[0], lines[0]
    TABLE.append((f"train: {case}", rc, lines[0]))
    assert unchanged(tmp_path, before)


def test_a_duplicate_yaml_key_is_refused(train_world, tmp_path, capfd):
    cfg = tmp_path / "my.yaml"
    cfg.write_text("risk:\n  alpha: 0.4\n  n: 0\n  alpha: 0.3\n")
    before = tree_hash(tmp_path)
    line = run(cli_train.main, train_args(train_world, tmp_path / "run", "--config", cfg), capfd,
               "train: --config with a duplicate key")
    assert "duplicate key 'alpha' (line 2 and line 4)" in line and unchanged(tmp_path, before)


def test_a_corrupt_study_plan_is_one_line(tmp_path, capfd):
    out = tmp_path / "s"
    out.mkdir()
    (out / "study-plan.json").write_text('{"task": "synthetic", "seeds": [0, 1')
    before = tree_hash(out)
    line = run(cli_study.main, ["--out", out, "--seeds", "0", "--alphas", "0.2"], capfd, "study: corrupt study-plan.json")
    assert "study-plan.json is damaged" in line and unchanged(out, before)
    (out / "study-plan.json").write_text('"x"')
    line = run(cli_study.main, ["--out", out, "--seeds", "0", "--alphas", "0.2"], capfd, 'study: study-plan.json "x"')
    assert "not a study plan" in line
    line = run(cli_study.main, ["--out", tmp_path / "t", "--seeds", "-1", "--alphas", "0.2"], capfd, "study: --seeds -1")
    assert "--seeds must be integers in [0, 4294967295]" in line and not (tmp_path / "t").exists()


def _damage_newest(run_dir: pathlib.Path) -> int:
    newest = Checkpointer(run_dir / "checkpoints").latest_step()
    d = run_dir / "checkpoints" / str(newest)
    data = sorted((p for p in d.rglob("*") if p.is_file() and p.stat().st_size > 200), key=lambda p: -p.stat().st_size)[0]
    data.write_bytes(data.read_bytes()[:64])
    return newest


def test_export_and_evaluate_fall_back_past_a_damaged_newest_checkpoint(train_world, finished_run, tmp_path, capfd):
    from rajax.cli import export as cli_export

    run_dir = _copy_run(finished_run, tmp_path / "R")
    newest = _damage_newest(run_dir)
    before = tree_hash(run_dir)
    rc = cli_export.main([str(run_dir), str(tmp_path / "exp")])
    o, err = capfd.readouterr()
    assert rc == 0 and "Traceback" not in o + err, err[-2000:]
    note = [ln for ln in o.splitlines() if "unreadable" in ln]
    assert len(note) == 1 and f"checkpoint {newest}" in note[0] and f"using checkpoint {newest - 1}" in note[0], o
    assert f"exported {run_dir / 'checkpoints' / str(newest - 1)}" in o
    TABLE.append(("export: damaged newest checkpoint", rc, note[0]))
    assert (tmp_path / "exp" / "model.safetensors").is_file() and unchanged(run_dir, before)
    step = run_dir / "checkpoints" / str(newest)
    rc = cli_evaluate.main([str(a) for a in _eval_args(train_world, tmp_path / "ev", policy=step)])
    o, err = capfd.readouterr()
    assert rc == 0 and "Traceback" not in o + err, err[-2000:]
    note = [ln for ln in err.splitlines() if "unreadable" in ln]
    assert len(note) == 1 and f"using checkpoint {newest - 1}" in note[0], err
    TABLE.append(("evaluate: --policy RUN/checkpoints/N, N damaged", rc, note[0]))
    assert unchanged(run_dir, before)


def test_a_failed_resume_never_renames_an_intact_checkpoint(train_world, finished_run, tmp_path, capfd):
    run_dir = _copy_run(finished_run, tmp_path / "R")
    cfg = run_dir / "config.yaml"
    cfg.write_text(cfg.read_text().replace("max_grad_norm: null", "max_grad_norm: 1.0"))  # another optimizer state
    before = tree_hash(run_dir)
    line = run(cli_train.main, ["--resume", run_dir, "--quiet", "--no-eval"], capfd,
               "train: --resume whose checkpoint does not fit the config")
    assert "is intact but does not fit" in line and "nothing was moved" in line
    assert unchanged(run_dir, before) and not list((run_dir / "checkpoints").glob("*.unreadable"))
    # Every checkpoint unreadable and moved aside by an earlier resume: the next one refuses, it
    # never starts again at 0 over metrics.jsonl.
    for d in [p for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()]:
        d.rename(d.with_name(f"{d.name}.unreadable"))
    cfg.write_text(cfg.read_text().replace("max_grad_norm: 1.0", "max_grad_norm: null"))
    before = tree_hash(run_dir)
    line = run(cli_train.main, ["--resume", run_dir, "--quiet", "--no-eval"], capfd,
               "train: --resume with only unreadable checkpoints")
    assert "has no readable checkpoint left" in line and unchanged(run_dir, before)


def test_a_refused_export_leaves_no_file(finished_run, tmp_path, capfd):
    from rajax.cli import export as cli_export

    out = tmp_path / "exp"
    out.mkdir()
    (out / "config.json").write_text("{}\n")  # a user's file of a name the export writes
    before = tree_hash(tmp_path)
    line = run(cli_export.main, [finished_run, out], capfd, "export: OUT not empty")
    assert "is not empty" in line and unchanged(tmp_path, before)
    line = run(cli_export.main, [finished_run, out, "--overwrite"], capfd, "export: --overwrite over a user's config.json")
    assert "config.json is not this run's" in line and unchanged(tmp_path, before)
    line = run(cli_export.main, [tmp_path / "nothing", tmp_path / "exp2"], capfd, "export: no such run")
    assert "neither a run directory" in line and unchanged(tmp_path, before)


def test_stale_temp_dirs_of_a_killed_run_are_removed(train_world, finished_run, tmp_path, capfd):
    run_dir = _copy_run(finished_run, tmp_path / "R")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a pid that has exited
    for name in (f".model.tmp-{dead}", f".eval.tmp-{dead}"):
        (run_dir / name).mkdir()
        (run_dir / name / "model.safetensors").write_bytes(b"half a file")
    alive = run_dir / f".eval.tmp-{os.getppid()}"  # a live process's (not ours): never touched
    alive.mkdir()
    run(cli_train.main, ["--resume", run_dir, "--quiet", "--no-eval", "--iterations", "2"], capfd,
        "train: --resume removes a killed run's temp dirs", code=0)
    assert not (run_dir / f".model.tmp-{dead}").exists() and not (run_dir / f".eval.tmp-{dead}").exists()
    assert alive.is_dir()


@pytest.mark.parametrize("moment", ["start-up", "end-of-training evaluation"])
def test_sigterm_at_any_moment_stops_with_one_line(train_world, tmp_path, moment):
    """Outside the training loop (which finishes its iteration and checkpoints) SIGTERM stops the
    command where it is: exit 143, one line, no traceback, no temporary directory left."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "rajax", "train", *map(str, train_args(train_world, out))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if moment == "start-up":
        time.sleep(1.5)  # importing the libraries (past the interpreter's own start, where no handler can be yet)
    else:
        deadline = time.time() + 240
        while not list(out.glob(".eval.tmp-*")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before its evaluation started"
    t = time.time()
    proc.send_signal(signal.SIGTERM)
    o, e = proc.communicate(timeout=120)
    took = time.time() - t
    lines = [ln for ln in e.splitlines() if ln.strip()]
    assert proc.returncode == 143 and "Traceback" not in o + e, e[-2000:]
    assert lines[-1].startswith("rajax: error: interrupted by SIGTERM") and took < 30, (lines[-1:], took)
    assert not list(out.glob(".*.tmp-*")) if out.exists() else True
    TABLE.append((f"train: SIGTERM during {moment}", proc.returncode, lines[-1]))


def test_sigterm_ends_a_long_call_into_c_code():
    """Python runs signal handlers between bytecodes, never inside one long C call such as an XLA
    compile; the watchdog, told through the wakeup fd, ends the process after the grace period."""
    code = ("import hashlib, signal, sys\n"
            "from rajax.core.errors import raise_interrupted, watch_signals\n"
            "signal.signal(signal.SIGTERM, raise_interrupted)\n"
            "watch_signals()\n"
            "print('ready', flush=True)\n"
            "try:\n"
            "    hashlib.pbkdf2_hmac('sha256', b'x', b'y', 2**31 - 1)  # minutes in C, no bytecode\n"
            "    print('the call returned', flush=True)\n"
            "except KeyboardInterrupt:  # the signal came before the call began: the handler's own way out\n"
            "    print('rajax: error: interrupted by SIGTERM; stopped', file=sys.stderr)\n"
            "    raise SystemExit(143)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAJAX_STOP_GRACE_S": "2"})
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)  # inside the C call by now
    t = time.time()
    proc.send_signal(signal.SIGTERM)
    o, e = proc.communicate(timeout=60)
    assert proc.returncode == 143 and time.time() - t < 20 and "returned" not in o, (proc.returncode, o, e)
    assert e.strip().splitlines()[-1] == "rajax: error: interrupted by SIGTERM; stopped" and "Traceback" not in e
    TABLE.append(("SIGTERM inside a long C call (as an XLA compile)", proc.returncode, e.strip().splitlines()[-1]))
