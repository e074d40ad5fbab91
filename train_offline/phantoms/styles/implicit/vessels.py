"""Arteries and veins as centripetal Catmull-Rom splines through the spec's waypoints, with per-series jitter,
meanders and the odd loop, a lumen radius that varies along the vessel (taper, focal stenosis, ectasia, a flare at
each branch origin, infundibula), anatomical variants of the circle of Willis, and extra branches (ophthalmic,
anterior choroidal, SCA, AICA, PICA, cortical branches, perforators) plus the dural sinuses and deep veins.

Vessels are built in the anatomy frame (spec coordinates) and carried to the head frame by the series' morph, so the
CSF sleeves the anatomy carves around them stay aligned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kernel.labels import SEG_LABEL_VALUES

from .anatomy import Morph

SIDES = {1: "Right", -1: "Left"}
SFX = {1: "_R", -1: "_L"}

ICA_WP = [(26, -8, -95), (27, -12, -75), (29, -14, -60), (29, -12, -47), (25, -9, -46), (18, -5, -44), (14, -5, -41),
          (13.5, -2, -36), (12.5, 2, -33.5), (12, 6, -32), (13, 9.5, -33), (11, 7, -28), (12.5, 4, -24),
          (13.5, 1.5, -22.5), (15, 3.5, -21)]
ICA_D = [4.7, 4.7, 4.7, 4.5, 4.5, 4.5, 5.0, 5.0, 5.0, 5.0, 4.6, 3.9, 3.6, 3.6, 3.6]
ICA_RING, ICA_PCOM, ICA_CAV = 11, 13, (6, 11)  # waypoint indices: dural ring, PComm origin, cavernous segment
M1_WP = [(15, 3.5, -21), (19, 6, -19), (24, 8.5, -19.5), (29, 10.5, -19.6), (34, 11.5, -19.7)]
M2_WP = [(34, 11.5, -19.7), (39, 10.5, -19), (42, 7.5, -15.5), (44, 3, -12), (46, -2, -6), (45.5, -7, 0),
         (44.5, -8, 6), (40.5, -16, 12), (39, -20, 15)]
M2B_WP = [(34, 11.5, -19.7), (40, 9.5, -22), (46, 3, -21), (50, -6, -17), (52, -16, -11), (51, -28, -5)]
A1_WP = [(15, 3.5, -21), (10, 5, -18.5), (6, 6.7, -18.5), (2, 9.6, -18.2), (1, 11.5, -18)]
A2_WP = [(1, 11.5, -18), (1.5, 18.5, -15), (1.5, 25, -7.5), (1, 31, -3), (0.7, 34, 2.5), (0.7, 34.5, 7.5),
         (0.7, 30, 13), (0.7, 22.5, 21), (0.7, 7.5, 29.5), (0.7, -15, 25.5)]
PCOM_WP = [(13.5, 1.5, -22.5), (12, -4, -19.5), (8, -10.5, -21)]
BA_WP = [(0, -24, -53), (0, -22.5, -50), (0, -17, -40), (0, -14.5, -30), (0, -13, -25), (0, -11.5, -21)]
P1_WP = [(0, -11.5, -21), (4, -11.3, -21.3), (8, -10.5, -21)]
P2_WP = [(8, -10.5, -21), (14.5, -15, -21.5), (17.5, -20, -19.5), (18.5, -25, -15.5), (16, -30, -10.5),
         (13, -35, -8.5), (11, -45, -1.5), (10, -50, 0), (8, -80, 6)]
SCA_WP = [(0, -13.5, -25), (4, -13.5, -24.7), (9, -13.3, -26), (12, -13, -27.5), (17, -22, -29), (20, -22.5, -32),
          (24, -30, -30), (30, -31, -32)]
AICA_WP = [(0, -19.5, -44), (7, -25, -47), (17, -35, -47.5), (24, -33, -45)]
VA_WP = [(30, -30, -85), (25, -40, -74), (12, -35, -68), (10, -31, -62), (6, -27, -57), (0, -24, -53)]
PICA_WP = [(10, -31, -62), (12, -40, -62), (8, -50, -58), (5, -60, -45)]
OPH_WP = [(11, 7, -28), (15, 25, -30), (22, 40, -34), (27, 54, -37)]
ACH_WP = [(13.8, 2.2, -22.2), (17, -3, -20), (21, -12, -16), (24, -22, -8)]


def seg(name: str, side: int = 0) -> int:
    """Competition segmentation value of a vessel class (0: not one of the 13)."""
    return SEG_LABEL_VALUES[f"{SIDES[side]} {name}" if side else name]


def mirror(wps: list | np.ndarray, side: int) -> np.ndarray:
    p = np.array(wps, float)
    p[:, 0] *= side
    return p


@dataclass
class Tube:
    """One vessel: centreline samples (head frame mm), lumen radius, segmentation value and arc length per sample."""

    name: str
    kind: str  # artery | vein | perforator | calc
    pts_anat: np.ndarray
    pts: np.ndarray
    radius: np.ndarray
    label: np.ndarray
    arc: np.ndarray  # mm along the flow from the root of its tree
    wp_u: np.ndarray  # fractional waypoint index of each sample (to find named sites)
    parent: str | None = None
    attach: int = 0
    sleeve: float = 0.0  # CSF sleeve margin around it (cisterns), mm
    extra: dict = field(default_factory=dict)


def catmull_rom(p: np.ndarray, n_per: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Centripetal Catmull-Rom through ``p`` (N, 3); returns dense points and their fractional waypoint index."""
    p = np.asarray(p, float)
    if len(p) == 2:
        u = np.linspace(0, 1, 2 * n_per)
        return p[0] + u[:, None] * (p[1] - p[0]), u
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    p0, p1, p2, p3 = (ext[i : len(ext) - 3 + i][:, None, :] for i in range(4))
    d = [np.linalg.norm(b - a, axis=-1, keepdims=True) ** 0.5 + 1e-6 for a, b in ((p0, p1), (p1, p2), (p2, p3))]
    t0, t1 = 0.0, d[0]
    t2, t3 = t1 + d[1], t1 + d[1] + d[2]
    u = np.linspace(0, 1, n_per, endpoint=False)[None, :, None]
    t = t1 + u * (t2 - t1)
    a1 = ((t1 - t) * p0 + (t - t0) * p1) / (t1 - t0)
    a2 = ((t2 - t) * p1 + (t - t1) * p2) / (t2 - t1)
    a3 = ((t3 - t) * p2 + (t - t2) * p3) / (t3 - t2)
    b1 = ((t2 - t) * a1 + (t - t0) * a2) / (t2 - t0)
    b2 = ((t3 - t) * a2 + (t - t1) * a3) / (t3 - t1)
    c = ((t2 - t) * b1 + (t - t1) * b2) / (t2 - t1)
    pts = np.vstack([c.reshape(-1, 3), p[-1:]])
    param = np.concatenate([(np.arange(len(p) - 1)[:, None] + u[0, :, 0][None, :]).ravel(), [len(p) - 1]])
    return pts, param


