#!/usr/bin/env bash
# Every GPU measurement, rajax and the PyTorch peer (bench/torch_peer.py) on the same card, in ONE
# device call of at most 600 s that brings back the comparison even when a step fails or runs long:
#
#   GIT_REV=<hash> bash bench/gpu.sh                 # H200: PLAN=compare (the default), est. 280-470 s
#   GIT_REV=<hash> PLAN=scale bash bench/gpu.sh      # gpt2-medium and gpt2-xl, rajax and the peer
#   MODEL=tiny bash bench/gpu.sh                     # CPU dry run of every step (tiny models, batch 8)
#
# BUDGET (default 540 s) is the deadline for the whole script. Each step runs under `timeout -k` with
# the smaller of its cap and the time left; a step whose minimum no longer fits is skipped, and the
# skip is recorded. Steps run in the order of their value (bench/NOTES.md, issue 21, has the plan with
# each step's estimate): environment; matmul rates; imdb bf16 rajax then peer; imdb f32 (TF32) rajax
# then peer; rtp bf16 both; the sampler alone; the decode loop's HLO.
# If JAX's backend is not "gpu", the JAX steps are skipped (and say so) instead of running on the CPU
# until they time out; ALLOW_CPU=1 (implied by MODEL=tiny) runs them anyway. The peer runs with
# --device cuda (MODEL=tiny: cpu).
#
# $OUT (a fresh temp dir if unset) receives exactly four files:
#   results.jsonl  every JSON line any step printed, tagged {"step", "t_s", ...}, appended as printed,
#                  plus one {"step", "rc", "wall_s", "limit_s"} or {"step", "skipped"} line per step;
#   gpu.log        all stdout and stderr;
#   env.txt        GIT_REV, date, nvidia-smi before and after, versions (bench/env.py);
#   summary.md     bench/summary.py's table, also printed last (the device call returns the tail).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
MODEL=${MODEL:-gpt2}
PLAN=${PLAN:-compare}
BUDGET=${BUDGET:-540}
PY=${PY:-python3}
if [ "$MODEL" = tiny ]; then
  BATCH=${BATCH:-8} ITERS=${ITERS:-2} ALLOW_CPU=${ALLOW_CPU:-1} DEVICE=${DEVICE:-cpu} MATMUL_N=${MATMUL_N:-512}
else
  BATCH=${BATCH:-128} ITERS=${ITERS:-5} ALLOW_CPU=${ALLOW_CPU:-0} DEVICE=${DEVICE:-cuda} MATMUL_N=${MATMUL_N:-8192}
fi
# The trained WordPiece tokenizer, shared by the iteration steps (bench/iteration.py); not in $OUT.
export RAJAX_BENCH_CACHE=${RAJAX_BENCH_CACHE:-${TMPDIR:-/tmp}/rajax-bench-cache}
unset BENCH_JSON_DIR  # no per-script files: everything goes through results.jsonl
RESULTS="$OUT/results.jsonl"
DEADLINE=$((SECONDS + BUDGET))
JAX_OK=0

record() { echo "$1" >> "$RESULTS"; }

# step NAME MIN CAP command...: run it under timeout -k with min(CAP, time left), or skip it.
step() {
  local name=$1 min=$2 cap=$3
  shift 3
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt "$min" ]; then
    echo "!! skip $name: ${left}s left of the budget, it needs ${min}s"
    record "{\"step\": \"$name\", \"skipped\": \"budget\", \"left_s\": $left, \"min_s\": $min}"
    return
  fi
  local limit=$((left < cap ? left : cap)) t0=$SECONDS
  echo "== [$name] limit ${limit}s (${left}s left): $*"
  timeout -k 5 "$limit" "$@" 2>&1 | "$PY" bench/tag.py "$name" "$RESULTS"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || echo "!! $name: rc $rc$([ "$rc" -eq 124 ] && echo ' (timed out)')"
  record "{\"step\": \"$name\", \"rc\": $rc, \"wall_s\": $((SECONDS - t0)), \"limit_s\": $limit}"
}

# jax_step: a step that needs JAX on the GPU (or ALLOW_CPU=1).
jax_step() {
  if [ "$JAX_OK" = 1 ]; then
    step "$@"
  else
    echo "!! skip $1: JAX's backend is not gpu (ALLOW_CPU=1 runs it anyway)"
    record "{\"step\": \"$1\", \"skipped\": \"jax backend is not gpu\"}"
  fi
}

