"""Scanner effects: coil bias, TOF slab profiles and inflow, CT beam-hardening and metal streaks, k-space truncation
(Gibbs ringing), 2D slice-to-slice gain and motion ghosts, the CT reconstruction circle.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft
from scipy import ndimage as ndi

from .geometry import Acquisition


class Bias:
    """Smooth multiplicative coil sensitivity over the canonical head: a low-order polynomial plus coil lobes."""

    def __init__(self, rng: np.random.Generator, strength: float) -> None:
        self.lin = rng.normal(0, strength, 3)
        self.quad = rng.normal(0, 0.6 * strength, 3)
        n = int(rng.integers(0, 4))
        dirs = rng.normal(size=(n, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True) + 1e-9
        self.centres = dirs * np.array([80.0, 100.0, 85.0]) + np.array([0.0, -15.0, 5.0])
        self.amps = rng.uniform(0.1, 0.45, n) * (strength / 0.15)
        self.widths = rng.uniform(45, 80, n)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        xs, ys, zs = x / 100.0, (y + 15.0) / 100.0, z / 100.0
        log = self.lin[0] * xs + self.lin[1] * ys + self.lin[2] * zs
        log = log + self.quad[0] * xs * xs + self.quad[1] * ys * ys + self.quad[2] * zs * zs
        out = np.exp(log)
        for c, a, w in zip(self.centres, self.amps, self.widths, strict=True):
            out = out + a * np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * w * w))
        return out.astype(np.float32)


def tof_profiles(rng: np.random.Generator, acq: Acquisition) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice stationary-tissue gain (slab edge dips: the venetian-blind artefact) and arterial inflow factor
    (blood saturates as it climbs through each slab; a new slab starts fresh)."""
    n = acq.shape[0]
    k = np.arange(n, dtype=float)
    dip = rng.uniform(0.08, 0.3)
    sat = rng.uniform(0.15, 0.5)  # arterial signal lost from the bottom to the top of a slab (TONE-compensated)
    num_g, num_f, den = np.zeros(n), np.zeros(n), np.zeros(n)
    for k0, k1 in acq.slabs:
        width = max(k1 - k0, 2)
        pos = np.clip((k - k0) / width, 0.0, 1.0)
        inside = (k >= k0) & (k < k1)
        w = np.where(inside, np.sin(np.pi * np.clip(pos, 0.02, 0.98)) ** 0.5, 0.0)
        gain = 1.0 - dip * (np.abs(2 * pos - 1) ** 4)
        flow = (1.0 - sat * pos) * rng.uniform(0.95, 1.05)
        num_g += w * gain
        num_f += w * flow
        den += w
    den = np.maximum(den, 1e-6)
    return (num_g / den).astype(np.float32), (num_f / den).astype(np.float32)


def slice_centres_q(acq: Acquisition, u_to_q) -> np.ndarray:
    """Canonical coordinates of each slice's centre."""
    n = acq.shape[0]
    u = np.zeros((n, 3))
    u[:, 0] = np.arange(n) * acq.spacing[0]
    u[:, 1:] = 0.5 * acq.extent[1:]
    return u_to_q(u)


def _line_map(shape, spacing, p0, p1, width, full: bool) -> np.ndarray:
    """Gaussian-profile band along the line through p0 and p1 (in-plane mm); ``full``: infinite line, else segment."""
    r = np.arange(shape[0])[:, None] * spacing[0]
    c = np.arange(shape[1])[None, :] * spacing[1]
    d = np.asarray(p1, float) - np.asarray(p0, float)
    ll = float(d @ d) + 1e-9
    t = ((r - p0[0]) * d[0] + (c - p0[1]) * d[1]) / ll
    if not full:
        t = np.clip(t, 0.0, 1.0)
    dr, dc = r - p0[0] - t * d[0], c - p0[1] - t * d[1]
    return np.exp(-(dr * dr + dc * dc) / (2 * width * width)).astype(np.float32)


