"""Five-minute smoke run of the whole training side, on the 2 cores of a laptop.

    python -m train_offline.smoke [--out runs/smoke] [--n 36] [--workers 2] [--keep]

Makes ``--n`` small phantom training series and a 12-series test split, pre-caches them, trains fold 0 of the
``smoke`` config (locator, vessel pretraining, classifier, fine stage) for a few epochs, exports it with its parity
checks, and scores the export through the local gateway: every step a real run takes, at toy sizes. The scores mean
nothing (a few dozen series, two epochs); what counts is that every step finishes. It prints each step's time.
``--keep`` reuses the data of an earlier run in ``--out`` (only the training steps run again).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "smoke_config", "smoke_run"]

TEST_SERIES = 12


def smoke_config(out: Path) -> dict[str, Any]:
    """The ``smoke`` config with its data and run folders under ``out``."""
    from train_offline.config import load_config

    data = out / "data"
    return load_config("smoke", {
        "data": {"root": str(data / "train"), "cache": str(data / "train_cache"),
                 "index": str(data / "train_index.csv"), "folds_csv": str(data / "train_folds.csv")},
        "train": {"out_dir": str(out / "runs")},
    })


def smoke_run(out: Path, n: int = 36, workers: int = 2, keep: bool = False,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every step of training at toy sizes under ``out``; returns the step times (s), the fold's validation
    scores and the test split's gateway exit status and submission path."""
    from kernel.gateway import main as gateway
    from train_offline.export import export_folds
    from train_offline.fine.train import train_fine
    from train_offline.phantoms.generate import generate_dataset
    from train_offline.precache_all import precache_all
    from train_offline.train import train_fold

    config = smoke_config(out)
    data, test = Path(config["data"]["root"]), out / "data" / "test"
    fold_dir = Path(config["train"]["out_dir"]) / config["name"] / "fold0"
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(Path(config["train"]["out_dir"]), ignore_errors=True)
    times: dict[str, float] = {}

    def step(name: str, fn: Callable[[], Any]) -> Any:
        log(f"== {name}")
        start = time.perf_counter()
        result = fn()
        times[name] = round(time.perf_counter() - start, 1)
        return result

    if not (data / "train.csv").is_file():
        step("phantoms", lambda: (
            generate_dataset(data, n, seed=0, split="train", size="small", workers=workers, progress=False),
            generate_dataset(test, TEST_SERIES, seed=1, split="test", size="small", workers=workers,
                             progress=False)))
    step("precache", lambda: precache_all(data, config["data"]["cache"], workers=workers,
                                          spacing=config["volume_spacing_mm"], progress=False))
    coarse = step("locator + pretrain + classifier", lambda: train_fold(config, 0, fold_dir))
    fine = step("fine stage", lambda: train_fine(config, 0, fold_dir, workers=workers))
    weights = step("export", lambda: export_folds(fold_dir.parent, out / "weights").parent)
    submission = out / "submission.parquet"
    status = step("gateway", lambda: gateway(["--data", str(test), "--weights", str(weights), "--solution",
                                              str(test / "solution.csv"), "--out", str(submission), "--seed", "0",
                                              "--no-progress"]))
    return {"seconds": times, "classifier_validation": coarse["validation"]["score"],
            "fine_validation": fine["validation"]["score"], "gateway_status": status, "submission": submission,
            "weights": weights}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train_offline.smoke", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/smoke"), help="work folder (default runs/smoke)")
    parser.add_argument("--n", type=int, default=36, help="phantom training series (default 36; at least 12)")
    parser.add_argument("--workers", type=int, default=2, help="processes for phantoms, cache and boxes (default 2)")
    parser.add_argument("--keep", action="store_true", help="reuse the phantoms and cache of an earlier run in --out")
    args = parser.parse_args(argv)
    if args.n < 12:
        parser.error("--n must be at least 12 (two folds with positives and negatives)")
    start = time.perf_counter()
    try:
        result = smoke_run(args.out, args.n, args.workers, args.keep)
    except (OSError, ValueError) as exc:
        print(f"smoke failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print("\n| step | seconds |\n|---|---|")
    for name, seconds in result["seconds"].items():
        print(f"| {name} | {seconds:.1f} |")
    print(f"| total | {time.perf_counter() - start:.1f} |")
    print(f"\nfold 0 validation score: classifier {result['classifier_validation']}, with the fine stage "
          f"{result['fine_validation']} (toy sizes: the numbers mean nothing)")
    print(f"weights: {result['weights']}; submission: {result['submission']}")
    return int(result["gateway_status"])


if __name__ == "__main__":
    raise SystemExit(main())
