"""The head as implicit surfaces: scalp, skull (with diploe and a skull base), brain (noise-perturbed envelope,
cortex folded by the zero set of a band-limited noise, interhemispheric fissure, cisterns carved around the basal
arteries), ventricles, deep grey matter, orbits, sinuses, neck.

Coordinates here are the *anatomy frame*: the spec's MNI-like RAS millimetres before the per-series morph (a small
anisotropic scale and a smooth displacement field) that turns it into the head frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .sdf import WaveNoise, chain, ellipsoid, round_cone, smax, smin, upsample

Arr = np.ndarray
Field = Callable[[Arr, Arr, Arr], Arr]


class Morph:
    """Anatomy frame -> head frame: a smooth random displacement then a per-axis scale (head shape)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.aniso = 1.0 + rng.uniform(-0.05, 0.05, 3)
        self.amp = np.array([1.0, 2.5, 2.5]) * rng.uniform(0.5, 1.0, 3)
        self.fields = [WaveNoise(rng, 4, (90.0, 180.0)) for _ in range(3)]

    def displacement(self, p: np.ndarray) -> np.ndarray:
        return np.stack([a * f.at_points(p) for a, f in zip(self.amp, self.fields, strict=True)], axis=-1)

    def to_head(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, float).reshape(-1, 3)
        return (p + self.displacement(p)) * self.aniso

    def to_anat(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Head-frame coordinate arrays -> anatomy frame (first-order inverse of the displacement)."""
        u = [c / np.float32(s) for c, s in zip((x, y, z), self.aniso, strict=True)]
        return tuple((c - np.float32(a) * f(*u)).astype(np.float32) for c, a, f in
                     zip(u, self.amp, self.fields, strict=True))


@dataclass
class Prim:
    """One painted region: a tissue, its distance field and the anatomy-frame box it lives in."""

    tissue: str
    sdf: Field
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]


def _box(c, ax, pad=3.0):
    return tuple(ci - ai - pad for ci, ai in zip(c, ax, strict=True)), tuple(
        ci + ai + pad for ci, ai in zip(c, ax, strict=True))


def _ell_prim(tissue: str, c, ax) -> Prim:
    lo, hi = _box(c, ax)
    return Prim(tissue, lambda x, y, z, c=c, ax=ax: ellipsoid(x, y, z, c, ax), lo, hi)


def _chain_prim(tissue: str, pts, radii) -> Prim:
    p = np.asarray(pts, float)
    r = float(max(radii))
    return Prim(tissue, lambda x, y, z: chain(x, y, z, pts, radii), tuple(p.min(0) - r - 3), tuple(p.max(0) + r + 3))


def _mirror(p):
    return (-p[0], p[1], p[2])


class Head:
    """Per-series head shape: envelope, skull, brain, ventricles and the small structures, all as distance fields."""

    def __init__(self, rng: np.random.Generator) -> None:
        u = rng.uniform
        self.atrophy = float(u(0, 1))
        self.cer_c = np.array([0.0, -17.0, 12.0]) + rng.normal(0, 1.2, 3) * [0.3, 1, 1]
        self.cer_ax = np.array([69.0, 88.0, 70.0]) * u(0.96, 1.04, 3)
        self.env_noise, self.env_amp = WaveNoise(rng, 6, (40.0, 90.0)), float(u(1.0, 2.5))
        self.floor_base, self.temporal_depth = float(u(-24, -20)), float(u(20, 26))
        self.cb_c = np.array([0.0, -65.0, -36.0]) + rng.normal(0, 1.5, 3) * [0, 1, 1]
        self.cb_ax = np.array([52.0, 34.0, 31.0]) * u(0.94, 1.06, 3)
        self.gap = float(u(1.5, 2.5) + 2.0 * self.atrophy)
        self.skull_t, self.skull_noise = float(u(5.0, 7.5)), WaveNoise(rng, 5, (30.0, 80.0))
        self.scalp_t, self.fat_t, self.cort_t = float(u(4.0, 6.0)), float(u(1.5, 3.0)), float(u(1.2, 2.0))
        self.skin_t = float(u(0.8, 1.6))
        self.gm_t = float(u(2.3, 3.2))
        self.sulci = WaveNoise(rng, 16, (11.0, 17.0))
        self.sulcal_grad = float(np.sqrt(np.mean(self.sulci.omega**2)))
        self.sulcal_w = float(u(0.5, 1.0) + 1.0 * self.atrophy)
        self.sulcal_depth = float(u(8.0, 14.0))
        self.vent = float(u(0.75, 1.2) * (1 + 0.5 * self.atrophy))
        self.fissure_w = float(u(1.0, 2.5) + self.atrophy)
        self.neck_ax = (float(u(52, 62)), float(u(48, 56)))
        self.choroid_calc = bool(rng.random() < 0.5)
        self.pineal_calc = bool(rng.random() < 0.5)
        self.cisterns: Field | None = None  # set once the arteries are known (CSF sleeves)

    # ---- envelopes -------------------------------------------------------------------------------------------
    def tent_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height of the tentorium: an apex along the straight sinus sloping down to the transverse sinuses."""
        apex = 4.0 + (np.clip(y, -100.0, -50.0) + 50.0) * (12.0 / 50.0)
        return apex - (apex + 20.0) * np.clip(np.abs(x) / 55.0, 0.0, 1.0)

    def floor_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Lower limit of the cerebrum: anterior fossa, deeper middle (temporal) fossae, tentorium behind."""
        temporal = np.exp(-(((np.abs(x) - 38.0) / 16.0) ** 2) - ((y + 5.0) / 24.0) ** 2)
        front = self.floor_base - self.temporal_depth * temporal
        w = np.clip((-y - 35.0) / 14.0, 0.0, 1.0)
        return front * (1 - w) + (self.tent_z(x, y) + 1.5) * w

    def cerebrum(self, x: Arr, y: Arr, z: Arr) -> Arr:
        e = ellipsoid(x, y, z, self.cer_c, self.cer_ax) + np.float32(self.env_amp) * self.env_noise(x, y, z)
        return smax(e, self.floor_z(x, y) - z, 6.0)

    def cerebellum(self, x: Arr, y: Arr, z: Arr) -> Arr:
        return smax(ellipsoid(x, y, z, self.cb_c, self.cb_ax), z - self.tent_z(x, y) + 1.5, 3.0)

    def brainstem(self, x: Arr, y: Arr, z: Arr) -> Arr:
        stem = round_cone(x, y, z, (0, -22, -5), (0, -37, -72), 12.0, 8.5)
        return smin(stem, ellipsoid(x, y, z, (0, -31, -36), (16, 13, 14)), 4.0)

    def brain_env(self, x: Arr, y: Arr, z: Arr) -> Arr:
        return smin(self.cerebrum(x, y, z), smin(self.cerebellum(x, y, z), self.brainstem(x, y, z), 6.0), 8.0)

    def intracranial(self, x: Arr, y: Arr, z: Arr) -> Arr:
        canal = round_cone(x, y, z, (0, -38, -62), (0, -30, -260), 9.0, 8.0)
        out = smin(self.brain_env(x, y, z) - np.float32(self.gap), canal, 6.0)
        return out if self.cisterns is None else smin(out, self.cisterns(x, y, z), 2.0)

    def fissure_region(self, x: Arr, y: Arr, z: Arr) -> Arr:
        """Where the interhemispheric fissure may open: outside the deep core (callosum, diencephalon) and, behind
        y = -45, above the tentorium (so the vermis stays whole)."""
        core = ellipsoid(x, y, z, (0, -5, 0), (20, 38, 26))
        below_tent = np.where(y < -45.0, self.tent_z(x, y) - z, np.float32(-100.0))
        return np.maximum(-core, below_tent)

    def fissure(self, x: Arr, y: Arr, z: Arr) -> Arr:
        return np.maximum(np.abs(x) - np.float32(0.5 * self.fissure_w), self.fissure_region(x, y, z))

    def brain_surface(self, x: Arr, y: Arr, z: Arr) -> Arr:
        """The pial surface without sulci or cisterns: envelope minus the interhemispheric fissure (medial faces)."""
        return smax(self.brain_env(x, y, z), -self.fissure(x, y, z), 1.0)

    def brain_raw(self, x: Arr, y: Arr, z: Arr, env: Arr | None = None, cis: Arr | None = None) -> Arr:
        env = self.brain_env(x, y, z) if env is None else env
        out = smax(env, -self.fissure(x, y, z), 1.0)
        if cis is None and self.cisterns is not None:
            cis = self.cisterns(x, y, z)
        return out if cis is None else smax(out, -cis, 1.5)

    def sulcal_noise(self, x: Arr, y: Arr, z: Arr) -> Arr:
        """The folding noise sampled on the direction from the brain centre (radius 70 mm), so its zero set, the
        sulci, runs perpendicular to the surface like real sulci rather than forming closed islands."""
        c = self.cer_c
        dx, dy, dz = x - np.float32(c[0]), y - np.float32(c[1]), z - np.float32(c[2] - 10.0)
        rho = np.maximum(np.sqrt(dx * dx + dy * dy + dz * dz), np.float32(5.0))
        s = np.float32(70.0) / rho
        deep = np.clip((np.float32(42.0) - rho) / np.float32(8.0), 0.0, 1.0)  # no folds near the centre (the
        return self.sulci(dx * s, dy * s, dz * s) + np.float32(4.0) * deep  # projected pattern gets dense there)

    def brain_from(self, raw: np.ndarray, noise: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Fold the cortex: carve sulci (a slab around the noise's zero set, limited in depth) out of the raw brain.
        ``noise`` is overwritten."""
        np.abs(noise, out=noise)
        noise *= np.float32(-1.0 / self.sulcal_grad)
        noise += np.float32(0.5 * self.sulcal_w)
        np.minimum(noise, raw + np.float32(self.sulcal_depth), out=noise)
        return np.maximum(raw, noise, out=out)

    def skull_outer(self, x: Arr, y: Arr, z: Arr) -> Arr:
        t = self.skull_t + 1.0 * self.skull_noise(x, y, z) + 2.0 * np.clip((-y - 60.0) / 40.0, 0.0, 1.0)
        return self.intracranial(x, y, z) - t.astype(np.float32)

    def bone_shell(self, x: Arr, y: Arr, z: Arr) -> Arr:
        shell = np.maximum(self.skull_outer(x, y, z), -self.intracranial(x, y, z))
        return np.maximum(shell, -74.0 - z)

    def head(self, x: Arr, y: Arr, z: Arr, skull_outer: Arr | None = None) -> Arr:
        outer = self.skull_outer(x, y, z) if skull_outer is None else skull_outer
        out = outer - np.float32(self.scalp_t)
        face = smin(ellipsoid(x, y, z, (0, 52, -48), (47, 38, 42)),
                    round_cone(x, y, z, (0, 86, -26), (0, 96, -52), 8.0, 9.0), 6.0)
        jaw = smin(ellipsoid(x, y, z, (0, 42, -92), (42, 36, 22)),  # mandible region, and the skull base block:
                   ellipsoid(x, y, z, (0, 2, -62), (self.neck_ax[0] + 6, 58, 34)), 12.0)  # pharynx, parotids, muscles
        neck = ellipsoid(x, y, z, (0, -15, -210), (self.neck_ax[0], self.neck_ax[1], 150))
        ears = np.minimum(ellipsoid(x, y, z, (78, -18, -32), (8, 14, 24)),
                          ellipsoid(x, y, z, (-78, -18, -32), (8, 14, 24)))
        return smin(smin(smin(out, face, 12.0), smin(jaw, neck, 15.0), 15.0), ears, 3.0)

    # ---- painting order ------------------------------------------------------------------------------------------
    def small_prims_outer(self) -> list[Prim]:
        """Skull base bones, air spaces, orbits, neck fat: painted after the skull, before the intracranial CSF."""
        p: list[Prim] = []
        for s in (1, -1):
            p.append(_chain_prim("dense_bone", [(s * 17, -11, -45), (s * 35, -24, -44), (s * 53, -34, -42)], [8, 9, 8]))
        p.append(_chain_prim("bone", [(0, -6, -38), (0, -18, -55), (0, -28, -69)], [7, 8, 6]))
        p.append(_chain_prim("marrow", [(0, -6, -38), (0, -18, -55), (0, -28, -69)], [4, 5, 3]))
        p.append(_ell_prim("bone", (0, 8, -47), (12, 15, 11)))  # sphenoid body, medial to the cavernous sinuses
        for i, zc in enumerate((-84.0, -100.0, -116.0, -132.0)):
            p.append(_ell_prim("bone", (0, -14 + 2 * i, zc), (9, 8, 6.5)))
            p.append(_ell_prim("marrow", (0, -14 + 2 * i, zc), (6, 5, 4)))
            p.append(_ell_prim("bone", (0, -48 + i, zc + 2), (16, 7, 5)))
        p.append(_chain_prim("bone", [(44, 8, -62), (44, 30, -96), (24, 64, -102), (0, 74, -102), (-24, 64, -102),
                                      (-44, 30, -96), (-44, 8, -62)], [5, 6, 6, 6, 6, 6, 5]))
        p += [_ell_prim("air", (0, 10, -47), (9, 11, 8)), _ell_prim("air", (0, 60, -56), (7, 24, 17))]
        p.append(_chain_prim("air", [(0, 30, -58), (0, 18, -80), (0, 14, -140)], [9, 8, 7]))
        for s in (1, -1):
            p += [_ell_prim("air", (s * 25, 55, -60), (13, 17, 15)),
                  _ell_prim("mastoid", (s * 52, -35, -46), (10, 12, 12)),
                  _ell_prim("fat", (s * 20, 8, -72), (8, 10, 12)),
                  _ell_prim("orbit_fat", (s * 28, 46, -38), (14, 20, 13)),
                  _ell_prim("vitreous", (s * 32, 64, -40), (12, 12, 12)),
                  _chain_prim("nerve", [(s * 30, 52, -40), (s * 18, 30, -34), (s * 7, 12, -30)], [2.5, 2.2, 2.0])]
        return p

    def small_prims_inner(self) -> list[Prim]:
        """Structures inside the brain and the sella, painted after grey and white matter."""
        v = self.vent
        p: list[Prim] = []
        for s in (1, -1):
            p += [_ell_prim("deep_gm", (s * 12, 12, 8), (5, 9, 8)), _ell_prim("deep_gm", (s * 22, 2, 0), (7, 14, 9)),
                  _ell_prim("deep_gm", (s * 10, -18, 6), (8, 14, 9))]
        for s in (1, -1):
            lat = [(s * 9, 24, 10), (s * 12, 10, 16), (s * 15, -10, 22), (s * 22, -30, 18), (s * 27, -40, 12),
                   (s * 22, -62, 8)]
            p.append(_chain_prim("csf", lat, [3 * v, 5 * v, 4.5 * v, 5 * v, 7 * v, 2.5 * v]))
            temporal_horn = [(s * 27, -40, 12), (s * 32, -28, -6), (s * 30, -12, -18)]
            p.append(_chain_prim("csf", temporal_horn, [6 * v, 3.5 * v, 2.5 * v]))
        p += [_ell_prim("csf", (0, -10, 2), (2.5 * v, 14, 10)), _ell_prim("csf", (0, -48, -36), (7 * v, 5 * v, 8)),
              _chain_prim("csf", [(0, -30, -2), (0, -44, -28)], [1.3, 1.3])]
        for s in (1, -1):
            p.append(_ell_prim("calc" if self.choroid_calc else "choroid", (s * 26, -39, 13), (3.5, 6, 3.5)))
            p.append(_chain_prim("choroid", [(s * 14, 0, 18), (s * 16, -15, 21), (s * 24, -34, 15)], [1.2, 1.5, 2]))
        p.append(_ell_prim("calc" if self.pineal_calc else "deep_gm", (0, -36, 6), (3, 4, 3)))
        for s in (1, -1):
            p.append(_ell_prim("venous", (s * 14, -1, -36), (6, 10, 6)))
        p.append(_ell_prim("venous", (0, -1, -37), (12, 4, 3)))
        p.append(_ell_prim("pituitary", (0, -1, -35.5), (6, 5, 4)))
        p.append(Prim("dura", self.falx, (-3, -110, -20), (3, 70, 90)))
        p.append(_chain_prim("cord", [(0, -37, -66), (0, -30, -260)], [6.0, 5.5]))
        return p

    def falx(self, x: Arr, y: Arr, z: Arr) -> Arr:
        """The falx: a 1 mm dural sheet in the fissure (enhancing on T1post, faintly dense on CT)."""
        sheet = np.maximum(np.abs(x) - 0.5, self.fissure_region(x, y, z) + 1.0)
        return np.maximum(sheet, self.brain_env(x, y, z) - np.float32(0.5 * self.gap))

    def coarse_fields(self, x: Arr, y: Arr, z: Arr) -> dict[str, np.ndarray]:
        """The whole-head fields on the coarse grid, sharing the expensive envelopes between them."""
        env = self.brain_env(x, y, z)
        cis = self.cisterns(x, y, z) if self.cisterns is not None else None
        canal = round_cone(x, y, z, (0, -38, -62), (0, -30, -260), 9.0, 8.0)
        ic = smin(env - np.float32(self.gap), canal, 6.0)
        if cis is not None:
            ic = smin(ic, cis, 2.0)
        t = self.skull_t + 1.0 * self.skull_noise(x, y, z) + 2.0 * np.clip((-y - 60.0) / 40.0, 0.0, 1.0)
        outer = ic - t.astype(np.float32)
        shell = np.maximum(np.maximum(outer, -ic), -74.0 - z)
        return {"head": self.head(x, y, z, outer), "bone_shell": shell, "intracranial": ic,
                "brain_raw": self.brain_raw(x, y, z, env, cis), "sulci": self.sulcal_noise(x, y, z)}


def _pad_odd(a: np.ndarray) -> np.ndarray:
    """Extend each even-length axis by one linearly extrapolated sample (so [::2] keeps both ends)."""
    for axis in range(a.ndim):
        if a.shape[axis] % 2 == 0:
            last = np.take(a, [-1], axis=axis)
            a = np.concatenate([a, 2 * last - np.take(a, [-2], axis=axis)], axis=axis)
    return a


def sleeve_field(points: np.ndarray, radii: np.ndarray, extra: list[tuple]) -> Field:
    """CSF spaces around the basal arteries: distance to the nearest sample of the arteries' centrelines minus a
    sleeve radius, united with the named cisterns (ellipsoids)."""
    from scipy.spatial import cKDTree

    tree = cKDTree(points)
    lo, hi = points.min(0) - radii.max() - 2, points.max(0) + radii.max() + 2

    def field(x: Arr, y: Arr, z: Arr) -> Arr:
        """On a 3D grid the tree is queried on every other point and the result interpolated (it is smooth)."""
        if x.ndim == 3 and min(x.shape) >= 5:
            pads = [_pad_odd(c) for c in np.broadcast_arrays(x, y, z)]
            half = exact(*(c[::2, ::2, ::2] for c in pads))
            full = upsample(half, (2, 2, 2), pads[0].shape)
            return np.ascontiguousarray(full[: x.shape[0], : x.shape[1], : x.shape[2]])
        return exact(x, y, z)

    def exact(x: Arr, y: Arr, z: Arr) -> Arr:
        shape = np.broadcast_shapes(x.shape, y.shape, z.shape)
        out = np.full(shape, 50.0, np.float32)
        xb, yb, zb = (np.broadcast_to(c, shape) for c in (x, y, z))
        inside = (xb > lo[0]) & (xb < hi[0]) & (yb > lo[1]) & (yb < hi[1]) & (zb > lo[2]) & (zb < hi[2])
        if inside.any():
            q = np.stack([xb[inside], yb[inside], zb[inside]], axis=1)
            d, idx = tree.query(q, distance_upper_bound=float(radii.max() + 4))
            ok = np.isfinite(d)
            vals = np.full(len(q), 50.0, np.float32)
            vals[ok] = d[ok] - radii[idx[ok]]
            out[inside] = vals
        for c, ax in extra:
            out = np.minimum(out, ellipsoid(x, y, z, c, ax))
        return out

    return field


CISTERNS = [((0, -2, -22), (15, 14, 6)), ((0, -17, -23), (7, 7, 6)), ((0, -17, -38), (9, 5, 17)),
            ((0, -70, -62), (20, 14, 10)), ((0, -44, -4), (12, 9, 6))]