def ct_streaks(rng: np.random.Generator, acq: Acquisition, shape2d, spacing2d, q_to_u, centres_q: np.ndarray
               ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Beam-hardening streaks at the petrous level (a dark band between the petrous pyramids and thin streaks from
    dense bone) and, sometimes, metal streaks at the teeth; each as (2D map, per-slice weight)."""
    out = []
    z = centres_q[:, 2]
    apex = [q_to_u(np.array([s * 20.0, -12.0, -47.0]))[1:] for s in (-1, 1)]
    prof = np.exp(-0.5 * ((z + 47.0 + rng.normal(0, 3)) / rng.uniform(4, 9)) ** 2).astype(np.float32)
    if prof.max() > 0.05:
        m = -rng.uniform(15, 50) * _line_map(shape2d, spacing2d, apex[0], apex[1], rng.uniform(2, 5), False)
        for _ in range(int(rng.integers(3, 9))):
            src = apex[int(rng.integers(2))] + rng.normal(0, 6, 2)
            ang = rng.uniform(0, np.pi)
            other = src + 50.0 * np.array([np.cos(ang), np.sin(ang)])
            amp = rng.choice([-1.0, 1.0]) * rng.uniform(8, 30)
            m += amp * _line_map(shape2d, spacing2d, src, other, rng.uniform(0.5, 1.3), True)
        out.append((m, prof))
    if rng.random() < 0.35:
        profm = np.exp(-0.5 * ((z + 90.0 + rng.normal(0, 4)) / rng.uniform(3, 6)) ** 2).astype(np.float32)
        if profm.max() > 0.05:
            src = q_to_u(np.array([rng.uniform(-22, 22), rng.uniform(35, 48), -90.0]))[1:]
            m = np.zeros(shape2d, np.float32)
            for ang in rng.uniform(0, np.pi, int(rng.integers(8, 20))):
                other = src + 50.0 * np.array([np.cos(ang), np.sin(ang)])
                m += rng.choice([-1.0, 1.0]) * rng.uniform(50, 300) * _line_map(shape2d, spacing2d, src, other,
                                                                               rng.uniform(0.4, 1.0), True)
            out.append((m, profm))
    return out


def gibbs(chunk: np.ndarray, keep: tuple[float, float], window: float) -> np.ndarray:
    """k-space truncation along the two in-plane axes: keep a fraction of the spectrum (the acquired matrix) and
    optionally taper it (a reconstruction filter); produces ringing at sharp edges."""
    out = chunk
    for axis, frac in zip((1, 2), keep, strict=True):
        n = out.shape[axis]
        spec = sfft.rfft(out, axis=axis, workers=1)
        f = np.arange(spec.shape[axis]) / (0.5 * n)
        h = (f <= frac).astype(np.float32)
        if window > 0:
            h *= (1.0 - window * (np.clip(f / frac, 0, 1) ** 2)).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = -1
        spec *= h.reshape(shape)
        out = sfft.irfft(spec, n=n, axis=axis, workers=1).astype(np.float32)
    return out


def unsharp(chunk: np.ndarray, amount: float) -> np.ndarray:
    """A sharper CT reconstruction kernel: in-plane unsharp masking with a 3x3 box (edge overshoot, grainier noise)."""
    blur = ndi.uniform_filter(chunk, size=(1, 3, 3))
    chunk *= np.float32(1.0 + amount)
    chunk -= np.float32(amount) * blur
    return chunk


def fov_circle(shape2d, spacing2d) -> np.ndarray:
    """Mask of pixels outside the CT reconstruction circle."""
    r = (np.arange(shape2d[0]) - 0.5 * (shape2d[0] - 1))[:, None] * spacing2d[0]
    c = (np.arange(shape2d[1]) - 0.5 * (shape2d[1] - 1))[None, :] * spacing2d[1]
    rad = 0.5 * min(shape2d[0] * spacing2d[0], shape2d[1] * spacing2d[1])
    return (r * r + c * c) > rad * rad
