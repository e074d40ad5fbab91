"""Per-series intensity of every tissue and vessel label (spec: intensity table), drawn within the spec's ranges.

CTA in HU; TOF relative to brain = 1; T2 relative to CSF = 1; T1 post relative to white matter = 1. Every value is
drawn per series, and sequence options flip whole contrasts (fat saturation, venous enhancement, flow void or
bright blood), so that no single tissue level is constant across series.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import tissues as T

# (low, high) per tissue label for each variant family; missing labels fall back to "default".
RANGES: dict[str, dict[int, tuple[float, float]]] = {
    "cta": {T.AIR: (-1005, -995), T.SKIN: (30, 60), T.FAT: (-120, -60), T.MUSCLE: (40, 65), T.BONE: (1100, 2000),
            T.MARROW: (300, 800), T.DENSE_BONE: (1800, 2800), T.TEETH: (2500, 3000), T.DURA: (45, 90),
            T.CSF: (0, 15), T.GM: (37, 45), T.WM: (20, 30), T.DEEP_GM: (33, 42), T.VENTRICLE: (0, 15),
            T.CHOROID: (40, 90), T.SINUS: (150, 300), T.CAVERNOUS: (120, 280), T.VITREOUS: (5, 15), T.LENS: (80, 120),
            T.ORBIT_FAT: (-110, -70), T.NERVE: (25, 40), T.AIRWAY: (-1000, -960), T.MUCOSA: (20, 60),
            T.PITUITARY: (60, 110), T.CEREBELLUM: (30, 40), T.CORD: (25, 35), T.GLAND: (-30, 20),
            T.BRAINSTEM: (25, 35)},
    "tof": {T.AIR: (0, 0.01), T.SKIN: (0.8, 1.2), T.FAT: (2.0, 3.0), T.MUSCLE: (0.6, 0.9), T.BONE: (0.02, 0.08),
            T.MARROW: (1.0, 2.2), T.DENSE_BONE: (0.01, 0.04), T.TEETH: (0.01, 0.03), T.DURA: (0.4, 0.7),
            T.CSF: (0.3, 0.5), T.GM: (0.92, 0.98), T.WM: (1.02, 1.08), T.DEEP_GM: (0.95, 1.05), T.VENTRICLE: (0.3, 0.5),
            T.CHOROID: (0.9, 1.3), T.SINUS: (0.2, 0.8), T.CAVERNOUS: (0.6, 1.6), T.VITREOUS: (0.2, 0.4),
            T.LENS: (0.6, 0.9), T.ORBIT_FAT: (2.0, 3.0), T.NERVE: (0.8, 1.0), T.AIRWAY: (0, 0.02),
            T.MUCOSA: (0.8, 1.3), T.PITUITARY: (0.9, 1.4), T.CEREBELLUM: (0.9, 1.0), T.CORD: (0.9, 1.0),
            T.GLAND: (1.2, 2.0), T.BRAINSTEM: (1.0, 1.05)},
    "t2": {T.AIR: (0, 0.01), T.SKIN: (0.5, 0.8), T.FAT: (0.6, 0.9), T.MUSCLE: (0.15, 0.3), T.BONE: (0.01, 0.05),
           T.MARROW: (0.4, 0.8), T.DENSE_BONE: (0.01, 0.02), T.TEETH: (0.01, 0.02), T.DURA: (0.1, 0.25),
           T.CSF: (0.97, 1.03), T.GM: (0.5, 0.6), T.WM: (0.35, 0.45), T.DEEP_GM: (0.4, 0.5), T.VENTRICLE: (0.97, 1.03),
           T.CHOROID: (0.5, 0.8), T.SINUS: (0.05, 0.15), T.CAVERNOUS: (0.2, 0.6), T.VITREOUS: (0.9, 1.05),
           T.LENS: (0.1, 0.3), T.ORBIT_FAT: (0.6, 0.9), T.NERVE: (0.4, 0.5), T.AIRWAY: (0, 0.01),
           T.MUCOSA: (0.7, 1.0), T.PITUITARY: (0.45, 0.6), T.CEREBELLUM: (0.5, 0.58), T.CORD: (0.4, 0.5),
           T.GLAND: (0.5, 0.7), T.BRAINSTEM: (0.38, 0.48)},
    "t1": {T.AIR: (0, 0.01), T.SKIN: (0.8, 1.1), T.FAT: (1.3, 1.5), T.MUSCLE: (0.6, 0.8), T.BONE: (0.02, 0.08),
           T.MARROW: (0.9, 1.4), T.DENSE_BONE: (0.01, 0.03), T.TEETH: (0.01, 0.03), T.DURA: (1.1, 1.6),
           T.CSF: (0.25, 0.35), T.GM: (0.75, 0.85), T.WM: (0.98, 1.02), T.DEEP_GM: (0.85, 0.95),
           T.VENTRICLE: (0.25, 0.35), T.CHOROID: (1.5, 2.2), T.SINUS: (1.5, 2.3), T.CAVERNOUS: (1.5, 2.2),
           T.VITREOUS: (0.15, 0.3), T.LENS: (0.6, 0.9), T.ORBIT_FAT: (1.3, 1.5), T.NERVE: (0.8, 0.9),
           T.AIRWAY: (0, 0.01), T.MUCOSA: (1.2, 1.8), T.PITUITARY: (1.5, 2.2), T.CEREBELLUM: (0.8, 0.9),
           T.CORD: (0.85, 0.95), T.GLAND: (1.0, 1.4), T.BRAINSTEM: (0.95, 1.0)},
}
TEXTURE = {T.GM: 0.04, T.WM: 0.03, T.DEEP_GM: 0.04, T.CEREBELLUM: 0.06, T.BONE: 0.12, T.MARROW: 0.18,
           T.DENSE_BONE: 0.08, T.MUSCLE: 0.05, T.FAT: 0.06, T.ORBIT_FAT: 0.05, T.GLAND: 0.08, T.MUCOSA: 0.08,
           T.SINUS: 0.05, T.CAVERNOUS: 0.1, T.BRAINSTEM: 0.03, T.CHOROID: 0.1, T.PITUITARY: 0.05}


@dataclass
class Contrast:
    """Everything the image formation needs to turn labels into intensities for one series."""

    family: str
    tissue: np.ndarray  # (N_TISSUES,) float32
    texture: np.ndarray  # (N_TISSUES,) relative amplitude of a smooth texture
    artery: float  # proximal arterial lumen
    fade_mm: float  # distal fading length (path length from the root); inf: none
    sac_factor: float  # sac lumen relative to artery
    patch_sign: float  # slow flow in a sac: -1 darker (TOF), +1 brighter (flow voids that fill in)
    vein: float
    wall: float
    calc: float
    thrombus: float
    ref: float  # brain reference level (noise and bias are relative to it)
    noise: float  # CT: sigma HU; MR: sigma in image units
    options: dict = field(default_factory=dict)


def draw_contrast(rng: np.random.Generator, variant: str) -> Contrast:
    """Tissue and vessel intensities of one series."""
    family = {"cta": "cta", "tof": "tof"}.get(variant, variant[:2])
    table = RANGES[family]
    tissue = np.array([rng.uniform(*table[i]) for i in range(T.N_TISSUES)], np.float32)
    tissue[T.ORBIT_FAT] = tissue[T.FAT] * rng.uniform(0.95, 1.05)
    texture = np.array([TEXTURE.get(i, 0.02) for i in range(T.N_TISSUES)], np.float32) * rng.uniform(0.5, 1.6)
    opts: dict = {}
    if family in ("t2", "t1") and rng.random() < 0.22:  # fat saturation
        opts["fat_sat"] = True
        for lab in (T.FAT, T.ORBIT_FAT, T.MARROW):
            tissue[lab] *= rng.uniform(0.12, 0.3)
    if family == "cta":
        art = rng.uniform(330, 520)
        c = Contrast(family, tissue, texture, art, rng.uniform(600, 1500), rng.uniform(0.9, 1.0), -1.0,
                     tissue[T.SINUS] * rng.uniform(0.85, 1.1), rng.uniform(40, 70), rng.uniform(500, 1200),
                     rng.uniform(45, 90), 30.0, rng.uniform(13, 20), opts)
    elif family == "tof":
        c = Contrast(family, tissue, texture, rng.uniform(3.0, 6.0), rng.uniform(150, 400), rng.uniform(0.6, 1.0),
                     -1.0, rng.uniform(0.3, 1.0), rng.uniform(0.9, 1.1), rng.uniform(0.05, 0.3), rng.uniform(1.2, 2.2),
                     1.0, 1.0 / rng.uniform(20, 50), opts)
    elif family == "t2":
        opts["veins_bright"] = bool(rng.random() < 0.25)
        if opts["veins_bright"]:
            tissue[T.SINUS] = rng.uniform(0.6, 0.9)
        c = Contrast(family, tissue, texture, rng.uniform(0.03, 0.15), np.inf, rng.uniform(1.0, 2.0), 1.0,
                     rng.uniform(0.05, 0.2) if not opts["veins_bright"] else rng.uniform(0.5, 0.8),
                     rng.uniform(0.2, 0.4), 0.02, rng.uniform(0.3, 0.6), tissue[T.GM], 0.0, opts)
        c.noise = c.ref / rng.uniform(20, 50)
    else:  # T1 post: 3D gradient echo (bright blood) or 2D spin echo (flow void)
        bright = variant == "t1-3d-gre"
        opts["bright_blood"] = bright
        art = rng.uniform(1.5, 2.5) if bright else rng.uniform(0.05, 0.3)
        c = Contrast(family, tissue, texture, art, np.inf, rng.uniform(0.9, 1.05) if bright else rng.uniform(1.0, 1.8),
                     0.0 if bright else 1.0, rng.uniform(1.4, 2.2), rng.uniform(0.9, 1.3), 0.05,
                     rng.uniform(0.8, 1.2), 1.0, 1.0 / rng.uniform(20, 50), opts)
    return c


def background_intensity(labels: np.ndarray, contrast: Contrast, texture_field: np.ndarray) -> np.ndarray:
    """Label volume -> intensities, with a smooth per-tissue texture."""
    base = contrast.tissue[labels]
    amp = contrast.texture[labels]
    return (base * (1.0 + amp * texture_field)).astype(np.float32)
