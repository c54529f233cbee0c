"""``bin/study``: RLHF vs RA-RLHF over several seeds, side by side (``python -m rajax.cli.study``).

    bin/study --task rtp --seeds 4 56 92 --out runs/study-rtp -- --policy runs/sft-rtp

Runs ``bin/train`` for the RLHF baseline (α = 1) and for RA-RLHF (the preset's α, or ``--alpha``) for
each seed, each with its end-of-run evaluation, then writes ``study.md`` / ``study.json`` in ``--out``:
mean ± sample std over seeds of every column of ``rajax.study.row``, plus the starting policy's row.
Extra arguments after ``--`` go to every ``bin/train`` call.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

from rajax import study, tasks
from rajax.cli import common, train
from rajax.core.errors import InvalidInput, train_command

# bin/train flags that would give the two arms different settings (or clash with the study's own).
ARM_FLAGS = ("--alpha", "--risk", "--seed", "--out", "--resume", "--overwrite", "--task")
ARM_KEYS = ("risk.alpha", "train.seed")


def check_train_args(train_args) -> None:
    """Refuse extra bin/train arguments that would change one arm of the comparison and not the other."""
    for i, a in enumerate(train_args):
        flag = a.split("=", 1)[0]
        if flag in ARM_FLAGS:
            raise InvalidInput(f"{flag} after -- would change one arm of the study (or the study's own runs); "
                               f"use bin/study {'--alpha' if flag in ('--alpha', '--risk') else '--seeds / --out / --task'}"
                               " instead")
        value = a.split("=", 1)[1] if a.startswith("--set=") else (train_args[i + 1] if a == "--set" and
                                                                     i + 1 < len(train_args) else "")
        if any(value.startswith(k + "=") for k in ARM_KEYS):
            raise InvalidInput(f"--set {value} after -- would change one arm of the study; use bin/study "
                               "--alpha / --seeds instead")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bin/study", description=__doc__.split("\n")[0])
    ap.add_argument("--task", default=tasks.default_preset())
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--alpha", type=float, help="RA-RLHF risk level (default: the preset's)")
    ap.add_argument("--out", default="runs/study")
    ap.add_argument("train_args", nargs="*", help="extra bin/train arguments (after --)")
    args = ap.parse_args(argv)
    return common.guard(lambda: _main(args))


def _main(args) -> int:
    check_train_args(args.train_args)
    out = pathlib.Path(args.out)
    methods = {"rlhf": ["--alpha", "1.0"], "ra-rlhf": [] if args.alpha is None else ["--alpha", str(args.alpha)]}
    results: dict[str, list[dict]] = {"init": []}
    for method, flags in methods.items():
        results[method] = []
        for seed in args.seeds:
            run = out / f"{method}-s{seed}"
            argv_ = ["--task", args.task, "--seed", str(seed), "--out", str(run), "--quiet", *flags,
                     *args.train_args]
            print(f"== {method} seed {seed}: {train_command()} {' '.join(argv_)}", flush=True)
            rc = train.main(argv_)
            if rc != 0:
                common.error_line(f"the {method} run for seed {seed} failed (exit {rc}); see above")
                return rc
            metrics = json.loads((run / "eval" / "metrics.json").read_text())["policies"]
            trained = [k for k in metrics if k != "init"][0]
            results[method].append(study.row(metrics[trained]))
            if method == "rlhf":
                results["init"].append(study.row(metrics["init"]))
    md = study.table(results)
    (out / "study.md").write_text(
        f"# RLHF vs RA-RLHF on `{args.task}`, seeds {args.seeds}\n\n{md}\n\n"
        "Mean ± sample std over seeds; each run evaluates one sample per test prompt.\n")
    (out / "study.json").write_text(json.dumps(results, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
