#!/usr/bin/env bash
# The GPU path, checked on a machine with an NVIDIA GPU, offline, with what is installed (nothing is downloaded or
# pip-installed): $PYTHON if set, else the python of .venv when there is one, else python3.
#   1. the GPU and onnxruntime's providers,
#   2. the NumPy stage's thread scaling: bench/deconv.py --threads 1,2,4,8,16,
#   3. bench/gpu_split.py at 112 and 224 px: forward and backward split (NumPy, and the ONNX descent graphs on
#      the GPU; a class gradient through the fused graph), the 13-layer view served, GPU-vs-CPU differences
#      (activations, switches, one projection and one fused class projection per rule), and the sanity checks'
#      cost on CUDA,
#   4. `python app.py --device cuda` started, and its provider line asserted (CUDA, TF32 off, ONNX backward),
#   5. when gradio_client is installed: the app's end-to-end latency (bench/app_latency.py) at 224 px.
#
#   bash bench/gpu_check.sh                  # from anywhere; runs in the repository root
#   DEVICE=cpu bash bench/gpu_check.sh       # the same steps on onnxruntime's CPU provider (no GPU needed)
#   THREADS=1,2,4 SIZES=112 PYTHON=/path/to/python bash bench/gpu_check.sh
# A step that fails is reported and the others still run; the exit status is 1 when any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 PIP_NO_INDEX=1 PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
THREADS=${THREADS:-1,2,4,8,16}
SIZES=${SIZES:-112,224}
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
failed=()
step() { echo; echo "=== $*"; }
fail() { echo "gpu_check: FAILED: $*"; failed+=("$*"); }

step "machine"
echo "python: $PY ($($PY --version 2>&1)); $(nproc) CPU cores; $(date -u)"
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "gpu_check: no NVIDIA GPU (DEVICE=cpu runs the steps on the CPU)"; exit 2; }
fi
$PY - <<'EOF' || fail "onnxruntime providers"
import onnxruntime as ort
print("onnxruntime", ort.__version__, "available providers:", ", ".join(ort.get_available_providers()))
try:
    import torch  # noqa: F401
    print("torch", torch.__version__, "(installed: bench/deconv.py can run)")
except ImportError:
    print("torch: not installed (bench/deconv.py needs it; the app and the GPU path do not)")
EOF

step "the NumPy stage's threads: bench/deconv.py --threads $THREADS"
$PY bench/deconv.py --threads "$THREADS" || fail "bench/deconv.py --threads $THREADS"

step "forward/backward split, differences, sanity checks: bench/gpu_split.py --device $DEVICE --sizes $SIZES"
$PY bench/gpu_split.py --device "$DEVICE" --sizes "$SIZES" || fail "bench/gpu_split.py"

step "the app on $DEVICE"
if $PY -c "import gradio" 2>/dev/null; then
  log=$(mktemp)
  $PY app.py --device "$DEVICE" --port 7861 > "$log" 2>&1 &
  app=$!
  for _ in $(seq 1 180); do
    grep -q "onnxruntime provider" "$log" && break
    kill -0 $app 2>/dev/null || break
    sleep 1
  done
  cat "$log"
  kill $app 2>/dev/null; wait $app 2>/dev/null
  if [ "$DEVICE" = cuda ]; then
    grep -q "onnxruntime provider: CUDAExecutionProvider (TF32 off)" "$log" || fail "the app does not run on CUDA with TF32 off"
    grep -q "backward stage: onnx" "$log" || fail "the app's backward stage is not the ONNX graph on CUDA"
  else
    grep -q "onnxruntime provider: CPUExecutionProvider" "$log" || fail "the app did not start"
  fi
  rm -f "$log"
else
  echo "gradio is not installed: app not checked"
fi

step "the app's latency end to end"
if $PY -c "import gradio, gradio_client, httpx" 2>/dev/null; then
  $PY bench/app_latency.py --device "$DEVICE" --size 224 --requests 10 --default-client 3 || fail "bench/app_latency.py"
else
  echo "gradio_client or httpx is not installed: latency not measured"
fi

echo
if [ ${#failed[@]} -gt 0 ]; then
  printf 'gpu_check: %d step(s) failed:\n' "${#failed[@]}"; printf '  %s\n' "${failed[@]}"; exit 1
fi
echo "gpu_check: every step ran"
