#!/usr/bin/env bash
# Downloads the wheels of scripts/gpu_wheels.txt for the GPU machine (CPython 3.12, manylinux x86_64) into
# .gpu_wheels/ (ignored by git; the device run names it in `carry`), replacing what was there (one version each:
# two versions of one package stop the offline install), and prints its size and the size of everything that
# travels with the working tree (limit 64 MiB a run). Usage: scripts/fetch_gpu_wheels.sh [DEST]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
DEST=${1:-.gpu_wheels}
platforms=()
for n in 39 35 34 31 28 27 24 17; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
mkdir -p "$DEST"
rm -f "$DEST"/*.whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$DEST" -r scripts/gpu_wheels.txt
ls -l "$DEST"/*.whl | awk '{printf "%8.1f MB  %s\n", $5 / 1e6, $9}'
wheels=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
total=$((wheels + tree))
awk -v w="$wheels" -v t="$tree" -v d="$DEST" 'BEGIN { m = 1048576; printf "wheels: %.1f MiB in %s; working tree \
that travels: %.1f MiB; together %.1f MiB (limit 64 MiB)\n", w / m, d, t / m, (w + t) / m }'
if [ "$total" -gt $((48 * 1048576)) ]; then
  echo "warning: over 48 MiB: little room left under the 64 MiB a run may carry" >&2
fi
