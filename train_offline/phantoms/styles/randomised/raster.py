"""Sampling the analytic anatomy onto voxel lattices: the lattice itself (axis positions in the acquisition frame),
separable linear upsampling, smooth random fields, and signed distances to tubes and sacs inside bounding boxes.

The acquisition frame ("grid frame") has axes (normal, col_dir, row_dir) of the native stack, so a voxel
(k, r, c) sits at u = (uz[k], ur[r], uc[c]) mm and every bounding box is a block of indices.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from scipy.special import ndtr

Block = tuple[slice, slice, slice]


@dataclass
class Lattice:
    """Voxel centres of a (possibly coarse) grid: per-axis positions (mm) along the acquisition axes."""

    origin: np.ndarray  # LPS mm of u = 0
    axes: np.ndarray  # (3, 3) rows: normal, col_dir, row_dir (LPS unit vectors)
    uz: np.ndarray
    ur: np.ndarray
    uc: np.ndarray
    head_to_lps: np.ndarray  # (4, 4)

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.uz), len(self.ur), len(self.uc)

    def to_grid(self, p_head: np.ndarray) -> np.ndarray:
        """Head-frame points (..., 3) -> grid-frame coordinates (..., 3)."""
        p = np.asarray(p_head, dtype=np.float64)
        lps = p @ self.head_to_lps[:3, :3].T + self.head_to_lps[:3, 3]
        return (lps - self.origin) @ self.axes.T

    def grid_to_lps(self, u: np.ndarray) -> np.ndarray:
        """Grid-frame coordinates (..., 3) -> LPS mm."""
        return self.origin + np.asarray(u, dtype=np.float64) @ self.axes

    def head_coords(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Head-frame x, y, z (float32 arrays of the lattice shape) of every voxel centre."""
        m_inv = self.head_to_lps[:3, :3].T
        a0 = m_inv @ (self.origin - self.head_to_lps[:3, 3])
        e = self.axes @ m_inv.T  # e[i] = head-frame step of grid axis i
        uz, ur, uc = (np.asarray(p, np.float32) for p in (self.uz, self.ur, self.uc))
        out = []
        for j in range(3):
            zr = (uz * np.float32(e[0, j]) + np.float32(a0[j]))[:, None, None]
            zr = zr + (ur * np.float32(e[1, j]))[None, :, None]
            out.append(zr + (uc * np.float32(e[2, j]))[None, None, :])
        return out[0], out[1], out[2]

    def block(self, lo: np.ndarray, hi: np.ndarray) -> Block | None:
        """Index block of the voxels whose centres lie in the grid-frame box [lo, hi]; None when empty."""
        out = []
        for pos, a, b in zip((self.uz, self.ur, self.uc), lo, hi, strict=True):
            i0, i1 = int(np.searchsorted(pos, a)), int(np.searchsorted(pos, b, side="right"))
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return out[0], out[1], out[2]

    def head_block(self, lo_head: np.ndarray, hi_head: np.ndarray) -> Block | None:
        """Index block covering a head-frame axis-aligned box (through its 8 corners)."""
        corners = np.array([[x, y, z] for x in (lo_head[0], hi_head[0]) for y in (lo_head[1], hi_head[1])
                            for z in (lo_head[2], hi_head[2])])
        u = self.to_grid(corners)
        return self.block(u.min(axis=0), u.max(axis=0))


def axis_positions(n_fine: int, step: float, n_coarse: int) -> np.ndarray:
    """Positions (mm, fine voxel 0 at 0) of a coarse axis that ``lin_up`` maps exactly onto the fine one."""
    j = np.arange(n_coarse, dtype=np.float64)
    return ((j + 0.5) * n_fine / n_coarse - 0.5) * step


def lin_up(a: np.ndarray, n_out: int, axis: int, out: np.ndarray | None = None) -> np.ndarray:
    """Linear upsampling along one axis (half-pixel-centre convention, edges held), float32; into ``out`` if given."""
    n_in = a.shape[axis]
    if n_in == n_out:
        if out is None:
            return a
        out[...] = a
        return out
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.minimum(pos.astype(np.int64), max(n_in - 2, 0))
    w = (pos - i0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = n_out
    w = w.reshape(shape)
    out = np.take(a, i0, axis=axis, out=out)
    out *= 1.0 - w
    nxt = np.take(a, np.minimum(i0 + 1, n_in - 1), axis=axis)
    nxt *= w
    out += nxt
    return out


def smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                 scale_mm: float) -> np.ndarray:
    """A smooth random field of unit standard deviation and correlation length about ``scale_mm``."""
    small = tuple(max(4, int(np.ceil(2 * n * h / scale_mm)) + 3) for n, h in zip(shape, spacing, strict=True))
    f = ndimage.gaussian_filter(rng.standard_normal(small).astype(np.float32), 1.5, mode="wrap")
    f /= float(f.std()) + 1e-6
    up = torch.nn.functional.interpolate(torch.from_numpy(f)[None, None], size=shape, mode="trilinear",
                                         align_corners=False)
    return up[0, 0].numpy()


