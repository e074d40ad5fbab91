"""Cost of reading in a worker process: read + preprocess of a full-size CTA in-process vs isolated.

    python benchmarks/bench_isolation.py [--data DIR] [--slices 400] [--repeats 3] [--spacing 1.0] [--weights DIR]
    python benchmarks/bench_isolation.py --hostile [--timeout 20] [--memory-mb 3072]

Writes (once, into --data) an uncompressed CT series of --slices x 512 x 512, then times, interleaved and after one
warm-up call each, ``kernel.preprocess.prepare_volume`` in this process and ``kernel.read_worker.ReadWorker.prepare``
(a warm worker: its start-up is reported apart). With --weights it also times the whole ``Predictor.predict`` call
both ways (``RSNA_READ_ISOLATION=0`` / on). Prints a markdown table of medians; peak RSS from /proc. Not a test:
numbers depend on the machine and its load.

``--hostile``: every case of ``testkit.hostile`` (the decoder hooks on) through a ``Predictor`` with random weights
under the given limits, each followed by a good series: outcome, reason, read and call seconds, and the peak RSS of
the whole process tree beyond the models (``testkit.hostile.TreePeak``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kernel.preprocess import prepare_volume  # noqa: E402
from kernel.procmem import peak_rss_bytes, reset_peak_rss, rss_bytes  # noqa: E402
from kernel.read_worker import ReadLimits, ReadWorker  # noqa: E402


def make_series(root: Path, slices: int) -> Path:
    """The benchmark CTA (written once)."""
    folder = root / f"cta_{slices}"
    if not folder.is_dir() or not any(folder.iterdir()):
        from testkit.dicom_factory import write_series

        print(f"writing {slices} x 512 x 512 CT into {folder} ...", file=sys.stderr)
        write_series(folder, n_slices=slices, rows=512, cols=512, slice_spacing=0.625, pixel_spacing=(0.45, 0.45))
    return folder


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.3f}"


def hostile_table(memory_mb: int, timeout_s: float, root: Path) -> None:
    """Run every hostile case through a Predictor under the limits; print one markdown row per case."""
    import numpy as np

    from kernel import predict as kernel_predict
    from kernel.budget import TimeBudget
    from kernel.read_worker import HOOK_ENV, MEMORY_ENV, TIMEOUT_ENV
    from testkit.dicom_factory import write_series
    from testkit.hostile import CASES, HOOKED, TreePeak
    from testkit.onnx_factory import write_random_weights

    os.environ.update({MEMORY_ENV: str(memory_mb), TIMEOUT_ENV: str(timeout_s),
                       HOOK_ENV: "testkit.hostile:install_worker_hooks"})
    weights = write_random_weights(root / "weights", folds=1, seed=5)
    predictor = kernel_predict.Predictor(str(weights), budget=TimeBudget(limit_s=1e9, n_series=100, margin_s=0))
    good = root / "good" / "1.2.3.9"
    write_series(good, n_slices=30, rows=40, cols=44, allowlist_only=True)
    expected = np.array(predictor.predict(str(good))[0].row(0))
    print(f"\nhostile series, worker limits {memory_mb} MB / {timeout_s:g} s; peak = whole process tree beyond the "
          f"models (RSS {rss_bytes() / 2**20:,.0f} MB)\n")
    print("| case | row | reason | read s | call s | tree peak MB | next series |")
    print("|---|---|---|---|---|---|---|")
    for case in sorted(CASES):
        folder = root / "cases" / f"uid_{case}"
        CASES[case](folder)
        with TreePeak() as peak:
            _, record = predictor.predict(str(folder))
            last = predictor.reader.last
            peak.add_child_peak(max(last.tree_peak_rss, last.worker_peak_rss))
        frame, after = predictor.predict(str(good))
        ok = after.level == "full" and np.array_equal(np.array(frame.row(0)), expected)
        reason = (record.reason or "").split(":")[0] if record.level == "fallback" else ""
        kind = HOOKED.get(case, "")
        print(f"| {case}{' (' + kind + ')' if kind else ''} | {record.level} | {reason} | {last.seconds:.2f} | "
              f"{record.seconds:.2f} | {peak.growth / 2**20:,.0f} | {'ok' if ok else 'FAILED'} |")
    predictor.reader.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "rsna_bench_isolation",
                        help="folder for the benchmark series (kept between runs)")
    parser.add_argument("--slices", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spacing", type=float, default=1.0, help="isotropic volume spacing (mm) for prepare_volume")
    parser.add_argument("--weights", type=Path, default=None, help="weights folder: also time Predictor.predict")
    parser.add_argument("--hostile", action="store_true", help="the hostile-series table instead of the timing")
    parser.add_argument("--memory-mb", type=int, default=3072, help="--hostile: worker memory limit")
    parser.add_argument("--timeout", type=float, default=20.0, help="--hostile: seconds per series")
    args = parser.parse_args(argv)
    if args.hostile:
        with tempfile.TemporaryDirectory() as tmp:
            hostile_table(args.memory_mb, args.timeout, Path(tmp))
        return 0
    series = make_series(args.data, args.slices)
    spacing = (args.spacing,) * 3

    worker = ReadWorker(ReadLimits.resolve())
    start = time.perf_counter()
    worker.prepare(series, spacing)  # start-up + warm-up
    first = time.perf_counter() - start
    prepare_volume(series, spacing)  # warm-up in-process
    here, isolated, inside, writes, worker_peak = [], [], [], [], []
    parent_peak = []
    for _ in range(args.repeats):
        base = rss_bytes()
        reset_peak_rss()
        t = time.perf_counter()
        volume = prepare_volume(series, spacing)
        here.append(time.perf_counter() - t)
        parent_peak.append(peak_rss_bytes() - base)
        del volume
        base = rss_bytes()
        reset_peak_rss()
        t = time.perf_counter()
        volume = worker.prepare(series, spacing)
        isolated.append(time.perf_counter() - t)
        inside.append(worker.last.worker_seconds)
        writes.append(worker.last.write_seconds)
        worker_peak.append(worker.last.worker_peak_rss + peak_rss_bytes() - base)
        shape = volume.array.shape
        del volume
    worker.close()

    rows = [
        ("read + preprocess, in-process", here, f"{max(parent_peak) / 2**20:,.0f} (growth)"),
        ("read + preprocess, isolated (warm worker)", isolated,
         f"{max(worker_peak) / 2**20:,.0f} (worker + parent growth)"),
        ("  of which inside the worker (read, preprocess, hand-over write)", inside, ""),
        ("  of which the hand-over write", writes, ""),
    ]
    if args.weights is not None:
        from kernel import predict as kernel_predict
        from kernel.budget import TimeBudget

        predictors = {}
        for flag in ("0", "1"):  # the read mode is fixed when the predictor is made
            os.environ["RSNA_READ_ISOLATION"] = flag
            predictors[flag] = kernel_predict.Predictor(str(args.weights),
                                                        budget=TimeBudget(limit_s=1e9, n_series=10))
            predictors[flag].predict(str(series))  # warm-up (and the worker's start)
        os.environ.pop("RSNA_READ_ISOLATION", None)
        times: dict[str, list[float]] = {"0": [], "1": []}
        for _ in range(args.repeats):  # interleaved, so a load change on the machine hits both alike
            for flag, predictor in predictors.items():
                t = time.perf_counter()
                _, record = predictor.predict(str(series))
                times[flag].append(time.perf_counter() - t)
                assert record.level != "fallback", record
        rows.append(("predict end-to-end, in-process read", times["0"], ""))
        rows.append(("predict end-to-end, isolated read", times["1"], ""))
        predictors["1"].reader.close()

    overhead = statistics.median(isolated) - statistics.median(here)
    print(f"\n{args.slices} x 512 x 512 CT, uncompressed, volume {args.spacing:g} mm -> {shape}; "
          f"median of {args.repeats}; first isolated call (worker start + warm-up + read) {first:.2f} s\n")
    print("| what | median s | min s | max s | peak RSS MB |")
    print("|---|---|---|---|---|")
    for label, times, peak in rows:
        print(f"| {label} | {_median(times)} | {min(times):.3f} | {max(times):.3f} | {peak} |")
    outside = statistics.median(a - b for a, b in zip(isolated, inside, strict=True))
    added = outside + statistics.median(writes)
    print(f"\nisolation cost: medians isolated - in-process {overhead * 1000:+.0f} ms; what isolation adds (outside "
          f"the worker: request, JSON, mapping {outside * 1000:.0f} ms + the hand-over write "
          f"{statistics.median(writes) * 1000:.0f} ms) {added * 1000:.0f} ms; load average {os.getloadavg()[0]:.1f}")
    if args.weights is not None:
        e2e_here, e2e_iso = statistics.median(rows[4][1]), statistics.median(rows[5][1])
        print(f"end-to-end: {e2e_iso - e2e_here:+.3f} s ({(e2e_iso - e2e_here) / e2e_here:+.1%} of "
              f"{e2e_here:.3f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
