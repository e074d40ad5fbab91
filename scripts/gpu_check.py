"""GPU check of the kernel: CUDA provider active, CUDA matches CPU, end-to-end seconds per full-size CTA series.

Run through ``scripts/gpu_check.sh`` on a machine with an NVIDIA card and onnxruntime-gpu. Prints a markdown table
with the card's name and writes it to ``$OUT/gpu_check.md`` when $OUT is set. Exit status 1 when the CUDA provider
is not used or CUDA and CPU disagree.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_kernel import resolve_weights  # noqa: E402
from kernel.budget import TimeBudget  # noqa: E402
from kernel.ensemble import CPU, CUDA, Ensemble, Plan  # noqa: E402
from kernel.manifest import load_manifest  # noqa: E402
from kernel.predict import Predictor  # noqa: E402
from kernel.preprocess import prepare_volume  # noqa: E402


def card_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True)
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown (nvidia-smi failed)"


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        return run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None, help="weights folder (default: weights/, else random)")
    parser.add_argument("--n", type=int, default=4, help="full-size series to time")
    parser.add_argument("--slices", type=int, default=400, help="slices per series")
    args = parser.parse_args()
    from testkit.dicom_factory import write_series

    weights, note = resolve_weights(args.weights, work)
    manifest = load_manifest(weights)
    series = []
    for i in range(args.n + 1):  # the first one warms up (session creation, cuDNN autotuning)
        folder = work / "series" / f"s{i}"
        write_series(folder, n_slices=args.slices, rows=512, cols=512, slice_spacing=0.625,
                     pixel_spacing=(0.45, 0.45), origin=(-115.0, -115.0, -125.0), modality="CT", seed=i)
        series.append(folder)

    predictor = Predictor(str(weights), budget=TimeBudget(limit_s=1e9, margin_s=0))
    ok = predictor.ensemble is not None and CUDA in predictor.ensemble.active_providers
    print(f"card: {card_name()}; weights: {note}; providers: {predictor.ensemble and predictor.ensemble.providers}; "
          f"active: {predictor.ensemble and predictor.ensemble.active_providers}")
    predictor.predict(str(series[0]))
    totals, reads, models = [], [], []
    for folder in series[1:]:
        t0 = time.perf_counter()
        _, record = predictor.predict(str(folder))
        totals.append(time.perf_counter() - t0)
        ok &= record.level == "full"
        reads.append(record.read_s or float("nan"))
        models.append(record.model_s or float("nan"))
    # CUDA against CPU on the last series, on the same canonical volume.
    volume = prepare_volume(series[-1], manifest.volume_spacing_mm, max_voxels=manifest.max_voxels)
    gpu_out = predictor.ensemble.predict_volume(volume.array, volume.affine, volume.modality, Plan())
    cpu = Ensemble(manifest, providers=[CPU])
    cpu_out = cpu.predict_volume(volume.array, volume.affine, volume.modality, Plan())
    diff = float(np.abs(cpu_out.probs - gpu_out.probs).max())
    ok &= diff < 1e-3
    table = "\n".join([
        f"GPU check, {time.strftime('%Y-%m-%d')}: {card_name()}; weights {note}; CUDA active: "
        f"{CUDA in predictor.ensemble.active_providers}; max |CUDA - CPU| probability {diff:.2e}",
        "",
        "| series | n | end-to-end median s | read + preprocess s | ensemble s | max s |",
        "|---|---|---|---|---|---|",
        f"| CT {args.slices} x 512 x 512 | {len(totals)} | {np.median(totals):.3f} | {np.median(reads):.3f} "
        f"| {np.median(models):.3f} | {max(totals):.3f} |",
    ])
    print(table)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.md").write_text(table + "\n")
    print("GPU CHECK " + ("PASSED" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
