"""Per-series image formation parameters (domain randomisation after SynthSeg): each tissue's mean and texture,
the sac inhomogeneity, noise, blur, bias field, gamma and protocol artefacts.

Two regimes, half the series each: ``"protocol"`` keeps every tissue near the spec's values for the modality (a CTA
still looks like a CTA) and ``"full"`` draws every tissue's intensity freely and independently (any contrast order;
arteries may be darker than their surroundings). In both, the aneurysm sac takes its parent artery's intensity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .head import ARTERY, CSF, GM, TISSUES, WM

CT_RANGE = (-1024.0, 3071.0)

# Spec intensity table: (low, high) mean per tissue. CTA in HU; TOF brain = 1; T2 CSF = 1; T1 post WM = 1.
_PROTOCOL: dict[str, dict[str, tuple[float, float]]] = {
    "CTA": {"air": (-1005, -995), "soft": (20, 60), "fat": (-150, -50), "muscle": (35, 65), "bone": (700, 2000),
            "csf": (0, 15), "gm": (37, 45), "wm": (20, 30), "deep_gm": (33, 45), "ventricle": (0, 15),
            "eye": (0, 20), "vein": (150, 300), "artery": (300, 550)},
    "MRA": {"air": (0.0, 0.02), "soft": (0.5, 1.2), "fat": (2.0, 3.0), "muscle": (0.4, 0.8), "bone": (0.0, 0.1),
            "csf": (0.3, 0.5), "gm": (0.9, 1.0), "wm": (1.0, 1.1), "deep_gm": (0.95, 1.1), "ventricle": (0.3, 0.5),
            "eye": (0.3, 0.6), "vein": (0.3, 1.5), "artery": (3.0, 6.0)},
    "MRI T2": {"air": (0.0, 0.02), "soft": (0.3, 0.6), "fat": (0.6, 0.8), "muscle": (0.15, 0.3), "bone": (0.0, 0.05),
               "csf": (0.95, 1.05), "gm": (0.5, 0.6), "wm": (0.35, 0.45), "deep_gm": (0.4, 0.5),
               "ventricle": (0.95, 1.05), "eye": (0.9, 1.1), "vein": (0.05, 0.15), "artery": (0.03, 0.15)},
    "MRI T1post": {"air": (0.0, 0.02), "soft": (0.6, 0.9), "fat": (1.3, 1.5), "muscle": (0.5, 0.7),
                   "bone": (0.03, 0.1), "csf": (0.25, 0.35), "gm": (0.75, 0.85), "wm": (0.95, 1.05),
                   "deep_gm": (0.8, 0.9), "ventricle": (0.25, 0.35), "eye": (0.15, 0.3), "vein": (1.3, 2.0),
                   "artery": (1.5, 2.5)},
}
N_FIELDS = 4  # smooth texture fields shared by all tissues (mixed per tissue)


@dataclass
class Contrast:
    """Everything the image formation draws for one series (JSON-friendly through ``summary``)."""

    mode: str
    modality: str
    means: np.ndarray  # per tissue
    tex_amp: np.ndarray  # per tissue, same units as the means
    tex_mix: np.ndarray  # (tissues, N_FIELDS) weights
    sac_patch: float  # how far patches inside a sac move toward ``sac_ref`` (0 = uniform sac)
    sac_ref: float
    art_fade: float  # fraction of arterial intensity lost over 250 mm of path (TOF inflow, bolus)
    vein_spread: float  # per-vein intensity spread (fraction)
    noise_kind: str
    noise_sigma: float
    noise_corr: float  # 0..1: in-plane smoothing of the noise (CT kernels)
    psf_factor: np.ndarray  # (3,) acquired resolution / grid spacing, per axis (z, y, x)
    bias_strength: float
    bias_waves: np.ndarray  # (n, 5): direction (3), wavelength mm, phase
    gamma: float
    lo: float
    hi: float
    slabs: int  # TOF slabs (1 = none)
    slab_drop: float  # fraction of vessel signal lost across one slab (venetian-blind artefact)
    slice_gain_sd: float  # 2D: slice-to-slice gain jitter
    out_scale: float  # MR: arbitrary scale of the stored values
    lumen_profile: float  # centre-to-wall intensity change across a lumen (laminar flow, layering), fraction

    def summary(self) -> dict[str, object]:
        """The drawn values, JSON-serialisable, for ``StyleScan.truth``."""
        d = asdict(self)
        d["means"] = {t: round(float(v), 4) for t, v in zip(TISSUES, self.means, strict=True)}
        d["tex_amp"] = {t: round(float(v), 4) for t, v in zip(TISSUES, self.tex_amp, strict=True)}
        d.pop("tex_mix")
        d["psf_factor"] = [round(float(v), 3) for v in self.psf_factor]
        d["bias_waves"] = np.round(self.bias_waves, 3).tolist()
        return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in d.items()}


def _means(rng: np.random.Generator, modality: str, three_d: bool, mode: str) -> np.ndarray:
    """Tissue means: near the spec's table ("protocol") or free and independent ("full")."""
    if mode == "protocol":
        table = _PROTOCOL[modality]
        means = np.array([rng.uniform(*table[t]) for t in TISSUES])
        if modality == "MRI T1post" and not three_d:  # 2D spin echo: flow void
            means[ARTERY] = rng.uniform(0.05, 0.3)
        if modality == "MRI T2" and rng.random() < 0.3:  # slow venous flow: bright sinuses
            means[TISSUES.index("vein")] = rng.uniform(0.6, 1.0)
        return means
    lo, hi = (-1000.0, 2000.0) if modality == "CTA" else (0.0, 1.0)
    means = rng.uniform(lo, hi, len(TISSUES))
    gap = 0.15 * (hi - lo)
    for _ in range(50):  # keep the lumen visible against CSF and brain (either sign)
        if min(abs(means[ARTERY] - means[t]) for t in (CSF, GM, WM)) >= gap:
            break
        means[ARTERY] = rng.uniform(lo, hi)
    else:
        means[ARTERY] = hi if means[[CSF, GM, WM]].max() < hi - gap else lo
    return means


