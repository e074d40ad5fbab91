"""The arterial tree (spec centrelines, right side mirrored), its variants and mimics, and the small veins.

Waypoints come from the spec's table (canonical RAS mm); a smooth random displacement field moves them all together
(so junctions stay joined), children are snapped onto their parents, every path is splined and resampled every
~1.5 mm, and tortuosity, loops and infundibula are added. Each path carries its competition segmentation value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernel.labels import SEG_LABEL_VALUES

ARTERY, VEIN = 3, 5  # vessel kinds (shared with blocks.py)

INFRA, SUPRA, MCA, ACA, PCOMM = "Infraclinoid Internal Carotid Artery", "Supraclinoid Internal Carotid Artery", \
    "Middle Cerebral Artery", "Anterior Cerebral Artery", "Posterior Communicating Artery"
OTHER, BASILAR, ACOMM = "Other Posterior Circulation", "Basilar Tip", "Anterior Communicating Artery"

# name: (parent, location (sided unless midline), diameter start/end mm, CSF sleeve mm, waypoints of the right side)
TEMPLATE: dict[str, tuple] = {
    "ica_cerv": (None, INFRA, 4.7, 4.6, 0.0, [(25, -6, -128), (26, -8, -95), (27, -12, -75), (29, -14, -60)]),
    "ica_petr": ("ica_cerv", INFRA, 4.5, 4.5, 0.0, [(29, -14, -60), (29, -12, -47), (25, -9, -46), (18, -5, -44)]),
    "ica_cav": ("ica_petr", INFRA, 5.0, 4.2, 0.0, [(18, -5, -44), (14, -5, -41), (13.5, -2, -36), (12.5, 2, -33.5),
                                                  (12, 6, -32), (13, 9.5, -33), (11, 7, -28)]),
    "ica_supra": ("ica_cav", SUPRA, 3.8, 3.5, 2.0, [(11, 7, -28), (12.5, 4, -24), (13.5, 1.5, -22.5), (15, 3.5, -21)]),
    "m1": ("ica_supra", MCA, 3.1, 2.9, 2.0, [(15, 3.5, -21), (19, 6, -19), (24, 8.5, -19.5), (29, 10.5, -19.6),
                                            (34, 11.5, -19.7)]),
    "m2s": ("m1", MCA, 2.4, 1.7, 1.5, [(34, 11.5, -19.7), (39, 10.5, -19), (42, 7.5, -15.5), (44, 3, -12), (46, -2, -6),
                                       (45.5, -7, 0), (44.5, -8, 6), (40.5, -16, 12), (39, -20, 15)]),
    "m2i": ("m1", MCA, 2.2, 1.6, 1.5, [(34, 11.5, -19.7), (40, 8, -23), (45, 0, -20), (48, -12, -13), (49, -26, -5)]),
    "a1": ("ica_supra", ACA, 2.0, 2.0, 2.0, [(15, 3.5, -21), (10, 5, -18.5), (6, 6.7, -18.5), (2, 9.6, -18.2),
                                            (1, 11.5, -18)]),
    "a2": ("a1", ACA, 1.9, 1.5, 1.2, [(1, 11.5, -18), (1.5, 18.5, -15), (1.5, 25, -7.5), (1, 31, -3), (0.7, 34, 2.5),
                                      (0.7, 34.5, 7.5), (0.7, 30, 13), (0.7, 22.5, 21), (0.7, 7.5, 29.5),
                                      (0.7, -15, 25.5)]),
    "cmarg": ("a2", ACA, 1.5, 1.2, 0.8, [(0.7, 34, 2.5), (2.5, 44, 16), (3, 38, 40), (3, 15, 58)]),
    "pcomm": ("ica_supra", PCOMM, 1.3, 1.2, 2.0, [(13.5, 1.5, -22.5), (12, -4, -19.5), (8, -10.5, -21)]),
    "p1": ("basilar", OTHER, 2.0, 2.0, 2.0, [(0, -11.5, -21), (4, -11.3, -21.3), (8, -10.5, -21)]),
    "p2": ("p1", OTHER, 2.2, 1.6, 1.5, [(8, -10.5, -21), (14.5, -15, -21.5), (17.5, -20, -19.5), (18.5, -25, -15.5),
                                        (16, -30, -10.5), (13, -35, -8.5), (11, -45, -1.5), (10, -50, 0), (8, -80, 6)]),
    "sca": ("basilar", OTHER, 1.3, 1.1, 1.5, [(0, -13.5, -24.7), (4, -13.5, -24.7), (9, -13.3, -26), (12, -13, -27.5),
                                             (17, -22, -29), (20, -22.5, -32), (24, -30, -30), (30, -31, -32)]),
    "aica": ("basilar", OTHER, 1.0, 0.9, 1.5, [(0, -19.5, -44), (7, -25, -47), (17, -35, -47.5), (24, -33, -45)]),
    "va": (None, OTHER, 3.9, 3.4, 1.5, [(31, -28, -128), (30, -30, -85), (25, -40, -74), (12, -35, -68), (10, -31, -62),
                                        (6, -27, -57), (0, -24, -53)]),
    "pica": ("va", OTHER, 1.3, 1.1, 1.2, [(10, -31, -62), (12, -40, -62), (8, -50, -58), (5, -60, -45)]),
    "ophth": ("ica_supra", None, 1.4, 1.1, 0.8, [(11.5, 7.5, -28), (13, 14, -30), (15, 25, -31), (20, 45, -33)]),
    "acha": ("ica_supra", None, 0.9, 0.8, 1.0, [(13.5, 1.0, -22.5), (17, -4, -21), (21, -12, -17), (24, -22, -10)]),
    "eca": (None, None, 3.0, 2.2, 0.0, [(28, -3, -128), (34, 6, -100), (42, 2, -75), (52, -2, -62), (64, -2, -48),
                                       (74, -4, -30), (78, -6, 0), (72, -10, 35)]),
    "mma": ("eca", None, 1.5, 1.2, 0.0, [(42, 2, -75), (24, -14, -52), (24, -12, -46), (45, -10, -40), (66, -6, -20),
                                        (70, -12, 10), (64, -25, 38)]),
}
MIDLINE: dict[str, tuple] = {
    "basilar": (None, BASILAR, 3.6, 3.1, 2.5, [(0, -24, -53), (0, -22.5, -50), (0, -17, -40), (0, -14.5, -30),
                                               (0, -13, -25), (0, -11.5, -21)]),
}
VEINS: dict[str, tuple[float, list]] = {
    "basal": (2.4, [(18, 6, -25), (20, -4, -18), (19, -16, -13), (14, -30, -4), (6, -40, 2), (0, -44, 4)]),
    "icv": (2.0, [(2.5, -2, 14), (2.2, -20, 12), (1.2, -38, 6), (0, -44, 4)]),
    "smcv": (2.6, [(60, -12, 8), (56, 2, -8), (46, 12, -22), (32, 14, -30), (18, 6, -36)]),
    "dmcv": (1.6, [(32, 8, -25), (24, 6, -26), (18, 6, -25)]),
    "galen": (4.5, [(0, -44, 4), (0, -46, 5)]),
}


@dataclass
class Path:
    """One vessel centreline in canonical mm, radius per point (mm), and what to paint it as."""

    name: str
    points: np.ndarray  # (k, 3) canonical
    radius: np.ndarray  # (k,) mm
    seg: int  # competition segmentation value (0: not one of the 13 classes)
    kind: int  # ARTERY or VEIN
    sleeve: float  # CSF cuff mm
    flow: np.ndarray  # (k,) path length from the tree root, mm
    side: str = ""  # "R", "L" or "" (midline)
    gain: float = 1.0  # per-vessel intensity factor


def seg_value(location: str | None, side: str) -> int:
    if location is None:
        return 0
    if location in SEG_LABEL_VALUES:
        return SEG_LABEL_VALUES[location]
    return SEG_LABEL_VALUES[f"{ {'R': 'Right', 'L': 'Left'}[side]} {location}"]


class Displacement:
    """A smooth random displacement field (sum of a few plane waves), amplitude ~2-3 mm: moves all waypoints."""

    def __init__(self, rng: np.random.Generator, amp: float = 2.2, n: int = 6) -> None:
        self.k = rng.normal(size=(n, 3))
        self.k *= (2 * np.pi / rng.uniform(45, 90, size=n) / np.linalg.norm(self.k, axis=1))[:, None]
        self.phase = rng.uniform(0, 2 * np.pi, size=n)
        self.a = rng.normal(0, amp / np.sqrt(n / 2), size=(n, 3))

    def __call__(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, float)
        return q + np.sin(q @ self.k.T + self.phase) @ self.a


def catmull_rom(points: np.ndarray, step: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """Centripetal-free (uniform) Catmull-Rom spline through ``points``, resampled every ~``step`` mm.

    Returns the samples and, for each, the fractional index of the waypoint segment (to interpolate per-point data).
    """
    p = np.asarray(points, float)
    if len(p) < 2:
        return p, np.zeros(len(p))
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    out, where = [], []
    for i in range(len(p) - 1):
        p0, p1, p2, p3 = ext[i], ext[i + 1], ext[i + 2], ext[i + 3]
        n = max(2, int(np.ceil(np.linalg.norm(p2 - p1) / step)))
        t = np.linspace(0, 1, n, endpoint=False)[:, None]
        seg = 0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                     + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3)
        out.append(seg)
        where.append(i + t[:, 0])
    out.append(p[-1:])
    where.append(np.array([len(p) - 1.0]))
    return np.vstack(out), np.concatenate(where)


def arclength(points: np.ndarray) -> np.ndarray:
    d = np.linalg.norm(np.diff(points, axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(d)])


def _wiggle(rng: np.random.Generator, pts: np.ndarray, amp: float) -> np.ndarray:
    """Tortuosity: a smooth sideways sinusoid along the path, zero at both ends."""
    if len(pts) < 4 or amp <= 0:
        return pts
    s = arclength(pts)
    tang = np.gradient(pts, axis=0)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True) + 1e-9
    ref = rng.normal(size=3)
    side = np.cross(tang, ref)
    side /= np.linalg.norm(side, axis=1, keepdims=True) + 1e-9
    up = np.cross(tang, side)
    wl = rng.uniform(8, 22)
    taper = np.clip(np.sin(np.pi * s / max(s[-1], 1e-6)), 0.0, 1.0) ** 0.5
    phase = rng.uniform(0, 2 * np.pi, size=2)
    off = amp * taper[:, None] * (np.sin(2 * np.pi * s / wl + phase[0])[:, None] * side
                                  + 0.6 * np.sin(2 * np.pi * s / (1.3 * wl) + phase[1])[:, None] * up)
    return pts + off


def insert_loop(rng: np.random.Generator, path: Path) -> Path:
    """A vessel loop (a hard negative): the path turns a full circle of radius 2-4 mm and moves on."""
    pts = path.points
    if len(pts) < 8:
        return path
    i = int(rng.integers(len(pts) // 4, 3 * len(pts) // 4))
    tang = pts[i + 1] - pts[i - 1]
    tang /= np.linalg.norm(tang)
    nrm = np.cross(tang, rng.normal(size=3))
    nrm /= np.linalg.norm(nrm)
    bi = np.cross(tang, nrm)
    rho = rng.uniform(2.0, 4.0)
    th = np.linspace(0, 2 * np.pi, max(8, int(2 * np.pi * rho / 1.2)))[1:]
    drift = 2.2 * path.radius[i] + 0.6
    centre = pts[i] + rho * nrm
    loop = centre - rho * np.cos(th)[:, None] * nrm + rho * np.sin(th)[:, None] * tang
    loop += (th / (2 * np.pi))[:, None] * drift * bi
    rest = pts[i + 1:] + drift * bi
    new = np.vstack([pts[: i + 1], loop, rest])
    rad = np.concatenate([path.radius[: i + 1], np.full(len(loop), path.radius[i]), path.radius[i + 1:]])
    return Path(path.name, new, rad, path.seg, path.kind, path.sleeve, path.flow[0] + arclength(new), path.side,
                path.gain)


@dataclass
class TreeParams:
    """Anatomical variants of this patient (spec: complete circle ~17%, AComm absent/hypoplastic ~16%, A1 ~6%,
    fetal PCA 20-40%)."""

    radius_scale: float
    fetal: dict[str, bool]
    pcomm: dict[str, float]  # diameter factor (0: absent)
    a1: dict[str, float]
    acomm: float
    va: dict[str, float]
    ophth: dict[str, bool]
    m2_third: dict[str, bool]
    tortuosity: float
    loops: int

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def draw_variants(rng: np.random.Generator, locations: list[str]) -> TreeParams:
    """Variant draw; a requested aneurysm keeps its parent vessel present."""
    need_pcomm = {s: any(f"{n} Posterior Communicating" in loc for loc in locations)
                  for s, n in (("R", "Right"), ("L", "Left"))}
    fetal = {s: bool(rng.random() < 0.25) for s in "RL"}
    pcomm = {}
    for s in "RL":
        u = rng.random()
        pcomm[s] = 1.7 if fetal[s] else (0.0 if u < 0.15 else (0.45 if u < 0.4 else 1.0))
        if need_pcomm[s] and pcomm[s] < 1.0:
            pcomm[s] = 1.0
    a1 = {s: 1.0 for s in "RL"}
    if rng.random() < 0.06:
        a1[str(rng.choice(["R", "L"]))] = float(rng.choice([0.0, 0.4]))
    u = rng.random()
    acomm = 0.0 if u < 0.05 else (0.5 if u < 0.16 else 1.0)
    if "Anterior Communicating Artery" in locations:
        acomm = max(acomm, 1.0)
    va = {s: 1.0 for s in "RL"}
    if rng.random() < 0.15:
        va[str(rng.choice(["R", "L"]))] = 0.55
    return TreeParams(radius_scale=float(rng.uniform(0.85, 1.15)), fetal=fetal, pcomm=pcomm, a1=a1, acomm=acomm, va=va,
                      ophth={s: bool(rng.random() < 0.85) for s in "RL"},
                      m2_third={s: bool(rng.random() < 0.2) for s in "RL"}, tortuosity=float(rng.uniform(0.0, 1.6)),
                      loops=int(rng.choice([0, 0, 1, 1, 2])))


def _diameter_factor(name: str, side: str, tp: TreeParams) -> float:
    if name == "pcomm":
        return tp.pcomm[side]
    if name == "p1":
        return 0.45 if tp.fetal[side] else 1.0
    if name == "a1":
        return tp.a1[side]
    if name == "va":
        return tp.va[side]
    if name == "ophth":
        return 1.0 if tp.ophth[side] else 0.0
    return 1.0


def _make_path(rng: np.random.Generator, name: str, side: str, spec: tuple, tp: TreeParams,
               disp: Displacement) -> Path | None:
    """One templated artery: mirrored, displaced, jittered, splined, tortuous; None when absent in this patient."""
    _, location, d0, d1, sleeve, pts = spec
    factor = _diameter_factor(name, side, tp)
    if factor <= 0:
        return None
    pts = np.array(pts, float)
    if side == "L":
        pts[:, 0] *= -1
    if name in ("a2", "cmarg"):
        pts[1:, 0] += (1.0 if side == "R" else -1.0) * rng.uniform(0.4, 1.4)
    pts = disp(pts)
    pts[1:-1] += rng.normal(0, 0.7, size=pts[1:-1].shape)
    dense, where = catmull_rom(pts)
    r0, r1 = 0.5 * d0, 0.5 * d1
    radius = (r0 + (r1 - r0) * where / max(len(pts) - 1, 1)) * tp.radius_scale * factor * rng.uniform(0.92, 1.08)
    amp = tp.tortuosity * rng.uniform(0.2, 0.8) * (2.0 if name in ("ica_cerv", "va", "eca") else 1.0)
    dense = _wiggle(rng, dense, amp)
    kind = ARTERY
    return Path(name=f"{name}_{side}" if side else name, points=dense, radius=np.maximum(radius, 0.25),
                seg=seg_value(location, side), kind=kind, sleeve=float(sleeve), flow=arclength(dense), side=side,
                gain=float(rng.uniform(0.94, 1.04)))


def _snap(child: Path, parent: Path, blend_mm: float = 8.0) -> None:
    """Move the start of ``child`` onto the nearest centreline point of ``parent`` (smoothly), set its flow."""
    d = np.linalg.norm(parent.points - child.points[0], axis=1)
    j = int(np.argmin(d))
    delta = parent.points[j] - child.points[0]
    s = arclength(child.points)
    w = np.clip(1.0 - s / blend_mm, 0.0, 1.0)[:, None]
    child.points = child.points + w * delta
    child.flow = parent.flow[j] + arclength(child.points)


def build_arteries(rng: np.random.Generator, tp: TreeParams, disp: Displacement) -> dict[str, Path]:
    """All arteries of the tree keyed ``name_side`` (midline vessels: bare name), joined and with loops/branches."""
    paths: dict[str, Path] = {}
    spec_b = MIDLINE["basilar"]
    pts = disp(np.array(spec_b[5], float))
    dense, where = catmull_rom(pts)
    rad = (0.5 * spec_b[2] + 0.5 * (spec_b[3] - spec_b[2]) * where / (len(pts) - 1)) * tp.radius_scale
    paths["basilar"] = Path("basilar", _wiggle(rng, dense, tp.tortuosity * rng.uniform(0.3, 1.2)), rad,
                            seg_value(BASILAR, ""), ARTERY, spec_b[4], arclength(dense))
    for side in ("R", "L"):
        for name, spec in TEMPLATE.items():
            p = _make_path(rng, name, side, spec, tp, disp)
            if p is not None:
                paths[p.name] = p
        if tp.m2_third[side]:
            spec = ("m1", MCA, 2.0, 1.4, 1.2, [(34, 11.5, -19.7), (41, 9, -20), (46, 3, -16), (49, -5, -10),
                                               (50, -14, -2)])
            p = _make_path(rng, "m2m", side, spec, tp, disp)
            paths[p.name] = p
    if tp.acomm > 0:
        ends = [paths[f"a2_{s}"].points[0] for s in ("R", "L")]
        mid = 0.5 * (ends[0] + ends[1]) + rng.normal(0, 0.4, 3)
        dense, _ = catmull_rom(np.array([ends[0], mid, ends[1]]), step=0.7)
        r = 0.5 * rng.uniform(1.2, 1.5) * tp.acomm * np.ones(len(dense))
        paths["acomm"] = Path("acomm", dense, r, seg_value(ACOMM, ""), ARTERY, 2.0, np.full(len(dense), 60.0))
    for side, sign in (("R", 1.0), ("L", -1.0)):  # the two A2s run side by side; keep each on its own side
        for name in (f"a2_{side}", f"cmarg_{side}"):
            if name in paths:
                p = paths[name]
                p.points[1:, 0] = sign * np.maximum(sign * p.points[1:, 0], p.radius[1:] + 0.4)
    for _ in range(tp.loops):
        cands = [k for k in paths if k.rsplit("_", 1)[0] in ("m2s", "m2i", "p2", "sca", "pica", "cmarg", "aica")]
        if cands:
            key = str(rng.choice(sorted(cands)))
            paths[key] = insert_loop(rng, paths[key])
    _add_cortical_branches(rng, paths)
    for key, p in paths.items():
        base = key.rsplit("_", 1)[0] if key not in MIDLINE and key != "acomm" else key
        parent = TEMPLATE.get(base, (None,))[0]
        if parent is not None:
            pkey = parent if parent in MIDLINE else f"{parent}_{p.side}"
            if pkey in paths:
                _snap(p, paths[pkey])
    _snap(paths["basilar"], paths["va_R"] if tp.va["R"] >= tp.va["L"] else paths["va_L"], blend_mm=1.0)
    return paths


def _add_cortical_branches(rng: np.random.Generator, paths: dict[str, Path]) -> None:
    """Small M3/A3/P3-like branches leaving the trunks toward the cortex (more overlaps and crossings)."""
    hosts = [k for k in paths if k.rsplit("_", 1)[0] in ("m2s", "m2i", "p2", "cmarg", "a2")]
    for i in range(int(rng.integers(4, 10))):
        host = paths[str(rng.choice(sorted(hosts)))]
        j = int(rng.integers(len(host.points) // 3, len(host.points) - 1))
        start = host.points[j]
        out = start - np.array([0.0, -15.0, 5.0])
        out = out / (np.linalg.norm(out) + 1e-9) + 0.5 * rng.normal(size=3)
        out /= np.linalg.norm(out)
        length = rng.uniform(15, 35)
        bend = rng.normal(size=3) * 0.3
        way = np.array([start + out * length * f + bend * length * f * f for f in (0.0, 0.35, 0.7, 1.0)])
        dense, _ = catmull_rom(way)
        r = np.linspace(min(0.7, 0.7 * host.radius[j]), 0.4, len(dense)) * rng.uniform(0.8, 1.1)
        paths[f"branch{i}_{host.side}"] = Path(f"branch{i}", dense, np.maximum(r, 0.3), host.seg, ARTERY, 0.6,
                                               host.flow[j] + arclength(dense), host.side, host.gain)


def build_veins(rng: np.random.Generator, disp: Displacement) -> list[Path]:
    """Small veins on the fine grid (basal vein, internal cerebral, superficial/deep middle cerebral, Galen) and a
    few random cortical veins running up to the superior sagittal sinus: venous mimics next to the arteries."""
    veins = []
    for name, (diam, pts) in VEINS.items():
        for side in ("R", "L") if name != "galen" else ("",):
            p = np.array(pts, float)
            if side == "L":
                p[:, 0] *= -1
            if rng.random() < 0.15 and name != "galen":
                continue
            dense, _ = catmull_rom(disp(p))
            r = np.full(len(dense), 0.5 * diam * rng.uniform(0.7, 1.3))
            veins.append(Path(name, dense, r, 0, VEIN, 0.8, np.zeros(len(dense)), side, float(rng.uniform(0.7, 1.2))))
    c, a = np.array([0.0, -17.0, 8.0]), np.array([72.0, 91.0, 75.0])
    for _ in range(int(rng.integers(2, 7))):
        side = float(rng.choice([-1.0, 1.0]))
        d0 = np.array([side * rng.uniform(0.6, 1.0), rng.uniform(-0.7, 0.7), rng.uniform(-0.1, 0.5)])
        d1 = np.array([0.0, d0[1] + rng.normal(0, 0.2), 1.0])
        inset = rng.uniform(2.0, 4.0)
        pts = []
        for f in np.linspace(0, 1, 7):
            d = (1 - f) * d0 + f * d1
            d = d / np.linalg.norm(d / a)  # onto the ellipsoid surface
            pts.append(c + d * (1 - inset / np.linalg.norm(d)))
        dense, _ = catmull_rom(np.array(pts))
        r = np.full(len(dense), rng.uniform(0.6, 1.5))
        veins.append(Path("cortical", dense, r, 0, VEIN, 0.5, np.zeros(len(dense)), "", float(rng.uniform(0.7, 1.2))))
    return veins


def infundibula(rng: np.random.Generator, arteries: dict[str, Path], p: float = 0.15) -> list[Path]:
    """Conical widenings (< 3 mm) at branch origins: the classic aneurysm mimic."""
    out = []
    for key, child in arteries.items():
        base = key.rsplit("_", 1)[0]
        if base not in ("pcomm", "acha", "ophth", "sca", "aica", "pica") or rng.random() > p:
            continue
        tang = child.points[min(3, len(child.points) - 1)] - child.points[0]
        tang /= np.linalg.norm(tang) + 1e-9
        length = rng.uniform(1.5, 2.8)
        r0 = max(child.radius[0] * 1.3, rng.uniform(0.9, 1.4))
        pts = np.array([child.points[0], child.points[0] + tang * length])
        out.append(Path(f"infundibulum_{key}", pts, np.array([r0, child.radius[0]]), child.seg, ARTERY,
                        child.sleeve, np.full(2, child.flow[0]), child.side, child.gain))
    return out


def landmarks(arteries: dict[str, Path]) -> dict[str, np.ndarray]:
    """Canonical points the tissue painter needs: the Circle-of-Willis centre and the Sylvian fissure paths."""
    pts = [arteries["basilar"].points[-1]] + [arteries[f"ica_supra_{s}"].points[-1] for s in "RL"]
    out = {"cow_centre": np.mean(pts, axis=0) + np.array([0.0, 1.0, -1.5])}
    for s in "RL":
        m = np.vstack([arteries[f"m1_{s}"].points, arteries[f"m2s_{s}"].points])
        out[f"sylvian_{s}"] = m[::3]
    return out
