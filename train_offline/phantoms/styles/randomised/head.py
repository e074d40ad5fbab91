"""The randomised style's head: a tissue label map (scalp, fat, muscle, bone, CSF, grey and white matter, deep grey
nuclei, ventricles, eyes, air sinuses, dural sinuses) painted from analytic shapes onto a coarse lattice, plus the
venous tree. Shapes are ellipsoids and tubes in the head frame (RAS mm) with per-series scale, jitter and smooth
random perturbation; later shapes overwrite earlier ones (painter's order).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .anatomy import Tube, make_tube, spline
from .raster import Block, Lattice, tube_blocks

TISSUES = ["air", "soft", "fat", "muscle", "bone", "csf", "gm", "wm", "deep_gm", "ventricle", "eye", "vein", "artery"]
AIR, SOFT, FAT, MUSCLE, BONE, CSF, GM, WM, DEEP_GM, VENT, EYE, VEIN, ARTERY = range(len(TISSUES))
BRAIN = (GM, WM, DEEP_GM)


@dataclass
class HeadShape:
    """Per-series head geometry (head frame mm)."""

    scale: np.ndarray  # (3,) global anisotropic scale
    cerebrum_c: np.ndarray
    cerebrum_semi: np.ndarray
    floor_z: float  # anterior/middle cranial floor under the cerebrum
    t_csf: float  # subarachnoid CSF over the brain
    t_bone: float
    t_scalp: float
    t_fat: float
    t_cortex: float  # grey matter band: cortex thickness plus the depth of its folds
    t_temporalis: float
    ventricle_scale: float
    sinus_scale: float  # paranasal/sphenoid air size
    frontal_sinus: bool

    def p(self, xyz: tuple[float, float, float]) -> np.ndarray:
        """A template point, scaled into this head."""
        return np.asarray(xyz, dtype=np.float64) * self.scale


def draw_head(rng: np.random.Generator, scale: np.ndarray) -> HeadShape:
    """Random head proportions and layer thicknesses (spec: skull 5-8 mm, scalp 4-6 mm)."""
    return HeadShape(
        scale=scale,
        cerebrum_c=np.array([0.0, -17.0, 12.0]) * scale + rng.normal(0, 1.5, 3) * [0.3, 1, 1],
        cerebrum_semi=np.array([68.0, 88.0, 68.0]) * scale * rng.uniform(0.96, 1.04, 3),
        floor_z=float(-21.0 * scale[2] + rng.uniform(-2, 2)),
        t_csf=float(rng.uniform(1.5, 4.0)), t_bone=float(rng.uniform(5.0, 8.0)), t_scalp=float(rng.uniform(4.0, 6.0)),
        t_fat=float(rng.uniform(0.5, 2.5)), t_cortex=float(rng.uniform(4.5, 8.0)),
        t_temporalis=float(rng.uniform(3.0, 9.0)),
        ventricle_scale=float(rng.uniform(0.6, 1.7)), sinus_scale=float(rng.uniform(0.7, 1.2)),
        frontal_sinus=bool(rng.random() < 0.6),
    )


def _radial(x: np.ndarray, y: np.ndarray, z: np.ndarray, semi: np.ndarray) -> np.ndarray:
    """Normalised radius of an axis-aligned ellipsoid (1 on its surface)."""
    a, b, c = (float(v) for v in semi)
    return np.sqrt((x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2)


def _min_ellipsoid(out: np.ndarray, lat: Lattice, xyz: tuple[np.ndarray, ...], centre: np.ndarray, semi: np.ndarray,
                   gain: float, pad: float = 12.0) -> None:
    """Minimum of ``out`` and an ellipsoid's approximate signed distance (radial, times ``gain`` mm), evaluated
    inside its padded bounding box only."""
    blk = lat.head_block(centre - semi - pad, centre + semi + pad)
    if blk is not None:
        x, y, z = (a[blk] - np.float32(c) for a, c in zip(xyz, centre, strict=True))
        np.minimum(out[blk], (_radial(x, y, z, semi) - 1.0) * np.float32(gain), out=out[blk])


def brain_envelope(h: HeadShape, lat: Lattice, xyz: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Approximate signed distance (mm) to the brain surface, and the same for the cerebral hemispheres alone."""
    x, y, z = xyz
    c, a = [float(v) for v in h.cerebrum_c], h.cerebrum_semi
    cer = (_radial(x - c[0], y - c[1], z - c[2], a) - 1.0) * float(np.cbrt(a.prod()))
    sy = float(h.scale[1])
    floor = h.floor_z - 60.0 * np.clip((-y - 30.0 * sy) / (15.0 * sy), 0.0, 1.0)  # no floor over the cerebellum
    np.maximum(cer, floor - z, out=cer)
    for sx in (1.0, -1.0):
        _min_ellipsoid(cer, lat, xyz, h.p((sx * 40, -8, -24)), h.p((25, 38, 20)), 22.0)
    rest = np.full(cer.shape, np.inf, np.float32)  # cerebellum and brainstem
    _min_ellipsoid(rest, lat, xyz, h.p((0, -62, -42)), h.p((52, 32, 24)), 32.0)
    _min_ellipsoid(rest, lat, xyz, h.p((0, -38, -38)), h.p((14, 12, 30)), 14.0)
    np.maximum(cer, np.float32(1.5) - rest, out=cer)  # tentorium: a thin CSF gap, not an overlap
    return np.minimum(cer, rest), cer


