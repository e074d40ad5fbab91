"""Head-and-vessel phantom anatomy: a jittered Circle-of-Willis tree, variants, aneurysms and mimics.

Everything is built in the spec's MNI-like head frame (RAS mm, right-side table mirrored for the left), then a random
head pose maps it to DICOM patient space (LPS): ``lps = F @ (scale * R @ ras + t)`` with ``F = diag(-1, -1, 1)``.
Vessels, sinuses, aneurysms and mimics all end up as one list of tapered capsules (segment a-b with radii ra, rb),
which ``render`` turns into partial-volume occupancy on any acquisition grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.interpolate import CubicSpline

from kernel.labels import LOCATION_COLS, SEG_LABEL_VALUES

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])

# Competition localizer counts per location (competition.md): the location frequencies of the phantom's aneurysms.
LOCATION_COUNTS: dict[str, int] = {
    "Anterior Communicating Artery": 376,
    "Left Supraclinoid Internal Carotid Artery": 343,
    "Right Middle Cerebral Artery": 304,
    "Right Supraclinoid Internal Carotid Artery": 287,
    "Left Middle Cerebral Artery": 225,
    "Other Posterior Circulation": 117,
    "Basilar Tip": 114,
    "Right Posterior Communicating Artery": 105,
    "Right Infraclinoid Internal Carotid Artery": 101,
    "Left Posterior Communicating Artery": 89,
    "Left Infraclinoid Internal Carotid Artery": 81,
    "Right Anterior Cerebral Artery": 58,
    "Left Anterior Cerebral Artery": 47,
}
assert sorted(LOCATION_COUNTS) == sorted(LOCATION_COLS), "every location needs a count"

P_POSITIVE = 0.43
P_MULTIPLE = 0.13
KIND_ARTERY, KIND_VEIN, KIND_ANEURYSM = 0, 1, 2

# Right-side vessel table (spec). Strings name junction nodes shared between tubes (jittered once).
NODES_RIGHT: dict[str, tuple[float, float, float]] = {
    "OPH": (11, 7, -28),  # ophthalmic origin = infra/supraclinoid boundary
    "PCO": (13.5, 1.5, -22.5),  # PComm origin on the ICA
    "T": (15, 3.5, -21),  # ICA terminus
    "MB": (34, 11.5, -19.7),  # M1 bifurcation
    "AJ": (1.5, 11.5, -18),  # A1 / AComm / A2 junction (AComm ~3 mm long)
    "PJ": (8, -10.5, -21),  # P1 / P2 / PComm junction
    "PICAO": (10, -31, -62),  # PICA origin on the vertebral artery
}
NODES_MIDLINE: dict[str, tuple[float, float, float]] = {
    "VB": (0, -24, -53),  # vertebrobasilar junction
    "BT": (0, -11.5, -21),  # basilar tip
}


@dataclass
class TubeSpec:
    """One vessel of the table: waypoints (node names or RAS points), radii at start/end, label, intensity factor."""

    name: str
    points: list
    r0: float
    r1: float
    label: str | None  # location name (side-resolved) or None
    flow: float = 1.0  # inflow intensity factor (TOF fades distally)
    tail_label: tuple[str, float] | None = None  # (label, mm): the last mm carry another label
    kind: int = KIND_ARTERY


def _side_name(base: str, side: int) -> str:
    return f"{'Right' if side > 0 else 'Left'} {base}"


def _right_tubes(side: int) -> list[TubeSpec]:
    ica_in = _side_name("Infraclinoid Internal Carotid Artery", side)
    ica_sup = _side_name("Supraclinoid Internal Carotid Artery", side)
    mca = _side_name("Middle Cerebral Artery", side)
    aca = _side_name("Anterior Cerebral Artery", side)
    pcomm = _side_name("Posterior Communicating Artery", side)
    post = "Other Posterior Circulation"
    return [
        TubeSpec("ica_infra", [(26, -8, -95), (27, -12, -75), (29, -14, -60), (29, -12, -47), (25, -9, -46),
                               (18, -5, -44), (14, -5, -41), (13.5, -2, -36), (12.5, 2, -33.5), (12, 6, -32),
                               (13, 9.5, -33), "OPH"], 2.35, 2.4, ica_in, 1.0),
        TubeSpec("ica_supra", ["OPH", (12.5, 4, -24), "PCO", "T"], 1.8, 1.8, ica_sup, 0.95),
        TubeSpec("m1", ["T", (19, 6, -19), (24, 8.5, -19.5), (29, 10.5, -19.6), "MB"], 1.55, 1.5, mca, 0.9),
        TubeSpec("m2_sup", ["MB", (39, 10.5, -19), (42, 7.5, -15.5), (44, 3, -12), (46, -2, -6), (45.5, -7, 0),
                            (44.5, -8, 6), (40.5, -16, 12), (39, -20, 15)], 1.2, 0.9, mca, 0.8),
        TubeSpec("m2_inf", ["MB", (39, 12.5, -21), (44, 8, -21), (48, 2, -19), (50, -6, -15), (50, -14, -9)],
                 1.1, 0.85, mca, 0.8),
        TubeSpec("a1", ["T", (10, 5, -18.5), (6, 6.7, -18.5), (2.5, 9.6, -18.2), "AJ"], 1.0, 1.0, aca, 0.85),
        TubeSpec("a2", ["AJ", (1.8, 18.5, -15), (1.8, 25, -7.5), (1.8, 31, -3), (1.8, 34, 2.5), (1.8, 34.5, 7.5),
                        (1.8, 30, 13), (1.8, 22.5, 21), (1.8, 7.5, 29.5), (1.8, -15, 25.5)], 0.95, 0.8, aca, 0.75),
        TubeSpec("pcomm", ["PCO", (12, -4, -19.5), "PJ"], 0.6, 0.6, pcomm, 0.8),
        TubeSpec("p1", ["BT", (4, -11.3, -21.3), "PJ"], 1.0, 1.0, post, 0.85),
        TubeSpec("p2", ["PJ", (14.5, -15, -21.5), (17.5, -20, -19.5), (18.5, -25, -15.5), (16, -30, -10.5),
                        (13, -35, -8.5), (11, -45, -1.5), (10, -50, 0), (8, -80, 6)], 1.1, 0.85, post, 0.75),
        TubeSpec("sca", [(0.5, -13.5, -24.5), (4, -13.5, -24.7), (9, -13.3, -26), (12, -13, -27.5), (17, -22, -29),
                         (20, -22.5, -32), (24, -30, -30), (30, -31, -32)], 0.65, 0.55, post, 0.75),
        TubeSpec("aica", [(0.5, -19.5, -44), (7, -25, -47), (17, -35, -47.5), (24, -33, -45)], 0.5, 0.45, post, 0.7),
        TubeSpec("vertebral", [(30, -30, -85), (25, -40, -74), (12, -35, -68), "PICAO", (6, -27, -57), "VB"],
                 1.4, 1.9, post, 0.95),
        TubeSpec("pica", ["PICAO", (12, -40, -62), (8, -50, -58), (5, -60, -45)], 0.65, 0.55, post, 0.7),
        TubeSpec("oph", ["OPH", (13, 15, -29.5), (15, 25, -30)], 0.7, 0.6, None, 0.7),
    ]


def _midline_tubes() -> list[TubeSpec]:
    return [
        TubeSpec("basilar", ["VB", (0, -22.5, -50), (0, -17, -40), (0, -14.5, -30), (0, -13, -25), "BT"],
                 1.8, 1.55, "Other Posterior Circulation", 0.9, tail_label=("Basilar Tip", 7.0)),
        TubeSpec("acomm", ["AJ_R", "AJ_L"], 0.7, 0.7, "Anterior Communicating Artery", 0.8),
    ]


def _venous_tubes(side: int) -> list[TubeSpec]:
    """Dural sinuses (hard mimics in CTA, bright in T1post); right side plus the shared midline ones on side +1."""
    s = float(side)
    tubes = [
        TubeSpec("transverse", [(0, -99, -8), (s * 35, -92, -14), (s * 52, -66, -24), (s * 46, -45, -40),
                                (s * 38, -32, -62), (s * 33, -25, -85)], 3.2, 3.8, None, 1.0, kind=KIND_VEIN),
        TubeSpec("cavernous", [(s * 20, 5, -36), (s * 21, -4, -38), (s * 22, -12, -42)], 1.6, 1.4, None, 0.8,
                 kind=KIND_VEIN),
    ]
    if side > 0:
        tubes += [
            TubeSpec("sss", [(0, 62, 30), (0, 35, 66), (0, -5, 79), (0, -50, 70), (0, -85, 42), (0, -99, -8)],
                     2.5, 4.0, None, 1.0, kind=KIND_VEIN),
            TubeSpec("straight", [(0, -35, 3), (0, -60, 0), (0, -85, -5), (0, -99, -8)], 1.8, 2.6, None, 1.0,
                     kind=KIND_VEIN),
        ]
    return tubes


@dataclass
class Centreline:
    """A smoothed, densely resampled vessel: points (N, 3) RAS, radii (N,), labels (N,) seg values, flow factor."""

    name: str
    side: int
    points: np.ndarray
    radii: np.ndarray
    labels: np.ndarray
    flow: float
    kind: int

    def tangent(self, i: int) -> np.ndarray:
        j0, j1 = max(i - 2, 0), min(i + 2, len(self.points) - 1)
        d = self.points[j1] - self.points[j0]
        return d / (np.linalg.norm(d) + 1e-9)

    def index_at(self, mm: float) -> int:
        """Index of the point ``mm`` along the centreline (negative: from the end)."""
        seg = np.linalg.norm(np.diff(self.points, axis=0), axis=1)
        arc = np.concatenate([[0.0], np.cumsum(seg)])
        target = mm if mm >= 0 else arc[-1] + mm
        return int(np.clip(np.searchsorted(arc, target), 0, len(arc) - 1))


def _resample(points: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Smooth a polyline with a chord-length cubic spline; returns dense points and their arc length."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    keep = np.concatenate([[True], seg > 1e-3])
    points = points[keep]
    t = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    if len(points) == 2:
        n = max(int(np.ceil(t[-1] / step)), 1) + 1
        s = np.linspace(0, t[-1], n)
        return points[0] + (s / t[-1])[:, None] * (points[1] - points[0]), s
    spline = CubicSpline(t, points, axis=0, bc_type="natural")
    n = max(int(np.ceil(t[-1] / step)), 1) + 1
    s = np.linspace(0, t[-1], n)
    dense = spline(s)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))])
    return dense, arc


@dataclass
class Aneurysm:
    """Ground truth of one aneurysm (LPS mm): dome centre, parent-vessel point, size and pointing direction."""

    location: str
    centre_lps: np.ndarray
    parent_lps: np.ndarray
    dome_mm: float
    neck_mm: float
    direction_lps: np.ndarray
    centre_ras: np.ndarray  # head frame, for side checks
    has_bleb: bool


@dataclass
class Anatomy:
    """One phantom head: pose, capsules (LPS), aneurysm ground truth and the variants drawn."""

    head_to_lps: np.ndarray  # 4x4: head-frame RAS mm -> LPS mm
    scale: float
    cap_a: np.ndarray  # (N, 3) LPS
    cap_b: np.ndarray
    cap_ra: np.ndarray  # (N,) mm
    cap_rb: np.ndarray
    cap_label: np.ndarray  # (N,) seg value, 0 = none
    cap_flow: np.ndarray  # (N,) intensity factor
    cap_kind: np.ndarray  # (N,) KIND_*
    cap_group: np.ndarray  # (N,) chunk id: consecutive capsules of one vessel rendered together
    aneurysms: list[Aneurysm]
    fov_points: np.ndarray  # (K, 3) LPS points every field of view must hold (aneurysms, or decoys for negatives)
    variants: dict[str, object] = field(default_factory=dict)
    head_params: dict[str, float] = field(default_factory=dict)
    # hard mimics drawn in this head: {"kind": "loop" | "infundibulum", "vessel": name, "centre_lps": (3,)}, written
    # to the truth file for analysis (nothing in training reads them yet)
    mimics: list[dict[str, object]] = field(default_factory=list)

    def lps_to_head(self, points_lps: np.ndarray) -> np.ndarray:
        """Map (N, 3) LPS points back to the head frame (RAS mm, unscaled)."""
        inv = np.linalg.inv(self.head_to_lps)
        pts = np.atleast_2d(points_lps)
        return pts @ inv[:3, :3].T + inv[:3, 3]


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(min(abs(rng.normal(0, max_deg / 2.5)), max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _jitter(rng: np.random.Generator, p: tuple[float, float, float], sigma: float) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    d = np.clip(rng.normal(0, sigma, 3), -2.5 * sigma, 2.5 * sigma)
    if abs(p[0]) < 3.0:  # midline-adjacent points keep their side
        d[0] *= 0.15
    return p + d


def sample_locations(rng: np.random.Generator, force_positive: bool | None = None) -> list[str]:
    """Draw the aneurysm locations of one series: ~43% positive, 13% of positives with 2-5, competition frequencies."""
    positive = rng.random() < P_POSITIVE if force_positive is None else force_positive
    if not positive:
        return []
    n = 1
    if rng.random() < P_MULTIPLE:
        n = int(rng.choice([2, 3, 4, 5], p=[0.72, 0.18, 0.07, 0.03]))
    names = list(LOCATION_COUNTS)
    w = np.array([LOCATION_COUNTS[k] for k in names], dtype=float)
    picks = rng.choice(len(names), size=n, replace=False, p=w / w.sum())
    return [names[i] for i in picks]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) + 1e-9)


def _perturb(rng: np.random.Generator, v: np.ndarray, amount: float) -> np.ndarray:
    return _unit(_unit(v) + rng.normal(0, amount, 3))


def _site(rng: np.random.Generator, location: str, lines: dict[tuple[str, int], Centreline]) -> tuple:
    """(centreline, index, direction RAS) where an aneurysm of ``location`` sits, per the spec's placement rules."""
    side = 1 if location.startswith("Right") else -1
    up, ant, lat = np.array([0, 0, 1.0]), np.array([0, 1.0, 0]), np.array([side, 0, 0.0])
    if "Infraclinoid" in location:
        cl = lines[("ica_infra", side)]
        cand = np.where((cl.points[:, 2] > -42) & (cl.points[:, 2] < -31))[0]
        i = int(rng.choice(cand)) if len(cand) else len(cl.points) - 8
        return cl, i, _perturb(rng, lat + 0.3 * ant, 0.3)
    if "Supraclinoid" in location:
        cl = lines[("ica_supra", side)]
        if rng.random() < 0.65:  # terminus, superior
            i = cl.index_at(-1.5)
            return cl, i, _perturb(rng, cl.tangent(i) + 1.2 * up, 0.3)
        i = cl.index_at(float(rng.uniform(3.0, 4.0)))  # near the ophthalmic origin, dorsal
        return cl, i, _perturb(rng, up + 0.4 * ant, 0.3)
    if "Middle Cerebral" in location:
        cl = lines[("m1", side)]
        i = len(cl.points) - 1
        return cl, i, _perturb(rng, cl.tangent(i) + 0.3 * lat, 0.35)
    if location == "Anterior Communicating Artery":
        cl = lines[("acomm", 0)]
        i = len(cl.points) // 2
        return cl, i, _perturb(rng, ant if rng.random() < 0.6 else up, 0.35)
    if "Anterior Cerebral" in location:
        cl = lines[("a2", side)]
        d = np.linalg.norm(cl.points - np.array([side * 1.8, 33.0, 0.0]), axis=1)
        i = int(np.argmin(d))
        return cl, i, _perturb(rng, ant + 0.5 * up + 0.9 * lat, 0.2)
    if "Posterior Communicating" in location:
        cl = lines[("pcomm", side)]
        i = cl.index_at(float(rng.uniform(2.5, 3.5)))
        return cl, i, _perturb(rng, np.array([0.6 * side, -1.0, -0.7]), 0.3)
    if location == "Basilar Tip":
        cl = lines[("basilar", 0)]
        i = len(cl.points) - 1
        return cl, i, _perturb(rng, cl.tangent(i) + 0.3 * up, 0.3)
    # Other posterior circulation: SCA, PICA, vertebrobasilar junction or P1/P2 junction.
    s = int(rng.choice([-1, 1]))
    choice = rng.choice(["sca", "pica", "vb", "p2"], p=[0.35, 0.3, 0.2, 0.15])
    if choice == "vb":
        cl = lines[("basilar", 0)]
        i = 2
        return cl, i, _perturb(rng, np.array([0, 0.8, -0.6]), 0.4)
    cl = lines[(str(choice), s)]
    i = cl.index_at(float(rng.uniform(3.0, 4.5)))
    return cl, i, _perturb(rng, cl.tangent(i) + np.array([s * 0.5, 0, 0.3]), 0.4)


