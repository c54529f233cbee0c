"""``bin/evaluate``: evaluate policies as in the paper (``python -m rajax.cli.evaluate``).

    bin/evaluate --task rtp --policy sft=runs/sft-rtp --policy ra-rlhf=runs/rtp-a0.2-s4/model
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Sequence

from rajax import config as config_lib
from rajax import evaluation
from rajax.cli import common, options
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


EVAL_ALIASES = {k: v for k, v in options.ALIASES.items() if k != "--policy"}  # --policy names policies here


def _parser(argv=()):
    preset = options.preset_for(list(argv))
    p = common.Parser(prog="rajax evaluate", allow_abbrev=False,
                                description="Evaluate policies as in the paper: rewards, tail, CVaR, R̄, perplexity, "
                                            "figures and a report. Values: preset < --config < --set < flags.")
    p.add_argument("--task", required=True, help=f"{' | '.join(config_lib.list_presets())}, or a config YAML")
    p.add_argument("--policy", action="append", required=True, metavar="NAME=PATH",
                   help="a policy to evaluate (repeatable): a model directory, a hub id, or a run's checkpoint "
                        "RUN/checkpoints/STEP, e.g. --policy sft=runs/sft --policy ra=runs/ra/model")
    p.add_argument("--out", default=None, help="output dir (default: runs/eval-<task>)")
    p.add_argument("--config", default=None, help="a user YAML applied over the task preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (repeatable; a flag for the same key wins)")
    p.add_argument("--ref", default=None, metavar="NAME",
                   help="the policy that is the KL reference of R̄ (default: the first --policy)")
    p.add_argument("--no-progress", action="store_true")
    options.add_config_flags(p, preset, aliases=EVAL_ALIASES)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser(argv).parse_args(argv)
    return common.guard(lambda: _main(args))


def _main(args) -> int:
    ovr = list(args.set) + options.overrides(args)
    options.check_choices(ovr)
    cfg = config_lib.load_config(args.task, args.config, ovr)
    policies = dict(parse_policy(s) for s in args.policy)
    if len(policies) != len(args.policy):
        raise InvalidInput("two --policy entries have the same NAME")
    out = pathlib.Path(args.out or f"runs/eval-{cfg.task}")
    key = None  # the sampling key follows train.seed (--seed)
    # The output directory owns what it wrote: a re-run replaces its own files, never a user's.
    # Validate, then act: --out is checked now, and the evaluation is written to a temporary
    # directory elsewhere; only a finished evaluation takes --out (lock, the earlier files, the new).
    plan = RunDir.prepare(out, overwrite=True, entries=report.FILES, kind="evaluate")
    got = {}
    with tempfile.TemporaryDirectory(prefix="rajax-eval-") as tmp:
        got["m"] = evaluate(cfg, policies, tmp, key=key, progress=not args.no_progress, ref=args.ref,
                            check_finite=False)
        run = plan.take(cfg_text=config_lib.dump_yaml(cfg), seed=cfg.train.seed)
        try:
            run.publish(lambda d: [shutil.copy2(f, d) for f in sorted(pathlib.Path(tmp).iterdir()) if f.is_file()])
        finally:
            run.close()
    print(evaluation.metrics_table(got["m"]))
    print(f"wrote {out / 'report.md'}", file=sys.stderr)
    evaluation.check_finite(got["m"], where=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

