"""``bin/sft``: supervised fine-tuning on a task's texts, the paper's SFT step (``python -m rajax.cli.sft``).

``run_sft`` loads the task's SFT texts and the initial policy, trains with ``rajax.sft.train_lm``
(TRL SFTTrainer's recipe, docs/paper.md §3 and quirk #16) and saves an HF-format checkpoint.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

import jax

from rajax import config as config_lib
from rajax import tasks
from rajax.io import hf
from rajax.io.tokenizer import load_tokenizer
from rajax.sft import steps_per_epoch, tokenize_for_sft, train_lm


def run_sft(
    task,
    *,
    policy: str | None = None,
    out: str,
    data: str | None = None,
    epochs: int = 10,
    lr: float = 1e-5,
    batch: int = 1024,
    micro_batch: int = 64,
    max_tokens: int = 64,
    seed: int = 0,
    tokenizer=None,
    texts: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
    log_fn: Callable[[int, dict], None] | None = None,
) -> str:
    """SFT of ``policy`` on the task's SFT texts (docs/paper.md §3), saved as an HF checkpoint in ``out``.

    ``task`` is a task name / YAML path (loaded with ``rajax.config.load_config``) or a ``Config``.
    ``policy`` defaults to the config's ``model.policy``; ``data`` sets ``data.path``. ``texts``
    bypasses the task's data loader. ``batch`` is the effective batch: ``grad_accum = batch //
    micro_batch``. Returns ``out``.
    """
    if batch < micro_batch or batch % micro_batch:
        raise ValueError(f"--batch ({batch}) must be a positive multiple of --micro-batch ({micro_batch})")
    ovr = list(overrides)
    if data is not None:
        ovr.append(f"data.path={data}")
    if policy is not None:
        ovr.append(f"model.policy={policy}")
    if isinstance(task, str):
        cfg = config_lib.load_config(task, None, ovr)
    else:
        cfg = config_lib.load_config(task, None, ovr) if ovr else task
    cfg, task = tasks.prepare(cfg, require=(), progress=progress, check_hub=False)
    policy = cfg.model.policy
    tok_name = cfg.model.tokenizer or policy
    if tokenizer is None:
        tokenizer = load_tokenizer(tok_name, padding_side="right", what="--tokenizer")
    if texts is None:
        texts = task.load(cfg, tokenizer, require=()).sft_texts
    ids, attn, labels = tokenize_for_sft(tokenizer, texts, max_tokens)
    mcfg, params = hf.load(policy, value_head_seed=seed, what="--policy")
    if ids.shape[1] > mcfg.context_length:
        raise ValueError(f"--max-tokens {max_tokens} exceeds the model's context of {mcfg.context_length}")
    print(f"sft: {len(ids)} texts, <= {ids.shape[1]} tokens, {epochs} epochs, effective batch {batch} "
          f"({micro_batch} x {batch // micro_batch}), "
          f"{epochs * steps_per_epoch(len(ids), micro_batch, batch // micro_batch)} optimizer steps, "
          f"{jax.device_count()} device(s)", file=sys.stderr)
    t0 = time.time()
    params = train_lm(mcfg, params, ids, attn, epochs=epochs, lr=lr, micro_batch=micro_batch,
                      grad_accum=batch // micro_batch, seed=seed, dropout=getattr(mcfg, "dropout", 0.0) > 0,
                      progress=progress, log_fn=log_fn, label_mask=labels)
    hf.save(out, mcfg, params, tokenizer=tokenizer)
    print(f"sft: saved {out} ({time.time() - t0:.0f} s)", file=sys.stderr)
    return out


def _parser():
    p = argparse.ArgumentParser(prog="bin/sft", description="Supervised fine-tuning of a causal LM on a task's "
                                "texts (the paper's SFT step); saves an HF-format checkpoint.")
    p.add_argument("--task", required=True, help=f"{' | '.join(config_lib.list_presets())}, or a config YAML")
    p.add_argument("--policy", default=None, help="initial model: hub id or local dir (default: the task's model.policy)")
    p.add_argument("--data", default=None, help="local data file/dir (sets data.path)")
    p.add_argument("--out", default=None, help="output dir (default: runs/sft-<task>)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--batch", type=int, default=1024, help="effective batch (micro-batch x accumulation)")
    p.add_argument("--micro-batch", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64, help="right-truncate each text to this many tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. data.source=file (repeatable)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = args.out or f"runs/sft-{str(args.task).replace('/', '_').removesuffix('.yaml')}"
    try:
        run_sft(args.task, policy=args.policy, out=out, data=args.data, epochs=args.epochs, lr=args.lr,
                batch=args.batch, micro_batch=args.micro_batch, max_tokens=args.max_tokens, seed=args.seed,
                overrides=args.set, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
