"""Supervised fine-tuning (SFT) of GPT-2 on a task's text, as the paper's SFT runs (spec §3, quirk #16).

The original runs use TRL's ``SFTTrainer`` (``max_seq_length=64``, no packing) with HF ``Trainer``
defaults. What that means, and what is replicated here:

* each text is tokenized without special tokens, **right-truncated to 64 tokens, no EOS appended**;
* right padding with pad = eos; labels = inputs, with pad positions masked out of the loss
  (the collator masks every label equal to the pad id, so a literal ``<|endoftext|>`` inside a
  text is masked too);
* AdamW (lr 1e-5, betas 0.9/0.999, eps 1e-8, weight decay 0), global-norm clipping at 1.0,
  linear decay of the learning rate to 0 over all optimizer steps, no warm-up;
* micro-batches of 64 with 16 accumulation steps (effective batch 1024), 10 epochs, shuffled
  every epoch, the last partial batch of an epoch kept (HF's ``drop_last=False``);
* GPT-2 dropout (0.1) on during training.

Gradient accumulation: each optimizer step is one jitted call that scans over ``grad_accum``
micro-batches and averages their per-micro-batch token-mean losses (the HF Trainer of that era
divides every micro-batch loss by ``grad_accum``). At the end of an epoch the step is filled up
with empty micro-batches (mask 0, zero gradient), which reproduces HF's shorter last accumulation
whose losses are still divided by ``grad_accum``.

Entry points: ``lm_loss``, ``make_train_step``, ``train_lm`` (also used to pretrain the synthetic
task's tiny GPT-2), ``tokenize_for_sft``, ``run_sft`` and the ``python -m rajax.sft`` CLI.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rajax.models import gpt2

Params = Any


# ----------------------------------------------------------------------------------------------
# Loss and the jitted step
# ----------------------------------------------------------------------------------------------


def lm_loss(cfg: gpt2.GPT2Config, params: Params, ids_BxT, attn_BxT, labels_BxT, dropout_key=None):
    """Mean next-token NLL over the positions whose *target* has ``labels_BxT`` = 1.

    Token t+1 is predicted from position t, like HF's shifted causal-LM loss. Returns
    ``(loss, n_tokens)``; a micro-batch with no target tokens gives loss 0 (and zero gradient).
    """
    out = gpt2.apply(cfg, params, ids_BxT, attn_BxT, dropout_key=dropout_key)
    logp = gpt2.logprobs_of(out.logits[:, :-1], ids_BxT[:, 1:])
    w = labels_BxT[:, 1:].astype(jnp.float32)
    n = w.sum()
    return -(logp * w).sum() / jnp.maximum(n, 1.0), n


def make_optimizer(lr: float, total_steps: int, *, max_grad_norm: float | None = 1.0,
                   weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """HF Trainer's default optimizer: clip, then AdamW with a linear decay from ``lr`` to 0."""
    sched = optax.linear_schedule(lr, 0.0, max(int(total_steps), 1))
    parts = []
    if max_grad_norm is not None and max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(max_grad_norm))
    parts.append(optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    return optax.chain(*parts), sched


def make_train_step(cfg: gpt2.GPT2Config, tx: optax.GradientTransformation, *, dropout: bool = True):
    """A jitted ``step(params, opt_state, batch, key) -> (params, opt_state, metrics)``.

    ``batch`` = ``{'ids','attn','labels'}``, each ``[K, mb, T]``: K micro-batches accumulated into
    one optimizer update (the mean of their gradients). Pure: all state is in the arguments.
    Data parallelism comes from the input shardings (see ``train_lm``): XLA inserts the gradient
    all-reduce, so the same function runs on one device or many.
    """

    def micro(params, xs):
        ids, attn, labels, key = xs
        (loss, n), g = jax.value_and_grad(
            lambda p: lm_loss(cfg, p, ids, attn, labels, key if dropout else None), has_aux=True)(params)
        return loss, n, g

    @jax.jit
    def step(params, opt_state, batch, key):
        k = batch["ids"].shape[0]
        keys = jax.random.split(key, k)

        def body(acc, xs):
            loss, n, g = micro(params, xs)
            acc = jax.tree.map(jnp.add, acc, g)
            return acc, (loss, n)

        zeros = jax.tree.map(jnp.zeros_like, params)
        gsum, (losses, ns) = jax.lax.scan(body, zeros, (batch["ids"], batch["attn"], batch["labels"], keys))
        grads = jax.tree.map(lambda g: g / k, gsum)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        real = (ns > 0).astype(jnp.float32)
        metrics = {
            # Mean over the non-empty micro-batches (what HF logs), and the token count.
            "loss": (losses * real).sum() / jnp.maximum(real.sum(), 1.0),
            "tokens": ns.sum(),
            "grad_norm": optax.tree.norm(grads),
        }
        return params, opt_state, metrics

    return step


# ----------------------------------------------------------------------------------------------
# Batching and the training loop
# ----------------------------------------------------------------------------------------------


def _mesh_for(micro_batch: int):
    """A 1-D ``data`` mesh over as many devices as divide the micro-batch (None for one device)."""
    n = math.gcd(jax.device_count(), micro_batch)
    if n <= 1:
        return None
    return jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:n])


