"""Frames and acquisition geometry of the labelmap style.

Four frames: canonical anatomy ``q`` (RAS mm at scale 1, where the anatomy tables live), head ``h = scale * q`` (RAS
mm of this patient), DICOM patient ``p`` (LPS mm, ``p = R @ diag(-1, -1, 1) @ h + t``) and the acquisition frame ``u``
(mm along normal, col_dir, row_dir from the stack origin; voxel (k, r, c) sits at ``u = (k, r, c) * spacing``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])

# Standard display orientation per plane: (row_dir, col_dir) in LPS.
PLANE_DIRS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}
PLANE_NORMALS: dict[str, np.ndarray] = {k: np.cross(*map(np.asarray, v)) for k, v in PLANE_DIRS.items()}

# Canonical points that bound the head (for fields of view) and the brain centre.
HEAD_CENTRE_Q = np.array([0.0, -12.0, -5.0])
HEAD_BOX_Q = np.array([[-80.0, -112.0, -125.0], [80.0, 100.0, 95.0]])
BRAIN_BOX_Q = np.array([[-78.0, -112.0, -82.0], [78.0, 80.0, 92.0]])
COW_CENTRE_Q = np.array([0.0, -2.0, -25.0])


def rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rodrigues rotation matrix about ``axis``."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * (k @ k)


def euler(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Head rotation in LPS: yaw about z, pitch about x (nodding), roll about y."""
    return (
        rotation(np.array([0, 0, 1.0]), np.radians(yaw_deg))
        @ rotation(np.array([1.0, 0, 0]), np.radians(pitch_deg))
        @ rotation(np.array([0, 1.0, 0]), np.radians(roll_deg))
    )


