"""Saccular aneurysms at the spec's sites (bifurcation apices, dome along the flow), as unions of capsules in head mm.

Shapes: spherical, elongated (a rounded cylinder along the dome axis), multi-lobed (a main sphere with one or two
side lobes), each with or without a daughter bleb, with a neck 0.5-0.9 x dome (narrow to wide). A large sac may be
partly thrombosed. Sizes are log-normal (median 4.5 mm, sigma_ln 0.45, clipped 2-25 mm) unless a dome is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kernel.labels import SEG_LABEL_VALUES

from .vessels import ACA, ACOMM, BASILAR, INFRA, MCA, OTHER, PCOMM, SUPRA, Path, arclength


@dataclass
class Sac:
    """One placed aneurysm in head mm, with the capsules that draw it."""

    location: str
    centre: np.ndarray  # head mm (RAS)
    parent: np.ndarray  # head mm, point of the parent centreline under the neck
    direction: np.ndarray  # unit dome axis
    dome: float
    neck: float
    shape: str
    bleb: bool
    seg: int
    caps: list[tuple[np.ndarray, np.ndarray, float, float]] = field(default_factory=list)  # (a, b, ra, rb) head mm
    flow: float = 0.0
    patchiness: float = 0.0  # slow-flow heterogeneity inside the sac (TOF, T2)
    wave: np.ndarray = field(default_factory=lambda: np.zeros((3, 4)))  # 3 x (kx, ky, kz, phase) of that pattern
    thrombus: float = 0.0  # > 0: fraction of the sac (far side) filled with thrombus


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, float)
    return v / (np.linalg.norm(v) + 1e-12)


def _at(path: Path, frac: float) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Point, tangent, radius and flow of ``path`` at a fraction of its length."""
    s = arclength(path.points)
    i = int(np.clip(np.searchsorted(s, frac * s[-1]), 1, len(s) - 2))
    return path.points[i], _unit(path.points[i + 1] - path.points[i - 1]), float(path.radius[i]), float(path.flow[i])


def _jitter(rng: np.random.Generator, d: np.ndarray, amount: float) -> np.ndarray:
    return _unit(_unit(d) + amount * rng.normal(size=3))


