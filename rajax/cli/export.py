"""``rajax export``: a training checkpoint (any step) as a Hugging Face model directory.

    rajax export runs/rtp-a0.2-s4/checkpoints/150 runs/rtp-step150   # one step
    rajax export runs/rtp-a0.2-s4 runs/rtp-latest                    # the run's newest checkpoint

The directory loads in transformers (``AutoModelForCausalLM``) and in TRL's
``AutoModelForCausalLMWithValueHead`` (the value head is in ``model.safetensors`` under TRL's keys),
and ``rajax evaluate --policy NAME=DIR`` takes it. ``--policy NAME=RUN/checkpoints/STEP`` works too.
"""
from __future__ import annotations

import argparse
import sys

from rajax.cli import common
from rajax.core import parallel
from rajax.core.errors import NonFinite
from rajax.io import export, hf
from rajax.io.rundir import RunDir
from rajax.io.tokenizer import load_tokenizer


def main(argv=None) -> int:
    p = common.Parser(prog="rajax export", description=__doc__.split("\n")[0])
    p.add_argument("source", help="RUN/checkpoints/STEP, or a run directory (its newest checkpoint)")
    p.add_argument("out", help="the model directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export's files in a non-empty OUT")
    args = p.parse_args(argv)
    return common.guard(lambda: _main(args))


def _main(args) -> int:
    # Validate, then act: the source is read and checked and OUT is checked before OUT is created,
    # locked or changed; a refused export leaves no file behind (no lock, no manifest).
    step = export.checkpoint_of(args.source)
    cfg, params, step = export.policy_from_checkpoint(step, what="source", log=print, with_step=True)
    if not bool(parallel.all_finite(params)):
        raise NonFinite(f"{step}: the checkpoint's parameters are non-finite; nothing was exported")
    tok_src = export.tokenizer_source(step)
    tok = load_tokenizer(tok_src, what="the run's tokenizer") if tok_src else None
    plan = RunDir.prepare(args.out, overwrite=args.overwrite, entries=(), kind="export", flag="OUT")
    run = plan.take(cfg_text=str(step), seed=0)
    try:
        source = (export.run_config(step).get("model") or {}).get("policy")  # ids the tokenizer lacks
        run.publish(lambda d: hf.save(d, cfg, params, tokenizer=tok, source=source))
    finally:
        run.close()
    print(f"exported {step} ({cfg.describe()}) to {args.out}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
