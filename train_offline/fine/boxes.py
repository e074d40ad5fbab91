"""Step 2 of the fine stage: the native stack in a cube around every site, cut once from the DICOM series.

``fine_boxes/<uid>.npz`` holds the raw canonical native stack (``kernel.preprocess.canonicalise`` without
resampling: the array the kernel's fine stage samples from) in a ``box_mm`` cube around every site and localizer,
int16 where that keeps every value. Patches cut from a box equal patches cut from the whole stack. Several folds share
one pass: each series is read once for all the folds' boxes.
"""

from __future__ import annotations

import io
import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from kernel.dicom_io import read_series
from kernel.preprocess import canonicalise, normaliser, spacing_of, voxel_to_world, world_to_voxel
from train_offline.cache import atomic_write_bytes, load_cached
from train_offline.data import SeriesRecord
from train_offline.fine.sites import all_sites

__all__ = ["BOX_DIR", "BoxJobs", "BoxStore", "box_jobs", "build_boxes", "cut_box", "extract_boxes"]

BOX_DIR = "fine_boxes"


def cut_box(array: np.ndarray, affine: np.ndarray, point_lps: np.ndarray,
            box_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """The voxels of ``array`` within a ``box_mm`` cube around a point (on the array's own grid, clipped to the array,
    one voxel of margin for trilinear sampling) and the box's affine."""
    spacing, size = spacing_of(affine), np.asarray(array.shape)
    middle = world_to_voxel(affine, np.asarray(point_lps, dtype=np.float64)[None])[0]
    half = box_mm / 2.0 / spacing + 1
    lo = np.clip(np.floor(middle - half), 0, size - 1).astype(int)
    hi = np.maximum(np.clip(np.ceil(middle + half) + 1, 0, size).astype(int), lo + 1)
    box_affine = affine.copy()
    box_affine[:3, 3] = voxel_to_world(affine, lo[None].astype(np.float64))[0]
    return np.ascontiguousarray(array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float32), box_affine


def _stored(box: np.ndarray) -> np.ndarray:
    """A box as written to disk: int16 when that keeps every value (CT in HU, most MR), else float32. Half the bytes
    on disk and in the training process's memory, and the same patches (``crop_around`` samples in float32)."""
    if box.size and np.all(np.isfinite(box)) and box.min() >= -32768 and box.max() <= 32767:
        small = box.astype(np.int16)
        if np.array_equal(small, box):
            return small
    return box


def extract_boxes(series_dir: str, targets: Sequence[tuple[np.ndarray, str]], box_mm: float) -> list[str]:
    """Read a series once as the kernel's fine stage does (canonical, native spacing) and write, for each (points,
    npz path) of ``targets`` (one per fold that needs the series), a box per point."""
    volume = canonicalise(read_series(series_dir), None)
    for points, out_path in targets:
        arrays: dict[str, np.ndarray] = {}
        for i, point in enumerate(np.asarray(points, dtype=np.float64).reshape(-1, 3)):
            box, box_affine = cut_box(volume.array, volume.affine, point, box_mm)
            arrays[f"box{i}"], arrays[f"affine{i}"] = _stored(box), box_affine
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(Path(out_path), buffer.getvalue())
    return [out for _, out in targets]


BoxJobs = dict[str, list[tuple[np.ndarray, str]]]  # series folder -> (points, npz path) per fold that lacks its boxes


def box_jobs(data_root: Path, fold_dir: Path, sites: Mapping[str, Mapping[str, Any]],
             records: Mapping[str, SeriesRecord], jobs: BoxJobs | None = None) -> BoxJobs:
    """Add to ``jobs`` the boxes one fold still lacks: ``fine_boxes/<uid>.npz`` for every series with sites."""
    jobs = {} if jobs is None else jobs
    out_dir = fold_dir / BOX_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    for uid, record in sites.items():
        path = out_dir / f"{uid}.npz"
        if not path.is_file():
            points, _ = all_sites(record, [p for _, p in records[uid].points])
            jobs.setdefault(str(data_root / "series" / uid), []).append((points, str(path)))
    return jobs


def build_boxes(jobs: BoxJobs, box_mm: float, workers: int) -> int:
    """Write the boxes of ``jobs`` (see ``box_jobs``), each series read once for all the folds that need it; returns
    the number of series read."""
    if not jobs:
        return 0
    # spawn: fresh workers that do not inherit the caller's memory (a training process may hold every volume; forked
    # copies of it were killed for memory on 2 x 24 GB)
    with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(extract_boxes, series, targets, box_mm) for series, targets in jobs.items()]
        for future in tqdm(futures, desc="fine boxes", mininterval=10):
            future.result()
    return len(jobs)


class BoxStore:
    """Each series' native boxes (raw intensities) and the normalisation of its canonical volume, loaded once."""

    def __init__(self, fold_dir: Path, cache_dir: Path, normalisation: Mapping[str, str],
                 supplement_caches: Mapping[str, Path] | None = None):
        self.box_dir, self.cache_dir, self.normalisation = fold_dir / BOX_DIR, Path(cache_dir), dict(normalisation)
        self.supplement_caches = {uid: Path(c) for uid, c in (supplement_caches or {}).items()}  # uid -> its cache
        self._boxes: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._norms: dict[str, Callable[[np.ndarray], np.ndarray]] = {}

    def boxes(self, uid: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every box of a series as stored (int16 or float32, see ``_stored``) with its affine."""
        if uid not in self._boxes:
            with np.load(self.box_dir / f"{uid}.npz") as data:
                n = len(data.files) // 2
                self._boxes[uid] = [(data[f"box{i}"], data[f"affine{i}"]) for i in range(n)]
        return self._boxes[uid]

    def box(self, uid: str, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Box ``i`` of a series in float32 (the raw intensities the kernel's native stack holds) and its affine."""
        array, affine = self.boxes(uid)[i]
        return array.astype(np.float32, copy=False), affine

    def normalise(self, uid: str) -> Callable[[np.ndarray], np.ndarray]:
        """The kernel's patch normalisation for this series: statistics of its canonical volume (the cache)."""
        if uid not in self._norms:
            volume = load_cached(self.supplement_caches.get(uid, self.cache_dir), uid, mmap=True)
            scheme = self.normalisation["CT" if volume.modality == "CT" else "MR"]
            self._norms[uid] = normaliser(scheme, np.asarray(volume.array))
        return self._norms[uid]
