"""Head pose and acquisition geometry per protocol (spec table): plane, obliquity, 2D thick slices or 3D, pixel
size, slice spacing and count, whole head or a TOF slab around the circle, for the "small" and "real" sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .raster import Lattice

_PLANES = {  # (row_dir, col_dir) in LPS: DICOM's usual orientation of each plane
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class Acquisition:
    """The native stack: shape (slices, rows, columns), spacing (slice, row, column) mm and orientation."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    thickness: float
    row_dir: np.ndarray
    col_dir: np.ndarray
    origin: np.ndarray
    plane: str
    tilt_deg: float
    three_d: bool

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    @property
    def axes(self) -> np.ndarray:
        return np.stack([self.normal, self.col_dir, self.row_dir])

    def lattice(self, head_to_lps: np.ndarray) -> Lattice:
        """The full-resolution lattice of this stack."""
        pos = [np.arange(n) * h for n, h in zip(self.shape, self.spacing, strict=True)]
        return Lattice(self.origin, self.axes, pos[0], pos[1], pos[2], head_to_lps)

    def sub_offsets(self, step: float = 1.0) -> tuple[float, ...]:
        """Positions (mm from the slice centre) sampling a thick slice's profile; (0,) for 3D."""
        if self.three_d:
            return (0.0,)
        n = max(2, int(np.ceil(self.thickness / step)))
        return tuple(float(v) for v in (np.arange(n) + 0.5) / n * self.thickness - 0.5 * self.thickness)


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation about z (yaw), x (pitch) and y (roll), degrees."""
    a, b, c = np.radians([yaw, pitch, roll])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
    return rz @ rx @ ry


def draw_pose(rng: np.random.Generator, centres_head: list[np.ndarray], sides: list[int]) -> np.ndarray:
    """Head frame -> LPS (4, 4): the RAS->LPS flip, a random rotation and translation. Redrawn until every
    lateralised aneurysm keeps its side (sign of LPS x: +1 patient left), so left/right labels stay true."""
    for attempt in range(40):
        shrink = 1.0 if attempt < 30 else 0.0
        m = np.eye(4)
        m[:3, :3] = rotation(*(shrink * rng.uniform(-1, 1, 3) * [8.0, 12.0, 8.0])) @ RAS_TO_LPS
        m[:3, 3] = [shrink * rng.uniform(-4, 4), rng.uniform(-25, 5), rng.uniform(-15, 25)]
        ok = all(s == 0 or s * (m[:3, :3] @ c + m[:3, 3])[0] > 1.0 for c, s in zip(centres_head, sides, strict=True))
        if ok:
            return m
    return m


def _layout(rng: np.random.Generator, modality: str, size: str) -> dict[str, object]:
    """Plane, 2D/3D, pixel size, matrix, slice spacing/thickness/count and coverage target for one series."""
    real = size == "real"
    if modality == "CTA":
        plane, three_d, target = "axial", True, "head"
    elif modality == "MRA":
        plane, three_d, target = "axial", True, "slab"
    elif modality == "MRI T2":
        three_d = bool(rng.random() < 0.4)
        plane, target = ("sagittal" if three_d and rng.random() < 0.3 else "axial"), "brain"
    else:
        three_d = bool(rng.random() < 0.4)
        plane = "sagittal" if three_d else str(rng.choice(["axial", "coronal", "sagittal"], p=[0.5, 0.25, 0.25]))
        target = "brain"
    fov = rng.uniform(200, 245) if target != "slab" else rng.uniform(165, 220)
    if real:
        px, n = _real_inplane(rng, modality, three_d, fov)
    else:
        px = rng.uniform(1.2, 2.5)
        n = int(np.clip(round(fov / px), 96, 160))
    cover = {"head": rng.uniform(170, 210), "slab": rng.uniform(60, 140), "brain": rng.uniform(135, 175)}[target]
    if plane != "axial":
        cover = rng.uniform(150, 175) if plane == "sagittal" else rng.uniform(170, 200)
    if three_d:
        dz, nz = _slices_3d(rng, modality, real, cover)
        thickness = dz * (rng.choice([1.0, 1.0, 1.25]) if modality == "CTA" else 1.0)
    else:
        thickness = rng.uniform(4.0, 6.0) if modality == "MRI T2" else rng.uniform(4.0, 5.0)
        dz = thickness + rng.uniform(0.0, 1.5)
        nz = int(np.clip(round(cover / dz), 20 if real else 24, 40))
    tilt = rng.uniform(0, 15) if modality != "CTA" else (rng.uniform(0, 12) if rng.random() < 0.3 else 0.0)
    if rng.random() < 0.35:
        tilt = 0.0
    return {"plane": plane, "three_d": three_d, "target": target, "px": float(px), "n": int(n), "dz": float(dz),
            "nz": int(nz), "thickness": float(thickness), "tilt": float(tilt)}


def _real_inplane(rng: np.random.Generator, modality: str, three_d: bool, fov: float) -> tuple[float, int]:
    """Real-scan pixel size and matrix: CTA 512 at 0.39-0.49 mm, TOF 0.29-0.5 mm, MR 0.4-1.0 mm."""
    if modality == "CTA":
        return rng.uniform(0.39, 0.49), 512
    if modality == "MRA":
        n = int(rng.choice([384, 448, 512]))
        return rng.uniform(max(0.29, 160.0 / n), 0.5), n
    n = int(rng.choice([256, 320, 384, 448, 512]) if not three_d else rng.choice([256, 320, 384]))
    return float(np.clip(fov / n, 0.4, 1.0)), n


def _slices_3d(rng: np.random.Generator, modality: str, real: bool, cover: float) -> tuple[float, int]:
    """Slice spacing and count of a 3D stack."""
    if not real:
        dz = rng.uniform(1.2, 2.5)
        return dz, int(np.clip(round(cover / dz), 24, 120))
    if modality == "CTA":
        dz = rng.uniform(0.5, 1.0)
        return dz, int(np.clip(round(cover / dz), 200, 300))
    if modality == "MRA":
        nz = int(rng.integers(120, 201))
        return rng.uniform(max(0.5, 60.0 / nz), min(1.0, 140.0 / nz)), nz
    dz = rng.uniform(0.8, 1.0)
    return dz, int(np.clip(round(cover / dz), 140, 192))


def _orientation(rng: np.random.Generator, plane: str, tilt: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column directions of the plane, tilted about a random in-plane axis."""
    row0, col0 = (np.array(v) for v in _PLANES[plane])
    phi = rng.uniform(0, 2 * np.pi)
    axis = np.cos(phi) * row0 + np.sin(phi) * col0
    t = np.radians(tilt)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    r = np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)
    row, col = r @ row0, r @ col0
    col -= row * float(row @ col)
    return row / np.linalg.norm(row), col / np.linalg.norm(col)