def occupancy(sdf: np.ndarray, sigma: float, radius: float) -> np.ndarray:
    """Blurred occupancy of a structure from its signed distance: the Gaussian edge profile of width ``sigma``,
    scaled down for structures thinner than the blur (the peak of a blurred disc)."""
    peak = (1.0 - np.exp(-0.5 * (radius / sigma) ** 2)) / max(float(ndtr(radius / sigma)), 1e-6)
    return (min(peak, 1.0) * ndtr(-sdf / sigma)).astype(np.float32)


def _seg_sdf(dz: np.ndarray, dr: np.ndarray, dc: np.ndarray, ab: np.ndarray, ra: float, rb: float) -> np.ndarray:
    """Signed distance to a capsule with linearly varying radius, from 1-D offsets to its start point."""
    l2 = float(ab @ ab) + 1e-9
    t = dz[:, None, None] * (ab[0] / l2) + dr[None, :, None] * (ab[1] / l2) + dc[None, None, :] * (ab[2] / l2)
    np.clip(t, 0.0, 1.0, out=t)
    ez = dz[:, None, None] - t * ab[0]
    d2 = ez * ez
    ez = dr[None, :, None] - t * ab[1]
    d2 += ez * ez
    ez = dc[None, None, :] - t * ab[2]
    d2 += ez * ez
    np.sqrt(d2, out=d2)
    d2 -= ra + t * (rb - ra)
    return d2


def _chunk_sdf(dz: np.ndarray, dr: np.ndarray, dc: np.ndarray, p: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance to a chain of capsules (points ``p`` (m+1, 3), radii ``r``), all segments at once."""
    a = p[:-1].astype(np.float32)
    ab = (p[1:] - p[:-1]).astype(np.float32)
    l2 = np.maximum((ab * ab).sum(axis=1), np.float32(1e-9))
    oz = dz[None, :] - a[:, 0:1]  # (m, nz) offsets from each segment start, per axis
    orr = dr[None, :] - a[:, 1:2]
    oc = dc[None, :] - a[:, 2:3]
    t = ((oz * (ab[:, 0:1] / l2[:, None]))[:, :, None, None] + (orr * (ab[:, 1:2] / l2[:, None]))[:, None, :, None]
         + (oc * (ab[:, 2:3] / l2[:, None]))[:, None, None, :])
    np.clip(t, 0.0, 1.0, out=t)
    sh = (-1, 1, 1, 1)
    e = oz[:, :, None, None] - t * ab[:, 0].reshape(sh)
    d2 = e * e
    e = orr[:, None, :, None] - t * ab[:, 1].reshape(sh)
    d2 += e * e
    e = oc[:, None, None, :] - t * ab[:, 2].reshape(sh)
    d2 += e * e
    np.sqrt(d2, out=d2)
    r0 = r[:-1].astype(np.float32).reshape(sh)
    d2 -= r0 + t * (r[1:].astype(np.float32).reshape(sh) - r0)
    return d2.min(axis=0)


def tube_blocks(lat: Lattice, pts: np.ndarray, radii: np.ndarray, margin: float, z_offsets: tuple[float, ...] = (0.0,),
                chunk: int = 0) -> Iterator[tuple[Block, list[np.ndarray], int]]:
    """For consecutive chunks of a tube (grid-frame points), yield the index block around the chunk, the signed
    distance to the chunk in it (one array per slice sub-offset), and the chunk's first point index."""
    n = len(pts)
    if n < 2:
        return
    uz, ur, uc = (np.asarray(p, dtype=np.float32) for p in (lat.uz, lat.ur, lat.uc))
    zpad = max(abs(z) for z in z_offsets)
    if chunk <= 0:  # about 8 voxels of centreline per chunk: few calls on coarse grids, small boxes on fine ones
        step = float(np.median(np.linalg.norm(np.diff(pts, axis=0), axis=1))) + 1e-6
        voxel = float(min(np.median(np.diff(p)) if len(p) > 1 else 1.0 for p in (uz, ur, uc)))
        chunk = int(np.clip(8 * voxel / step, 3, 16))
    for i0 in range(0, n - 1, chunk):
        p = pts[i0:i0 + chunk + 1]
        r = radii[i0:i0 + chunk + 1]
        pad = float(r.max()) + margin
        blk = lat.block(p.min(axis=0) - pad - [zpad, 0, 0], p.max(axis=0) + pad + [zpad, 0, 0])
        if blk is None:
            continue
        sdfs = [_chunk_sdf(uz[blk[0]] + np.float32(dzo), ur[blk[1]], uc[blk[2]], p, r) for dzo in z_offsets]
        yield blk, sdfs, i0


def ellipsoid_sdf(dz: np.ndarray, dr: np.ndarray, dc: np.ndarray, rot: np.ndarray, semi: np.ndarray) -> np.ndarray:
    """Approximate signed distance to an ellipsoid (grid-frame offsets from its centre; ``rot`` rows = its axes in
    the grid frame, ``semi`` its semi-axes)."""
    q = []
    for i in range(3):
        q.append(dz[:, None, None] * rot[i, 0] + dr[None, :, None] * rot[i, 1] + dc[None, None, :] * rot[i, 2])
    k0 = np.sqrt(sum((qi / s) ** 2 for qi, s in zip(q, semi, strict=True)))
    k1 = np.sqrt(sum((qi / (s * s)) ** 2 for qi, s in zip(q, semi, strict=True)))
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def smooth_union(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum of two signed distances (a fillet of size ``k`` mm at the join)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)
