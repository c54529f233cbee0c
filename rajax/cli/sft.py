"""``bin/sft``: supervised fine-tuning on a task's texts, the paper's SFT step (``python -m rajax.cli.sft``).

``run_sft`` loads the task's SFT texts and the initial policy, trains with ``rajax.sft.train_lm``
(TRL SFTTrainer's recipe, docs/paper.md §3 and quirk #16) and saves an HF-format checkpoint.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence

import jax

from rajax import config as config_lib
from rajax import tasks
from rajax.cli import common, options
from rajax.core import parallel
from rajax.core.errors import InvalidInput, NonFinite
from rajax.io import hf
from rajax.io.rundir import RunDir
from rajax.io.tokenizer import check_fits, load_tokenizer
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
    overwrite: bool = False,
) -> str:
    """SFT of ``policy`` on the task's SFT texts (docs/paper.md §3), saved as an HF checkpoint in ``out``.

    ``task`` is a task name / YAML path (loaded with ``rajax.config.load_config``) or a ``Config``.
    ``policy`` defaults to the config's ``model.policy``; ``data`` sets ``data.path``. ``texts``
    bypasses the task's data loader. ``batch`` is the effective batch: ``grad_accum = batch //
    micro_batch``. ``out`` owns what it writes (a manifest and a lock, as a run directory): a non-empty
    ``out`` is refused unless ``overwrite``, which replaces only an earlier SFT's files. Returns ``out``.
    """
    checks = [(math.isfinite(lr) and lr > 0, f"--lr {lr} must be a positive number"),
              (epochs >= 1, f"--epochs {epochs} must be >= 1"), (micro_batch >= 1, f"--micro-batch {micro_batch} must be >= 1"),
              (batch >= micro_batch and batch % micro_batch == 0,
               f"--batch ({batch}) must be a positive multiple of --micro-batch ({micro_batch})"),
              (max_tokens >= 2, f"--max-tokens {max_tokens} must be >= 2"),
              (0 <= seed <= config_lib.SEED_LIMIT, f"--seed {seed} must be an integer in [0, {config_lib.SEED_LIMIT}]")]
    for ok, msg in checks:
        if not ok:
            raise InvalidInput(msg)
    ovr = list(overrides)
    if data is not None:
        ovr.append(f"data.path={data}")
    if policy is not None:
        ovr.append(f"model.policy={policy}")
    if isinstance(task, str):
        cfg = config_lib.load_config(task, None, ovr)
    else:
        cfg = config_lib.load_config(task, None, ovr) if ovr else task
    # Validate, then act: --out is checked before anything loads, and taken (locked, an earlier
    # SFT's files replaced) only once the new model is trained and finite.
    plan = RunDir.prepare(out, overwrite=overwrite, entries=(), kind="sft", flag="--out")
    cfg, task = tasks.prepare(cfg, require=(), progress=progress, check_hub=False)
    policy = cfg.model.policy
    tok_name = cfg.model.tokenizer or policy
    if tokenizer is None:
        tokenizer = load_tokenizer(tok_name, padding_side="right",
                                   what="--tokenizer" if cfg.model.tokenizer else "--policy")
    if texts is None:
        texts = task.load(cfg, tokenizer, require=()).sft_texts
    ids, attn, labels = tokenize_for_sft(tokenizer, texts, max_tokens)
    mcfg, params = hf.load(policy, value_head_seed=seed, what="--policy")
    check_fits(tokenizer, mcfg.vocab_size, tokenizer_name=tok_name, model_name=policy)
    if not bool(parallel.all_finite(params)):
        raise NonFinite(f"--policy {policy} has non-finite parameters")
    if ids.shape[1] > mcfg.context_length:
        raise InvalidInput(f"--max-tokens {max_tokens} exceeds the model's context of {mcfg.context_length}")
    print(f"sft: {len(ids)} texts, <= {ids.shape[1]} tokens, {epochs} epochs, effective batch {batch} "
          f"({micro_batch} x {batch // micro_batch}), "
          f"{epochs * steps_per_epoch(len(ids), micro_batch, batch // micro_batch)} optimizer steps, "
          f"{jax.device_count()} device(s)", file=sys.stderr)
    t0 = time.time()
    params = train_lm(mcfg, params, ids, attn, epochs=epochs, lr=lr, micro_batch=micro_batch,
                      grad_accum=batch // micro_batch, seed=seed, dropout=getattr(mcfg, "dropout", 0.0) > 0,
                      progress=progress, log_fn=log_fn, label_mask=labels)
    if not bool(parallel.all_finite(params)):
        raise NonFinite("the SFT parameters are non-finite; nothing was saved; lower the learning rate")
    run = plan.take(cfg_text=config_lib.dump_yaml(cfg), seed=seed)
    try:
        run.publish(lambda d: hf.save(d, mcfg, params, tokenizer=tokenizer, value_head="initial", source=policy))
    finally:
        run.close()
    print(f"sft: saved {out} ({time.time() - t0:.0f} s)", file=sys.stderr)
    return out


# --lr, --seed and --batch-size are SFT's own here (its optimiser and its shuffle), not the PPO run's.
SFT_ALIASES = {k: v for k, v in options.ALIASES.items() if k not in ("--lr", "--seed", "--batch-size")}


def _parser(argv=()):
    preset = options.preset_for(list(argv))
    p = common.Parser(prog="rajax sft", allow_abbrev=False,
                                description="Supervised fine-tuning of a causal LM on a task's texts (the paper's "
                                            "SFT step); saves an HF-format checkpoint.")
    p.add_argument("--task", required=True, help=f"{' | '.join(config_lib.list_presets())}, or a config YAML")
    p.add_argument("--out", default=None, help="output dir (default: runs/sft-<task>)")
    p.add_argument("--config", default=None, help="a user YAML applied over the task preset")
    p.add_argument("--epochs", type=int, default=10, help="passes over the SFT texts")
    p.add_argument("--lr", type=float, default=1e-5, help="peak learning rate (linear decay to 0)")
    p.add_argument("--batch", type=int, default=1024, help="effective batch (micro-batch x accumulation)")
    p.add_argument("--micro-batch", type=int, default=64, help="texts per forward/backward pass")
    p.add_argument("--max-tokens", type=int, default=64, help="right-truncate each text to this many tokens")
    p.add_argument("--seed", type=int, default=0, help="shuffle, dropout and value-head seed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. data.source=file (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier SFT's files in a non-empty --out")
    p.add_argument("--no-progress", action="store_true")
    options.add_config_flags(p, preset, aliases=SFT_ALIASES)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser(argv).parse_args(argv)
    out = args.out or f"runs/sft-{str(args.task).replace('/', '_').removesuffix('.yaml')}"

    def body():
        over = list(args.set) + options.overrides(args)
        options.check_choices(over)
        cfg = config_lib.load_config(args.task, args.config, over)
        run_sft(cfg, out=out, epochs=args.epochs, lr=args.lr, batch=args.batch, micro_batch=args.micro_batch,
                max_tokens=args.max_tokens, seed=args.seed, progress=not args.no_progress, overwrite=args.overwrite)
        return 0

    return common.guard(body)


if __name__ == "__main__":
    sys.exit(main())
