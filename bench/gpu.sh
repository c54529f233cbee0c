#!/usr/bin/env bash
# Every GPU measurement the issues ask for, in ONE device call, ours and the PyTorch peer on the same
# card. The peer is bench/torch_peer.py (TRL 0.7's compute pattern; bench/NOTES.md has the check of it
# against the team's reference peer), so the device call needs nothing but this repository:
#   bash bench/gpu.sh
# MODEL=tiny BATCH=16 bash bench/gpu.sh   is a CPU dry run of the same sequence.
# bench/cpu_vs_torch.sh is the CPU comparison (interleaved runs and the ratio table).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-$(mktemp -d)}
MODEL=${MODEL:-gpt2}
BATCH=${BATCH:-128}
PY=${PY:-python3}
log() { echo "== $*"; }
run() { log "$*"; timeout "${STEP_TIMEOUT:-240}" "$@" || echo "!! failed or timed out ($?): $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee "$OUT/gpu.txt"
$PY -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
run $PY bench/matmul.py --n "${MATMUL_N:-8192}" | tee "$OUT/matmul.json"
run $PY bench/generate.py --model "$MODEL" --batch "$BATCH" --dtype float32 | tee "$OUT/generate_f32.json"
run $PY bench/generate.py --model "$MODEL" --batch "$BATCH" --dtype bfloat16 | tee "$OUT/generate_bf16.json"
for task in imdb rtp; do
  run $PY bench/iteration.py --task $task --model "$MODEL" --batch "$BATCH" --dtype bfloat16 --iters 5
done
run $PY bench/iteration.py --task imdb --model "$MODEL" --batch "$BATCH" --dtype float32 --iters 3
for task in imdb rtp; do
  if [ "$MODEL" = tiny ]; then
    run $PY bench/torch_peer.py --model tiny --device cpu --task $task --iters 2 --batch "$BATCH"
  else
    run $PY bench/torch_peer.py --task $task --iters 3 --batch "$BATCH"
  fi
done
if [ "$MODEL" != tiny ]; then
  STEP_TIMEOUT=${XL_TIMEOUT:-300} run $PY bench/iteration.py --task imdb --model gpt2-xl --remat --dtype bfloat16 --iters 2
fi
ls -la "$OUT"
