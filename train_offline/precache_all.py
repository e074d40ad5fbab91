"""Pre-cache every series of a competition-layout folder as canonical volumes, in parallel, resumably.

    python -m train_offline.precache_all --config demo --data DIR --out DIR [--workers N] [--shard K/N]
    python -m train_offline.precache_all --data DIR --out DIR --spacing 1.5 1.5 1.5     # an explicit spacing

The spacing is the config's ``volume_spacing_mm`` (what training needs and the kernel builds), or ``--spacing``.

Each series goes through ``kernel.preprocess.prepare_volume`` (the kernel's own path) and is stored by
``train_offline.cache.save_cached``. Finished series are skipped on a rerun; every write is atomic; a series that
fails leaves ``<uid>.failed.json`` with the reason, and ``failures.csv`` lists them all at the end. ``--shard K/N``
takes every N-th series from the K-th (0-based), so machines can split the data without talking to each other.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from kernel.dicom_io import DEFAULT_MAX_VOXELS
from kernel.preprocess import prepare_volume
from train_offline.cache import (
    CacheSpacingError,
    atomic_write_bytes,
    cache_spacing,
    clean_stale_temp,
    is_cached,
    save_cached,
)
from train_offline.config import ConfigError, load_config

__all__ = ["list_series", "precache_all", "precache_one", "parse_shard", "main"]


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N) with 0 <= K < N."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--shard must look like K/N (e.g. 0/4), got {text!r}") from exc
    if not (n >= 1 and 0 <= k < n):
        raise argparse.ArgumentTypeError(f"--shard K/N needs 0 <= K < N, got {text!r}")
    return k, n


def list_series(data_dir: Path, shard: tuple[int, int] = (0, 1)) -> list[str]:
    """Series UIDs under ``data_dir/series`` (sorted, so every machine sees the same order), this shard's part."""
    series_root = data_dir / "series"
    if not series_root.is_dir():
        raise FileNotFoundError(f"{data_dir}: no 'series' folder (expected the competition layout)")
    uids = sorted(p.name for p in series_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    k, n = shard
    return uids[k::n]


def precache_one(
    series_dir: str, out_dir: str, spacing: tuple[float, float, float], max_voxels: int | None
) -> tuple[str, str | None, float]:
    """Cache one series. Returns (uid, error message or None, seconds). Never raises."""
    uid = os.path.basename(series_dir)
    start = time.perf_counter()
    out = Path(out_dir)
    try:
        volume = prepare_volume(series_dir, spacing, max_voxels=max_voxels, backend="auto")
        save_cached(volume, out, uid=uid, cache_spacing=list(spacing))
        (out / f"{uid}.failed.json").unlink(missing_ok=True)
        return uid, None, time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 - one bad series must not cost the whole run
        reason = f"{type(exc).__name__}: {exc}"
        try:
            atomic_write_bytes(out / f"{uid}.failed.json", json.dumps({"uid": uid, "reason": reason}).encode())
        except OSError:
            pass
        return uid, reason, time.perf_counter() - start


def _worker_init() -> None:
    # One decoding thread per worker: the pool is the parallelism.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def write_failures(out_dir: Path) -> list[tuple[str, str]]:
    """Collect ``*.failed.json`` markers of series still not cached into ``failures.csv``."""
    failures = []
    for marker in sorted(out_dir.glob("*.failed.json")):
        try:
            record = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not is_cached(out_dir, record["uid"]):
            failures.append((record["uid"], record["reason"]))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["SeriesInstanceUID", "reason"])
    writer.writerows(failures)
    atomic_write_bytes(out_dir / "failures.csv", buf.getvalue().encode())
    return failures


def precache_all(
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    workers: int = 2,
    shard: tuple[int, int] = (0, 1),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    retry_failed: bool = False,
    progress: bool = True,
) -> dict[str, int]:
    """Cache this shard's series that are not cached yet. Returns counts: total, skipped, cached, failed."""
    data, out = Path(data_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean_stale_temp(out)
    uids = list_series(data, shard)
    todo = [
        u for u in uids
        if not is_cached(out, u) and (retry_failed or not (out / f"{u}.failed.json").exists())
    ]
    counts = {"total": len(uids), "skipped": len(uids) - len(todo), "cached": 0, "failed": 0}
    spacing_t = tuple(float(s) for s in spacing)
    bar = tqdm(total=len(todo), desc="precache", unit="series", disable=not progress, file=sys.stderr)
    if workers <= 1:
        _worker_init()
        results = (precache_one(str(data / "series" / u), str(out), spacing_t, max_voxels) for u in todo)
        for _, err, _ in results:
            counts["failed" if err else "cached"] += 1
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init) as pool:
            futures = [
                pool.submit(precache_one, str(data / "series" / u), str(out), spacing_t, max_voxels) for u in todo
            ]
            for fut in as_completed(futures):
                _, err, _ = fut.result()
                counts["failed" if err else "cached"] += 1
                bar.update()
    bar.close()
    write_failures(out)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train_offline.precache_all",
        description="Cache every series of a competition-layout folder as a canonical float32 volume + JSON.",
    )
    parser.add_argument("--data", required=True, type=Path, help="folder holding series/<uid>/*.dcm")
    parser.add_argument("--out", required=True, type=Path, help="cache folder (created if needed)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes (default: cores)")
    parser.add_argument("--shard", type=parse_shard, default=(0, 1), help="K/N: every N-th series from K (0-based)")
    parser.add_argument("--config", help="training config (name or YAML): cache at its volume_spacing_mm and "
                        "decode budget max_voxels")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"),
                        help="target spacing in mm; overrides --config (default: the config's, else 1 1 1)")
    parser.add_argument("--max-voxels", type=int, help=f"decode budget per series (default: the config's, else "
                        f"{DEFAULT_MAX_VOXELS})")
    parser.add_argument("--retry-failed", action="store_true", help="retry series that failed in an earlier run")
    args = parser.parse_args(argv)
    try:
        spacing, max_voxels = (1.0, 1.0, 1.0), DEFAULT_MAX_VOXELS
        if args.config is not None:
            config = load_config(args.config)
            spacing, max_voxels = tuple(config["volume_spacing_mm"]), int(config["max_voxels"])
        spacing = tuple(args.spacing) if args.spacing is not None else spacing
        max_voxels = args.max_voxels if args.max_voxels is not None else max_voxels
        stored = cache_spacing(args.out) if args.out.is_dir() else None
        if stored is not None and stored != tuple(round(float(v), 6) for v in spacing):
            raise CacheSpacingError(f"{args.out} already holds volumes at {list(stored)} mm; asked for "
                                    f"{list(spacing)} mm: use another --out")
        print(f"caching at {list(spacing)} mm", file=sys.stderr)
        counts = precache_all(
            args.data, args.out, workers=args.workers, shard=args.shard, spacing=spacing,
            max_voxels=max_voxels, retry_failed=args.retry_failed,
        )
    except (FileNotFoundError, NotADirectoryError, ConfigError, CacheSpacingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{counts['total']} series in shard: {counts['cached']} cached now, {counts['skipped']} skipped "
        f"(done or failed before), {counts['failed']} failed -> {args.out / 'failures.csv'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
