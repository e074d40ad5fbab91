"""A tiny synthetic competition training folder plus its pre-cached volumes, for training tests (a fixture, not a
data generator: the phantoms are that).

Each series is a noise cube with a bright "Circle of Willis" landmark near its centre; every second series has a
brighter aneurysm beside it (Left MCA, AComm, Right ACA in turn) with a localizer row; some series have a
segmentation of the landmark (labelled AComm, NIfTI/RAS convention) so the index finds Circle-of-Willis centres.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from kernel.labels import ID_COL, LABEL_COLS, LOCATION_COLS, MODALITY_NAMES, SEG_LABEL_VALUES, TRAIN_CSV_COLS
from kernel.volume import Volume
from train_offline.cache import save_cached


def canonical_affine(spacing: float, shape: tuple[int, int, int]) -> np.ndarray:
    """Canonical (z -> superior, y -> posterior, x -> patient left) affine of a cube centred on the LPS origin."""
    origin = [-(n - 1) * spacing / 2 for n in shape]
    return np.array([[0, 0, spacing, origin[2]], [0, spacing, 0, origin[1]], [spacing, 0, 0, origin[0]],
                     [0, 0, 0, 1.0]])


def write_training_set(
    root: Path, *, n: int = 15, seed: int = 0, spacing: float = 4.0, shape: tuple[int, int, int] = (40, 40, 40),
    uid_root: str = "1.2.3", jitter_vox: int = 3, landmark_half_vox: int = 1, aneurysm_offset_vox: int = 4,
    segmented: Callable[[int], bool] = lambda i: i % 3 == 0, sex: str = "F",
) -> tuple[Path, Path]:
    """Write ``root/data`` (train.csv, train_localizers.csv, segmentations/) and ``root/cache``; returns both."""
    rng = np.random.default_rng(seed)
    affine = canonical_affine(spacing, shape)
    data, cache = root / "data", root / "cache"
    rows, localizers = [], []
    for i in range(n):
        uid = f"{uid_root}.{i}"
        array = rng.normal(40.0, 10.0, shape).astype(np.float32)
        centre = np.array(shape) // 2 + rng.integers(-jitter_vox, jitter_vox + 1, 3)
        landmark = tuple(slice(c - landmark_half_vox, c + landmark_half_vox + 1) for c in centre)
        array[landmark] = 400.0
        labels = dict.fromkeys(LABEL_COLS, 0)
        if i % 2 == 0:
            loc = LOCATION_COLS[(i // 2) % 3 * 2 + 4]
            point = centre + np.array([0, 0, aneurysm_offset_vox if "Left" in loc else -aneurysm_offset_vox])
            array[tuple(slice(c - 1, c + 2) for c in point)] = 600.0
            labels[loc] = labels["Aneurysm Present"] = 1
            localizers.append({ID_COL: uid, "SOPInstanceUID": f"{uid}.{point[0]}",
                               "coordinates": str({"x": float(point[2]), "y": float(point[1])}), "location": loc})
        save_cached(Volume(array=array, affine=affine.copy(), modality="CT", series_uid=uid,
                           slice_lookup={(f"{uid}.{z}", 0): z for z in range(shape[0])}), cache, uid)
        rows.append({ID_COL: uid, "PatientAge": 50, "PatientSex": sex, "Modality": MODALITY_NAMES[i % 4], **labels})
        if segmented(i):
            seg = np.zeros(shape, np.uint8)
            seg[landmark] = SEG_LABEL_VALUES["Anterior Communicating Artery"]
            (data / "segmentations" / uid).mkdir(parents=True)
            nib.save(nib.Nifti1Image(seg, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine),
                     str(data / "segmentations" / uid / f"{uid}_cowseg.nii"))
    data.mkdir(exist_ok=True)
    pd.DataFrame(rows, columns=TRAIN_CSV_COLS).to_csv(data / "train.csv", index=False)
    pd.DataFrame(localizers).to_csv(data / "train_localizers.csv", index=False)
    return data, cache
