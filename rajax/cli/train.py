"""``bin/train``: RA-RLHF / RLHF fine-tuning from the command line (``python -m rajax.cli.train``).

Resolves the config (preset < ``--config`` < flags < ``--set``), runs ``rajax.trainer.Trainer``,
exports the policy, draws the curves and evaluates. A user mistake ends in one ``rajax: error:``
line and exit status 2; SIGTERM / SIGINT finish the iteration, checkpoint and exit 143 / 130.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax

from rajax import config as config_lib
from rajax import evaluation, tasks
from rajax.cli import common
from rajax.core.errors import InvalidInput
from rajax.io import tracking
from rajax.io.rundir import RunDir
from rajax.trainer import Trainer

# Flags that shape a run. With --resume they would mix two runs, so they are refused; --iterations
# is applied when it does not move the soft-risk schedule (see _resume_config).
RUN_FLAGS = ("task", "config", "alpha", "risk", "risk_n", "risk_rho", "risk_M", "policy", "ref_policy",
             "reward_model", "tokenizer", "data", "test_path", "out", "seed", "batch_size", "lr", "dtype")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bin/train", description="RA-RLHF / RLHF fine-tuning of a causal LM (rajax).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", default=None,
                   help=f"{' | '.join(config_lib.list_presets())}, or a preset YAML path "
                        f"(default: {tasks.default_preset()}, the offline task)")
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
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR exactly where it stopped (its saved "
                                                   "config; only --iterations may change)")
    p.add_argument("--overwrite", action="store_true",
                   help="reuse a non-empty --out: remove what an earlier rajax run wrote there (never other files)")
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
    return config_lib.load_config(args.task or tasks.default_preset(), user_yaml=args.config, overrides=over)


def _resume_config(args, run_dir: pathlib.Path, log):
    """The saved config of the run in ``run_dir``; other flags are refused, except a safe --iterations."""
    given = [f"--{a.replace('_', '-')}" for a in RUN_FLAGS if getattr(args, a) not in (None, False)]
    if args.set:
        given.append("--set")
    if args.overwrite:
        given.append("--overwrite")
    if given:
        raise InvalidInput(f"--resume continues the run in {run_dir} with its saved config; {', '.join(given)} "
                           "would change it (start a new run with --out instead)")
    cfg = config_lib.load_config(str(run_dir / "config.yaml"))
    if args.iterations is not None and args.iterations != cfg.train.iterations:
        if cfg.risk.alpha < 1.0 and cfg.risk.M is None:
            raise InvalidInput("--iterations with --resume would move the soft-risk schedule (risk.M is the run's "
                               "iterations); resume without it, or start a new run")
        log(f"resume: --iterations {args.iterations} applied (the saved config had {cfg.train.iterations})")
        cfg = config_lib.load_config(cfg, overrides=[f"train.iterations={args.iterations}"])
    return cfg


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return common.guard(lambda: _main(args))


def _main(args) -> int:
    if args.distributed:
        # Before any JAX computation: joins every process into one global device set (Slurm, Open MPI,
        # k8s and TPU are detected; elsewhere pass --coordinator/--num-processes/--process-id).
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    lead = jax.process_index() == 0
    log = print if lead else (lambda *_: None)
    if args.resume:
        out = pathlib.Path(args.resume)
        run = RunDir.open(out) if lead else None  # first: the lock stops a second process before anything
        try:
            cfg = _resume_config(args, out, log)
        except BaseException:
            if run is not None:
                run.close()
            raise
    else:
        cfg = config_from_args(args)
        out = pathlib.Path(args.out or f"runs/{cfg.task}-a{cfg.risk.alpha:g}-s{cfg.train.seed}")
        run = RunDir.create(out, cfg_text=config_lib.dump_yaml(cfg), seed=cfg.train.seed,
                            overwrite=args.overwrite) if lead else None
    try:
        trainer = Trainer(cfg, out, run=run, progress=not args.quiet, log=log)
        if lead:
            config_lib.dump_yaml(trainer.cfg, out / "config.yaml")
            run.record(out / "config.yaml")
            print(f"run directory: {out}\n--- resolved config ---\n{(out / 'config.yaml').read_text()}---",
                  flush=True)
        summary = trainer.run(resume=bool(args.resume))
        if not lead:
            return common.exit_code_for(summary["signal"]) if summary["interrupted"] else 0
        model_dir = trainer.export()
        run.record(tracking.plot_curves(out))
        print(f"exported policy: {model_dir}")
        if summary["interrupted"]:
            print(f"stopped by signal after iteration {summary['iterations_done']}; "
                  f"continue with: bin/train --resume {out}")
            return common.exit_code_for(summary["signal"])
        if summary["finished"] and cfg.train.eval_at_end and not args.no_eval:
            name = "ra-rlhf" if cfg.risk.alpha < 1 else "rlhf"
            res = run.replace_dir("eval", lambda d: evaluation.evaluate(
                trainer.cfg, {"init": trainer.cfg.model.policy, name: (trainer.policy, trainer.host_params())},
                d, reward=trainer.reward, tokenizer=trainer.tokenizer, task_data=trainer.data,
                extra_scorers=trainer.extra_scorers, progress=not args.quiet, check_finite=False))
            print(f"evaluation report: {res / 'report.md'}")
            metrics = json.loads((res / "metrics.json").read_text())
            print(json.dumps(metrics, indent=1)[:2000])
            evaluation.check_finite(metrics, where=res)
        return 0
    finally:
        if run is not None:
            run.close()


if __name__ == "__main__":
    sys.exit(main())