def build_anatomy(rng: np.random.Generator, locations: list[str], *, step_mm: float = 0.8,
                  dome_mm: float | None = None) -> Anatomy:
    """Sample one head: pose, jittered tree with variants, aneurysms at ``locations`` and hard mimics.

    ``dome_mm`` makes every sac a sphere of that diameter in the patient (LPS mm, the head scale undone; aspect 1, no
    bleb, the drawn neck/dome ratio kept). The generator draws exactly as without it: the same head, pose, vessels,
    variants and mimics as the series with a drawn dome. ``Aneurysm.dome_mm`` stays in the head frame (patient
    diameter / ``scale``), as for drawn domes. The helpers below draw from ``rng`` in this order; keep it, or every
    phantom of every seed changes.
    """
    scale, head_to_lps = _pose(rng)
    variants = _variants(rng, set(locations))
    lines = _centrelines(rng, _nodes(rng), variants, step_mm)
    mimics_head: list[tuple[str, str, np.ndarray]] = []  # (kind, vessel, head-frame centre) of each, for the truth
    _add_loops(rng, lines, variants, mimics_head)
    caps = _vessel_capsules(lines)
    aneurysms = [_place_aneurysm(rng, location, lines, caps, scale, head_to_lps, dome_mm) for location in locations]
    # Negatives get decoy sites so that the field-of-view fitting (protocols) says nothing about the label.
    fov_points = [a.centre_lps for a in aneurysms] or _decoys(rng, lines, head_to_lps)
    _add_infundibula(rng, lines, caps, bool(locations), variants, mimics_head)
    head_params = {
        "csf_mm": float(rng.uniform(1.5, 4.0)),
        "skull_mm": float(rng.uniform(5.0, 8.0)),
        "scalp_mm": float(rng.uniform(4.0, 6.0)),
        "ventricle_scale": float(rng.uniform(0.7, 1.5)),
        "brain_scale_x": float(rng.uniform(0.95, 1.05)),
        "brain_scale_y": float(rng.uniform(0.95, 1.05)),
        "brain_scale_z": float(rng.uniform(0.95, 1.05)),
    }
    return Anatomy(
        head_to_lps=head_to_lps,
        scale=scale,
        cap_a=_to_lps(head_to_lps, np.array([c[0] for c in caps])),
        cap_b=_to_lps(head_to_lps, np.array([c[1] for c in caps])),
        cap_ra=np.array([c[2] for c in caps]) * scale,
        cap_rb=np.array([c[3] for c in caps]) * scale,
        cap_label=np.array([c[4] for c in caps], dtype=np.int16),
        cap_flow=np.array([c[5] for c in caps]),
        cap_kind=np.array([c[6] for c in caps], dtype=np.int8),
        cap_group=np.array([c[7] for c in caps]),
        aneurysms=aneurysms,
        fov_points=np.array(fov_points).reshape(-1, 3),
        variants=variants,
        head_params=head_params,
        mimics=[{"kind": kind, "vessel": vessel, "centre_lps": _to_lps(head_to_lps, centre[None])[0]}
                for kind, vessel, centre in mimics_head],
    )