def _ellipsoid(lab: np.ndarray, lat: Lattice, xyz: tuple[np.ndarray, ...], cls: int, centre: np.ndarray,
               semi: np.ndarray, where: Callable[[Block], np.ndarray] | None = None,
               wobble: np.ndarray | None = None, yaw_deg: float = 0.0) -> None:
    """Paint an ellipsoid (optionally yawed about z and wobbled by a smooth field) with class ``cls``."""
    r = float(semi.max()) * 1.15
    blk = lat.head_block(centre - r, centre + r)
    if blk is None:
        return
    x, y, z = (a[blk] - np.float32(c) for a, c in zip(xyz, centre, strict=True))
    if yaw_deg:
        cs, sn = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
        x, y = cs * x + sn * y, -sn * x + cs * y
    k = _radial(x, y, z, semi)
    if wobble is not None:
        k = k + 0.08 * wobble[blk]
    m = k <= 1.0
    if where is not None:
        m &= where(blk)
    lab[blk][m] = cls


def _tube(lab: np.ndarray, lat: Lattice, pts: np.ndarray, radii: np.ndarray, cls: int,
          where: Callable[[Block], np.ndarray] | None = None) -> None:
    """Paint a tube (head-frame centreline) with class ``cls``."""
    for blk, sdfs, _ in tube_blocks(lat, lat.to_grid(pts), np.asarray(radii, dtype=np.float64), 0.0):
        m = sdfs[0] <= 0
        if where is not None:
            m &= where(blk)
        lab[blk][m] = cls


def paint_outer(lab: np.ndarray, env: np.ndarray, h: HeadShape, xyz: tuple[np.ndarray, ...],
                fields: list[np.ndarray]) -> None:
    """Scalp, subcutaneous fat, temporalis, skull shell and the CSF space, as bands around the brain envelope."""
    x, y, z = xyz
    shell = env - np.float32(h.t_csf) + np.float32(1.5) * fields[0]  # distance outside the inner skull surface
    bone = np.float32(h.t_bone) * (1.0 + np.float32(0.25) * fields[1])
    tm = [float(v) for v in h.p((55, 2, -12))]
    temporal = _radial(np.abs(x) - tm[0], y - tm[1], z - tm[2], h.p((30, 40, 38))) <= 1.0
    outer = bone + np.float32(h.t_scalp) + np.where(temporal, np.float32(h.t_temporalis), np.float32(0.0))
    lab[shell <= outer] = SOFT
    lab[temporal & (shell > bone + 1.0) & (shell <= outer - h.t_scalp + 1.0)] = MUSCLE
    fat_band = (shell > bone + 0.5) & (shell <= bone + 0.5 + h.t_fat) & ~temporal
    lab[fat_band] = FAT
    lab[(shell > 0) & (shell <= bone)] = BONE
    lab[shell <= 0] = CSF


