"""Memory planning without a GPU: compile the PPO step ahead of time at real shapes and read XLA's
memory analysis (bytes per device), replicated and FSDP-sharded over a mesh of fake CPU devices.

    python bench/memory.py                          # every row of docs/models.md's table (minutes)
    python bench/memory.py --only qwen2.5-0.5b      # one model
    python bench/memory.py --devices 8 --json out.json
    python bench/memory.py --remat --only gpt-j-6b  # blocks rematerialised in the backward pass

Nothing is allocated: parameters, optimizer state and the rollout are ``jax.eval_shape`` /
``ShapeDtypeStruct`` trees carrying their ``NamedSharding``, and ``jax.jit(...).lower(...).compile()
.memory_analysis()`` gives the compiled program's argument, output, alias and temporary bytes per
device. These are compile-time estimates on the CPU backend: the GPU backend fuses and schedules
differently (and rematerialises under memory pressure), so expect the same order, not the same bytes.

Rows: the models of docs/models.md at the paper's shapes. ``full``: every parameter trains (float32
masters and Adam moments, ``--dtype`` compute); ``lora``: rank 16, alpha 16 on q_proj/v_proj (the
paper's GPT-J recipe), the frozen base stored in the compute dtype, float32 adapters/value head/Adam.
On the CPU backend bfloat16 dots are computed by converting to float32, and XLA hoists those
converted weight copies out of the PPO loops, which inflates the bfloat16 rows' temporaries (GPT-J
LoRA: 42.7 GiB of temporaries in bfloat16, 0.7 GiB in float32); a GPU multiplies bfloat16 natively. The rollout is
B x (P + N) = B x (64 + 48) (IMDB), one full-batch minibatch and 4 PPO epochs, batch sharded over
the devices. The LoRA rows also compile the rollout's policy + reference pass twice, once with the
reference reading the policy's own tree (adapters off) and once with a separate reference copy, to
show what the shared reference saves.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

if "jax" not in sys.modules:  # fake devices must be configured before jax initialises
    n = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--devices=")), None)
    if n is None and "--devices" in sys.argv:
        n = sys.argv[sys.argv.index("--devices") + 1]
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={n or 8}").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rajax.core import parallel, ppo, rollout  # noqa: E402
from rajax.models import gpt2, gptj, llama, lora  # noqa: E402

# Real configs (from the checkpoints' config.json; no download needed).
MODELS = {
    "gpt2-xl": (gpt2.GPT2Config.from_name("gpt2-xl", dropout=0.0), gpt2.init),
    "gpt-j-6b": (gptj.GPTJConfig(), gptj.init),
    "llama-3.2-1b": (llama.LlamaConfig(vocab_size=128256, max_position=131072, n_embd=2048, n_layer=16, n_head=32,
                                       n_kv_head=8, head_dim=64, intermediate=8192, rms_eps=1e-5, rope_theta=5e5,
                                       rope_type="llama3", rope_factor=32.0, rope_original_max=8192,
                                       tie_embeddings=True), llama.init),
    "qwen2.5-0.5b": (llama.LlamaConfig(vocab_size=151936, max_position=32768, n_embd=896, n_layer=24, n_head=14,
                                       n_kv_head=2, head_dim=64, intermediate=4864, rms_eps=1e-6, rope_theta=1e6,
                                       qkv_bias=True, tie_embeddings=True, model_type="qwen2"), llama.init),
}
# (model, mode, batch): the paper's runs (gpt2-xl full at 128; GPT-J LoRA at 8, its Table 7) and the
# Llama-family policies at the IMDB batch.
ROWS = [("gpt2-xl", "full", 128), ("gpt-j-6b", "lora", 8), ("llama-3.2-1b", "full", 128),
        ("llama-3.2-1b", "lora", 128), ("qwen2.5-0.5b", "full", 128), ("qwen2.5-0.5b", "lora", 128)]
PROMPT, NEW = 64, 48
LORA = lora.LoRA(rank=16, alpha=16.0, targets=("q_proj", "v_proj"))


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _bytes(c) -> dict:
    m = c.memory_analysis()
    out = dict(args=m.argument_size_in_bytes, out=m.output_size_in_bytes, alias=m.alias_size_in_bytes,
               temp=m.temp_size_in_bytes)
    out["peak"] = out["args"] + out["out"] - out["alias"] + out["temp"]
    return out


def measure(name: str, mode: str, batch: int, sharded: bool, mesh, remat: bool = False,
            dtype: str = "bfloat16") -> dict:
    base, init = MODELS[name]
    cfg = base.replace(dtype=dtype, remat=remat)
    params = jax.eval_shape(lambda: init(cfg, jax.random.key(0)))
    frozen = None
    if mode == "lora":
        cfg = cfg.replace(lora=LORA)
        params = {**params, "lora": jax.eval_shape(lambda p: lora.init(cfg, p, jax.random.key(1)), params)}
        params, frozen = lora.split(params)
        frozen = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype)), frozen)  # base stored as computed
    pcfg = ppo.PPOConfig(mini_batch_size=batch)
    tx = ppo.default_optimizer(pcfg)
    opt = jax.eval_shape(tx.init, params)
    place = (lambda t: parallel.param_shardings(t, mesh)) if sharded else \
        (lambda t: jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), t))
    data = NamedSharding(mesh, PartitionSpec("data"))
    s = PROMPT + NEW
    i32, f32 = jnp.int32, jnp.float32
    ro = rollout.Rollout(*(jax.ShapeDtypeStruct(shape, dt, sharding=data) for shape, dt in
                           [((batch, s), i32), ((batch, s), i32), ((batch, NEW), i32), ((batch, NEW), f32),
                            ((batch, NEW), f32), ((batch, NEW), f32), ((batch,), f32)]))
    rep = NamedSharding(mesh, PartitionSpec())
    scalar = lambda dt: jax.ShapeDtypeStruct((), dt, sharding=rep)  # noqa: E731
    key = jax.eval_shape(lambda: jax.random.key(0))
    key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep)
    args = (_abstract(params, place(params)), _abstract(opt, place(opt)), ro, scalar(f32), scalar(i32), key,
            None if frozen is None else _abstract(frozen, place(frozen)))
    t = time.time()
    c = ppo._ppo_step_jit.lower(cfg, pcfg, tx, *args).compile()
    row = dict(model=name, mode=mode, batch=batch, dtype=dtype, remat=remat, placement="sharded" if sharded else "replicated",
               devices=mesh.size, trainable=lora.num_params(params),
               params=lora.num_params(params) + (0 if frozen is None else lora.num_params(frozen)),
               compile_s=round(time.time() - t, 1), ppo_step=_bytes(c))
    if mode == "lora":  # the rollout's policy + reference pass: shared base vs a second copy
        full = _abstract(ppo.with_frozen(params, frozen), place(ppo.with_frozen(params, frozen)))
        ids = jax.ShapeDtypeStruct((batch, s), i32, sharding=data)
        ref = cfg.replace(lora=None)
        lower = lambda rp: rollout.policy_and_reference.lower(cfg, full, rp, ids, ids, prompt_width=PROMPT,  # noqa: E731
                                                              reference=ref).compile()
        copy = {k: v for k, v in full.items() if k != "lora"}
        row["passes_shared"], row["passes_copy"] = _bytes(lower(None)), _bytes(lower(copy))
    return row


def _gib(b) -> str:
    return f"{b / 2**30:.2f}"


def table(rows) -> str:
    lines = ["| model | mode | batch | compute | remat | placement | params | trainable | arguments GiB | "
             "temporaries GiB | peak GiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["ppo_step"]
        lines.append(f"| {r['model']} | {r['mode']} | {r['batch']} | {r['dtype']} | {'yes' if r.get('remat') else 'no'} | "
                     f"{r['placement']} ({r['devices']}) | "
                     f"{r['params'] / 1e9:.2f}B | {r['trainable'] / 1e6:.1f}M | {_gib(m['args'])} | {_gib(m['temp'])} | "
                     f"{_gib(m['peak'])} |")
    extra = [r for r in rows if "passes_shared" in r]
    if extra:
        lines += ["", "| LoRA policy + reference pass | placement | arguments GiB, reference = base with adapters off | "
                  "arguments GiB, reference = a second copy |", "|---|---|---|---|"]
        for r in extra:
            lines.append(f"| {r['model']} batch {r['batch']} | {r['placement']} | {_gib(r['passes_shared']['args'])} | "
                         f"{_gib(r['passes_copy']['args'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=sorted(MODELS), action="append", help="measure only these models")
    p.add_argument("--devices", type=int, default=8, help="fake CPU devices of the mesh (set before jax starts)")
    p.add_argument("--placement", choices=["replicated", "sharded", "both"], default="both")
    p.add_argument("--remat", action="store_true", help="rematerialise each block in the backward pass")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16",
                   help="compute dtype (and the LoRA base's storage); masters, adapters and Adam stay float32")
    p.add_argument("--json", type=pathlib.Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    mesh = parallel.make_mesh()
    if mesh.size != args.devices:
        raise SystemExit(f"jax sees {mesh.size} devices, not {args.devices}: run bench/memory.py in a fresh process")
    rows = []
    for name, mode, batch in ROWS:
        if args.only and name not in args.only:
            continue
        for sharded in {"replicated": [False], "sharded": [True], "both": [False, True]}[args.placement]:
            r = measure(name, mode, batch, sharded, mesh, remat=args.remat, dtype=args.dtype)
            print(json.dumps(r), file=sys.stderr, flush=True)
            rows.append(r)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
