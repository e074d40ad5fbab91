"""A small test split in the competition's layout (test.csv, series/<uid>/*.dcm, solution.csv) for kernel tests.

Uses the phantom generator (``python -m train_offline.phantoms``) when it is in the tree; otherwise writes smooth
synthetic series with the reader tests' DICOM factory and random labels (every column gets both classes, so the
metric is defined).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl

from kernel.labels import ID_COL, LABEL_COLS

REPO = Path(__file__).resolve().parent.parent


def phantoms_available() -> bool:
    return (REPO / "train_offline" / "phantoms" / "__main__.py").is_file()


def _synthetic_split(out: Path, n: int, seed: int) -> None:
    from testkit.dicom_factory import write_series

    rng = np.random.default_rng(seed)
    uids, modalities = [], []
    for i in range(n):
        tmp = out / "series" / f"_tmp{i}"
        modality = "CT" if i % 2 else "MR"
        geometry = write_series(tmp, n_slices=24 + 4 * (i % 3), rows=40, cols=44, modality=modality, seed=seed + i,
                                reverse=bool(i % 3 == 1), allowlist_only=True)
        tmp.rename(out / "series" / geometry["series_uid"])
        uids.append(geometry["series_uid"])
        modalities.append("CTA" if modality == "CT" else "MRA")
    labels = rng.random((n, len(LABEL_COLS))) < 0.4
    labels[0], labels[1] = True, False  # both classes in every column
    labels[:, -1] = labels[:, :-1].any(axis=1)
    pl.DataFrame({ID_COL: uids}).write_csv(out / "test.csv")
    solution = pl.DataFrame({ID_COL: uids, **{c: labels[:, j].astype(int) for j, c in enumerate(LABEL_COLS)},
                             "Modality": modalities})
    solution.write_csv(out / "solution.csv")


def write_test_split(out: str | Path, n: int = 8, seed: int = 0, *, prefer_phantoms: bool = True,
                     size: str = "small") -> Path:
    """Write a test split into ``out`` (phantoms of ``size`` when the generator is there); returns the folder (holds
    test.csv, series/, solution.csv)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if prefer_phantoms and phantoms_available():
        cmd = [sys.executable, "-m", "train_offline.phantoms", "--out", str(out), "--n", str(n), "--seed", str(seed),
               "--split", "test", "--size", size]
        subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True)
    else:
        _synthetic_split(out, n, seed)
    assert (out / "test.csv").is_file() and (out / "solution.csv").is_file(), f"incomplete test split in {out}"
    return out
