"""End-to-end kernel time per full-size CTA series (reading included) and peak memory on a 1,000-slice series.

Writes uncompressed 512 x 512 CT series (the reader tests' smooth synthetic field; ``--source phantom``: a full-size
phantom test split instead), then, in fresh processes so nothing is shared: (1) a warmed-up ``Predictor`` runs
every series once, its call record splitting read + preprocess from the models, once reading in the isolated worker
(the default) and once in-process (``RSNA_READ_ISOLATION=0``), so the isolation cost is measured in one run; (2) one
process predicts the long series and reports the peak resident memory of its whole process tree (worker included).
Files are in the page cache (just written), as in docs/results/benchmarks.md.

    python benchmarks/bench_kernel.py [--weights DIR] [--n 3] [--slices 400] [--long-slices 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHILD_TIMES = """
import json, sys, time
from kernel.budget import TimeBudget
from kernel.predict import Predictor
from kernel.recipe import Plan
weights, warm, series = sys.argv[1], sys.argv[2], sys.argv[3:]
predictor = Predictor(weights, budget=TimeBudget(limit_s=1e9, margin_s=0))
predictor.predict(warm)
rows = []
for path in series:
    t0 = time.perf_counter()
    frame, record = predictor.predict(path)
    total = time.perf_counter() - t0
    assert record.level == "full", record
    rows.append({"total": total, "read": record.read_s, "model": record.model_s})
print(json.dumps({"rows": rows, "providers": predictor.ensemble.active_providers,
                  "runs": predictor.ensemble.runs(Plan())}))
"""

CHILD_MEMORY = """
import json, sys, time
from kernel.budget import TimeBudget
from kernel.predict import Predictor
from testkit.hostile import TreePeak
predictor = Predictor(sys.argv[1], budget=TimeBudget(limit_s=1e9, margin_s=0))
with TreePeak() as peak:
    t0 = time.perf_counter()
    frame, record = predictor.predict(sys.argv[2])
    seconds = time.perf_counter() - t0
    if predictor.reader is not None:
        peak.add_child_peak(predictor.reader.last.worker_peak_rss)
