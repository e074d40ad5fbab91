"""Image formation of the randomised style: tissue labels -> random intensities and textures on a coarse lattice
(blurred, biased, gamma), vessels and sacs as analytically blurred occupancies at full resolution (sparse, inside
their bounding boxes), then per slab of slices: upsampling, compositing, protocol artefacts and noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from .acquisition import Acquisition
from .anatomy import Tube
from .aneurysms import Sac
from .contrast import Contrast, apply_bias, apply_gamma, bias_field
from .head import (
    ARTERY,
    VEIN,
    HeadShape,
    brain_envelope,
    paint_base,
    paint_brain,
    paint_cisterns,
    paint_face_neck,
    paint_outer,
)
from .head import _tube as paint_tube
from .raster import (
    Lattice,
    _seg_sdf,
    axis_positions,
    ellipsoid_sdf,
    occupancy,
    smooth_field,
    smooth_union,
    tube_blocks,
)

FIELD_SCALES_MM = (40.0, 15.0, 8.0, 5.0)  # envelope wobble, boundaries, sulci, fine texture


@dataclass
class Entries:
    """Sparse full-resolution vessel voxels: flat index, occupancy, intensity, label, inside-lumen flag."""

    idx: np.ndarray
    occ: np.ndarray
    val: np.ndarray
    label: np.ndarray
    inside: np.ndarray


def coarse_lattice(rng: np.random.Generator, acq: Acquisition, fine: Lattice, size: str) -> tuple[Lattice, int]:
    """The background's lattice: the native grid ("small") or about 1.2-1.7 mm ("real"); thick 2D slices are
    sampled at sub-slice positions (returned count per slice) and averaged later (the slice profile)."""
    nz, ny, nx = acq.shape
    dz, dy, dx = acq.spacing
    big = float(np.prod(acq.shape)) > 40e6  # CTA-sized stacks: a slightly coarser background keeps the cost down
    h = (rng.uniform(1.35, 1.7) if big else rng.uniform(1.2, 1.6)) if size == "real" else 0.0
    ny_c = ny if dy >= h else max(8, int(np.ceil(ny * dy / h)))
    nx_c = nx if dx >= h else max(8, int(np.ceil(nx * dx / h)))
    ur, uc = axis_positions(ny, dy, ny_c), axis_positions(nx, dx, nx_c)
    if acq.three_d:
        nz_c = nz if dz >= h else max(4, int(np.ceil(nz * dz / h)))
        uz, n_sub = axis_positions(nz, dz, nz_c), 1
    else:
        offs = np.array(acq.sub_offsets(2.0))
        uz, n_sub = (fine.uz[:, None] + offs[None, :]).ravel(), len(offs)
    return Lattice(fine.origin, fine.axes, uz, ur, uc, fine.head_to_lps), n_sub


def tissue_labels(rng: np.random.Generator, lat: Lattice, head: HeadShape, arteries: list[Tube],
                  big_veins: list[Tube], sacs: list[tuple[np.ndarray, float]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Paint the tissue label map on the coarse lattice; return it with the smooth fields (reused as texture)."""
    spacing = tuple(float(np.median(np.diff(p))) if len(p) > 1 else 1.0 for p in (lat.uz, lat.ur, lat.uc))
    fields = [smooth_field(rng, lat.shape, spacing, s) for s in FIELD_SCALES_MM]
    xyz = lat.head_coords()
    env, cer = brain_envelope(head, lat, xyz)
    env = env + np.float32(1.5) * fields[0]
    lab = np.zeros(lat.shape, dtype=np.uint8)
    paint_outer(lab, env, head, xyz, fields)
    paint_face_neck(lab, lat, head, xyz, fields)
    cer += np.float32(1.5) * fields[0]
    paint_brain(lab, lat, env, cer, head, xyz, fields)
    paint_cisterns(lab, lat, env, cer, head, xyz, arteries, sacs, rng)
    paint_base(lab, lat, env, head, xyz, arteries, fields)
    for v in big_veins:
        paint_tube(lab, lat, v.points, v.radii, VEIN)
    return lab, fields


