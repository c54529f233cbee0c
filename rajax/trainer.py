"""The RA-RLHF / RLHF training loop (docs/paper.md §1.2): the shell around the pure core.

Each iteration m (0-based) is four calls, and this file only wires them to files, logs and signals:

    collected = rollout.collect(...)            # sample -> decode -> reward -> policy/reference passes
    α′ = risk.soft_risk_level(m, ...)           # the soft-risk schedule (B while m <= n)
    params, opt_state, stats, keep = ppo.ppo_step(...)   # CVaR mask + PPO epochs, one jit
    kl_state = ppo.kl_update(kl_state, stats["objective/kl"], ...)

Randomness is ``fold_in(key(seed), m)`` per iteration and the data order a seeded permutation
(one pass, drop last, quirk #15), so a resumed run replays exactly.
"""
from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import signal
import sys
import time
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from rajax import config as config_lib
from rajax import evaluation, rewards, tasks
from rajax.core import parallel, ppo, risk, rollout
from rajax.core.errors import CheckpointError, InvalidInput, NonFinite, train_command
from rajax.io import hf, hub, peft, tracking
from rajax.io.checkpoint import Checkpointer
from rajax.io.rundir import RunDir
from rajax.io.tokenizer import check_fits, load_tokenizer
from rajax.models import lora

# Texts whose token ids a --ref-policy's tokenizer must reproduce (words, digits, punctuation,
# whitespace runs, non-ASCII): the KL compares the two models on the policy's sampled ids.
ID_PROBES = ("The movie was great, but the ending... not so much!", "  two spaces\tand a tab\n",
             "1234567890 $%&*()[]{} <|endoftext|>", "naïve café – “quotes” — 東京 🙂", "don't you're it's")


def check_same_ids(tokenizer, ref_dir, *, policy_name, ref_name) -> None:
    """One line when ``ref_dir``'s tokenizer encodes ``ID_PROBES`` (or its EOS) differently: a reference
    of another family must read the policy's ids as the same tokens. A directory without tokenizer
    files is checked by its embedding rows only (``check_fits``)."""
    d = pathlib.Path(str(ref_dir))
    if not d.is_dir() or not ((d / "tokenizer.json").is_file() or (d / "vocab.json").is_file()):
        return
    ref_tok = load_tokenizer(str(d), what="--ref-policy (its tokenizer)")
    for text in ID_PROBES:
        a, b = tokenizer(text)["input_ids"], ref_tok(text)["input_ids"]
        if list(a) != list(b):
            raise InvalidInput(f"--ref-policy {ref_name}: its tokenizer encodes {text!r} as {list(b)[:8]}... but the "
                               f"policy's ({policy_name}) as {list(a)[:8]}...; the KL needs the same token ids")
    if ref_tok.eos_token_id != tokenizer.eos_token_id:
        raise InvalidInput(f"--ref-policy {ref_name}: its EOS id {ref_tok.eos_token_id} differs from the policy "
                           f"tokenizer's {tokenizer.eos_token_id}")


class ResponseOnly:
    """A reward that scores the response text alone (``reward.response_only``, the GPT-J scripts,
    docs/paper.md quirk #20); prompts are still scored by ``score_texts`` where a caller asks."""

    def __init__(self, reward):
        self.inner = reward

    def __getattr__(self, name):  # fn, cfg, tokenizer ... of the wrapped reward
        return getattr(self.inner, name)

    def score_texts(self, texts):
        return self.inner.score_texts(texts)

    def __call__(self, prompts, responses):
        return self.inner.score_texts(list(responses))