def paint_face_neck(lab: np.ndarray, lat: Lattice, h: HeadShape, xyz: tuple[np.ndarray, ...],
                    fields: list[np.ndarray]) -> None:
    """Face and neck soft tissue, fat and muscle, drawn under the cranium (only where still air)."""
    air = lambda b: lab[b] == AIR  # noqa: E731
    _ellipsoid(lab, lat, xyz, SOFT, h.p((0, 48, -66)), h.p((58, 46, 56)), air, fields[0])
    _ellipsoid(lab, lat, xyz, SOFT, h.p((0, 90, -52)), h.p((12, 14, 22)), air)
    x, y, z = xyz
    sx, sy, sz = (float(v) for v in h.scale)
    taper = 1.0 + 0.25 * np.clip((z + 60 * sz) / (35 * sz), 0.0, 1.0)  # widens up to the skull base
    neck = (((x / (56 * sx * taper)) ** 2 + ((y + 12) / (58 * sy * taper)) ** 2) <= 1.0) & (z < -25 * sz)
    lab[neck & (lab == AIR)] = SOFT
    lab[neck & (fields[2] > -0.2) & (lab == SOFT) & (np.abs(x) < 50)] = MUSCLE
    lab[neck & (fields[3] > 1.1) & (lab == MUSCLE)] = FAT


def paint_brain(lab: np.ndarray, lat: Lattice, env: np.ndarray, cer: np.ndarray, h: HeadShape,
                xyz: tuple[np.ndarray, ...], fields: list[np.ndarray]) -> None:
    """Grey matter, white matter (folded cortex of random thickness), sulci, deep nuclei and ventricles."""
    lab[env <= 0] = GM
    ctx = np.float32(h.t_cortex) * np.clip(1.0 + np.float32(0.6) * fields[2], 0.3, None)
    lab[cer <= -ctx] = WM
    sulci = (cer > -ctx) & (cer <= 0) & (np.abs(fields[3]) < 0.22)
    lab[sulci] = CSF
    _ellipsoid(lab, lat, xyz, WM, h.p((0, -62, -40)), h.p((22, 14, 10)), lambda b: lab[b] == GM)
    _ellipsoid(lab, lat, xyz, WM, h.p((0, -38, -38)), h.p((11, 9, 27)))
    inside = lambda b: np.isin(lab[b], BRAIN)  # noqa: E731
    for sx in (1.0, -1.0):
        _ellipsoid(lab, lat, xyz, DEEP_GM, h.p((sx * 11, -18, 6)), h.p((9, 14, 8)), inside)
        _ellipsoid(lab, lat, xyz, DEEP_GM, h.p((sx * 22, 2, -1)), h.p((6, 14, 9)), inside)
        _ellipsoid(lab, lat, xyz, DEEP_GM, h.p((sx * 12, 14, 10)), h.p((5, 8, 8)), inside)
        way = [(sx * 4, 22, 14), (sx * 10, 8, 20), (sx * 14, -12, 22), (sx * 16, -32, 18), (sx * 20, -42, 8),
               (sx * 26, -32, -6), (sx * 28, -16, -14)]
        pts = spline(np.array([h.p(w) for w in way]), 1.5)
        rad = np.interp(np.linspace(0, 1, len(pts)), np.linspace(0, 1, 7), [5, 7.5, 6, 5.5, 6.5, 3.5, 2.5])
        _tube(lab, lat, pts, rad * h.ventricle_scale, VENT, inside)
    third = spline(np.array([h.p((0, -2, -8)), h.p((0, -12, 0)), h.p((0, -20, 4))]), 1.5)
    _tube(lab, lat, third, np.full(len(third), 1.2 + h.ventricle_scale), VENT)
    _ellipsoid(lab, lat, xyz, VENT, h.p((0, -45, -40)), h.p((5, 4, 7)) * h.ventricle_scale ** 0.5, inside)


