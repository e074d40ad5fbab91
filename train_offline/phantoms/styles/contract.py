"""The contract between a phantom *style* (one renderer: anatomy, tissues, vessels, aneurysms, noise, geometry) and
the shared series writer (DICOM encoding, file quirks, CSVs, truth).

A style is a module with one public function::

    def render_series(rng: np.random.Generator, modality: str, locations: list[str], size: str, *,
                      dome_mm: float | None = None, with_labels: bool = False) -> StyleScan

- ``rng``: the series' own generator; every random draw comes from it, so a series is a pure function of it.
- ``modality``: a competition protocol name, one of ``kernel.labels.MODALITY_NAMES`` (CTA, MRA, MRI T2, MRI T1post).
- ``locations``: the aneurysms to place, one entry per aneurysm, each a ``kernel.labels.LOCATION_COLS`` name (the
  list may repeat a name and may be empty: a negative series).
- ``size``: ``"small"`` (tests and quick runs: roughly 1.2-2.5 mm voxels, 96-160 pixels a side, 24-120 slices, a
  fraction of a second to a few seconds) or ``"real"`` (voxels like real scans of the protocol; a few seconds).
- ``dome_mm``: when given, every aneurysm's dome diameter in patient mm (a small-dome supplement).
- ``with_labels``: also return the vessel label map (competition segmentation values, ``SEG_LABEL_VALUES``).

The writer then encodes ``image`` for the protocol (CT: int16 HU with RescaleIntercept; MR: rescaled to unsigned
12-bit, any absolute scale), applies the file quirks (shuffled names, multi-frame, compression, stripped tags) and
writes the localizer of each aneurysm on the native slice nearest its centre.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["StyleAneurysm", "StyleScan", "stack_affine"]


@dataclass
class StyleAneurysm:
    """One aneurysm as placed by the style."""

    location: str  # a kernel.labels.LOCATION_COLS name: the vessel it sits on, patient left/right
    centre_lps: np.ndarray  # (3,) centre of the dome, DICOM patient space (LPS) mm
    dome_mm: float  # dome diameter, patient mm
    neck_mm: float  # neck diameter, patient mm
    parent_lps: np.ndarray  # (3,) the point of the parent vessel's centreline the neck sits on, LPS mm
    bleb: bool = False  # a daughter bleb
    shape: str = "saccular"  # free text: saccular, lobulated, elongated, ...


@dataclass
class StyleScan:
    """One rendered series: the native stack in physical units, its geometry, and the truth.

    Geometry follows DICOM: slice k's ImagePositionPatient is ``origin + k * slice_spacing * normal`` with
    ``normal = cross(row_dir, col_dir)``; pixel (row r, column c) of a slice lies at ``position + c *
    pixel_spacing[1] * row_dir + r * pixel_spacing[0] * col_dir``. ``image[k, r, c]`` is that voxel.
    """

    image: np.ndarray  # float32 (Z, Y, X): CTA in HU; MR in any positive linear units
    row_dir: np.ndarray  # (3,) LPS unit vector along a row (increasing column index)
    col_dir: np.ndarray  # (3,) LPS unit vector down a column (increasing row index), orthogonal to row_dir
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    slice_spacing: float  # mm between slice centres along the normal
    slice_thickness: float  # nominal mm (the SliceThickness tag)
    origin: np.ndarray  # (3,) LPS mm of voxel (0, 0, 0)
    plane: str  # "axial", "coronal" or "sagittal": the nearest standard plane
    tilt_deg: float  # obliquity away from that plane
    three_d: bool  # a 3D acquisition (thin contiguous slices) rather than 2D thick slices
    aneurysms: list[StyleAneurysm]
    head_to_lps: np.ndarray  # (4, 4) the head pose: the style's own head frame (RAS mm) -> LPS mm
    labels_map: np.ndarray | None = None  # uint8 (Z, Y, X) segmentation values, when ``with_labels``
    truth: dict[str, Any] = field(default_factory=dict)  # style-specific facts (JSON-serialisable): variants, noise

    def __post_init__(self) -> None:
        assert self.image.ndim == 3 and self.image.dtype == np.float32, "image must be float32 (Z, Y, X)"
        assert np.all(np.isfinite(self.image)), "image must be finite"
        assert abs(float(np.dot(self.row_dir, self.col_dir))) < 1e-6, "row_dir and col_dir must be orthogonal"
        assert self.labels_map is None or self.labels_map.shape == self.image.shape, "labels_map must match image"

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel (z, y, x, 1) -> LPS mm of the native stack."""
        return stack_affine(self.row_dir, self.col_dir, self.pixel_spacing, self.slice_spacing, self.origin)


def stack_affine(row_dir: np.ndarray, col_dir: np.ndarray, pixel_spacing: tuple[float, float], slice_spacing: float,
                 origin: np.ndarray) -> np.ndarray:
    """4x4 voxel (z, y, x, 1) -> LPS mm of a stack of slices ascending along ``cross(row_dir, col_dir)``."""
    a = np.eye(4)
    a[:3, 0] = np.cross(row_dir, col_dir) * slice_spacing
    a[:3, 1] = np.asarray(col_dir) * pixel_spacing[0]
    a[:3, 2] = np.asarray(row_dir) * pixel_spacing[1]
    a[:3, 3] = origin
    return a
