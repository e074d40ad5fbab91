"""The head as a tissue label volume: scalp, fat, skull tables and diploe, skull base, face, orbits, air sinuses,
dura, CSF spaces with sulci and cisterns, grey/white matter, deep nuclei, ventricles, brainstem, cerebellum and the
dural venous sinuses. Painted in canonical millimetres (spec: brain x +-72, y -107..73, z -72..82) onto a coarse
canvas; the arteries come later on a finer grid.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .canvas import Canvas, SmoothField, capsule, ellipsoid, ellipsoid_box, lut, paint_chain

# Tissue labels of the background canvas.
AIR, SKIN, FAT, MUSCLE, BONE, MARROW, DENSE_BONE, TEETH, DURA, CSF = range(10)
GM, WM, DEEP_GM, VENTRICLE, CHOROID, SINUS, CAVERNOUS, VITREOUS, LENS, ORBIT_FAT = range(10, 20)
NERVE, AIRWAY, MUCOSA, PITUITARY, CEREBELLUM, CORD, GLAND, BRAINSTEM = range(20, 28)
N_TISSUES = 28
TISSUE_NAMES = ["air", "skin", "fat", "muscle", "bone", "marrow", "dense_bone", "teeth", "dura", "csf", "gm", "wm",
                "deep_gm", "ventricle", "choroid", "sinus", "cavernous", "vitreous", "lens", "orbit_fat", "nerve",
                "airway", "mucosa", "pituitary", "cerebellum", "cord", "gland", "brainstem"]

CAVITY = [((0.0, -17.0, 8.0), (72.0, 91.0, 75.0)), ((0.0, -62.0, -42.0), (57.0, 42.0, 33.0))]
BRAIN_LIKE = lut(GM, WM, DEEP_GM, CEREBELLUM, BRAINSTEM)
INTRA = lut(CSF, GM, WM, DEEP_GM, CEREBELLUM, BRAINSTEM, DURA)


def floor_table(rng: np.random.Generator | None = None) -> tuple[np.ndarray, float, float, float]:
    """Skull-base floor height z(x, y) of the cranial cavity: anterior fossa with domed orbital roofs and the
    cribriform dip, sella, bowl-shaped middle fossae, petrous ridges, clivus, foramen magnum; -200 where the cavity
    ellipsoids alone bound it; plus a smooth per-patient perturbation. Returns (table, x0, y0, step)."""
    step, x0, y0 = 2.5, -95.0, -140.0
    xs = x0 + step * np.arange(77)
    ys = y0 + step * np.arange(105)
    xa, y = np.meshgrid(np.abs(xs), ys, indexing="ij")
    ridge = -8.0 - 0.55 * np.maximum(xa - 8.0, 0.0)  # petrous ridge / dorsum line: y of the ridge at each |x|
    lateral = np.clip((xa - 15.0) / 8.0, 0.0, 1.0)
    bowl = -49.0 + 8.0 * ((xa - 42.0) / 25.0) ** 2 + 6.0 * ((y + 8.0) / 22.0) ** 2
    middle = -31.0 * (1 - lateral) + np.minimum(bowl, -38.0) * lateral
    middle = np.where((xa < 7) & (y > -6) & (y < 7), -39.0, middle)  # sella
    roofs = 7.0 * np.exp(-((xa - 27.0) / 13.0) ** 2 - ((y - 38.0) / 20.0) ** 2)
    anterior = -27.0 + roofs - 4.0 * np.exp(-(xa / 6.0) ** 2) * ((y > 15) & (y < 60))
    floor = np.where(y > 12.0, anterior, middle)
    near_ridge = np.clip((ridge - y) / 10.0, 0.0, 1.0)
    posterior = -42.0 * (1 - near_ridge) - 76.0 * near_ridge
    clivus = np.clip(-32.0 + (y + 4.0) * 1.6, -76.0, -32.0)
    posterior = np.where(xa < 16, np.maximum(np.minimum(posterior, clivus), -76.0), posterior)
    floor = np.where(y < ridge, posterior, floor)
    if rng is not None:
        bumps = ndi.gaussian_filter(rng.standard_normal(floor.shape), 3.0, mode="nearest")
        floor = floor + rng.uniform(1.0, 3.0) * bumps / max(float(bumps.std()), 1e-6)
    floor = np.where((y < ridge) & (xa < 16) & (y < -30) & (y > -48), -200.0, floor)  # foramen magnum
    floor = ndi.gaussian_filter(floor, 1.2, mode="nearest")
    return floor.astype(np.float32), x0, y0, step


def floor_at(x: np.ndarray, y: np.ndarray, table=None) -> np.ndarray:
    table, x0, y0, step = table if table is not None else _DEFAULT_FLOOR
    coords = np.stack([(np.ravel(x) - x0) / step, (np.ravel(y) - y0) / step])
    return ndi.map_coordinates(table, coords, order=1, mode="nearest").reshape(np.shape(x)).astype(np.float32)


_DEFAULT_FLOOR = floor_table()


def _floor_below(x: np.ndarray, y: np.ndarray, z: np.ndarray, table) -> np.ndarray:
    """The floor height where it can matter (z below -18 mm), a harmless -300 elsewhere."""
    out = np.full(np.shape(x), -300.0, np.float32)
    m = z < -18.0
    out[m] = floor_at(x[m], y[m], table)
    return out


def cavity_ellipsoids(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    return np.minimum(*(ellipsoid(c, a)(x, y, z) for c, a in CAVITY))


def cavity_sdf(x: np.ndarray, y: np.ndarray, z: np.ndarray, table=None) -> np.ndarray:
    """Approximate signed distance to the inner skull surface (negative inside the cranial cavity)."""
    return np.maximum(cavity_ellipsoids(x, y, z), floor_at(x, y, table) - z)


def face_sdf(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Approximate signed distance to the skin below and beside the cranium: temporalis bulk, face, nose, jaw, neck."""
    parts = [((s * 60.0, -8.0, -22.0), (17.0, 30.0, 28.0)) for s in (-1, 1)]
    parts += [((0.0, 52.0, -52.0), (50.0, 42.0, 46.0)), ((0.0, 32.0, -92.0), (50.0, 46.0, 26.0)),
              ((0.0, -18.0, -170.0), (56.0, 54.0, 120.0))]
    d = capsule((0.0, 78.0, -30.0), (0.0, 94.0, -58.0), 8.0, 11.0)(x, y, z)
    for c, a in parts:
        d = np.minimum(d, ellipsoid(c, a)(x, y, z))
    return d


