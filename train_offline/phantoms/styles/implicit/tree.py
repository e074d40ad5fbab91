"""Assembling the vessel tree of one series: circle of Willis with its variants, extra branches, cortical branches,
perforators, dural sinuses and deep veins, wall calcifications and infundibula (the mimics)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import vessels as V
from .anatomy import Head
from .vessels import SFX, TreeBuilder, Variants, mirror, seg

OTHER, TIP = seg("Other Posterior Circulation"), seg("Basilar Tip")


def snap(points: np.ndarray, fn: Callable, target: np.ndarray | float, iters: int = 3) -> np.ndarray:
    """Move points along the field's gradient onto its ``target`` level set (Newton steps, central differences)."""
    p = np.asarray(points, float).copy()
    target = np.broadcast_to(np.asarray(target, float), (len(p),))
    h = 0.5
    for _ in range(iters):
        x, y, z = (p[:, i].astype(np.float32) for i in range(3))
        f = fn(x, y, z).astype(float)
        g = np.stack([(fn(*(c + np.float32(h) * (i == j) for j, c in enumerate((x, y, z))))
                       - fn(*(c - np.float32(h) * (i == j) for j, c in enumerate((x, y, z))))) / (2 * h)
                      for i in range(3)], axis=1).astype(float)
        gg = np.maximum((g * g).sum(1), 0.05)
        p -= ((f - target) / gg)[:, None] * g
    return p


def _carotid(b: TreeBuilder, v: Variants, s: int, k: float, sleeve: float) -> None:
    """ICA (cervical to terminus), ophthalmic, anterior choroidal, M1 and the two M2 trunks of one side."""
    sfx = SFX[s]
    labels = [seg("Infraclinoid Internal Carotid Artery", s)] * V.ICA_RING
    labels += [seg("Supraclinoid Internal Carotid Artery", s)] * (len(V.ICA_WP) - V.ICA_RING)
    b.add("ica" + sfx, mirror(V.ICA_WP, s), np.array(V.ICA_D) * k, labels, loop_p=0.12, sleeve=sleeve)
    mca = seg("Middle Cerebral Artery", s)
    last = len(b.tubes["ica" + sfx].pts) - 1
    b.add("m1" + sfx, mirror(V.M1_WP, s), 3.1 * k, mca, parent="ica" + sfx, attach=last, sleeve=sleeve)
    m1_end = len(b.tubes["m1" + sfx].pts) - 1
    b.add("m2a" + sfx, mirror(V.M2_WP, s), np.linspace(2.4, 1.8, len(V.M2_WP)) * k, mca, parent="m1" + sfx,
          attach=m1_end, sleeve=sleeve, loop_p=0.08)
    b.add("m2b" + sfx, mirror(V.M2B_WP, s), np.linspace(2.2, 1.7, len(V.M2B_WP)) * k, mca, parent="m1" + sfx,
          attach=m1_end, sleeve=sleeve, loop_p=0.08)
    b.add("oph" + sfx, mirror(V.OPH_WP, s), np.linspace(1.4, 1.0, len(V.OPH_WP)) * k, 0, parent="ica" + sfx,
          attach=b.at_u("ica" + sfx, V.ICA_RING))
    b.add("ach" + sfx, mirror(V.ACH_WP, s), np.linspace(0.9, 0.6, len(V.ACH_WP)) * k, 0, parent="ica" + sfx,
          attach=b.at_u("ica" + sfx, V.ICA_PCOM + 0.45), sleeve=sleeve)


