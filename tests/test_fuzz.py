"""Property-based fuzzing of every command (train, sft, evaluate, study, export) with hypothesis.

Each example starts from a command line that works on the tiny training world and changes it: a
flag's value replaced by a wrong type, an out-of-range or non-finite number, a missing or garbage
path, a file of random bytes or of malformed YAML; a flag dropped or repeated; ``--out`` empty,
absent or holding an earlier run. Whatever the example, the command must:

* end in exit 0, or in exit 2 with exactly one ``rajax: error:`` line (the last one on stderr);
* never print a traceback;
* leave every file outside ``--out`` untouched (its inputs and the world included), and every file of
  an earlier run in ``--out`` untouched unless the command succeeded with ``--overwrite`` or
  ``--resume`` (evaluate, which always replaces its own files, when it succeeded).

Commands run in-process (as tests/test_faults.py does). The default is a few examples per command,
the same ones every time (``derandomize``); ``RAJAX_FUZZ_EXAMPLES=N`` runs N random examples per
command, and ``RAJAX_FUZZ_REPORT=path`` appends one JSON line per example (command, exit code, the
error line) for counting outcomes.
"""
import json
import os
import pathlib
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tiny import TRAIN_TINY, train_args, tree_hash

from rajax.cli import evaluate as cli_evaluate
from rajax.cli import export as cli_export
from rajax.cli import sft as cli_sft
from rajax.cli import study as cli_study
from rajax.cli import train as cli_train