def paint_cisterns(lab: np.ndarray, lat: Lattice, env: np.ndarray, cer: np.ndarray, h: HeadShape,
                   xyz: tuple[np.ndarray, ...], arteries: list[Tube], sacs: list[tuple[np.ndarray, float]],
                   rng: np.random.Generator) -> None:
    """CSF around the circle (basal cisterns, Sylvian and prepontine sleeves), the interhemispheric fissure, the
    cavernous sinuses, the pituitary and the optic apparatus."""
    x, y, z = xyz
    inner = lambda b: env[b] <= h.t_csf  # noqa: E731
    _ellipsoid(lab, lat, xyz, CSF, h.p((0, -4, -23)), h.p((22, 20, 8)) * rng.uniform(0.85, 1.2), inner)
    sy, sz = float(h.scale[1]), float(h.scale[2])
    fissure = (np.abs(x) < rng.uniform(1.0, 2.5)) & (cer <= 0) & (y > -95 * sy)
    core = _radial(x, y + 10 * sy, z - 10 * sz, h.p((24, 42, 20))) <= 1.0
    lab[fissure & ~core] = CSF
    sleeve = {"ica_supra": 1.0, "m1": 1.0, "m2_sup": 0.35, "m2_inf": 0.35, "a1": 1.0, "acomm": 1.0, "a2": 0.3,
              "pcomm": 1.0, "p1": 1.0, "p2": 0.5, "basilar": 1.0, "sca": 0.4, "aica": 0.3}
    for t in arteries:
        base = t.name.rsplit("_", 1)[0] if t.name.endswith(("_R", "_L")) else t.name
        if base not in sleeve:
            continue
        n = max(2, int(len(t.points) * sleeve[base] * rng.uniform(0.5, 1.3)))
        if rng.random() < 0.15:  # vessel against brain, no cistern around it here
            continue
        arc = np.arange(min(n, len(t.points)), dtype=np.float64)
        width = rng.uniform(0.8, 4.0) * (1.0 + 0.5 * np.sin(2 * np.pi * arc / rng.uniform(8, 30) + rng.uniform(0, 7)))
        _tube(lab, lat, t.points[:n], t.radii[:n] + width, CSF, inner)
    for centre, radius in sacs:  # most sacs sit in a cistern too, so "vessel-like blob off the CSF" is no cue
        if rng.random() < 0.6:
            _ellipsoid(lab, lat, xyz, CSF, centre, np.full(3, radius + rng.uniform(0.5, 3.5)), inner)
    for sx in (1.0, -1.0):
        _ellipsoid(lab, lat, xyz, VEIN, h.p((sx * 14.5, -1, -37)), h.p((6, 11, 6)) * rng.uniform(0.8, 1.15))
        nerve = spline(np.array([h.p((sx * 30, 48, -36)), h.p((sx * 16, 26, -27)), h.p((sx * 6, 11, -22)),
                                 h.p((0, 8, -21))]), 1.5)
        _tube(lab, lat, nerve, np.full(len(nerve), rng.uniform(1.8, 2.6)), WM)
    _ellipsoid(lab, lat, xyz, SOFT, h.p((0, -1, -37)), h.p((6, 5, 4.5)))


