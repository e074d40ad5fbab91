"""Aneurysm sizes from the phantom ground truth (``phantom_truth.jsonl``), for per-size tables.

The generator records each dome in the head frame; ``head_to_lps`` scales the head, so the size in patient mm is the
recorded size times the cube root of that matrix's determinant. Real competition data has no sizes: every function
here returns empty results when the truth file is absent.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from kernel.jsonl import read_jsonl

__all__ = ["DOME_BANDS", "Dome", "band_of", "candidate_recall", "found_by", "load_domes", "nearest_mm"]

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
    out: dict[str, list[Dome]] = {}
    for record in read_jsonl(Path(data_root) / "phantom_truth.jsonl", missing_ok=True):
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


def nearest_mm(candidates: np.ndarray, dome: Dome) -> float:
    """Distance (mm) from a dome's centre to the nearest candidate (inf without candidates)."""
    cands = np.asarray(candidates, dtype=np.float64).reshape(-1, 3)
    return float(np.linalg.norm(cands - dome.centre_lps, axis=1).min()) if len(cands) else float("inf")


def found_by(candidates: np.ndarray, dome: Dome) -> bool:
    """A candidate lies within the dome's radius + 2 mm (the issue's recall criterion)."""
    return nearest_mm(candidates, dome) <= dome.dome_mm / 2 + 2.0


def candidate_recall(candidates: Mapping[str, np.ndarray], domes: Mapping[str, list], uids: Sequence[str],
                     positive_radius_mm: float) -> dict[str, dict[str, float]]:
    """Per dome band (and "all"): aneurysms, the fraction with a candidate (LPS mm, ``candidates[uid]`` (K, 3))
    within dome radius + 2 mm, and within ``positive_radius_mm`` (what the fine model is trained to call positive)."""
    rows: dict[str, list[tuple[bool, bool]]] = {}
    for uid in uids:
        for dome in domes.get(uid, []):
            rows.setdefault(band_of(dome.dome_mm), []).append(
                (found_by(candidates[uid], dome), nearest_mm(candidates[uid], dome) <= positive_radius_mm))
    out = {}
    groups = [(name, rows[name]) for name, _, _ in DOME_BANDS if name in rows]
    every = [r for v in rows.values() for r in v]
    for name, hits in [*groups, *([("all", every)] if every else [])]:
        arr = np.asarray(hits)
        out[name] = {"aneurysms": len(arr), "within_radius_2mm": float(arr[:, 0].mean()),
                     "within_positive_radius": float(arr[:, 1].mean())}
    return out
