"""Aneurysm sizes from the phantom ground truth (``phantom_truth.jsonl``), for per-size tables.

The generator records each dome in the head frame; ``head_to_lps`` scales the head, so the size in patient mm is the
recorded size times the cube root of that matrix's determinant. Real competition data has no sizes: every function
here returns empty results when the truth file is absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

__all__ = ["DOME_BANDS", "Dome", "band_of", "load_domes"]

# Largest-dome bands of the targets (patient mm): [lo, hi).
DOME_BANDS: list[tuple[str, float, float]] = [
    ("< 3.5 mm", 0.0, 3.5), ("3.5-4.5 mm", 3.5, 4.5), ("4.5-6 mm", 4.5, 6.0), (">= 6 mm", 6.0, float("inf")),
]


class Dome:
    """One aneurysm: its location name, centre (LPS mm) and dome diameter (patient mm)."""

    __slots__ = ("centre_lps", "dome_mm", "location")

    def __init__(self, location: str, centre_lps: np.ndarray, dome_mm: float):
        self.location, self.centre_lps, self.dome_mm = location, np.asarray(centre_lps, dtype=np.float64), dome_mm


def load_domes(data_root: str | os.PathLike[str]) -> dict[str, list[Dome]]:
    """SeriesInstanceUID -> its aneurysms (patient-mm domes), from ``<root>/phantom_truth.jsonl`` ({} if absent)."""
    path = Path(data_root) / "phantom_truth.jsonl"
    if not path.is_file():
        return {}
    out: dict[str, list[Dome]] = {}
    with open(path) as fh:
        for line in fh:
            record = json.loads(line)
            scale = float(abs(np.linalg.det(np.asarray(record["head_to_lps"], dtype=np.float64)[:3, :3])) ** (1 / 3))
            out[str(record["SeriesInstanceUID"])] = [
                Dome(a["location"], np.asarray(a["centre_lps"]), float(a["dome_mm"]) * scale)
                for a in record.get("aneurysms", [])
            ]
    return out


def band_of(dome_mm: float) -> str:
    """The ``DOME_BANDS`` name a dome size falls in."""
    for name, lo, hi in DOME_BANDS:
        if lo <= dome_mm < hi:
            return name
    return DOME_BANDS[-1][0]