@dataclass
class Pose:
    """Patient scale and head pose: canonical q -> head h -> LPS p."""

    scale: np.ndarray  # (3,) anatomy scale per axis
    rot: np.ndarray  # (3, 3) rotation in LPS
    shift: np.ndarray  # (3,) LPS mm

    @property
    def head_to_lps(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = self.rot @ RAS_TO_LPS
        m[:3, 3] = self.shift
        return m

    def h_to_lps(self, h: np.ndarray) -> np.ndarray:
        return np.asarray(h) @ (self.rot @ RAS_TO_LPS).T + self.shift

    def q_to_lps(self, q: np.ndarray) -> np.ndarray:
        return self.h_to_lps(np.asarray(q) * self.scale)


def draw_scale(rng: np.random.Generator) -> np.ndarray:
    """Patient size: global scale 0.9-1.1 with small per-axis changes."""
    return rng.uniform(0.9, 1.1) * rng.uniform(0.97, 1.03, size=3)


def draw_pose(rng: np.random.Generator, scale: np.ndarray, sided: list[tuple[np.ndarray, float]] | None = None
              ) -> Pose:
    """Head rotated and shifted in the scanner; the midsagittal plane stays near LPS x = 0 at the Circle of Willis
    (patients lie centred left-right). ``sided``: (head-mm point, +1 patient right / -1 left) pairs that must keep
    their side in LPS too; poses are redrawn (gentler each time) until they do."""
    for attempt in range(10):
        shrink = (1.0, 1.0, 1.0, 0.7, 0.5, 0.35, 0.2, 0.1, 0.05, 0.0)[attempt]
        rot = euler(shrink * rng.normal(0, 4), shrink * rng.normal(0, 7), shrink * rng.normal(0, 3))
        cow = rot @ RAS_TO_LPS @ (COW_CENTRE_Q * scale)
        shift = np.array([-cow[0] + shrink * rng.normal(0, 1.0), rng.normal(0, 8), rng.normal(0, 10)])
        pose = Pose(scale=scale, rot=rot, shift=shift)
        if not sided or all(-sign * pose.h_to_lps(h)[0] > 0.5 for h, sign in sided):
            return pose
    return pose


@dataclass
class Acquisition:
    """The native stack: shape, spacing, directions, slice profile and the protocol variant."""

    shape: tuple[int, int, int]  # (slices, rows, columns)
    spacing: np.ndarray  # (3,) mm: slice spacing, row-to-row, column-to-column
    thickness: float  # nominal slice thickness, mm
    axes: np.ndarray  # (3, 3) rows: normal, col_dir, row_dir (LPS unit vectors)
    origin: np.ndarray  # (3,) LPS of voxel (0, 0, 0)
    plane: str
    tilt_deg: float
    three_d: bool
    psf_sigma: np.ndarray  # (3,) Gaussian PSF sigma (mm) per axis
    slab_width: float  # flat-top width of the slice profile, mm (0 for 3D)
    variant: str  # protocol variant: "cta", "tof", "t2-2d", "t2-3d", "t1-2d-se", "t1-3d-gre"
    slabs: list[tuple[int, int]] = field(default_factory=list)  # TOF slabs as (first, last + 1) slice
    noise_grain: float = 1.0  # noise is drawn on a grid this many pixels coarse (acquired matrix vs display)
    keep: tuple[float, float] = (1.0, 1.0)  # MR: fraction of the acquired k-space kept per in-plane axis (ringing)
    kspace_window: float = 0.0  # MR: strength of the reconstruction filter taper (0: plain truncation)
    size: str = "real"  # the contract's size: "small" or "real"

    def sinc_cutoff(self) -> tuple[float, float] | None:
        """MR in-plane k-space cutoff (cycles/mm) per axis, None for CT."""
        if self.variant == "cta":
            return None
        return tuple(k / (2.0 * self.noise_grain * self.spacing[1 + i]) for i, k in enumerate(self.keep))

    def lps_to_u(self, p: np.ndarray) -> np.ndarray:
        return (np.asarray(p) - self.origin) @ self.axes.T

    def u_to_lps(self, u: np.ndarray) -> np.ndarray:
        return np.asarray(u) @ self.axes + self.origin

    @property
    def extent(self) -> np.ndarray:
        return (np.asarray(self.shape) - 1) * self.spacing


def _matrix(fov: float, pixel: float, lo: int, hi: int, step: int) -> tuple[int, float]:
    n = int(np.clip(round(fov / pixel / step) * step, lo, hi))
    return n, float(pixel)


def draw_protocol(rng: np.random.Generator, modality: str, size: str) -> dict:
    """Geometry numbers of one series (spec: acquisition geometry table), before it is placed on the head."""
    small = size == "small"
    if modality == "CTA":
        variant, three_d, plane = "cta", True, "axial"
    elif modality == "MRA":
        variant, three_d, plane = "tof", True, "axial"
    elif modality == "MRI T2":
        three_d = rng.random() < 0.45
        variant = "t2-3d" if three_d else "t2-2d"
        plane = ("axial" if rng.random() < 0.65 else "sagittal") if three_d else rng.choice(["axial"] * 6 + ["coronal"])
    elif modality == "MRI T1post":
        three_d = rng.random() < 0.45
        variant = "t1-3d-gre" if three_d else "t1-2d-se"
        plane = ("sagittal" if rng.random() < 0.75 else "axial") if three_d else str(
            rng.choice(["axial", "axial", "coronal", "sagittal"]))
    else:
        raise ValueError(f"unknown modality {modality!r}")
    g = _draw_numbers(rng, variant, small)
    g.update(variant=variant, three_d=bool(three_d), plane=str(plane), size=size)
    return g


def _draw_numbers(rng: np.random.Generator, variant: str, small: bool) -> dict:
    """Pixel, matrix, slice spacing/thickness and slice count for a variant; small runs keep 1.2-2.5 mm voxels."""
    fov = rng.uniform(200, 240) if variant != "tof" else rng.uniform(180, 220)
    if small:
        pixel = rng.uniform(1.2, 2.5) if variant != "tof" else rng.uniform(1.2, 2.0)
        n_px, pixel = _matrix(fov, pixel, 96, 160, 8)
    elif variant == "cta":
        n_px, pixel = 512, rng.uniform(0.39, 0.49)
    elif variant == "tof":
        n_px, pixel = _matrix(fov, rng.uniform(0.29, 0.5), 384, 640, 32)
    elif variant in ("t2-2d",):
        n_px, pixel = _matrix(fov, rng.uniform(0.4, 0.55), 384, 512, 32)
    elif variant == "t1-2d-se":
        n_px, pixel = _matrix(fov, rng.uniform(0.45, 0.9), 256, 512, 32)
    elif variant == "t1-3d-gre":
        pixel = rng.uniform(0.9, 1.0) if rng.random() < 0.7 else rng.uniform(0.45, 0.55)
        n_px, pixel = _matrix(fov, pixel, 224, 512, 16)
    else:  # t2-3d
        n_px, pixel = _matrix(fov, rng.uniform(0.45, 1.0), 224, 512, 16)
    thin = (1.2, 2.5) if small else {"cta": (0.5, 1.0), "tof": (0.5, 1.0)}.get(variant, (0.8, 1.0))
    if variant.endswith("2d") or variant.endswith("-se"):
        thickness = rng.uniform(4.0, 6.0) if variant.startswith("t2") else rng.uniform(4.0, 5.0)
        spacing = thickness + rng.choice([0.0, rng.uniform(0.2, 1.5)])
        coverage = rng.uniform(130, 175)
        n_sl = int(np.clip(round(coverage / spacing), 24, 42))
    else:
        spacing = rng.uniform(*thin)
        thickness = spacing * (rng.uniform(1.0, 1.6) if variant in ("cta", "tof") else 1.0)
        if variant == "tof":
            coverage = rng.uniform(70, 115) if small else rng.uniform(70, 125)
            lo, hi = (35, 90) if small else (120, 200)
        elif variant == "cta":
            coverage, (lo, hi) = rng.uniform(150, 200), ((60, 120) if small else (200, 280))
        else:
            coverage, (lo, hi) = rng.uniform(150, 190), ((60, 120) if small else (128, 192))
        n_sl = int(np.clip(round(coverage / spacing), lo, hi))
    return {"pixel": float(pixel), "n_px": int(n_px), "spacing": float(spacing), "thickness": float(thickness),
            "n_slices": n_sl}


def _oblique_axes(rng: np.random.Generator, plane: str, variant: str, pose: Pose) -> tuple[np.ndarray, float]:
    """Slice directions: the standard plane, partly aligned to the head (MR planning), tilted (CT gantry, MR oblique).

    Returns the (3, 3) axes (normal, col_dir, row_dir) and the tilt angle from the standard plane in degrees.
    """
    row, col = (np.asarray(v, float) for v in PLANE_DIRS[plane])
    if variant == "cta":
        follow = 0.0
        extra = rotation(row, np.radians(rng.uniform(3, 20))) if rng.random() < 0.3 else np.eye(3)
    else:
        follow = rng.uniform(0.3, 1.0)
        axis = rng.normal(size=3)
        limit = 18.0 if not variant.endswith("3d") and variant != "tof" else 8.0
        extra = rotation(axis, np.radians(rng.uniform(0, limit)))
    partial = _fractional_rotation(pose.rot, follow)
    rot = extra @ partial
    row, col = rot @ row, rot @ col
    normal = np.cross(row, col)
    tilt = float(np.degrees(np.arccos(np.clip(abs(normal @ PLANE_NORMALS[plane]), -1, 1))))
    return np.stack([normal, col, row]), tilt


def _fractional_rotation(rot: np.ndarray, frac: float) -> np.ndarray:
    """``rot`` raised to the power ``frac`` (same axis, a fraction of the angle)."""
    angle = np.arccos(np.clip((np.trace(rot) - 1) / 2, -1, 1))
    if angle < 1e-9 or frac == 0:
        return np.eye(3)
    axis = np.array([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0], rot[1, 0] - rot[0, 1]])
    return rotation(axis, frac * angle)