DEEP = int(os.environ.get("RAJAX_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=DEEP or 4, deadline=None, derandomize=not DEEP, database=None,
                suppress_health_check=list(HealthCheck), print_blob=True)
REPORT = os.environ.get("RAJAX_FUZZ_REPORT")

# Values that are wrong in some way for most flags: wrong types, edges, huge and non-finite numbers,
# YAML-looking text, garbage paths. "{bytes}", "{yaml}", "{dir}", "{missing}" and "{link}" become
# paths in the example's sandbox.
ODD = ["", " ", "-1", "0", "1", "2", "0.5", "1e30", "-1e30", "1e-300", "nan", "inf", "-inf", str(2**64 + 1),
       str(-(2**63)), "1.5", "true", "null", "[0.1", "[1,2]", "{a: 1}", "a: [", "'", "\"", "x" * 300, "../..",
       "/", "~", "-", "--", "--out", "é\u200b", "{bytes}", "{yaml}", "{dir}", "{missing}", "{link}"]
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
# Values a flag may well take, so that examples also get past the parsing into the run itself.
PLAUSIBLE = ["8", "16", "2", "4", "0.3", "0.9", "1e-4", "0", "synthetic", "rtp", "float32", "bfloat16",
             "kept_mean", "{world}/policy", "{world}/reward", "{world}/prompts.jsonl"]
VALUE = st.one_of(st.sampled_from(ODD), st.sampled_from(PLAUSIBLE), TEXT, st.integers(-(2**70), 2**70).map(str),
                  st.floats(allow_nan=True, allow_infinity=True).map(repr))
SET_KEYS = ["eval.cvar_alphas", "risk.alpha", "risk.M", "train.seed", "train.iterations", "ppo.learning_rate",
            "generation.max_new_tokens", "generation.top_p", "model.dtype", "data.source", "ppo.kl_stat",
            "eval.test_size", "model.policy", "train.batch_size", "generation.prompt_tokens", "kl.horizon", "bogus",
            "ppo", "model.lora_rank", "reward.sign"]


def _flag_values(argv: list[str]) -> list[int]:
    """Indexes of argv items that are a flag's value (the item after a --flag)."""
    return [i + 1 for i, a in enumerate(argv[:-1]) if a.startswith("--") and not argv[i + 1].startswith("--")]


@st.composite
def mutations(draw, n_max=3):
    """A list of edits to apply to a working command line."""
    edits = []
    for _ in range(draw(st.integers(0, n_max))):
        kind = draw(st.sampled_from(["value", "value", "value", "drop", "set", "set", "extra", "extra", "dup"]))
        if kind == "value":
            edits.append(("value", draw(st.integers(0, 10_000)), draw(VALUE)))
        elif kind == "drop":
            edits.append(("drop", draw(st.integers(0, 10_000)), None))
        elif kind == "set":
            edits.append(("set", draw(st.sampled_from(SET_KEYS)), draw(VALUE)))
        elif kind == "extra":
            edits.append(("extra", draw(st.sampled_from(["--overwrite", "--overwrite", "--resume", "--config",
                                                         "--policy", "--data", "--seed", "--no-eval", "--bogus",
                                                         "--help", "--task", "--ref-policy", "--tokenizer"])),
                          draw(VALUE)))
        else:
            edits.append(("dup", draw(st.integers(0, 10_000)), None))
    return edits


def apply(argv: list[str], edits, fixed: int = 0) -> list[str]:
    """``argv`` with ``edits``; the first ``fixed`` items stay (positional arguments, --dry-run)."""
    argv = list(argv)
    for kind, where, value in edits:
        slots = [i for i in _flag_values(argv) if i >= fixed]
        if kind == "value" and slots:
            argv[slots[where % len(slots)]] = value
        elif kind == "drop" and slots:
            i = slots[where % len(slots)]
            del argv[i - 1:i + 1]
        elif kind == "dup" and slots:
            i = slots[where % len(slots)]
            argv += argv[i - 1:i + 1]
        elif kind == "set":
            argv += ["--set", f"{where}={value}"]
        elif kind == "extra":
            argv += [where] if where in ("--overwrite", "--no-eval", "--help") else [where, value]
    return argv


class Sandbox:
    """One example's files: its inputs (random bytes, YAML text, a directory, a link) and ``out``."""

    def __init__(self, root: pathlib.Path, raw: bytes, yaml_text: str, out_kind: str, earlier: pathlib.Path | None,
                 world: pathlib.Path):
        self.root = pathlib.Path(tempfile.mkdtemp(dir=root))
        inputs = self.root / "inputs"
        inputs.mkdir()
        (inputs / "bytes.bin").write_bytes(raw)
        (inputs / "bad.yaml").write_text(yaml_text)
        (inputs / "dir").mkdir()
        (inputs / "dir" / "note.txt").write_text("a user's file\n")
        (inputs / "link").symlink_to(inputs / "dir", target_is_directory=True)
        self.out = self.root / "out"
        (self.root / "cwd").mkdir()  # the working directory of the example (runs/ is the default --out)
        if out_kind == "empty":
            self.out.mkdir()
        elif out_kind == "earlier" and earlier is not None:
            shutil.copytree(earlier, self.out, symlinks=True)
        elif out_kind == "user":
            self.out.mkdir()
            (self.out / "mine.txt").write_text("mine\n")
        elif out_kind == "bytes":
            self.out.mkdir()
            (self.out / ".rajax-run.json").write_bytes(raw)
            (self.out / "study-plan.json").write_bytes(raw)
            (self.out / "config.yaml").write_bytes(raw)
        self.paths = {"{world}": str(world), "{bytes}": str(inputs / "bytes.bin"), "{yaml}": str(inputs / "bad.yaml"),
                      "{dir}": str(inputs / "dir"), "{missing}": str(inputs / "missing"),
                      "{link}": str(inputs / "link")}

    def fill(self, argv):
        out = []
        for a in argv:
            for k, v in self.paths.items():
                a = a.replace(k, v)
            out.append(a.replace("{out}", str(self.out)))
        return out

    def outside(self, targets):
        """Every file of the sandbox outside the command's output directories ``targets`` (the ``--out``
        and ``--resume`` it was given, and ``cwd/runs``, where a command writes when --out is dropped)."""
        listing = tree_hash(self.root).listing
        skip = [str(pathlib.Path(t).relative_to(self.root)) for t in targets
                if pathlib.Path(t) == self.root or self.root in pathlib.Path(t).parents] + ["cwd/runs"]
        return {k: v for k, v in listing.items() if not any(k == t or k.startswith(t + "/") or t == "." for t in skip)}

    def targets(self, argv, *, positional_out: bool = False):
        """Where the command may write: the last value of each of --out and --resume (as argparse
        reads them), relative to the example's working directory; export's OUT."""
        found = {}
        for i, a in enumerate(argv):
            for flag in ("--out", "--resume"):
                if a == flag and i + 1 < len(argv):
                    found[flag] = argv[i + 1]
                elif a.startswith(flag + "="):
                    found[flag] = a[len(flag) + 1:]
        if positional_out:
            found["OUT"] = str(self.out)
        return [os.path.normpath(os.path.join(self.root / "cwd", v)) for v in found.values()]

    def run_files(self):
        """The earlier run's own files in ``out`` (the lock's bytes included), as a tree hash."""
        return tree_hash(self.out)


# Flags whose large values only make a valid run longer (more epochs, iterations, samples): an
# example keeps them small so that it ends in seconds; every other value is fuzzed as it comes.
LONG = {"--epochs": 2, "--iterations": 3, "--train.iterations": 3, "--eval.samples-per-prompt": 2,
        "--test-size": 16, "--eval.test-size": 16, "--risk-M": 10**6}


def short_enough(argv) -> bool:
    for i, a in enumerate(argv[:-1]):
        cap = LONG.get(a.split("=")[0])
        if cap is not None:
            try:
                if int(float(argv[i + 1])) > cap:
                    return False
            except (ValueError, OverflowError):
                pass
    return not any(a.startswith(("train.iterations=", "eval.samples_per_prompt=", "eval.test_size="))
                   and a.split("=", 1)[1].strip().lstrip("+").isdigit() and int(a.split("=", 1)[1]) > 16 for a in argv)


def check(main, argv, sandbox: Sandbox, world_hash, world, capfd, command: str, *, may_change: bool,
          positional_out: bool = False):
    assume(short_enough(argv))
    capfd.readouterr()
    targets = sandbox.targets(argv, positional_out=positional_out)
    ours = str(sandbox.out) in targets  # else the sandbox's out/ is one more place the command must leave alone
    before_out, before_rest = sandbox.run_files(), sandbox.outside(targets)
    here = os.getcwd()
    os.chdir(sandbox.root / "cwd")
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse (a bad flag, --help) ends the process, as from the shell
        rc = 0 if e.code is None else e.code
    finally:
        os.chdir(here)
    out, err = capfd.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "rajax: error:" in ln]
    if REPORT:
        with open(REPORT, "a") as f:
            f.write(json.dumps({"command": command, "rc": rc, "error": errors[-1] if errors else None,
                                "traceback": "Traceback" in out + err, "argv": argv[-12:]}) + "\n")
    assert "Traceback" not in out + err, (command, argv, err[-3000:])
    assert rc in (0, 2), (command, argv, rc, err[-2000:])
    if rc == 2:
        assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("rajax: error: "), (argv, err)
    after_rest = sandbox.outside(targets)
    assert after_rest == before_rest, (command, argv, "a file outside --out changed",
                                       sorted(k for k in set(after_rest) | set(before_rest)
                                              if after_rest.get(k) != before_rest.get(k)))
    assert tree_hash(world) == world_hash, (command, argv, "an input of the world changed")
    if ours and not (rc == 0 and may_change):
        assert sandbox.run_files() == before_out or not before_out.listing, (command, argv, "--out changed",
                                                                             before_out.diff(sandbox.run_files()))
    return rc