def _posterior(b: TreeBuilder, v: Variants, rng: np.random.Generator, k: float, sleeve: float) -> None:
    """Vertebrals, basilar, P1/P2, PComms (with fetal and absent variants), SCA, AICA, PICA."""
    dom = 1 if v.va_ratio >= 1 else -1
    junction = None
    for s in (dom, -dom):
        ratio = v.va_ratio ** (0.5 * s)
        b.add("va" + SFX[s], mirror(V.VA_WP, s), np.linspace(3.9, 2.8, len(V.VA_WP)) * k * ratio, OTHER,
              end=junction, loop_p=0.1, sleeve=sleeve)
        junction = b.tubes["va" + SFX[s]].pts_anat[-1]
    ba_labels = [OTHER, OTHER, OTHER, TIP, TIP, TIP]
    b.add("basilar", V.BA_WP, np.linspace(3.6, 3.1, len(V.BA_WP)) * k, ba_labels, parent="va" + SFX[dom],
          attach=len(b.tubes["va" + SFX[dom]].pts) - 1, sleeve=sleeve)
    tip = len(b.tubes["basilar"].pts) - 1
    for s in (1, -1):
        sfx = SFX[s]
        if v.p1[s] != "absent":
            d = 2.0 * k * (rng.uniform(0.35, 0.5) if v.p1[s] == "hypoplastic" else 1.0)
            b.add("p1" + sfx, mirror(V.P1_WP, s), d, OTHER, parent="basilar", attach=tip, sleeve=sleeve)
        p1 = b.tubes.get("p1" + sfx)
        if v.pcomm[s] != "absent":
            d = {"normal": 1.2, "hypoplastic": rng.uniform(0.5, 0.8), "fetal": rng.uniform(1.9, 2.3)}[v.pcomm[s]]
            end = p1.pts_anat[-1] if p1 is not None else None
            b.add("pcom" + sfx, mirror(V.PCOM_WP, s), d * k, seg("Posterior Communicating Artery", s),
                  parent="ica" + sfx, attach=b.at_u("ica" + sfx, V.ICA_PCOM), end=end, sleeve=sleeve)
        fed = "pcom" + sfx if (v.pcomm[s] == "fetal" or p1 is None) else "p1" + sfx
        b.add("p2" + sfx, mirror(V.P2_WP, s), np.linspace(2.2, 1.6, len(V.P2_WP)) * k, OTHER, parent=fed,
              attach=len(b.tubes[fed].pts) - 1, sleeve=sleeve, loop_p=0.06)
        b.add("sca" + sfx, mirror(V.SCA_WP, s), 1.25 * k, OTHER, parent="basilar",
              attach=b.nearest("basilar", (0, -13.5, -25)), sleeve=sleeve)
        b.add("aica" + sfx, mirror(V.AICA_WP, s), 1.0 * k, OTHER, parent="basilar",
              attach=b.nearest("basilar", (0, -19.5, -44)), sleeve=sleeve)
        b.add("pica" + sfx, mirror(V.PICA_WP, s), 1.25 * k, OTHER, parent="va" + sfx,
              attach=b.at_u("va" + sfx, 3.0), loop_p=0.2, sleeve=sleeve)


def _anterior(b: TreeBuilder, v: Variants, rng: np.random.Generator, k: float, sleeve: float) -> None:
    """A1s to the AComm junctions, the AComm, A2 / pericallosal and callosomarginal arteries."""
    junction = {s: np.array([s * rng.uniform(1.0, 2.0), 11.5, -18.0]) + rng.normal(0, 0.5, 3) * [0, 1, 1]
                for s in (1, -1)}
    for s in (1, -1):
        if v.a1[s] != "absent":
            d = 2.0 * k * (rng.uniform(0.35, 0.5) if v.a1[s] == "hypoplastic" else 1.0)
            b.add("a1" + SFX[s], mirror(V.A1_WP, s), d, seg("Anterior Cerebral Artery", s), parent="ica" + SFX[s],
                  attach=len(b.tubes["ica" + SFX[s]].pts) - 1, end=junction[s], sleeve=sleeve)
    if v.acomm != "absent":
        src = -1 if "a1_L" in b.tubes else 1
        d = rng.uniform(1.2, 1.5) if v.acomm == "normal" else rng.uniform(0.5, 0.8)
        b.add("acom", [junction[src], junction[-src]], d * k, seg("Anterior Communicating Artery"),
              parent="a1" + SFX[src], attach=len(b.tubes["a1" + SFX[src]].pts) - 1, end=junction[-src],
              sleeve=sleeve, tort=0.0)
    for s in (1, -1):
        aca = seg("Anterior Cerebral Artery", s)
        parent = "a1" + SFX[s] if "a1" + SFX[s] in b.tubes else "acom"
        b.add("a2" + SFX[s], mirror(V.A2_WP, s), np.linspace(1.9, 1.5, len(V.A2_WP)) * k, aca, parent=parent,
              attach=len(b.tubes[parent].pts) - 1, sleeve=sleeve)
        start = b.at_u("a2" + SFX[s], rng.uniform(4.2, 5.2))
        wps = [(0, 0, 0), (s * 2.5, 37, 15), (s * 3, 31, 29), (s * 3, 15, 43), (s * 3, -6, 51), (s * 3, -28, 52)]
        b.add("cm" + SFX[s], wps, np.linspace(1.3, 1.0, len(wps)) * k, aca, parent="a2" + SFX[s], attach=start)


