"""The randomised style's vessel anatomy: a Circle-of-Willis tree (from the spec's centreline table) with per-series
scale, waypoint jitter, tortuosity, loops, variants and extra branches, plus small veins; all in the head frame
(RAS mm, +x = subject's right).

Every vessel is a ``Tube``: a dense centreline (about 1 mm apart, in flow order) with a radius per point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kernel.labels import SEG_LABEL_VALUES

STEP_MM = 1.0  # centreline sample spacing


@dataclass
class Tube:
    """One vessel: centreline points (n, 3) head-frame mm in flow order, radius per point (mm)."""

    name: str
    points: np.ndarray
    radii: np.ndarray
    label: int  # competition segmentation value, 0 for unlabelled branches and veins
    kind: str = "artery"  # "artery" or "vein"
    gain: float = 1.0  # per-vessel intensity multiplier
    path0: float = 0.0  # path length (mm) from the arterial entry to points[0]: distal fading

    @property
    def arc(self) -> np.ndarray:
        """Cumulative path length (mm) along the centreline, starting at ``path0``."""
        seg = np.linalg.norm(np.diff(self.points, axis=0), axis=1)
        return self.path0 + np.concatenate([[0.0], np.cumsum(seg)])


@dataclass
class VesselTree:
    """All tubes of one head plus the named junctions used to place aneurysms and mimics."""

    tubes: list[Tube]
    nodes: dict[str, np.ndarray]
    variants: dict[str, object] = field(default_factory=dict)

    def tube(self, name: str) -> Tube | None:
        """The tube of that name (``m1_R``, ``basilar``, ...), None when absent in this head."""
        return next((t for t in self.tubes if t.name == name), None)


# Right-side template (spec table, RAS mm). Strings are shared junctions, jittered once per side.
_NODES_R: dict[str, tuple[float, float, float]] = {
    "ring": (11, 7, -28), "pco": (13.5, 1.5, -22.5), "term": (15, 3.5, -21), "mbif": (34, 11.5, -19.7),
    "acom": (1.4, 11.5, -18), "genu": (1.4, 31, -3), "p1p2": (8, -10.5, -21), "pica0": (10, -31, -62),
}
_NODES_MID: dict[str, tuple[float, float, float]] = {"vbj": (0, -24, -53), "btip": (0, -11.5, -21)}

# name: (waypoints, (diameter at start, at end) mm, label key or "")
_ARTERIES_R: dict[str, tuple[list, tuple[float, float], str]] = {
    "ica_infra": ([(24, -4, -125), (26, -8, -95), (27, -12, -75), (29, -14, -60), (29, -12, -47), (25, -9, -46),
                   (18, -5, -44), (14, -5, -41), (13.5, -2, -36), (12.5, 2, -33.5), (12, 6, -32), (13, 9.5, -33),
                   "ring"], (4.7, 5.0), "infra"),
    "ica_supra": (["ring", (12.5, 4, -24), "pco", "term"], (3.8, 3.5), "supra"),
    "m1": (["term", (19, 6, -19), (24, 8.5, -19.5), (29, 10.5, -19.6), "mbif"], (3.1, 2.8), "mca"),
    "m2_sup": (["mbif", (39, 10.5, -19), (42, 7.5, -15.5), (44, 3, -12), (46, -2, -6), (45.5, -7, 0),
                (44.5, -8, 6), (40.5, -16, 12), (39, -20, 15), (46, -27, 32)], (2.4, 1.5), "mca"),
    "m2_inf": (["mbif", (39, 12.5, -22), (44, 6, -23), (48, -4, -19), (51, -16, -13), (53, -28, -7)],
               (2.2, 1.5), "mca"),
    "a1": (["term", (10, 5, -18.5), (6, 6.7, -18.5), (2.8, 9.6, -18.2), "acom"], (2.0, 2.0), "aca"),
    "a2": (["acom", (1.5, 18.5, -15), (1.5, 25, -7.5), "genu", (1.4, 34, 2.5), (1.4, 34.5, 7.5), (1.4, 30, 13),
            (1.4, 22.5, 21), (1.4, 7.5, 29.5), (1.4, -15, 25.5), (1.4, -35, 20)], (1.9, 1.3), "aca"),
    "callosomarginal": (["genu", (2.5, 40, 8), (3, 42, 20), (3, 32, 38), (3, 12, 50), (3, -10, 55)], (1.5, 1.0), ""),
    "pcomm": (["pco", (12, -4, -19.5), "p1p2"], (1.2, 1.2), "pcomm"),
    "p1": (["btip", (4, -11.3, -21.3), "p1p2"], (2.0, 2.0), "post"),
    "p2": (["p1p2", (14.5, -15, -21.5), (17.5, -20, -19.5), (18.5, -25, -15.5), (16, -30, -10.5), (13, -35, -8.5),
            (11, -45, -1.5), (10, -50, 0), (8, -80, 6)], (2.2, 1.5), "post"),
    "sca": ([(0, -13.2, -24.7), (4, -13.5, -24.7), (9, -13.3, -26), (12, -13, -27.5), (17, -22, -29),
             (20, -22.5, -32), (24, -30, -30), (30, -31, -32)], (1.3, 1.0), "post"),
    "aica": ([(0, -19.5, -44), (7, -25, -47), (17, -35, -47.5), (24, -33, -45)], (1.0, 0.8), "post"),
    "va": ([(27, -20, -118), (30, -30, -85), (25, -40, -74), (12, -35, -68), "pica0", (6, -27, -57), "vbj"],
           (3.9, 2.8), "post"),
    "pica": (["pica0", (12, -40, -62), (8, -50, -58), (5, -60, -45), (8, -70, -40)], (1.25, 1.0), "post"),
    "ophthalmic": (["ring", (15, 25, -30), (22, 40, -28)], (1.4, 1.0), ""),
    "acha": ([(14, 2.5, -21.8), (18, -4, -18), (22, -14, -12), (24, -22, -5)], (0.9, 0.7), ""),
    "eca": ([(23, 0, -124), (32, 4, -100), (44, 0, -75), (60, -6, -45), (74, -4, -15), (76, 5, 20), (70, 18, 50)],
            (3.0, 1.2), ""),
    "facial": ([(32, 4, -100), (42, 35, -96), (38, 60, -70)], (1.8, 1.2), ""),
}
_ARTERIES_MID: dict[str, tuple[list, tuple[float, float], str]] = {
    "basilar": (["vbj", (0, -22.5, -50), (0, -17, -40), (0, -14.5, -30), (0, -13, -25), "btip"], (3.6, 3.1), "basilar"),
}
_LABEL_KEYS = {
    "infra": "{} Infraclinoid Internal Carotid Artery", "supra": "{} Supraclinoid Internal Carotid Artery",
    "mca": "{} Middle Cerebral Artery", "aca": "{} Anterior Cerebral Artery",
    "pcomm": "{} Posterior Communicating Artery", "post": "Other Posterior Circulation", "basilar": "Basilar Tip",
    "acomm": "Anterior Communicating Artery",
}
# Tubes whose path starts at another tube's point: child -> parent (for distal fading of the signal).
_PARENT = {"ica_supra": "ica_infra", "m1": "ica_supra", "a1": "ica_supra", "m2_sup": "m1", "m2_inf": "m1",
           "a2": "a1", "callosomarginal": "a2", "pcomm": "ica_supra", "p1": "basilar", "p2": "p1",
           "sca": "basilar", "aica": "basilar", "basilar": "va", "pica": "va", "ophthalmic": "ica_infra",
           "acha": "ica_supra", "facial": "eca", "acomm": "a1"}


def seg_value(key: str, side: str) -> int:
    """Competition segmentation value of a label key on a side ("Left"/"Right"), 0 for unlabelled."""
    if not key:
        return 0
    return SEG_LABEL_VALUES[_LABEL_KEYS[key].format(side)]


def spline(waypoints: np.ndarray, step: float = STEP_MM) -> np.ndarray:
    """Uniform Catmull-Rom curve through the waypoints, sampled about ``step`` mm apart."""
    pts = np.asarray(waypoints, dtype=np.float64)
    if len(pts) < 2:
        return pts
    ext = np.vstack([2 * pts[0] - pts[1], pts, 2 * pts[-1] - pts[-2]])
    out = [pts[:1]]
    for i in range(1, len(ext) - 2):
        p0, p1, p2, p3 = ext[i - 1], ext[i], ext[i + 1], ext[i + 2]
        n = max(2, int(np.ceil(np.linalg.norm(p2 - p1) / step)) + 1)
        t = np.linspace(0.0, 1.0, n)[1:, None]
        cubic = (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + cubic))
    return np.vstack(out)


def _perpendiculars(tangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors perpendicular to ``tangent`` and to each other."""
    t = tangent / (np.linalg.norm(tangent) + 1e-9)
    helper = np.array([0.0, 0.0, 1.0]) if abs(t[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e1 = np.cross(t, helper)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(t, e1)


def add_tortuosity(rng: np.random.Generator, pts: np.ndarray, amp_mm: float) -> np.ndarray:
    """Smooth sideways wiggle (zero at both ends, so junctions stay put)."""
    n = len(pts)
    if n < 6 or amp_mm <= 0:
        return pts
    u = np.linspace(0.0, 1.0, n)
    envelope = np.sin(np.pi * u)
    length = float(np.sum(np.linalg.norm(np.diff(pts, axis=0), axis=1)))
    waves = max(1.0, length / rng.uniform(15.0, 40.0))
    e1, e2 = _perpendiculars(pts[-1] - pts[0])
    phase = rng.uniform(0, 2 * np.pi, 2)
    off = np.sin(2 * np.pi * waves * u + phase[0])[:, None] * e1
    off = off + np.sin(2 * np.pi * waves * u + phase[1])[:, None] * e2
    return pts + amp_mm * envelope[:, None] * off


def add_loop(rng: np.random.Generator, pts: np.ndarray, radius_mm: float) -> np.ndarray:
    """Insert one full curl (a vessel loop, a classic aneurysm mimic) somewhere in the middle of the centreline."""
    n = len(pts)
    span = int(np.clip(2 * np.pi * radius_mm / STEP_MM, 8, n // 2))
    if n < 12 or span >= n - 4:
        return pts
    i0 = int(rng.integers(2, n - span - 2))
    tangent = pts[i0 + span] - pts[i0]
    e1, e2 = _perpendiculars(tangent)
    rot = rng.uniform(0, 2 * np.pi)
    a, b = np.cos(rot) * e1 + np.sin(rot) * e2, -np.sin(rot) * e1 + np.cos(rot) * e2
    u = np.linspace(0.0, 1.0, span)
    out = pts.copy()
    out[i0:i0 + span] += radius_mm * ((1 - np.cos(2 * np.pi * u))[:, None] * a + np.sin(2 * np.pi * u)[:, None] * b)
    return out


def make_tube(name: str, pts: np.ndarray, d0: float, d1: float, label: int, kind: str = "artery") -> Tube:
    """A tube whose diameter goes linearly (by path length) from ``d0`` to ``d1``."""
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    frac = s / max(s[-1], 1e-6)
    return Tube(name, pts, 0.5 * (d0 + (d1 - d0) * frac), label, kind)


def _jitter(rng: np.random.Generator, sd: float, lim: float) -> np.ndarray:
    return np.clip(rng.normal(0.0, sd, 3), -lim, lim)


def _draw_nodes(rng: np.random.Generator, scale: np.ndarray) -> dict[str, np.ndarray]:
    """Shared junctions for both sides and the midline, scaled and jittered (left = mirrored right)."""
    nodes: dict[str, np.ndarray] = {}
    for side, sx in (("R", 1.0), ("L", -1.0)):
        for name, p in _NODES_R.items():
            q = np.array(p, dtype=np.float64) * [sx, 1, 1] * scale + _jitter(rng, 1.2, 3.0)
            if name in ("acom", "genu"):  # keep the midline pair on its own side
                q[0] = sx * rng.uniform(0.9, 2.2)
            nodes[f"{name}_{side}"] = q
    for name, p in _NODES_MID.items():
        q = np.array(p, dtype=np.float64) * scale + _jitter(rng, 1.2, 3.0)
        q[0] = np.clip(q[0], -2.5, 2.5)
        nodes[name] = q
    return nodes


def _resolve(rng: np.random.Generator, waypoints: list, side: str, sx: float, scale: np.ndarray,
             nodes: dict[str, np.ndarray], jitter_sd: float) -> np.ndarray:
    """Waypoint list -> array: named junctions from ``nodes``, the rest mirrored, scaled and jittered."""
    out = []
    for w in waypoints:
        if isinstance(w, str):
            out.append(nodes[w] if w in nodes else nodes[f"{w}_{side}"])
        else:
            q = np.array(w, dtype=np.float64) * [sx, 1, 1] * scale + _jitter(rng, jitter_sd, 4.5)
            out.append(q)
    return np.array(out)


_ORDER = ["va", "basilar", "ica_infra", "ica_supra", "m1", "m2_sup", "m2_inf", "a1", "acomm", "a2",
          "callosomarginal", "pcomm", "p1", "p2", "sca", "aica", "pica", "ophthalmic", "acha", "eca", "facial"]
_NEAR_MIDLINE = {"a2", "callosomarginal"}
_LOOPABLE = ["m2_sup", "m2_inf", "p2", "sca", "pica", "aica", "a2"]


def draw_variants(rng: np.random.Generator) -> dict[str, object]:
    """Anatomical variants of the circle (spec frequencies), per side where it applies."""
    v: dict[str, object] = {"acomm": str(rng.choice(["normal", "hypoplastic", "absent"], p=[0.84, 0.08, 0.08]))}
    for side in ("R", "L"):
        v[f"a1_{side}"] = str(rng.choice(["normal", "hypoplastic", "absent"], p=[0.94, 0.03, 0.03]))
        fetal = bool(rng.random() < 0.3)
        v[f"fetal_{side}"] = fetal
        pcomm = "large" if fetal else str(rng.choice(["normal", "hypoplastic", "absent"], p=[0.6, 0.25, 0.15]))
        v[f"pcomm_{side}"] = pcomm
        v[f"p1_{side}"] = str(rng.choice(["hypoplastic", "absent"], p=[0.8, 0.2])) if fetal else "normal"
        v[f"ophthalmic_{side}"] = bool(rng.random() < 0.85)
        v[f"acha_{side}"] = bool(rng.random() < 0.7)
        v[f"callosomarginal_{side}"] = bool(rng.random() < 0.8)
    if v["a1_R"] == "absent" and v["a1_L"] == "absent":
        v["a1_L"] = "normal"
    v["va_dominance"] = str(rng.choice(["balanced", "R", "L"], p=[0.5, 0.25, 0.25]))
    loops = rng.choice(_LOOPABLE, size=int(rng.choice([0, 0, 1, 2])), replace=False)
    v["loops"] = [f"{n}_{'R' if rng.random() < 0.5 else 'L'}" for n in loops]
    return v


def _diameters(name: str, side: str, d: tuple[float, float], v: dict[str, object]) -> tuple[float, float] | None:
    """Spec diameters changed by the variants; None when the vessel is absent."""
    d0, d1 = d
    state = {"a1": v.get(f"a1_{side}"), "acomm": v.get("acomm"), "pcomm": v.get(f"pcomm_{side}"),
             "p1": v.get(f"p1_{side}")}.get(name, "normal")
    if name in ("ophthalmic", "acha", "callosomarginal") and not v.get(f"{name}_{side}"):
        return None
    if state == "absent":
        return None
    if state == "hypoplastic":
        return 0.5 * d0 if name != "p1" else 0.45 * d0, 0.5 * d1 if name != "p1" else 0.45 * d1
    if state == "large":  # fetal PComm: the size of a P2
        return 2.1, 2.0
    if name == "a1" and v.get(f"a1_{'L' if side == 'R' else 'R'}") == "absent":
        return 1.25 * d0, 1.25 * d1
    if name == "va" and v.get("va_dominance") not in ("balanced", side):
        return 0.6 * d0, 0.6 * d1
    return d0, d1


def _snap_nodes(waypoints: list, side: str, pts: np.ndarray, nodes: dict[str, np.ndarray]) -> None:
    """Interior named junctions follow the final (wiggled) centreline, so children stay attached."""
    for w in waypoints[1:-1]:
        if isinstance(w, str):
            key = w if w in nodes else f"{w}_{side}"
            nodes[key] = pts[int(np.argmin(np.linalg.norm(pts - nodes[key], axis=1)))].copy()


def _attach(pts: np.ndarray, parent: Tube | None, first_is_node: bool) -> tuple[np.ndarray, float]:
    """Snap a branch's first point onto its parent's centreline; return the points and the parent's arc there."""
    if parent is None:
        return pts, 0.0
    i = int(np.argmin(np.linalg.norm(parent.points - pts[0], axis=1)))
    if not first_is_node:
        pts = pts.copy()
        pts[0] = parent.points[i]
    return pts, float(parent.arc[i])


def _one_artery(rng: np.random.Generator, name: str, side: str, spec: tuple, scale: np.ndarray,
                nodes: dict[str, np.ndarray], variants: dict[str, object], built: dict[str, Tube]) -> Tube | None:
    """Build one artery of one side (or the midline): waypoints -> spline -> wiggle/loop -> tube."""
    waypoints, d, key = spec
    diam = _diameters(name, side, d, variants)
    if diam is None:
        return None
    sx = 1.0 if side == "R" else -1.0
    way = _resolve(rng, waypoints, side, sx, scale, nodes, 2.0 if name not in ("acomm",) else 0.3)
    if name in _NEAR_MIDLINE:
        way[1:, 0] = sx * np.clip(np.abs(way[1:, 0]), 0.9, 4.0)
    pts = spline(way)
    amp = rng.uniform(0.0, 1.0) if name in ("basilar", "a1", "m1", "p1", "pcomm", "ica_supra") else rng.uniform(0, 2.5)
    if name not in ("acomm",):
        pts = add_tortuosity(rng, pts, amp)
    if f"{name}_{side}" in variants.get("loops", []):
        pts = add_loop(rng, pts, rng.uniform(1.8, 3.5))
    if name in _NEAR_MIDLINE:  # the two A2s run side by side in the fissure: never let one cross the midline
        pts[:, 0] = sx * np.maximum(sx * pts[:, 0], 0.8)
    parent_name = _PARENT.get(name)
    parent = built.get(f"{parent_name}_{side}") or built.get(str(parent_name))
    pts, path0 = _attach(pts, parent, isinstance(waypoints[0], str))
    _snap_nodes(waypoints, side, pts, nodes)
    g = rng.uniform(0.88, 1.12)
    tube = make_tube(name, pts, diam[0] * g, diam[1] * g, seg_value(key, "Right" if side == "R" else "Left"))
    tube.path0 = path0
    tube.gain = float(rng.uniform(0.9, 1.1))
    return tube


def build_arteries(rng: np.random.Generator, scale: np.ndarray) -> VesselTree:
    """The whole arterial tree of one head, with its variants and small extra branches."""
    variants = draw_variants(rng)
    nodes = _draw_nodes(rng, scale)
    specs = dict(_ARTERIES_R) | dict(_ARTERIES_MID)
    specs["acomm"] = (["acom_R", "acom_L"], (1.4, 1.4), "acomm")
    built: dict[str, Tube] = {}
    for name in _ORDER:
        sides = ("M",) if name in _ARTERIES_MID or name == "acomm" else ("R", "L")
        for side in sides:
            tube = _one_artery(rng, name, "R" if side == "M" else side, specs[name], scale, nodes, variants, built)
            if tube is None:
                continue
            tube.name = name if side == "M" else f"{name}_{side}"
            built[tube.name] = tube
    if variants["acomm"] == "hypoplastic" and "acomm" in built:
        built["acomm"].radii *= 0.55
    tubes = list(built.values())
    tubes += _small_branches(rng, built)
    return VesselTree(tubes, nodes, variants)


def _branch_from(rng: np.random.Generator, parent: Tube, frac: tuple[float, float], direction: np.ndarray,
                 length: float, d0: float, name: str) -> Tube:
    """A small unlabelled branch leaving ``parent`` at a random point, heading roughly along ``direction``."""
    i = int(rng.integers(int(frac[0] * (len(parent.points) - 1)), max(int(frac[1] * (len(parent.points) - 1)), 1) + 1))
    start = parent.points[i]
    direction = direction / np.linalg.norm(direction) + rng.normal(0, 0.35, 3)
    direction /= np.linalg.norm(direction)
    bend = rng.normal(0, 0.4, 3)
    way = [start, start + 0.5 * length * direction, start + length * (direction + 0.5 * bend)]
    pts = add_tortuosity(rng, spline(np.array(way)), rng.uniform(0.0, 1.5))
    tube = make_tube(name, pts, d0, 0.7 * d0, 0)
    tube.path0 = float(parent.arc[i])
    return tube


def _small_branches(rng: np.random.Generator, built: dict[str, Tube]) -> list[Tube]:
    """Cortical MCA/PCA branches and lenticulostriate perforators: extra overlaps and crossings, no label."""
    out: list[Tube] = []
    for side, sx in (("R", 1.0), ("L", -1.0)):
        for trunk in ("m2_sup", "m2_inf"):
            parent = built.get(f"{trunk}_{side}")
            for j in range(int(rng.integers(1, 3)) if parent is not None else 0):
                out.append(_branch_from(rng, parent, (0.3, 0.9), np.array([sx, rng.uniform(-1, 1), 0.8]),
                                        rng.uniform(18, 35), rng.uniform(1.0, 1.4), f"m3_{trunk}_{j}_{side}"))
        parent = built.get(f"p2_{side}")
        for j in range(int(rng.integers(1, 3)) if parent is not None else 0):
            out.append(_branch_from(rng, parent, (0.4, 0.9), np.array([0.4 * sx, -1.0, rng.uniform(-0.5, 0.6)]),
                                    rng.uniform(15, 30), rng.uniform(1.0, 1.3), f"pca_cortical_{j}_{side}"))
        parent = built.get(f"m1_{side}")
        for j in range(int(rng.integers(0, 4)) if parent is not None else 0):
            out.append(_branch_from(rng, parent, (0.2, 0.8), np.array([0.2 * sx, 0.0, 1.0]),
                                    rng.uniform(12, 22), rng.uniform(0.6, 0.9), f"lenticulostriate_{j}_{side}"))
    return out


def infundibulum(rng: np.random.Generator, parent_point: np.ndarray, branch: Tube, name: str) -> Tube:
    """A conical widening (< 3 mm) at a branch origin: the commonest aneurysm mimic; labelled as the branch."""
    pts = branch.points
    length = rng.uniform(1.5, 2.8)
    k = int(np.clip(np.searchsorted(np.linalg.norm(pts - pts[0], axis=1) > length, True), 1, len(pts) - 1))
    base = rng.uniform(1.1, 1.45)  # radius at the base: diameter 2.2-2.9 mm
    tip = max(float(branch.radii[k]), 0.4)
    axis = np.linspace(parent_point, pts[k], 6)
    tube = Tube(name, axis, np.linspace(base, tip, 6), branch.label, "artery", branch.gain, branch.path0)
    return tube
