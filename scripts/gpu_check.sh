#!/usr/bin/env bash
# GPU check for the kernel's CUDA path (for a session that is lent a GPU machine; not run in CI).
# Prints the card, onnxruntime's providers, CUDA-vs-CPU agreement and the end-to-end median per full-size CTA
# (target: at most 1.5 s). Writes $OUT/gpu_check.md when $OUT is set. Extra arguments go to scripts/gpu_check.py
# (--n, --slices, --weights). Needs: python with numpy, pydicom, polars, onnx and onnxruntime-gpu (torch optional,
# for GPU resampling). Usage: scripts/gpu_check.sh [--n 4]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
echo "== card"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "nvidia-smi not available"
echo "== python packages"
$PY - <<'EOF'
import importlib
for name in ("numpy", "pydicom", "polars", "onnx", "onnxruntime", "torch"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as exc:
        print(f"{name} MISSING ({type(exc).__name__}: {exc})")
import onnxruntime
print("onnxruntime providers:", onnxruntime.get_available_providers())
EOF
echo "== kernel on the GPU"
timeout 540 $PY scripts/gpu_check.py "$@"