@pytest.fixture(scope="module")
def world_and_runs(train_world, tmp_path_factory):
    """The world, its hash, a finished tiny run (checkpoints, model/) and a finished evaluation."""
    root = tmp_path_factory.mktemp("fuzz")
    run_dir = root / "run"
    assert cli_train.main([str(a) for a in train_args(train_world, run_dir, "--no-eval", iterations=2)]) == 0
    ev = root / "eval"
    assert cli_evaluate.main([str(a) for a in _eval_argv(train_world, ev)]) == 0
    sft = root / "sft"
    assert cli_sft.main(_sft_argv(train_world, sft)) == 0
    return train_world, tree_hash(train_world), run_dir, ev, sft, root


def _sft_argv(world, out):
    return ["--task", "rtp", "--policy", str(world / "policy"), "--data", str(world / "prompts.jsonl"), "--out", str(out),
            "--epochs", "1", "--batch", "8", "--micro-batch", "8", "--max-tokens", "16", "--no-progress"]


def _sets():
    return [x for s in TRAIN_TINY for x in ("--set", s)]


def _eval_argv(world, out):
    return ["--task", "rtp", "--policy", f"p={world / 'policy'}", "--reward-model", str(world / "reward"),
            "--data", str(world / "prompts.jsonl"), "--out", str(out), "--no-progress", "--test-size", "8", *_sets()]


