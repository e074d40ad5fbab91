"""Head pose and acquisition geometry: which planes, pixel sizes, slice thicknesses and counts each protocol uses, and
the render grids (native, shading, coarse) the implicit scene is sampled on.

All grids are the acquisition grid itself or an integer subsampling of it, so a surface evaluated on them needs no
resampling between frames: voxel (k, r, c) of the native stack is ``origin + uk[k] normal + ur[r] col + uc[c] row``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FLIP = np.diag([-1.0, -1.0, 1.0])  # RAS head frame <-> LPS patient frame


def rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rodrigues rotation matrix about a unit ``axis``."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * (k @ k)


@dataclass
class Pose:
    """Head frame (RAS mm, MNI-like) -> patient LPS mm: a similarity transform."""

    scale: float
    rot: np.ndarray  # (3, 3)
    trans: np.ndarray  # (3,) LPS mm
    angles_deg: tuple[float, float, float]  # pitch, yaw, roll

    @property
    def matrix(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = FLIP @ (self.scale * self.rot)
        m[:3, 3] = self.trans
        return m

    def to_lps(self, p: np.ndarray) -> np.ndarray:
        """Head-frame points (N, 3) or (3,) -> LPS."""
        p = np.asarray(p, float)
        return p @ (FLIP @ (self.scale * self.rot)).T + self.trans

    def to_head(self, q: np.ndarray) -> np.ndarray:
        """LPS points -> head frame."""
        q = np.asarray(q, float)
        return ((q - self.trans) @ FLIP) @ self.rot / self.scale

    def centre_midline(self, midline_point: np.ndarray, offset: float) -> None:
        """Shift along LPS x so that a head-frame point of the midline lands at LPS x = ``offset``."""
        self.trans[0] += offset - self.to_lps(midline_point)[0]

    def dir_to_lps(self, d: np.ndarray) -> np.ndarray:
        return np.asarray(d, float) @ (FLIP @ self.rot).T


def draw_pose(rng: np.random.Generator) -> Pose:
    """Random head pose: nodding up to +-15 deg, yaw and roll up to +-4 deg, global scale 0.9-1.1.

    The translation puts the head's midsagittal plane at LPS x = 0 near the anterior cerebral arteries (within
    0.3 mm; re-centred on the actual A2 pair once the tree exists), as a centred head in a head coil is, so that
    a patient-left structure keeps LPS x > 0.
    """
    pitch, yaw, roll = rng.uniform(-15, 15), rng.uniform(-4, 4), rng.uniform(-4, 4)
    rot = (
        rotation(np.array([0.0, 0.0, 1.0]), np.radians(yaw))
        @ rotation(np.array([0.0, 1.0, 0.0]), np.radians(roll))
        @ rotation(np.array([1.0, 0.0, 0.0]), np.radians(pitch))
    )
    scale = float(rng.uniform(0.9, 1.1))
    pose = Pose(scale, rot, np.zeros(3), (float(pitch), float(yaw), float(roll)))
    pose.trans = np.array([0.0, rng.uniform(-25, 25), rng.uniform(-40, 40)])
    pose.centre_midline(np.array([0.0, 28.0, 0.0]), float(rng.uniform(-0.3, 0.3)))
    return pose


@dataclass
class Acquisition:
    """The native stack's geometry plus what the image formation needs to know about the sequence."""

    modality: str
    plane: str
    tilt_deg: float
    three_d: bool
    row_dir: np.ndarray
    col_dir: np.ndarray
    pixel: tuple[float, float]  # (between rows, between columns)
    slice_spacing: float
    thickness: float
    n_slices: int
    n_rows: int
    n_cols: int
    origin: np.ndarray
    n_sub: int = 1  # sub-slices per slice (partial volume across thick 2D slices)
    variant: str = ""  # e.g. "se" / "gre" for T1post
    slabs: list[tuple[float, float]] = field(default_factory=list)  # TOF slabs, mm along the normal from origin
    phase_axis: int = 1  # 1 rows / 2 columns: the in-plane phase-encode axis of the image array

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    @property
    def basis(self) -> np.ndarray:
        """Columns: normal, col_dir, row_dir (grid axes k, r, c)."""
        return np.stack([self.normal, self.col_dir, self.row_dir], axis=1)

    def sub_offsets(self) -> np.ndarray:
        """Positions of the sub-slices inside one slice, mm along the normal from the slice centre."""
        if self.n_sub == 1:
            return np.zeros(1)
        return self.thickness * ((np.arange(self.n_sub) + 0.5) / self.n_sub - 0.5)

    def render_axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positions (mm from origin) of the render grid along normal (with sub-slices), col_dir and row_dir."""
        uk = (np.arange(self.n_slices)[:, None] * self.slice_spacing + self.sub_offsets()[None, :]).ravel()
        return uk, np.arange(self.n_rows) * self.pixel[0], np.arange(self.n_cols) * self.pixel[1]

    def voxel_h(self) -> tuple[float, float, float]:
        """Box-filter widths of one render sample along (normal, col, row)."""
        hk = self.thickness / self.n_sub if self.n_sub > 1 else max(self.thickness, self.slice_spacing)
        return float(hk), float(self.pixel[0]), float(self.pixel[1])

    def to_grid(self, p_lps: np.ndarray) -> np.ndarray:
        """LPS points -> (uk, ur, uc) mm along the grid axes from the origin."""
        return (np.asarray(p_lps, float) - self.origin) @ self.basis


PLANES = {
    "axial": (np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])),
    "coronal": (np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0])),
    "sagittal": (np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])),
}
# Head-frame segment each plane's slices should cover by default (whole head), as (start, end) points.
COVER = {
    "axial": (np.array([0.0, -15.0, -75.0]), np.array([0.0, -15.0, 90.0])),
    "coronal": (np.array([0.0, -110.0, -10.0]), np.array([0.0, 75.0, -10.0])),
    "sagittal": (np.array([-72.0, -15.0, 0.0]), np.array([72.0, -15.0, 0.0])),
}


def _round16(x: float) -> int:
    return int(16 * round(x / 16))


@dataclass
class Recipe:
    """One protocol variant's draws: plane, tilt, voxel size, slice count bounds, coverage."""

    plane: str
    three_d: bool
    pixel: float
    n_inplane: int
    spacing: float
    thickness: float
    n_range: tuple[int, int]
    cover: tuple[np.ndarray, np.ndarray]
    tilt_max: float
    variant: str = ""


