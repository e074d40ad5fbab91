"""Hostile series at the reader: a usable volume or one clear SeriesReadError, never any other exception."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kernel.dicom_io import SeriesReadError, read_series
from testkit.hostile import CASES


@pytest.mark.parametrize("case", sorted(CASES))
def test_reader_on_hostile_series(case: str, tmp_path: Path) -> None:
    folder = tmp_path / case
    expected = CASES[case](folder)
    if expected == "error":
        with pytest.raises(SeriesReadError) as exc:
            read_series(folder, max_voxels=50_000_000)
        assert str(folder) in str(exc.value)  # the message names the folder and says why
        return
    volume = read_series(folder, max_voxels=50_000_000)
    assert volume.array.ndim == 3 and volume.array.size > 0
    assert np.isfinite(volume.array).all()
    assert volume.array.size <= 50_000_000
    assert np.isfinite(volume.affine).all() and abs(np.linalg.det(volume.affine[:3, :3])) > 0