def paint_base(lab: np.ndarray, lat: Lattice, env: np.ndarray, h: HeadShape, xyz: tuple[np.ndarray, ...],
               arteries: list[Tube], fields: list[np.ndarray]) -> None:
    """Skull base bones (sphenoid, clivus, petrous bone around the carotid canal, face, spine) and air spaces."""
    out = lambda b: env[b] > 0.5  # noqa: E731
    s = h.sinus_scale
    _ellipsoid(lab, lat, xyz, BONE, h.p((0, 6, -48)), h.p((11, 17, 12)), out)
    _ellipsoid(lab, lat, xyz, AIR, h.p((0, 8, -49)), h.p((8, 12, 8)) * s, out)
    clivus = spline(np.array([h.p((0, -3, -35)), h.p((0, -10, -50)), h.p((0, -19, -66))]), 1.5)
    _tube(lab, lat, clivus, np.full(len(clivus), 6.5), BONE, out)
    for t in arteries:
        if t.name.startswith("ica_infra"):
            sel = (t.points[:, 2] > -64 * h.scale[2]) & (t.points[:, 2] < -40 * h.scale[2])
            if sel.sum() > 2:
                _tube(lab, lat, t.points[sel], t.radii[sel] + 6.0, BONE, out)
    for sx in (1.0, -1.0):
        _ellipsoid(lab, lat, xyz, BONE, h.p((sx * 30, -24, -47)), h.p((8, 22, 7)), out, yaw_deg=sx * 45)
        _ellipsoid(lab, lat, xyz, BONE, h.p((sx * 45, -38, -55)), h.p((9, 12, 10)), out)
        _ellipsoid(lab, lat, xyz, AIR, h.p((sx * 45, -38, -55)), h.p((7, 10, 8)), lambda b: fields[3][b] > 0.2)
        _ellipsoid(lab, lat, xyz, BONE, h.p((sx * 30, 44, -36)), h.p((18, 27, 17)), out)
        _ellipsoid(lab, lat, xyz, FAT, h.p((sx * 30, 44, -37)), h.p((15, 23, 13)), out)
        _ellipsoid(lab, lat, xyz, EYE, h.p((sx * 32, 56, -38)), np.full(3, 11.5 * h.scale.mean()))
        _ellipsoid(lab, lat, xyz, AIR, h.p((sx * 24, 48, -64)), h.p((12, 16, 13)) * s, lambda b: lab[b] != EYE)
        mand = spline(np.array([h.p((sx * 50, -8, -62)), h.p((sx * 48, 8, -110)), h.p((sx * 25, 55, -118)),
                                h.p((0, 70, -118))]), 1.5)
        _tube(lab, lat, mand, np.full(len(mand), 6.0), BONE)
    _ellipsoid(lab, lat, xyz, BONE, h.p((0, 52, -76)), h.p((34, 28, 9)), lambda b: lab[b] != AIR)
    _ellipsoid(lab, lat, xyz, AIR, h.p((0, 58, -55)), h.p((9, 28, 15)) * s)
    _ellipsoid(lab, lat, xyz, AIR, h.p((0, 40, -36)), h.p((9, 16, 10)) * s, out)
    if h.frontal_sinus:
        _ellipsoid(lab, lat, xyz, AIR, h.p((0, 66, 2)), h.p((13, 5, 10)) * s, lambda b: lab[b] == BONE)
    airway = spline(np.array([h.p((0, 30, -62)), h.p((0, 18, -85)), h.p((0, 14, -110)), h.p((0, 10, -150))]), 1.5)
    _tube(lab, lat, airway, np.full(len(airway), 7.0 * s), AIR)
    spine = spline(np.array([h.p((0, -36, -72)), h.p((0, -32, -110)), h.p((0, -28, -160))]), 1.5)
    _tube(lab, lat, spine, np.full(len(spine), 16.0), BONE, lambda b: env[b] > 1.0)
    canal = spline(np.array([h.p((0, -40, -60)), h.p((0, -37, -110)), h.p((0, -33, -160))]), 1.5)
    _tube(lab, lat, canal, np.full(len(canal), 8.0), CSF, lambda b: env[b] > 0.0)
    _tube(lab, lat, canal, np.full(len(canal), 4.5), WM, lambda b: env[b] > 0.0)


