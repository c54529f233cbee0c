# Shared by bin/*: find or create the Python environment that runs rajax.
# Uses the current interpreter if it already imports rajax and its deps;
# otherwise builds .venv/ (Python >= 3.11) once and installs rajax into it.
# Hints in rajax's messages name the command the user typed (bin/train in a clone).
export RAJAX_TRAIN_COMMAND="${RAJAX_TRAIN_COMMAND:-bin/train}"

rajax_ensure_env() {
  local root; root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  local want_test=${RAJAX_TEST_DEPS:-1}
  if [ -x "$root/.venv/bin/python" ] && "$root/.venv/bin/python" -c "import rajax, jax, flax, optax, orbax.checkpoint" 2>/dev/null; then
    PY="$root/.venv/bin/python"
    if [ "$want_test" = 1 ] && ! "$PY" -c "import pytest, xdist, torch, peft, trl, wandb, chex, setuptools" 2>/dev/null; then
      _rajax_install "$root" test
    fi
    return
  fi
  local base=""
  for c in python3.12 python3.11 python3 python; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then base=$c; break; fi
  done
  if [ -z "$base" ]; then echo "rajax: needs Python >= 3.11 on PATH (found none)" >&2; exit 2; fi
  echo "rajax: first run, creating .venv with $($base --version) (a few minutes)..." >&2
  "$base" -m venv "$root/.venv"
  PY="$root/.venv/bin/python"
  "$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  if [ "$want_test" = 1 ]; then _rajax_install "$root" test; else _rajax_install "$root" ""; fi
}

_rajax_install() {
  local root=$1 extra=$2 spec="$1"
  [ -n "$extra" ] && spec="$root[$extra]"
  local args=(-q -e "$spec")
  # The CPU torch wheel: from a local wheel directory when there is one, else PyTorch's CPU index.
  if [ -n "$extra" ] && ! ls ${PIP_FIND_LINKS:-/opt/wheels}/torch-*+cpu-*.whl >/dev/null 2>&1; then
    args+=(--extra-index-url https://download.pytorch.org/whl/cpu)
  fi
  "$PY" -m pip install "${args[@]}"
}
