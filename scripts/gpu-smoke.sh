#!/usr/bin/env bash
# One command to run the envbuild GPU check against this machine's real GPUs and driver.
#
#   scripts/gpu-smoke.sh                       # CUDA 12.4 runtime, compute capability >=7.0
#   CUDA=12.8 COMPUTE_CAPABILITY='>=9.0' scripts/gpu-smoke.sh  # other requirements
#   scripts/gpu-smoke.sh --fake                # no GPU here: a fake NVML (needs gcc) instead
#
# Needs python3 and pynvml (nvidia-ml-py): from .venv when `make setup` ran, else the system's.
# Prints nvidia-smi's view, the check's report and JSON, an exec through it, and its start time.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
CUDA=${CUDA:-12.4}
# Not $CC: that is the C compiler, and GPU machines set it (CC=/opt/gcc/bin/gcc).
COMPUTE_CAPABILITY=${COMPUTE_CAPABILITY:->=7.0}

if [ "${1:-}" = "--fake" ]; then
  fake=$(mktemp -d)
  trap 'rm -rf "$fake"' EXIT
  "$PY" -m envbuild.testing.nvml "$fake" >/dev/null || exit 1
  export LD_LIBRARY_PATH="$fake${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export FAKE_NVML_DEVICES=${FAKE_NVML_DEVICES:-"NVIDIA H200,9.0,GPU-fake-h200"}
  echo "== FAKE NVML: $FAKE_NVML_DEVICES (not a real GPU)"
fi

echo "== machine: $(uname -srm); python: $("$PY" -c 'import sys; print(sys.version.split()[0])')"
"$PY" -c 'import pynvml' 2>/dev/null || { echo "pynvml is missing: pip install nvidia-ml-py"; exit 1; }
echo "== nvidia-smi"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=index,name,compute_cap,driver_version,memory.total --format=csv
else
  echo "(nvidia-smi is not installed)"
fi

echo "== envbuild gpu check: cuda $CUDA, compute capability $COMPUTE_CAPABILITY"
"$PY" -m envbuild.gpucheck --role smoke --variant "cuda-$CUDA" --cuda "$CUDA" --compute-capability "$COMPUTE_CAPABILITY"
echo "exit code: $?"

echo "== --json"
"$PY" -m envbuild.gpucheck --cuda "$CUDA" --compute-capability "$COMPUTE_CAPABILITY" --json
echo "== check, then exec a command"
"$PY" -m envbuild.gpucheck --cuda "$CUDA" --compute-capability "$COMPUTE_CAPABILITY" -- "$PY" -c 'print("exec ok")'

echo "== start time of the check (5 fresh processes)"
TIMEFORMAT="%R s"
for _ in 1 2 3 4 5; do
  time "$PY" -m envbuild.gpucheck --cuda "$CUDA" --compute-capability "$COMPUTE_CAPABILITY" >/dev/null
done
