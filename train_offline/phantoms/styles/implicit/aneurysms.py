"""Saccular aneurysms as blended implicit shapes grown from the parent's wall: a neck (a round cone from the parent's
centreline, narrow or wide) smoothly united with a dome that is a sphere, an ellipsoid along the flow, a sphere
perturbed by low-order harmonics, or a few offset spheres (lobulated), sometimes with a daughter bleb and sometimes
partly thrombosed (a crescent of the sac without lumen). Sites follow the spec: bifurcation apices pointing along
the flow, side walls pointing where each location's aneurysms usually point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import Acquisition, Pose
from .sdf import round_cone, smin
from .vessels import SFX, TreeBuilder

ICA_CAV, ICA_RING = (6, 11), 11


def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / (np.linalg.norm(v) + 1e-12)


def _tangent(pts: np.ndarray, i: int) -> np.ndarray:
    return _unit(pts[min(i + 2, len(pts) - 1)] - pts[max(i - 2, 0)])


def _side(loc: str) -> int:
    return 1 if loc.startswith("Right") else -1 if loc.startswith("Left") else 0


def _site(rng: np.random.Generator, b: TreeBuilder, loc: str) -> tuple[str, int, np.ndarray, bool, str]:
    """(parent tube, sample index, preferred dome direction in the head frame, at an apex, site name)."""
    s = _side(loc)
    sfx = SFX.get(s, "")
    r = rng.random()
    t = b.tubes
    if "Infraclinoid" in loc:
        i = b.at_u("ica" + sfx, rng.uniform(ICA_CAV[0] + 0.3, ICA_CAV[1] - 0.4))
        pref = (s, 0.0, 0.0) if r < 0.75 else (-0.4 * s, 0.7, -0.3)
        return "ica" + sfx, i, np.array(pref), False, "cavernous"
    if "Supraclinoid" in loc:
        if r < 0.35:
            end = len(t["ica" + sfx].pts) - 1
            return "ica" + sfx, end, _tangent(t["ica" + sfx].pts, end), True, "ica terminus"
        if r < 0.7:
            return "ica" + sfx, t["oph" + sfx].attach, np.array([-0.3 * s, 0.2, 1.0]), False, "ophthalmic origin"
        return "ica" + sfx, b.at_u("ica" + sfx, rng.uniform(12.1, 12.6)), np.array([-s, 0.2, -0.3]), False, \
            "superior hypophyseal"
    if "Middle Cerebral" in loc:
        m1 = t["m1" + sfx]
        if r < 0.8:
            return "m1" + sfx, len(m1.pts) - 1, _tangent(m1.pts, len(m1.pts) - 1), True, "M1 bifurcation"
        return "m1" + sfx, b.at_u("m1" + sfx, rng.uniform(1.5, 3.0)), np.array([0.0, 0.4, -1.0]), False, "M1 branch"
    if loc == "Anterior Communicating Artery":
        pref = [(0.0, 1.0, 0.0), (0.0, 0.3, 1.0), (0.0, 1.0, -0.6)][int(rng.choice(3, p=[0.5, 0.3, 0.2]))]
        return "acom", len(t["acom"].pts) // 2, np.array(pref), False, "AComm"
    if "Anterior Cerebral" in loc:
        i = t["cm" + sfx].attach if r < 0.5 else b.at_u("a2" + sfx, rng.uniform(4.0, 5.0))
        return "a2" + sfx, i, np.array([0.9 * s, 0.7, 0.5]), False, "A2-A3 genu"
    if "Posterior Communicating" in loc:
        return "ica" + sfx, t["pcom" + sfx].attach, np.array([0.5 * s, -0.8, -0.5]), False, "ICA-PComm"
    if loc == "Basilar Tip":
        ba = t["basilar"]
        return "basilar", len(ba.pts) - 1, _tangent(ba.pts, len(ba.pts) - 1), True, "basilar tip"
    return _posterior_site(rng, b)


def _posterior_site(rng: np.random.Generator, b: TreeBuilder) -> tuple[str, int, np.ndarray, bool, str]:
    s = int(rng.choice([1, -1]))
    sfx = SFX[s]
    t = b.tubes
    k = int(rng.choice(5, p=[0.3, 0.25, 0.2, 0.15, 0.1]))
    if k == 0:
        return "basilar", t["sca" + sfx].attach, np.array([0.8 * s, 0.0, 0.6]), False, "SCA origin"
    if k == 1:
        pica = t["pica" + sfx]
        return "va" + sfx, pica.attach, _unit(pica.pts[4] - pica.pts[0]), False, "PICA origin"
    if k == 2:
        return "basilar", 2, np.array([0.0, 0.8, 0.5]), False, "vertebrobasilar junction"
    if k == 3:
        p2 = t["p2" + sfx]
        return "p2" + sfx, min(3, len(p2.pts) - 1), np.array([s, -0.5, 0.2]), False, "P1-P2 junction"
    return "basilar", t["aica" + sfx].attach, np.array([s, -0.3, -0.3]), False, "AICA origin"


@dataclass
class AneurysmSpec:
    """One aneurysm in the head frame (mm of the head frame = patient mm / pose scale)."""

    location: str
    site: str
    parent: str
    index: int
    neck_point: np.ndarray
    centre: np.ndarray
    direction: np.ndarray
    dome: float  # head-frame mm
    neck: float
    shape: str
    lobes: list[tuple[np.ndarray, float]]
    bumps: list[tuple[np.ndarray, float, int]]  # (axis, amplitude, power) harmonic-like perturbations
    elong: float
    bleb: tuple[np.ndarray, float] | None
    thrombus: tuple[np.ndarray, float] | None  # (unit normal, offset as a fraction of the dome radius)
    slow: float  # slow-flow fraction of the sac (grows with size)
    patch: tuple[np.ndarray, np.ndarray]  # (wave vectors (2, 3), phases) of the sac's flow heterogeneity


def midline_x(b: TreeBuilder) -> float:
    """Head-frame x of the midsagittal plane, taken between the two pericallosal arteries at the genu."""
    a2 = [b.tubes["a2" + sfx].pts[b.at_u("a2" + sfx, 4.5)][0] for sfx in ("_R", "_L")]
    return float(np.mean(a2))


def draw_dome(rng: np.random.Generator) -> float:
    """Dome diameter in patient mm: log-normal, median 4.5, sigma_ln 0.45, clipped to 2-25."""
    return float(np.clip(np.exp(np.log(4.5) + 0.45 * rng.normal()), 2.0, 25.0))


def _direction(rng: np.random.Generator, pref: np.ndarray, tangent: np.ndarray, apex: bool) -> np.ndarray:
    d = _unit(_unit(pref) + rng.normal(0, 0.25, 3))
    if not apex:
        d = _unit(d - 0.8 * (d @ tangent) * tangent)
    return d


def _shape(rng: np.random.Generator, centre: np.ndarray, d: np.ndarray, radius: float) -> tuple:
    shape = str(rng.choice(["saccular", "lobulated", "irregular", "elongated"], p=[0.45, 0.2, 0.2, 0.15]))
    lobes, bumps, elong = [], [], 1.0
    if shape == "lobulated":  # a main body and 1-3 lobes reaching the dome radius (the extent stays ~ the dome)
        lobes.append((centre.copy(), float(radius * rng.uniform(0.75, 0.85))))
        for _ in range(int(rng.integers(1, 4))):
            u = _unit(rng.normal(size=3) + 0.6 * d)
            rho = radius * rng.uniform(0.4, 0.6)
            lobes.append((centre + (radius - rho) * u, float(rho)))
    elif shape == "irregular":
        bumps = [(_unit(rng.normal(size=3)), float(rng.normal(0, 0.12)), 2) for _ in range(3)]
        bumps += [(_unit(rng.normal(size=3)), float(rng.normal(0, 0.08)), 3) for _ in range(2)]
    elif shape == "elongated":
        elong = float(rng.uniform(1.2, 1.6))
    return shape, lobes, bumps, elong


def place_aneurysms(rng: np.random.Generator, b: TreeBuilder, locations: list[str], dome_mm: float | None,
                    scale: float) -> list[AneurysmSpec]:
    """One aneurysm per requested location, on the current tree (head frame)."""
    out = []
    for loc in locations:
        parent, i, pref, apex, site = _site(rng, b, loc)
        tube = b.tubes[parent]
        c, r_p = tube.pts[i], float(tube.radius[i])
        dome = (dome_mm if dome_mm is not None else draw_dome(rng)) / scale
        neck = dome * rng.uniform(0.5, 0.9)
        height = rng.uniform(1.0, 2.0) * neck
        d = _direction(rng, pref, _tangent(tube.pts, i), apex)
        s, mid = _side(loc), midline_x(b)
        dist = 0.85 * r_p + max(height - 0.5 * dome, 0.3 * dome)
        for _ in range(12):  # a sided sac's centre stays >= 3 mm on its own side of the midline
            m = c + d * dist
            if s == 0 or (m[0] - mid) * s >= 3.0:
                break
            d, dist = _unit(d + np.array([0.6 * s, 0.0, 0.0])), dist * 1.1
        shape, lobes, bumps, elong = _shape(rng, m, d, 0.5 * dome)
        bleb = None
        if rng.random() < 0.15:
            rb = 0.5 * dome * rng.uniform(0.25, 0.45)
            bleb = (m + 0.5 * dome * 0.95 * _unit(d + rng.normal(0, 0.5, 3)), float(rb))
        thrombus = None
        if rng.random() < 0.04 + 0.35 * np.clip((dome * scale - 6.0) / 12.0, 0, 1):
            w = _unit(rng.normal(size=3))
            w = w if w @ d > -0.2 else _unit(w + d)
            thrombus = (w, float(rng.uniform(0.25, 0.6)))
        slow = float(np.clip((dome * scale - 4.0) / 12.0, 0.0, 0.8) * rng.uniform(0.6, 1.0))
        waves = rng.normal(size=(2, 3)) * (2 * np.pi / (0.5 * dome))
        out.append(AneurysmSpec(loc, site, parent, i, c, m, d, float(dome), float(neck), shape, lobes, bumps, elong,
                                bleb, thrombus, slow, (waves, rng.uniform(0, 2 * np.pi, 2))))
    return out


@dataclass
class AneurysmGeom:
    """An aneurysm carried into the grid frame (patient mm along normal, col, row from the origin)."""

    spec: AneurysmSpec
    c: np.ndarray
    m: np.ndarray
    d: np.ndarray
    radius: float
    neck_r: float
    lobes: list[tuple[np.ndarray, float]]
    bumps: list[tuple[np.ndarray, float, int]]
    bleb: tuple[np.ndarray, float] | None
    thrombus: tuple[np.ndarray, float] | None
    waves: np.ndarray
    phases: np.ndarray

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        ext = self.radius * max(1.0, self.spec.elong) + 1.5
        pts = [self.m - ext, self.m + ext, self.c - self.neck_r - 1.5, self.c + self.neck_r + 1.5]
        if self.bleb is not None:
            pts += [self.bleb[0] - self.bleb[1] - 1, self.bleb[0] + self.bleb[1] + 1]
        pts = np.array(pts)
        return pts.min(0), pts.max(0)

    def dome_sdf(self, px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> np.ndarray:
        rho = np.sqrt(px * px + py * py + pz * pz)
        if self.lobes:
            out = None
            for centre, r in self.lobes:
                q = (px - np.float32(centre[0] - self.m[0]), py - np.float32(centre[1] - self.m[1]),
                     pz - np.float32(centre[2] - self.m[2]))
                dist = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2) - np.float32(r)
                out = dist if out is None else smin(out, dist, 0.3 * self.radius)
            return out
        if self.spec.elong > 1.0:
            a = px * np.float32(self.d[0]) + py * np.float32(self.d[1]) + pz * np.float32(self.d[2])
            b2 = np.maximum(rho * rho - a * a, 0.0)
            short = self.radius / self.spec.elong
            return (np.sqrt((a / np.float32(self.radius)) ** 2 + b2 / np.float32(short**2)) - 1.0) * np.float32(short)
        f = np.float32(0.0)
        inv = 1.0 / np.maximum(rho, 1e-3)
        for axis, amp, power in self.bumps:
            cosang = (px * np.float32(axis[0]) + py * np.float32(axis[1]) + pz * np.float32(axis[2])) * inv
            f = f + np.float32(amp) * (cosang**power - (1.0 / 3.0 if power == 2 else 0.0))
        return rho - np.float32(self.radius) * (1.0 + f)

    def fields(self, kk: np.ndarray, rr: np.ndarray,
               cc: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(lumen sdf, thrombus sdf or None, slow-flow fraction) on broadcast grid coordinates."""
        px, py, pz = kk - np.float32(self.m[0]), rr - np.float32(self.m[1]), cc - np.float32(self.m[2])
        dome = self.dome_sdf(px, py, pz)
        neck = round_cone(kk, rr, cc, self.c, self.m, 0.9 * self.neck_r, min(self.neck_r, 0.8 * self.radius))
        sac = smin(dome, neck, 0.3 * self.neck_r)
        if self.bleb is not None:
            bc, rb = self.bleb
            q = (kk - np.float32(bc[0]), rr - np.float32(bc[1]), cc - np.float32(bc[2]))
            sac = smin(sac, np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2) - np.float32(rb), 0.3 * rb)
        thr = None
        if self.thrombus is not None:
            w, tau = self.thrombus
            along = px * np.float32(w[0]) + py * np.float32(w[1]) + pz * np.float32(w[2])
            plane = np.float32(tau * self.radius) - along
            thr = np.maximum(dome, plane)
            sac = np.maximum(sac, -thr)
        qx, qy, qz = kk - np.float32(self.c[0]), rr - np.float32(self.c[1]), cc - np.float32(self.c[2])
        dist = np.sqrt(qx * qx + qy * qy + qz * qz) / np.float32(2 * self.radius)
        patch = 0.5 * (np.sin(px * np.float32(self.waves[0, 0]) + py * np.float32(self.waves[0, 1])
                              + pz * np.float32(self.waves[0, 2]) + np.float32(self.phases[0]))
                       + np.sin(px * np.float32(self.waves[1, 0]) + py * np.float32(self.waves[1, 1])
                                + pz * np.float32(self.waves[1, 2]) + np.float32(self.phases[1])))
        slow = np.float32(self.spec.slow) * np.clip(dist, 0.0, 1.3) * (0.75 + 0.25 * patch)
        return sac, thr, slow.astype(np.float32)


def to_grid(spec: AneurysmSpec, pose: Pose, acq: Acquisition) -> AneurysmGeom:
    """Carry a head-frame aneurysm into the acquisition grid frame."""
    def pt(p: np.ndarray) -> np.ndarray:
        return acq.to_grid(pose.to_lps(p))

    def vec(v: np.ndarray) -> np.ndarray:
        return pose.dir_to_lps(v) @ acq.basis

    s = pose.scale
    return AneurysmGeom(spec, pt(spec.neck_point), pt(spec.centre), vec(spec.direction), 0.5 * spec.dome * s,
                        0.5 * spec.neck * s, [(pt(c), r * s) for c, r in spec.lobes],
                        [(vec(a), amp, pw) for a, amp, pw in spec.bumps],
                        None if spec.bleb is None else (pt(spec.bleb[0]), spec.bleb[1] * s),
                        None if spec.thrombus is None else (vec(spec.thrombus[0]), spec.thrombus[1]),
                        np.array([vec(w) for w in spec.patch[0]]) / s, spec.patch[1])
