"""Hostile series at the reader: a usable volume or one clear SeriesReadError, never any other exception, within a
time and memory bound (sized before allocation: no case may cost gigabytes or minutes)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from kernel.dicom_io import read_series
from kernel.volume import SeriesReadError
from testkit.hostile import CASES, TreePeak

MAX_VOXELS = 50_000_000  # a 200 MB float32 volume
MEMORY_BOUND = 1 << 30  # peak RSS growth of the whole process tree while one case is read
TIME_BOUND_S = 30.0  # the slowest case (3,000 files) takes ~6 s


@pytest.mark.parametrize("case", sorted(CASES))
def test_reader_on_hostile_series(case: str, tmp_path: Path) -> None:
    folder = tmp_path / case
    expected = CASES[case](folder)  # the decoder-hook cases read normally here: their hooks live in the worker
    start = time.perf_counter()
    with TreePeak() as peak:
        try:
            volume = read_series(folder, max_voxels=MAX_VOXELS)
        except SeriesReadError as exc:
            volume, error = None, exc
    assert time.perf_counter() - start < TIME_BOUND_S
    assert peak.growth < MEMORY_BOUND, f"{peak.growth / 2**20:.0f} MB"
    if expected == "error":
        assert volume is None, "expected a SeriesReadError"
        assert str(folder) in str(error)  # the message names the folder and says why
        return
    assert volume is not None, f"expected a volume, got {error}"
    assert volume.array.ndim == 3 and volume.array.size > 0
    assert np.isfinite(volume.array).all()
    assert volume.array.size <= MAX_VOXELS
    assert np.isfinite(volume.affine).all() and abs(np.linalg.det(volume.affine[:3, :3])) > 0
