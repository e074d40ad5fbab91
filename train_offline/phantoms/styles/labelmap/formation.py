"""Image formation on the native grid: background (coarse labels through the PSF, noise on the acquired matrix),
vessel blocks, then the protocol's scanner effects, slab by slab of slices to bound memory; and the label map."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from . import blocks as B
from . import scanner as S
from . import tissues as T
from .canvas import Canvas
from .contrast import Contrast
from .geometry import Acquisition
from .psf import axis_weights, sparse

CHUNK_VOXELS = 6_000_000


class Shader:
    """Fine-voxel intensities (minus the background they replace): lumen with distal fading and TOF inflow, sacs with
    slow-flow patches or thrombus, veins, walls, CSF cuffs, calcifications; coil bias on all of them."""

    def __init__(self, contrast: Contrast, prims: B.Prims, sacs: list, frames, canvas: Canvas, bg: np.ndarray,
                 bias, inflow: np.ndarray | None) -> None:
        self.c, self.prims, self.frames, self.bias, self.inflow = contrast, prims, frames, bias, inflow
        self.bg, self.bg_start, self.bg_step = bg, canvas.start, canvas.step
        self.sac_centre = np.array([frames.h_to_u(s.centre) for s in sacs]).reshape(-1, 3)
        rot = frames.h_mat
        self.sac_dir = np.array([rot @ s.direction for s in sacs]).reshape(-1, 3)
        self.sac_wave = np.array([np.concatenate([s.wave[:, :3] @ rot.T, s.wave[:, 3:]], axis=1) for s in sacs]
                                 ).reshape(-1, 3, 4)
        self.sac_info = np.array([[s.dome, s.patchiness, s.thrombus] for s in sacs]).reshape(-1, 3)

    def _fade(self, flow: np.ndarray) -> np.ndarray:
        if not np.isfinite(self.c.fade_mm):
            return np.ones_like(flow)
        return np.exp(-np.maximum(flow - 120.0, 0.0) / self.c.fade_mm)

    def _sac(self, idx: np.ndarray, u: np.ndarray, val: np.ndarray) -> np.ndarray:
        rel = u - self.sac_centre[idx]
        w = self.sac_wave[idx]  # (n, 3 waves, 4)
        pattern = np.clip(0.5 + 0.35 * np.cos(np.einsum("ij,iwj->iw", rel, w[:, :, :3]) + w[:, :, 3]).sum(1), 0, 1)
        val = val * (1.0 + self.c.patch_sign * self.sac_info[idx, 1] * pattern)
        thr = self.sac_info[idx, 2]
        clot = (thr > 0) & (np.einsum("ij,ij->i", rel, self.sac_dir[idx]) > (1 - 2 * thr) * 0.5 * self.sac_info[idx, 0])
        return np.where(clot, self.c.thrombus, val)

    def __call__(self, vox: B.Voxels) -> np.ndarray:
        c, p, k = self.c, self.prims, vox.kind
        val = np.zeros(len(k), np.float64)
        art, sac = k == B.ARTERY, k == B.SAC
        val[art] = c.artery * p.gain[vox.prim[art]] * self._fade(vox.flow[art])
        if sac.any():
            sid = p.sac[vox.prim[sac]]
            val[sac] = self._sac(sid, vox.u[sac], c.artery * c.sac_factor * self._fade(vox.flow[sac]))
        val[k == B.VEIN] = c.vein * p.gain[vox.prim[k == B.VEIN]]
        val[k == B.SLEEVE] = c.tissue[T.CSF]
        val[k == B.CALC] = c.calc
        val[k == B.WALL] = c.wall
        if self.inflow is not None:
            kk = np.clip(vox.u[:, 0] / self.frames.acq.spacing[0], 0, len(self.inflow) - 1)
            val[art | sac] *= np.interp(kk[art | sac], np.arange(len(self.inflow)), self.inflow)
        if self.bias is not None:
            q = self.frames.u_to_q(vox.u)
            val *= self.bias(q[:, 0], q[:, 1], q[:, 2])
        idx = ((vox.u - self.bg_start) / self.bg_step).T
        under = ndi.map_coordinates(self.bg, idx, order=1, mode="nearest")
        delta = val - under
        if c.family in ("cta", "tof"):
            delta[k == B.WALL] = 0.0  # the wall is invisible there
        return delta.astype(np.float32)


def _matrices(acq: Acquisition, canvas: Canvas, grain: float):
    """PSF/interpolation matrices: canvas -> slices (dense), canvas -> acquired matrix -> display matrix (sparse)."""
    cs, cstep = canvas.start, canvas.step
    z_sigma = float(np.hypot(acq.psf_sigma[0], 0.35 * cstep[0]))
    az = axis_weights(np.arange(acq.shape[0]) * acq.spacing[0], cs[0], cstep[0], canvas.shape[0], z_sigma,
                      acq.slab_width, normalise=True)
    mats = {"z": az}
    if grain > 1.01:
        h_i = acq.spacing[1:] * grain
        n_i = np.ceil(acq.extent[1:] / h_i).astype(int) + 3
        start_i = -h_i
    else:
        h_i, n_i, start_i = acq.spacing[1:], np.asarray(acq.shape[1:]), np.zeros(2)
    for a, name in ((1, "y"), (2, "x")):
        dst = start_i[a - 1] + h_i[a - 1] * np.arange(n_i[a - 1])
        sig = float(np.hypot(acq.psf_sigma[a], 0.35 * cstep[a]))
        mats[name + "1"] = sparse(axis_weights(dst, cs[a], cstep[a], canvas.shape[a], sig, normalise=True))
        if grain > 1.01:  # acquired matrix -> display: linear-ish (CT) or zero-filled sinc with ringing (MR)
            fin = np.arange(acq.shape[a]) * acq.spacing[a]
            cut = None if acq.variant == "cta" else acq.keep[a - 1] / (2.0 * h_i[a - 1])
            w = axis_weights(fin, start_i[a - 1], h_i[a - 1], n_i[a - 1], 0.42 * h_i[a - 1], sinc_cutoff=cut)
            w /= np.maximum(w.sum(axis=1, keepdims=True), 1e-6)
            mats[name + "2"] = sparse(w)
            mats[name + "gain"] = float(np.mean(np.sum(w * w, axis=1)))
        else:
            mats[name + "gain"] = 1.0
    return mats, (start_i, h_i, n_i)


def _effects(rng: np.random.Generator, acq: Acquisition, frames, contrast: Contrast, inter) -> dict:
    """Per-series scanner-effect parameters, drawn once."""
    fam = contrast.family
    centres = S.slice_centres_q(acq, frames.u_to_q)
    fx: dict = {"family": fam, "centres_z": centres[:, 2], "grain": float(acq.noise_grain)}
    if fam == "cta":
        fx["sharpen"] = float(rng.uniform(0.2, 0.9)) if rng.random() < 0.5 else 0.0
        fx["streaks"] = S.ct_streaks(rng, acq, tuple(inter[2]), inter[1], lambda q: frames.q_to_u(q) - np.r_[
            0.0, inter[0]], centres)
        fx["circle"] = bool(rng.random() < 0.6)
    else:
        fx["keep"], fx["window"] = acq.keep, acq.kspace_window
        fx["fft_gibbs"] = acq.noise_grain <= 1.01  # otherwise the sinc interpolation to the display rings
        fx["slice_gain"] = (1.0 + rng.normal(0, rng.uniform(0.005, 0.03), acq.shape[0])) if not acq.three_d \
            else np.ones(acq.shape[0])
        fx["ghost"] = float(rng.uniform(0.01, 0.04)) if rng.random() < 0.3 else 0.0
        fx["ghost_axis"] = int(rng.integers(1, 3))
        fx["scale"] = float(rng.uniform(150, 2500) / max(contrast.ref, 1e-3))
    return fx


def _small_voxel_factor(acq: Acquisition) -> float:
    """The spec's noise levels are for real voxels; the small size's big voxels average noise down (not below 1/4)."""
    if acq.size != "small":
        return 1.0
    ref = 0.15 if acq.variant in ("cta", "tof") else 1.0  # typical real voxel volume, mm^3
    return float(np.clip(np.sqrt(ref / (np.prod(acq.spacing[1:]) * acq.thickness)), 0.25, 1.0))


def _inplane(t: np.ndarray, ay, ax, out: np.ndarray | None = None) -> np.ndarray:
    """Resample each slice of ``t`` with sparse (rows, cols) matrices; slice by slice stays in cache (no big
    transposes)."""
    if out is None:
        out = np.empty((t.shape[0], ay.shape[0], ax.shape[0]), np.float32)
    for k in range(t.shape[0]):
        out[k] = (ax @ (ay @ t[k]).T).T
    return out


def form_image(rng: np.random.Generator, acq: Acquisition, frames, canvas: Canvas, bg: np.ndarray, acc: B.AccBox,
               contrast: Contrast, tof_gain: np.ndarray | None) -> tuple[np.ndarray, dict]:
    """Assemble the native stack chunk by chunk; returns the image and the effect parameters used."""
    mats, inter = _matrices(acq, canvas, acq.noise_grain)
    fx = _effects(rng, acq, frames, contrast, inter)
    nz, ny, nx = acq.shape
    image = np.empty(acq.shape, np.float32)
    step = max(1, CHUNK_VOXELS // (ny * nx))
    sigma_i = contrast.noise * _small_voxel_factor(acq) / np.sqrt(mats["ygain"] * mats["xgain"])
    circle = S.fov_circle((ny, nx), acq.spacing[1:]) if fx.get("circle") else None
    for k0 in range(0, nz, step):
        k1 = min(nz, k0 + step)
        az = mats["z"][k0:k1]
        cols = np.flatnonzero(az.any(axis=0))
        c0, c1 = (cols[0], cols[-1] + 1) if cols.size else (0, 1)
        t = np.tensordot(az[:, c0:c1], bg[c0:c1], axes=(1, 0)).astype(np.float32)
        t = _inplane(t, mats["y1"], mats["x1"])
        t = _add_noise(rng, t, contrast, sigma_i, fx, k0, k1)
        if "y2" in mats:
            t = _inplane(t, mats["y2"], mats["x2"], out=image[k0:k1])
        _add_vessels(t, acc, k0, k1)
        image[k0:k1] = _finish_chunk(t, fx, k0, k1, tof_gain, circle)
    fx.pop("streaks", None)
    fx.pop("centres_z", None)
    return image, fx


def _add_noise(rng, t: np.ndarray, contrast: Contrast, sigma: float, fx: dict, k0: int, k1: int) -> np.ndarray:
    """On the acquired matrix: CT quantum noise (stronger through the skull base), streaks and optionally a sharper
    kernel; MR Rician noise (magnitude of complex Gaussian) and k-space truncation (Gibbs ringing)."""
    if fx["family"] == "cta":
        z = fx["centres_z"][k0:k1]
        boost = (1.0 + 0.45 * np.exp(-0.5 * ((z + 50.0) / 15.0) ** 2)).astype(np.float32)
        t += _white(rng, t.shape, fx["grain"]) * (sigma * boost)[:, None, None]
        for m, prof in fx["streaks"]:
            w = prof[k0:k1]
            if w.max() > 0.02:
                t += w[:, None, None] * m[None]
        if fx["sharpen"] > 0:
            t = S.unsharp(t, fx["sharpen"])
        return t
    noise = sigma * _white(rng, t.shape, fx["grain"])
    imag = np.roll(noise, (t.shape[1] // 3, t.shape[2] // 2), axis=(1, 2))  # other samples of white noise
    t += noise
    mag = np.sqrt(t * t + imag * imag)
    return S.gibbs(mag, fx["keep"], fx["window"]) if fx["fft_gibbs"] else mag


def _white(rng: np.random.Generator, shape, grain: float) -> np.ndarray:
    """Unit-variance white noise. When the acquired matrix is interpolated (grain > 1.3) every display pixel mixes
    many samples, so cheap uniform samples come out Gaussian anyway; otherwise draw Gaussian samples."""
    if grain > 1.3:
        u = rng.random(shape, dtype=np.float32)
        u -= np.float32(0.5)
        u *= np.float32(np.sqrt(12.0))
        return u
    return rng.standard_normal(shape, dtype=np.float32)


def _add_vessels(t: np.ndarray, acc: B.AccBox, k0: int, k1: int) -> None:
    lo, hi = acc.lo, acc.hi
    a, b = max(k0, lo[0]), min(k1, hi[0])
    if b > a and acc.data.size:
        t[a - k0:b - k0, lo[1]:hi[1], lo[2]:hi[2]] += acc.data[a - lo[0]:b - lo[0]]


def _finish_chunk(t: np.ndarray, fx: dict, k0: int, k1: int, tof_gain, circle) -> np.ndarray:
    """Protocol effects on a chunk of native slices, then physical clipping."""
    if fx["family"] == "cta":
        if circle is not None:
            t[:, circle] = -1024.0
        return np.clip(t, -1024.0, 3071.0, out=t)
    if tof_gain is not None:
        t *= tof_gain[k0:k1, None, None]
    t *= fx["slice_gain"][k0:k1, None, None].astype(np.float32)
    if fx["ghost"] > 0:
        ax = fx["ghost_axis"]
        t += fx["ghost"] * np.roll(t, t.shape[ax] // 2, axis=ax)
    np.abs(t, out=t)
    t *= np.float32(fx["scale"])
    return t


def label_map(acq: Acquisition, fine: B.FineGrid, lumen: B.AccBox, segs: dict, threshold: float = 0.4) -> np.ndarray:
    """Competition vessel labels on the native grid: voxels at least ``threshold`` lumen take the nearest vessel's
    segmentation value (aneurysm sacs carry their location's value)."""
    out = np.zeros(acq.shape, np.uint8)
    if lumen is None or lumen.data.size == 0:
        return out
    idx = np.argwhere(lumen.data >= threshold) + lumen.lo
    if idx.size == 0:
        return out
    u = idx * acq.spacing
    fi = np.rint((u - fine.start) / fine.step).astype(int)
    fi = np.clip(fi, 0, fine.shape - 1)
    keys = fi // fine.block
    loc = fi % fine.block
    kflat = np.ravel_multi_index(keys.T, fine.n_blocks)
    order = np.argsort(kflat, kind="stable")
    bounds = np.flatnonzero(np.diff(kflat[order])) + 1
    vals = np.zeros(len(idx), np.uint8)
    for grp in np.split(order, bounds):
        key = tuple(int(v) for v in np.unravel_index(kflat[grp[0]], fine.n_blocks))
        if key in segs:
            vals[grp] = segs[key][loc[grp, 0], loc[grp, 1], loc[grp, 2]]
    out[idx[:, 0], idx[:, 1], idx[:, 2]] = vals
    return out
