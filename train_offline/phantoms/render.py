"""Render a phantom head on an acquisition grid: tissue background, partial-volume vessels, noise.

A grid is a native stack: voxel (z, y, x) -> LPS through a 4x4 affine, the same convention as ``kernel.dicom_io``.
Thick slices are rendered as the mean of ``n_sub`` sub-planes across the slice, so partial volume along the slice
normal is real; in-plane partial volume is analytic (occupancy = clip(0.5 - signed distance / h, 0, 1)). Local
structures (vessel chunks, skull-base ellipsoids) are rendered only inside their own bounding box in index space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from train_offline.phantoms.anatomy import KIND_ANEURYSM, KIND_ARTERY, KIND_VEIN, Anatomy

BRAIN_CENTRE = np.array([0.0, -17.0, 5.0])
BRAIN_AXES = np.array([72.0, 90.0, 77.0])
SLAB = 8  # slices per background block


@dataclass
class Grid:
    """A native stack: ``shape`` (Z, Y, X), ``affine`` (z, y, x, 1) -> LPS, ``n_sub`` sub-planes per slice."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    n_sub: int = 1
    smooth_mm: float | None = None  # coarsest in-plane step of smooth fields (None: the small/full rule)

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def h(self) -> float:
        """Edge width (mm) for analytic partial volume: the in-plane pixel size, or the sub-plane step if larger."""
        sz, sy, sx = self.spacing
        return float(max(np.sqrt(sy * sx), min(sz / self.n_sub, 3.0 * np.sqrt(sy * sx))))

    def sub_offsets(self) -> np.ndarray:
        """Slice-index offsets of the sub-planes averaged into one slice."""
        return (np.arange(self.n_sub) + 0.5) / self.n_sub - 0.5


@dataclass
class Tissue:
    """Tissue values of one series in the protocol's units (HU for CT; arbitrary linear units for MR)."""

    air: float
    fat: float
    soft: float
    bone: float
    csf: float
    grey: float
    white: float
    artery: float
    vein: float
    flow_power: float = 0.0  # artery value *= flow ** flow_power (TOF inflow fading)
    sac_factor: float = 1.0  # extra factor for aneurysm sacs (TOF: lower in large sacs)
    texture: float = 0.04


def _world_block(grid: Grid, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int, sub: float) -> np.ndarray:
    """LPS coordinates (3, nz, ny, nx) float32 of a block of voxel centres, shifted ``sub`` slices along z."""
    a = grid.affine
    kz = (np.arange(z0, z1, dtype=np.float64) + sub)[:, None, None]
    ky = np.arange(y0, y1, dtype=np.float64)[None, :, None]
    kx = np.arange(x0, x1, dtype=np.float64)[None, None, :]
    out = np.empty((3, z1 - z0, y1 - y0, x1 - x0), dtype=np.float32)
    for c in range(3):
        out[c] = (a[c, 0] * kz + a[c, 3]) + a[c, 1] * ky + a[c, 2] * kx
    return out