main() {
  echo "== bench/gpu.sh: GIT_REV=${GIT_REV:-unknown} MODEL=$MODEL PLAN=$PLAN BATCH=$BATCH ITERS=$ITERS" \
       "BUDGET=${BUDGET}s DEVICE=$DEVICE OUT=$OUT"
  {
    echo "GIT_REV=${GIT_REV:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "MODEL=$MODEL PLAN=$PLAN BATCH=$BATCH ITERS=$ITERS BUDGET=$BUDGET DEVICE=$DEVICE PY=$PY"
    echo "nproc: $(nproc)"
    echo "-- nvidia-smi before"
    nvidia-smi 2>&1 || echo "(no nvidia-smi)"
  } > "$OUT/env.txt"
  # The reward model's WordPiece tokenizer (GPT-2's 50,257 pseudo-words, 30,522 entries) trains on the
  # host, 7-11 s on 2 busy cores, while the first steps use the device; the iteration steps wait for it.
  # JAX_PLATFORMS=cpu: it must never open the GPU, where JAX would take 75% of the memory at once.
  (JAX_PLATFORMS=cpu timeout -k 5 200 "$PY" bench/iteration.py --prepare --model "$MODEL" 2>&1 | "$PY" bench/tag.py prepare "$RESULTS") &
  local prep=$! prep_t0=$SECONDS
  step env 10 60 "$PY" bench/env.py
  grep '"bench": "env"' "$RESULTS" | tail -1 >> "$OUT/env.txt"
  if grep -q '"step": "env".*"jax_backend": "gpu"' "$RESULTS" || [ "$ALLOW_CPU" = 1 ]; then
    JAX_OK=1
  else
    echo "!! JAX's backend is not gpu: the JAX steps are skipped (the peer still runs on $DEVICE)"
  fi
  local tiny=() peer=(--device "$DEVICE")
  [ "$MODEL" = tiny ] && tiny=(--model tiny) && peer+=(--model tiny)
  jax_step matmul 15 60 "$PY" bench/matmul.py --n "$MATMUL_N" --dtype bfloat16 float32
  wait "$prep"
  local prep_rc=$?
  # wall_s: until the wait returned (the training ran beside env and matmul).
  record "{\"step\": \"prepare\", \"rc\": $prep_rc, \"wall_s\": $((SECONDS - prep_t0)), \"limit_s\": 200}"
  if [ "$PLAN" = scale ]; then
    for m in gpt2-medium gpt2-xl; do
      local mm=(--model "$m") pm=(--model "$m")
      [ "$MODEL" = tiny ] && mm=("${tiny[@]}") && pm=(--model tiny)
      jax_step "rajax_${m}_bf16" 90 240 "$PY" bench/iteration.py --task imdb "${mm[@]}" --batch "$BATCH" \
        --dtype bfloat16 --iters 2 $([ "$m" = gpt2-xl ] && echo --remat)
      step "peer_${m}_bf16" 40 150 "$PY" bench/torch_peer.py --task imdb "${pm[@]}" --device "$DEVICE" \
        --batch "$BATCH" --dtype bfloat16 --iters 2 --chunked-iters 0
    done
  else
    jax_step rajax_imdb_bf16 60 180 "$PY" bench/iteration.py --task imdb --model "$MODEL" --batch "$BATCH" \
      --dtype bfloat16 --iters "$ITERS"
    step peer_imdb_bf16 40 120 "$PY" bench/torch_peer.py --task imdb "${peer[@]}" --batch "$BATCH" \
      --dtype bfloat16 --iters 3 --chunked-iters 1
    jax_step rajax_imdb_f32 60 150 "$PY" bench/iteration.py --task imdb --model "$MODEL" --batch "$BATCH" \
      --dtype float32 --iters 3
    step peer_imdb_f32 25 90 "$PY" bench/torch_peer.py --task imdb "${peer[@]}" --batch "$BATCH" \
      --dtype float32 --tf32 --iters 3 --chunked-iters 0
    jax_step rajax_rtp_bf16 50 150 "$PY" bench/iteration.py --task rtp --model "$MODEL" --batch "$BATCH" \
      --dtype bfloat16 --iters "$ITERS"
    step peer_rtp_bf16 25 90 "$PY" bench/torch_peer.py --task rtp "${peer[@]}" --batch "$BATCH" \
      --dtype bfloat16 --iters 3 --chunked-iters 0
    jax_step sampler_bf16 25 60 "$PY" bench/generate.py --model "$MODEL" --batch "$BATCH" --dtype bfloat16
    jax_step decode_hlo 15 45 "$PY" bench/decode_hlo.py "${tiny[@]}" --dtype bfloat16
  fi
  {
    echo "-- nvidia-smi after"
    nvidia-smi 2>&1 || echo "(no nvidia-smi)"
  } >> "$OUT/env.txt"
  "$PY" bench/summary.py "$RESULTS" --rev "${GIT_REV:-unknown}" > "$OUT/summary.md" || echo "!! bench/summary.py failed ($?)"
  echo "== $OUT: $(ls "$OUT" | tr '\n' ' ')"
  cat "$OUT/summary.md"
}

main 2>&1 | tee -a "$OUT/gpu.log"