def build_arteries(b: TreeBuilder, head: Head, v: Variants, rng: np.random.Generator) -> None:
    """The whole arterial tree, then cortical branches, perforators, calcifications and infundibula."""
    k = float(rng.uniform(0.88, 1.12))
    sleeve = float(rng.uniform(1.5, 3.0) + 1.5 * head.atrophy)
    for s in (1, -1):
        _carotid(b, v, s, k * rng.uniform(0.95, 1.05), sleeve)
    _posterior(b, v, rng, k, sleeve)
    _anterior(b, v, rng, k, sleeve)
    _cortical(b, head, rng, k)
    _perforators(b, rng)
    for name in ("pcom_R", "pcom_L", "ach_R", "ach_L", "sca_R", "sca_L", "oph_R", "oph_L", "aica_R", "aica_L"):
        p = 0.35 if name.startswith("pcom") else 0.1
        if name in b.tubes and rng.random() < p:
            b.infundibulum(name)


def _walk(rng: np.random.Generator, start: np.ndarray, direction: np.ndarray, n: int, step: float,
          wobble: float) -> np.ndarray:
    pts = [start]
    d = direction / np.linalg.norm(direction)
    for _ in range(n):
        d = d + rng.normal(0, wobble, 3)
        d /= np.linalg.norm(d)
        pts.append(pts[-1] + step * d)
    return np.array(pts)


def _cortical(b: TreeBuilder, head: Head, rng: np.random.Generator, k: float) -> None:
    """Cortical branches from the M2, P2 and pericallosal ends, hugging the brain surface (snapped together)."""
    walks = []
    for s in (1, -1):
        for name, count in (("m2a" + SFX[s], int(rng.integers(1, 3))), ("m2b" + SFX[s], int(rng.integers(1, 3))),
                            ("p2" + SFX[s], int(rng.integers(1, 3))), ("a2" + SFX[s], 1)):
            t = b.tubes[name]
            for j in range(count):
                tangent = t.pts_anat[-1] - t.pts_anat[-4]
                start = tangent + rng.normal(0, 0.5, 3) * np.linalg.norm(tangent)
                walk = _walk(rng, t.pts_anat[-1], start, 12, 4.0, 0.3)
                walks.append((name, j, walk, 0.5 * k * rng.uniform(0.9, 1.3)))
    tails = np.vstack([w[2][2:] for w in walks])
    radii = np.concatenate([np.full(len(w[2]) - 2, w[3]) for w in walks])
    tails = snap(tails, head.brain_surface, 0.8 + radii)
    n_tail = len(walks[0][2]) - 2
    for i, (name, j, pts, r) in enumerate(walks):
        pts[2:] = tails[i * n_tail : (i + 1) * n_tail]
        b.add(f"{name}_c{j}", pts, np.linspace(2 * r, 1.2 * r, len(pts)), 0, parent=name,
              attach=len(b.tubes[name].pts) - 1, tort=0.05, lesions=False)


