#!/usr/bin/env bash
# The GPU path, checked on a machine with an NVIDIA GPU, in one go:
#   1. a fresh venv with the app's requirements and onnxruntime-gpu's CUDA and cuDNN libraries (no torch),
#   2. `python app.py --device cuda` started, and onnxruntime's CUDA provider asserted from what it prints,
#   3. the app latency split (forward on the GPU, deconvnet on the CPU) at 224 px and at the model's size.
#
#   bash bench/gpu_check.sh                 # from the repository root
#   VENV=/tmp/gpu-venv bash bench/gpu_check.sh   # reuse a venv between runs
set -euo pipefail
cd "$(dirname "$0")/.."
export GRADIO_ANALYTICS_ENABLED=False PIP_DISABLE_PIP_VERSION_CHECK=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "gpu_check: no NVIDIA GPU"; exit 2; }

venv=${VENV:-$(mktemp -d)/venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
. "$venv/bin/activate"
# requirements.txt with onnxruntime-gpu's CUDA extras, plus the benchmark's client (no torch: the GPU app needs none).
sed 's/^onnxruntime-gpu==/onnxruntime-gpu[cuda,cudnn]==/' requirements.txt > "$venv/requirements-gpu.txt"
pip install -q -r "$venv/requirements-gpu.txt" gradio-client==2.7.2 httpx==0.28.1

log=$(mktemp)
python app.py --device cuda --port 7861 > "$log" 2>&1 &
app=$!
trap 'kill $app 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  grep -q "onnxruntime provider" "$log" && break
  kill -0 $app 2>/dev/null || { cat "$log"; echo "gpu_check: the app exited"; exit 1; }
  sleep 1
done
cat "$log"
grep -q "onnxruntime provider: CUDAExecutionProvider" "$log" || { echo "gpu_check: FAILED, CUDA provider not used"; exit 1; }
echo "gpu_check: the app runs the network on CUDAExecutionProvider"
kill $app; wait $app 2>/dev/null || true; trap - EXIT

python bench/app_latency.py --device cuda --size 224 --requests 10 --default-client 3
python bench/app_latency.py --device cuda --requests 10 --default-client 0 --size "$(python -c '
from demo.onnx_forward import OnnxModel; print(OnnxModel(device="cpu").input_size)')"