def resample(pts: np.ndarray, param: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal arc-length samples (about ``step`` mm apart) of a dense polyline."""
    seglen = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seglen)])
    n = max(2, int(np.ceil(cum[-1] / step)) + 1)
    s = np.linspace(0.0, cum[-1], n)
    out = np.stack([np.interp(s, cum, pts[:, i]) for i in range(3)], axis=1)
    return out, np.interp(s, cum, param), s


def _perp(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    v = rng.normal(size=3)
    v -= (v @ t) * t
    return v / (np.linalg.norm(v) + 1e-9)


def _loop(rng: np.random.Generator, a: np.ndarray, b: np.ndarray, r_vessel: float) -> np.ndarray:
    """A vessel loop (prolate trochoid) in the middle of the span a-b, crossing over itself."""
    t = (b - a) / np.linalg.norm(b - a)
    n = _perp(rng, t)
    bn = np.cross(t, n)
    big = rng.uniform(2.5, 4.5)
    small = 0.35 * big
    lift = (2 * r_vessel + 0.5) / 1.8 * rng.uniform(0.4, 1.3)
    th = np.linspace(-np.pi, np.pi, 9)
    x, y, z = small * th - big * np.sin(th), -big * np.cos(th) - big, lift * np.sin(th / 2)
    return 0.5 * (a + b) + x[:, None] * t + y[:, None] * n + z[:, None] * bn


def meander(rng: np.random.Generator, wps: np.ndarray, amp: float, loop: bool, r_vessel: float) -> tuple:
    """Insert perpendicular offsets between waypoints (tortuosity) and optionally one loop; returns points and
    their fractional index in the original waypoint list."""
    out, u = [wps[0]], [0.0]
    spans = np.linalg.norm(np.diff(wps, axis=0), axis=1)
    loop_at = int(np.argmax(spans)) if loop and spans.max() > 12 else -1
    for i in range(len(wps) - 1):
        a, b = wps[i], wps[i + 1]
        if i == loop_at:
            pts = _loop(rng, a, b, r_vessel)
            out += list(pts)
            u += list(i + 0.5 + 0.02 * np.linspace(-1, 1, len(pts)))
        else:
            k = int(spans[i] // rng.uniform(7.0, 12.0))
            t = (b - a) / max(spans[i], 1e-6)
            for j in range(1, k + 1):
                f = j / (k + 1)
                out.append(a + f * (b - a) + amp * spans[i] / (k + 1) * rng.uniform(-1, 1) * _perp(rng, t))
                u.append(i + f)
        out.append(b)
        u.append(i + 1.0)
    return np.array(out), np.array(u)


def radius_profile(rng: np.random.Generator, arc: np.ndarray, r: np.ndarray, child: bool, lesions: bool) -> np.ndarray:
    """Taper, occasional focal stenosis or fusiform ectasia, and a small flare at a branch origin."""
    s = arc - arc[0]
    length = max(float(s[-1]), 1.0)
    r = r * (1.0 - rng.uniform(0.0, 0.12) * s / length)
    if lesions and r.mean() > 0.9 and rng.random() < 0.07:
        s0, w = rng.uniform(0.2, 0.8) * length, rng.uniform(1.0, 2.5)
        r = r * (1.0 - rng.uniform(0.2, 0.6) * np.exp(-(((s - s0) / w) ** 2)))
    if lesions and r.mean() > 0.9 and rng.random() < 0.05:
        s0, w = rng.uniform(0.2, 0.8) * length, rng.uniform(4.0, 10.0)
        r = r * (1.0 + rng.uniform(0.15, 0.35) * np.exp(-(((s - s0) / w) ** 2)))
    if child:
        r = r * (1.0 + 0.2 * np.exp(-s / 0.8))
    return r


@dataclass
class Variants:
    """Circle-of-Willis variants of this series (spec frequencies)."""

    acomm: str = "normal"
    a1: dict = field(default_factory=lambda: {1: "normal", -1: "normal"})
    pcomm: dict = field(default_factory=lambda: {1: "normal", -1: "normal"})
    p1: dict = field(default_factory=lambda: {1: "normal", -1: "normal"})
    va_ratio: float = 1.0  # right / left vertebral calibre

    def as_dict(self) -> dict:
        key = {1: "R", -1: "L"}
        return {"acomm": self.acomm, "a1": {key[s]: v for s, v in self.a1.items()},
                "pcomm": {key[s]: v for s, v in self.pcomm.items()}, "p1": {key[s]: v for s, v in self.p1.items()},
                "va_ratio": round(self.va_ratio, 3)}


def draw_variants(rng: np.random.Generator, locations: list[str]) -> Variants:
    """Variants, except where an aneurysm needs the vessel it sits on."""
    v = Variants()
    r = rng.random()
    v.acomm = "absent" if r < 0.06 else "hypoplastic" if r < 0.16 else "normal"
    if "Anterior Communicating Artery" in locations:
        v.acomm = "normal"
    side = int(rng.choice([1, -1]))
    r = rng.random()
    v.a1[side] = "absent" if r < 0.015 else "hypoplastic" if r < 0.06 else "normal"
    if v.a1[side] != "normal" and v.acomm == "absent":
        v.acomm = "normal"
    for s in (1, -1):
        r = rng.random()
        v.pcomm[s] = "fetal" if r < 0.25 else "absent" if r < 0.45 else "hypoplastic" if r < 0.7 else "normal"
        if f"{SIDES[s]} Posterior Communicating Artery" in locations and v.pcomm[s] == "absent":
            v.pcomm[s] = "normal"
        if v.pcomm[s] == "fetal":
            v.p1[s] = "absent" if rng.random() < 0.15 else "hypoplastic"
    v.va_ratio = float(np.exp(rng.normal(0, 0.3)))
    return v


class TreeBuilder:
    """Builds tubes in flow order; children start on their parent's actual centreline sample."""

    def __init__(self, rng: np.random.Generator, morph: Morph, step: float) -> None:
        self.rng, self.morph, self.step = rng, morph, step
        self.tubes: dict[str, Tube] = {}
        self.jitter = float(rng.uniform(0.5, 1.3))
        self.tortuosity = float(rng.uniform(0.0, 0.35))
        self.mimics: list[dict] = []

    def _jitter(self, wps: np.ndarray, fixed: set[int]) -> np.ndarray:
        wps = wps.copy()
        for i in range(len(wps)):
            if i in fixed:
                continue
            near = min(np.linalg.norm(wps[j] - wps[i]) for j in (i - 1, i + 1) if 0 <= j < len(wps))
            wps[i] += self.rng.normal(0, self.jitter * min(1.0, near / 6.0), 3)
        return wps

    def add(self, name: str, wps: list | np.ndarray, diam: float | np.ndarray, labels: int | list | np.ndarray,
            kind: str = "artery", parent: str | None = None,
            attach: int | None = None, end: np.ndarray | None = None, sleeve: float = 0.0, loop_p: float = 0.0,
            tort: float | None = None, lesions: bool = True) -> Tube:
        """Spline a vessel through jittered waypoints; ``diam`` and ``labels`` are per waypoint (or scalars)."""
        wps = np.array(wps, float)
        fixed = set()
        if parent is not None:
            wps[0] = self.tubes[parent].pts_anat[attach]
            fixed.add(0)
        if end is not None:
            wps[-1] = end
            fixed.add(len(wps) - 1)
        wps = self._jitter(wps, fixed)
        diam = np.broadcast_to(np.asarray(diam, float), (len(wps),))
        labels = np.broadcast_to(np.asarray(labels, int), (len(wps),))
        amp = self.tortuosity if tort is None else tort
        pts, u0 = meander(self.rng, wps, amp, self.rng.random() < loop_p, 0.5 * float(diam.mean()))
        dense, param = catmull_rom(pts)
        pts_anat, uu, _ = resample(dense, np.interp(param, np.arange(len(u0)), u0), self.step)
        head = self.morph.to_head(pts_anat)
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(head, axis=0), axis=1))])
        if parent is not None:
            arc = arc + self.tubes[parent].arc[attach]
        idx = np.arange(len(wps))
        radius = radius_profile(self.rng, arc, 0.5 * np.interp(uu, idx, diam), parent is not None,
                                lesions and kind == "artery")
        label = labels[np.clip(np.floor(uu + 1e-6).astype(int), 0, len(wps) - 1)].astype(np.uint8)
        tube = Tube(name, kind, pts_anat, head, radius, label, arc, uu, parent, attach or 0, sleeve)
        self.tubes[name] = tube
        return tube

    def nearest(self, name: str, p: tuple | np.ndarray) -> int:
        """Index of the sample of tube ``name`` nearest an anatomy-frame point."""
        return int(np.argmin(np.linalg.norm(self.tubes[name].pts_anat - np.asarray(p, float), axis=1)))

    def at_u(self, name: str, u: float) -> int:
        """Index of the sample of tube ``name`` at fractional waypoint index ``u``."""
        return int(np.argmin(np.abs(self.tubes[name].wp_u - u)))

    def infundibulum(self, name: str) -> None:
        """Widen a branch's origin into a cone (< 3 mm): the classic aneurysm mimic."""
        t = self.tubes[name]
        r_inf, length = self.rng.uniform(1.0, 1.45), self.rng.uniform(1.5, 3.0)
        s = t.arc - t.arc[0]
        cone = r_inf + (t.radius - r_inf) * np.clip(s / length, 0, 1)
        t.radius = np.maximum(t.radius, cone)
        self.mimics.append({"kind": "infundibulum", "vessel": name, "head": t.pts[0].tolist(), "radius_mm": r_inf})