def _site(rng: np.random.Generator, base: str, side: str, option: int, paths: dict[str, Path], boost: float = 0.0):
    """(point, direction, parent radius, flow) in canonical mm for one site option of a location; ``boost`` turns
    near-midline domes (ACA) further to their own side."""
    lat = np.array([1.0 if side == "R" else -1.0, 0.0, 0.0])
    p = lambda name: paths[f"{name}_{side}"] if f"{name}_{side}" in paths else paths[name]  # noqa: E731
    if base == INFRA:
        pt, tan, r, fl = _at(p("ica_cav"), rng.uniform(0.25, 0.85))
        return pt, _jitter(rng, lat + 0.3 * tan, 0.35), r, fl
    if base == SUPRA:
        if option == 0:  # terminus, superior / along the flow
            pt, tan, r, fl = _at(p("ica_supra"), 0.97)
            return pt, _jitter(rng, tan + np.array([0, 0, 1.0]), 0.3), r, fl
        if option == 1:  # ophthalmic origin, dorsal
            pt, tan, r, fl = _at(p("ica_supra"), 0.08)
            return pt, _jitter(rng, np.array([0, 0.3, 1.0]) - 0.3 * lat, 0.3), r, fl
        pt, tan, r, fl = _at(p("ica_supra"), 0.7)  # posterior wall (anterior choroidal origin)
        return pt, _jitter(rng, np.array([0, -1.0, 0.3]) + 0.4 * lat, 0.3), r, fl
    if base == MCA:
        if option == 0:
            pt, tan, r, fl = _at(p("m1"), 0.985)
            return pt, _jitter(rng, tan + 0.3 * lat, 0.3), r, fl
        pt, tan, r, fl = _at(p("m1"), rng.uniform(0.4, 0.65))
        return pt, _jitter(rng, np.array([0, 0.6, 0.8]) + 0.3 * lat, 0.35), r, fl
    if base == ACOMM:
        pt, tan, r, fl = _at(paths["acomm"], rng.uniform(0.3, 0.7))
        a = np.radians(rng.uniform(0, 80))
        return pt, _jitter(rng, np.array([0, np.cos(a), np.sin(a)]), 0.2), max(r, 0.6), fl
    if base == ACA:
        a2 = p("a2")
        s = arclength(a2.points)
        genu = f"cmarg_{side}" in paths
        frac = rng.uniform(0.4, 0.55)
        if option == 0 and genu:
            frac = s[int(np.argmin(np.linalg.norm(a2.points - paths[f"cmarg_{side}"].points[0], axis=1)))] / s[-1]
        pt, tan, r, fl = _at(a2, frac)
        return pt, _jitter(rng, tan + np.array([0, 0.5, 0.3]) + (0.6 + boost) * lat, 0.2), r, fl
    if base == PCOMM:
        pt, tan, r, fl = _at(p("pcomm"), 0.0)
        ica = paths[f"ica_supra_{side}"]
        j = int(np.argmin(np.linalg.norm(ica.points - pt, axis=1)))
        return ica.points[j], _jitter(rng, 0.4 * lat + np.array([0, -1.0, -0.6]), 0.25), float(ica.radius[j]), 0.0
    if base == BASILAR:
        pt, tan, r, fl = _at(paths["basilar"], 0.995)
        return pt, _jitter(rng, tan, 0.25), r, fl
    # other posterior circulation: SCA, PICA, vertebrobasilar junction, P1-P2 junction, AICA
    name, frac, d = [("sca", 0.02, lat + np.array([0, 0, 0.7])), ("pica", 0.02, np.array([0, -1.0, -0.5]) + 0.3 * lat),
                     ("basilar", 0.02, np.array([0, 0.5, 1.0])), ("p2", 0.01, lat + np.array([0, -0.8, 0.2])),
                     ("aica", 0.03, lat + np.array([0, 0, -0.5]))][option]
    key = name if name == "basilar" else f"{name}_{side}"
    if key not in paths:
        key = "basilar"
    pt, tan, r, fl = _at(paths[key], frac)
    if name in ("sca", "aica", "basilar"):
        b = paths["basilar"]
        j = int(np.argmin(np.linalg.norm(b.points - pt, axis=1)))
        pt, r = b.points[j], float(b.radius[j])
    return pt, _jitter(rng, d, 0.3), r, fl


N_OPTIONS = {INFRA: 1, SUPRA: 3, MCA: 2, ACOMM: 1, ACA: 2, PCOMM: 1, BASILAR: 1, OTHER: 5}
OPTION_P = {SUPRA: [0.45, 0.35, 0.2], MCA: [0.75, 0.25], ACA: [0.6, 0.4], OTHER: [0.3, 0.25, 0.2, 0.15, 0.1]}


def split_location(location: str) -> tuple[str, str]:
    for word, s in (("Left ", "L"), ("Right ", "R")):
        if location.startswith(word):
            return location[len(word):], s
    return location, ""


def draw_dome(rng: np.random.Generator) -> float:
    return float(np.clip(np.exp(np.log(4.5) + 0.45 * rng.normal()), 2.0, 25.0))


def _shape_caps(rng: np.random.Generator, dome: float, neck: float, base_pt: np.ndarray, u: np.ndarray,
                r_parent: float) -> tuple[str, bool, np.ndarray, list]:
    """Capsules of the sac (head mm): returns shape name, bleb flag, dome centre, capsules."""
    shape = str(rng.choice(["saccular", "elongated", "multilobed"], p=[0.5, 0.25, 0.25])) if dome >= 3.5 \
        else "saccular"
    perp = _unit(np.cross(u, rng.normal(size=3)))
    n0 = base_pt + u * (0.75 * r_parent)
    caps = []
    if shape == "elongated":
        ecc = rng.uniform(1.3, 1.8)
        rp, half = 0.5 * dome / ecc, 0.5 * dome
        neck = min(neck, 1.9 * rp)
        axis = _unit(u + 0.25 * rng.normal(size=3))
        c = n0 + u * np.sqrt(max(rp ** 2 - 0.25 * neck ** 2, 0.04 * rp ** 2)) + axis * (half - rp)
        caps.append((c - axis * (half - rp), c + axis * (half - rp), rp, rp))
        r_main = rp
    else:
        r_main = 0.5 * dome * (rng.uniform(0.72, 0.85) if shape == "multilobed" else 1.0)
        neck = min(neck, 1.8 * r_main)
        c = n0 + u * np.sqrt(max(r_main ** 2 - 0.25 * neck ** 2, 0.04 * r_main ** 2))
        caps.append((c, c, r_main, r_main))
        if shape == "multilobed":
            for k in range(int(rng.integers(1, 3))):
                ang = np.radians(rng.uniform(35, 75))
                v = _unit(np.cos(ang) * u + np.sin(ang) * _unit(np.cross(u, perp) if k else perp))
                rl = r_main * rng.uniform(0.45, 0.65)
                lc = c + v * (r_main * 0.85)
                caps.append((lc, lc, rl, rl))
    caps.append((base_pt, n0 + u * 0.3 * r_main, 0.5 * neck, 0.5 * neck))  # the neck
    bleb = bool(rng.random() < (0.15 if shape != "multilobed" else 0.3)) and dome >= 3.0
    if bleb:
        ang = np.radians(rng.uniform(0, 60))
        v = _unit(np.cos(ang) * u + np.sin(ang) * perp)
        rb = r_main * rng.uniform(0.22, 0.35)
        bc = c + v * (r_main + 0.3 * rb) if shape != "elongated" else caps[0][1] + v * (r_main + 0.3 * rb)
        caps.append((bc, bc, rb, rb))
    return shape, bleb, c, caps


