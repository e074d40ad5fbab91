"""What ``python -m kernel.findings`` costs per series beside the gateway's ``Predictor.predict``.

One warmed-up ``Predictor`` (no time budget) runs each series of a folder twice, interleaved so the page cache and
the machine's load treat both alike: ``Predictor.predict`` alone (the gateway's call) and
``kernel.findings.write_series`` with the chosen formats (the same predict, then the JSON, markups, SR and PNG).
Prints per-series seconds and the median extra cost.

    python benchmarks/bench_findings.py DIR [--n 10] [--formats json,mrk,sr,png] [--weights DIR]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="a folder of series folders (or a competition-layout folder)")
    parser.add_argument("--n", type=int, default=10, help="series to time (default 10; one more warms up)")
    parser.add_argument("--formats", default="json,mrk,sr,png", help="formats written (default all four)")
    parser.add_argument("--weights", type=Path, default=REPO / "weights")
    args = parser.parse_args()
    from kernel import findings
    from kernel.manifest import sha256_file
    from kernel.predict import Predictor

    series = findings.series_folders(args.dir)[: args.n + 1]
    formats = args.formats.split(",")
    predictor = Predictor(str(args.weights), budget=findings.never_degrading_budget())
    sha = sha256_file(args.weights / "manifest.json")
    out = Path(tempfile.mkdtemp(prefix="bench_findings_"))
    try:
        predictor.predict(str(series[0]))  # warm-up: sessions, read worker, caches
        rows = []
        for path in series[1:]:
            t0 = time.perf_counter()
            predictor.predict(str(path))
            alone = time.perf_counter() - t0
            t0 = time.perf_counter()
            record = findings.write_series(predictor, path, out, formats=formats, manifest_sha256=sha)
            full = time.perf_counter() - t0
            rows.append((path.name, alone, full, record["seconds"]["total"] - record["seconds"]["predict"]))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"| series | predict alone s | findings call s ({args.formats}) | writing s (inside the call) |")
    print("|---|---|---|---|")
    for uid, alone, full, writing in rows:
        print(f"| ...{uid[-8:]} | {alone:.2f} | {full:.2f} | {writing:.2f} |")
    medians = [statistics.median(r[i] for r in rows) for i in (1, 2, 3)]
    print(f"| median of {len(rows)} | {medians[0]:.2f} | {medians[1]:.2f} | {medians[2]:.2f} |")
    print(f"median extra per series (findings call - predict alone): {medians[1] - medians[0]:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
