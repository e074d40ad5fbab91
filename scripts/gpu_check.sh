#!/usr/bin/env bash
# GPU check (docs/results/benchmarks.md, "GPU check"): the one command to run on the GPU machine.
# Installs the carried wheels (.gpu_wheels/, made by scripts/fetch_gpu_wheels.sh) offline when the imports the check
# needs fail, then runs scripts/gpu_check.py, which writes gpu_check.md (+ .json, .log) under $OUT incrementally and
# keeps to its own budget (480 s by default; every section has its own limit). Extra arguments go to gpu_check.py,
# e.g. --cpu for the CPU dry run or --skip torchrun. Prints where the report is.
#
#   device run:  command "bash scripts/gpu_check.sh", carry [".gpu_wheels"], timeout_s 600
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${GPU_CHECK_PYTHON:-}" ]; then PY=$GPU_CHECK_PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
WHEELS=${GPU_CHECK_WHEELS_DIR:-.gpu_wheels}
NEED='import pydicom, pylibjpeg, libjpeg, openjpeg, rle, jpeg_ls, nibabel, yaml, tqdm'
if "$PY" -c "$NEED" 2>/dev/null; then
  export GPU_CHECK_WHEELS="none installed (the imports were there)"
elif ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  SITE=${TMPDIR:-/tmp}/gpu_check_site
  echo "== installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE (offline)"
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$WHEELS"/*.whl; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    export GPU_CHECK_WHEELS="installed $(cd "$WHEELS" && ls *.whl | sed 's/-py3-none.*//; s/-cp3.*//' | tr '\n' ' ')"
  else
    export GPU_CHECK_WHEELS="pip install from $WHEELS failed"
  fi
else
  export GPU_CHECK_WHEELS="imports missing and no wheels in $WHEELS (run scripts/fetch_gpu_wheels.sh, carry it)"
fi
"$PY" -c "$NEED" || echo "warning: still missing after the wheels; the sections that need them will fail"
echo "== card"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi not available"
export PYTHONUNBUFFERED=1
OUT_DIR=${OUT:-runs/gpu_check}
# Backstop only: the check ends itself within its budget; SIGTERM makes it stop its commands and keep the report.
timeout -k 15 540 "$PY" scripts/gpu_check.py --out "$OUT_DIR" "$@"
rc=$?
echo "report: $OUT_DIR/gpu_check.md (exit $rc)"
[ -f "$OUT_DIR/gpu_check.md" ] && head -n 14 "$OUT_DIR/gpu_check.md"
exit $rc
