"""Aneurysm placement and shape for the randomised style, and the negatives' hard mimics (infundibula).

Each location has a few candidate sites on the tree (spec: bifurcation apices, dome along the flow; PComm
posterolateral/inferior; AComm anterior or superior; basilar tip superior; ophthalmic origin dorsal; cavernous
lateral). A sac is an ellipsoid dome (aspect ratio 1-2 over the neck) joined to the parent by a neck capsule, with
extra lobes or a daughter bleb on some.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from kernel.labels import SEG_LABEL_VALUES

from .anatomy import Tube, VesselTree, infundibulum


@dataclass
class Sac:
    """One aneurysm in the head frame: the dome and its parts (for the signed distance)."""

    location: str
    label: int
    parent: Tube
    parent_point: np.ndarray
    centre: np.ndarray
    direction: np.ndarray
    dome: float
    neck: float
    height: float
    site: str
    shape: str
    bleb: bool
    rot: np.ndarray  # (3, 3) rows: dome axis, two perpendiculars
    semi: np.ndarray  # (3,) semi-axes along rot rows
    spheres: list[tuple[np.ndarray, float]] = field(default_factory=list)  # lobes and bleb

    @property
    def radius(self) -> float:
        """Bounding radius around ``centre`` (mm)."""
        far = [float(np.linalg.norm(c - self.centre) + r) for c, r in self.spheres]
        return max([float(self.semi.max()), float(np.linalg.norm(self.parent_point - self.centre)) + self.neck / 2]
                   + far)


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / (np.linalg.norm(v) + 1e-12)


def _tangent(t: Tube, i: int) -> np.ndarray:
    i0, i1 = max(i - 2, 0), min(i + 2, len(t.points) - 1)
    return _unit(t.points[i1] - t.points[i0])


def _near(t: Tube, p: np.ndarray) -> int:
    return int(np.argmin(np.linalg.norm(t.points - p, axis=1)))


def _side(location: str) -> tuple[str, float]:
    if location.startswith("Left"):
        return "L", -1.0
    if location.startswith("Right"):
        return "R", 1.0
    return "", 0.0


def _sites(location: str, tree: VesselTree, rng: np.random.Generator) -> list[tuple[str, Tube, int, np.ndarray]]:
    """Candidate (site name, parent tube, centreline index, preferred dome direction) for a location, best first."""
    s, sx = _side(location)
    t = lambda name: tree.tube(f"{name}_{s}" if s else name)  # noqa: E731
    out: list[tuple[str, Tube, int, np.ndarray]] = []

    def add(name: str, tube: Tube | None, i: int | None, direction: np.ndarray | None) -> None:
        if tube is not None and i is not None:
            i = int(np.clip(i, 0, len(tube.points) - 1))
            out.append((name, tube, i, _unit(direction if direction is not None else _tangent(tube, i))))

    if "Middle Cerebral" in location and (m1 := t("m1")) is not None:
        add("M1 bifurcation", m1, len(m1.points) - 1, _tangent(m1, len(m1.points) - 1) + [0.3 * sx, 0, 0])
        i = int(len(m1.points) * rng.uniform(0.4, 0.7))
        add("M1 early branch", m1, i, _tangent(m1, i) + [0, 0.5, 0.6])
    elif "Supraclinoid" in location and (ica := t("ica_supra")) is not None:
        add("ICA terminus", ica, len(ica.points) - 1, _tangent(ica, len(ica.points) - 1) + [0, 0, 0.6])
        add("ophthalmic origin", ica, 1, [0, 0.25, 1.0])
        add("superior hypophyseal", ica, len(ica.points) // 2, [-sx, 0.2, -0.3])
    elif "Infraclinoid" in location and (ica := t("ica_infra")) is not None:
        cav = [i for i in range(int(0.7 * len(ica.points)), len(ica.points) - 2)]
        i = cav[int(rng.integers(len(cav)))] if cav else len(ica.points) - 3
        add("cavernous", ica, i, [sx, 0.3 * rng.uniform(-1, 1), 0.3])
        add("cavernous genu", ica, len(ica.points) - 6, [0.3 * sx, 1.0, 0.2])
    elif "Posterior Communicating" in location and (ica := t("ica_supra")) is not None:
        add("ICA-PComm junction", ica, _near(ica, tree.nodes[f"pco_{s}"]), [0.45 * sx, -0.8, -0.45])
    elif location == "Anterior Communicating Artery":
        ac = tree.tube("acomm")
        if ac is not None:
            ang = rng.uniform(0, np.pi / 2)
            add("AComm", ac, len(ac.points) // 2, [0, np.cos(ang), np.sin(ang)])
        for side in ("R", "L"):
            a1 = tree.tube(f"a1_{side}")
            add("A1-AComm junction", a1, len(a1.points) - 1 if a1 else None, [0, 1.0, 0.4])
    elif "Anterior Cerebral" in location:
        a2, a1 = t("a2"), t("a1")
        add("A2-A3 genu", a2, _near(a2, tree.nodes[f"genu_{s}"]) if a2 else None, [0.4 * sx, 1.0, 0.5])
        add("A1", a1, len(a1.points) // 2 if a1 else None, [0.3 * sx, 0.5, 1.0])
    elif location == "Basilar Tip" and (ba := tree.tube("basilar")) is not None:
        add("basilar tip", ba, len(ba.points) - 1, _tangent(ba, len(ba.points) - 1) + rng.normal(0, 0.15, 3))
    elif location == "Other Posterior Circulation":
        _posterior_sites(tree, rng, add)
    return out


def _posterior_sites(tree: VesselTree, rng: np.random.Generator, add: Callable[..., None]) -> None:
    """SCA origin, vertebrobasilar junction, PICA origin, AICA origin, P1-P2 junction (random side first)."""
    ba = tree.tube("basilar")
    sides = ["R", "L"] if rng.random() < 0.5 else ["L", "R"]
    for s in sides:
        sx = 1.0 if s == "R" else -1.0
        sca, va, aica, p1 = (tree.tube(f"{n}_{s}") for n in ("sca", "va", "aica", "p1"))
        if ba is not None and sca is not None:
            add("SCA origin", ba, _near(ba, sca.points[0]), [sx, 0.2, 0.5])
        if va is not None and f"pica0_{s}" in tree.nodes:
            add("PICA origin", va, _near(va, tree.nodes[f"pica0_{s}"]), [0.5 * sx, -0.6, 0.6])
        if ba is not None and aica is not None:
            add("AICA origin", ba, _near(ba, aica.points[0]), [sx, -0.2, 0.3])
        if p1 is not None:
            add("P1-P2 junction", p1, len(p1.points) - 1, [0.6 * sx, 0.3, 0.7])
    if ba is not None:
        add("vertebrobasilar junction", ba, 0, [0, 0.6, 0.8])


def _perturb(rng: np.random.Generator, d: np.ndarray, deg: float) -> np.ndarray:
    return _unit(d + np.tan(np.radians(deg)) * rng.normal(0, 0.6, 3))


def _frame(d: np.ndarray) -> np.ndarray:
    helper = np.array([0.0, 0.0, 1.0]) if abs(d[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e1 = _unit(np.cross(d, helper))
    return np.stack([d, e1, np.cross(d, e1)])


def draw_dome(rng: np.random.Generator, dome_mm: float | None) -> float:
    """Dome diameter: log-normal, median 4.5 mm, sigma_ln 0.45, clipped to 2-25 mm (or the given size)."""
    if dome_mm is not None:
        return float(dome_mm)
    return float(np.clip(np.exp(np.log(4.5) + 0.45 * rng.standard_normal()), 2.0, 25.0))


def make_sac(rng: np.random.Generator, location: str, site: tuple[str, Tube, int, np.ndarray],
             dome: float) -> Sac:
    """A sac on ``site``: neck 0.5-0.9 x dome, aspect ratio 1-2, lobes on some, a daughter bleb on 10-20%."""
    name, parent, i, pref = site
    d = _perturb(rng, pref, 20.0)
    neck = dome * rng.uniform(0.5, 0.9)
    height = float(np.clip(neck * rng.uniform(1.0, 2.0), 0.7 * dome, 1.8 * dome))
    p = parent.points[i]
    centre = p + d * (float(parent.radii[i]) * rng.uniform(0.3, 0.7) + height / 2)
    rot = _frame(d)
    semi = np.array([height / 2, dome / 2 * rng.uniform(0.85, 1.0), dome / 2])
    spheres: list[tuple[np.ndarray, float]] = []
    shape = "elongated" if height > 1.3 * dome else "saccular"
    if rng.random() < 0.25 and dome > 3.0:
        shape = "lobulated"
        for _ in range(int(rng.integers(1, 3))):
            ang = rng.uniform(0, 2 * np.pi)
            off = rot[0] * rng.uniform(0.0, 0.3) + np.cos(ang) * rot[1] + np.sin(ang) * rot[2]
            spheres.append((centre + off * dome * rng.uniform(0.3, 0.45), dome * rng.uniform(0.25, 0.4)))
    bleb = bool(rng.random() < 0.15)
    if bleb:
        ang = rng.uniform(0, 2 * np.pi)
        tip = _unit(rot[0] + rng.uniform(0.2, 1.0) * (np.cos(ang) * rot[1] + np.sin(ang) * rot[2]))
        r_bleb = max(0.6, dome * rng.uniform(0.15, 0.28))
        spheres.append((centre + tip * (np.linalg.norm(semi * (rot @ tip)) * 0.9 + 0.3 * r_bleb), r_bleb))
    return Sac(location, SEG_LABEL_VALUES[location], parent, p.copy(), centre, d, dome, neck, height, name, shape,
               bleb, rot, semi, spheres)


def place_aneurysms(rng: np.random.Generator, tree: VesselTree, locations: list[str],
                    dome_mm: float | None) -> list[Sac]:
    """One sac per entry of ``locations`` at a plausible, not yet used site of that location, not overlapping."""
    sacs: list[Sac] = []
    used: set[tuple[str, int]] = set()
    for loc in locations:
        dome = draw_dome(rng, dome_mm)
        sites = _sites(loc, tree, rng)
        if not sites:
            raise ValueError(f"no site for {loc!r} in this tree")
        weights = np.array([0.7 ** k for k in range(len(sites))])
        order = list(rng.choice(len(sites), size=len(sites), replace=False, p=weights / weights.sum()))
        fresh = [k for k in order if (sites[k][1].name, sites[k][2]) not in used] or order
        sac = None
        for k in fresh * 3:
            cand = make_sac(rng, loc, sites[k], dome)
            if all(np.linalg.norm(cand.centre - s.centre) > (cand.dome + s.dome) / 2 + 1.0 for s in sacs):
                sac = cand
                break
        sac = sac or make_sac(rng, loc, sites[fresh[0]], dome)
        used.add((sac.parent.name, int(_near(sac.parent, sac.parent_point))))
        sacs.append(sac)
    return sacs


def mimics(rng: np.random.Generator, tree: VesselTree, sacs: list[Sac]) -> list[Tube]:
    """Infundibula (conical widenings < 3 mm) at 0-3 random branch origins away from the real aneurysms."""
    cands = []
    for s in ("R", "L"):
        for branch, parent in (("pcomm", "ica_supra"), ("acha", "ica_supra"), ("ophthalmic", "ica_infra"),
                               ("sca", "basilar"), ("pica", "va"), ("aica", "basilar")):
            b, p = tree.tube(f"{branch}_{s}"), tree.tube(f"{parent}_{s}") or tree.tube(parent)
            if b is not None and p is not None:
                cands.append((b, p))
    out = []
    for k in rng.permutation(len(cands))[: int(rng.choice([0, 1, 1, 2, 3]))]:
        b, p = cands[int(k)]
        origin = p.points[_near(p, b.points[0])]
        if all(np.linalg.norm(origin - s.centre) > s.dome + 4.0 for s in sacs):
            out.append(infundibulum(rng, origin, b, f"infundibulum_{b.name}"))
    return out
