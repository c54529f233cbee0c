"""Supervised fine-tuning (SFT) of GPT-2 on a task's text, as the paper's SFT runs (docs/paper.md §3, quirk #16).

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

Entry points: ``lm_loss``, ``make_train_step``, ``train_lm`` (also used to pretrain the offline
task's tiny GPT-2) and ``tokenize_for_sft``; ``bin/sft`` (``rajax.cli.sft``) runs it on a task.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rajax.core.errors import InvalidInput, NonFinite
from rajax.core.rollout import logprobs_of

Params = Any


# ----------------------------------------------------------------------------------------------
# Loss and the jitted step
# ----------------------------------------------------------------------------------------------


def lm_loss(cfg, params: Params, ids_BxT, attn_BxT, labels_BxT, dropout_key=None):
    """Mean next-token NLL over the positions whose *target* has ``labels_BxT`` = 1.

    ``cfg`` is any model handle of ``rajax.models`` (``CausalLM``). Token t+1 is predicted from
    position t, like HF's shifted causal-LM loss. Returns ``(loss, n_tokens)``; a micro-batch with no
    target tokens gives loss 0 (and zero gradient).
    """
    out = cfg.apply(params, ids_BxT, attn_BxT, dropout_key=dropout_key)
    logp = logprobs_of(cfg.lm_head(params, out.hidden)[:, :-1], ids_BxT[:, 1:])
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


def make_train_step(cfg, tx: optax.GradientTransformation, *, dropout: bool = True):
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
    cfg,
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
        raise InvalidInput(f"token_ids, mask and label_mask must be the same [N, T] shape; got "
                         f"{token_ids.shape}, {mask.shape}, {label_mask.shape}")
    if len(token_ids) == 0:
        raise InvalidInput("no training texts: the SFT corpus is empty")
    if token_ids.shape[1] > cfg.context_length:
        raise InvalidInput(f"sequences of {token_ids.shape[1]} tokens exceed the model's context of {cfg.context_length}")
    if min(epochs, micro_batch, grad_accum) < 1:
        raise InvalidInput(f"epochs, micro_batch and grad_accum must be >= 1 (got {epochs}, {micro_batch}, {grad_accum})")
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

        bar = tqdm(total=total, desc="sft", unit="step", dynamic_ncols=True, disable=None)  # off without a terminal
    step = 0
    try:
        for epoch in range(epochs):
            for idx in epoch_batches(n, micro_batch, grad_accum, rng):
                batch = _gather(token_ids, mask, label_mask, idx)
                batch = jax.device_put(batch, data) if data is not None else batch
                params, opt_state, m = step_fn(params, opt_state, batch, jax.random.fold_in(key, step))
                m = {k: float(v) for k, v in m.items()}
                if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
                    raise NonFinite(f"the SFT loss is {m['loss']} (gradient norm {m['grad_norm']}) at step "
                                    f"{step + 1}; nothing was saved; lower the learning rate")
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
    ``DataCollatorForLanguageModeling`` sets those labels to -100 (quirk #16).
    """
    if max_tokens < 2:
        raise InvalidInput(f"max_tokens must be >= 2 (got {max_tokens})")
    texts = [t for t in texts if isinstance(t, str) and t]
    if not texts:
        raise InvalidInput("no training texts: the SFT corpus is empty")
    enc = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_tokens)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise InvalidInput("the tokenizer has neither a pad nor an eos token")
    width = max(1, max(len(e) for e in enc))
    ids = np.full((len(enc), width), pad, np.int32)
    attn = np.zeros((len(enc), width), np.int32)
    for i, e in enumerate(enc):
        ids[i, : len(e)] = e
        attn[i, : len(e)] = 1
    labels = attn * (ids != pad)
    return ids, attn, labels.astype(np.int32)
