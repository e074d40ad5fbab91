"""Sampling the implicit scene on the acquisition grid.

Background: the whole-head distance fields are evaluated on a coarse subsampling of the acquisition grid (~2.5 mm),
interpolated (they are smooth) to a shading grid, and painted in anatomical order with a box-filter partial volume;
the shaded image is interpolated to the native grid. Vessels and aneurysms are evaluated exactly at every native
sample inside their own boxes (capsule chains with varying radius, per-sample signal) and composited; an aneurysm is
smoothly united with its parent, adding only the coverage the parent does not already give. Thick 2D slices are
sub-sampled along the slice axis and averaged.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from .anatomy import Head, Morph, Prim
from .aneurysms import AneurysmGeom
from .contrast import Contrast, slab_profile
from .geometry import Acquisition, Grids, Pose, head_coords
from .sdf import occupancy, smin, tube_occupancy, upsample


class Background:
    """Paints tissues on the shading grid S from fields on the coarse grid C."""

    def __init__(self, acq: Acquisition, pose: Pose, morph: Morph, grids: Grids) -> None:
        self.acq, self.pose, self.morph, self.grids = acq, pose, morph, grids
        self.c_axes, self.s_axes = grids.c_axes, grids.s_axes
        self.s_shape = tuple(len(a) for a in self.s_axes)
        self.head_xyz = head_coords(acq, pose, self.c_axes)
        self.anat = morph.to_anat(*self.head_xyz)
        hk = acq.thickness / acq.n_sub if acq.n_sub > 1 else self.s_axes[0][1] - self.s_axes[0][0]
        steps = [hk] + [ax[1] - ax[0] for ax in self.s_axes[1:]]
        self.h = float(np.prod(steps) ** (1 / 3))
        size = int(np.prod(self.s_shape))
        self._scratch = [np.empty(size, np.float32) for _ in range(4)]  # two fields, occupancy, blend term

    def buffer(self, i: int, shape: tuple[int, ...]) -> np.ndarray:
        """A reusable shading-grid-sized work array viewed as ``shape`` (fresh memory is the expensive part)."""
        return self._scratch[i][: int(np.prod(shape))].reshape(shape)

    def c_box(self, lo: tuple, hi: tuple, pad: float = 4.0) -> tuple[slice, slice, slice] | None:
        """Coarse-grid index box holding an anatomy-frame box (its corners carried through morph and pose)."""
        corners = np.array([[x, y, z] for x in (lo[0] - pad, hi[0] + pad) for y in (lo[1] - pad, hi[1] + pad)
                            for z in (lo[2] - pad, hi[2] + pad)])
        u = self.acq.to_grid(self.pose.to_lps(self.morph.to_head(corners)))
        out = []
        for i, ax in enumerate(self.c_axes):
            i0 = max(0, int(np.searchsorted(ax, u[:, i].min())) - 1)
            i1 = min(len(ax), int(np.searchsorted(ax, u[:, i].max())) + 1)
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)

    def _factors(self) -> tuple:
        if self.grids.coarse_k > 0:
            return ((self.c_axes[0], self.s_axes[0]), *self.grids.g[1:])
        return self.grids.g

    def _s_range(self, axis: int, i0: int, i1: int) -> tuple[slice, object]:
        """Shading-grid slice covered by coarse indices [i0, i1) along ``axis``, and how to interpolate it."""
        if axis == 0 and self.grids.coarse_k > 0:
            c, s = self.c_axes[0], self.s_axes[0]
            j0, j1 = int(np.searchsorted(s, c[i0], "left")), int(np.searchsorted(s, c[i1 - 1], "right"))
            return slice(j0, j1), (c[i0:i1], s[j0:j1])
        g = self.grids.g[axis]
        s0 = i0 * g
        return slice(s0, s0 + min((i1 - 1 - i0) * g + 1, self.s_shape[axis] - s0)), g

    def to_s(self, arr: np.ndarray, c_sl: tuple[slice, ...], band: float, mask_src: np.ndarray | None = None,
             slot: int = 0) -> tuple[tuple, np.ndarray] | None:
        """Shrink a coarse sub-box (``arr`` lives on ``c_sl``) to where the field (or ``mask_src``) is below
        ``band``, plus a cell, and upsample it to the shading grid."""
        mask = (arr if mask_src is None else mask_src) < band
        if not mask.any():
            return None
        box = []
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            nz = np.nonzero(mask.any(axis=other))[0]
            lo, hi = max(0, nz[0] - 1), min(arr.shape[axis], nz[-1] + 2)
            if hi - lo < 2:
                lo, hi = max(0, hi - 2), max(0, hi - 2) + 2
            if hi > arr.shape[axis]:
                return None
            box.append((lo, hi))
        ranges = [self._s_range(ax, c_sl[ax].start + a, c_sl[ax].start + b) for ax, (a, b) in enumerate(box)]
        sl = tuple(r[0] for r in ranges)
        shape = tuple(x.stop - x.start for x in sl)
        if min(shape) <= 0:
            return None
        sub = arr[tuple(slice(a, b) for a, b in box)]
        return sl, upsample(sub, tuple(r[1] for r in ranges), shape, out=self.buffer(slot, shape))

    def paint(self, img: np.ndarray, s_sl: tuple[slice, ...], sdf: np.ndarray, value: float,
              offset: float = 0.0) -> None:
        """Blend ``value`` into the image with the box-filter coverage of the surface ``sdf + offset``."""
        occ = self.buffer(2, sdf.shape)
        np.multiply(sdf, np.float32(-1.0 / self.h), out=occ)
        occ += np.float32(0.5 - offset / self.h)
        np.clip(occ, 0.0, 1.0, out=occ)
        view = img[s_sl]
        term = self.buffer(3, sdf.shape)
        np.subtract(np.float32(value), view, out=term)
        term *= occ
        view += term

    def prim(self, img: np.ndarray, p: Prim, values: dict[str, float]) -> None:
        c_sl = self.c_box(p.lo, p.hi)
        if c_sl is None:
            return
        arr = p.sdf(*(a[c_sl] for a in self.anat))
        res = self.to_s(arr, c_sl, 0.5 * self.h + 1e-3)
        if res is not None:
            self.paint(img, res[0], res[1], values[p.tissue])

    def render(self, head: Head, con: Contrast) -> np.ndarray:
        """The shaded background on the S grid (bias / texture and TOF slab profile included)."""
        v = con.values
        img = np.full(self.s_shape, np.float32(v["air"]), np.float32)
        full = tuple(slice(0, len(ax)) for ax in self.c_axes)
        fields = head.coarse_fields(*self.anat)
        band = 0.5 * self.h + 1e-3
        skin = head.skin_t
        for name, layers in (("head", (("soft", 0.0), ("fat", skin), ("soft", skin + head.fat_t))),
                             ("bone_shell", (("bone", 0.0), ("marrow", head.cort_t)))):
            res = self.to_s(fields.pop(name), full, band)
            if res is not None:
                for tissue, offset in layers:
                    self.paint(img, res[0], res[1], v[tissue], offset)
        for p in head.small_prims_outer():
            self.prim(img, p, v)
        res = self.to_s(fields.pop("intracranial"), full, band)
        if res is not None:
            self.paint(img, res[0], res[1], v["csf"])
        raw = fields.pop("brain_raw")
        res = self.to_s(raw, full, band)
        if res is not None:
            s_sl, raw_s = res
            noise = self.to_s(fields.pop("sulci"), full, band, mask_src=raw, slot=1)[1]
            head.brain_from(raw_s, noise, out=raw_s)
            self.paint(img, s_sl, raw_s, v["gm"])
            self.paint(img, s_sl, raw_s, v["wm"], head.gm_t)
        for p in head.small_prims_inner():
            self.prim(img, p, v)
        mod = upsample(con.modulation(*self.head_xyz), self._factors(), self.s_shape, out=self.buffer(0, self.s_shape))
        if con.is_ct:
            img += mod
        else:
            img *= mod
        if con.modality == "MRA":
            img *= slab_profile(con, self.acq, self.s_axes[0])[:, None, None]
        return img


def _segment(kk, rr, cc, a, ba, bb, ra, dr, j):
    """Distance terms of segment j (per voxel) of a polyline: (sdf, t, q)."""
    dk, drr, dc = kk - a[j, 0], rr - a[j, 1], cc - a[j, 2]
    bk, br, bc = ba[j, 0], ba[j, 1], ba[j, 2]
    t = np.clip((dk * bk + drr * br + dc * bc) / bb[j], 0.0, 1.0)
    qk, qr, qc = dk - t * bk, drr - t * br, dc - t * bc
    return np.sqrt(qk * qk + qr * qr + qc * qc) - (ra[j] + dr[j] * t), t, (qk, qr, qc)


def capsule_field(kk: np.ndarray, rr: np.ndarray, cc: np.ndarray, a: np.ndarray, b: np.ndarray, ra: np.ndarray,
                  rb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """Nearest round cone of a polyline (segments a[i]-b[i], b[i] = a[i+1]) at every box voxel:
    (sdf, t along it, segment index, offset q).

    The nearest centreline sample comes from separable squared distances (two full-size additions); only the two
    segments on either side of it are then evaluated exactly."""
    m = len(a)
    ba = (b - a).astype(np.float32)
    bb = np.maximum((ba * ba).sum(1), 1e-6).astype(np.float32)
    dr = (rb - ra).astype(np.float32)
    pts = np.vstack([a, b[-1:]])
    sh = (m + 1, 1, 1, 1)
    d2 = (kk[None] - pts[:, 0].reshape(sh)) ** 2 + (rr[None] - pts[:, 1].reshape(sh)) ** 2
    d2 = d2 + (cc[None] - pts[:, 2].reshape(sh)) ** 2
    near = np.argmin(d2, axis=0)
    j1, j2 = np.clip(near - 1, 0, m - 1), np.minimum(near, m - 1)
    s1, t1, q1 = _segment(kk, rr, cc, a, ba, bb, ra, dr, j1)
    s2, t2, q2 = _segment(kk, rr, cc, a, ba, bb, ra, dr, j2)
    first = s1 <= s2
    q = tuple(np.where(first, x, y) for x, y in zip(q1, q2, strict=True))
    return np.where(first, s1, s2), np.where(first, t1, t2), np.where(first, j1, j2), q


class Vessels:
    """Composites tubes and aneurysms into the native render grid F (sub-slices included)."""

    def __init__(self, img: np.ndarray, lab: np.ndarray | None, acq: Acquisition, grids: Grids) -> None:
        self.img, self.lab = img, lab
        self.axes = grids.f_axes
        self.h = np.array(acq.voxel_h(), np.float32)
        self.h_mean = float(np.prod(self.h) ** (1 / 3))
        self.chunk = 8 if min(acq.pixel) < 1.0 else 16

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        out = []
        for i, ax in enumerate(self.axes):
            i0, i1 = int(np.searchsorted(ax, lo[i])), int(np.searchsorted(ax, hi[i], side="right"))
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)

    def coords(self, sl: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        kk, rr, cc = (ax[s].astype(np.float32) for ax, s in zip(self.axes, sl, strict=True))
        return kk[:, None, None], rr[None, :, None], cc[None, None, :]

    def directional_h(self, qk: np.ndarray, qr: np.ndarray, qc: np.ndarray) -> np.ndarray:
        """Box-filter width along the distance gradient: thick along the slice axis, thin in-plane."""
        rho = np.sqrt(qk * qk + qr * qr + qc * qc)
        inv = 1.0 / np.maximum(rho, 1e-4)
        h2 = (qk * inv * self.h[0]) ** 2 + (qr * inv * self.h[1]) ** 2 + (qc * inv * self.h[2]) ** 2
        return np.where(rho > 1e-3, np.sqrt(h2), np.float32(self.h_mean)).astype(np.float32)

    def segments(self, sl: tuple[slice, ...], pts: np.ndarray, rad: np.ndarray, j0: int, j1: int) -> tuple:
        """(sdf, radius, signal weight t, segment index, h) of segments j0..j1-1 over box ``sl``."""
        kk, rr, cc = self.coords(sl)
        sdf, t, j, q = capsule_field(kk, rr, cc, pts[j0:j1], pts[j0 + 1 : j1 + 1], rad[j0:j1], rad[j0 + 1 : j1 + 1])
        seg = j + j0
        r = rad[seg] + (rad[seg + 1] - rad[seg]) * t
        return sdf, r, t, seg, self.directional_h(*q)

    def tube(self, pts: np.ndarray, rad: np.ndarray, sig: np.ndarray, label: np.ndarray) -> None:
        """Composite one vessel (grid-frame mm samples), a chunk of segments at a time.

        Each chunk also evaluates two segments either side and composites only the voxels whose nearest segment is
        its own, so every voxel is covered once, by the segment nearest to it, without tube-sized work arrays."""
        pts, rad, sig = pts.astype(np.float32), rad.astype(np.float32), sig.astype(np.float32)
        n = len(pts)
        for i0 in range(0, n - 1, self.chunk):
            i1 = min(i0 + self.chunk, n - 1)
            cp = pts[i0 : i1 + 1]
            pad = float(rad[i0 : i1 + 1].max() + self.h.max() + 0.5)
            csl = self.box(cp.min(0) - pad, cp.max(0) + pad)
            if csl is None:
                continue
            sdf, r, t, seg, hh = self.segments(csl, pts, rad, max(0, i0 - 2), min(n - 1, i1 + 2))
            own = (seg >= i0) & (seg < i1)
            occ = tube_occupancy(sdf, r, hh)
            occ *= own
            view = self.img[csl]
            view += (sig[seg] + (sig[seg + 1] - sig[seg]) * t - view) * occ
            if self.lab is not None:
                put = (sdf <= 0) & own & (label[seg] > 0)
                self.lab[csl][put] = label[seg][put]

    def aneurysm(self, geom: AneurysmGeom, pts: np.ndarray, rad: np.ndarray, sig: np.ndarray, lumen_slow: float,
                 thrombus: float, label: int, step: float) -> None:
        """Composite a sac smoothly united with its parent: only the coverage the parent lacks is added."""
        lo, hi = geom.box()
        sl = self.box(lo - 2 * self.h.max(), hi + 2 * self.h.max())
        if sl is None:
            return
        i = geom.spec.index
        w = int(np.ceil((2 * geom.radius + 4.0) / step)) + 1
        j0, j1 = max(0, i - w), min(len(pts) - 1, i + w)
        pts, rad = pts.astype(np.float32), rad.astype(np.float32)
        sdf_p, r_p, _, _, h_p = self.segments(sl, pts, rad, j0, j1)
        kk, rr, cc = self.coords(sl)
        sac, thr, slow = geom.fields(kk, rr, cc)
        h_a = self.directional_h(kk - np.float32(geom.m[0]), rr - np.float32(geom.m[1]), cc - np.float32(geom.m[2]))
        union = smin(sac, sdf_p, 0.4 * float(rad[i]))
        own = sac < sdf_p
        o_u = tube_occupancy(union, np.where(own, np.float32(geom.radius), r_p), np.where(own, h_a, h_p))
        o_p = tube_occupancy(sdf_p, r_p, h_p)
        o_add = np.clip((o_u - o_p) / np.maximum(1.0 - o_p, 1e-3), 0.0, 1.0)
        view = self.img[sl]
        if thr is not None:
            view += (np.float32(thrombus) - view) * occupancy(thr, h_a)
        lumen = np.float32(sig[i]) * (1.0 - slow) + np.float32(lumen_slow) * slow
        view += (lumen - view) * o_add
        if self.lab is not None:
            lv = self.lab[sl]
            put = ((union <= 0) & own) | ((thr <= 0) if thr is not None else False)
            lv[put] = label


def centreline_labels(lab: np.ndarray, acq: Acquisition, pts_grid: np.ndarray, label: np.ndarray) -> None:
    """Label every native voxel a labelled centreline passes through (thin vessels on coarse grids included)."""
    keep = label > 0
    if not keep.any():
        return
    idx = np.rint(pts_grid[keep] / np.array([acq.slice_spacing, *acq.pixel])).astype(int)
    ok = np.all((idx >= 0) & (idx < np.array(lab.shape)), axis=1)
    lab[idx[ok, 0], idx[ok, 1], idx[ok, 2]] = label[keep][ok]


def _noise_pool(rng: np.random.Generator, shape2d: tuple[int, int], corr_px: float, layers: int = 4,
                pad: int = 48) -> np.ndarray:
    pool = rng.standard_normal((layers, shape2d[0] + pad, shape2d[1] + pad), dtype=np.float32)
    if corr_px > 0.05:
        for i in range(layers):
            pool[i] = gaussian_filter(pool[i], corr_px, mode="wrap")
            pool[i] /= pool[i].std()
    return pool


def _noise_slices(rng: np.random.Generator, pool: np.ndarray, n_slices: int, shape2d: tuple[int, int]):
    """Yield one unit-variance noise image per slice: the sum of two random crops of two different pool layers."""
    layers, pad = pool.shape[0], pool.shape[1] - shape2d[0]
    first = rng.integers(0, layers, n_slices)
    second = (first + 1 + rng.integers(0, layers - 1, n_slices)) % layers
    offs = rng.integers(0, pad + 1, (n_slices, 2, 2))
    h, w = shape2d
    for k in range(n_slices):
        a = pool[first[k], offs[k, 0, 0] : offs[k, 0, 0] + h, offs[k, 0, 1] : offs[k, 0, 1] + w]
        b = pool[second[k], offs[k, 1, 0] : offs[k, 1, 0] + h, offs[k, 1, 1] : offs[k, 1, 1] + w]
        yield (a + b) * np.float32(np.sqrt(0.5))


def add_noise(rng: np.random.Generator, img: np.ndarray, con: Contrast, pixel: float) -> None:
    """CT: correlated Gaussian noise, clipped to the 12-bit HU range. MR: ghosting, Rician noise, a global scale."""
    shape2d = img.shape[1:]
    if con.is_ct:
        pool = _noise_pool(rng, shape2d, con.noise_corr_mm / pixel)
        for k, n in enumerate(_noise_slices(rng, pool, img.shape[0], shape2d)):
            img[k] += np.float32(con.noise_sigma) * n
        np.clip(img, -1024.0, 3071.0, out=img)
        return
    if con.ghost is not None:
        amp, frac, axis = con.ghost
        shift = max(1, int(round(frac * img.shape[axis])))
        ghost = np.roll(img, shift, axis=axis)
        ghost += np.roll(img, -shift, axis=axis)
        img += np.float32(0.5 * amp) * ghost
        del ghost
    pool = _noise_pool(rng, shape2d, 0.0)
    sigma = np.float32(con.noise_sigma)
    real = _noise_slices(rng, pool, img.shape[0], shape2d)
    imag = _noise_slices(rng, pool, img.shape[0], shape2d)
    for k, (nr, ni) in enumerate(zip(real, imag, strict=True)):
        sl = img[k] + sigma * nr
        img[k] = np.sqrt(sl * sl + (sigma * ni) ** 2)
    img *= np.float32(con.scale)
