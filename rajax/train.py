"""The RA-RLHF / RLHF training loop (spec §1.2) and the ``bin/train`` command.

Each iteration m (0-based):
  prompts (seeded shuffle, one pass, drop last) -> jitted sampling -> reward on decoded text
  -> jitted policy + reference forward passes -> α′ = soft_risk_level(m) -> jitted PPO step with the
  CVaR mask -> KL controller update -> metrics, samples, checkpoints.

The numeric work lives in pure jitted functions (``rajax.sampling``, ``rajax.ppo``); this module is the
shell around them: files, logging, signals, checkpoints. Randomness is ``fold_in(key(seed), m)`` per
iteration and the data order is a seeded permutation, so a resumed run replays exactly.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import signal
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rajax import config as config_lib
from rajax import kl as kl_lib
from rajax import evaluation, ppo, rewards, risk, sampling, tasks, tracking
from rajax.checkpoint import Checkpointer
from rajax.models import hf
from rajax.tokenizer import load_tokenizer


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    kl_state: Any


class NonFinite(RuntimeError):
    """A non-finite reward, loss or parameter: the run stops without checkpointing it."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written."""


@jax.jit
def _all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def decode_responses(tokenizer, tokens_BxN: np.ndarray, mask_BxN: np.ndarray, *, clean_up: bool = False) -> list[str]:
    """Response text as the original code scored it: cut after the first EOS (kept), special tokens kept."""
    return tasks.decode_all(tokenizer, [t[m > 0] for t, m in zip(tokens_BxN, mask_BxN)], clean_up=clean_up)


