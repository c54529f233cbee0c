"""The card's measured bf16 matmul rate (the yardstick for the PPO update's TFLOP/s).

    python bench/matmul.py --n 8192 --dtype bfloat16
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    n, dt = args.n, jnp.dtype(args.dtype)
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), dt)
    b = jax.random.normal(kb, (n, n), dt)
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    t = time.perf_counter()
    for _ in range(args.reps):
        out = f(a, b)
    out.block_until_ready()
    s = (time.perf_counter() - t) / args.reps
    r = {"bench": "matmul", "n": n, "dtype": args.dtype, "seconds": s, "tflop_per_s": 2 * n**3 / s / 1e12,
         "device": str(jax.devices()[0].device_kind)}
    print(json.dumps(r))
    return r


if __name__ == "__main__":
    main()
