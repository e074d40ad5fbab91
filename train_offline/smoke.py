"""Five-minute smoke run of the whole training side, on the 2 cores of a laptop.

    python -m train_offline.smoke [--out runs/smoke] [--n 36] [--workers 2] [--keep]

Runs the commands a real training runs, as a user would type them, at toy sizes: makes ``--n`` small phantom training
series and a 12-series test split, pre-caches them, trains fold 0 of the ``smoke`` config (locator, vessel
pretraining, classifier, fine stage) for a few epochs, exports it with its parity checks, and scores the export
through the local gateway. The scores mean nothing (a few dozen series, two epochs); what counts is that every step
finishes. It prints each step's command and time. ``--keep`` reuses the phantoms of an earlier run in ``--out``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "smoke_commands"]

TEST_SERIES = 12


def smoke_commands(out: Path, n: int = 36, workers: int = 2) -> list[tuple[str, list[str]]]:
    """(step, argv) of every command of the smoke run, its data and runs under ``out``."""
    data, test, runs = out / "data" / "train", out / "data" / "test", out / "runs"
    py = [sys.executable, "-m"]
    paths = [f"data.root={data}", f"data.cache={out / 'data' / 'train_cache'}",
             f"data.index={out / 'data' / 'train_index.csv'}", f"data.folds_csv={out / 'data' / 'train_folds.csv'}",
             f"train.out_dir={runs}"]
    return [
        ("phantoms (train)", [*py, "train_offline.phantoms", "--out", str(data), "--n", str(n), "--seed", "0",
                              "--size", "small", "--workers", str(workers), "--quiet"]),
        ("phantoms (test)", [*py, "train_offline.phantoms", "--out", str(test), "--n", str(TEST_SERIES), "--seed",
                             "1", "--split", "test", "--size", "small", "--workers", str(workers), "--quiet"]),
        ("precache", [*py, "train_offline.precache_all", "--config", "smoke", "--data", str(data), "--out",
                      str(out / "data" / "train_cache"), "--workers", str(workers)]),
        ("train (locator, pretrain, classifier, fine)", [*py, "train_offline.train", "--config", "smoke", "--fold", "0",
                                                         "--set", *paths]),
        ("export", [*py, "train_offline.export", "--run", str(runs / "smoke"), "--out", str(out / "weights")]),
        ("gateway", [*py, "kernel.gateway", "--data", str(test), "--weights", str(out / "weights"), "--solution",
                     str(test / "solution.csv"), "--out", str(out / "submission.parquet"), "--seed", "0",
                     "--no-progress"]),
    ]


def run_steps(out: Path, n: int, workers: int, keep: bool) -> list[tuple[str, float, int]]:
    """Run the commands in order (the phantoms skipped with ``keep`` when they are there), stopping at the first
    that fails; (step, seconds, exit status) of each run."""
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    for stale in ("runs", "weights", "data/train_cache"):
        shutil.rmtree(out / stale, ignore_errors=True)
    done = []
    for name, argv in smoke_commands(out, n, workers):
        if keep and name.startswith("phantoms") and (Path(argv[argv.index("--out") + 1]) / "series").is_dir():
            continue
        print(f"== {name}: {' '.join(argv[2:])}", flush=True)
        start = time.perf_counter()
        status = subprocess.run(argv).returncode
        done.append((name, round(time.perf_counter() - start, 1), status))
        if status != 0:
            break
    return done


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train_offline.smoke", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/smoke"), help="work folder (default runs/smoke)")
    parser.add_argument("--n", type=int, default=36, help="phantom training series (default 36; at least 12)")
    parser.add_argument("--workers", type=int, default=2, help="processes for phantoms, cache and boxes (default 2)")
    parser.add_argument("--keep", action="store_true", help="reuse the phantoms of an earlier run in --out")
    args = parser.parse_args(argv)
    if args.n < 12:
        parser.error("--n must be at least 12 (two folds with positives and negatives)")
    start = time.perf_counter()
    done = run_steps(args.out, args.n, args.workers, args.keep)
    print("\n| step | seconds | exit |\n|---|---|---|")
    for name, seconds, status in done:
        print(f"| {name} | {seconds:.1f} | {status} |")
    print(f"| total | {time.perf_counter() - start:.1f} | |")
    failed = [name for name, _, status in done if status != 0]
    if failed:
        print(f"smoke failed at: {failed[0]}", file=sys.stderr)
        return 1
    print(f"\nweights: {args.out / 'weights'}; submission: {args.out / 'submission.parquet'} (toy sizes: the scores "
          "mean nothing)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