print(json.dumps({"peak_mb": peak.peak / 2**20, "seconds": seconds, "level": record.level, "reason": record.reason}))
"""

READING = {"1": "isolated worker (default)", "0": "in-process"}


def _write_series(folder: Path, slices: int, seed: int) -> Path:
    """One uncompressed 512 x 512 CT series of ``slices`` slices (0.45 mm pixels, 0.625 mm slices)."""
    from testkit.dicom_factory import write_series

    target = folder / "series" / f"bench{seed}"
    write_series(target, n_slices=slices, rows=512, cols=512, slice_spacing=0.625, pixel_spacing=(0.45, 0.45),
                 origin=(-115.0, -115.0, -125.0), modality="CT", seed=seed)
    return target


_SYNTAX_NAMES = {
    "1.2.840.10008.1.2": "implicit", "1.2.840.10008.1.2.1": "uncompressed", "1.2.840.10008.1.2.5": "RLE",
    "1.2.840.10008.1.2.4.70": "JPEG lossless", "1.2.840.10008.1.2.4.80": "JPEG-LS", "1.2.840.10008.1.2.4.90": "J2K",
}


def _phantom_series(folder: Path, n: int) -> list[tuple[Path, str]]:
    """A full-size phantom test split of ``n`` series: (folder, "<modality>, <encoding>") from phantom_truth.jsonl."""
    cmd = [sys.executable, "-m", "train_offline.phantoms", "--out", str(folder), "--n", str(n), "--seed", "0",
           "--split", "test", "--size", "full", "--quiet"]
    subprocess.run(cmd, check=True, cwd=REPO)
    out = []
    for line in (folder / "phantom_truth.jsonl").read_text().splitlines():
        truth = json.loads(line)
        syntax = truth.get("quirks", {}).get("transfer_syntax", "?")
        label = f"phantom {truth['modality']}, {_SYNTAX_NAMES.get(syntax, syntax)}"
        out.append((folder / "series" / truth["SeriesInstanceUID"], label))
    return sorted(out)


def resolve_weights(arg: Path | None, work: Path) -> tuple[Path, str]:
    """Weights to time: ``arg``, else the repository's weights/, else a random-init demo export, else tiny models.

    Time does not depend on the weight values, so any of these measures the pipeline; the note says which was used.
    """
    from kernel.manifest import load_manifest

    if arg is not None:
        return load_manifest(arg).weights_dir, str(arg)
    try:
        return load_manifest(REPO / "weights").weights_dir, "weights/"
    except Exception:
        pass
    out = work / "weights"
    if (REPO / "train_offline" / "export.py").is_file():
        try:
            subprocess.run([sys.executable, "-m", "train_offline.export", "--random-init", "--config", "demo",
                            "--out", str(out)], check=True, cwd=REPO)
            return out, "train_offline.export --random-init --config demo"
        except (subprocess.CalledProcessError, OSError) as exc:
            print(f"export failed ({exc}); using tiny test models", file=sys.stderr)
    from testkit.onnx_factory import write_random_weights

    return write_random_weights(out), "testkit/onnx_factory.py (tiny models: model time not representative)"


def _child(code: str, args: list[str], isolation: str = "1") -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), RSNA_READ_ISOLATION=isolation)
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--weights", type=Path, default=None, help="weights folder (default: weights/, else random)")
    parser.add_argument("--n", type=int, default=3, help="full-size series to time")
    parser.add_argument("--slices", type=int, default=400, help="slices per timed series")
    parser.add_argument("--long-slices", type=int, default=1000, help="slices of the peak-memory series (0: skip)")
    parser.add_argument("--source", choices=["factory", "phantom"], default="factory",
                        help="factory: uncompressed CT of exactly --slices x 512 x 512; phantom: a full-size phantom "
                        "test split of --n series (mixed modalities and encodings), one row per kind")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir, removed)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_kernel_"))
    try:
        import numpy as np
        from tqdm import tqdm

        weights, weights_note = resolve_weights(args.weights, work)
        if args.source == "phantom":
            labelled = _phantom_series(work / "phantoms", args.n)
        else:
            labelled = [(_write_series(work / f"s{i}", args.slices, i), f"CT {args.slices} x 512 x 512")
                        for i in tqdm(range(args.n), desc="write")]
        warm = _write_series(work / "warm", 32, 99)
        series_args = [str(weights), str(warm), *(str(p) for p, _ in labelled)]
        by_mode = {mode: _child(CHILD_TIMES, series_args, mode) for mode in READING}  # same files, same page cache
        times = by_mode["1"]
        print(f"weights: {weights_note}; providers {times['providers']}; {times['runs']} model runs per series")
        print("| series | reading | n | end-to-end median s | read + preprocess s | ensemble s | max s |")
        print("|---|---|---|---|---|---|---|")
        for label in sorted({lab for _, lab in labelled}):
            medians = {}
            for mode, name in READING.items():
                rows = [r for r, (_, lab) in zip(by_mode[mode]["rows"], labelled, strict=True) if lab == label]
                med = {k: float(np.median([r[k] for r in rows])) for k in ("total", "read", "model")}
                medians[mode] = med
                print(f"| {label} | {name} | {len(rows)} | {med['total']:.3f} | {med['read']:.3f} "
                      f"| {med['model']:.3f} | {max(r['total'] for r in rows):.3f} |")
            cost = medians["1"]["total"] - medians["0"]["total"]
            print(f"| {label} | isolation cost | | {cost:+.3f} ({cost / medians['0']['total']:+.1%}) | | | |")
        if args.long_slices:
            for path, _ in labelled:
                shutil.rmtree(path, ignore_errors=True)
            long_series = _write_series(work / "long", args.long_slices, 1000)
            for mode, name in READING.items():
                memory = _child(CHILD_MEMORY, [str(weights), str(long_series)], mode)
                print(f"| CT {args.long_slices} x 512 x 512, process-tree peak {memory['peak_mb']:.0f} MB | {name} "
                      f"| 1 | {memory['seconds']:.3f} | | | ({memory['level']}) |")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    code = main()
    print(f"bench wall time {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    sys.exit(code)