class Trainer:
    """Holds the loaded models, data and compiled steps of one run. ``run()`` drives the loop."""

    def __init__(self, cfg, out_dir, *, progress: bool = True, log=print):
        self.log = log
        self.progress = progress
        self.out = pathlib.Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        n_dev = jax.device_count()  # all hosts' devices after jax.distributed.initialize
        if cfg.data.source == "synthetic":
            from rajax import synthetic

            cfg = synthetic.resolve(cfg, progress=progress)
        config_lib.validate(cfg, num_devices=n_dev)
        preflight(cfg)
        self.cfg = cfg
        t0 = time.time()
        tok_src = cfg.model.tokenizer or cfg.model.policy
        self.tokenizer = load_tokenizer(tok_src, padding_side="left")
        self.model_cfg, params = hf.load(cfg.model.policy, value_head_seed=cfg.train.seed, what="--policy")
        self.model_cfg = self.model_cfg.replace(dtype=cfg.model.dtype, remat=cfg.model.remat)
        ref_src = cfg.model.ref_policy or cfg.model.policy
        _, ref_params = hf.load(ref_src, value_head_seed=cfg.train.seed, what="--ref-policy")
        self.reward = build_reward(cfg.reward)
        self.data = tasks.load_task_data(cfg, self.tokenizer)
        self.extra_scorers = {}
        if cfg.data.source == "synthetic":
            from rajax import synthetic

            self.extra_scorers["ground_truth"] = synthetic.ground_truth_score
        b = cfg.train.batch_size
        n_train = len(self.data.train.texts)
        self.iterations = cfg.train.iterations or n_train // b
        if self.iterations < 1 or self.iterations * b > n_train:
            raise ValueError(
                f"{n_train} training prompts give {n_train // b} batches of {b}; "
                f"set --iterations to at most {n_train // b} or lower --batch-size")
        self.risk_M = cfg.risk.M or self.iterations
        if cfg.risk.alpha < 1.0 and cfg.risk.n >= self.risk_M:
            raise ValueError(f"risk.n={cfg.risk.n} must be < risk.M={self.risk_M}; lower --risk-n or raise --risk-M")
        self.order = np.random.default_rng(cfg.train.seed).permutation(n_train)
        self.mesh = ppo.make_mesh()
        self.tx = ppo.make_optimizer(cfg.ppo)
        self.ref_params = ppo.replicate(ref_params, self.mesh)
        params = ppo.replicate(params, self.mesh)
        self.state = TrainState(params, ppo.replicate(self.tx.init(params), self.mesh),
                                ppo.replicate(kl_lib.init(cfg.kl.init_coef), self.mesh))
        self.base_key = jax.random.key(cfg.train.seed)
        self.start = 0
        self.log(f"loaded models and data in {time.time() - t0:.1f}s: GPT-2 "
                 f"{self.model_cfg.n_layer}x{self.model_cfg.n_embd}, {n_train} train prompts, "
                 f"{self.iterations} iterations of {b}, {n_dev} device(s)")

    # --- one iteration -------------------------------------------------------------------------
    def batch_prompts(self, m: int):
        b = self.cfg.train.batch_size
        idx = self.order[m * b:(m + 1) * b]
        ids = [self.data.train.ids[i] for i in idx]
        texts = [self.data.train.texts[i] for i in idx]
        pad = self.tokenizer.pad_token_id
        prompt_ids, prompt_mask = tasks.left_pad(ids, self.cfg.generation.prompt_tokens, pad)
        return np.asarray(prompt_ids), np.asarray(prompt_mask), texts

    def iteration(self, m: int):
        cfg, g = self.cfg, self.cfg.generation
        b = cfg.train.batch_size
        timings = {}
        t = time.perf_counter()
        prompt_ids, prompt_mask, prompt_texts = self.batch_prompts(m)
        key = jax.random.fold_in(self.base_key, m)
        k_sample, k_ppo = jax.random.split(key)
        ids_d, mask_d = ppo.shard_batch((prompt_ids, prompt_mask), self.mesh)
        s = sampling.sample(
            self.model_cfg, self.state.params, ids_d, mask_d, k_sample,
            evaluation.min_new_tokens(prompt_mask, g), g.temperature,
            max_new_tokens=g.max_new_tokens, eos_id=self.tokenizer.eos_token_id,
            pad_id=self.tokenizer.pad_token_id, top_k=g.top_k, top_p=g.top_p,
            dropout=bool(g.rollout_dropout and m > 0))
        # Dispatch the policy/reference passes before the host work: JAX runs them asynchronously,
        # so the device computes them while the host detokenises and the reward model tokenises.
        input_ids, attn = sampling.sequences(ids_d, mask_d, s)
        fwd = ppo.forward_pair(self.model_cfg, self.state.params, self.ref_params, input_ids, attn,
                            prompt_width=g.prompt_tokens)
        tokens, rmask = ppo.to_host((s.tokens, s.mask))
        timings["time/sampling"] = time.perf_counter() - t
        t = time.perf_counter()
        responses = decode_responses(self.tokenizer, tokens, rmask, clean_up=cfg.reward.clean_up_spaces)
        scores = np.asarray(self.reward(prompt_texts, responses), np.float32)
        timings["time/reward"] = time.perf_counter() - t
        if not np.all(np.isfinite(scores)):
            raise NonFinite(f"the reward model returned non-finite scores at iteration {m}")
        t = time.perf_counter()
        logp, values, ref_logp = jax.block_until_ready(fwd)
        timings["time/forward_wait"] = time.perf_counter() - t  # what the overlap did not hide
        alpha_prime = b if cfg.risk.alpha >= 1.0 else risk.soft_risk_level(
            m, batch_size=b, alpha=cfg.risk.alpha, n=cfg.risk.n, rho=cfg.risk.rho, M=self.risk_M,
            scheduler=cfg.risk.scheduler)
        rollout = ppo.Rollout(
            input_ids=input_ids, attention_mask=attn, mask=s.mask, logp=logp, ref_logp=ref_logp,
            values=values, scores=ppo.shard_batch(scores, self.mesh))
        t = time.perf_counter()
        beta = self.state.kl_state.beta
        params, opt_state, stats, keep = ppo.ppo_step(
            self.model_cfg, cfg.ppo, self.state.params, self.state.opt_state, rollout, beta,
            np.int32(alpha_prime), k_ppo)
        stats = {k: float(v) for k, v in ppo.to_host(stats).items()}
        timings["time/ppo"] = time.perf_counter() - t
        bad = [k for k, v in stats.items() if not math.isfinite(v)]
        if bad:
            raise NonFinite(f"non-finite {bad[0]} at iteration {m}")
        if not bool(ppo.to_host(_all_finite(params))):
            raise NonFinite(f"non-finite policy parameters after the PPO update of iteration {m}")
        kl_state = kl_lib.update(
            self.state.kl_state, stats["objective/kl"], target=cfg.kl.target, horizon=cfg.kl.horizon,
            n_steps=b, adaptive=cfg.kl.adaptive)
        self.state = TrainState(params, opt_state, kl_state)
        lengths = rmask.sum(-1)
        metrics = {
            "env/reward_mean": float(scores.mean()),
            "env/reward_std": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0,
            "env/reward_cvar": evaluation.cvar(scores, cfg.risk.alpha if cfg.risk.alpha < 1 else 0.2),
            "tokens/responses_len_mean": float(lengths.mean()),
            **stats,
            "objective/kl_coef": float(beta),
            "risk/alpha_prime": float(alpha_prime),
            **timings,
        }
        for name, fn in self.extra_scorers.items():
            metrics[f"env/{name}_mean"] = float(np.mean(fn([p + r for p, r in zip(prompt_texts, responses)])))
        return metrics, (prompt_texts, responses, scores)

    # --- checkpoints ---------------------------------------------------------------------------
    def _state_tree(self):
        return {"params": self.state.params, "opt_state": self.state.opt_state,
                "kl": self.state.kl_state}

    def save(self, ckpt, m_next: int):
        meta = {"iteration": m_next, "data_position": m_next * self.cfg.train.batch_size,
                "seed": self.cfg.train.seed, "config": config_lib.to_dict(self.cfg)}
        try:
            ckpt.save(m_next, self._state_tree(), meta)
        except OSError as e:  # disk full, permissions: Orbax leaves the previous checkpoint intact
            prev = ckpt.latest_step()
            kept = f"checkpoint {prev} in {ckpt.directory} is intact" if prev is not None else "no earlier checkpoint"
            raise CheckpointError(f"writing checkpoint {m_next} failed ({e.strerror or e}); {kept}") from None

    def restore(self, ckpt):
        tree, meta = ckpt.restore(self._state_tree())
        self.state = TrainState(ppo.replicate(tree["params"], self.mesh),
                                ppo.replicate(tree["opt_state"], self.mesh), ppo.replicate(tree["kl"], self.mesh))
        self.start = int(meta["iteration"])
        return meta

    # --- the loop --------------------------------------------------------------------------------
    def run(self, *, resume: bool = False, stop_after: int | None = None) -> dict:
        cfg = self.cfg
        ckpt = Checkpointer(self.out / "checkpoints", keep=cfg.train.keep_checkpoints)
        if resume and ckpt.latest_step() is not None:
            self.restore(ckpt)
            self.log(f"resumed from {ckpt.directory} at iteration {self.start}")
        lead = jax.process_index() == 0  # in a multi-host run only process 0 writes files
        writer = tracking.MetricsWriter(self.out, start_iteration=self.start) if lead else None
        stop = {"signal": None}

        def on_signal(signum, _frame):
            stop["signal"] = signum  # finish the iteration, checkpoint, exit cleanly

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        end = self.iterations if stop_after is None else min(self.iterations, stop_after)
        bar = None
        if self.progress and lead:
            from tqdm import tqdm

            bar = tqdm(total=self.iterations, initial=self.start, desc="RA-RLHF" if cfg.risk.alpha < 1 else "RLHF",
                       unit="it", dynamic_ncols=True)
        last = {}
        m = self.start
        try:
            while m < end and stop["signal"] is None:
                try:
                    metrics, (p, r, s) = self.iteration(m)
                except NonFinite as e:
                    good = ckpt.latest_step()
                    where = (f"the last good checkpoint is iteration {good} in {ckpt.directory}; resume with "
                             f"bin/train --resume {self.out}") if good is not None else "no checkpoint was written yet"
                    raise NonFinite(f"{e}; stopped, {where}") from None
                if writer is not None:
                    writer.write(m, metrics)
                last = metrics
                if lead and cfg.train.sample_every and (m % cfg.train.sample_every == 0 or m == self.iterations - 1):
                    extra = {k: fn([a + b_ for a, b_ in zip(p, r)]) for k, fn in self.extra_scorers.items()}
                    tracking.write_samples(self.out / "samples" / f"iter_{m:05d}.csv", p, r, s, extra)
                m += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(
                        f"R {metrics['env/reward_mean']:.3f} CVaR {metrics['env/reward_cvar']:.3f} "
                        f"KL {metrics['objective/kl']:.3f} β {metrics['objective/kl_coef']:.3f} "
                        f"α′ {int(metrics['risk/alpha_prime'])}")
                if cfg.train.checkpoint_every and m % cfg.train.checkpoint_every == 0 and m < end:
                    self.save(ckpt, m)
        finally:
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
            for s_, h in old.items():
                signal.signal(s_, h)
        if ckpt.latest_step() != m:
            self.save(ckpt, m)
        ckpt.close()
        summary = {"iterations_done": m, "finished": m >= self.iterations, "last": last,
                   "interrupted": stop["signal"] is not None}
        return summary

    def host_params(self):
        return ppo.to_host(self.state.params)

    def export(self) -> pathlib.Path:
        """The current policy (with value head) in Hugging Face format, plus the tokenizer."""
        path = self.out / "model"
        hf.save(path, self.model_cfg.replace(dtype="float32"), self.host_params(), tokenizer=self.tokenizer)
        return path


