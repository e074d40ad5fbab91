"""Partial volume: resampling label-derived intensities through a point-spread function, one axis at a time.

A source voxel is a box of width ``h`` holding one label; a destination sample integrates the source under a slice
profile (a flat top of width ``width`` with Gaussian edges ``sigma``, the Gaussian alone for 3D). The weights are the
exact integral of that profile over each source box, so a thin vessel's partial volume follows the real geometry.
The 3D PSF is separable, so one (destination x source) matrix per axis does the whole job.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.special import ndtr

_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


def _psi(t: np.ndarray) -> np.ndarray:
    """Antiderivative of the normal CDF."""
    return t * ndtr(t) + _INV_SQRT_2PI * np.exp(-0.5 * t * t)


def profile_cdf(x: np.ndarray, sigma: float, width: float) -> np.ndarray:
    """CDF of rect(width) convolved with N(0, sigma)."""
    sigma = max(float(sigma), 1e-3)
    if width <= 1e-6:
        return ndtr(x / sigma)
    return (sigma / width) * (_psi((x + 0.5 * width) / sigma) - _psi((x - 0.5 * width) / sigma))


def _sinc_weights(dst_u: np.ndarray, src_u: np.ndarray, src_step: float, cutoff: float, lobes: int = 3) -> np.ndarray:
    """Integral over each source box of a Lanczos-windowed sinc (k-space truncated at ``cutoff`` cycles/mm)."""
    offs = ((np.arange(4) + 0.5) / 4 - 0.5) * src_step
    x = (src_u[None, :, None] + offs[None, None, :]) - np.asarray(dst_u, float)[:, None, None]
    arg = 2.0 * cutoff * x
    kern = 2.0 * cutoff * np.sinc(arg) * np.where(np.abs(arg) < lobes, np.sinc(arg / lobes), 0.0)
    return kern.sum(axis=2) * (src_step / 4)


def axis_weights(dst_u: np.ndarray, src_start: float, src_step: float, n_src: int, sigma: float,
                 width: float = 0.0, normalise: bool = False, sinc_cutoff: float | None = None) -> np.ndarray:
    """Dense (n_dst, n_src) float32 weights from source boxes to destination samples along one axis (Gaussian-edged
    slice profile, or a windowed sinc when ``sinc_cutoff`` is given: MR's truncated k-space, with its ringing)."""
    src_u = src_start + src_step * np.arange(n_src)
    if sinc_cutoff is not None:
        w = _sinc_weights(np.asarray(dst_u, float), src_u, src_step, sinc_cutoff)
        w[np.abs(w) < 1e-5] = 0.0
        return w.astype(np.float32)
    lo = (src_u - 0.5 * src_step)[None, :] - np.asarray(dst_u, float)[:, None]
    w = profile_cdf(lo + src_step, sigma, width) - profile_cdf(lo, sigma, width)
    w[w < 1e-5] = 0.0
    if normalise:
        total = w.sum(axis=1, keepdims=True)
        w = np.divide(w, total, out=np.zeros_like(w), where=total > 1e-8)
    return w.astype(np.float32)


def apply_axis(vol: np.ndarray, mat: sp.csr_matrix | np.ndarray, axis: int) -> np.ndarray:
    """Contract ``vol`` along ``axis`` with ``mat`` (n_out, n_in); returns a C-contiguous float32 array."""
    moved = np.moveaxis(vol, axis, 0)
    rest = moved.shape[1:]
    flat = np.ascontiguousarray(moved).reshape(moved.shape[0], -1)
    out = mat @ flat
    out = np.asarray(out, dtype=np.float32).reshape((mat.shape[0], *rest))
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))


def sparse(mat: np.ndarray) -> sp.csr_matrix:
    return sp.csr_matrix(mat.astype(np.float32))


def nonzero_span(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``mat``: first and one-past-last row with a non-zero weight (rows where the column lands)."""
    nz = mat != 0
    any_nz = nz.any(axis=0)
    first = np.where(any_nz, nz.argmax(axis=0), 0)
    last = np.where(any_nz, mat.shape[0] - nz[::-1].argmax(axis=0), 0)
    return first, last
