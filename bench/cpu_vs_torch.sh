#!/usr/bin/env bash
# rajax against the PyTorch peer (bench/torch_peer.py) on this machine's CPU, in ONE call, interleaved
# rajax / peer / rajax / peer so that a drift of the machine shows up in both, then the per-phase
# table with the ratio rajax / peer (below 1: rajax is faster). Issue 16's shapes by default:
# GPT-2 small with random weights, rtp (32 prompt + 32 new tokens), batch 8, float32.
#
#   flock /tmp/rajax-cpu.lock bash bench/cpu_vs_torch.sh               # ~6 min on 2 cores
#   TASK=imdb BATCH=8 ITERS=2 ROUNDS=2 bash bench/cpu_vs_torch.sh
#   MODEL=tiny BATCH=16 bash bench/cpu_vs_torch.sh                     # smoke run (2x64 GPT-2), ~1 min
#   RAJAX_ROOT=/tmp/rajax-base bash bench/cpu_vs_torch.sh              # another checkout of rajax
#   BEFORE_ROOT=/tmp/rajax-base bash bench/cpu_vs_torch.sh             # before / peer / after in each round
#
# Time it on a quiet machine (the script prints the load average before each run). Medians are over
# each run's ITERS iterations after one warm-up; the table takes the median over the runs.
# Phases: sampling = all N new tokens of the whole batch (peer: generate_full_batch; its TRL-0.7
# chunked generation is listed too); reward = rajax's decode + tokenize + BERT (the peer feeds random
# ids, no tokenizer: rajax's tokenization share is listed separately); forward = policy + reference
# passes; ppo = rewards/GAE/whitening + 4 epochs (peer: advantages + ppo_update); iteration: the
# peer's iteration_torch_best (and its TRL-0.7 pattern).
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
RAJAX_ROOT=${RAJAX_ROOT:-$HERE}
BEFORE_ROOT=${BEFORE_ROOT:-}
TASK=${TASK:-rtp}
MODEL=${MODEL:-gpt2}
BATCH=${BATCH:-8}
ITERS=${ITERS:-2}
ROUNDS=${ROUNDS:-2}
PY=${PY:-$HERE/.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${OUT:-$(mktemp -d)}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
echo "== rajax: $RAJAX_ROOT ($(git -C "$RAJAX_ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no git')" \
     "$(git -C "$RAJAX_ROOT" status --porcelain 2>/dev/null | grep -q . && echo '+ uncommitted changes')); out: $OUT"
echo "== $(nproc) cores; $TASK, $MODEL, batch $BATCH, $ITERS iterations x $ROUNDS rounds"
[ -n "$BEFORE_ROOT" ] && echo "== before: $BEFORE_ROOT ($(git -C "$BEFORE_ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
for r in $(seq 1 "$ROUNDS"); do
  mkdir -p "$OUT/rajax_$r" "$OUT/peer_$r"
  if [ -n "$BEFORE_ROOT" ]; then
    mkdir -p "$OUT/before_$r"
    echo "== round $r: before (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    (cd "$BEFORE_ROOT" && BENCH_JSON_DIR="$OUT/before_$r" OUT="$OUT/before_$r" "$PY" bench/iteration.py --task "$TASK" --model "$MODEL" \
        --batch "$BATCH" --dtype float32 --iters "$ITERS" > "$OUT/before_$r/stdout.json")
  fi
  echo "== round $r: rajax (load: $(cut -d' ' -f1-3 /proc/loadavg))"
  (cd "$RAJAX_ROOT" && BENCH_JSON_DIR="$OUT/rajax_$r" OUT="$OUT/rajax_$r" "$PY" bench/iteration.py --task "$TASK" --model "$MODEL" \
      --batch "$BATCH" --dtype float32 --iters "$ITERS" > "$OUT/rajax_$r/stdout.json")
  echo "== round $r: peer (load: $(cut -d' ' -f1-3 /proc/loadavg))"
  BENCH_JSON_DIR="$OUT/peer_$r" OUT="$OUT/peer_$r" "$PY" "$HERE/bench/torch_peer.py" --task "$TASK" --model "$MODEL" --batch "$BATCH" \
      --iters "$ITERS" --chunked-iters "$ITERS" --device cpu > "$OUT/peer_$r/stdout.jsonl"
done
"$PY" - "$OUT" "$TASK" "$ROUNDS" <<'EOF'
import json, pathlib, statistics, sys
out, task, rounds = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ours = [json.loads((out / f"rajax_{r}" / f"iteration_{task}.json").read_text()) for r in range(1, rounds + 1)]
before = [json.loads(p.read_text()) for r in range(1, rounds + 1)
          if (p := out / f"before_{r}" / f"iteration_{task}.json").exists()]
peer = [json.loads((out / f"peer_{r}" / f"torch_peer_{task}.json").read_text()) for r in range(1, rounds + 1)]
rows = [  # (phase, rajax keys summed, peer keys summed)
    ("sampling (whole batch)", ["sampling"], ["generate_full_batch"]),
    ("  peer: TRL 0.7 chunks of 4", None, ["generate_chunked"]),
    ("reward (rajax incl. tokenize)", ["reward"], ["reward_model"]),
    ("  rajax: of which tokenize", ["tokenize"], None),
    ("policy + reference passes", ["forward"], ["forward_passes"]),
    ("PPO update (GAE + 4 epochs)", ["ppo"], ["advantages", "ppo_update"]),
    ("iteration (peer: torch best)", ["total"], ["iteration_torch_best"]),
    ("  peer: TRL 0.7 pattern", None, ["iteration_trl07_pattern"]),
]
def cell(runs, keys):
    if keys is None:
        return None, ""
    v = [sum(run["median_s"][k] for k in keys) for run in runs]
    return statistics.median(v), " / ".join(f"{x:.3f}" for x in v)
print(f"\n{task}, {ours[0]['model']}, batch {ours[0]['batch']}, float32, {ours[0]['device']} "
      f"(jax {ours[0]['jax']}, torch {peer[0]['torch']}, {peer[0]['threads']} torch threads); seconds, "
      "each run's median after a warm-up, runs in order; the ratio is of the medians over runs\n")
def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b is not None else ""
if before:
    print("| phase | before (runs) | after (runs) | peer (runs) | before / peer | after / peer |")
    print("|---|---|---|---|---|---|")
else:
    print("| phase | rajax (runs) | peer (runs) | rajax / peer |")
    print("|---|---|---|---|")
for name, rk, pk in rows:
    (a, at), (b, bt) = cell(ours, rk), cell(peer, pk)
    if before:
        z, zt = cell(before, rk)
        print(f"| {name} | {zt} | {at} | {bt} | {ratio(z, b)} | {ratio(a, b)} |")
    else:
        print(f"| {name} | {at} | {bt} | {ratio(a, b)} |")
widths = [(o.get("reward_width"), o.get("reward_tokens_mean")) for o in before + ours]
print(f"\nreward model input (padded width, mean real BERT tokens) per run, before then after: {widths}")
best = statistics.median(p["median_s"]["iteration_torch_best"] for p in peer)
tot = statistics.median(o["median_s"]["total"] for o in ours)
if before:
    tb = statistics.median(o["median_s"]["total"] for o in before)
    print(f"speed-up of the iteration over the peer's best, before: {best / tb:.2f}x")
print(f"speed-up of the iteration over the peer's best: {best / tot:.2f}x (target >= 1.2x); "
      f"rajax compilations grew after warm-up: {any(o['compilations_grew_after_warmup'] for o in before + ours)}")
EOF
