"""Pieces of the iteration alone, rajax (JAX) against transformers (PyTorch), to place a CPU gap.

    python bench/block.py                         # every piece at GPT-2 small's width, B=8, T=64
    python bench/block.py --only bert --reps 9
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= python bench/block.py   # XLA's Eigen dots

Float32, random weights. Each piece is timed as variants that are all compiled first and then run in
turn (A, B, C, A, B, C, ...), so a drift of the machine hits every variant alike; medians over
--reps. The pieces:

- ``trunk1`` / ``trunk12``: a 1- and 12-layer GPT-2 trunk (embeddings, blocks, final LayerNorm; no
  LM head, so the blocks dominate), forward and forward + backward of sum(hidden²): transformers'
  GPT2Model, rajax, and rajax without its residual-gradient barrier (rajax/models/layers.py);
- ``logprob``: log-probs of [B, 32, 50257] float32 logits and their gradient: the gathered
  logsumexp form rajax uses against gathering from the full log-softmax, and torch's
  log_softmax + gather;
- ``lmhead``: the PPO step's vocabulary part: the tied LM head on [B, 32] response positions, log-probs
  and entropy, value and gradient: rajax's one-pass ``logprobs_and_entropy`` against the two
  functions it replaced (rajax/core/rollout.py);
- ``bert``: the BERT-base classifier (toxic-bert's shape) forward on [B, W] ids, W = 64 (the peer's
  input) and 80: transformers, rajax, and rajax with its last layer computing every row instead of
  only [CLS] (rajax/models/bert.py).

One JSON object on stdout (each row also on stderr as it completes).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

from iteration import entropy_before, logprobs_full_softmax, undone  # noqa: E402

from rajax.core import rollout  # noqa: E402
from rajax.models import bert, gpt2  # noqa: E402


def interleaved(variants: dict, reps: int) -> dict:
    """Median seconds of each zero-argument callable, run in turn after one warm-up call each."""
    for fn in variants.values():
        fn()
    times = {k: [] for k in variants}
    for _ in range(reps):
        for k, fn in variants.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: round(statistics.median(v), 4) for k, v in times.items()}


def jax_fn(f, *args):
    return lambda: jax.block_until_ready(f(*args))


def trunk(layers, b, t, reps):
    torch.manual_seed(0)
    from transformers import GPT2Config, GPT2Model

    model = GPT2Model(GPT2Config(n_layer=layers))
    ids_np = np.random.default_rng(0).integers(0, 50257, (b, t))
    tids = torch.from_numpy(ids_np)

    def torch_fwd():
        with torch.no_grad():
            (model(input_ids=tids).last_hidden_state ** 2).sum()

    def torch_fwd_bwd():
        model.zero_grad(set_to_none=True)
        (model(input_ids=tids).last_hidden_state ** 2).sum().backward()

    cfg = dataclasses.replace(gpt2.GPT2Config.from_name("gpt2", dtype="float32"), n_layer=layers)
    params = gpt2.init(cfg, jax.random.key(0))
    ids = jnp.asarray(ids_np, jnp.int32)

    def loss(p):
        return jnp.sum(gpt2.apply(cfg, p, ids).hidden ** 2)

    grad = jax.jit(jax.grad(loss))
    with undone(["barrier"]):  # traced now, so this program has no barrier
        grad_plain = jax.jit(jax.grad(lambda p: loss(p)))
        grad_plain.lower(params).compile()
        jax.block_until_ready(grad_plain(params))
    fwd = interleaved({"torch": torch_fwd, "rajax": jax_fn(jax.jit(loss), params)}, reps)
    variants = {"torch": torch_fwd_bwd, "rajax": jax_fn(grad, params)}
    if layers > 1:
        variants["rajax_no_barrier"] = jax_fn(grad_plain, params)
    bwd = interleaved(variants, reps)
    return {"piece": f"trunk{layers}", "forward": fwd, "forward_backward": bwd}


def logprob(b, reps):
    rng = np.random.default_rng(0)
    logits_np = rng.normal(size=(b, 32, 50257)).astype(np.float32)
    tok_np = rng.integers(0, 50257, (b, 32))
    logits, tok = jnp.asarray(logits_np), jnp.asarray(tok_np, jnp.int32)
    ours = jax.jit(jax.value_and_grad(lambda x: rollout.logprobs_of(x, tok).sum()))
    full = jax.jit(jax.value_and_grad(lambda x: logprobs_full_softmax(x, tok).sum()))
    tl, tt = torch.from_numpy(logits_np).requires_grad_(), torch.from_numpy(tok_np)

    def peer():
        tl.grad = None
        torch.gather(torch.log_softmax(tl, -1), 2, tt[..., None]).sum().backward()

    return {"piece": "logprob", "value_and_grad": interleaved(
        {"torch": peer, "rajax": jax_fn(ours, logits), "rajax_full_log_softmax": jax_fn(full, logits)}, reps)}


def lm_head(b, reps):
    """The PPO step's vocabulary part: tied LM head on 32 response positions, log-probs and entropy,
    value and gradient of the log-probs (the entropy is a logged statistic)."""
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(b, 32, 768)), jnp.float32)
    wte = jnp.asarray(rng.normal(size=(50257, 768)) * 0.02, jnp.float32)
    tok = jnp.asarray(rng.integers(0, 50257, (b, 32)), jnp.int32)

    def make(f):
        def loss(w, x):
            lp, ent = f(jnp.einsum("bne,ve->bnv", x, w), tok)
            return lp.sum(), ent.mean()
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))

    one_pass = make(rollout.logprobs_and_entropy)
    separate = make(lambda x, t: (rollout.logprobs_of(x, t), entropy_before(x)))
    return {"piece": "lmhead", "value_and_grad": interleaved(
        {"rajax": jax_fn(one_pass, wte, h), "rajax_separate_logprob_and_entropy": jax_fn(separate, wte, h)}, reps)}


def bert_forward(width, b, reps):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = bert.BertConfig(num_labels=6, dtype="float32")
    params = bert.init(cfg, jax.random.key(0))
    ids = np.random.default_rng(0).integers(1000, 30000, (b, width)).astype(np.int32)
    jids, jmask = jnp.asarray(ids), jnp.ones((b, width), jnp.int32)
    ours = jax.jit(bert.apply, static_argnums=0)
    # rajax as it was before its last layer computed only the [CLS] row (traced with that undone).
    # A function of its own: jit wrappers of one function share traces.
    all_rows = jax.jit(lambda c, *a: bert.apply(c, *a), static_argnums=0)
    with undone(["cls"]):
        jax.block_until_ready(all_rows(cfg, params, jids, jmask))
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=6)).eval()
    tids = torch.from_numpy(ids.astype(np.int64))

    def peer():
        with torch.no_grad():
            model(input_ids=tids).logits

    return {"piece": f"bert{width}", "forward": interleaved(
        {"torch": peer, "rajax": jax_fn(ours, cfg, params, jids, jmask),
         "rajax_all_rows_in_last_layer": jax_fn(all_rows, cfg, params, jids, jmask)}, reps)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", choices=["trunk1", "trunk12", "logprob", "lmhead", "bert"],
                    help="run only these pieces (repeatable; default all)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args(argv)
    only = set(a.only or ["trunk1", "trunk12", "logprob", "lmhead", "bert"])
    out = {"batch": a.batch, "seq": a.seq, "jax": jax.__version__, "torch": torch.__version__,
           "torch_threads": torch.get_num_threads(), "xla_flags": os.environ.get("XLA_FLAGS", ""), "rows": []}
    jobs = [("trunk1", lambda: trunk(1, a.batch, a.seq, a.reps)), ("trunk12", lambda: trunk(12, a.batch, a.seq, a.reps)),
            ("logprob", lambda: logprob(a.batch, a.reps)), ("lmhead", lambda: lm_head(a.batch, a.reps)),
            ("bert", lambda: bert_forward(64, a.batch, a.reps)), ("bert", lambda: bert_forward(80, a.batch, a.reps))]
    for name, job in jobs:
        if name in only:
            out["rows"].append(job())
            print(json.dumps(out["rows"][-1]), file=sys.stderr, flush=True)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
