"""Rollout throughput of rajax's sampler (docs/paper.md §3.1 shapes: batch 128, prompt 64, 48 new tokens).

    python bench/generate.py                      # GPT-2 small, float32
    python bench/generate.py --dtype bfloat16
    python bench/generate.py --model tiny --batch 8 --iters 3   # quick CPU smoke run

Random weights (``gpt2.init``); every row generates exactly ``--new`` tokens
(``min_new_tokens = max_new_tokens``, so EOS cannot end a row early and the count is honest).
Prints one JSON line: the median seconds per ``sample`` call after one warm-up (compile) call, and
generated tokens per second = batch * new / median.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from rajax.core import rollout
from rajax.models import gpt2

TINY = dict(vocab_size=1024, n_positions=256, n_embd=64, n_layer=2, n_head=4)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["gpt2", "tiny"], default="gpt2")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    for flag in ("batch", "prompt", "new", "iters"):
        if getattr(a, flag) < 1:
            ap.error(f"--{flag} must be >= 1")
    if a.model == "gpt2":
        cfg = gpt2.GPT2Config.from_name("gpt2", dtype=a.dtype)
    else:
        cfg = gpt2.GPT2Config(**TINY, dtype=a.dtype)
    if a.prompt + a.new > cfg.n_positions:
        ap.error(f"--prompt + --new = {a.prompt + a.new} exceeds the model's {cfg.n_positions} positions")

    k_init, k_ids, k_sample = jax.random.split(jax.random.key(a.seed), 3)
    params = gpt2.init(cfg, k_init)
    eos = cfg.vocab_size - 1
    ids = jax.random.randint(k_ids, (a.batch, a.prompt), 0, eos, jnp.int32)
    mask = jnp.ones_like(ids)

    def run(key):
        s = rollout.sample(cfg, params, ids, mask, key, a.new, max_new_tokens=a.new, eos_id=eos,
                            top_k=a.top_k, top_p=a.top_p)
        return jax.block_until_ready(s)

    t0 = time.perf_counter()
    s = run(k_sample)
    first = time.perf_counter() - t0
    if int(s.mask.sum()) != a.batch * a.new:
        raise RuntimeError("a row stopped before --new tokens; min_new_tokens should prevent that")
    times = []
    for i in range(a.iters):
        t0 = time.perf_counter()
        run(jax.random.fold_in(k_sample, i + 1))
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    dev = jax.devices()[0]
    out = {
        "bench": "generate",
        "model": a.model,
        "params_M": round(gpt2.num_params(params) / 1e6, 2),
        "dtype": a.dtype,
        "batch": a.batch,
        "prompt": a.prompt,
        "new": a.new,
        "iters": a.iters,
        "first_call_s": round(first, 3),
        "median_s": round(med, 4),
        "min_s": round(min(times), 4),
        "tokens_per_s": round(a.batch * a.new / med, 1),
        "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
        "jax_default_matmul_precision": (None if jax.config.jax_default_matmul_precision is None
                                         else str(jax.config.jax_default_matmul_precision)),
        "jax": jax.__version__,
    }
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
