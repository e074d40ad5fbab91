"""Signed distance primitives, smooth blends, band-limited noise and grid upsampling for the implicit head.

Every primitive takes coordinate arrays ``x, y, z`` (float32, broadcastable) and returns a float32 signed distance in
mm (negative inside). The ellipsoid and round-cone distances are the usual first-order bounds, exact enough for
partial-volume shading at voxel scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

EPS = 1e-6
Vec = Sequence[float] | np.ndarray


def ellipsoid(x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: Vec, axes: Vec) -> np.ndarray:
    """Axis-aligned ellipsoid: the k0 (k0 - 1) / k1 bound, good near the surface."""
    px, py, pz = x - np.float32(centre[0]), y - np.float32(centre[1]), z - np.float32(centre[2])
    ax, ay, az = (np.float32(a) for a in axes)
    k0 = np.sqrt((px / ax) ** 2 + (py / ay) ** 2 + (pz / az) ** 2)
    k1 = np.sqrt((px / (ax * ax)) ** 2 + (py / (ay * ay)) ** 2 + (pz / (az * az)) ** 2)
    return (k0 * (k0 - 1.0) / np.maximum(k1, EPS)).astype(np.float32, copy=False)


def round_cone(x: np.ndarray, y: np.ndarray, z: np.ndarray, a: Vec, b: Vec, ra: float, rb: float) -> np.ndarray:
    """Capsule from ``a`` to ``b`` whose radius goes linearly from ``ra`` to ``rb`` (distance to the axis minus r)."""
    ba = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    bb = max(float(ba @ ba), EPS)
    px, py, pz = x - np.float32(a[0]), y - np.float32(a[1]), z - np.float32(a[2])
    t = np.clip((px * np.float32(ba[0]) + py * np.float32(ba[1]) + pz * np.float32(ba[2])) / np.float32(bb), 0.0, 1.0)
    qx, qy, qz = px - t * np.float32(ba[0]), py - t * np.float32(ba[1]), pz - t * np.float32(ba[2])
    return (np.sqrt(qx * qx + qy * qy + qz * qz) - (np.float32(ra) + np.float32(rb - ra) * t)).astype(np.float32)


def chain(x: np.ndarray, y: np.ndarray, z: np.ndarray, points: Sequence[Vec], radii: Sequence[float]) -> np.ndarray:
    """Union of round cones through ``points`` (a tube of varying radius), plain minimum at the joints."""
    out = None
    for i in range(len(points) - 1):
        d = round_cone(x, y, z, points[i], points[i + 1], radii[i], radii[i + 1])
        out = d if out is None else np.minimum(out, d)
    return out


def smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (a filleted union of two fields); k is the blend width in mm."""
    if k <= 0:
        return np.minimum(a, b)
    k = np.float32(k)
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth maximum (a filleted intersection)."""
    return -smin(-a, -b, k)


def sstep(x: np.ndarray) -> np.ndarray:
    """Cubic smoothstep of x clipped to [0, 1]."""
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


class WaveNoise:
    """Band-limited isotropic noise: a sum of random plane waves, about unit variance.

    Cheap to evaluate anywhere (coarse grids, vessel samples) and a pure function of the draws, which is what an
    implicit scene needs: the same field can be sampled at any resolution without resampling artefacts.
    """

    def __init__(self, rng: np.random.Generator, n_waves: int, wavelength_mm: tuple[float, float]) -> None:
        d = rng.normal(size=(n_waves, 3))
        self.dirs = d / np.linalg.norm(d, axis=1, keepdims=True)
        self.omega = 2 * np.pi / rng.uniform(*wavelength_mm, size=n_waves)
        self.phase = rng.uniform(0, 2 * np.pi, size=n_waves)
        self.norm = np.sqrt(2.0 / n_waves)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = None
        for d, w, ph in zip(self.dirs, self.omega, self.phase, strict=True):
            arg = (x * np.float32(d[0] * w) + y * np.float32(d[1] * w)) + (z * np.float32(d[2] * w) + np.float32(ph))
            term = np.sin(arg)
            out = term if out is None else out + term
        return (out * np.float32(self.norm)).astype(np.float32, copy=False)

    def at_points(self, p: np.ndarray) -> np.ndarray:
        """Evaluate at an (N, 3) array of points."""
        return self(p[:, 0].astype(np.float32), p[:, 1].astype(np.float32), p[:, 2].astype(np.float32))


def _lerp_chunk(a: np.ndarray, axis: int, factor: int, n_out: int) -> np.ndarray:
    """Linear upsampling of ``a`` along ``axis`` by an integer factor (contiguous broadcasting, no strided writes)."""
    n_in = a.shape[axis]
    lo = a[(slice(None),) * axis + (slice(0, n_in - 1),)]
    hi = a[(slice(None),) * axis + (slice(1, n_in),)]
    w_shape = [1] * (a.ndim + 1)
    w_shape[axis + 1] = factor
    w = (np.arange(factor, dtype=np.float32) / np.float32(factor)).reshape(w_shape)
    lo_e = np.expand_dims(lo, axis + 1)
    body = (np.expand_dims(hi, axis + 1) - lo_e) * w
    body += lo_e
    shape = list(a.shape)
    shape[axis] = (n_in - 1) * factor
    body = body.reshape(shape)
    if shape[axis] >= n_out:
        return body[(slice(None),) * axis + (slice(0, n_out),)]
    last = a[(slice(None),) * axis + (slice(n_in - 1, n_in),)]
    return np.concatenate([body, last], axis=axis)[(slice(None),) * axis + (slice(0, n_out),)]


def upsample_axis(a: np.ndarray, axis: int, factor: int, n_out: int, chunk: int = 16) -> np.ndarray:
    """Linear interpolation along one axis by an integer factor; coarse sample j sits at fine index j * factor.

    Works in chunks along the first axis so the temporaries stay small on native-size volumes."""
    if factor == 1:
        return a if a.shape[axis] == n_out else a[(slice(None),) * axis + (slice(0, n_out),)]
    n_in = a.shape[axis]
    assert (n_in - 1) * factor + 1 >= n_out, "coarse grid must cover the fine grid"
    shape = list(a.shape)
    shape[axis] = n_out
    out = np.empty(shape, np.float32)
    if axis == 0:
        for j0 in range(0, n_in - 1, chunk):
            j1 = min(j0 + chunk, n_in - 1)
            o0, o1 = j0 * factor, min(j1 * factor, n_out)
            if o1 > o0:
                out[o0:o1] = _lerp_chunk(a[j0 : j1 + 1], 0, factor, j1 * factor + 1)[: o1 - o0]
        if (n_in - 1) * factor < n_out:
            out[(n_in - 1) * factor] = a[n_in - 1]
        return out
    for k0 in range(0, a.shape[0], chunk):
        out[k0 : k0 + chunk] = _lerp_chunk(a[k0 : k0 + chunk], axis, factor, n_out)
    return out


def interp_axis(a: np.ndarray, axis: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Linear interpolation along one axis from sample positions ``src`` to arbitrary positions ``dst``."""
    i0 = np.clip(np.searchsorted(src, dst, side="right") - 1, 0, len(src) - 2)
    w = np.clip((dst - src[i0]) / (src[i0 + 1] - src[i0]), 0.0, 1.0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = len(dst)
    w = w.reshape(shape)
    lo = np.take(a, i0, axis=axis)
    return lo + (np.take(a, i0 + 1, axis=axis) - lo) * w


def upsample(a: np.ndarray, factors: tuple, shape: tuple[int, int, int], out: np.ndarray | None = None) -> np.ndarray:
    """Trilinear upsampling of a coarse sub-grid to ``shape``: an integer factor per axis, or a pair of position
    arrays (coarse, fine) for the slice axis when it is sampled irregularly (sub-slices of thick 2D slices).

    The in-plane axes are upsampled a few coarse slices at a time and interpolated along the slice axis straight
    into ``out``, so only the output is ever allocated at full size (fresh memory is what costs on big stacks)."""
    a = a.astype(np.float32, copy=False)
    out = np.empty(shape, np.float32) if out is None else out
    fk = factors[0]
    if isinstance(fk, tuple):
        block = a
        for axis in (2, 1):
            block = upsample_axis(block, axis, factors[axis], shape[axis])
        out[...] = interp_axis(block, 0, fk[0], fk[1])
        return out
    n_in, step, j0 = a.shape[0], 4, 0
    while True:
        j1 = min(j0 + step, n_in - 1)
        block = a[j0 : j1 + 1]
        block = _lerp_chunk(block, 2, factors[2], shape[2]) if factors[2] > 1 else block[:, :, : shape[2]]
        block = _lerp_chunk(block, 1, factors[1], shape[1]) if factors[1] > 1 else block[:, : shape[1]]
        o0 = j0 * fk
        if fk > 1 and j1 > j0:
            block = _lerp_chunk(block, 0, fk, (j1 - j0) * fk + 1)
        o1 = min(o0 + len(block), shape[0])
        out[o0:o1] = block[: o1 - o0]
        if j1 >= n_in - 1 or o1 >= shape[0]:
            return out
        j0 = j1


def occupancy(sdf: np.ndarray, h: float | np.ndarray) -> np.ndarray:
    """Partial-volume fraction of a voxel of size ``h`` whose centre lies at signed distance ``sdf`` (box filter)."""
    return np.clip(0.5 - sdf / np.float32(h) if np.isscalar(h) else 0.5 - sdf / h, 0.0, 1.0)


def tube_occupancy(sdf: np.ndarray, radius: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Partial volume of a tube of ``radius`` seen by a voxel of size ``h`` across it: the box filter of a slab of
    width 2r (so a perforator much thinner than a voxel fades instead of showing at half intensity), times the same
    factor across the second transverse direction for tubes thinner than the voxel."""
    rho = sdf + radius
    half = 0.5 * h
    overlap = np.minimum(radius, rho + half) - np.maximum(-radius, rho - half)
    occ = np.clip(overlap / h, 0.0, 1.0)
    return occ * np.minimum(1.0, 2.0 * radius / h)