def epoch_batches(n_rows: int, micro_batch: int, grad_accum: int, rng: np.random.Generator):
    """Row indices of one shuffled epoch as ``[steps, grad_accum, micro_batch]``, -1 = empty slot.

    Every micro-batch except the epoch's last is full (no drop_last); the last optimizer step is
    filled up with empty micro-batches.
    """
    perm = rng.permutation(n_rows)
    n_micro = -(-n_rows // micro_batch)
    steps = -(-n_micro // grad_accum)
    idx = np.full(steps * grad_accum * micro_batch, -1, np.int64)
    idx[:n_rows] = perm
    return idx.reshape(steps, grad_accum, micro_batch)


def steps_per_epoch(n_rows: int, micro_batch: int, grad_accum: int) -> int:
    return -(-(-(-n_rows // micro_batch)) // grad_accum)


def _gather(token_ids, attn, labels, idx):
    real = idx >= 0
    safe = np.where(real, idx, 0)
    ids = np.where(real[..., None], token_ids[safe], 0).astype(np.int32)
    am = np.where(real[..., None], attn[safe], 0).astype(np.int32)
    lm = np.where(real[..., None], labels[safe], 0).astype(np.int32)
    return {"ids": ids, "attn": am, "labels": lm}


def train_lm(
    cfg: gpt2.GPT2Config,
    params: Params,
    token_ids,
    mask,
    *,
    epochs: int,
    lr: float,
    micro_batch: int,
    grad_accum: int,
    seed: int,
    max_grad_norm: float | None = 1.0,
    weight_decay: float = 0.0,
    dropout: bool = True,
    progress: bool = True,
    log_fn: Callable[[int, dict], None] | None = None,
    label_mask=None,
    data_parallel: bool = True,
) -> Params:
    """Causal-LM training of ``params`` on right-padded ``token_ids`` [N,T] (``mask`` [N,T] 0/1).

    ``label_mask`` (default ``mask``) selects the target tokens of the loss; attention uses ``mask``.
    Learning rate decays linearly from ``lr`` to 0 over ``epochs * steps_per_epoch`` updates.
    Data parallel over all devices that divide ``micro_batch`` (params replicated, micro-batches
    sharded on a ``data`` mesh); ``data_parallel=False`` keeps everything on one device.
    ``log_fn(step, {'loss','tokens','grad_norm','lr','epoch'})`` is called after every optimizer step. Returns the trained params (the value head is untouched:
    it gets no gradient from the LM loss, and weight decay 0 leaves it as it was).
    """
    token_ids = np.asarray(token_ids)
    mask = np.asarray(mask)
    label_mask = mask if label_mask is None else np.asarray(label_mask)
    if token_ids.ndim != 2 or token_ids.shape != mask.shape or label_mask.shape != mask.shape:
        raise ValueError(f"token_ids, mask and label_mask must be the same [N, T] shape; got "
                         f"{token_ids.shape}, {mask.shape}, {label_mask.shape}")
    if len(token_ids) == 0:
        raise ValueError("no training texts: the SFT corpus is empty")
    if token_ids.shape[1] > cfg.n_positions:
        raise ValueError(f"sequences of {token_ids.shape[1]} tokens exceed the model's n_positions={cfg.n_positions}")
    if min(epochs, micro_batch, grad_accum) < 1:
        raise ValueError(f"epochs, micro_batch and grad_accum must be >= 1 (got {epochs}, {micro_batch}, {grad_accum})")
    n = len(token_ids)
    spe = steps_per_epoch(n, micro_batch, grad_accum)
    total = epochs * spe
    tx, sched = make_optimizer(lr, total, max_grad_norm=max_grad_norm, weight_decay=weight_decay)
    step_fn = make_train_step(cfg, tx, dropout=dropout)

    mesh = _mesh_for(micro_batch) if data_parallel else None
    params = jax.tree.map(jnp.asarray, params)
    opt_state = tx.init(params)
    if mesh is not None:
        # Params and optimizer state replicated, micro-batches split over `data`. Placing the state
        # before the first step keeps the input shardings of every step the same (one compilation).
        rep = NamedSharding(mesh, P())
        data = NamedSharding(mesh, P(None, "data", None))
        params, opt_state = jax.device_put((params, opt_state), rep)
    else:
        data = None

    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="sft", unit="step", dynamic_ncols=True)
    step = 0
    try:
        for epoch in range(epochs):
            for idx in epoch_batches(n, micro_batch, grad_accum, rng):
                batch = _gather(token_ids, mask, label_mask, idx)
                batch = jax.device_put(batch, data) if data is not None else batch
                params, opt_state, m = step_fn(params, opt_state, batch, jax.random.fold_in(key, step))
                m = {k: float(v) for k, v in m.items()}
                m["lr"] = float(sched(step))
                m["epoch"] = epoch + 1
                step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{m['loss']:.4f}", epoch=epoch + 1)
                if log_fn is not None:
                    log_fn(step, m)
    finally:
        if bar is not None:
            bar.close()
    return jax.device_get(params)


# ----------------------------------------------------------------------------------------------
# From texts to a checkpoint
# ----------------------------------------------------------------------------------------------


def tokenize_for_sft(tokenizer, texts: Sequence[str], max_tokens: int = 64):
    """TRL SFTTrainer's (no packing) encoding: right-truncated, no EOS appended, right-padded.

    Returns ``(ids [N,T], attn [N,T], labels [N,T])`` with T = min(max_tokens, longest text);
    ``labels`` is ``attn`` with every position holding the pad id (= eos) zeroed, as TRL's
    ``DataCollatorForLanguageModeling`` sets those labels to -100 (spec quirk #16).
    """
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be >= 2 (got {max_tokens})")
    texts = [t for t in texts if isinstance(t, str) and t]
    if not texts:
        raise ValueError("no training texts: the SFT corpus is empty")
    enc = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_tokens)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token")
    width = max(1, max(len(e) for e in enc))
    ids = np.full((len(enc), width), pad, np.int32)
    attn = np.zeros((len(enc), width), np.int32)
    for i, e in enumerate(enc):
        ids[i, : len(e)] = e
        attn[i, : len(e)] = 1
    labels = attn * (ids != pad)
    return ids, attn, labels.astype(np.int32)


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
    """SFT of ``policy`` on the task's SFT texts (spec §3), saved as an HF checkpoint in ``out``.

    ``task`` is a task name / YAML path (loaded with ``rajax.config.load_config``) or a ``Config``.
    ``policy`` defaults to the config's ``model.policy``; ``data`` sets ``data.path``. ``texts``
    bypasses the task's data loader. ``batch`` is the effective batch: ``grad_accum = batch //
    micro_batch``. Returns ``out``.
    """
    from rajax import config as rconfig
    from rajax.models import hf
    from rajax.tokenizer import load_tokenizer

    if batch < micro_batch or batch % micro_batch:
        raise ValueError(f"--batch ({batch}) must be a positive multiple of --micro-batch ({micro_batch})")
    ovr = list(overrides)
    if data is not None:
        ovr.append(f"data.path={data}")
    if policy is not None:
        ovr.append(f"model.policy={policy}")
    if isinstance(task, str):
        cfg = rconfig.load_config(task, None, ovr)
    else:
        cfg = rconfig.load_config(task, None, ovr) if ovr else task
    if cfg.data.source == "synthetic" or "synthetic" in (cfg.model.policy, cfg.model.tokenizer):
        from rajax import synthetic

        cfg = synthetic.resolve(cfg, progress=progress)
    policy = cfg.model.policy
    tok_name = cfg.model.tokenizer or policy
    if tokenizer is None:
        tokenizer = load_tokenizer(tok_name, padding_side="right", what="--tokenizer")
    if texts is None:
        from rajax import tasks

        texts = tasks.load_task_data(cfg, tokenizer, require=()).sft_texts
    ids, attn, labels = tokenize_for_sft(tokenizer, texts, max_tokens)
    mcfg, params = hf.load(policy, value_head_seed=seed, what="--policy")
    if ids.shape[1] > mcfg.n_positions:
        raise ValueError(f"--max-tokens {max_tokens} exceeds the model's context of {mcfg.n_positions}")
    print(f"sft: {len(ids)} texts, <= {ids.shape[1]} tokens, {epochs} epochs, effective batch {batch} "
          f"({micro_batch} x {batch // micro_batch}), "
          f"{epochs * steps_per_epoch(len(ids), micro_batch, batch // micro_batch)} optimizer steps, "
          f"{jax.device_count()} device(s)", file=sys.stderr)
    t0 = time.time()
    params = train_lm(mcfg, params, ids, attn, epochs=epochs, lr=lr, micro_batch=micro_batch,
                      grad_accum=batch // micro_batch, seed=seed, dropout=mcfg.dropout > 0,
                      progress=progress, log_fn=log_fn, label_mask=labels)
    hf.save(out, mcfg, params, tokenizer=tokenizer)
    print(f"sft: saved {out} ({time.time() - t0:.0f} s)", file=sys.stderr)
    return out


def _parser():
    p = argparse.ArgumentParser(prog="bin/sft", description="Supervised fine-tuning of GPT-2 on a task's "
                                "texts (the paper's SFT step); saves an HF-format checkpoint.")
    p.add_argument("--task", required=True, help="imdb | jigsaw | rtp | synthetic, or a config YAML")
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