def _inplane(rng: np.random.Generator, size: str, pixel_real: tuple[float, float], n_real: tuple[int, int],
             fov: tuple[float, float]) -> tuple[float, int]:
    """Pixel size and matrix: real-scan pixels for "real", 1.2-2.5 mm and 96-160 pixels for "small"."""
    if size == "small":
        pixel = float(rng.uniform(1.25, 2.2))
        return pixel, int(np.clip(round(rng.uniform(*fov) / pixel), 96, 160))
    pixel = float(rng.uniform(*pixel_real))
    return pixel, int(np.clip(_round16(rng.uniform(*fov) / pixel), *n_real))


def _recipe(rng: np.random.Generator, modality: str, size: str) -> Recipe:
    small = size == "small"
    if modality == "CTA":
        pixel, n = _inplane(rng, size, (0.39, 0.49), (512, 512), (200, 250))
        sp = float(rng.uniform(1.2, 2.5) if small else rng.choice([0.5, 0.625, 0.75, 0.8, 1.0]))
        top, bottom = rng.uniform(55, 100), rng.uniform(-115, -60)
        cover = (np.array([0.0, -15.0, bottom]), np.array([0.0, -15.0, top]))
        n_range = (24, 120) if small else (200, 420)
        return Recipe("axial", True, pixel, n, sp, sp * float(rng.uniform(1.0, 1.3)), n_range, cover, 12.0)
    if modality == "MRA":
        pixel, n = _inplane(rng, size, (0.29, 0.5), (384, 640), (160, 220))
        sp = float(rng.uniform(1.2, 1.7) if small else rng.uniform(0.5, 1.0))
        bottom = rng.uniform(-70, -40)
        cover = (np.array([0.0, -15.0, bottom]), np.array([0.0, -15.0, bottom + rng.uniform(70, 140)]))
        n_range = (40, 110) if small else (120, 200)
        return Recipe("axial", True, pixel, n, sp, sp * float(rng.uniform(1.0, 1.8)), n_range, cover, 15.0)
    two_d = rng.random() < (0.7 if modality == "MRI T2" else 0.6)
    if two_d:
        if modality == "MRI T2":
            plane, thick, gap = "axial", rng.uniform(4.0, 6.0), rng.uniform(0.0, 1.5) * (rng.random() < 0.6)
        else:
            plane = str(rng.choice(["axial", "coronal", "sagittal"], p=[0.5, 0.25, 0.25]))
            thick, gap = rng.uniform(4.0, 5.0), rng.uniform(0.0, 1.0) * (rng.random() < 0.6)
        pixel, n = _inplane(rng, size, (0.4, 0.9), (256, 512), (200, 240))
        return Recipe(plane, False, pixel, n, float(thick + gap), float(thick), (24, 40), COVER[plane], 20.0,
                      "se" if modality == "MRI T1post" else "fse")
    plane = str(rng.choice(["axial", "sagittal"])) if modality == "MRI T2" else "sagittal"
    pixel, n = _inplane(rng, size, (0.8, 1.0), (208, 304), (210, 250))
    sp = float(rng.uniform(1.2, 2.0) if small else rng.uniform(0.8, 1.0))
    return Recipe(plane, True, pixel, n, sp, sp, (60, 120) if small else (140, 200), COVER[plane], 10.0,
                  "gre" if modality == "MRI T1post" else "space")