Capsule = tuple  # (a, b, ra, rb, label, flow, kind, group): a tapered vessel piece in the head frame


def _pose(rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """(scale, head -> LPS 4x4): a random global scale, rotation and translation of the head."""
    scale = float(rng.uniform(0.9, 1.1))
    rot = _rotation(rng, 15.0)
    trans = np.clip(rng.normal(0, 5.0, 3), -12, 12)
    head_to_lps = np.eye(4)
    head_to_lps[:3, :3] = RAS_TO_LPS @ (scale * rot)
    head_to_lps[:3, 3] = RAS_TO_LPS @ trans
    return scale, head_to_lps


def _variants(rng: np.random.Generator, loc_set: set[str]) -> dict[str, object]:
    """Circle-of-Willis variants (fetal PCA, absent PComm, A1, AComm); a vessel that carries an aneurysm stays."""
    fetal = {s: bool(rng.random() < 0.25) for s in (1, -1)}
    pcomm_absent = {s: (not fetal[s]) and rng.random() < 0.15 for s in (1, -1)}
    for s in (1, -1):
        if _side_name("Posterior Communicating Artery", s) in loc_set:
            pcomm_absent[s] = False
    a1_state = {s: str(rng.choice(["normal", "hypoplastic", "absent"], p=[0.94, 0.045, 0.015])) for s in (1, -1)}
    acomm_state = str(rng.choice(["normal", "hypoplastic", "absent"], p=[0.84, 0.09, 0.07]))
    if "Anterior Communicating Artery" in loc_set:
        acomm_state = "normal"
    return {"fetal_pca": fetal, "pcomm_absent": pcomm_absent, "a1": a1_state, "acomm": acomm_state}


def _nodes(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The junction nodes, jittered once (per side), shared by the vessels that meet there."""
    nodes: dict[str, np.ndarray] = {}
    for s in (1, -1):
        for k, p in NODES_RIGHT.items():
            nodes[f"{k}_{s}"] = _jitter(rng, (s * p[0], p[1], p[2]), 1.5)
    for k, p in NODES_MIDLINE.items():
        nodes[k] = _jitter(rng, p, 1.5)
    nodes["AJ_R"], nodes["AJ_L"] = nodes["AJ_1"], nodes["AJ_-1"]
    return nodes


def _tube_radii(rng: np.random.Generator, spec: TubeSpec, s: int,
                variants: dict[str, Any]) -> tuple[float, float] | None:
    """(r0, r1) of a tube in this head, or None when a variant removes it."""
    r0, r1 = spec.r0, spec.r1
    fetal, a1_state, acomm_state = variants["fetal_pca"], variants["a1"], variants["acomm"]
    if spec.name == "pcomm" and fetal.get(s):
        r0 = r1 = 1.05
    if spec.name == "p1" and fetal.get(s):
        r0 = r1 = 0.5
    if spec.name == "pcomm" and variants["pcomm_absent"].get(s):
        return None
    if spec.name == "a1" and a1_state[s] != "normal":
        if a1_state[s] == "absent":
            return None
        r0 = r1 = 0.45
    if spec.name == "acomm":
        if acomm_state == "absent":
            return None
        r0 = r1 = float(rng.uniform(0.6, 0.75)) * (0.55 if acomm_state == "hypoplastic" else 1.0)
    if spec.name == "oph" and rng.random() < 0.3:
        return None
    return r0, r1


def _centrelines(rng: np.random.Generator, nodes: dict[str, np.ndarray], variants: dict[str, Any],
                 step_mm: float) -> dict[tuple[str, int], Centreline]:
    """Every vessel of this head as a resampled centreline with radii, segmentation labels, flow and kind."""
    specs: list[tuple[TubeSpec, int]] = []
    for s in (1, -1):
        specs += [(t, s) for t in _right_tubes(s)]
        specs += [(t, s) for t in _venous_tubes(s)]
    specs += [(t, 0) for t in _midline_tubes()]
    lines: dict[tuple[str, int], Centreline] = {}
    for spec, s in specs:
        radii_ends = _tube_radii(rng, spec, s, variants)
        if radii_ends is None:
            continue
        pts = []
        for p in spec.points:
            if isinstance(p, str):
                pts.append(nodes[p] if p in nodes else nodes[f"{p}_{s}"])
            else:
                q = (s * p[0], p[1], p[2]) if spec.kind == KIND_ARTERY and s else p
                pts.append(_jitter(rng, q, 1.2 if spec.kind == KIND_ARTERY else 2.0))
        dense, arc = _resample(np.array(pts), step_mm)
        radii = np.interp(arc, [0, arc[-1]], list(radii_ends)) * float(rng.uniform(0.9, 1.1))
        value = SEG_LABEL_VALUES[spec.label] if spec.label else 0
        labels = np.full(len(dense), value, dtype=np.int16)
        if spec.tail_label:
            labels[arc >= arc[-1] - spec.tail_label[1]] = SEG_LABEL_VALUES[spec.tail_label[0]]
        lines[(spec.name, s)] = Centreline(spec.name, s, dense, radii, labels, spec.flow, spec.kind)
    return lines


def _add_loops(rng: np.random.Generator, lines: dict[tuple[str, int], Centreline], variants: dict[str, Any],
               mimics: list[tuple[str, str, np.ndarray]]) -> None:
    """Hard mimic: loops (tortuous sections) on a few vessels, bent in place."""
    for key in [k for k in lines if k[0] in ("m2_sup", "p2", "pica", "a2", "ica_infra")]:
        if rng.random() < 0.12:
            cl = lines[key]
            n = len(cl.points)
            i0 = int(rng.integers(n // 5, max(n // 2, n // 5 + 1)))
            w = min(int(rng.integers(12, 30)), n - i0 - 1)
            if w < 6:
                continue
            normal = _unit(np.cross(cl.tangent(i0 + w // 2), rng.normal(size=3)))
            bump = np.sin(np.linspace(0, np.pi, w)) ** 2 * float(rng.uniform(2.0, 5.0))
            cl.points[i0:i0 + w] += bump[:, None] * normal
            variants.setdefault("loops", []).append(key[0])
            mimics.append(("loop", key[0], cl.points[i0 + w // 2].copy()))


def _vessel_capsules(lines: dict[tuple[str, int], Centreline], chunk: int = 7) -> list[Capsule]:
    """Consecutive centreline points as capsules, grouped ``chunk`` at a time (the renderer's bounding boxes)."""
    caps: list[Capsule] = []
    group = 0
    for cl in lines.values():
        for i in range(len(cl.points) - 1):
            if i % chunk == 0:
                group += 1
            caps.append((cl.points[i], cl.points[i + 1], cl.radii[i], cl.radii[i + 1], int(cl.labels[i]),
                         cl.flow, cl.kind, group))
    return caps


def _place_aneurysm(rng: np.random.Generator, location: str, lines: dict[tuple[str, int], Centreline],
                    caps: list[Capsule], scale: float, head_to_lps: np.ndarray, dome_mm: float | None) -> Aneurysm:
    """One saccular aneurysm at a site of ``location``: neck, (elongated) dome and maybe a bleb, added to ``caps``."""
    cl, i, u = _site(rng, location, lines)
    parent = cl.points[i]
    rp = float(cl.radii[i])
    dome = float(np.clip(np.exp(np.log(4.5) + 0.45 * rng.normal()), 2.0, 25.0))
    neck = dome * float(rng.uniform(0.5, 0.9))
    aspect = float(rng.uniform(1.0, 2.0))
    if dome_mm is not None:
        neck *= dome_mm / scale / dome
        dome, aspect = dome_mm / scale, 1.0
    radius = dome / 2
    elong = radius * 0.25 * (aspect - 1.0)
    centre = parent + u * (0.6 * rp + radius + elong + float(rng.uniform(0, 0.4)) * radius)
    sac_flow = cl.flow * (1.0 - 0.4 * float(np.clip((dome - 6.0) / 10.0, 0, 1)))
    group = caps[-1][7] + 1
    label = int(cl.labels[i])
    caps.append((parent, centre, neck / 2, neck / 2, label, sac_flow, KIND_ANEURYSM, group))
    caps.append((centre - u * elong, centre + u * elong, radius, radius, label, sac_flow, KIND_ANEURYSM, group))
    bleb = bool(rng.random() < 0.15)
    if bleb:
        w = _unit(u + 0.8 * _unit(np.cross(u, rng.normal(size=3))))
        rb = dome * float(rng.uniform(0.2, 0.35))
        bleb = dome_mm is None  # drawn either way: a requested dome leaves the generator's stream unchanged
    if bleb:
        c2 = centre + w * (radius + elong * 0.5 + 0.3 * rb)
        caps.append((c2, c2, rb, rb, label, sac_flow, KIND_ANEURYSM, group))
    lps = _to_lps(head_to_lps, np.array([centre, parent]))
    return Aneurysm(location, lps[0], lps[1], dome, neck, _unit(head_to_lps[:3, :3] @ u), centre.copy(), bleb)


def _decoys(rng: np.random.Generator, lines: dict[tuple[str, int], Centreline],
            head_to_lps: np.ndarray) -> list[np.ndarray]:
    """LPS points beside vessel sites of a negative series, drawn like aneurysm sites (for the field of view)."""
    points = []
    for location in sample_locations(rng, force_positive=True):
        try:
            cl, i, u = _site(rng, location, lines)
        except KeyError:  # that vessel is absent in this head (variant): no decoy there
            continue
        points.append(_to_lps(head_to_lps, (cl.points[i] + u * (cl.radii[i] + 3.0))[None])[0])
    return points


def _add_infundibula(rng: np.random.Generator, lines: dict[tuple[str, int], Centreline], caps: list[Capsule],
                     positive: bool, variants: dict[str, Any], mimics: list[tuple[str, str, np.ndarray]]) -> None:
    """Hard mimic: infundibula (conical widenings < 3 mm) at branch origins, in negatives and positives alike."""
    n_inf = int(rng.choice([0, 1, 2], p=[0.45, 0.4, 0.15] if not positive else [0.55, 0.35, 0.1]))
    origins = [k for k in lines if k[0] in ("pcomm", "sca", "pica", "oph", "aica")]
    for j in rng.permutation(len(origins))[:n_inf] if origins else []:
        cl = lines[origins[j]]
        length = float(rng.uniform(1.2, 2.4))
        k = cl.index_at(length)
        base_r = float(rng.uniform(0.7, 1.4))
        caps.append((cl.points[0], cl.points[k], base_r, float(cl.radii[k]), int(cl.labels[0]), cl.flow,
                     KIND_ARTERY, caps[-1][7] + 1))
        variants.setdefault("infundibula", []).append(origins[j][0])
        mimics.append(("infundibulum", origins[j][0], (cl.points[0] + cl.points[k]) / 2.0))


def _to_lps(head_to_lps: np.ndarray, pts_ras: np.ndarray) -> np.ndarray:
    return pts_ras @ head_to_lps[:3, :3].T + head_to_lps[:3, 3]
