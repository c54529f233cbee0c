"""``bin/train``: RA-RLHF / RLHF fine-tuning from the command line (``python -m rajax.cli.train``).

Resolves the config (preset < ``--config`` < flags < ``--set``), runs ``rajax.trainer.Trainer``,
exports the policy, draws the curves and evaluates. User mistakes end in one ``error:`` line, exit 2.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax

from rajax import config as config_lib
from rajax import evaluation, tasks
from rajax.io import tracking
from rajax.trainer import CheckpointError, NonFinite, Trainer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bin/train", description="RA-RLHF / RLHF fine-tuning of a causal LM (rajax).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", default=tasks.default_preset(),
                   help=f"{' | '.join(config_lib.list_presets())}, or a preset YAML path")
    p.add_argument("--config", help="a YAML file whose values override the task preset")
    p.add_argument("--alpha", type=float, help="risk level α in (0, 1]; 1.0 = the RLHF baseline")
    p.add_argument("--risk", choices=["cvar", "none"], help="none = the RLHF baseline (same as --alpha 1)")
    p.add_argument("--risk-n", type=int, help="soft-risk warm start n (iterations at full batch)")
    p.add_argument("--risk-rho", type=float, help="soft-risk ρ: α′ reaches ⌈αB⌉ at iteration ⌈ρM⌉")
    p.add_argument("--risk-M", type=int, help="soft-risk horizon M (default: the run's iterations)")
    p.add_argument("--policy", help="initial policy: hub id or local dir (the paper: the task's SFT model)")
    p.add_argument("--ref-policy", help="frozen reference policy (default: --policy)")
    p.add_argument("--reward-model", help="reward classifier: hub id or local dir")
    p.add_argument("--tokenizer", help="tokenizer (default: the policy's)")
    p.add_argument("--data", help="training data: hub dataset id or local file/dir")
    p.add_argument("--test-path", help="test set file (jigsaw: the jigsaw_gen_test.csv format)")
    p.add_argument("--out", help="run directory (default: runs/<task>-<alpha>-s<seed>)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR exactly where it stopped")
    p.add_argument("--seed", type=int)
    p.add_argument("--iterations", type=int, help="number of iterations (default: one pass over the data)")
    p.add_argument("--batch-size", type=int,
                   help="episodes per iteration; also the PPO minibatch unless --set ppo.mini_batch_size=...")
    p.add_argument("--lr", type=float, help="PPO learning rate")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="compute dtype")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config value, e.g. --set ppo.cliprange=0.1 (repeatable)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("multi-host (one process per host, started by your launcher)")
    g.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() first")
    g.add_argument("--coordinator", help="host:port of process 0 (when not detected)")
    g.add_argument("--num-processes", type=int)
    g.add_argument("--process-id", type=int)
    return p


def config_from_args(args):
    over = list(args.set)
    flag_map = {
        "alpha": "risk.alpha", "risk_n": "risk.n", "risk_rho": "risk.rho", "risk_M": "risk.M",
        "policy": "model.policy", "ref_policy": "model.ref_policy", "reward_model": "reward.model",
        "tokenizer": "model.tokenizer", "data": "data.path", "test_path": "data.test_path",
        "seed": "train.seed", "iterations": "train.iterations", "batch_size": "train.batch_size",
        "lr": "ppo.learning_rate", "dtype": "model.dtype",
    }
    for attr, key in flag_map.items():
        v = getattr(args, attr)
        if v is not None:
            over.append(f"{key}={v}")
    if args.risk == "none":
        over.append("risk.alpha=1.0")
    if args.batch_size is not None and not any(o.startswith("ppo.mini_batch_size=") for o in args.set):
        over.append(f"ppo.mini_batch_size={args.batch_size}")  # the paper: one full-batch minibatch
    return config_lib.load_config(args.task, user_yaml=args.config, overrides=over)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.distributed:
        # Before any JAX computation: joins every process into one global device set (Slurm, Open MPI,
        # k8s and TPU are detected; elsewhere pass --coordinator/--num-processes/--process-id).
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    lead = jax.process_index() == 0
    try:
        if args.resume:
            run_dir = pathlib.Path(args.resume)
            saved = run_dir / "config.yaml"
            if not saved.exists():
                raise FileNotFoundError(f"--resume {run_dir}: no config.yaml there (not a rajax run directory)")
            cfg = config_lib.load_config(str(saved))
            out = run_dir
        else:
            cfg = config_from_args(args)
            out = pathlib.Path(args.out or f"runs/{cfg.task}-a{cfg.risk.alpha:g}-s{cfg.train.seed}")
        trainer = Trainer(cfg, out, progress=not args.quiet, log=print if lead else (lambda *_: None))
        if lead:
            config_lib.dump_yaml(trainer.cfg, out / "config.yaml")
            print(f"run directory: {out}\n--- resolved config ---\n{(out / 'config.yaml').read_text()}---",
                  flush=True)
        summary = trainer.run(resume=bool(args.resume))
    except (ValueError, FileNotFoundError, NonFinite, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not lead:
        return 130 if summary["interrupted"] else 0
    model_dir = trainer.export()
    tracking.plot_curves(out)
    print(f"exported policy: {model_dir}")
    if summary["interrupted"]:
        print(f"stopped by signal after iteration {summary['iterations_done']}; "
              f"continue with: bin/train --resume {out}")
        return 130
    if summary["finished"] and cfg.train.eval_at_end and not args.no_eval:
        name = "ra-rlhf" if cfg.risk.alpha < 1 else "rlhf"
        res = evaluation.evaluate(
            trainer.cfg, {"init": trainer.cfg.model.policy,
                          name: (trainer.policy, trainer.host_params())},
            out / "eval", reward=trainer.reward, tokenizer=trainer.tokenizer, task_data=trainer.data,
            extra_scorers=trainer.extra_scorers, progress=not args.quiet)
        print(f"evaluation report: {out / 'eval' / 'report.md'}")
        print(json.dumps(res, indent=1, default=float)[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
