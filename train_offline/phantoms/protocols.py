"""Acquisition protocols: geometry, tissue values, noise and encoding of CTA, TOF-MRA, MRI T2 and MRI T1post.

Numbers follow the phantom spec (docs/reference/phantoms.md; full size) or a scaled-down version for tests (small size:
96-160 px, about 1.2-2.5 mm, 24-120 slices). The ``real`` size (``REAL_TABLE``) keeps real voxel sizes where they matter
for small domes (CTA and TOF under 0.7 mm in-plane and 0.9 mm slices, 3D MR about 1 mm, 2D MR 4-6 mm slices with
0.45-0.9 mm pixels) with fewer pixels than ``full``, and renders its smooth background on a coarse grid
(``REAL_SMOOTH_MM``). Every draw comes from the series' own generator, so a series is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from train_offline.phantoms.anatomy import Anatomy
from train_offline.phantoms.render import Grid, Tissue
from train_offline.phantoms.styles.contract import stack_affine

# Share of each protocol in the competition's train.csv (1804 / 1252 / 982 / 310 series).
MODALITY_SHARES: dict[str, float] = {"CTA": 0.415, "MRA": 0.288, "MRI T2": 0.226, "MRI T1post": 0.071}
SIZES = ("small", "full", "real")

PLANES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1, 0, 0), (0, 1, 0)),
    "coronal": ((1, 0, 0), (0, 0, -1)),
    "sagittal": ((0, 1, 0), (0, 0, -1)),
}
COW_CENTRE_RAS = np.array([0.0, -5.0, -24.0])  # Circle-of-Willis region
HEAD_CENTRE_RAS = np.array([0.0, -12.0, -8.0])
REAL_SMOOTH_MM = 1.5  # ``real``: smooth background on an in-plane grid of at most 1.5 mm, upsampled
REAL_HEAD_CENTRE_RAS = np.array([0.0, -12.0, 8.0])  # whole-head coverage: below the skull base to the vertex

# ``real`` size: ranges drawn per series (mm; the pixel is an upper bound, see ``_matrix_for``). Every 3D protocol
# resolves a 3 mm dome with at least 3 voxels along each axis; 2D T2/T1post keep thick slices with real pixels.
REAL_TABLE: dict[str, dict[str, tuple[float, float]]] = {
    "CTA": {"fov": (200, 230), "pixel": (0.58, 0.7), "slice": (0.7, 0.9), "coverage": (170, 190), "n": (180, 280)},
    "MRA": {"fov": (160, 190), "pixel": (0.38, 0.5), "slice": (0.55, 0.8), "coverage": (55, 80), "n": (70, 150)},
    "MRI T2 3D": {"fov": (220, 245), "pixel": (0.9, 0.96), "slice": (0.85, 1.0), "coverage": (150, 180),
                  "n": (150, 210)},
    "MRI T2 2D": {"fov": (200, 240), "pixel": (0.45, 0.9), "slice": (4.0, 6.0), "coverage": (130, 170),
                  "n": (24, 40)},
    "MRI T1post 3D": {"fov": (230, 250), "pixel": (0.9, 0.98), "slice": (0.85, 1.0), "coverage": (170, 200),
                      "n": (170, 240)},  # sagittal: the slab spans the head from ear to ear
    "MRI T1post 2D": {"fov": (200, 250), "pixel": (0.45, 0.9), "slice": (4.0, 5.5), "coverage": (120, 170),
                      "n": (24, 40)},
}


@dataclass
class Acquisition:
    """Geometry and encoding of one series."""

    modality_name: str  # competition name: CTA, MRA, MRI T2, MRI T1post
    plane: str
    row_dir: np.ndarray  # LPS unit vector along a row (increasing column)
    col_dir: np.ndarray  # LPS unit vector down a column (increasing row)
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    slice_spacing: float
    slice_thickness: float
    shape: tuple[int, int, int]  # (Z, Y, X)
    origin: np.ndarray  # LPS of voxel (0, 0, 0)
    n_sub: int
    tilt_deg: float
    three_d: bool
    smooth_mm: float | None = None  # render.Grid.smooth_mm (``real`` size)

    @property
    def dicom_modality(self) -> str:
        return "CT" if self.modality_name == "CTA" else "MR"

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    @property
    def affine(self) -> np.ndarray:
        """4x4 (z, y, x, 1) -> LPS of the native stack (slices ascending along the normal)."""
        return stack_affine(self.row_dir, self.col_dir, self.pixel_spacing, self.slice_spacing, self.origin)

    @property
    def grid(self) -> Grid:
        return Grid(self.shape, self.affine, self.n_sub, self.smooth_mm)


def sample_modality(rng: np.random.Generator) -> str:
    names = list(MODALITY_SHARES)
    p = np.array([MODALITY_SHARES[k] for k in names])
    return str(names[int(rng.choice(len(names), p=p / p.sum()))])


def _directions(plane: str, tilt_deg: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    row, col = (np.asarray(v, dtype=float) for v in PLANES[plane])
    if tilt_deg:
        t = np.deg2rad(tilt_deg)
        normal = np.cross(row, col)
        if rng.random() < 0.5:  # tilt about the row direction
            col = np.cos(t) * col + np.sin(t) * normal
        else:  # or about the column direction
            row = np.cos(t) * row + np.sin(t) * normal
    return row / np.linalg.norm(row), col / np.linalg.norm(col)


def _pick(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _matrix_for(rng: np.random.Generator, fov: tuple[float, float], pixel: tuple[float, float],
                step: int) -> tuple[int, float]:
    """(matrix, field of view): a pixel drawn in ``pixel`` (mm), the matrix rounded up to a multiple of ``step`` (at
    most 512), so the pixel actually used (fov / matrix) is never coarser than the one drawn."""
    width = _pick(rng, *fov)
    matrix = min(int(np.ceil(width / _pick(rng, *pixel) / step)) * step, 512)
    return matrix, width


# 3D angiography of the ``real`` size: (share of tilted series, largest tilt in degrees, field-of-view centre):
# CTA with gantry tilt around the whole head, TOF as an oblique slab around the Circle of Willis.
_REAL_TILT = {"CTA": (0.15, 12, REAL_HEAD_CENTRE_RAS), "MRA": (0.3, 15, COW_CENTRE_RAS)}


def _real_geometry(rng: np.random.Generator, modality: str) -> tuple:
    """(plane, tilt, three_d, matrix, fov, dz, coverage, n_range, centre_ras) of the ``real`` size (REAL_TABLE)."""
    plane, tilt, three_d = "axial", 0.0, True
    if modality in _REAL_TILT:
        g = REAL_TABLE[modality]
        matrix, fov = _matrix_for(rng, g["fov"], g["pixel"], 16)
        dz, coverage = _pick(rng, *g["slice"]), _pick(rng, *g["coverage"])
        share, max_deg, centre = _REAL_TILT[modality]
        if rng.random() < share:
            tilt = _pick(rng, -max_deg, max_deg)
        return plane, tilt, three_d, matrix, fov, dz, coverage, g["n"], centre
    if modality not in ("MRI T2", "MRI T1post"):
        raise ValueError(f"unknown modality {modality!r}")
    t1 = modality == "MRI T1post"
    three_d = rng.random() < (0.35 if t1 else 0.3)
    g = REAL_TABLE[f"{modality} {'3D' if three_d else '2D'}"]
    matrix, fov = _matrix_for(rng, g["fov"], g["pixel"], 16 if three_d else 32)
    dz, coverage = _pick(rng, *g["slice"]), _pick(rng, *g["coverage"])
    if three_d:
        plane = "sagittal" if t1 else "axial"
    elif t1:
        plane = str(rng.choice(["axial", "coronal", "sagittal"], p=[0.5, 0.3, 0.2]))
    if t1 and rng.random() < 0.35:
        tilt = _pick(rng, -20, 20)
    return plane, tilt, three_d, matrix, fov, dz, coverage, g["n"], REAL_HEAD_CENTRE_RAS


def sample_acquisition(rng: np.random.Generator, modality: str, anatomy: Anatomy, size: str) -> Acquisition:
    """Geometry of one series of ``modality``; the field of view always contains every aneurysm."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if size == "real":
        plane, tilt, three_d, matrix, fov, dz, coverage, n_range, centre_ras = _real_geometry(rng, modality)
    else:
        plane, tilt, three_d, matrix, fov, dz, coverage, n_range, centre_ras = _table_geometry(rng, modality,
                                                                                               size == "small")
    row_dir, col_dir = _directions(plane, tilt, rng)
    normal = np.cross(row_dir, col_dir)
    ps = fov / matrix
    rows = matrix if rng.random() < 0.8 else int(matrix * rng.choice([0.75, 0.875]) // 8 * 8)
    if size == "real" and modality != "MRA":
        rows = matrix  # whole head: a shorter field of view along the rows would cut it (TOF: a slab, it may)
    cols = matrix
    n = int(np.clip(round(coverage / dz), *n_range))
    centre = anatomy.head_to_lps[:3, :3] @ centre_ras + anatomy.head_to_lps[:3, 3]
    centre = centre + rng.normal(0, 4.0, 3)
    centre, n = _fit_field_of_view(centre, list(anatomy.fov_points), row_dir, col_dir, normal, rows, cols, n, ps, dz)
    origin = centre - (cols - 1) / 2 * ps * row_dir - (rows - 1) / 2 * ps * col_dir - (n - 1) / 2 * dz * normal
    thickness = dz if three_d else dz * float(rng.choice([1.0, 0.9, 0.8]))
    if size == "real":  # sub-planes ~max(pixel, 0.75 mm) apart: thick slices keep in-plane edges near the pixel
        n_sub = int(np.clip(round(thickness / max(ps, 0.75)), 1, 8)) if thickness > 1.5 * ps else 1
    else:
        n_sub = int(np.clip(round(thickness / max(ps, 1.0)), 1, 5)) if thickness > 1.5 * ps else 1
    return Acquisition(
        modality_name=modality, plane=plane, row_dir=row_dir, col_dir=col_dir, pixel_spacing=(ps, ps),
        slice_spacing=dz, slice_thickness=thickness, shape=(n, rows, cols), origin=origin, n_sub=n_sub,
        tilt_deg=tilt, three_d=three_d, smooth_mm=REAL_SMOOTH_MM if size == "real" else None,
    )


def _fit_field_of_view(centre: np.ndarray, targets: list[np.ndarray], row_dir: np.ndarray, col_dir: np.ndarray,
                       normal: np.ndarray, rows: int, cols: int, n: int, ps: float,
                       dz: float) -> tuple[np.ndarray, int]:
    """(centre, slices) keeping every target (aneurysms; negatives: decoy sites) plus a margin inside the field of
    view: the centre shifts, the slab grows if needed."""
    axes = [(row_dir, cols * ps), (col_dir, rows * ps), (normal, n * dz)]
    for axis_i, (direction, extent) in enumerate(axes):
        if not targets:
            break
        w = np.array([float(np.dot(t - centre, direction)) for t in targets])
        margin = 12.0 + 1.5 * (dz if axis_i == 2 else ps)
        half = extent / 2 - margin
        if axis_i == 2 and (w.max() - w.min()) / 2 > half:
            n = int(np.ceil((w.max() - w.min() + 2 * margin) / dz)) + 1
            half = n * dz / 2 - margin
        lo, hi = w.max() - half, w.min() + half
        shift = float(np.clip(0.0, lo, hi)) if lo <= hi else float((w.max() + w.min()) / 2)
        centre = centre + shift * direction
    return centre, n


def _table_geometry(rng: np.random.Generator, modality: str, small: bool) -> tuple:
    """(plane, tilt, 3D, matrix, field of view, slice step, coverage, slice-count range, centre RAS) of the
    ``small`` and ``full`` sizes (the spec's table, scaled down for ``small``)."""
    plane, tilt, three_d = "axial", 0.0, True
    if modality == "CTA":
        matrix = int(rng.choice([112, 128, 144, 160])) if small else 512
        fov = _pick(rng, 190, 240) if small else _pick(rng, 0.39, 0.49) * 512
        dz = _pick(rng, 1.25, 2.5) if small else _pick(rng, 0.5, 1.0)
        coverage = _pick(rng, 140, 220)
        n_range = (40, 120) if small else (200, 600)
        centre_ras = HEAD_CENTRE_RAS
        if rng.random() < 0.15:
            tilt = _pick(rng, -12, 12)  # gantry tilt
    elif modality == "MRA":
        matrix = int(rng.choice([96, 112, 128, 144])) if small else int(rng.choice([384, 448, 512]))
        fov = _pick(rng, 150, 210) if small else _pick(rng, 0.29, 0.5) * matrix
        fov = max(fov, 150.0)
        dz = _pick(rng, 1.0, 2.0) if small else _pick(rng, 0.5, 1.0)
        coverage = _pick(rng, 70, 110) if small else _pick(rng, 60, 160)
        n_range = (40, 100) if small else (120, 200)
        centre_ras = COW_CENTRE_RAS
        if rng.random() < 0.3:
            tilt = _pick(rng, -15, 15)  # oblique slab
    elif modality == "MRI T2":
        matrix = int(rng.choice([96, 112, 128])) if small else int(rng.choice([384, 448, 512]))
        fov = _pick(rng, 200, 240)
        three_d = rng.random() < 0.3
        if three_d:
            dz = _pick(rng, 1.5, 2.0) if small else _pick(rng, 0.9, 1.1)
            n_range = (60, 120) if small else (130, 180)
        else:
            dz = _pick(rng, 4.0, 6.0)
            n_range = (24, 40)
        coverage = _pick(rng, 130, 170)
        centre_ras = HEAD_CENTRE_RAS
    elif modality == "MRI T1post":
        three_d = rng.random() < 0.35
        matrix = int(rng.choice([96, 112, 128])) if small else (256 if three_d else int(rng.choice([256, 384, 512])))
        fov = _pick(rng, 200, 250)
        if three_d:
            plane = "sagittal"
            dz = _pick(rng, 1.5, 2.0) if small else _pick(rng, 0.9, 1.1)
            n_range = (60, 120) if small else (140, 190)
            coverage = _pick(rng, 130, 180)
        else:
            plane = str(rng.choice(["axial", "coronal", "sagittal"], p=[0.5, 0.3, 0.2]))
            dz = _pick(rng, 4.0, 5.5)
            n_range = (24, 40)
            coverage = _pick(rng, 120, 170)
        if rng.random() < 0.35:
            tilt = _pick(rng, -20, 20)
        centre_ras = HEAD_CENTRE_RAS
    else:
        raise ValueError(f"unknown modality {modality!r}")
    return plane, tilt, three_d, matrix, fov, dz, coverage, n_range, centre_ras


def sample_tissue(rng: np.random.Generator, modality: str, three_d: bool) -> tuple[Tissue, float, bool, float]:
    """(tissue values, noise sigma, rician, bias-field strength) for one series."""
    u = rng.uniform
    if modality == "CTA":
        venous = u(150, 300) if rng.random() < 0.75 else u(80, 150)
        t = Tissue(air=-1000.0, fat=u(-150, -50), soft=u(35, 60), bone=u(900, 1800), csf=u(0, 15), grey=u(37, 45),
                   white=u(20, 30), artery=u(280, 520), vein=venous, texture=u(0.02, 0.08))
        return t, u(13, 20), False, 0.0
    if modality == "MRA":
        vein = u(0.2, 0.5) if rng.random() < 0.85 else u(1.5, 2.5)
        t = Tissue(air=0.0, fat=u(2.0, 3.0), soft=u(0.5, 0.9), bone=0.05, csf=u(0.3, 0.5), grey=0.95, white=1.05,
                   artery=u(3.0, 6.0), vein=vein, flow_power=u(0.8, 1.8), sac_factor=u(0.6, 1.0), texture=u(0.03, 0.1))
        return t, 1.0 / u(20, 50), True, u(0.05, 0.25)
    if modality == "MRI T2":
        vein = u(0.05, 0.15) if rng.random() < 0.7 else u(0.6, 0.9)
        t = Tissue(air=0.0, fat=u(0.6, 0.8), soft=u(0.3, 0.4), bone=0.02, csf=1.0, grey=u(0.5, 0.6),
                   white=u(0.35, 0.45), artery=u(0.04, 0.15), vein=vein, texture=u(0.03, 0.1))
        return t, 1.0 / u(20, 50), True, u(0.05, 0.2)
    if modality == "MRI T1post":
        artery = u(1.5, 2.5) if three_d else u(0.05, 0.2)  # 3D GRE bright, 2D spin echo flow void
        t = Tissue(air=0.0, fat=u(1.3, 1.5), soft=u(0.6, 0.8), bone=0.05, csf=u(0.25, 0.35), grey=u(0.75, 0.85),
                   white=1.0, artery=artery, vein=u(1.5, 2.2), texture=u(0.03, 0.1))
        return t, 1.0 / u(20, 50), True, u(0.05, 0.2)
    raise ValueError(f"unknown modality {modality!r}")
