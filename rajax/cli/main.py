"""``rajax <command>``: the one console script (and ``python -m rajax``), as ``trl <cmd>`` or ``accelerate``.

    rajax train --task synthetic          rajax evaluate --task rtp --policy ra=runs/x/model
    rajax sft --task rtp                  rajax study --task synthetic --seeds 0 1 2
    rajax export RUN/checkpoints/STEP OUT
"""
from __future__ import annotations

import sys

from rajax import __version__
from rajax.cli import common, evaluate, export, sft, study, train

COMMANDS = {
    "train": (train.main, "RA-RLHF / RLHF fine-tuning"),
    "sft": (sft.main, "supervised fine-tuning on a task's texts (the paper's SFT step)"),
    "evaluate": (evaluate.main, "evaluate policies as in the paper"),
    "study": (study.main, "RLHF vs RA-RLHF over seeds"),
    "export": (export.main, "a training checkpoint as a Hugging Face model directory"),
}


def usage() -> str:
    rows = "\n".join(f"  {name:<9} {text}" for name, (_, text) in COMMANDS.items())
    return f"usage: rajax <command> [options]   (rajax <command> --help)\n\ncommands:\n{rows}\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="")
        return 0 if argv else common.EXIT_USAGE
    if argv[0] == "--version":
        print(f"rajax {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        common.error_line(f"unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}")
        return common.EXIT_USAGE
    return COMMANDS[argv[0]][0](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
