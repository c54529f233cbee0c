"""``bin/train``: RA-RLHF / RLHF fine-tuning from the command line (``python -m rajax.cli.train``).

Resolves the config (preset < ``--config`` < ``--set`` < flags), runs ``rajax.trainer.Trainer``,
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
from rajax.cli import common, options
from rajax.core.errors import InvalidInput, train_command
from rajax.io import tracking
from rajax.io.rundir import RunDir
from rajax.trainer import Trainer

TRAIN_ALIASES = options.ALIASES  # every short flag applies to training


def build_parser(argv=None) -> argparse.ArgumentParser:
    """The parser, with one flag per config key whose help shows the selected preset's values."""
    preset = options.preset_for(argv or [])
    p = common.Parser(
        prog="rajax train", allow_abbrev=False,
        description="RA-RLHF / RLHF fine-tuning of a causal LM (rajax). Values: preset < --config < --set < flags.")
    p.add_argument("--task", default=None,
                   help=f"{' | '.join(config_lib.list_presets())}, or a preset YAML path "
                        f"(default: {tasks.default_preset()}, the offline task)")
    p.add_argument("--config", help="a YAML file whose values override the task preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config value, e.g. --set ppo.cliprange=0.1 (repeatable; a flag for the same key wins)")
    p.add_argument("--risk", choices=["cvar", "none"], help="none = the RLHF baseline (the same as --alpha 1)")
    p.add_argument("--out", help="run directory (default: runs/<task>-a<alpha>-s<seed>)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR exactly where it stopped (its saved "
                                                   "config; only --iterations may change)")
    p.add_argument("--overwrite", action="store_true",
                   help="reuse a non-empty --out: remove what an earlier rajax run wrote there (never other files)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end")
    p.add_argument("--print-config", action="store_true", help="print the resolved config (YAML) and exit")
    p.add_argument("--report-to", default="tensorboard", metavar="LIST",
                   help="where metrics go besides metrics.jsonl: tensorboard, wandb or none (comma-separated)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    p.add_argument("--verbose", action="store_true", help="print the whole resolved config at the start")
    g = p.add_argument_group("multi-host (one process per host, started by your launcher)")
    g.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() first")
    g.add_argument("--coordinator", help="host:port of process 0 (when not detected)")
    g.add_argument("--num-processes", type=int)
    g.add_argument("--process-id", type=int)
    options.add_config_flags(p, preset, aliases=TRAIN_ALIASES)
    return p


def config_from_args(args):
    """preset (``--task``) < ``--config`` < ``--set`` < config flags (a flag wins over ``--set``)."""
    over = list(args.set) + options.overrides(args)
    if args.risk == "none":
        over.append("risk.alpha=1.0")
    minibatch_given = getattr(args, "ppo.mini_batch_size") is not None or any(
        o.startswith("ppo.mini_batch_size=") for o in args.set)
    if getattr(args, "train.batch_size") is not None and not minibatch_given:
        over.append(f"ppo.mini_batch_size={getattr(args, 'train.batch_size')}")  # the paper: one full-batch minibatch
    options.check_choices(over)
    return config_lib.load_config(args.task or tasks.default_preset(), user_yaml=args.config, overrides=over)


def _resume_config(args, run_dir: pathlib.Path, log):
    """The saved config of the run in ``run_dir``; other flags are refused, except a safe --iterations."""
    given = [options.typed_flag(getattr(args, "argv", ()), k) for k in options.keys()[1:]
             if k != "train.iterations" and getattr(args, k) is not None]
    given += [f"--{a.replace('_', '-')}" for a in ("task", "config", "risk", "out") if getattr(args, a)]
    given += ["--set"] * bool(args.set) + ["--overwrite"] * bool(args.overwrite)
    if given:
        raise InvalidInput(f"--resume continues the run in {run_dir} with its saved config; {', '.join(given)} "
                           "would change it (start a new run with --out instead)")
    cfg = config_lib.load_config(str(run_dir / "config.yaml"))
    iterations = getattr(args, "train.iterations")
    if iterations is not None:
        iterations = config_lib._coerce(iterations, int, "--iterations")
    if iterations is not None and iterations != cfg.train.iterations:
        if cfg.risk.alpha < 1.0 and cfg.risk.M is None:
            raise InvalidInput("--iterations with --resume would move the soft-risk schedule (risk.M is the run's "
                               "iterations); resume without it, or start a new run")
        log(f"resume: --iterations {iterations} applied (the saved config had {cfg.train.iterations})")
        cfg = config_lib.load_config(cfg, overrides=[f"train.iterations={iterations}"])
    return cfg


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    args.argv = argv
    return common.guard(lambda: _main(args))


def _summary_lines(trainer, out: pathlib.Path) -> list[str]:
    """A few lines that say what is about to run (the whole config: --verbose, or config.yaml)."""
    c = trainer.cfg
    ref = c.model.ref_policy or "the same"
    method = "RLHF (α′ = B)" if c.risk.alpha >= 1 else (
        f"RA-RLHF, α {c.risk.alpha:g} (n {c.risk.n}, ρ {c.risk.rho:g}, M {trainer.risk_M})")
    return [
        f"run: {out}  (task {c.task}; every setting: {out / 'config.yaml'})",
        f"policy: {trainer.policy.describe()}  {c.model.policy}",
        f"reference: {ref}   reward: {c.reward.fn or f'{c.reward.model} ({c.reward.kind})'}",
        f"method: {method}; {trainer.iterations} iterations of {c.train.batch_size}, PPO lr {c.ppo.learning_rate:g}, "
        f"{c.ppo.ppo_epochs} epochs",
    ]


def _main(args) -> int:
    if args.distributed:
        # Before any JAX computation: joins every process into one global device set (Slurm, Open MPI,
        # k8s and TPU are detected; elsewhere pass --coordinator/--num-processes/--process-id).
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    lead = jax.process_index() == 0
    log = print if lead else (lambda *_: None)
    report_to = common.report_targets(args.report_to)
    if args.print_config:
        cfg = _resume_config(args, pathlib.Path(args.resume), lambda *_: None) if args.resume else config_from_args(args)
        print(config_lib.dump_yaml(cfg), end="")
        return 0
    tracking.check_targets(report_to)  # before the run directory is made and anything is loaded
    # Validate, then act: the run directory is checked first (a second process, a non-empty --out),
    # and it is created, locked or cleared only after the config, models and data have loaded
    # (inside Trainer), so a refused command leaves every file as it was.
    if args.resume:
        out = pathlib.Path(args.resume)
        if lead:
            RunDir.prepare(out, resume=True)
        cfg = _resume_config(args, out, log)
    else:
        cfg = config_from_args(args)
        out = pathlib.Path(args.out or f"runs/{cfg.task}-a{cfg.risk.alpha:g}-s{cfg.train.seed}")
        if lead:
            RunDir.prepare(out, overwrite=args.overwrite)
    run = None
    try:
        log(common.runtime_line())
        trainer = Trainer(cfg, out, resume=bool(args.resume), overwrite=args.overwrite, progress=not args.quiet,
                          log=log, report_to=report_to)
        run = trainer.run_dir
        if lead:  # the trainer wrote config.yaml
            print("\n".join(_summary_lines(trainer, out)), flush=True)
            if args.verbose:
                print(f"--- resolved config ---\n{(out / 'config.yaml').read_text()}---", flush=True)
        summary = trainer.run(resume=bool(args.resume))
        if not lead:
            return common.exit_code_for(summary["signal"]) if summary["interrupted"] else 0
        done = trainer.finish(evaluate=bool(summary["finished"] and cfg.train.eval_at_end and not args.no_eval
                                            and not summary["interrupted"]), progress=not args.quiet)
        model_dir, curves, res = done["model"], done["curves"], done["eval"]
        if summary["interrupted"]:
            print(f"stopped by signal after iteration {summary['iterations_done']}; model: {model_dir}; "
                  f"continue with: {train_command()} --resume {out}")
            return common.exit_code_for(summary["signal"])
        if res is not None:
            metrics = json.loads((res / "metrics.json").read_text())
            print(f"\n{(res / 'metrics.md').read_text().rstrip()}\n")
            print(f"report: {res / 'report.md'}\ncurves: {curves}\nmodel:  {model_dir}")
            evaluation.check_finite(metrics, where=res)
        else:
            print(f"curves: {curves}\nmodel:  {model_dir}")
        return 0
    finally:
        if run is not None:
            run.close()


if __name__ == "__main__":
    sys.exit(main())