def _perforators(b: TreeBuilder, rng: np.random.Generator) -> None:
    """Lenticulostriate and thalamoperforating arteries: thin tortuous threads (a fraction of a voxel)."""
    for s in (1, -1):
        m1 = b.tubes["m1" + SFX[s]]
        for j in range(int(rng.integers(3, 7))):
            i = int(rng.integers(len(m1.pts) // 5, 4 * len(m1.pts) // 5))
            pts = _walk(rng, m1.pts_anat[i], np.array([s * 0.25, -0.15, 1.0]), int(rng.integers(4, 8)), 2.5, 0.4)
            b.add(f"lsa{SFX[s]}{j}", pts, rng.uniform(0.25, 0.55), 0, kind="perforator", parent="m1" + SFX[s], attach=i,
                  tort=0.2, lesions=False)
    tip = len(b.tubes["basilar"].pts) - 1
    for j in range(int(rng.integers(1, 4))):
        pts = _walk(rng, b.tubes["basilar"].pts_anat[tip], np.array([rng.normal(0, 0.3), -0.4, 1.0]),
                    int(rng.integers(3, 6)), 2.5, 0.3)
        b.add(f"tpa{j}", pts, rng.uniform(0.3, 0.5), 0, kind="perforator", parent="basilar", attach=tip, tort=0.2,
              lesions=False)


def add_calcifications(b: TreeBuilder, rng: np.random.Generator) -> None:
    """Wall calcifications of the cavernous/petrous ICA (older patients): bright nodules on the wall on CT."""
    for s in (1, -1):
        if rng.random() > 0.3:
            continue
        ica = b.tubes["ica" + SFX[s]]
        for _ in range(int(rng.integers(1, 4))):
            i = b.at_u("ica" + SFX[s], rng.uniform(3.0, V.ICA_RING))
            t = ica.pts_anat[min(i + 1, len(ica.pts) - 1)] - ica.pts_anat[max(i - 1, 0)]
            t /= np.linalg.norm(t) + 1e-9
            n = V._perp(rng, t)
            rc = rng.uniform(0.5, 1.1)
            c = ica.pts_anat[i] + n * (ica.radius[i] - 0.2 * rc)
            b.add(f"calc{SFX[s]}{len(b.tubes)}", [c - 0.6 * t, c + 0.6 * t], 2 * rc, 0, kind="calc", tort=0.0,
                  lesions=False)
            b.mimics.append({"kind": "calcification", "vessel": "ica" + SFX[s], "head": b.tubes[next(reversed(
                b.tubes))].pts[0].tolist()})


def build_veins(b: TreeBuilder, head: Head, rng: np.random.Generator) -> None:
    """Dural sinuses (snapped to the inner table), deep veins, superficial middle cerebral and cortical veins."""
    th = np.radians(np.linspace(rng.uniform(20, 30), 195, 14))
    c, ax = head.cer_c, head.cer_ax
    sss = np.stack([np.zeros_like(th), c[1] + ax[1] * np.cos(th), c[2] + ax[2] * np.sin(th)], axis=1)
    r_sss = np.linspace(2.0, 4.5, len(sss)) * rng.uniform(0.85, 1.15)
    sss = snap(sss, head.brain_env, head.gap - 0.3 * r_sss)
    sss[:, 0] = 0.0
    b.add("sss", sss, 2 * r_sss, 0, kind="vein", tort=0.02)
    torcula = b.tubes["sss"].pts_anat[-1]
    dom = int(rng.choice([1, -1], p=[0.65, 0.35]))
    for s in (1, -1):
        r = 4.0 * rng.uniform(0.9, 1.1) * (1.0 if s == dom else rng.uniform(0.45, 1.0))
        tr = np.array([(s * 15, -103, -8), (s * 35, -97, -12), (s * 49, -82, -18), (s * 55, -65, -22),
                       (s * 56, -50, -27)], float)
        tr = snap(tr, head.brain_env, head.gap - 0.3 * r)
        b.add("ts" + SFX[s], np.vstack([torcula, tr]), 2 * r, 0, kind="vein", tort=0.02)
        sig = [(s * 53, -40, -35), (s * 48, -34, -44), (s * 42, -30, -52), (s * 39, -28, -60), (s * 36, -24, -75),
               (s * 32, -17, -100), (s * 28, -12, -140)]
        b.add("sig" + SFX[s], np.vstack([b.tubes["ts" + SFX[s]].pts_anat[-1], sig]),
              np.linspace(2 * r, 2.6 * r, len(sig) + 1), 0, kind="vein", tort=0.02)
    _deep_veins(b, rng, torcula)
    _cortical_veins(b, head, rng)


def _deep_veins(b: TreeBuilder, rng: np.random.Generator, torcula: np.ndarray) -> None:
    g = rng.uniform(0.8, 1.3)
    b.add("galen", [(0, -40, 6), (0, -46, 8), (0, -52, 7)], np.array([4.5, 7.0, 5.0]) * g, 0, kind="vein", tort=0)
    galen = b.tubes["galen"]
    b.add("straight", [galen.pts_anat[-1], (0, -68, 1), (0, -84, -4), torcula], 5.0 * g, 0, kind="vein", tort=0.02)
    b.add("iss", [(0, 25, 30), (0, 0, 37), (0, -25, 35), galen.pts_anat[-1]], 2.0, 0, kind="vein")
    for s in (1, -1):
        b.add("icv" + SFX[s], [(s * 3, 0, 14), (s * 2.5, -15, 15), (s * 2, -30, 12), galen.pts_anat[0]],
              2.2 * rng.uniform(0.8, 1.2), 0, kind="vein")
        b.add("bvr" + SFX[s], [(s * 18, 6, -18), (s * 22, -5, -16), (s * 24, -18, -12), (s * 20, -30, -4),
                               (s * 10, -40, 4), galen.pts_anat[0]], 2.2 * rng.uniform(0.8, 1.2), 0, kind="vein",
              sleeve=1.5)
        b.add("smcv" + SFX[s], [(s * 50, -10, -5), (s * 46, 5, -15), (s * 36, 14, -22), (s * 22, 8, -30),
                                (s * 16, 2, -34)], 2.0 * rng.uniform(0.7, 1.3), 0, kind="vein")
    b.mimics.append({"kind": "vein_of_galen", "vessel": "galen", "head": galen.pts[len(galen.pts) // 2].tolist()})


def _cortical_veins(b: TreeBuilder, head: Head, rng: np.random.Generator) -> None:
    sss = b.tubes["sss"]
    for j in range(int(rng.integers(3, 7))):
        s = int(rng.choice([1, -1]))
        ang = rng.uniform(-0.6, 0.9)
        start = head.cer_c + np.array([s * head.cer_ax[0] * 0.9 * np.cos(ang) * 0.8, rng.uniform(-60, 40),
                                       head.cer_ax[2] * 0.9 * np.sin(ang) * 0.5])
        end_i = int(np.argmin(np.linalg.norm(sss.pts_anat[:, 1:] - start[1:], axis=1)))
        end = sss.pts_anat[end_i]
        f = np.linspace(0, 1, 7)[:, None]
        pts = start + f * (end - start) + rng.normal(0, 3, (7, 3)) * np.sin(np.pi * f)
        r = rng.uniform(0.8, 1.5)
        pts[:-1] = snap(pts[:-1], head.brain_env, 0.8 + r)
        b.add(f"cv{j}", pts, 2 * r, 0, kind="vein", end=end, tort=0.1)


def sleeve_points(tubes: dict) -> tuple[np.ndarray, np.ndarray]:
    """Anatomy-frame samples (about every 1.5 mm) and sleeve radii of the vessels that run in cisterns."""
    pts, rad = [], []
    infra = {seg("Infraclinoid Internal Carotid Artery", s) for s in (1, -1)}
    for t in tubes.values():
        if t.sleeve <= 0:
            continue
        keep = (t.pts_anat[:, 2] > -62) & ~np.isin(t.label, list(infra))
        stride = max(1, int(round(1.5 / max(np.median(np.diff(t.arc)) if len(t.arc) > 1 else 1.0, 0.1))))
        idx = np.nonzero(keep)[0][::stride]
        pts.append(t.pts_anat[idx])
        rad.append(t.radius[idx] + t.sleeve)
    return np.vstack(pts), np.concatenate(rad)
