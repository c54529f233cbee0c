"""The comparison table of a bench/gpu.sh run, as Markdown, from its results.jsonl.

    python bench/summary.py OUT/results.jsonl --rev <git hash> > OUT/summary.md

Per pair of steps ``rajax_<X>`` / ``peer_<X>``: each phase's median seconds on both sides and the
speed-up (peer / rajax; above 1 rajax is faster), the PPO update's model TFLOP/s and its MFU against
the measured matmul rate of the same dtype, compile seconds, peak device memory and the reward
model's widths. A step killed by its timeout is summarised from its progress lines (marked
"partial"). Then the sampler alone, the decode loop's HLO check, the issue's targets, and every
step's exit status, wall time and limit. Only what the file holds is reported: a missing number is
"-", never a guess.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

# The paper's own runs (a TRL 0.7 fork on a V100/A100): 52 minutes for 194 iterations of 128 episodes.
ANCHOR_S = 52 * 60 / 194
# (label, rajax phase, peer phases summed): peer / rajax is the speed-up.
PHASES = [
    ("sampling (whole batch)", "sampling", ["generate_full_batch"]),
    ("  peer: TRL 0.7 chunks of 4", "sampling", ["generate_chunked"]),
    ("reward (rajax incl. tokenize)", "reward", ["reward_model"]),
    ("policy + reference passes", "forward", ["forward_passes"]),
    ("PPO update (GAE + 4 epochs)", "ppo", ["advantages", "ppo_update"]),
    ("iteration (peer: torch best)", "total", ["iteration_torch_best"]),
    ("  peer: TRL 0.7 pattern", "total", ["iteration_trl07_pattern"]),
]


def load(lines) -> list[dict]:
    out = []
    for line in lines:
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except ValueError:  # a line cut by a kill: the rest of the file still counts
                continue
    return out


def by_step(rows: list[dict]) -> dict[str, list[dict]]:
    steps: dict[str, list[dict]] = {}
    for r in rows:
        steps.setdefault(r.get("step", "?"), []).append(r)
    return steps


def rajax_result(rows: list[dict]) -> dict | None:
    """The step's result line, or medians from its progress lines when it was killed first."""
    done = [r for r in rows if "median_s" in r and "task" in r]
    if done:
        return {**done[-1], "partial": False}
    its = [r for r in rows if r.get("progress") == "iter"]
    if not its:
        return None
    keys = ("sampling", "reward", "tokenize", "forward", "ppo", "total")
    warm = next((r for r in rows if r.get("progress") == "warmup"), {})
    return {"median_s": {k: statistics.median(r[k] for r in its) for k in keys}, "partial": True,
            "iters": its, "warmup": warm, "n_iters": len(its)}


def peer_result(rows: list[dict]) -> dict | None:
    done = [r for r in rows if r.get("peer") == "torch" and "median_s" in r]
    if done:
        return {**done[-1], "partial": False}
    its = [r for r in rows if "iter" in r and r.get("warmup") is False]
    if not its:
        return None
    keys = dict.fromkeys(k for r in its for k in r if k not in ("iter", "warmup", "step", "t_s"))
    return {"median_s": {k: statistics.median(r[k] for r in its if k in r) for k in keys}, "partial": True,
            "n_iters": len(its)}


def matmul_rates(rows: list[dict]) -> dict[str, float]:
    return {r["dtype"]: r["tflop_per_s"] for r in rows if r.get("bench") == "matmul"}