def place_sacs(rng: np.random.Generator, locations: list[str], paths: dict[str, Path], scale: np.ndarray,
               dome_mm: float | None, lps_x=None) -> list[Sac]:
    """One sac per requested location, at distinct sites, its dome centre clearly on the patient's side of the
    midsagittal plane (and, when ``lps_x`` maps head mm to LPS x, on that side in LPS as well)."""
    sacs: list[Sac] = []
    used: set[tuple] = set()
    for loc in locations:
        base, side = split_location(loc)
        if base == OTHER:
            side = str(rng.choice(["R", "L"]))
        for attempt in range(20):
            n_opt = N_OPTIONS[base]
            option = int(rng.choice(n_opt, p=OPTION_P.get(base))) if n_opt > 1 else 0
            if (base, side, option) in used and attempt < 6 and n_opt > 1:
                continue
            sac = _one_sac(rng, loc, base, side, option, paths, scale, dome_mm, 0.3 * attempt)
            far = all(np.linalg.norm(sac.centre - o.centre) > 0.5 * (sac.dome + o.dome) + 1.0 for o in sacs)
            sign = 1.0 if side == "R" else -1.0
            sided = side == "" or base == OTHER or (
                sign * sac.centre[0] > 1.5 and (lps_x is None or -sign * lps_x(sac.centre) > 1.0))
            if (far and sided) or attempt == 19:
                used.add((base, side, option))
                sacs.append(sac)
                break
    return sacs


def _one_sac(rng: np.random.Generator, loc: str, base: str, side: str, option: int, paths: dict[str, Path],
             scale: np.ndarray, dome_mm: float | None, boost: float = 0.0) -> Sac:
    pt_q, d_q, r_parent, flow = _site(rng, base, side, option, paths, boost)
    base_pt = pt_q * scale
    u = _unit(d_q * scale)
    dome = float(dome_mm) if dome_mm is not None else draw_dome(rng)
    neck = dome * rng.uniform(0.5, 0.9)
    shape, bleb, centre, caps = _shape_caps(rng, dome, neck, base_pt, u, r_parent)
    k = rng.normal(size=(3, 3))  # three plane waves: a blotchy slow-flow pattern about one dome across
    k *= (2 * np.pi / (dome * rng.uniform(0.6, 1.3, size=3)) / np.linalg.norm(k, axis=1))[:, None]
    patch = float(np.clip((dome - 5.0) / 8.0, 0.0, 0.7) * rng.uniform(0.5, 1.0) + rng.uniform(0, 0.1))
    thrombus = float(rng.uniform(0.2, 0.5)) if dome > 10 and rng.random() < 0.3 else 0.0
    return Sac(location=loc, centre=centre, parent=base_pt, direction=u, dome=dome, neck=float(min(neck, dome)),
               shape=shape, bleb=bleb, seg=SEG_LABEL_VALUES[loc], caps=caps, flow=flow, patchiness=patch,
               wave=np.concatenate([k, rng.uniform(0, 2 * np.pi, size=(3, 1))], axis=1), thrombus=thrombus)