def background(c: Contrast, lat: Lattice, lab: np.ndarray, fields: list[np.ndarray], sigma_mm: np.ndarray,
               n_sub: int, fine_step: tuple[float, float, float]) -> np.ndarray:
    """Tissue intensities with texture, gamma, bias and the blur on the coarse lattice; thick slices averaged.
    Where the lattice is coarser than the native grid the blur is at least 0.7 coarse voxel (anti-aliasing)."""
    means = c.means.astype(np.float32)
    img = means[lab]
    for f in range(len(fields)):
        img += (c.tex_amp * c.tex_mix[:, f]).astype(np.float32)[lab] * fields[f]
    img = apply_gamma(c, img)
    u = (lat.uz[:, None, None].astype(np.float32), lat.ur[None, :, None].astype(np.float32),
         lat.uc[None, None, :].astype(np.float32))
    img = apply_bias(c, img, bias_field(c, u))
    steps = [float(np.median(np.diff(p))) if len(p) > 1 else 1.0 for p in (lat.uz, lat.ur, lat.uc)]
    sig = [0.0 if (k == 0 and n_sub > 1) else float(sigma_mm[k]) / steps[k] for k in range(3)]
    coarser = [steps[k] > 1.2 * fine_step[k] and not (k == 0 and n_sub > 1) for k in range(3)]
    sig = [max(s, 0.7) if coarser[k] else s for k, s in enumerate(sig)]
    if max(sig) > 0.2:
        img = ndimage.gaussian_filter(img, [s if s > 0.2 else 0.0 for s in sig], mode="nearest", truncate=3.0)
    if n_sub > 1:
        img = img.reshape(-1, n_sub, *img.shape[1:]).mean(axis=1)
    if c.modality != "CTA":
        np.maximum(img, 0.0, out=img)
    return np.ascontiguousarray(img, dtype=np.float32)


def _tube_values(c: Contrast, tube: Tube, u: np.ndarray) -> np.ndarray:
    """Intensity along a tube (per centreline point): tissue mean x gain x distal fading, gamma, bias."""
    if tube.kind == "vein":
        v = np.full(len(u), c.means[VEIN] * tube.gain)
    else:
        v = c.means[ARTERY] * tube.gain * (1.0 - c.art_fade * np.minimum(tube.arc / 250.0, 1.0))
    v = apply_gamma(c, v.astype(np.float32))
    return apply_bias(c, v, bias_field(c, (u[:, 0], u[:, 1], u[:, 2])))


