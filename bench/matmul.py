"""The card's measured matmul rate per dtype (the yardstick for the PPO update's TFLOP/s and MFU).

    python bench/matmul.py --n 8192 --dtype bfloat16 float32

One JSON line per dtype. float32 runs at JAX's default matmul precision, which on NVIDIA GPUs lets
XLA use TF32 (the line records it): the same precision as rajax's float32 runs, so the float32
PPO update is compared with the rate it can reach.
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--dtype", nargs="+", default=["bfloat16"], choices=["bfloat16", "float32"])
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    mp = jax.config.jax_default_matmul_precision
    out = []
    for name in args.dtype:
        n, dt = args.n, jnp.dtype(name)
        ka, kb = jax.random.split(jax.random.key(0))
        a = jax.random.normal(ka, (n, n), dt)
        b = jax.random.normal(kb, (n, n), dt)
        f = jax.jit(lambda a, b: a @ b)
        f(a, b).block_until_ready()
        t = time.perf_counter()
        for _ in range(args.reps):
            c = f(a, b)
        c.block_until_ready()
        s = (time.perf_counter() - t) / args.reps
        r = {"bench": "matmul", "n": n, "dtype": name, "seconds": s, "tflop_per_s": 2 * n**3 / s / 1e12,
             "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
             "jax_default_matmul_precision": None if mp is None else str(mp)}
        print(json.dumps(r), flush=True)
        out.append(r)
    return out


if __name__ == "__main__":
    main()