def fmt(x, nd=3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def ratio(peer, ours) -> float | None:
    return peer / ours if peer and ours else None


def pair_table(name: str, ours: dict | None, peer: dict | None, rates: dict) -> list[str]:
    om = (ours or {}).get("median_s", {})
    pm = (peer or {}).get("median_s", {})
    head = f"### {name}"
    if not ours and not peer:
        return [head + ": no results from either side (the Steps table says why)", ""]
    if ours:
        head += f": {ours.get('model', '')} {ours.get('dtype', '')} batch {ours.get('batch', '')}".rstrip()
        if ours.get("partial"):
            head += f" (rajax partial: {ours['n_iters']} iterations before the kill)"
    if peer and peer.get("partial"):
        head += f" (peer partial: {peer['n_iters']} iterations)"
    out = [head, "", "| phase | rajax s | peer s | peer / rajax |", "|---|---|---|---|"]
    for label, mine, theirs in PHASES:
        p = sum(pm[k] for k in theirs) if all(k in pm for k in theirs) else None
        o = om.get(mine)
        if p is None and label.startswith("  "):
            continue
        r = ratio(p, o)
        out.append(f"| {label} | {fmt(o)} | {fmt(p)} | {'-' if r is None else f'{r:.2f}x'} |")
    if name.startswith("imdb") and om.get("total"):
        out.append(f"| paper's runs (TRL 0.7 fork, V100/A100; 52 min / 194 iterations) | {fmt(om['total'])} | "
                   f"{ANCHOR_S:.1f} | {ANCHOR_S / om['total']:.0f}x |")
    out.append("")
    notes = []
    if ours and not ours.get("partial"):
        dt = ours.get("dtype")
        rate = rates.get(dt)
        tf = ours.get("ppo_tflop_per_s")
        mfu = f"{100 * tf / rate:.0f}% of the measured {dt} matmul rate ({rate:.3g} TFLOP/s)" if tf and rate else "-"
        notes.append(f"- PPO update: {fmt(ours.get('ppo_model_tflop'))} model TFLOP in {fmt(om.get('ppo'))} s = "
                     f"{fmt(tf, 2)} TFLOP/s, MFU {mfu}; FLOPs = {ours.get('ppo_flop_formula', '-')}")
        prec = ours.get("precision", {})
        notes.append(f"- rajax precision: compute {prec.get('compute')}, float32 masters and Adam, float32 dots "
                     f"as {prec.get('f32_dots')} (jax_default_matmul_precision {prec.get('jax_default_matmul_precision')})")
        w = ours.get("warmup", {})
        notes.append(f"- compile: {fmt(ours.get('compile_s_total'), 1)} s in all (warm-up iteration "
                     f"{fmt(w.get('total'), 1)} s), {fmt(ours.get('compile_s_in_timed_iters'), 2)} s inside timed "
                     f"iterations; compilations grew after warm-up: {ours.get('compilations_grew_after_warmup')}")
        widths = [r.get("reward_width") for r in ours.get("iters", [])]
        notes.append(f"- reward widths per timed iteration: {widths} (warm-up {w.get('reward_width', '-')}"
                     f", neighbours compiled {w.get('neighbour_widths', '-')})")
        pk = ours.get("peak_device_bytes")
        notes.append(f"- peak memory: rajax {fmt(pk / 2**30 if pk else None, 2)} GiB, "
                     f"peer {fmt((peer or {}).get('peak_mem_gib'), 2)} GiB")
    if peer and not peer.get("partial"):
        pp = peer.get("precision", {})
        notes.append(f"- peer: {peer.get('device')}, torch {peer.get('torch')}, compute {pp.get('compute')}, "
                     f"{pp.get('params')} weights and Adam, float32 matmuls as {pp.get('f32_matmul')}")
    return out + notes + [""]


def targets(steps: dict, pairs: dict, rates: dict) -> list[str]:
    """The issue's targets (H200, bf16), each with the measured value; '-' where it was not measured."""
    ours, peer = pairs.get("imdb_bf16", (None, None))
    om, pm = (ours or {}).get("median_s", {}), (peer or {}).get("median_s", {})
    gen = next((r for r in steps.get("sampler_bf16", []) if r.get("bench") == "generate"), None)
    rows = []

    def row(what, value, ok):
        rows.append(f"| {what} | {value} | {'-' if ok is None else ('yes' if ok else 'no')} |")

    t = om.get("total")
    row("imdb iteration <= 0.15 s", fmt(t), None if t is None else t <= 0.15)
    r = ratio(pm.get("iteration_torch_best"), t)
    row(">= 8x the bf16 peer's iteration_torch_best", fmt(r, 2), None if r is None else r >= 8)
    r = ratio(pm.get("iteration_trl07_pattern"), t)
    row(">= 80x its TRL-0.7 pattern", fmt(r, 1), None if r is None else r >= 80)
    s = gen["median_s"] if gen else om.get("sampling")
    r = ratio(pm.get("generate_full_batch"), s)
    row(f">= 10x the peer's generate_full_batch (rajax: {'bench/generate.py' if gen else 'the iteration'}'s sampling)",
        fmt(r, 2), None if r is None else r >= 10)
    tf, rate = (ours or {}).get("ppo_tflop_per_s"), rates.get("bfloat16")
    m = tf / rate if tf and rate else None
    row("PPO update >= 40% of the bf16 matmul rate", "-" if m is None else f"{100 * m:.0f}%",
        None if m is None else m >= 0.4)
    grew = [p[0].get("compile_s_in_timed_iters") for p in pairs.values() if p[0] and not p[0].get("partial")]
    row("no compile inside a timed iteration", fmt(max(grew) if grew else None, 2) + " s",
        None if not grew else max(grew) == 0)
    return ["### Targets (imdb, bf16)", "", "| target | measured | met |", "|---|---|---|", *rows, ""]


def summary(rows: list[dict], rev: str = "unknown") -> str:
    steps = by_step(rows)
    rates = matmul_rates(steps.get("matmul", []))
    env = next((r for r in steps.get("env", []) if r.get("bench") == "env"), {})
    dev = env.get("device_kind") or "-"
    out = [f"## bench/gpu.sh at {rev}: {dev}, jax {env.get('versions', {}).get('jax', '-')}, "
           f"torch {env.get('versions', {}).get('torch', '-')}, backend {env.get('jax_backend', '-')}", ""]
    if rates:
        out += ["matmul (jax, square): " + ", ".join(f"{d} {v:.3g} TFLOP/s" for d, v in rates.items()) +
                " (float32 at JAX's default precision: TF32 on NVIDIA)", ""]
    pairs = {}
    for name in steps:
        if name.startswith("rajax_") or name.startswith("peer_"):
            key = name.split("_", 1)[1]
            if key not in pairs:
                pairs[key] = (rajax_result(steps.get("rajax_" + key, [])),
                              peer_result(steps.get("peer_" + key, [])))
    for key, (ours, peer) in pairs.items():
        out += pair_table(key, ours, peer, rates)
    gen = next((r for r in steps.get("sampler_bf16", []) if r.get("bench") == "generate"), None)
    if gen:
        out += [f"- sampler alone (bench/generate.py, {gen['dtype']}, {gen['batch']} x ({gen['prompt']}+{gen['new']})): "
                f"{gen['median_s']} s, {gen['tokens_per_s']} tokens/s, first call {gen['first_call_s']} s"]
    hlo = next((r for r in steps.get("decode_hlo", []) if r.get("bench") == "decode_hlo"), None)
    if hlo:
        out += [f"- decode loop HLO ({hlo['backend']}, {hlo['dtype']}): {hlo['loop_weight_converts']} weight "
                f"converts inside the loop ({hlo['loop_dots']} dots), {hlo['outside_loop_weight_converts']} outside"]
    out += ["", *targets(steps, pairs, rates)]
    out += ["### Steps", "", "| step | rc | wall s | limit s | note |", "|---|---|---|---|---|"]
    for name, rs in steps.items():
        end = [r for r in rs if "rc" in r or "skipped" in r]
        e = end[-1] if end else {}
        note = ""
        if "skipped" in e:
            note = f"skipped: {e['skipped']}"
        elif e.get("rc") == 124:
            its = [r for r in rs if r.get("progress") in ("iter", "warmup", "setup") or "iter" in r]
            last = its[-1] if its else None
            note = ("timed out" if last is None else
                    f"timed out after peer iteration {last['iter']}" if "iter" in last else
                    f"timed out after progress {last['progress']}")
        elif e.get("rc") not in (0, None):
            note = "failed (gpu.log has the error)"
        out.append(f"| {name} | {e.get('rc', '-')} | {e.get('wall_s', '-')} | {e.get('limit_s', '-')} | {note} |")
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results")
    ap.add_argument("--rev", default="unknown", help="the git revision measured")
    a = ap.parse_args(argv)
    with open(a.results) as f:
        sys.stdout.write(summary(load(f), a.rev))


if __name__ == "__main__":
    main()
