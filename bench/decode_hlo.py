"""Does the sampler's decode loop cast the float32 weights to the compute dtype at every step?

    python bench/decode_hlo.py --model tiny --dtype bfloat16

Every ``Dense`` casts its float32 kernel to the compute dtype on each call, so the traced decode
``while_loop`` body holds one convert per weight matrix. Unless XLA hoists those loop-invariant
converts out of the loop, each bfloat16 decode step reads every weight in float32 and writes and
reads it again in bfloat16. This compiles ``rollout.sample`` on this backend, walks the optimised HLO
(``compile().as_text()``) and counts, for the while loop with the model's dots (the decode loop), the
converts whose shape is a weight matrix's (or its transpose) in the computations the loop body
reaches, and the same converts outside that loop. A convert counts when its shape is a weight
matrix's or its transpose, or when it has as many elements as a weight matrix of 4,096 or more (a
backend may convert a reshaped weight, e.g. inside a GEMM fusion; the tiny model's activations at
batch 3 have none of those sizes). One JSON line.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys

import jax
import jax.numpy as jnp

from rajax.core import rollout
from rajax.models import gpt2

TINY = dict(vocab_size=512, n_positions=128, n_embd=64, n_layer=2, n_head=2)
_HEAD = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition|branch_computations|called_computations)=\{?([^}\s]+(?:,\s*%[\w.\-]+)*)")
_WHILE = re.compile(r"\swhile\(.*condition=%([\w.\-]+), body=%([\w.\-]+)")
_CONVERT = re.compile(r"=\s*\w+\[([\d,]*)\]\S*\s+convert\(")
_DOT = re.compile(r"\s(?:dot|convolution)\(|custom-call\(.*(?:gemm|matmul)", re.I)


def computations(hlo: str) -> dict[str, list[str]]:
    """The HLO module's computations: name -> its instruction lines."""
    comps, name = {}, None
    for line in hlo.splitlines():
        m = _HEAD.match(line)
        if m:
            name = m.group(1)
            comps[name] = []
        elif line.strip() == "}":
            name = None
        elif name is not None:
            comps[name].append(line)
    return comps


def reachable(comps: dict[str, list[str]], roots) -> set[str]:
    seen, todo = set(), list(roots)
    while todo:
        c = todo.pop()
        if c in seen or c not in comps:
            continue
        seen.add(c)
        for line in comps[c]:
            for group in _CALLS.findall(line):
                todo += [n.strip().lstrip("%") for n in group.split(",")]
    return seen


def loop_converts(hlo: str, weight_shapes) -> dict:
    """Weight-shaped converts inside the while loop with the most dots, and outside it."""
    comps = computations(hlo)
    shapes = {tuple(s) for s in weight_shapes} | {tuple(reversed(s)) for s in weight_shapes}
    sizes = {math.prod(s) for s in weight_shapes if math.prod(s) >= 4096}

    def weight_like(dims: str) -> bool:
        shape = tuple(int(d) for d in dims.split(",") if d)
        return shape in shapes or math.prod(shape) in sizes

    def count(names, pattern):
        n = 0
        for c in names:
            for line in comps[c]:
                m = pattern.search(line)
                if m and (pattern is _DOT or weight_like(m.group(1))):
                    n += 1
        return n

    loops = []
    for lines in comps.values():
        for line in lines:
            m = _WHILE.search(line)
            if m:
                inside = reachable(comps, [m.group(2), m.group(1)])
                loops.append((count(inside, _DOT), m.group(2), inside))
    if not loops:
        raise ValueError("no while loop in the HLO")
    dots, body, inside = max(loops, key=lambda t: t[0])
    return {"loop_body": body, "loop_dots": dots, "loop_weight_converts": count(inside, _CONVERT),
            "outside_loop_weight_converts": count(set(comps) - inside, _CONVERT)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["tiny", "gpt2"], default="tiny")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    ap.add_argument("--batch", type=int, default=3, help="odd, so no activation has a weight's shape")
    a = ap.parse_args(argv)
    cfg = (gpt2.GPT2Config(**TINY, dtype=a.dtype) if a.model == "tiny"
           else gpt2.GPT2Config.from_name(a.model, dtype=a.dtype))
    params = gpt2.init(cfg, jax.random.key(0))
    ids = jnp.ones((a.batch, 8), jnp.int32)
    hlo = rollout.sample.lower(cfg, params, ids, jnp.ones_like(ids), jax.random.key(1), 0, max_new_tokens=6,
                               eos_id=cfg.vocab_size - 1).compile().as_text()
    weights = [x.shape for x in jax.tree.leaves(params) if x.ndim == 2]
    r = {"bench": "decode_hlo", "model": a.model, "dtype": a.dtype, "backend": jax.default_backend(),
         "weight_matrices": len(weights), **loop_converts(hlo, weights)}
    print(json.dumps(r), flush=True)
    return r


if __name__ == "__main__":
    main(sys.argv[1:])