def _flat(blk: tuple[slice, slice, slice], mask: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    k, r, q = np.nonzero(mask)
    return ((k + blk[0].start) * shape[1] + (r + blk[1].start)) * shape[2] + (q + blk[2].start)


def tube_entries(c: Contrast, lat: Lattice, tubes: list[Tube], sigma: float, offsets: tuple[float, ...],
                 slab_gain: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """Sparse blurred occupancy of every tube on the full lattice (thick slices: averaged over sub-offsets)."""
    out = []
    centre = int(np.argmin(np.abs(offsets)))
    for t in tubes:
        u = lat.to_grid(t.points)
        vals = _tube_values(c, t, u)
        for blk, sdfs, i0 in tube_blocks(lat, u, t.radii, 3.0 * sigma + 0.5, offsets):
            r = float(np.mean(t.radii[i0:i0 + 5]))
            occ = occupancy(sdfs[0], sigma, r) if len(sdfs) == 1 else sum(occupancy(s, sigma, r) for s in sdfs)
            if len(sdfs) > 1:
                occ /= np.float32(len(sdfs))
            m = occ > 0.02
            if not m.any():
                continue
            idx = _flat(blk, m, lat.shape)
            k = idx // (lat.shape[1] * lat.shape[2])
            val = np.float32(vals[i0]) * (slab_gain[k] if t.kind == "artery" else np.ones(len(k), np.float32))
            if t.kind == "artery" and c.lumen_profile:  # brighter (or darker) axis than wall
                val *= 1.0 + np.float32(c.lumen_profile) * np.clip(-sdfs[centre][m] / np.float32(r), 0.0, 1.0)
            prio = 2 if t.label else (1 if t.kind == "artery" else 0)
            out.append((idx, occ[m] + np.float32(1e-4 * prio), val.astype(np.float32), np.full(len(idx), t.label,
                        np.uint8), sdfs[centre][m] <= 0))
    return out


def _sac_sdf(sac: Sac, lat: Lattice, blk: tuple[slice, slice, slice], dzo: float) -> np.ndarray:
    """Signed distance to the sac (dome, lobes, bleb, neck) on a block, grid frame."""
    rot_g = (lat.axes @ lat.head_to_lps[:3, :3] @ sac.rot.T).T  # rows: dome axes in the grid frame
    cg, pg = lat.to_grid(sac.centre), lat.to_grid(sac.parent_point)
    z, r, q = (np.asarray(a[b], np.float32) for a, b in zip((lat.uz, lat.ur, lat.uc), blk, strict=True))
    z = z + np.float32(dzo)
    sdf = ellipsoid_sdf(z - np.float32(cg[0]), r - np.float32(cg[1]), q - np.float32(cg[2]), rot_g, sac.semi)
    k = 0.25 * sac.neck
    for centre, rad in sac.spheres:
        sg = lat.to_grid(centre)
        d = np.sqrt((z - sg[0])[:, None, None] ** 2 + (r - sg[1])[None, :, None] ** 2 + (q - sg[2])[None, None, :] ** 2)
        sdf = smooth_union(sdf, (d - rad).astype(np.float32), 0.3 * rad)
    neck = _seg_sdf(z - np.float32(pg[0]), r - np.float32(pg[1]), q - np.float32(pg[2]), (cg - pg).astype(np.float32),
                    sac.neck / 2, sac.neck / 2)
    return smooth_union(sdf, neck, k).astype(np.float32)


def sac_entries(rng: np.random.Generator, c: Contrast, lat: Lattice, sacs: list[Sac], sigma: float,
                offsets: tuple[float, ...], slab_gain: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """Sparse occupancy of each sac; its intensity is the parent artery's there, with patchy inhomogeneity."""
    out = []
    centre = int(np.argmin(np.abs(offsets)))
    for sac in sacs:
        cg = lat.to_grid(sac.centre)
        pad = sac.radius + 3.0 * sigma + 1.0
        blk = lat.block(cg - pad - [max(np.abs(offsets)), 0, 0], cg + pad + [max(np.abs(offsets)), 0, 0])
        if blk is None:
            continue
        sdfs = [_sac_sdf(sac, lat, blk, o) for o in offsets]
        occ = sum(occupancy(s, sigma, float(sac.semi.min())) for s in sdfs) / np.float32(len(sdfs))
        m = occ > 0.02
        idx = _flat(blk, m, lat.shape)
        i_par = int(np.argmin(np.linalg.norm(sac.parent.points - sac.parent_point, axis=1)))
        v_par = float(_tube_values(c, sac.parent, lat.to_grid(sac.parent.points))[i_par])
        ref = float(apply_gamma(c, np.array([c.sac_ref], np.float32))[0])
        strength = c.sac_patch * min(1.0, sac.dome / 8.0 + 0.3)
        k = np.nonzero(m)
        u = np.stack([lat.uz[blk[0]][k[0]], lat.ur[blk[1]][k[1]], lat.uc[blk[2]][k[2]]], 1) - cg
        waves = rng.normal(0, 1, (3, 3)) * (2 * np.pi / max(sac.dome * 0.6, 1.0))
        patt = sum(np.cos(u @ w + rng.uniform(0, 2 * np.pi)) for w in waves) / 3.0
        patch = np.clip(0.5 + patt, 0.0, 1.0) * strength
        kk = idx // (lat.shape[1] * lat.shape[2])
        val = (v_par + (ref - v_par) * patch) * slab_gain[kk]
        out.append((idx, occ[m] + np.float32(3e-4), val.astype(np.float32), np.full(len(idx), sac.label, np.uint8),
                    sdfs[centre][m] <= 0))
    return out


def merge_entries(parts: list[tuple[np.ndarray, ...]]) -> Entries:
    """Keep, per voxel, the structure with the largest occupancy (ties: labelled arteries, sacs)."""
    if not parts:
        e = np.zeros(0)
        return Entries(e.astype(np.int64), e.astype(np.float32), e.astype(np.float32), e.astype(np.uint8),
                       e.astype(bool))
    idx, occ, val, lab, ins = (np.concatenate([p[j] for p in parts]) for j in range(5))
    key = idx.astype(np.float64) + 0.4 * (1.01 - np.minimum(occ, 1.01))  # by voxel, then largest occupancy first
    order = np.argsort(key)
    idx, occ, val, lab, ins = idx[order], occ[order], val[order], lab[order], ins[order]
    first = np.r_[True, idx[1:] != idx[:-1]]
    return Entries(idx[first], np.minimum(occ[first], 1.0), val[first], lab[first], ins[first])


def _noise_chunk(c: Contrast, img: np.ndarray, gen: torch.Generator) -> None:
    """Add the series' noise to a slab of slices in place (CT Gaussian, optionally kernel-correlated; MR Rician)."""
    n1 = torch.randn(img.shape, generator=gen, dtype=torch.float32).numpy()
    if c.noise_corr > 0:  # in-plane kernel (a, 1 - 2a, a) along rows then columns, renormalised to unit variance
        a, width = np.float32(c.noise_corr / 2), img.shape[2]
        for shift in (1, width):
            flat = n1.reshape(-1)
            out = flat * np.float32(1 - 2 * a)
            out[shift:] += a * flat[:-shift]
            out[:-shift] += a * flat[shift:]
            n1 = out.reshape(img.shape)
        n1 /= np.float32((1 - 2 * a) ** 2 + 2 * a * a)
    n1 *= np.float32(c.noise_sigma)
    img += n1
    if c.noise_kind == "rician":
        n2 = torch.randn(img.shape, generator=gen, dtype=torch.float32).numpy()
        n2 *= np.float32(c.noise_sigma)
        np.square(n2, out=n2)
        np.square(img, out=img)
        img += n2
        np.sqrt(img, out=img)