SANDBOX = dict(raw=st.binary(max_size=64), yaml_text=TEXT,
               out_kind=st.sampled_from(["absent", "empty", "earlier", "earlier", "user", "bytes"]))


def _sandbox(root, raw, yaml_text, out_kind, earlier, world):
    return Sandbox(root, raw, yaml_text, out_kind, earlier, world)


@FUZZ
@given(edits=mutations(), **SANDBOX)
def test_fuzz_train(world_and_runs, capfd, edits, raw, yaml_text, out_kind):
    world, wh, run_dir, _, _, root = world_and_runs
    sb = _sandbox(root, raw, yaml_text, out_kind, run_dir, world)
    argv = sb.fill(apply([str(a) for a in train_args(world, "{out}", "--no-eval", iterations=1)], edits))
    check(cli_train.main, argv, sb, wh, world, capfd, "train",
          may_change="--overwrite" in argv or "--resume" in argv)


@FUZZ
@given(edits=mutations(), **SANDBOX)
def test_fuzz_sft(world_and_runs, capfd, edits, raw, yaml_text, out_kind):
    world, wh, _, _, sft, root = world_and_runs
    sb = _sandbox(root, raw, yaml_text, out_kind, sft, world)
    argv = sb.fill(apply(_sft_argv(world, "{out}"), edits))
    check(cli_sft.main, argv, sb, wh, world, capfd, "sft", may_change="--overwrite" in argv)


@FUZZ
@given(edits=mutations(), **SANDBOX)
def test_fuzz_evaluate(world_and_runs, capfd, edits, raw, yaml_text, out_kind):
    world, wh, _, ev, _, root = world_and_runs
    sb = _sandbox(root, raw, yaml_text, out_kind, ev, world)
    argv = sb.fill(apply(_eval_argv(world, "{out}"), edits))
    check(cli_evaluate.main, argv, sb, wh, world, capfd, "evaluate", may_change=True)


@FUZZ
@given(edits=mutations(), **SANDBOX)
def test_fuzz_study(world_and_runs, capfd, edits, raw, yaml_text, out_kind):
    """--dry-run, or a real study whose runs stop at their first check (a missing --policy), so that an
    example never trains: what is fuzzed is the study's own parsing and its --out."""
    world, wh, _, _, _, root = world_and_runs
    sb = _sandbox(root, raw, yaml_text, out_kind, None, world)
    dry = raw[:1] != b"\x00"
    base = ["--dry-run"] * dry + ["--task", "rtp", "--seeds", "0", "1", "--alphas", "0.2", "--out", "{out}", "--",
                                  "--policy", "{missing}", "--quiet"]
    argv = sb.fill(apply(base, edits, fixed=int(dry)))
    check(cli_study.main, argv, sb, wh, world, capfd, "study", may_change=False)


@FUZZ
@given(edits=mutations(), source=st.sampled_from(["run", "step", "bytes", "dir", "missing", "damaged"]), **SANDBOX)
def test_fuzz_export(world_and_runs, capfd, edits, source, raw, yaml_text, out_kind):
    world, wh, run_dir, _, _, root = world_and_runs
    sb = _sandbox(root, raw, yaml_text, out_kind, None, world)
    src = sb.root / "inputs" / "run"
    shutil.copytree(run_dir, src, symlinks=True)
    if source == "damaged":  # the newest step cut short: export falls back past it
        newest = max((p for p in (src / "checkpoints").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        big = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        big.write_bytes(raw)
    given_src = {"run": src, "damaged": src, "step": src / "checkpoints" / "1", "bytes": "{bytes}", "dir": "{dir}",
                 "missing": "{missing}"}[source]
    argv = sb.fill(apply([str(given_src), "{out}"], edits) + ["--overwrite"] * (raw[:1] == b"\x01"))
    check(cli_export.main, argv, sb, wh, world, capfd, "export", may_change="--overwrite" in argv, positional_out=True)
