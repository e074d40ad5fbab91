"""A label grid aligned with the acquisition axes, and the few signed-distance shapes the anatomy is painted with.

The grid's voxels are addressed in the acquisition frame ``u`` (so partial volume later is separable), while the
anatomy is described in the canonical head frame ``q``; the canvas keeps the affine map between the two and the
canonical coordinates of every voxel. Shapes are painted inside their own bounding box only.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


class Canvas:
    """A uint8 label volume on an axis-aligned grid of the acquisition frame, with canonical coordinates per voxel."""

    def __init__(self, shape: tuple[int, int, int], start_u: np.ndarray, step: np.ndarray, q_to_u: np.ndarray,
                 u_offset: np.ndarray) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.start = np.asarray(start_u, float)
        self.step = np.asarray(step, float)
        self.q_to_u = np.asarray(q_to_u, float)  # u = q_to_u @ q + u_offset
        self.u_offset = np.asarray(u_offset, float)
        self.u_to_q = np.linalg.inv(self.q_to_u)
        # q = base + kmat @ j  for grid index j
        self.kmat = self.u_to_q * self.step[None, :]
        self.base = self.u_to_q @ (self.start - self.u_offset)
        self.labels = np.zeros(self.shape, np.uint8)
        axes = [np.arange(n, dtype=np.float32) for n in self.shape]
        k = self.kmat.astype(np.float32)
        self.q = []
        for i in range(3):
            q = np.full(self.shape, np.float32(self.base[i]), np.float32)
            q += k[i, 0] * axes[0][:, None, None]
            q += k[i, 1] * axes[1][None, :, None]
            q += k[i, 2] * axes[2][None, None, :]
            self.q.append(q)

    def q_bounds(self, pad: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
        """Canonical bounding box of the canvas (for sizing random fields)."""
        corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) * (np.asarray(self.shape) - 1)
        q = self.base[None, :] + corners @ self.kmat.T
        return q.min(axis=0) - pad, q.max(axis=0) + pad

    def index_of_q(self, q: np.ndarray) -> np.ndarray:
        """Fractional grid index of canonical points (..., 3)."""
        u = np.asarray(q, float) @ self.q_to_u.T + self.u_offset
        return (u - self.start) / self.step

    def box(self, lo_q: np.ndarray, hi_q: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Grid slices covering a canonical axis-aligned box, or None when it misses the grid."""
        lo_q, hi_q = np.asarray(lo_q, float), np.asarray(hi_q, float)
        corners = np.array([[(lo_q, hi_q)[i][0], (lo_q, hi_q)[j][1], (lo_q, hi_q)[k][2]] for i in (0, 1)
                            for j in (0, 1) for k in (0, 1)])
        idx = self.index_of_q(corners)
        lo = np.maximum(np.floor(idx.min(axis=0)).astype(int), 0)
        hi = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 1, self.shape)
        if np.any(hi <= lo):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))

    def xyz(self, sl: tuple[slice, slice, slice] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if sl is None:
            return self.q[0], self.q[1], self.q[2]
        return self.q[0][sl], self.q[1][sl], self.q[2][sl]

    def paint(self, label: int, sdf, lo_q, hi_q, only: np.ndarray | None = None, below: float = 0.0) -> None:
        """Set ``label`` where ``sdf(x, y, z) < below`` inside the box; ``only``: a bool lookup of labels allowed to
        change (None: any)."""
        sl = self.box(lo_q, hi_q)
        if sl is None:
            return
        d = sdf(*self.xyz(sl))
        m = d < below
        view = self.labels[sl]
        if only is not None:
            m &= only[view]
        view[m] = label

    def random_field(self, rng: np.random.Generator, corr_mm: float) -> np.ndarray:
        """A smooth unit-variance Gaussian random field over the whole canvas (correlation length ``corr_mm``):
        white noise on a grid of corr/2 spacing, smoothed, then upsampled with separable dense interpolation."""
        spacing = max(1.0, corr_mm / 2.0)
        n_c = [int(np.ceil(n * h / spacing)) + 4 for n, h in zip(self.shape, self.step, strict=True)]
        raw = rng.standard_normal(n_c).astype(np.float32)
        small = ndi.gaussian_filter(raw, corr_mm / spacing / 2.0, mode="wrap", truncate=3.0)
        small /= max(float(small.std()), 1e-6)
        mats = []
        for a in range(3):
            pos = 1.5 + np.arange(self.shape[a]) * self.step[a] / spacing
            j = np.floor(pos).astype(int)
            w = (pos - j).astype(np.float32)
            mat = np.zeros((self.shape[a], n_c[a]), np.float32)
            mat[np.arange(self.shape[a]), j] = 1.0 - w
            mat[np.arange(self.shape[a]), np.minimum(j + 1, n_c[a] - 1)] += w
            mats.append(mat)
        return _separable(small, mats)

    def coarse_eval(self, fn, factor: int) -> list[np.ndarray]:
        """``fn(x, y, z)`` -> list of smooth fields, evaluated on every ``factor``-th voxel and linearly interpolated
        (signed distances are smooth enough; 1/factor^3 of the cost)."""
        if factor <= 1:
            return [np.asarray(f, np.float32) for f in fn(*self.xyz())]
        idx = [np.unique(np.r_[np.arange(0, n, factor), n - 1]) for n in self.shape]
        subs = fn(*(q[np.ix_(*idx)] for q in self.q))
        mats = []
        for a in range(3):
            mat = np.zeros((self.shape[a], len(idx[a])), np.float32)
            pos = np.arange(self.shape[a])
            j = np.clip(np.searchsorted(idx[a], pos, side="right") - 1, 0, len(idx[a]) - 2)
            w = (pos - idx[a][j]) / (idx[a][j + 1] - idx[a][j])
            mat[pos, j] = 1.0 - w
            mat[pos, j + 1] += w
            mats.append(mat)
        return [_separable(np.asarray(sub, np.float32), mats) for sub in subs]

    def sample_field(self, field: SmoothField, sl: tuple[slice, slice, slice] | None = None) -> np.ndarray:
        """A canonical-frame smooth random field sampled (trilinear) on the grid or a sub-box of it."""
        start = np.zeros(3) if sl is None else np.array([s.start for s in sl], float)
        shape = self.shape if sl is None else tuple(s.stop - s.start for s in sl)
        mat = self.kmat / field.spacing
        offset = (self.base + self.kmat @ start - field.lo) / field.spacing
        return ndi.affine_transform(field.values, mat, offset=offset, output_shape=shape, order=1, mode="nearest",
                                    output=np.float32)


def _separable(vol: np.ndarray, mats: list[np.ndarray]) -> np.ndarray:
    """Apply one dense (n_out, n_in) matrix per axis with BLAS matmuls, no transposed copies."""
    s0, s1, s2 = vol.shape
    n0, n1, n2 = (m.shape[0] for m in mats)
    t = (vol.reshape(s0 * s1, s2) @ np.ascontiguousarray(mats[2].T)).reshape(s0, s1 * n2)  # last axis
    t = (mats[0] @ t).reshape(n0, s1, n2)  # first axis
    out = np.empty((n0, n1, n2), np.float32)
    for k in range(n0):  # middle axis, slice by slice
        np.matmul(mats[1], t[k], out=out[k])
    return out


class SmoothField:
    """A band-limited Gaussian random field on a coarse canonical grid (spacing corr/2), unit standard deviation."""

    def __init__(self, rng: np.random.Generator, corr_mm: float, lo=(-100.0, -135.0, -175.0),
                 hi=(100.0, 125.0, 115.0)) -> None:
        self.spacing = float(max(1.0, corr_mm / 2.0))
        self.lo = np.asarray(lo, float)
        shape = tuple(int(np.ceil((h - l) / self.spacing)) + 3 for l, h in zip(self.lo, hi, strict=True))
        raw = rng.standard_normal(shape).astype(np.float32)
        smooth = ndi.gaussian_filter(raw, corr_mm / self.spacing / 2.0, mode="wrap", truncate=3.0)
        self.values = (smooth / max(float(smooth.std()), 1e-6)).astype(np.float32)

    def at(self, q: np.ndarray) -> np.ndarray:
        """Values at canonical points (..., 3)."""
        idx = ((np.asarray(q, float) - self.lo) / self.spacing).reshape(-1, 3).T
        out = ndi.map_coordinates(self.values, idx, order=1, mode="nearest")
        return out.reshape(np.asarray(q).shape[:-1]).astype(np.float32)


# ---- signed-distance shapes (approximate, in canonical mm; negative inside) ----

def ellipsoid(c, axes, rot: np.ndarray | None = None):
    """Approximate SDF of an ellipsoid (first-order distance ``(f - 1) / |grad f|``), optionally rotated."""
    c = np.asarray(c, np.float32)
    inv = (1.0 / np.asarray(axes, np.float64)).astype(np.float32)
    inv2 = inv * inv

    def sdf(x, y, z):
        dx, dy, dz = x - c[0], y - c[1], z - c[2]
        if rot is not None:
            dx, dy, dz = (rot[0, 0] * dx + rot[0, 1] * dy + rot[0, 2] * dz,
                          rot[1, 0] * dx + rot[1, 1] * dy + rot[1, 2] * dz,
                          rot[2, 0] * dx + rot[2, 1] * dy + rot[2, 2] * dz)
        f2 = (dx * inv[0]) ** 2 + (dy * inv[1]) ** 2 + (dz * inv[2]) ** 2
        g2 = (dx * inv2[0]) ** 2 + (dy * inv2[1]) ** 2 + (dz * inv2[2]) ** 2
        f = np.sqrt(f2)
        # (f - 1) / |grad f| with |grad f| = sqrt(g2) / f
        return (f2 - f) / (np.sqrt(g2) + 1e-6)

    return sdf


def ellipsoid_box(c, axes, pad: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    r = float(np.max(axes)) + pad
    c = np.asarray(c, float)
    return c - r, c + r


def capsule(a, b, ra: float, rb: float | None = None):
    """SDF of a capsule with a linearly tapered radius from ``a`` to ``b``."""
    a = np.asarray(a, np.float32)
    ab = np.asarray(b, np.float32) - a
    ll = float(ab @ ab) + 1e-9
    rb = ra if rb is None else rb

    def sdf(x, y, z):
        px, py, pz = x - a[0], y - a[1], z - a[2]
        t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / ll, 0.0, 1.0)
        dx, dy, dz = px - t * ab[0], py - t * ab[1], pz - t * ab[2]
        return np.sqrt(dx * dx + dy * dy + dz * dz) - (ra + t * (rb - ra))

    return sdf


def capsule_box(a, b, r: float) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.minimum(a, b) - r, np.maximum(a, b) + r


def paint_chain(cv: Canvas, label: int, points: np.ndarray, radii, only: np.ndarray | None = None) -> None:
    """Paint a polyline of capsules (radius per point)."""
    pts = np.asarray(points, float)
    rad = np.broadcast_to(np.asarray(radii, float), (len(pts),))
    for i in range(len(pts) - 1):
        r = max(rad[i], rad[i + 1])
        cv.paint(label, capsule(pts[i], pts[i + 1], rad[i], rad[i + 1]), *capsule_box(pts[i], pts[i + 1], r), only)


def lut(*labels: int, n: int = 64) -> np.ndarray:
    """Boolean lookup of label values (for ``Canvas.paint(only=...)``)."""
    out = np.zeros(n, bool)
    out[list(labels)] = True
    return out