class Pace:
    """The console's rate: seconds per iteration over the last ``window`` iterations, leaving out this
    process's first one, which compiles every jitted step (a cumulative average read 17.3, 8.9, 6.1
    s/it for a steady 0.45). ``compile_note`` says once what the first iteration cost."""

    def __init__(self, window: int = 10):
        self.window = window
        self.first: float | None = None
        self.recent: list[float] = []
        self.noted = False

    def tick(self, seconds: float) -> None:
        if self.first is None:
            self.first = seconds
        else:
            self.recent = (self.recent + [seconds])[-self.window:]

    def rate(self) -> float:
        """Seconds per iteration: the recent mean, or the first iteration's while it is the only one."""
        return sum(self.recent) / len(self.recent) if self.recent else (self.first or 0.0)

    def compile_note(self) -> str | None:
        """Once, after the second iteration: the first one's time and how much of it was compilation."""
        if self.noted or not self.recent:
            return None
        self.noted = True
        extra = max(self.first - self.recent[0], 0.0)
        return (f"the first iteration took {self.first:.1f} s, about {extra:.1f} s of it compiling the jitted "
                f"steps (once per process); s/it is the mean of the last {self.window} iterations after it")

    def eta(self, remaining: int) -> str:
        """``remaining`` iterations at the recent rate, as mm:ss (h:mm:ss from an hour)."""
        secs = int(round(self.rate() * remaining))
        h, mm, ss = secs // 3600, secs % 3600 // 60, secs % 60
        return f"{h}:{mm:02d}:{ss:02d}" if h else f"{mm:02d}:{ss:02d}"


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    kl_state: Any


