"""The reader's result types: a volume with its geometry, one image's plane in patient space, the native stack a fine
stage samples, and the error a series folder without a readable stack raises."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["FrameGeometry", "Native", "PatchSampler", "SeriesReadError", "Volume"]


class SeriesReadError(Exception):
    """A series folder holds no readable image stack. The message names the folder and the reason."""


@dataclass(frozen=True)
class FrameGeometry:
    """Where one 2D image lies in patient space (LPS mm)."""

    position: tuple[float, float, float]  # ImagePositionPatient: centre of the first transmitted pixel
    row_dir: tuple[float, float, float]  # direction of increasing column index (IOP[:3])
    col_dir: tuple[float, float, float]  # direction of increasing row index (IOP[3:])
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm

    def pixel_to_lps(self, col: float, row: float) -> np.ndarray:
        """LPS point of the (fractional) pixel centre at column ``col`` and row ``row``."""
        return (
            np.asarray(self.position)
            + col * self.pixel_spacing[1] * np.asarray(self.row_dir)
            + row * self.pixel_spacing[0] * np.asarray(self.col_dir)
        )


@dataclass
class Volume:
    """A 3-D image with its geometry. ``affine`` maps a voxel index (z, y, x, 1) to LPS millimetres."""

    array: np.ndarray
    affine: np.ndarray
    modality: str
    series_uid: str = ""
    slice_lookup: dict[tuple[str, int], int] = field(default_factory=dict)
    source_affine: np.ndarray | None = None
    source_shape: tuple[int, int, int] = (0, 0, 0)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    frame_geometry: dict[tuple[str, int], FrameGeometry] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # False when no image had a position/orientation (e.g. an Enhanced multi-frame file stripped of its functional
    # groups): the axes are then frame order and pixel grid, and superior/inferior is a guess.
    geometry_known: bool = True
    # The canonical stack before resampling (native spacing, raw intensities), when asked for
    # (``kernel.preprocess.canonicalise(keep_native=True)``): what a fine stage samples its patches from.
    native: Native | None = None
    # Identity of the kept images, from the headers already parsed (empty where the files do not carry them): what a
    # report about the series (``kernel.findings``) needs to point back at its study, frame of reference and images.
    study_uid: str = ""
    frame_of_reference_uid: str = ""
    sop_class_uids: dict[str, str] = field(default_factory=dict)  # SOPInstanceUID -> SOPClassUID of the kept images

    def __post_init__(self) -> None:
        assert self.array.ndim == 3, f"volume must be 3-D (Z, Y, X), got shape {self.array.shape}"
        assert self.affine.shape == (4, 4), f"affine must be 4x4, got {self.affine.shape}"
        assert self.modality in ("CT", "MR"), f"modality must be CT or MR, got {self.modality!r}"
        if self.source_affine is None:
            self.source_affine = self.affine.copy()
            self.source_shape = tuple(self.array.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (dz, dy, dx) in mm, from the affine's column norms."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


PatchSampler = Callable[[np.ndarray, Sequence[int], Sequence[float]], np.ndarray]
"""``sample(points_lps (n, 3), shape_zyx, spacing_zyx_mm) -> (n, z, y, x) float32`` patches centred on the points."""


def _identity(array: np.ndarray) -> np.ndarray:
    return array


@dataclass(frozen=True)
class Native:
    """The canonical stack at native spacing (raw intensities) that a fine stage samples its patches from.

    It is a sampler, not necessarily an array: an isolated read (``kernel.read_worker``) keeps the stack in its worker
    and samples the patches there, so a 400 x 512 x 512 stack is never copied between processes for a few small
    patches. ``array`` is set when the stack is in this process (``kernel.preprocess.native_stack``). ``normalise``
    is applied to each patch (the canonical volume's normalisation; identity until the ensemble sets it).
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    sample: PatchSampler
    normalise: Callable[[np.ndarray], np.ndarray] = _identity
    array: np.ndarray | None = None