class HeadParams:
    """Per-series anatomy numbers: layer thicknesses, atrophy, ventricle size, sinus sizes, pneumatisation."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.scalp = rng.uniform(4.0, 6.0)
        self.skull = rng.uniform(5.0, 8.0)
        self.fat = rng.uniform(1.5, 4.0)
        self.csf_gap = rng.uniform(1.2, 3.5)  # subarachnoid space over the convexity (atrophy)
        self.sulcus_width = rng.uniform(0.08, 0.2)
        self.sulcus_depth = rng.uniform(10.0, 20.0)
        self.gm_mm = rng.uniform(2.2, 3.4)
        self.ventricle = rng.uniform(0.75, 1.6)
        self.sphenoid = rng.uniform(0.6, 1.15)
        self.mastoid = rng.uniform(0.0, 0.8)
        self.fissure = rng.uniform(1.5, 4.0)
        self.sylvian = rng.uniform(2.5, 4.5)
        self.sss = rng.uniform(3.0, 5.0)
        self.transverse = (rng.uniform(2.5, 5.0), rng.uniform(2.0, 5.0))
        self.floor = floor_table(rng)


def paint_head(cv: Canvas, rng: np.random.Generator, hp: HeadParams, landmarks: dict[str, np.ndarray]) -> None:
    """Paint every tissue in order (later shapes override earlier ones where allowed)."""
    x, y, z = cv.xyz()
    def surfaces(xs, ys, zs):  # inner skull and skin, as signed distances
        cav = np.maximum(cavity_ellipsoids(xs, ys, zs), _floor_below(xs, ys, zs, hp.floor) - zs)
        return cav, np.minimum(cav - (hp.scalp + hp.skull), face_sdf(xs, ys, zs))

    d_cav, d_out = cv.coarse_eval(surfaces, 3 if float(np.max(cv.step)) < 1.5 else 2)
    low = cv.random_field(rng, 25.0)
    d_out += 1.2 * low
    lab = cv.labels
    lab[d_out < 0] = MUSCLE
    lab[(d_out < 0) & (d_out > -hp.fat - 1.5)] = FAT
    lab[(d_out < 0) & (d_out > -1.5)] = SKIN
    thick = hp.skull + 1.0 * low
    thick[z < -24.0] += 3.0  # the skull base is thicker
    skull = (d_cav >= 0) & (d_cav < thick) & (d_out < -1.0)
    lab[skull] = BONE
    lab[skull & (d_cav > 1.2) & (d_cav < thick - 1.6)] = MARROW
    del low, thick, skull, d_out
    _paint_face(cv, rng, hp)
    _paint_skull_base(cv, rng, hp)
    lab[d_cav < 0] = CSF
    lab[(d_cav < 0) & (d_cav > -1.0)] = DURA
    _paint_brain(cv, rng, hp, d_cav, landmarks)
    del d_cav
    for s in (-1.0, 1.0):  # anterior clinoid processes, next to the carotid siphon
        clin = np.array([s * 18.0, 9.0, -29.0])
        cv.paint(BONE, ellipsoid(clin, (3.0, 5.0, 2.5)), *ellipsoid_box(clin, (3, 5, 3)))
    _paint_veins(cv, rng, hp)


def _paint_face(cv: Canvas, rng: np.random.Generator, hp: HeadParams) -> None:
    """Orbits (globe, lens, fat cone, optic nerve, bony walls), nose and paranasal sinuses, jaw, teeth, glands."""
    soft = lut(MUSCLE, FAT, SKIN, BONE, MARROW)
    for s in (-1.0, 1.0):
        globe = np.array([s * 32.0, 58.0 + rng.normal(0, 1.5), -36.0])
        apex = np.array([s * 13.0, 16.0, -33.0])
        paint_chain(cv, BONE, [globe + [0, -2, 0], apex], [15.5, 4.5], only=soft)
        paint_chain(cv, ORBIT_FAT, [globe + [0, -2, 0], apex], [13.5, 2.5], only=lut(BONE, MARROW, MUSCLE, FAT))
        paint_chain(cv, MUSCLE, [globe + [s * 9, -8, 0], apex], [2.2, 1.5], only=lut(ORBIT_FAT))
        paint_chain(cv, MUSCLE, [globe + [-s * 9, -8, 0], apex], [2.2, 1.5], only=lut(ORBIT_FAT))
        paint_chain(cv, NERVE, [globe + [0, -9, 0], apex + [0, 2, 0]], [2.4, 2.0], only=lut(ORBIT_FAT, BONE))
        cv.paint(VITREOUS, ellipsoid(globe, (11.5, 11.5, 11.5)), *ellipsoid_box(globe, (12, 12, 12)))
        cv.paint(LENS, ellipsoid(globe + [0, 10.0, 0], (4.5, 1.8, 4.5)), *ellipsoid_box(globe + [0, 10, 0], (5, 5, 5)))
        for c, a in [((s * 29.0, 44.0, -64.0), (12.0, 16.0, 15.0)), ((s * 46.0, -12.0, -78.0), (10.0, 14.0, 18.0))]:
            label = AIRWAY if c[1] > 0 else GLAND
            cv.paint(MUCOSA if label == AIRWAY else GLAND, ellipsoid(c, np.asarray(a) + 1.5), *ellipsoid_box(c, a, 2))
            if label == AIRWAY:
                cv.paint(AIRWAY, ellipsoid(c, a), *ellipsoid_box(c, a))
        ramus = [(s * 48.0, -12.0, -62.0), (s * 47.0, -6.0, -95.0), (s * 40.0, 20.0, -105.0), (s * 18.0, 52.0, -108.0)]
        paint_chain(cv, BONE, ramus, [5.0, 6.0, 6.5, 7.0], only=soft)
        paint_chain(cv, MARROW, ramus, [2.5, 3.0, 3.5, 4.0], only=lut(BONE))
    ethmoid, nasal = (0.0, 42.0, -38.0), (0.0, 52.0, -60.0)
    cv.paint(MUCOSA, ellipsoid(ethmoid, (9.0, 16.0, 9.0)), *ellipsoid_box(ethmoid, (9, 16, 9)), only=soft)
    cv.paint(MUCOSA, ellipsoid(nasal, (12.0, 28.0, 15.0)), *ellipsoid_box(nasal, (12, 28, 15)), only=soft)
    porous = SmoothField(rng, 5.0, (-20.0, 15.0, -80.0), (20.0, 85.0, -25.0))
    for c, a in [(ethmoid, (8.0, 15.0, 8.0)), (nasal, (11.0, 27.0, 14.0))]:
        sl = cv.box(*ellipsoid_box(c, a))
        if sl is not None:
            inside = (ellipsoid(c, a)(*cv.xyz(sl)) < 0) & (cv.sample_field(porous, sl) > -0.3)
            cv.labels[sl][inside & (cv.labels[sl] == MUCOSA)] = AIRWAY
    paint_chain(cv, AIRWAY, [(0.0, 22.0, -66.0), (0.0, 12.0, -90.0), (0.0, 8.0, -160.0)], [7.0, 8.0, 9.0])
    cv.paint(BONE, ellipsoid((0.0, 38.0, -80.0), (27.0, 26.0, 4.0)), *ellipsoid_box((0, 38, -80), (27, 26, 4)))
    for zt, rx, ry in [(-86.0, 25.0, 24.0), (-97.0, 23.0, 22.0)]:
        t = np.linspace(-np.pi * 0.5, np.pi * 0.5, 7)
        arch = np.stack([rx * np.sin(t), 26.0 + ry * np.cos(t), np.full_like(t, zt)], axis=1)
        paint_chain(cv, TEETH, arch, 3.6)


def _paint_skull_base(cv: Canvas, rng: np.random.Generator, hp: HeadParams) -> None:
    """Sphenoid body and sinus, clivus, petrous pyramids, mastoid cells, anterior clinoids, frontal sinus, spine."""
    not_intra = lut(MUSCLE, FAT, BONE, MARROW, SKIN, MUCOSA, GLAND)
    sph = np.array([0.0, 10.0, -46.0])
    cv.paint(BONE, ellipsoid(sph, (16.0, 20.0, 14.0)), *ellipsoid_box(sph, (16, 20, 14)), only=not_intra)
    cv.paint(MARROW, ellipsoid(sph, (14.0, 18.0, 12.0)), *ellipsoid_box(sph, (14, 18, 12)), only=lut(BONE))
    sinus_axes = np.array([11.0, 13.0, 9.0]) * hp.sphenoid
    cv.paint(MUCOSA, ellipsoid(sph + [0, 2, 1], sinus_axes + 1.2), *ellipsoid_box(sph, sinus_axes, 4), only=lut(MARROW))
    cv.paint(AIRWAY, ellipsoid(sph + [0, 2, 1], sinus_axes), *ellipsoid_box(sph, sinus_axes, 3), only=lut(MUCOSA))
    paint_chain(cv, BONE, [(0.0, -6.0, -36.0), (0.0, -24.0, -70.0)], [6.0, 7.0], only=not_intra)
    paint_chain(cv, MARROW, [(0.0, -5.0, -38.0), (0.0, -22.0, -68.0)], [3.0, 4.0], only=lut(BONE))
    fs = np.array([0.0, 65.0, 4.0])
    cv.paint(AIRWAY, ellipsoid(fs, (rng.uniform(6, 15), 5.0, rng.uniform(6, 11))), *ellipsoid_box(fs, (15, 6, 12)),
             only=lut(BONE, MARROW))
    mastoid = SmoothField(rng, 3.5, (-70.0, -60.0, -75.0), (70.0, -15.0, -35.0))
    for s in (-1.0, 1.0):
        apex, base = np.array([s * 16.0, -8.0, -47.0]), np.array([s * 52.0, -36.0, -53.0])
        paint_chain(cv, DENSE_BONE, [apex, base], [8.0, 11.0], only=not_intra)
        c = np.array([s * 50.0, -38.0, -56.0])
        sl = cv.box(*ellipsoid_box(c, (14, 14, 14)))
        if sl is not None and hp.mastoid > 0.05:
            air = ellipsoid(c, (13.0, 13.0, 13.0))(*cv.xyz(sl)) < 0
            air &= cv.sample_field(mastoid, sl) > 1.0 - hp.mastoid
            cv.labels[sl][air & lut(DENSE_BONE, BONE, MARROW, MUSCLE)[cv.labels[sl]]] = AIRWAY
        c1 = (s * 26.0, -34.0, -80.0)
        cv.paint(BONE, ellipsoid(c1, (8.0, 7.0, 5.0)), *ellipsoid_box(c1, (8, 7, 5)))
    # upper cervical spine: dens and C2 body, C1 arches, canal with CSF and cord
    paint_chain(cv, BONE, [(0.0, -24.0, -74.0), (0.0, -26.0, -125.0)], [6.0, 9.0], only=not_intra)
    paint_chain(cv, MARROW, [(0.0, -24.0, -78.0), (0.0, -26.0, -123.0)], [3.5, 6.5], only=lut(BONE))
    t = np.linspace(0, 2 * np.pi, 13)
    ring = np.stack([16.0 * np.sin(t), -40.0 + 14.0 * np.cos(t), np.full_like(t, -80.0)], axis=1)
    paint_chain(cv, BONE, ring, 3.2, only=not_intra)
    paint_chain(cv, CSF, [(0.0, -40.0, -66.0), (0.0, -41.0, -100.0), (0.0, -43.0, -170.0)], [11.0, 9.0, 8.0])
    paint_chain(cv, CORD, [(0.0, -40.0, -66.0), (0.0, -41.0, -100.0), (0.0, -43.0, -170.0)], [6.0, 5.0, 4.5])


def _paint_brain(cv: Canvas, rng: np.random.Generator, hp: HeadParams, d_cav: np.ndarray,
                 landmarks: dict[str, np.ndarray]) -> None:
    """Brain parenchyma inside the cavity, carved by cisterns, fissures and sulci, then split into grey and white."""
    x, y, z = cv.xyz()
    lab = cv.labels
    gap = hp.csf_gap + 0.8 * cv.random_field(rng, 20.0)
    brain = d_cav < -gap
    n = cv.random_field(rng, rng.uniform(7.0, 10.0))
    band = d_cav > -gap - hp.sulcus_depth
    brain &= ~(band & (np.abs(n) < hp.sulcus_width))
    del n, band, gap
    t_z = -10.0 - 0.008 * x * x - 0.15 * np.maximum(-y - 30.0, 0.0)  # tentorium height
    ridge = -8.0 - 0.55 * np.maximum(np.abs(x) - 8.0, 0.0)
    posterior = (z < t_z) & (y < ridge)
    lab[brain] = GM
    lab[brain & posterior] = CEREBELLUM  # below the tentorium: cerebellum (cisterns and brainstem carved next)
    lab[(d_cav < 0) & (np.abs(z - t_z + 0.5) < 0.9) & (y < ridge)] = DURA  # tentorium
    del brain, posterior
    sl = cv.box((-0.5 * hp.fissure - 1, -130.0, -80.0), (0.5 * hp.fissure + 1, 100.0, 100.0))
    if sl is not None:  # interhemispheric fissure above the callosum, and the falx in it
        xs, ys, zs = cv.xyz(sl)
        fiss = (np.abs(xs) < 0.5 * hp.fissure) & (ellipsoid((0.0, -8.0, 4.0), (24.0, 44.0, 20.0))(xs, ys, zs) > 0)
        sub = lab[sl]
        sub[fiss & BRAIN_LIKE[sub]] = CSF
        sub[(np.abs(xs) < 0.45) & fiss & (d_cav[sl] < 0)] = DURA
    _paint_posterior_fossa(cv, rng, hp, d_cav)
    cow = landmarks["cow_centre"]
    cv.paint(CSF, ellipsoid(cow, (16.0, 14.0, 7.5)), *ellipsoid_box(cow, (16, 14, 8)), only=BRAIN_LIKE)
    for key in ("sylvian_R", "sylvian_L"):
        paint_chain(cv, CSF, landmarks[key], hp.sylvian, only=BRAIN_LIKE)
    _split_grey_white(cv, hp)
    _paint_deep(cv, rng, hp)


def _paint_posterior_fossa(cv: Canvas, rng: np.random.Generator, hp: HeadParams, d_cav: np.ndarray) -> None:
    """Brainstem in its cisterns (prepontine, interpeduncular, cerebellopontine, cisterna magna), fourth ventricle,
    cerebellar white matter."""
    brain = lut(GM, CEREBELLUM)
    stem = [(0.0, -23.0, -6.0), (0.0, -27.0, -20.0), (0.0, -33.0, -35.0), (0.0, -40.0, -62.0), (0.0, -40.0, -72.0)]
    radii = np.array([10.0, 11.5, 13.0, 9.0, 8.0])
    cist = rng.uniform(2.5, 5.0)
    paint_chain(cv, CSF, [(0.0, -14.0, -20.0), (0.0, -23.0, -52.0)], [8.0, 7.0], only=brain)
    paint_chain(cv, CSF, stem[1:], radii[1:] + cist, only=brain)
    magna = (0.0, -72.0, -64.0)
    cv.paint(CSF, ellipsoid(magna, (10.0, 14.0, 8.0) * np.asarray(rng.uniform(0.6, 1.4))),
             *ellipsoid_box(magna, (14, 20, 12)), only=brain)
    paint_chain(cv, BRAINSTEM, stem, radii, only=lut(CSF, DURA, GM, CEREBELLUM))
    for s in (-1.0, 1.0):  # cerebral peduncles: the midbrain is not a cylinder
        paint_chain(cv, BRAINSTEM, [(s * 5.0, -24.0, -16.0), (s * 11.0, -12.0, -4.0)], [6.0, 5.0],
                    only=lut(CSF, DURA, GM, CEREBELLUM))
    paint_chain(cv, VENTRICLE, [(0.0, -47.0, -34.0), (0.0, -49.0, -44.0)], [4.5, 3.5], only=lut(CEREBELLUM, BRAINSTEM))
    for s in (-1, 1):
        c, a = (s * 16.0, -60.0, -40.0), (8.0, 11.0, 7.0)
        cv.paint(WM, ellipsoid(c, a), *ellipsoid_box(c, a), only=lut(CEREBELLUM))


def _split_grey_white(cv: Canvas, hp: HeadParams) -> None:
    """Cortical grey matter as the outer shell of the cerebrum (follows every sulcus), white matter inside."""
    lab = cv.labels
    cerebrum = lab == GM
    it = max(1, int(round(hp.gm_mm / float(np.mean(cv.step)))))
    core = ndi.binary_erosion(cerebrum, iterations=it)
    lab[core] = WM


def _paint_deep(cv: Canvas, rng: np.random.Generator, hp: HeadParams) -> None:
    """Basal ganglia and thalami, lateral / third ventricles with choroid plexus, pituitary."""
    wm = lut(WM, GM)
    for s in (-1.0, 1.0):
        for c, a in [((s * 11.0, -18.0, 4.0), (8.0, 14.0, 9.0)), ((s * 21.0, 2.0, -2.0), (7.0, 14.0, 10.0)),
                     ((s * 13.0, 12.0, 10.0), (5.5, 9.0, 9.0))]:
            cv.paint(DEEP_GM, ellipsoid(c, a), *ellipsoid_box(c, a), only=wm)
        v = hp.ventricle * rng.uniform(0.9, 1.1)
        body = [(s * 13.0, 24.0, 6.0), (s * 13.0, 10.0, 14.0), (s * 14.0, -12.0, 18.0), (s * 18.0, -36.0, 14.0),
                (s * 22.0, -46.0, 6.0), (s * 17.0, -68.0, 6.0)]
        paint_chain(cv, VENTRICLE, body, np.array([4.0, 4.5, 4.0, 4.5, 5.5, 2.0]) * v, only=lut(WM, GM, DEEP_GM))
        horn = [(s * 22.0, -46.0, 6.0), (s * 30.0, -34.0, -8.0), (s * 31.0, -16.0, -20.0)]
        paint_chain(cv, VENTRICLE, horn, np.array([4.0, 2.8, 2.2]) * v, only=lut(WM, GM, DEEP_GM))
        c = (s * 21.0, -44.0, 7.0)
        cv.paint(CHOROID, ellipsoid(c, (3.0, 5.0, 3.0)), *ellipsoid_box(c, (3, 5, 3)), only=lut(VENTRICLE))
    third = (0.0, -12.0, -2.0)
    cv.paint(VENTRICLE, ellipsoid(third, (2.0 * hp.ventricle, 14.0, 9.0)), *ellipsoid_box(third, (4, 14, 9)),
             only=lut(WM, GM, DEEP_GM))
    pit = (0.0, 0.5, -36.0)
    cv.paint(PITUITARY, ellipsoid(pit, (6.5, 5.0, 4.0)), *ellipsoid_box(pit, (7, 5, 4)))
    paint_chain(cv, PITUITARY, [(0.0, -0.5, -33.0), (0.0, -2.0, -26.0)], 1.4)


def _paint_veins(cv: Canvas, rng: np.random.Generator, hp: HeadParams) -> None:
    """Dural venous sinuses (superior sagittal, straight, transverse, sigmoid, jugular) and the cavernous sinuses."""
    c, a = np.array(CAVITY[0][0]), np.array(CAVITY[0][1])
    ang = np.radians(np.linspace(35, 200, 12))
    sss = np.stack([np.zeros_like(ang), c[1] + (a[1] - hp.sss) * np.cos(ang), c[2] + (a[2] - hp.sss) * np.sin(ang)], 1)
    sss[-1] = (0.0, -101.0, -12.0)
    paint_chain(cv, SINUS, sss, np.linspace(1.5, hp.sss, len(sss)))
    paint_chain(cv, SINUS, [(0.0, -44.0, 4.0), (0.0, -75.0, -2.0), (0.0, -100.0, -12.0)], [2.5, 2.8, 3.2])
    for s, r in zip((-1.0, 1.0), hp.transverse, strict=True):
        path = [(0.0, -101.0, -12.0), (s * 30.0, -97.0, -19.0), (s * 50.0, -75.0, -30.0), (s * 49.0, -50.0, -42.0),
                (s * 44.0, -38.0, -58.0), (s * 37.0, -30.0, -70.0), (s * 33.0, -26.0, -100.0),
                (s * 32.0, -22.0, -170.0)]
        paint_chain(cv, SINUS, path, [hp.sss, r, r, r, r * 1.1, r * 1.4, 5.5, 6.0])
        cav = (s * 14.5, 1.0, -37.0)
        cv.paint(CAVERNOUS, ellipsoid(cav, (5.5, 11.0, 5.5)), *ellipsoid_box(cav, (6, 11, 6)),
                 only=lut(BONE, MARROW, MUSCLE, FAT, DURA, CSF, DENSE_BONE, MUCOSA))
