"""The environment of a benchmark run, as one JSON line: versions, JAX's backend and devices, the
matmul precision, and what torch sees. bench/gpu.sh skips the JAX steps unless the backend is "gpu"."""
import importlib.metadata as md
import json
import os
import platform
import sys


def version(pkg):
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


def main():
    r = {"bench": "env", "python": sys.version.split()[0], "platform": platform.platform(),
         "versions": {p: version(p) for p in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax",
                                               "optax", "numpy", "torch", "transformers", "tokenizers")},
         "xla_flags": os.environ.get("XLA_FLAGS")}
    try:
        import jax

        mp = jax.config.jax_default_matmul_precision
        r.update(jax_backend=jax.default_backend(), jax_devices=[str(d) for d in jax.devices()],
                 device_kind=jax.devices()[0].device_kind,
                 jax_default_matmul_precision=None if mp is None else str(mp))
    except Exception as e:  # recorded, not raised: the peer can still run
        r["jax_error"] = repr(e)
    try:
        import torch

        r.update(torch_cuda=torch.cuda.is_available(),
                 torch_device=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    except Exception as e:
        r["torch_error"] = repr(e)
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