def _window(rng: np.random.Generator, length: float, region: tuple[float, float], must: tuple[float, float]) -> float:
    """Start of a 1D window of ``length`` inside ``region`` (when it fits) that contains the interval ``must``."""
    lo = max(must[1] - length, region[0] if length <= region[1] - region[0] else region[1] - length)
    hi = min(must[0], region[1] - length if length <= region[1] - region[0] else region[0])
    if lo > hi:
        lo = hi = 0.5 * (must[0] + must[1]) - 0.5 * length
    return float(rng.uniform(lo, hi))


def place_acquisition(rng: np.random.Generator, proto: dict, pose: Pose, targets_lps: np.ndarray) -> Acquisition:
    """Put the stack on the head: axes, origin and slab position so that every target point is inside with a margin."""
    variant = proto["variant"]
    axes, tilt = _oblique_axes(rng, proto["plane"], variant, pose)
    spacing = np.array([proto["spacing"], proto["pixel"], proto["pixel"]])
    shape = (proto["n_slices"], proto["n_px"], proto["n_px"])
    length = (np.asarray(shape) - 1) * spacing
    box = HEAD_BOX_Q if variant == "cta" else BRAIN_BOX_Q
    corners = np.array([[box[i, 0], box[j, 1], box[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    head_u = pose.q_to_lps(corners) @ axes.T
    cow_u = pose.q_to_lps(COW_CENTRE_Q) @ axes.T
    tgt_u = np.asarray(targets_lps).reshape(-1, 3) @ axes.T
    tgt_u = np.vstack([tgt_u, cow_u[None]])
    margin = np.array([6.0, 12.0, 12.0]) + np.array([0.5 * proto["thickness"], 0, 0])
    start = np.zeros(3)
    for a in range(3):
        region = (head_u[:, a].min(), head_u[:, a].max())
        if variant == "tof" and a == 0:
            region = (cow_u[0] - 45.0 - rng.uniform(0, 25), cow_u[0] + 45.0 + rng.uniform(0, 40))
        elif variant == "cta" and a == 0 and proto["plane"] == "axial":
            region = (region[0] + 5.0, region[1] - rng.uniform(0, 15))
        elif a > 0:
            c = 0.5 * (region[0] + region[1]) + rng.normal(0, 6)
            region = (c - 0.5 * length[a] - 1, c + 0.5 * length[a] + 1)
        must = (tgt_u[:, a].min() - margin[a], tgt_u[:, a].max() + margin[a])
        start[a] = _window(rng, length[a], region, must)
    origin = start @ axes
    psf = _psf(rng, proto)
    slabs = _tof_slabs(rng, shape[0]) if variant == "tof" else []
    grain = 1.0  # display pixels per acquired pixel (CT: noise grain of the kernel; MR: zero-filled matrix)
    if proto["pixel"] < 1.0:
        grain = rng.uniform(1.3, 2.4) if variant == "cta" else rng.uniform(1.35, 2.0)
    elif proto["pixel"] < 1.2:
        grain = rng.uniform(1.0, 1.3)
    return Acquisition(shape=shape, spacing=spacing, thickness=proto["thickness"], axes=axes, origin=origin,
                       plane=proto["plane"], tilt_deg=tilt, three_d=proto["three_d"], psf_sigma=psf,
                       slab_width=0.0 if proto["three_d"] else 0.85 * proto["thickness"], variant=variant,
                       slabs=slabs, noise_grain=float(grain),
                       keep=(float(rng.uniform(0.7, 1.0)), float(rng.uniform(0.7, 1.0))),
                       kspace_window=float(rng.choice([0.0, rng.uniform(0.2, 0.9)])), size=proto["size"])


def _psf(rng: np.random.Generator, proto: dict) -> np.ndarray:
    """Gaussian PSF sigma per axis: recon kernel / acquired resolution in plane, slice profile along the normal."""
    px = proto["pixel"]
    if proto["variant"] == "cta":
        inplane = max(rng.uniform(0.5, 0.95) / 2.355, 0.35 * px)
    else:  # MR: sharp here, the k-space truncation later gives the sinc
        inplane = rng.uniform(0.25, 0.4) * px
    if proto["three_d"]:
        along = proto["thickness"] / 2.355
    else:
        along = 0.08 * proto["thickness"] + 0.2  # edge roll-off of a 2D slice profile
    return np.array([along, inplane, inplane])


def _tof_slabs(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    """Overlapping 3D slabs of a multi-slab TOF (1-4 slabs, 10-25% overlap)."""
    count = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.25, 0.3, 0.15])) if n >= 40 else 1
    if count == 1:
        return [(0, n)]
    overlap = rng.uniform(0.1, 0.25)
    width = n / (count - (count - 1) * overlap)
    step = width * (1 - overlap)
    return [(int(round(i * step)), min(n, int(round(i * step + width)))) for i in range(count)]
