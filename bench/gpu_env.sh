#!/usr/bin/env bash
# The GPU benchmark's own environment: onnxruntime-gpu and onnxruntime install the same module
# (`onnxruntime`), so they never share one. Prints the interpreter to use (alone on stdout).
#
#   bash bench/gpu_env.sh            (make bench-gpu runs it)
#
# GPU_PYTHON=/path/to/python: use that interpreter as it is (e.g. the cell-gpu image's /venv/bin/python)
#   when its onnxruntime already offers the CUDA provider; nothing is installed then.
# Otherwise a virtual environment GPU_VENV (.venv-gpu) is made with --system-site-packages (so a
# machine's preinstalled numpy, Pillow, psutil ... are reused) and gets onnxruntime-gpu and the
# service's own dependencies from pip; without network, point pip at wheels: PIP_NO_INDEX=1
# PIP_FIND_LINKS=DIR. The project itself is not installed: the benchmark runs from the checkout.
# No TensorFlow is needed or installed.
# onnxruntime-gpu is installed at the version the GPU image pins (ARG ONNXRUNTIME_GPU_VERSION in
# deploy/Dockerfile), or at ONNXRUNTIME_GPU_VERSION when set; `bash bench/gpu_env.sh --requirement`
# prints that requirement and does nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_GPU_VERSION=${ONNXRUNTIME_GPU_VERSION:-$(sed -n 's/^ARG ONNXRUNTIME_GPU_VERSION=//p' deploy/Dockerfile)}
if [ -z "$ORT_GPU_VERSION" ]; then
  echo "deploy/Dockerfile has no ARG ONNXRUNTIME_GPU_VERSION and ONNXRUNTIME_GPU_VERSION is not set" >&2
  exit 1
fi
ORT_GPU_REQUIREMENT="onnxruntime-gpu==$ORT_GPU_VERSION"
if [ "${1:-}" = "--requirement" ]; then
  echo "$ORT_GPU_REQUIREMENT"
  exit 0
fi

has_cuda() {
  "$1" -c "import onnxruntime as o, sys; sys.exit(0 if 'CUDAExecutionProvider' in o.get_available_providers() else 1)" \
    2>/dev/null
}

if [ -n "${GPU_PYTHON:-}" ] && has_cuda "$GPU_PYTHON"; then
  echo "using $GPU_PYTHON as it is (onnxruntime offers CUDAExecutionProvider)" >&2
  echo "$GPU_PYTHON"
  exit 0
fi

VENV=${GPU_VENV:-.venv-gpu}
BASE=${GPU_PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$BASE" -m venv --system-site-packages "$VENV" >&2
fi
PY="$VENV/bin/python"
if ! has_cuda "$PY"; then
  # a CPU onnxruntime inside the venv would shadow the GPU build: remove it first
  "$PY" -m pip uninstall -y -q onnxruntime >&2 2>/dev/null || true
  "$PY" -m pip install -q "$ORT_GPU_REQUIREMENT" >&2
fi
# what the cell service and the benchmark import (versions as in pyproject.toml), not onnxruntime:
# the GPU build stays
DEPS=$("$PY" - <<'PYEOF'
import re, tomllib
needed = {"fastapi", "uvicorn", "python-multipart", "pydantic", "pydantic-settings", "prometheus-client", "numpy",
          "pillow", "httpx"}
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(" ".join(d for d in deps if re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower() in needed) + " psutil")
PYEOF
)
# shellcheck disable=SC2086
"$PY" -m pip install -q $DEPS >&2
if ! has_cuda "$PY"; then
  echo "onnxruntime in $VENV does not offer CUDAExecutionProvider: $("$PY" -c 'import onnxruntime as o; print(o.__version__, o.get_available_providers())')" >&2
  exit 1
fi
echo "$PY"