class Trainer:
    """Holds the loaded models, data and compiled steps of one run. ``run()`` drives the loop.

    ``out_dir`` becomes a ``RunDir`` (locked, with a manifest of what the run writes): a new run
    (refused on a non-empty directory unless ``overwrite``) or, with ``resume``, the run to continue.
    ``tx`` is the optimizer (any optax transformation, e.g. a chain with a schedule); the default is
    ``ppo.make_optimizer(cfg.ppo)``: the original code's Adam, or the function ``ppo.optimizer`` names.
    ``reward`` scores prompt + response (``rewards.Reward``, e.g. ``PythonReward(fn)``, or any
    ``(prompts, responses) -> scores`` callable); the default is ``rewards.from_config(cfg.reward)``,
    the classifier or the function ``reward.fn`` names. An object passed here is not in the run's
    ``config.yaml``: a run that ``rajax train --resume`` should continue names its reward (and
    optimizer, and risk measure) by a ``module:function`` spec in the config instead.
    """

    def __init__(self, cfg, out_dir, *, run: RunDir | None = None, resume: bool = False, overwrite: bool = False,
                 tx: optax.GradientTransformation | None = None, reward=None, progress: bool = True, log=print,
                 report_to: tuple[str, ...] = ("tensorboard",)):
        self.log = log
        self.progress = progress
        self.report_to = tuple(report_to)
        tracking.check_targets(self.report_to)  # before anything is loaded or a run directory made
        self.out = pathlib.Path(out_dir)
        self.lead = jax.process_index() == 0  # in a multi-host run only process 0 writes files
        n_dev = jax.device_count()  # all hosts' devices after jax.distributed.initialize
        cfg, self.task = tasks.prepare(cfg, progress=progress)
        config_lib.validate(cfg, num_devices=n_dev)
        # Record where the value head comes from (a head drawn from this seed, or the checkpoint's
        # trained one) in the run's own config, so that the saved config says which case applied.
        head = hf.value_head_choice(cfg.model.policy, cfg.model.value_head, what="--policy")
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, value_head=head))
        self.cfg = cfg
        # Validate, then act: the run directory is checked here and taken (created, locked, an
        # earlier run moved aside) only once the models and data below have loaded.
        plan = RunDir.prepare(self.out, resume=resume, overwrite=overwrite) if run is None and self.lead else None
        self.run_dir = run
        t0 = time.time()
        m = cfg.model
        tok_src, tok_flag = (m.tokenizer, "--tokenizer") if m.tokenizer else (m.policy, "--policy (its tokenizer)")
        self.tokenizer = load_tokenizer(tok_src, padding_side="left", what=tok_flag)
        self.policy, params = hf.load(m.policy, value_head_seed=cfg.train.seed, what="--policy", value_head=head)
        self.policy = self.policy.replace(dtype=m.dtype, remat=m.remat)
        check_fits(self.tokenizer, self.policy.vocab_size, tokenizer_name=tok_src, model_name=m.policy,
                   tokenizer_flag=tok_flag)
        # The reference handle when it is not the policy's (another family or size, or a LoRA policy's
        # base), and ref_params None when the reference reads the policy's own tree (LoRA, same base).
        self.reference = None
        ref_src = m.ref_policy or m.policy
        same_base = m.ref_policy in (None, m.policy)
        if m.lora_rank:
            if not hasattr(self.policy, "lora"):
                raise InvalidInput(f"model.lora_rank={m.lora_rank}: --policy {m.policy} is a {self.policy.describe()}, "
                                   "which has no LoRA support (GPT-2, Llama, Qwen2 and GPT-J have)")
            targets = tuple(m.lora_targets) or self.policy.default_lora_targets
            self.policy = self.policy.replace(lora=lora.LoRA(m.lora_rank, m.lora_alpha, targets, m.lora_dropout))
            # The saved config names the targets used, not "the family's default".
            self.cfg = cfg = dataclasses.replace(cfg, model=dataclasses.replace(m, lora_targets=self.policy.lora.targets))
            m = cfg.model
            params["lora"] = lora.init(self.policy, params, jax.random.fold_in(jax.random.key(cfg.train.seed), 1))
        if m.lora_rank and same_base:
            ref_cfg, ref_params = self.policy.replace(lora=None), None  # adapters off: no second copy
            self.reference = ref_cfg
        else:
            ref_cfg, ref_params = hf.load(ref_src, value_head_seed=cfg.train.seed, what="--ref-policy")
            if not same_base:
                check_same_ids(self.tokenizer, hub.resolve(ref_src, what="--ref-policy"), policy_name=m.policy,
                               ref_name=ref_src)
            check_fits(self.tokenizer, ref_cfg.vocab_size, tokenizer_name=tok_src, model_name=ref_src,
                       tokenizer_flag=tok_flag, model_flag="--ref-policy")
            ref_cfg = ref_cfg.replace(dtype=m.dtype)
            if ref_cfg.replace(remat=m.remat) != self.policy:  # another family, size or a LoRA policy
                self.reference = ref_cfg
        for name, tree in (("--policy", params), ("--ref-policy", ref_params)):
            if tree is not None and not bool(parallel.all_finite(tree)):
                raise NonFinite(f"{name} {m.policy if name == '--policy' else ref_src} has non-finite parameters")
        self.reward = rewards.from_config(cfg.reward) if reward is None else reward
        if cfg.reward.response_only:
            self.reward = ResponseOnly(self.reward)
        self.data = self.task.load(cfg, self.tokenizer)
        self.extra_scorers = self.task.extra_scorers(cfg)
        self.settings = cfg.generation.sample_settings(self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
        b = cfg.train.batch_size
        n_train = len(self.data.train.texts)
        if n_train < b:
            raise InvalidInput(f"{n_train} training prompts are fewer than one batch of {b}; lower --batch-size "
                               "(train.batch_size) or give more prompts")
        self.iterations = cfg.train.iterations or n_train // b
        if self.iterations * b > n_train:
            raise InvalidInput(
                f"{n_train} training prompts give {n_train // b} batches of {b}; "
                f"set --iterations to at most {n_train // b} or lower --batch-size")
        self.risk_M = cfg.risk.M or self.iterations
        if cfg.risk.alpha < 1.0 and cfg.risk.n >= self.risk_M:
            # The original accepts this (docs/paper.md quirk #27): α′ = B while m <= n, then ⌈αB⌉ at once.
            k = self.alpha_prime(cfg.risk.n + 1)
            rest = ("so this run is RLHF throughout" if cfg.risk.n >= self.iterations - 1 else
                    f"then {k} from iteration {cfg.risk.n + 1}")
            self.log(f"notice: risk.n={cfg.risk.n} >= risk.M={self.risk_M}: α′ stays {b} (every episode) "
                     f"for iterations 0..{cfg.risk.n}, {rest}")
        self.order = np.random.default_rng(cfg.train.seed).permutation(n_train)
        self.mesh = parallel.make_mesh()
        self.tx = ppo.make_optimizer(cfg.ppo) if tx is None else tx
        self.sharded = cfg.parallel.shard_params
        place = lambda tree: parallel.place_params(tree, self.mesh, self.sharded)  # noqa: E731
        self.ref_params = None if ref_params is None else place(ref_params)
        # LoRA: the optimizer sees the adapters and the value head only; the base is frozen (and not donated).
        self.frozen = None
        if m.lora_rank:
            params, frozen = lora.split(params)
            self.frozen = place(lora.cast(frozen, jax.numpy.dtype(m.base_dtype)))
        params = place(params)
        self.state = TrainState(params, place(self.tx.init(params)),
                                parallel.replicate(ppo.kl_init(cfg.kl.init_coef), self.mesh))
        self.base_key = jax.random.key(cfg.train.seed)
        self.start = 0
        self._done = 0  # iterations done when run() returned (finish() evaluates a finished run)
        self.log(f"loaded models and {n_train} train prompts in {time.time() - t0:.1f}s")
        bos = self.tokenizer.bos_token_id
        if bos is not None and list(self.tokenizer("a")["input_ids"][:1]) == [bos]:  # say it: prompts change
            self.log(f"the tokenizer puts BOS {self.tokenizer.bos_token!r} (id {bos}) in front of every prompt; "
                     "it is one of generation.prompt_tokens and part of the decoded prompt the reward reads")
        if plan is not None:
            self.run_dir = plan.take(cfg_text=config_lib.dump_yaml(cfg), seed=cfg.train.seed)
        if self.lead:
            # The resolved config, what `rajax train --resume` continues (from the CLI or not). Written
            # once everything loaded and the directory is taken: a start that failed leaves no file.
            config_lib.dump_yaml(cfg, self.out / "config.yaml")
            self.run_dir.record(self.out / "config.yaml")

    # --- one iteration -------------------------------------------------------------------------
    def batch_prompts(self, m: int):
        """Iteration m's prompts: left-padded ids and mask [B, P] (host) and their decoded texts."""
        b = self.cfg.train.batch_size
        idx = self.order[m * b:(m + 1) * b]
        ids, mask = tasks.left_pad([self.data.train.ids[i] for i in idx], self.cfg.generation.prompt_tokens,
                                   self.tokenizer.pad_token_id)
        return ids, mask, [self.data.train.texts[i] for i in idx]

    def decode(self, token_rows: list) -> list[str]:
        """Responses as the original code scored them: cut after the first EOS (kept), special tokens
        kept (quirk #13)."""
        return tasks.decode_all(self.tokenizer, token_rows, clean_up=self.cfg.reward.clean_up_spaces)

    def alpha_prime(self, m: int) -> int:
        """α′, the number of lowest-return episodes trained on at iteration m (B for RLHF)."""
        c, b = self.cfg.risk, self.cfg.train.batch_size
        if c.alpha >= 1.0:
            return b
        return risk.soft_risk_level(m, batch_size=b, alpha=c.alpha, n=c.n, rho=c.rho, M=self.risk_M,
                                    scheduler=c.scheduler)

    def tail_metrics(self, prompt_texts, scores, keep_B) -> dict:
        """Where the CVaR mask puts the update (docs/study.md, "Mechanism"): the batch's tail prompts
        are those the reward model scores below ``eval.tail_threshold``, as in the evaluation.
        ``risk/kept_tail_frac`` is their share of the kept episodes (``risk/tail_frac`` of the whole
        batch, what RLHF keeps); ``env/tail_reward_mean`` is their mean reward (absent without any). A reward without
        ``score_texts`` (a bare function of prompts and responses) gives none of these."""
        score_texts = getattr(self.reward, "score_texts", None)
        if score_texts is None:  # a bare reward function (prompts, responses) cannot score prompts alone
            return {}
        t = time.perf_counter()
        ev = self.cfg.eval
        ps = np.asarray(score_texts(list(prompt_texts)), np.float64)
        tail = ps <= ev.tail_threshold if ev.tail_inclusive else ps < ev.tail_threshold
        keep = np.asarray(keep_B, bool)
        out = {"risk/tail_frac": float(tail.mean()),
               "risk/kept_tail_frac": float((tail & keep).sum() / max(int(keep.sum()), 1))}
        if tail.any():
            out["env/tail_reward_mean"] = float(np.asarray(scores)[tail].mean())
        out["time/tail_scores"] = time.perf_counter() - t
        return out

    def iteration(self, m: int):
        cfg = self.cfg
        prompt_ids, prompt_mask, prompt_texts = self.batch_prompts(m)
        k_sample, k_ppo = jax.random.split(jax.random.fold_in(self.base_key, m))
        got = rollout.collect(
            self.policy, self.full_params(), self.ref_params, prompt_ids, prompt_mask, prompt_texts, k_sample,
            reward=self.reward, decode=self.decode, settings=self.settings, mesh=self.mesh,
            dropout=bool(cfg.generation.rollout_dropout and m > 0), reference=self.reference)
        if not np.all(np.isfinite(got.scores)):
            raise NonFinite(f"the reward model returned non-finite scores at iteration {m}")
        rows = None if self.reference is None else self.reference.vocab_size
        if rows is not None and rows < self.policy.vocab_size:  # e.g. GPT-J's 50,400 rows over GPT-2's 50,257
            top = int(parallel.to_host(got.rollout.input_ids[:, prompt_ids.shape[1]:]).max())
            if top >= rows:
                raise NonFinite(f"the policy sampled token id {top} at iteration {m}, beyond the {rows} embedding rows "
                                f"of --ref-policy {cfg.model.ref_policy}: the reference cannot score it")
        alpha_prime = self.alpha_prime(m)
        t = time.perf_counter()
        beta = self.state.kl_state.beta
        params, opt_state, stats, keep = ppo.ppo_step(
            self.policy, cfg.ppo, self.state.params, self.state.opt_state, got.rollout, beta,
            np.int32(alpha_prime), k_ppo, tx=self.tx, frozen=self.frozen)
        if self.sharded:  # keep the FSDP layout whatever sharding XLA chose for the step's outputs
            params, opt_state = parallel.shard_params(params, self.mesh), parallel.shard_params(opt_state, self.mesh)
        stats = {k: float(v) for k, v in parallel.to_host(stats).items()}
        timings = {**got.timings, "time/ppo": time.perf_counter() - t}
        bad = [k for k, v in stats.items() if not math.isfinite(v)]
        if bad:
            raise NonFinite(f"non-finite {bad[0]} at iteration {m}")
        if not bool(parallel.to_host(parallel.all_finite(params))):
            raise NonFinite(f"non-finite policy parameters after the PPO update of iteration {m}")
        kl_state = ppo.kl_update(self.state.kl_state, stats["objective/kl"], target=cfg.kl.target,
                                 horizon=cfg.kl.horizon, n_steps=cfg.train.batch_size, adaptive=cfg.kl.adaptive)
        self.state = TrainState(params, opt_state, kl_state)
        scores = got.scores
        mechanism = self.tail_metrics(prompt_texts, scores, parallel.to_host(keep))
        metrics = {
            "env/reward_mean": float(scores.mean()),
            "env/reward_std": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0,
            "env/reward_cvar": risk.cvar(scores, cfg.risk.alpha if cfg.risk.alpha < 1 else 0.2),
            "tokens/responses_len_mean": float(got.response_mask.sum(-1).mean()),
            **stats,
            "objective/kl_coef": float(beta),
            "risk/alpha_prime": float(alpha_prime),
            **mechanism,
            **timings,
        }
        for name, fn in self.extra_scorers.items():
            metrics[f"env/{name}_mean"] = float(np.mean(fn([p + r for p, r in zip(prompt_texts, got.responses)])))
        return metrics, (prompt_texts, got.responses, scores)

    # --- checkpoints ---------------------------------------------------------------------------
    def _state_tree(self):
        return {"params": self.state.params, "opt_state": self.state.opt_state, "kl": self.state.kl_state}

    def save(self, ckpt, m_next: int):
        meta = {"iteration": m_next, "data_position": m_next * self.cfg.train.batch_size,
                "seed": self.cfg.train.seed, "config": config_lib.to_dict(self.cfg),
                "hf_config": hf.config_dict(self.policy) if hf.has_converter(self.policy) else None}  # for export
        try:
            ckpt.save(m_next, self._state_tree(), meta)  # a storage failure is already a CheckpointError line
        except CheckpointError:
            raise
        except OSError as e:  # disk full, permissions raised by the file system directly
            prev = ckpt.latest_step()
            kept = f"checkpoint {prev} in {ckpt.directory} is intact" if prev is not None else "no earlier checkpoint"
            raise CheckpointError(f"writing checkpoint {m_next} failed ({e.strerror or e}); {kept}") from None
        mine = os.path.abspath(ckpt.directory).startswith(os.path.abspath(self.out) + os.sep)
        if self.lead and self.run_dir is not None and mine:  # a checkpointer elsewhere writes no run's files
            # The step's files are the run's (not the folder: a user's note in checkpoints/ is not);
            # the earlier run that --overwrite moved aside goes now that this one has a checkpoint.
            self.run_dir.forget_missing("checkpoints")
            self.run_dir.record(*(p for p in (ckpt.directory / str(m_next)).rglob("*") if not p.is_dir()))
            self.run_dir.commit()

    def restore(self, ckpt):
        tree, meta = ckpt.restore(self._state_tree())
        self.state = TrainState(parallel.place_params(tree["params"], self.mesh, self.sharded),
                                parallel.place_params(tree["opt_state"], self.mesh, self.sharded),
                                parallel.replicate(tree["kl"], self.mesh))
        self.start = int(meta["iteration"])
        return meta

    # --- the loop --------------------------------------------------------------------------------
    def run(self, *, resume: bool = False, stop_after: int | None = None) -> dict:
        cfg = self.cfg
        lead = self.lead
        ckpt = Checkpointer(self.out / "checkpoints", keep=cfg.train.keep_checkpoints, log=self.log)
        if resume:
            unreadable = sorted(p.name for p in ckpt.directory.glob("*.unreadable"))
            if ckpt.latest_step() is None and unreadable:  # never restart silently over a run's metrics
                raise CheckpointError(f"{self.out} has no readable checkpoint left ({', '.join(unreadable)} could "
                                      "not be read); restore one by hand, or start a new run with --out")
            if ckpt.latest_step() is None:
                self.log(f"{self.out} has no checkpoint yet: starting at iteration 0")
            else:
                self.restore(ckpt)
                self.log(f"resumed from {ckpt.directory} at iteration {self.start}")
        writer = None
        if lead:
            writer = tracking.MetricsWriter(self.out, start_iteration=self.start,
                                            tensorboard="tensorboard" in self.report_to,
                                            wandb="wandb" in self.report_to, config=config_lib.to_dict(cfg),
                                            run_name=self.out.name,
                                            run_id=(self.run_dir.stored("wandb_id", tracking.new_run_id)
                                                    if "wandb" in self.report_to else None))
            self.run_dir.record("metrics.jsonl", *(self.out / "tb").glob("events.out.tfevents.*"))
        stop = {"signal": None}

        def on_signal(signum, _frame):
            stop["signal"] = signum  # finish the iteration, checkpoint, exit cleanly

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        end = self.iterations if stop_after is None else min(self.iterations, stop_after)
        bar = None
        name = "RA-RLHF" if cfg.risk.alpha < 1 else "RLHF"
        live = self.progress and lead and sys.stderr.isatty()
        if live:  # a live bar on a terminal; plain lines every train.log_every iterations in a log file
            from tqdm import tqdm

            # Not tqdm's own rate and ETA: they average in the first iteration's compilation (Pace).
            bar = tqdm(total=self.iterations, initial=self.start, desc=name, unit="it", dynamic_ncols=True,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        pace = Pace()
        last = {}
        m = self.start
        t_iter = time.perf_counter()
        try:
            while m < end and stop["signal"] is None:
                try:
                    metrics, (p, r, s) = self.iteration(m)
                except NonFinite as e:
                    good = ckpt.latest_step()
                    where = (f"the last good checkpoint is iteration {good} in {ckpt.directory}; resume with "
                             f"{train_command()} --resume {self.out}") if good is not None else "no checkpoint was written yet"
                    raise NonFinite(f"{e}; stopped, {where}") from None
                if writer is not None:
                    writer.write(m, metrics)
                last = metrics
                if lead and cfg.train.sample_every and (m % cfg.train.sample_every == 0 or m == self.iterations - 1):
                    extra = {k: fn([a + b_ for a, b_ in zip(p, r)]) for k, fn in self.extra_scorers.items()}
                    path = self.out / "samples" / f"iter_{m:05d}.csv"
                    self.run_dir.record(path)
                    tracking.write_samples(path, p, r, s, extra)
                m += 1
                now = time.perf_counter()  # from the previous tick: the ETA counts checkpoint writes too
                pace.tick(now - t_iter)
                t_iter = now
                fields = (f"R {metrics['env/reward_mean']:.3f} CVaR {metrics['env/reward_cvar']:.3f} "
                          f"KL {metrics['objective/kl']:.3f} β {metrics['objective/kl_coef']:.3f} "
                          f"α′ {int(metrics['risk/alpha_prime'])}")
                note = pace.compile_note() if self.progress and lead else None
                if bar is not None:
                    if note:
                        bar.write(note)
                    bar.update(1)
                    bar.set_postfix_str(f"{pace.rate():.2f} s/it, ETA {pace.eta(self.iterations - m)}, {fields}")
                elif self.progress and lead:
                    if note:
                        self.log(note)
                    if m % cfg.train.log_every == 0 or m == end:
                        self.log(f"{name} {m}/{self.iterations}  {fields}  ({pace.rate():.2f} s/it)")
                if cfg.train.checkpoint_every and m % cfg.train.checkpoint_every == 0 and m < end:
                    self.save(ckpt, m)
        finally:
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
                self.run_dir.record(*(self.out / "tb").glob("events.out.tfevents.*"),
                                    *(p for p in (self.out / "wandb").rglob("*") if not p.is_dir()))
            for s_, h in old.items():
                signal.signal(s_, h)
        if ckpt.latest_step() != m:
            self.save(ckpt, m)
        ckpt.close()
        self._done = m
        return {"iterations_done": m, "finished": m >= self.iterations, "last": last,
                "interrupted": stop["signal"] is not None, "signal": stop["signal"]}

    def full_params(self):
        """The policy's whole parameter tree (a LoRA policy: adapters and value head over the frozen base)."""
        return ppo.with_frozen(self.state.params, self.frozen)

    def host_params(self):
        return parallel.to_host(self.full_params())

    def export(self) -> pathlib.Path:
        """The current policy (with value head) in Hugging Face format, plus the tokenizer, as
        ``model/``: only this run's files there are replaced."""
        params = self.host_params()
        if not bool(parallel.all_finite(params)):
            raise NonFinite("the policy has non-finite parameters; nothing was exported")
        cfg = self.policy.replace(dtype="float32")

        def build(d):
            # A LoRA policy is written merged; the special ids are the tokenizer's, then the source's.
            hf.save(d, cfg, params, tokenizer=self.tokenizer, source=self.cfg.model.policy)
            if getattr(cfg, "lora", None) is not None:  # and its adapters alone, as PEFT loads them
                peft.save_adapter(pathlib.Path(d) / "adapter", cfg, params, base_model=self.cfg.model.policy)

        return self.run_dir.replace_dir("model", build)

    def finish(self, *, evaluate: bool | None = None, progress: bool | None = None) -> dict:
        """What a run leaves after its loop, from the CLI or from Python: ``model/`` (``export``),
        ``curves.png`` and, when ``evaluate`` (default: ``train.eval_at_end`` once every iteration
        ran), ``eval/`` with the report. Returns ``{"model", "curves", "eval"}`` paths (``eval`` None
        when not evaluated). Only the lead process writes; elsewhere this returns Nones."""
        if not self.lead:
            return {"model": None, "curves": None, "eval": None}
        model_dir = self.export()
        curves = tracking.plot_curves(self.out)
        self.run_dir.record(curves)
        if evaluate is None:
            evaluate = self.cfg.train.eval_at_end and self._done >= self.iterations
        res = None
        if evaluate:
            name = "ra-rlhf" if self.cfg.risk.alpha < 1 else "rlhf"
            res = self.run_dir.replace_dir("eval", lambda d: evaluation.evaluate(
                self.cfg, {"init": self.cfg.model.policy, name: (self.policy, self.host_params())}, d,
                reward=self.reward, tokenizer=self.tokenizer, task_data=self.data,
                extra_scorers=self.extra_scorers, progress=self.progress if progress is None else progress,
                check_finite=False))
        return {"model": model_dir, "curves": curves, "eval": res}

    def close(self) -> None:
        """Release the run directory's lock."""
        if self.run_dir is not None:
            self.run_dir.close()
