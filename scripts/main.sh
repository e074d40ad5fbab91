#!/usr/bin/env bash
# The main job: set up .venv, generate a phantom test split, build the Kaggle kernel, run the built file alone through
# the local gateway, and print the score and the per-series timing table.
#
# Usage: scripts/main.sh [--n N] [--seed S] [--size SIZE] [--out DIR] [--weights DIR]
#   --n        phantom test series (default 40)
#   --seed     phantom seed (default 0)
#   --size     phantom size: small or real (default small)
#   --out      work folder (default runs/main_job; holds data/, dist/, run/)
#   --weights  weights folder with manifest.json (default: weights/ when it loads, else random-init models exported
#              through train_offline.export into the work folder)
set -euo pipefail
cd "$(dirname "$0")/.."
N=40
SEED=0
SIZE=small
OUT=runs/main_job
WEIGHTS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --n) N=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --weights) WEIGHTS=$2; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

scripts/setup.sh
PY=.venv/bin/python
REPO=$(pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

echo "== 1/4 phantom test split: $N $SIZE series (seed $SEED) -> $OUT/data"
rm -rf "$OUT/data"
$PY -m train_offline.phantoms --out "$OUT/data" --n "$N" --seed "$SEED" --split test --size "$SIZE"

echo "== 2/4 weights"
if [ -z "$WEIGHTS" ]; then
  if $PY -c "from kernel.manifest import load_manifest; load_manifest('weights')" 2>/dev/null; then
    WEIGHTS=weights
  else
    echo "   (weights/ holds no valid manifest: exporting random-init models through train_offline.export)"
    rm -rf "$OUT/weights_random"
    $PY -m train_offline.export --random-init --config demo --out "$OUT/weights_random"
    WEIGHTS="$OUT/weights_random"
  fi
fi
echo "   using $WEIGHTS"

echo "== 3/4 build the kernel -> $OUT/dist"
$PY build_kernel.py --weights "$WEIGHTS" --out "$OUT/dist"

echo "== 4/4 run the built file alone (next to its weights) through the local gateway"
rm -rf "$OUT/run"
mkdir -p "$OUT/run"
cp "$OUT/dist/kernel/rsna-aneurysm-kernel.py" "$OUT/run/"
cp -r "$OUT/dist/weights" "$OUT/run/weights"
cd "$OUT/run"
# The built file needs only the runtime packages and its weights; it bundles the metric when the tree has one.
"$REPO/$PY" rsna-aneurysm-kernel.py --data "$OUT/data" --weights weights --solution "$OUT/data/solution.csv" \
  --seed "$SEED"
echo "submission: $OUT/run/submission.parquet"