def _frame(rng: np.random.Generator, plane: str, tilt_max: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Row/column directions of a plane, tilted about an in-plane axis (mostly the row axis: AC-PC style)."""
    row, col = PLANES[plane]
    tilt = 0.0 if rng.random() < 0.35 else float(rng.uniform(1.0, tilt_max))
    axis = row if rng.random() < 0.7 else col
    axis = axis + rng.normal(0, 0.15, 3) * np.cross(row, col)  # a little out of the plane's main axes
    axis = axis - (axis @ np.cross(row, col)) * np.cross(row, col)
    rot = rotation(axis, np.radians(tilt) * rng.choice([-1.0, 1.0]))
    row, col = rot @ row, rot @ col
    col = col - (col @ row) * row
    return row / np.linalg.norm(row), col / np.linalg.norm(col), tilt


def _fit(lo: float, hi: float, need: tuple[float, float] | None, step: float, n_range: tuple[int, int]):
    """Number of samples and start position covering [lo, hi], shifted (or grown) to contain ``need``."""
    if need is not None:
        lo, hi = min(lo, need[0]), max(hi, need[1]) if hi - lo < need[1] - need[0] else hi
    n = int(np.clip(round((hi - lo) / step) + 1, *n_range))
    length = (n - 1) * step
    centre = 0.5 * (lo + hi)
    if need is not None:
        centre = float(np.clip(centre, need[1] - 0.5 * length, need[0] + 0.5 * length))
        if need[1] - need[0] > length:
            centre = 0.5 * (need[0] + need[1])
    return n, centre - 0.5 * length


def draw_acquisition(rng: np.random.Generator, modality: str, size: str, pose: Pose,
                     must_cover_lps: list[np.ndarray], margin_mm: float = 6.0) -> Acquisition:
    """Draw the protocol's native stack and place it on the head so every aneurysm centre lies inside."""
    rec = _recipe(rng, modality, size)
    row, col, tilt = _frame(rng, rec.plane, rec.tilt_max)
    normal = np.cross(row, col)
    pts = np.array(must_cover_lps).reshape(-1, 3)
    a, b = pose.to_lps(rec.cover[0]) @ normal, pose.to_lps(rec.cover[1]) @ normal
    need = None
    if len(pts):
        proj = pts @ normal
        need = (float(proj.min() - margin_mm), float(proj.max() + margin_mm))
    n_sl, start = _fit(min(a, b), max(a, b), need, rec.spacing, rec.n_range)
    centre = pose.to_lps(np.array([0.0, -15.0, 0.0])) + rng.uniform(-8, 8, 3)
    fov = (rec.n_inplane - 1) * rec.pixel
    offsets = []
    for axis in (row, col):
        c = centre @ axis
        if len(pts):
            proj = pts @ axis
            c = float(np.clip(c, proj.max() + margin_mm - 0.5 * fov, proj.min() - margin_mm + 0.5 * fov))
        offsets.append(c - 0.5 * fov)
    origin = offsets[0] * row + offsets[1] * col + start * normal
    acq = Acquisition(modality, rec.plane, tilt, rec.three_d, row, col, (rec.pixel, rec.pixel), rec.spacing,
                      rec.thickness, n_sl, rec.n_inplane, rec.n_inplane, origin, 1 if rec.three_d else 3, rec.variant)
    acq.phase_axis = int(rng.choice([1, 2]))
    if modality == "MRA":
        acq.slabs = _slabs(rng, n_sl * rec.spacing)
    return acq


def _slabs(rng: np.random.Generator, length: float) -> list[tuple[float, float]]:
    """Overlapping 3D slabs of a multi-slab TOF, mm along the normal (1-4 slabs, 10-25 % overlap)."""
    n = int(rng.integers(1, 5))
    overlap = rng.uniform(0.1, 0.25)
    width = length / (n - (n - 1) * overlap)
    starts = [i * width * (1 - overlap) for i in range(n)]
    return [(float(s), float(s + width)) for s in starts]


@dataclass
class Grids:
    """Native render grid F (with sub-slices), shading grid S = F[::a], coarse grid C = S[::g]; axes in mm."""

    f_axes: tuple[np.ndarray, np.ndarray, np.ndarray]
    a: tuple[int, int, int]
    g: tuple[int, int, int]

    @staticmethod
    def _sub(axis: np.ndarray, f: int) -> np.ndarray:
        if f == 1:
            return axis
        n = int(np.ceil((len(axis) - 1) / f)) + 1
        return axis[0] + np.arange(n) * f * (axis[1] - axis[0])

    @property
    def s_axes(self) -> tuple[np.ndarray, ...]:
        return tuple(self._sub(ax, f) for ax, f in zip(self.f_axes, self.a, strict=True))

    coarse_k: float = 0.0  # > 0: the coarse grid's own uniform slice axis (mm step), for 2D sub-sliced stacks

    @property
    def c_axes(self) -> tuple[np.ndarray, ...]:
        axes = [self._sub(ax, f) for ax, f in zip(self.s_axes, self.g, strict=True)]
        if self.coarse_k > 0:
            uk = self.f_axes[0]
            n = int(np.ceil((uk[-1] - uk[0]) / self.coarse_k)) + 1
            axes[0] = uk[0] + np.arange(n) * ((uk[-1] - uk[0]) / max(n - 1, 1))
        return tuple(axes)

    @property
    def f_shape(self) -> tuple[int, int, int]:
        return tuple(len(ax) for ax in self.f_axes)


def make_grids(rng: np.random.Generator, acq: Acquisition, size: str) -> Grids:
    """Shading grid about 0.9-1.4 mm for real-size scans (the native grid for small ones); coarse grid ~2.5 mm."""
    f_axes = acq.render_axes()
    steps = (acq.slice_spacing, acq.pixel[0], acq.pixel[1])
    target = 0.0 if size == "small" else rng.uniform(0.9, 1.4)
    a = tuple(max(1, int(round(target / s))) for s in steps)
    if acq.n_sub > 1:
        a = (1, a[1], a[2])
    coarse = 3.6 if size == "small" else 2.6  # field grid: sulci need about 4 samples per fold
    g = tuple(max(1, int(round(coarse / (s * f)))) for s, f in zip(steps, a, strict=True))
    grids = Grids(f_axes, a, g)
    if acq.n_sub > 1:
        grids.g = (1, g[1], g[2])
        grids.coarse_k = coarse
    return grids


def head_coords(acq: Acquisition, pose: Pose, axes: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Head-frame x, y, z (float32, full 3D) of the grid points on ``axes`` (positions along normal, col, row)."""
    lin = np.linalg.inv(pose.matrix[:3, :3])
    o_h = lin @ (acq.origin - pose.trans)
    vecs = [lin @ v for v in (acq.normal, acq.col_dir, acq.row_dir)]
    out = []
    for i in range(3):
        uk = (axes[0] * vecs[0][i]).astype(np.float32)[:, None, None]
        ur = (axes[1] * vecs[1][i]).astype(np.float32)[None, :, None]
        uc = (axes[2] * vecs[2][i] + o_h[i]).astype(np.float32)[None, None, :]
        out.append((uk + ur) + uc)
    return tuple(out)