def draw_acquisition(rng: np.random.Generator, modality: str, size: str, head_to_lps: np.ndarray,
                     centres_head: list[np.ndarray]) -> Acquisition:
    """The native stack for the protocol, centred on the head (or the circle for TOF slabs) with a random offset,
    shifted where needed so every aneurysm lies inside with a margin."""
    lay = _layout(rng, modality, size)
    row, col = _orientation(rng, str(lay["plane"]), float(lay["tilt"]))
    normal = np.cross(row, col)
    axes = np.stack([normal, col, row])
    target = {"head": (0, -12, -12), "slab": (0, -6, -22 + rng.uniform(-6, 12)), "brain": (0, -15, 5)}[lay["target"]]
    centre = head_to_lps[:3, :3] @ np.array(target, dtype=float) + head_to_lps[:3, 3]
    shape = (int(lay["nz"]), int(lay["n"]), int(lay["n"]))
    spacing = (float(lay["dz"]), float(lay["px"]), float(lay["px"]))
    extent = np.array([(n - 1) * h for n, h in zip(shape, spacing, strict=True)])
    u_centre = axes @ centre + rng.uniform(-1, 1, 3) * np.array([6.0, 8.0, 8.0])
    if centres_head:
        u_an = np.array([axes @ (head_to_lps[:3, :3] @ c + head_to_lps[:3, 3]) for c in centres_head])
        margin = np.minimum(8.0, 0.25 * extent)
        lo_need, hi_need = u_an.min(axis=0) - margin, u_an.max(axis=0) + margin
        u_centre = np.clip(u_centre, hi_need - extent / 2, lo_need + extent / 2)
    origin = (u_centre - extent / 2) @ axes
    return Acquisition(shape, spacing, float(lay["thickness"]), row, col, origin, str(lay["plane"]),
                       float(lay["tilt"]), bool(lay["three_d"]))