def _texture(rng: np.random.Generator, modality: str, mode: str, means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-tissue texture amplitude and mix of the shared smooth fields (different scales)."""
    if modality == "CTA":
        unit = np.full(len(TISSUES), 100.0)
        unit[TISSUES.index("bone")] = rng.uniform(300, 900)
        unit[TISSUES.index("air")] = 5.0
    else:
        unit = np.full(len(TISSUES), max(float(np.median(np.abs(means))), 0.05))
    top = 0.05 if mode == "protocol" else 0.12
    amp = rng.uniform(0, top, len(TISSUES)) * unit
    if modality == "CTA" and mode == "protocol":
        amp[TISSUES.index("bone")] = unit[TISSUES.index("bone")] * rng.uniform(0.3, 0.6)
    mix = rng.dirichlet(np.full(N_FIELDS, 0.6), len(TISSUES))
    return amp, np.sqrt(mix)


def _noise(rng: np.random.Generator, modality: str, mode: str, means: np.ndarray) -> tuple[str, float, float]:
    """Noise kind, sigma (image units) and in-plane correlation."""
    if modality == "CTA":
        sigma = rng.uniform(13, 20) if mode == "protocol" else rng.uniform(3, 60)
        return "gaussian", float(sigma), float(rng.uniform(0, 0.8) if rng.random() < 0.6 else 0.0)
    ref = 1.0 if mode == "protocol" else max(float(np.median(means[[CSF, GM, WM]])), 0.1)
    snr = rng.uniform(20, 50) if mode == "protocol" else rng.uniform(5, 80)
    kind = "rician" if mode == "protocol" or rng.random() < 0.7 else "gaussian"
    return kind, float(ref / snr), float(rng.uniform(0, 0.5) if rng.random() < 0.3 else 0.0)


def _sac(rng: np.random.Generator, modality: str, mode: str, means: np.ndarray) -> tuple[float, float]:
    """Sac inhomogeneity (slow flow, thrombus, contrast layering): strength and the value patches move toward."""
    top = {"CTA": 0.12, "MRA": 0.45, "MRI T2": 0.5, "MRI T1post": 0.25}[modality] if mode == "protocol" else 0.5
    return float(rng.uniform(0, top)), float(means[GM])


def draw_contrast(rng: np.random.Generator, modality: str, three_d: bool, mode: str) -> Contrast:
    """Draw every image-formation parameter of one series (order of draws fixed: same rng, same series)."""
    means = _means(rng, modality, three_d, mode)
    tex_amp, tex_mix = _texture(rng, modality, mode, means)
    sac_patch, sac_ref = _sac(rng, modality, mode, means)
    if mode == "protocol":
        fade = {"CTA": (0.0, 0.15), "MRA": (0.25, 0.5), "MRI T2": (0.0, 0.0), "MRI T1post": (0.0, 0.3)}[modality]
        art_fade = float(rng.uniform(*fade))
    else:
        art_fade = float(rng.uniform(-0.2, 0.4))
    kind, sigma, corr = _noise(rng, modality, mode, means)
    psf = rng.uniform(1.0, 1.6 if mode == "protocol" else 2.5, 3)
    ct = modality == "CTA"
    bias = rng.uniform(0, (0.03 if ct else 0.3) if mode == "protocol" else (0.15 if ct else 0.6))
    dirs = rng.normal(0, 1, (3, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    waves = np.hstack([dirs, rng.uniform(150, 400, (3, 1)), rng.uniform(0, 2 * np.pi, (3, 1))])
    if mode == "protocol":
        gamma = 1.0 if ct else float(np.exp(rng.normal(0, 0.12)))
    else:
        gamma = float(np.exp(rng.uniform(-0.35, 0.35) if ct else rng.uniform(-0.6, 0.6)))
    lo, hi = CT_RANGE if ct else (0.0, float(max(means.max(), 1e-3) * 1.2))
    tof = modality == "MRA" and (mode == "protocol" or rng.random() < 0.5)
    slabs = int(rng.choice([1, 2, 3, 4], p=[0.35, 0.25, 0.25, 0.15])) if tof else 1
    slab_drop = float(rng.uniform(0.1, 0.45)) if slabs > 1 or tof else 0.0
    slice_gain = float(rng.uniform(0, 0.04)) if not ct and not three_d else 0.0
    out_scale = 1.0 if ct else float(10 ** rng.uniform(1.0, 3.0))
    if mode == "protocol":
        top = {"CTA": 0.1, "MRA": 0.3, "MRI T2": 0.0, "MRI T1post": 0.2 if three_d else 0.0}[modality]
        profile = float(rng.uniform(0.0, top))
    else:
        profile = float(rng.uniform(-0.3, 0.3))
    return Contrast(mode, modality, means, tex_amp, tex_mix, sac_patch, sac_ref, art_fade,
                    float(rng.uniform(0.0, 0.2)), kind, sigma, corr, psf, float(bias), waves, gamma, float(lo),
                    float(hi), slabs, slab_drop, slice_gain, out_scale, profile)


def apply_gamma(c: Contrast, v: np.ndarray) -> np.ndarray:
    """Random gamma on the [lo, hi] range (MR; CT only in the full regime), in place where possible."""
    if abs(c.gamma - 1.0) < 1e-6:
        return v
    span = np.float32(c.hi - c.lo)
    t = np.clip((v - np.float32(c.lo)) / span, 0.0, None)
    return (np.float32(c.lo) + span * np.power(t, np.float32(c.gamma))).astype(np.float32)


def bias_field(c: Contrast, u: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Smooth multiplicative field exp(sum of long cosines) at grid-frame coordinates (broadcastable arrays)."""
    acc = np.float32(0.0)
    for w in c.bias_waves:
        k = 2 * np.pi / w[3]
        acc = acc + np.cos(np.float32(k * w[0]) * u[0] + np.float32(k * w[1]) * u[1] + np.float32(k * w[2]) * u[2]
                           + np.float32(w[4]))
    return np.exp(np.float32(c.bias_strength / np.sqrt(3.0)) * acc).astype(np.float32)


def apply_bias(c: Contrast, v: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Multiply by the bias field (CT: around air, so air stays at -1000 HU)."""
    if c.modality == "CTA":
        return (v + np.float32(1000.0)) * field - np.float32(1000.0)
    return v * field