def build_reward(rc):
    """The reward of a config's ``reward`` section: the kind's label and sign unless overridden."""
    over = {k: v for k, v in (("label", rc.label), ("index", rc.index), ("sign", rc.sign)) if v is not None}
    return rewards.reward_for_task(rc.kind, rc.model, max_length=rc.max_length, what="--reward-model", **over)


_DATA_EXTS = (".csv", ".json", ".jsonl", ".parquet", ".arrow")


def _looks_local(value: str) -> bool:
    return hf._looks_local(value) or value.endswith(_DATA_EXTS)


def preflight(cfg) -> None:
    """Fail within seconds, in one line: a local path that does not exist, or hub ids while the hub
    cannot be reached."""
    needs = []
    for flag, value in (("--policy", cfg.model.policy), ("--ref-policy", cfg.model.ref_policy),
                        ("--reward-model", cfg.reward.model), ("--tokenizer", cfg.model.tokenizer),
                        ("--data", cfg.data.path), ("--test-path", cfg.data.test_path)):
        if not value or os.path.exists(value):
            continue
        if _looks_local(value) or flag == "--test-path":
            raise FileNotFoundError(f"{flag} {value}: no such file or directory")
        if flag == "--data" or not _in_hf_cache(value):
            needs.append(f"{flag} {value}")
    if cfg.data.source in ("imdb", "rtp") and not cfg.data.path:
        needs.append(f"--data (the hub dataset of {cfg.data.source})")
    if cfg.data.source == "jigsaw" and not cfg.data.path:
        raise ValueError("the Jigsaw task needs the Kaggle CSVs: pass --data DIR (and --test-path CSV)")
    if needs and not _hub_reachable():
        raise ValueError(
            "the Hugging Face hub is unreachable and these need it: " + ", ".join(needs)
            + "; pass local paths with those flags, or run the offline task: bin/train --task synthetic")


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # malformed ids are not cached ids
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    import socket

    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


# --- CLI -------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bin/train", description="RA-RLHF / RLHF fine-tuning of GPT-2 (rajax).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", default="synthetic", help="imdb | jigsaw | rtp | synthetic, or a preset YAML path")
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
                          name: (trainer.model_cfg, trainer.host_params())},
            out / "eval", reward=trainer.reward, tokenizer=trainer.tokenizer, task_data=trainer.data,
            extra_scorers=trainer.extra_scorers or None, progress=not args.quiet)
        print(f"evaluation report: {out / 'eval' / 'report.md'}")
        print(json.dumps(res, indent=1, default=float)[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