def build_veins(rng: np.random.Generator, h: HeadShape) -> tuple[list[Tube], list[Tube]]:
    """Dural sinuses and jugular veins (large: painted on the coarse lattice) and the small veins near the circle
    and on the cortex (drawn with the arteries at full resolution): hard mimics."""
    c, a = h.cerebrum_c, h.cerebrum_semi
    big: list[Tube] = []
    th = np.radians(np.linspace(15, 200, 40))
    sss = np.stack([np.zeros_like(th), c[1] + (a[1] + 1.0) * np.cos(th), c[2] + (a[2] + 1.0) * np.sin(th)], 1)
    big.append(make_tube("sss", sss, rng.uniform(3.0, 5.0), rng.uniform(7.0, 10.0), 0, "vein"))
    torcula = sss[-1]
    galen = h.p((0, -32, 4))
    straight = spline(np.array([galen, h.p((0, -55, 2)), h.p((0, -80, -6)), torcula]), 1.5)
    big.append(make_tube("straight", straight, rng.uniform(4.0, 6.0), rng.uniform(4.0, 6.0), 0, "vein"))
    for sx in (1.0, -1.0):
        phi = np.radians(np.linspace(0, 70, 12))
        zc = torcula[2]
        half = np.sqrt(max(1.0 - ((zc - c[2]) / a[2]) ** 2, 0.2))
        trans = np.stack([sx * (a[0] * half + 1.0) * np.sin(phi), c[1] - (a[1] * half + 1.0) * np.cos(phi),
                          np.full_like(phi, zc)], 1)
        down = [h.p((sx * 48, -42, -35)), h.p((sx * 40, -36, -55)), h.p((sx * 36, -30, -68)), h.p((sx * 34, -24, -90)),
                h.p((sx * 30, -15, -135))]
        sig = spline(np.vstack([trans[-1:], np.array(down)]), 1.5)
        big.append(make_tube(f"transverse_{sx:+.0f}", trans, rng.uniform(6, 9), rng.uniform(6, 9), 0, "vein"))
        big.append(make_tube(f"sigmoid_{sx:+.0f}", sig, rng.uniform(7, 10), rng.uniform(9, 14), 0, "vein"))
    return big, _small_veins(rng, h, galen)


def _small_veins(rng: np.random.Generator, h: HeadShape, galen: np.ndarray) -> list[Tube]:
    """Basal veins of Rosenthal, internal cerebral veins, superficial middle cerebral veins and cortical veins."""
    c, a = h.cerebrum_c, h.cerebrum_semi
    out: list[Tube] = []
    jit = lambda: rng.normal(0, 1.5, 3)  # noqa: E731
    for sx in (1.0, -1.0):
        bvr = [h.p((sx * 14, 2, -19)) + jit(), h.p((sx * 20, -10, -15)) + jit(), h.p((sx * 19, -22, -7)) + jit(),
               h.p((sx * 11, -31, 1)) + jit(), galen]
        out.append(make_tube(f"bvr_{sx:+.0f}", spline(np.array(bvr)), rng.uniform(1.6, 2.6), 2.4, 0, "vein"))
        icv = [h.p((sx * 3, 6, 14)), h.p((sx * 2.5, -15, 12)), h.p((sx * 1.2, -28, 7)), galen]
        out.append(make_tube(f"icv_{sx:+.0f}", spline(np.array(icv)), 1.8, 2.6, 0, "vein"))
        smcv = [h.p((sx * 52, -5, 5)) + jit(), h.p((sx * 46, 10, -12)) + jit(), h.p((sx * 36, 12, -24)) + jit(),
                h.p((sx * 22, 2, -33))]
        out.append(make_tube(f"smcv_{sx:+.0f}", spline(np.array(smcv)), rng.uniform(1.4, 3.0), 2.0, 0, "vein"))
    for j in range(int(rng.integers(3, 9))):
        beta = rng.uniform(0, 2 * np.pi)
        alpha = np.radians(np.linspace(rng.uniform(50, 95), 6, 16))
        beta_path = beta + np.linspace(0, rng.normal(0, 0.25), 16)
        rr = 1.0 + 2.0 / a.mean()
        pts = np.stack([c[0] + a[0] * rr * np.sin(alpha) * np.cos(beta_path),
                        c[1] + a[1] * rr * np.sin(alpha) * np.sin(beta_path), c[2] + a[2] * rr * np.cos(alpha)], 1)
        out.append(make_tube(f"cortical_{j}", spline(pts), rng.uniform(1.4, 3.0), rng.uniform(2.0, 3.5), 0, "vein"))
    return out