def _to_head(anatomy: Anatomy, world: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(anatomy.head_to_lps).astype(np.float32)
    out = np.empty_like(world)
    for c in range(3):
        out[c] = inv[c, 0] * world[0] + inv[c, 1] * world[1] + inv[c, 2] * world[2] + inv[c, 3]
    return out


def _ellipsoid_sd(p: np.ndarray, centre: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Approximate signed distance (mm, negative inside) to an axis-aligned ellipsoid; p is (3, ...)."""
    q0 = (p[0] - np.float32(centre[0])) / np.float32(axes[0])
    q1 = (p[1] - np.float32(centre[1])) / np.float32(axes[1])
    q2 = (p[2] - np.float32(centre[2])) / np.float32(axes[2])
    r = np.sqrt(q0 * q0 + q1 * q1 + q2 * q2)
    g = np.sqrt((q0 / np.float32(axes[0])) ** 2 + (q1 / np.float32(axes[1])) ** 2 + (q2 / np.float32(axes[2])) ** 2)
    return (r - 1.0) * r / np.maximum(g, np.float32(1e-6))


def _mix(v: np.ndarray, value: float, frac: np.ndarray) -> None:
    """In place: v = v * (1 - frac) + value * frac."""
    v += frac * (np.float32(value) - v)


def _inside(sd: np.ndarray, h: float) -> np.ndarray:
    return np.clip(0.5 - sd / np.float32(h), 0.0, 1.0)


# Local structures in the head frame: (name, centre, semi-axes, tissue); painted in this order over the layers.
LOCAL_STRUCTURES: list[tuple[str, tuple, tuple, str]] = [
    ("petrous_r", (27, -15, -48), (16, 9, 7), "bone"),
    ("petrous_l", (-27, -15, -48), (16, 9, 7), "bone"),
    ("clivus", (0, -8, -46), (6, 5, 13), "bone"),
    ("sphenoid_wall", (0, 13, -38), (10, 10, 8), "bone"),
    ("sphenoid_air", (0, 13, -38), (8.5, 8.5, 6.5), "air"),
    ("orbit_r", (33, 52, -28), (14, 18, 13), "fat"),
    ("orbit_l", (-33, 52, -28), (14, 18, 13), "fat"),
    ("globe_r", (33, 60, -26), (11, 11, 11), "csf"),
    ("globe_l", (-33, 60, -26), (11, 11, 11), "csf"),
    ("ventricle_r", (7, -8, 12), (5, 24, 9), "csf"),
    ("ventricle_l", (-7, -8, 12), (5, 24, 9), "csf"),
    ("spine", (0, -32, -95), (11, 11, 35), "bone"),
]


def _index_bbox(grid: Grid, lo: np.ndarray, hi: np.ndarray) -> tuple[int, int, int, int, int, int] | None:
    """Voxel index box (z0, z1, y0, y1, x0, x1) covering an LPS box; None when outside the grid."""
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    inv = np.linalg.inv(grid.affine)
    idx = corners @ inv[:3, :3].T + inv[:3, 3]
    lo_i = np.floor(idx.min(axis=0)).astype(int)
    hi_i = np.ceil(idx.max(axis=0)).astype(int) + 1
    lo_i = np.maximum(lo_i, 0)
    hi_i = np.minimum(hi_i, np.array(grid.shape))
    if np.any(hi_i <= lo_i):
        return None
    return int(lo_i[0]), int(hi_i[0]), int(lo_i[1]), int(hi_i[1]), int(lo_i[2]), int(hi_i[2])


def _head_block(grid: Grid, anatomy: Anatomy, z0: int, z1: int, ny: int, nx: int, sub: float) -> np.ndarray:
    """Head-frame coordinates (3, nz, ny, nx) float32 of whole slices z0:z1: index -> head in one affine."""
    m = np.linalg.inv(anatomy.head_to_lps) @ grid.affine
    kz = (np.arange(z0, z1, dtype=np.float64) + sub)[:, None, None]
    ky = np.arange(ny, dtype=np.float32)[None, :, None]
    kx = np.arange(nx, dtype=np.float32)[None, None, :]
    out = np.empty((3, z1 - z0, ny, nx), dtype=np.float32)
    for c in range(3):
        np.add((m[c, 0] * kz + m[c, 3]).astype(np.float32) + np.float32(m[c, 1]) * ky, np.float32(m[c, 2]) * kx,
               out=out[c])
    return out


def coarse_factor(grid: Grid) -> int:
    """In-plane subsampling of the smooth background on fine grids (vessels are always rendered at full size).

    The background step is at most 0.95 mm, or ``grid.smooth_mm`` when set (the ``real`` size: 1.5 mm)."""
    _, sy, sx = grid.spacing
    step = 0.95 if grid.smooth_mm is None else grid.smooth_mm
    return int(max(1, np.floor(step / max(min(sy, sx), 1e-3))))


def _upsample_linear(a: np.ndarray, cf: int, n: int, axis: int) -> np.ndarray:
    """Linear upsampling by ``cf`` along ``axis`` on the half-pixel-consistent grid of ``_coarse_grid``."""
    c = (np.arange(n) - (cf - 1) / 2) / cf
    i0 = np.clip(np.floor(c).astype(int), 0, a.shape[axis] - 2)
    w = np.clip(c - i0, 0.0, 1.0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = n
    w = w.reshape(shape)
    lo = np.take(a, i0, axis=axis)
    hi = np.take(a, i0 + 1, axis=axis)
    hi -= lo
    hi *= w
    lo += hi
    return lo


def _coarse_grid(grid: Grid, cf: int) -> Grid:
    nz, ny, nx = grid.shape
    aff = grid.affine.copy()
    aff[:3, 3] = aff[:3, 3] + (cf - 1) / 2 * (aff[:3, 1] + aff[:3, 2])
    aff[:3, 1] *= cf
    aff[:3, 2] *= cf
    return Grid((nz, max(2, -(-ny // cf) + 1), max(2, -(-nx // cf) + 1)), aff, grid.n_sub, grid.smooth_mm)


def render_background(grid: Grid, anatomy: Anatomy, tissue: Tissue, rng: np.random.Generator) -> np.ndarray:
    """Scalp, skull, CSF, grey/white matter, ventricles, skull base, orbits and neck; float32 (Z, Y, X).

    On fine grids (pixels under ~0.95 mm) the background is computed on a coarser in-plane grid and upsampled
    linearly: it is smooth, and this keeps a 512 x 512 x 400 CTA within its time budget.
    """
    cf = coarse_factor(grid)
    work = _coarse_grid(grid, cf) if cf > 1 else grid
    coarse = _render_background(work, anatomy, tissue, rng)
    if cf == 1:
        return coarse
    nz, ny, nx = grid.shape
    out = np.empty(grid.shape, dtype=np.float32)
    for z0 in range(0, nz, SLAB):
        z1 = min(z0 + SLAB, nz)
        out[z0:z1] = _upsample_linear(_upsample_linear(coarse[z0:z1], cf, ny, 1), cf, nx, 2)
    return out


def _render_background(grid: Grid, anatomy: Anatomy, tissue: Tissue, rng: np.random.Generator) -> np.ndarray:
    hp = anatomy.head_params
    h = grid.h
    nz, ny, nx = grid.shape
    out = np.zeros(grid.shape, dtype=np.float32)
    n_waves = 4
    waves = rng.normal(0, 1, (n_waves, 3)) / rng.uniform(5, 20, (n_waves, 1)) * 2.0
    phases = rng.uniform(0, 2 * np.pi, n_waves)
    t_csf = hp["csf_mm"]
    t_bone = t_csf + hp["skull_mm"]
    t_fat = t_bone + 0.5 * hp["scalp_mm"]
    t_out = t_bone + hp["scalp_mm"]
    inv_h = np.float32(1.0 / h)
    brain_axes = BRAIN_AXES * np.array([hp.get(f"brain_scale_{c}", 1.0) for c in "xyz"])
    # Texture: sum of plane waves, phase affine in the voxel index -> sin(A(z) + B(y, x)), separable per slice.
    m = np.linalg.inv(anatomy.head_to_lps) @ grid.affine
    coef = waves @ m[:3, :3]  # (n_waves, 3): phase per index step along z, y, x
    c0 = waves @ m[:3, 3] + phases
    b_yx = coef[:, 1, None, None] * np.arange(ny)[None, :, None] + coef[:, 2, None, None] * np.arange(nx)[None, None]
    sin_b, cos_b = np.sin(b_yx).astype(np.float32), np.cos(b_yx).astype(np.float32)
    del b_yx
    slab = max(1, min(SLAB, 262_144 // max(ny * nx, 1)))  # blocks that stay in cache
    for z0 in range(0, nz, slab):
        z1 = min(z0 + slab, nz)
        acc = np.zeros((z1 - z0, ny, nx), dtype=np.float32)
        for sub in grid.sub_offsets():
            p = _head_block(grid, anatomy, z0, z1, ny, nx, float(sub))
            d = _ellipsoid_sd(p, BRAIN_CENTRE, brain_axes)
            a_z = c0[:, None] + coef[:, 0, None] * (np.arange(z0, z1) + float(sub))[None, :]  # (n_waves, nz)
            sin_a, cos_a = np.sin(a_z).astype(np.float32), np.cos(a_z).astype(np.float32)
            tex = np.zeros(d.shape, dtype=np.float32)
            for w in range(n_waves):
                tex += sin_a[w, :, None, None] * cos_b[w] + cos_a[w, :, None, None] * sin_b[w]
            v = np.full(d.shape, tissue.white, dtype=np.float32)
            _mix(v, tissue.grey, np.clip(0.5 + (d + 3.5) * inv_h, 0, 1))
            v *= 1.0 + np.float32(tissue.texture / n_waves) * tex
            del tex
            _mix(v, tissue.csf, np.clip(0.5 + d * inv_h, 0, 1))
            _mix(v, tissue.bone, np.clip(0.5 + (d - t_csf) * inv_h, 0, 1))
            _mix(v, tissue.fat, np.clip(0.5 + (d - t_bone) * inv_h, 0, 1))
            _mix(v, tissue.soft, np.clip(0.5 + (d - t_fat) * inv_h, 0, 1))
            # Neck: an elliptic soft-tissue cylinder below the skull base; air outside head and neck.
            dn = np.sqrt((p[0] * np.float32(1 / 52.0)) ** 2 + ((p[1] + 12.0) * np.float32(1 / 55.0)) ** 2)
            dn = np.maximum(dn * 52.0 - 52.0, p[2] + 45.0)
            np.minimum(d - np.float32(t_out), dn, out=dn)
            _mix(v, tissue.air, np.clip(0.5 + dn * inv_h, 0, 1))
            acc += v
        out[z0:z1] = acc / np.float32(grid.n_sub)
    values = {"bone": tissue.bone, "air": tissue.air, "fat": tissue.fat, "csf": tissue.csf}
    for name, centre, axes, kind in LOCAL_STRUCTURES:
        axes_v = np.array(axes, dtype=float)
        if name.startswith("ventricle"):
            axes_v[0] *= hp["ventricle_scale"]
        _paint_ellipsoid(out, grid, anatomy, np.array(centre, dtype=float), axes_v, values[kind])
    return out


def _paint_ellipsoid(out: np.ndarray, grid: Grid, anatomy: Anatomy, centre: np.ndarray, axes: np.ndarray,
                     value: float) -> None:
    """Mix one head-frame ellipsoid of ``value`` into ``out`` with partial volume, inside its bounding box only."""
    r = float(axes.max()) * anatomy.scale + 2 * grid.h
    c_lps = anatomy.head_to_lps[:3, :3] @ centre + anatomy.head_to_lps[:3, 3]
    box = _index_bbox(grid, c_lps - r, c_lps + r)
    if box is None:
        return
    z0, z1, y0, y1, x0, x1 = box
    frac = np.zeros((z1 - z0, y1 - y0, x1 - x0), dtype=np.float32)
    for sub in grid.sub_offsets():
        p = _to_head(anatomy, _world_block(grid, z0, z1, y0, y1, x0, x1, float(sub)))
        frac += _inside(_ellipsoid_sd(p, centre, axes) * np.float32(anatomy.scale), grid.h)
    frac /= np.float32(grid.n_sub)
    _mix(out[z0:z1, y0:y1, x0:x1], value, frac)


def capsule_values(anatomy: Anatomy, tissue: Tissue) -> np.ndarray:
    """Intensity of each capsule in the protocol's units (artery, vein or aneurysm sac, with inflow fading)."""
    flow = anatomy.cap_flow ** tissue.flow_power
    vals = np.where(anatomy.cap_kind == KIND_VEIN, tissue.vein, tissue.artery * flow)
    sac = anatomy.cap_kind == KIND_ANEURYSM
    vals = np.where(sac, vals * tissue.sac_factor, vals)
    assert set(np.unique(anatomy.cap_kind)) <= {KIND_ARTERY, KIND_VEIN, KIND_ANEURYSM}, "unknown capsule kind"
    return vals.astype(np.float32)


def render_vessels(
    grid: Grid, anatomy: Anatomy, values: np.ndarray, with_labels: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Vessel occupancy (0-1), vessel value and optional seg label map, each (Z, Y, X).

    Capsules are rendered group by group (consecutive pieces of one vessel) inside the group's bounding box. A voxel
    is labelled when its centre is inside a vessel or, for vessels thinner than a voxel, when a centreline passes
    within half a sampling cell (every vessel stays connected in the label map); it takes the label of the vessel
    whose wall is nearest (smallest signed distance), so a voxel inside a large lumen keeps the large vessel's label.
    """
    occ = np.zeros(grid.shape, dtype=np.float32)
    val = np.zeros(grid.shape, dtype=np.float32)
    lab = np.zeros(grid.shape, dtype=np.uint8) if with_labels else None
    lab_sd = np.full(grid.shape, np.inf, dtype=np.float32) if with_labels else None
    h = grid.h
    sz, sy, sx = grid.spacing
    half_cell = np.float32(0.5 * np.sqrt(sy * sy + sx * sx + (sz / grid.n_sub) ** 2))
    groups = anatomy.cap_group
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.diff(groups[order])) + 1
    for idx in np.split(order, bounds):
        a, b = anatomy.cap_a[idx], anatomy.cap_b[idx]
        ra, rb = anatomy.cap_ra[idx], anatomy.cap_rb[idx]
        margin = float(max(ra.max(), rb.max())) + 1.5 * h
        box = _index_bbox(grid, np.minimum(a, b).min(axis=0) - margin, np.maximum(a, b).max(axis=0) + margin)
        if box is None:
            continue
        z0, z1, y0, y1, x0, x1 = box
        shape = (z1 - z0, y1 - y0, x1 - x0)
        block_occ = np.zeros(shape, dtype=np.float32)
        best_sd = np.full(shape, np.inf, dtype=np.float32)
        best_cap = np.zeros(shape, dtype=np.int32)
        if lab is not None:
            best_axis = np.full(shape, np.inf, dtype=np.float32)  # distance to the nearest centreline
        for sub in grid.sub_offsets():
            w = _world_block(grid, z0, z1, y0, y1, x0, x1, float(sub))
            sd_min = np.full(shape, np.inf, dtype=np.float32)
            arg = np.zeros(shape, dtype=np.int32)
            for j, c in enumerate(idx):
                sd, axis_d = _capsule_sd(w, a[j], b[j], ra[j], rb[j])
                better = sd < sd_min
                sd_min = np.where(better, sd, sd_min)
                arg[better] = c
                if lab is not None:
                    np.minimum(best_axis, axis_d, out=best_axis)
            block_occ += _inside(sd_min, h)
            upd = sd_min < best_sd
            best_sd[upd] = sd_min[upd]
            best_cap[upd] = arg[upd]
        block_occ /= np.float32(grid.n_sub)
        sub_occ = occ[z0:z1, y0:y1, x0:x1]
        upd = block_occ > sub_occ
        sub_occ[upd] = block_occ[upd]
        val[z0:z1, y0:y1, x0:x1][upd] = values[best_cap[upd]]
        if lab is not None and lab_sd is not None:
            sub_sd = lab_sd[z0:z1, y0:y1, x0:x1]
            near = (best_sd <= 0) | (best_axis <= half_cell)
            lab_upd = near & (best_sd < sub_sd)
            sub_sd[lab_upd] = best_sd[lab_upd]
            lab[z0:z1, y0:y1, x0:x1][lab_upd] = anatomy.cap_label[best_cap[lab_upd]]
    return occ, val, lab


def _capsule_sd(w: np.ndarray, a: np.ndarray, b: np.ndarray, ra: float, rb: float) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance (mm) of points ``w`` (3, ...) to a tapered capsule a-b with radii ra, rb, and their distance
    to its axis segment."""
    ab = (b - a).astype(np.float32)
    den = float(ab @ ab)
    p0 = w[0] - np.float32(a[0])
    p1 = w[1] - np.float32(a[1])
    p2 = w[2] - np.float32(a[2])
    if den < 1e-9:
        dist = np.sqrt(p0 * p0 + p1 * p1 + p2 * p2)
        return dist - np.float32(ra), dist
    t = np.clip((p0 * ab[0] + p1 * ab[1] + p2 * ab[2]) / np.float32(den), 0.0, 1.0)
    p0 -= t * ab[0]
    p1 -= t * ab[1]
    p2 -= t * ab[2]
    dist = np.sqrt(p0 * p0 + p1 * p1 + p2 * p2)
    return dist - (np.float32(ra) + t * np.float32(rb - ra)), dist


def compose(background: np.ndarray, occ: np.ndarray, val: np.ndarray) -> np.ndarray:
    """Blend vessels into the background (in place on ``background``) by their occupancy."""
    background += occ * (val - background)
    return background


NOISE_BANK_VOXELS = 8_000_000


def _noise(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Standard normal float32 noise; large volumes draw slices from a bank with random in-plane rolls (fast)."""
    nz, ny, nx = shape
    if nz * ny * nx <= NOISE_BANK_VOXELS:
        return rng.standard_normal(shape, dtype=np.float32)
    bank = rng.standard_normal((max(NOISE_BANK_VOXELS // (ny * nx), 8), ny, nx), dtype=np.float32)
    out = np.empty(shape, dtype=np.float32)
    picks = rng.integers(0, bank.shape[0], nz)
    shifts = rng.integers(0, (ny, nx), (nz, 2))
    for k in range(nz):
        out[k] = np.roll(bank[picks[k]], tuple(shifts[k]), axis=(0, 1))
    return out


def add_noise(image: np.ndarray, sigma: float, rng: np.random.Generator, rician: bool) -> np.ndarray:
    """Gaussian noise (CT) or Rician magnitude noise (MR), in place."""
    if sigma <= 0:
        return image
    n1 = _noise(image.shape, rng)
    n1 *= np.float32(sigma)
    image += n1
    del n1
    if not rician:
        return image
    n2 = _noise(image.shape, rng)
    n2 *= np.float32(sigma)
    np.multiply(image, image, out=image)
    np.multiply(n2, n2, out=n2)
    image += n2
    np.sqrt(image, out=image)
    return image


def bias_field(grid: Grid, anatomy: Anatomy, rng: np.random.Generator, strength: float) -> np.ndarray:
    """A smooth multiplicative MR coil-sensitivity field, 1 +- strength, evaluated slice by slice (Z, Y, X)."""
    nz, ny, nx = grid.shape
    k = rng.normal(0, 1, 3) / 120.0
    ph = float(rng.uniform(0, 2 * np.pi))
    if grid.smooth_mm is not None:
        return _bias_separable(grid, anatomy, k, ph, strength)
    out = np.empty(grid.shape, dtype=np.float32)
    for z0 in range(0, nz, SLAB):
        z1 = min(z0 + SLAB, nz)
        p = _to_head(anatomy, _world_block(grid, z0, z1, 0, ny, 0, nx, 0.0))
        out[z0:z1] = 1.0 + np.float32(strength) * np.sin(k[0] * p[0] + k[1] * p[1] + k[2] * p[2] + ph)
    return out


def _bias_separable(grid: Grid, anatomy: Anatomy, k: np.ndarray, ph: float, strength: float) -> np.ndarray:
    """The same field as ``bias_field``: its phase is affine in the voxel index, so sin(a(z) + b(y, x)) is evaluated
    as sin(a) cos(b) + cos(a) sin(b) slice by slice (no per-voxel coordinates)."""
    nz, ny, nx = grid.shape
    m = np.linalg.inv(anatomy.head_to_lps) @ grid.affine
    coef, c0 = k @ m[:3, :3], float(k @ m[:3, 3]) + ph  # phase per index step along z, y, x
    b_yx = coef[1] * np.arange(ny)[:, None] + coef[2] * np.arange(nx)[None, :]
    sin_b, cos_b = np.sin(b_yx).astype(np.float32), np.cos(b_yx).astype(np.float32)
    a_z = c0 + coef[0] * np.arange(nz)
    sin_a, cos_a = (np.float32(strength) * np.sin(a_z)).astype(np.float32), (
        np.float32(strength) * np.cos(a_z)).astype(np.float32)
    out = np.empty(grid.shape, dtype=np.float32)
    for z in range(nz):
        np.multiply(cos_b, sin_a[z], out=out[z])
        out[z] += sin_b * cos_a[z]
        out[z] += np.float32(1.0)
    return out


def render(grid: Grid, anatomy: Anatomy, tissue: Tissue, rng: np.random.Generator, *, noise_sigma: float,
           rician: bool, bias: float = 0.0, with_labels: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Full image (float32, protocol units) and optional vessel label map on ``grid``."""
    image = render_background(grid, anatomy, tissue, rng)
    occ, val, lab = render_vessels(grid, anatomy, capsule_values(anatomy, tissue), with_labels=with_labels)
    compose(image, occ, val)
    del occ, val
    if bias > 0:
        image *= bias_field(grid, anatomy, rng, bias)
    add_noise(image, noise_sigma, rng, rician)
    return image, lab
