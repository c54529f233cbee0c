"""``bin/evaluate``: evaluate policies as in the paper (``python -m rajax.cli.evaluate``).

    bin/evaluate --task rtp --policy sft=runs/sft-rtp --policy ra-rlhf=runs/rtp-a0.2-s4/model
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
from collections.abc import Sequence

import jax

from rajax import config as config_lib
from rajax import evaluation
from rajax.cli import common
from rajax.core.errors import InvalidInput
from rajax.evaluation import evaluate, report
from rajax.io.rundir import RunDir


def parse_policy(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` (or a bare PATH, named after its last path component)."""
    if "=" in spec:
        name, path = spec.split("=", 1)
    else:
        path = spec
        name = os.path.basename(os.path.normpath(spec)) or spec
    name, path = name.strip(), path.strip()
    if not name or not path:
        raise InvalidInput(f"--policy expects NAME=PATH, got {spec!r}")
    return name, path


def _parser():
    p = argparse.ArgumentParser(prog="bin/evaluate", description="Evaluate policies as in the paper: "
                                "rewards, tail, CVaR, perplexity, figures and a report.")
    p.add_argument("--task", required=True, help=f"{' | '.join(config_lib.list_presets())}, or a config YAML")
    p.add_argument("--policy", action="append", required=True, metavar="NAME=PATH",
                   help="a policy to evaluate (repeatable), e.g. --policy sft=runs/sft --policy ra=runs/ra/final")
    p.add_argument("--reward-model", default=None, help="reward classifier dir or hub id (sets reward.model)")
    p.add_argument("--data", default=None, help="local data file/dir (sets data.path)")
    p.add_argument("--test-path", default=None, help="local test file (sets data.test_path)")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir or hub id (sets model.tokenizer)")
    p.add_argument("--test-size", type=int, default=None, help="use the first N test prompts (sets eval.test_size)")
    p.add_argument("--out", default=None, help="output dir (default: runs/eval-<task>)")
    p.add_argument("--config", default=None, help="a user YAML applied over the task preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: train.seed)")
    p.add_argument("--ref", default=None, metavar="NAME",
                   help="the policy that is the KL reference of R̄ (default: the first --policy)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return common.guard(lambda: _main(args))


def _main(args) -> int:
    ovr = []
    for flag, k in (("reward_model", "reward.model"), ("data", "data.path"), ("test_path", "data.test_path"),
                    ("tokenizer", "model.tokenizer"), ("test_size", "eval.test_size")):
        v = getattr(args, flag)
        if v is not None:
            ovr.append(f"{k}={v}")
    ovr += list(args.set)
    cfg = config_lib.load_config(args.task, args.config, ovr)
    policies = dict(parse_policy(s) for s in args.policy)
    if len(policies) != len(args.policy):
        raise InvalidInput("two --policy entries have the same NAME")
    out = pathlib.Path(args.out or f"runs/eval-{cfg.task}")
    key = None if args.seed is None else jax.random.key(args.seed)
    # The output directory owns what it wrote: a re-run replaces its own files, never a user's.
    run = RunDir.create(out, cfg_text=config_lib.dump_yaml(cfg), seed=cfg.train.seed, overwrite=True,
                        entries=report.FILES, kind="evaluate")
    got = {}
    try:
        run.publish(lambda d: got.update(m=evaluate(cfg, policies, d, key=key, progress=not args.no_progress,
                                                     ref=args.ref, check_finite=False)))
    finally:
        run.close()
    print(evaluation.metrics_table(got["m"]))
    print(f"wrote {out / 'report.md'}", file=sys.stderr)
    evaluation.check_finite(got["m"], where=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

