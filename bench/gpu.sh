#!/usr/bin/env bash
# Every GPU measurement the issues ask for, in ONE device call, ours and the PyTorch peer on the same
# card. The device call carries only this repository: first copy the peer to .carry/torch_ppo_baseline.py
# (where it comes from and the exact commands: see CONTRIBUTING.md, "The GPU session"),
# then run, with carry [".carry"]:   bash bench/gpu.sh
# MODEL=tiny BATCH=16 bash bench/gpu.sh   is a CPU dry run of the same sequence.
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
if [ -f .carry/torch_ppo_baseline.py ]; then
  for task in imdb rtp; do
    if [ "$MODEL" = tiny ]; then
      DEV=cpu GPT2_CFG='{"n_layer":2,"n_embd":64,"n_head":2}' run $PY .carry/torch_ppo_baseline.py --task $task --iters 2 --batch "$BATCH"
    else
      run $PY .carry/torch_ppo_baseline.py --task $task --iters 3
    fi
  done
else
  log "no .carry/torch_ppo_baseline.py: the peer baseline was not run"
fi
if [ "$MODEL" != tiny ]; then
  STEP_TIMEOUT=${XL_TIMEOUT:-300} run $PY bench/iteration.py --task imdb --model gpt2-xl --remat --dtype bfloat16 --iters 2
fi
ls -la "$OUT"
