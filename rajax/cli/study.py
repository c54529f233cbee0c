"""``bin/study``: RLHF vs RA-RLHF over seeds, risk levels and ablations, with intervals (docs/study.md).

    bin/study --task synthetic --seeds 0 1 2 3 4 5 6 7 --alphas 0.2 0.4 \\
        --ablations kl_kept_mean env_score rollout_dropout small_batch --out runs/study-synthetic
    bin/study --task rtp --seeds 4 56 92 --out runs/study-rtp -- --policy runs/sft-rtp

Each run is one ``bin/train`` call (RLHF is ``--alpha 1``) with its end-of-run evaluation, in
``--out/<setting>/<arm>-s<seed>`` with its console output in ``--out/logs/``. Extra arguments after
``--`` go to every run. An interrupted study continues where it stopped when the same command runs
again: finished runs are kept, a run with a checkpoint resumes, a run without one starts over.
``--out`` then holds ``study.md`` (per arm: mean and 95% t-interval over seeds; per comparison: the
paired RA-RLHF − RLHF difference with a bootstrap 95% interval and its decision), ``study.json``
(every per-seed number), ``study.png`` and ``mechanism.png``.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import pathlib
import sys
import time

import yaml

from rajax import __version__, study, tasks
from rajax import config as config_lib
from rajax.cli import common, train
from rajax.core.errors import InvalidInput, one_line, train_command

# bin/train flags that would give the arms different settings (or clash with the study's own).
ARM_FLAGS = ("--alpha", "--risk", "--seed", "--out", "--resume", "--overwrite", "--task")
ARM_KEYS = ("risk.alpha", "train.seed")
PLAN_FILE = "study-plan.json"
TIMES_FILE = "runs.jsonl"


def check_train_args(train_args) -> None:
    """Refuse extra bin/train arguments that would change one arm of the comparison and not the other."""
    for i, a in enumerate(train_args):
        flag = a.split("=", 1)[0]
        if flag in ARM_FLAGS:
            raise InvalidInput(f"{flag} after -- would change one arm of the study (or the study's own runs); "
                               f"use bin/study {'--alphas' if flag in ('--alpha', '--risk') else '--seeds / --out / --task'}"
                               " instead")
        value = a.split("=", 1)[1] if a.startswith("--set=") else (train_args[i + 1] if a == "--set" and
                                                                     i + 1 < len(train_args) else "")
        if any(value.startswith(k + "=") for k in ARM_KEYS):
            raise InvalidInput(f"--set {value} after -- would change one arm of the study; use bin/study "
                               "--alphas / --seeds instead")


def build_parser() -> argparse.ArgumentParser:
    ap = common.Parser(prog="rajax study", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="ablations:\n" + "\n".join(f"  {k:16s} {a.about}"
                                                                   for k, a in study.ABLATIONS.items()))
    ap.add_argument("--task", default=tasks.default_preset())
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(8)), help="default: 0 .. 7")
    ap.add_argument("--alphas", type=float, nargs="+", help="RA-RLHF risk levels (default: the preset's)")
    ap.add_argument("--alpha", type=float, help="one RA-RLHF risk level (same as --alphas A)")
    ap.add_argument("--ablations", nargs="*", default=[], metavar="NAME",
                    help=f"factors to change one at a time: {', '.join(study.ABLATIONS)} (default: none)")
    ap.add_argument("--out", help="default: runs/study-<task>")
    ap.add_argument("--dry-run", action="store_true", help="print the runs and the expected duration, run nothing")
    ap.add_argument("train_args", nargs="*", help="extra bin/train arguments (after --)")
    return ap


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command = "bin/study " + " ".join(argv)
    return common.guard(lambda: _main(args))


def _alphas(args) -> list[float]:
    if args.alpha is not None and args.alphas:
        raise InvalidInput("give --alphas or --alpha, not both")
    if args.alphas:
        return list(args.alphas)
    if args.alpha is not None:
        return [args.alpha]
    a = config_lib.load_config(args.task).risk.alpha
    if a >= 1.0:
        raise InvalidInput(f"the {args.task!r} preset is RLHF (risk.alpha=1); give the RA-RLHF level with --alphas")
    return [a]


def read_plan(f: pathlib.Path) -> dict:
    """The study's saved plan; a damaged one is refused in one line (never rewritten: it is the record
    of which runs belong to the study)."""
    try:
        old = json.loads(f.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as e:
        raise InvalidInput(f"{f} is damaged ({one_line(e)[:80]}); restore it, or use another --out") from None
    if not isinstance(old, dict):
        raise InvalidInput(f"{f} is damaged (not a study plan); restore it, or use another --out")
    return old


def _read_times(tf: pathlib.Path) -> dict[str, float]:
    """Seconds of each finished run (``runs.jsonl``); a line cut by a kill, or damaged, is skipped: the
    times only feed the estimate of what is left."""
    times = {}
    for line in tf.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
            times[str(rec["run"])] = float(rec["seconds"])
        except (ValueError, KeyError, TypeError):
            continue
    return times


def _open_out(out: pathlib.Path, plan_record: dict):
    """Create or reopen the study directory: its plan must match this command's, and one study at a
    time may use it (an fcntl lock, released when the process ends)."""
    f = out / PLAN_FILE
    if out.exists() and not out.is_dir():
        raise InvalidInput(f"--out {out} is a file; choose a directory for the study")
    if f.is_file():
        old = read_plan(f)
        diff = [k for k in plan_record if k != "rajax_version" and old.get(k) != plan_record[k]]
        if diff:
            raise InvalidInput(f"--out {out} holds a study with other {', '.join(diff)} ({old.get(diff[0])!r}); "
                               "rerun it with the same arguments to continue, or use another --out")
    elif out.exists() and any(out.iterdir()):
        raise InvalidInput(f"--out {out} is not empty and holds no study; use another --out")
    out.mkdir(parents=True, exist_ok=True)
    try:  # never through a link, never truncated: the lock's bytes are not ours to change
        lock = os.fdopen(os.open(out / ".study.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644), "w")
    except OSError as e:
        raise InvalidInput(f"--out {out}: cannot open its lock .study.lock ({e.strerror}); remove it or use "
                           "another --out") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise InvalidInput(f"another bin/study is running in {out}; wait for it or use another --out") from None
    if not f.is_file():
        f.write_text(json.dumps(plan_record, indent=1) + "\n")
    return lock


def _done(run_dir: pathlib.Path) -> bool:
    return (run_dir / "eval" / "metrics.json").is_file()


def _argv(args, r: study.Run, run_dir: pathlib.Path) -> list[str]:
    """bin/train arguments of run ``r``: a fresh run, or --resume when it has a checkpoint."""
    if run_dir.exists() and any(p.name.isdigit() for p in (run_dir / "checkpoints").glob("*")):
        return ["--resume", str(run_dir), "--quiet"]
    fresh = ["--task", args.task, "--seed", str(r.seed), "--out", str(run_dir), "--quiet", *r.flags,
             *args.train_args]
    return fresh + (["--overwrite"] * run_dir.exists())  # an interrupted run of this study: its own files


def _estimate(task: str, runs: list[study.Run], times: dict[str, float]) -> float | None:
    """Seconds the runs not yet done should take: the mean of this study's finished runs of the same
    setting, else of any setting, else the reference for the task (None when there is none)."""
    by_setting: dict[str, list[float]] = {}
    for key, s in times.items():
        by_setting.setdefault(key.split("/")[0], []).append(s)
    every = [s for v in by_setting.values() for s in v]
    ref = tasks.get(config_lib.load_config(task).data.source).study_seconds or {}  # the task's measured runs
    total = 0.0
    for r in runs:
        if r.setting in by_setting:
            total += sum(by_setting[r.setting]) / len(by_setting[r.setting])
        elif every:
            total += sum(every) / len(every)
        elif r.setting in ref or study.MAIN in ref:
            total += ref.get(r.setting, ref.get(study.MAIN))
        else:
            return None
    return total


def _minutes(s: float | None) -> str:
    return "unknown until the first run ends" if s is None else f"{s / 60:.1f} min"


def _run_one(args, r: study.Run, run_dir: pathlib.Path, log_file: pathlib.Path) -> int:
    argv = _argv(args, r, run_dir)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        print(f"$ {train_command()} {' '.join(argv)}", flush=True)
        return train.main(argv)


def _main(args) -> int:
    check_train_args(args.train_args)
    alphas = _alphas(args)
    runs = study.plan(args.seeds, alphas, args.ablations)
    out = pathlib.Path(args.out or f"runs/study-{args.task}")
    record = {"task": args.task, "seeds": list(args.seeds), "alphas": alphas, "ablations": list(args.ablations),
              "train_args": list(args.train_args), "rajax_version": __version__}
    if args.dry_run:
        for r in runs:
            print(f"{r.key}: {train_command()} {' '.join(_argv(args, r, out / r.setting / f'{r.arm}-s{r.seed}'))}")
        print(f"{len(runs)} runs; expected duration: {_minutes(_estimate(args.task, runs, {}))}")
        return 0
    # Validate, then act: the first run's bin/train arguments must parse into a valid config before
    # the study's directory is created (a bad flag after -- would otherwise fail every run).
    first = _argv(args, runs[0], out / runs[0].setting / f"{runs[0].arm}-s{runs[0].seed}")
    if "--resume" not in first:
        train.config_from_args(train.build_parser(first).parse_args(first))
    lock = _open_out(out, record)
    try:
        return _run_all(args, runs, alphas, out)
    finally:
        lock.close()


def _run_all(args, runs, alphas, out: pathlib.Path) -> int:
    tf = out / TIMES_FILE
    times = _read_times(tf) if tf.is_file() else {}
    todo = [r for r in runs if not _done(out / r.setting / f"{r.arm}-s{r.seed}")]
    done_before = len(runs) - len(todo)
    print(f"study: {len(runs)} runs ({len(args.seeds)} seeds; RLHF and α {', '.join(f'{a:g}' for a in alphas)}; "
          f"ablations: {', '.join(args.ablations) or 'none'}) in {out}"
          + (f"; {done_before} already done" if done_before else ""), flush=True)
    print(f"expected duration: {_minutes(_estimate(args.task, todo, times))}", flush=True)
    t0 = time.time()
    for i, r in enumerate(todo, 1):
        run_dir = out / r.setting / f"{r.arm}-s{r.seed}"
        log_file = out / "logs" / f"{r.setting}-{r.arm}-s{r.seed}.log"
        t = time.time()
        rc = _run_one(args, r, run_dir, log_file)
        if rc != 0:
            tail = [x for x in log_file.read_text().splitlines() if x.strip()][-1:]
            again = args.command
            if rc in (130, 143):
                common.error_line(f"interrupted during {r.key}; run {again} again to continue where it stopped")
            else:
                common.error_line(f"the run {r.key} failed (exit {rc}): {tail[0] if tail else ''} (log: {log_file})")
            return rc
        times[r.key] = time.time() - t
        with open(tf, "a") as f:
            f.write(json.dumps({"run": r.key, "seconds": round(times[r.key], 2)}) + "\n")
        left = _estimate(args.task, todo[i:], times)
        print(f"[{done_before + i}/{len(runs)}] {r.key} in {times[r.key]:.1f}s · elapsed "
              f"{(time.time() - t0) / 60:.1f} min · about {_minutes(left)} left", flush=True)
    elapsed = time.time() - t0
    res = aggregate(out, runs, alphas, args.ablations)
    res["seconds_this_call"] = round(elapsed, 1)
    res["seconds_all_runs"] = round(sum(times.get(r.key, float("nan")) for r in runs), 1)
    res["command"] = args.command.rstrip()
    write(out, res)
    print((out / "study.md").read_text())
    return 0


# ------------------------------------------------------------------------------------------------
# Aggregation
# ------------------------------------------------------------------------------------------------
def _label(setting: str, arm: str) -> str:
    return arm if setting == study.MAIN else f"{setting}/{arm}"


def aggregate(out: pathlib.Path, runs, alphas, ablations) -> dict:
    """Every per-seed number, the per-arm intervals, the paired comparisons and the mechanism."""
    per_run, rows, curves, n_warm = [], {}, {}, {}
    for r in runs:
        d = out / r.setting / f"{r.arm}-s{r.seed}"
        pols = json.loads((d / "eval" / "metrics.json").read_text())["policies"]
        trained = next(k for k in pols if k != "init")
        row, init = study.row(pols[trained]), study.row(pols["init"])
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        c = study.read_curves(d)
        iterations = len(c["risk/alpha_prime"])
        per_run.append({"run": r.key, "setting": r.setting, "arm": r.arm, "alpha": r.alpha, "seed": r.seed,
                        "metrics": row, "init": init, "risk_n": cfg["risk"]["n"], "risk_rho": cfg["risk"]["rho"],
                        "risk_M": cfg["risk"]["M"] or iterations, "iterations": iterations,
                        "batch_size": cfg["train"]["batch_size"]})
        rows.setdefault((r.setting, r.arm), {})[r.seed] = row
        if r.setting == study.MAIN and r.arm == "rlhf":
            rows.setdefault(("init", "init"), {})[r.seed] = init
        curves.setdefault((r.setting, r.arm), []).append(c)
        n_warm[(r.setting, r.arm)] = cfg["risk"]["n"]
    metrics = list(next(iter(rows.values())).values())[0].keys()
    rows = {("init", "init"): rows.pop(("init", "init")), **rows} if ("init", "init") in rows else rows
    arms = {("init" if k == ("init", "init") else _label(*k)): {m: study.interval([v[m] for v in by_seed.values()])
                                                               for m in metrics}
            for k, by_seed in rows.items()}
    diffs = {}
    for label, a, b in study.comparisons(alphas, ablations):
        seeds = sorted(set(rows[a]) & set(rows[b]))
        diffs[label] = {m: study.paired([rows[a][s][m] for s in seeds], [rows[b][s][m] for s in seeds], m)
                        for m in metrics}
    mech = {_label(*k): study.mechanism(c) for k, c in curves.items()}
    # After the warm start (m > n), where the kept episodes come from, per seed then over seeds.
    window = {_label(*k): {key: study.window_mean(c, key, n_warm[k] + 1)
                           for key in ("risk/kept_tail_frac", "risk/tail_frac", "env/tail_reward_mean")}
              for k, c in curves.items()}
    return {"runs": per_run, "metrics": list(metrics), "arms": arms, "paired": diffs, "mechanism": mech,
            "after_warm_start": window}


def write(out: pathlib.Path, res: dict) -> None:
    """study.md, study.json, study.png and mechanism.png from ``aggregate``'s result."""
    metrics = res["metrics"]
    main_arms = {k: v for k, v in res["arms"].items() if "/" not in k}
    abl_arms = {k: v for k, v in res["arms"].items() if "/" in k}
    win = res["after_warm_start"]
    lines = [f"# RLHF vs RA-RLHF: {len(res['runs'])} runs", "",
             f"Command: `{res.get('command', 'bin/study')}`; {res.get('seconds_all_runs', float('nan')) / 60:.1f} min "
             "of runs in all.", "",
             "## Per arm: mean over seeds [95% t-interval]", "", study.arm_table(main_arms, metrics), ""]
    if abl_arms:
        lines += ["## Ablation arms: mean over seeds [95% t-interval]", "", study.arm_table(abl_arms, metrics), ""]
    lines += ["## Paired by seed: RA-RLHF − RLHF, mean [bootstrap 95% interval]", "",
              "▲ RA-RLHF better, ▼ worse (higher perplexity is worse), · no detectable difference "
              "(the interval contains 0).", "", study.paired_table(res["paired"], metrics), "",
              "## Mechanism: after the warm start (iterations m > n), mean over seeds [95% t-interval]", "",
              "| arm | tail share of kept episodes | tail share of the batch | batch tail reward |",
              "|---|---|---|---|"]
    cell = lambda d: study._cell(d) if d else ""  # noqa: E731
    for arm, w in win.items():
        lines.append(f"| {arm} | {cell(w['risk/kept_tail_frac'])} | {cell(w['risk/tail_frac'])} | "
                     f"{cell(w['env/tail_reward_mean'])} |")
    lines += ["", "![metrics](study.png)", "", "![mechanism](mechanism.png)", ""]
    (out / "study.md").write_text("\n".join(lines))
    (out / "study.json").write_text(json.dumps(_jsonable(res), indent=1) + "\n")
    per_arm: dict[str, dict[str, list]] = {}
    for r in res["runs"]:
        lab = _label(r["setting"], r["arm"])
        for m, v in r["metrics"].items():
            per_arm.setdefault(lab, {}).setdefault(m, []).append(v)
        if r["setting"] == study.MAIN and r["arm"] == "rlhf":
            for m, v in r["init"].items():
                per_arm.setdefault("init", {}).setdefault(m, []).append(v)
    order = ["init"] + [k for k in per_arm if k != "init"]
    shown = [m for m in ("reward", "tail", "CVaR@0.1", "ground_truth tail", "ground_truth CVaR@0.1", "R̄",
                         "perplexity", "CVaR@0.05", "ground_truth") if m in metrics]
    study.plot_metrics(out / "study.png", {k: per_arm[k] for k in order}, shown)
    main_curves = {k: v for k, v in res["mechanism"].items() if "/" not in k}
    first = next((r for r in res["runs"] if r["setting"] == study.MAIN), None)
    end = None if first is None else math.ceil(first["risk_rho"] * first["risk_M"])  # where α′ reaches ⌈αB⌉
    study.plot_mechanism(out / "mechanism.png", main_curves, n=first["risk_n"] if first else None, end=end)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x


if __name__ == "__main__":
    sys.exit(main())
