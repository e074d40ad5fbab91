"""Image formation per protocol: tissue values drawn inside the spec's ranges, blood signal from flow physics
(CTA contrast timing, TOF inflow enhancement and its saturation along the flow and in-plane, T2 flow voids, T1post
enhancing veins or spin-echo voids), slow flow in large sacs, the bias / texture field and the noise model."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .geometry import Acquisition, Pose
from .sdf import WaveNoise
from .vessels import Tube

# (low, high) per tissue and protocol. CTA in HU; TOF with brain = 1; T2 with CSF = 1; T1post with WM = 1.
TISSUE_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "CTA": {"air": (-1005, -995), "fat": (-150, -50), "soft": (30, 60), "bone": (1000, 2000), "marrow": (350, 800),
            "dense_bone": (1800, 2900), "mastoid": (-600, -250), "orbit_fat": (-120, -60), "vitreous": (5, 15),
            "nerve": (25, 35), "csf": (0, 15), "gm": (37, 45), "wm": (20, 30), "deep_gm": (33, 42),
            "choroid": (25, 45), "calc": (120, 450), "pituitary": (60, 110), "dura": (45, 75), "cord": (25, 35),
            "thrombus": (50, 90), "plaque": (600, 1300)},
    "MRA": {"air": (0.0, 0.02), "fat": (2.0, 3.0), "soft": (0.6, 0.9), "bone": (0.02, 0.1), "marrow": (1.2, 2.2),
            "dense_bone": (0.01, 0.06), "mastoid": (0.05, 0.2), "orbit_fat": (2.0, 3.0), "vitreous": (0.2, 0.4),
            "nerve": (0.9, 1.1), "csf": (0.3, 0.5), "gm": (0.92, 0.98), "wm": (1.02, 1.08), "deep_gm": (0.95, 1.05),
            "choroid": (0.8, 1.1), "calc": (0.1, 0.4), "pituitary": (1.0, 1.5), "dura": (0.4, 0.7),
            "cord": (0.9, 1.1), "thrombus": (1.2, 2.4), "plaque": (0.05, 0.2)},
    "MRI T2": {"air": (0.0, 0.01), "fat": (0.6, 0.8), "soft": (0.25, 0.4), "bone": (0.0, 0.04), "marrow": (0.5, 0.7),
               "dense_bone": (0.0, 0.03), "mastoid": (0.02, 0.1), "orbit_fat": (0.6, 0.8), "vitreous": (0.95, 1.05),
               "nerve": (0.35, 0.45), "csf": (0.95, 1.05), "gm": (0.5, 0.6), "wm": (0.35, 0.45),
               "deep_gm": (0.4, 0.5), "choroid": (0.5, 0.7), "calc": (0.05, 0.2), "pituitary": (0.45, 0.6),
               "dura": (0.1, 0.25), "cord": (0.35, 0.45), "thrombus": (0.2, 0.7), "plaque": (0.02, 0.1)},
    "MRI T1post": {"air": (0.0, 0.01), "fat": (1.3, 1.5), "soft": (0.6, 0.8), "bone": (0.02, 0.08),
                   "marrow": (1.0, 1.3), "dense_bone": (0.01, 0.05), "mastoid": (0.05, 0.2), "orbit_fat": (1.3, 1.5),
                   "vitreous": (0.25, 0.35), "nerve": (0.9, 1.0), "csf": (0.25, 0.35), "gm": (0.75, 0.85),
                   "wm": (0.97, 1.03), "deep_gm": (0.8, 0.9), "choroid": (1.6, 2.4), "calc": (0.1, 0.4),
                   "pituitary": (1.6, 2.2), "dura": (1.2, 1.7), "cord": (0.9, 1.0), "thrombus": (0.9, 1.5),
                   "plaque": (0.05, 0.2)},
}
SINUSES = ("sss", "ts_R", "ts_L", "sig_R", "sig_L", "straight", "galen")


@dataclass
class Contrast:
    """One series' draws for the image formation."""

    modality: str
    values: dict[str, float]
    artery: float  # reference arterial signal (CTA HU at the ICA; TOF at inflow; T2 / T1 void or bright level)
    vein: float
    sinus: float
    sac_slow: float  # signal that slow flow in a large sac tends to
    fade: float = 0.0  # CTA: fractional drop of arterial HU over 200 mm of path
    sat_len: float = 100.0  # TOF: saturation length (mm of travel inside a slab)
    inplane_loss: float = 0.0  # TOF: extra saturation of flow running in the slab plane
    noise_sigma: float = 15.0
    noise_corr_mm: float = 0.0  # CT noise correlation (Gaussian kernel sigma, mm)
    ghost: tuple[float, float, int] | None = None  # MR motion ghost (amplitude, shift / FOV, phase-encode axis)
    scale: float = 1.0  # MR arbitrary global scale
    slab_tilt: list[float] = field(default_factory=list)  # TOF stationary-signal ramp across each slab
    bias: WaveNoise | None = None
    bias_amp: float = 0.0
    texture: WaveNoise | None = None
    texture_amp: float = 0.0

    @property
    def is_ct(self) -> bool:
        return self.modality == "CTA"

    def modulation(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Head-frame field: multiplicative (MR: bias x texture) or additive (CT: texture in HU)."""
        tex = np.float32(self.texture_amp) * self.texture(x, y, z)
        if self.is_ct:
            return tex
        return np.exp(np.float32(self.bias_amp) * self.bias(x, y, z) + tex).astype(np.float32)


def _ranges(rng: np.random.Generator, modality: str) -> dict[str, float]:
    return {k: float(rng.uniform(*v)) for k, v in TISSUE_RANGES[modality].items()}


def draw_contrast(rng: np.random.Generator, acq: Acquisition) -> Contrast:
    """Tissue values, blood signals, noise and artefact switches of one series."""
    mod = acq.modality
    values = _ranges(rng, mod)
    u = rng.uniform
    if mod == "CTA":
        phase = u(0.0, 1.0)  # 0: early arterial (veins dim) .. 1: early venous (veins as bright as arteries)
        artery = u(330, 520) * (1.0 - 0.25 * max(0.0, phase - 0.6))
        vein = 70 + phase * u(200, 280)
        values["venous"] = vein
        con = Contrast(mod, values, artery, vein, vein * u(0.95, 1.15), artery, fade=u(0.04, 0.15),
                       noise_sigma=u(13, 20), noise_corr_mm=u(0.25, 0.7))
    elif mod == "MRA":
        sat_bright = rng.random() < 0.25  # no venous saturation band: sinuses bright
        vein = u(0.6, 1.3)
        values["venous"] = u(0.8, 1.5)
        con = Contrast(mod, values, u(3.5, 6.0), vein, u(1.8, 3.0) if sat_bright else u(0.6, 1.4), u(1.1, 1.8),
                       sat_len=u(120, 320), inplane_loss=u(0.1, 0.35), noise_sigma=1.0 / u(20, 50))
        con.slab_tilt = list(u(-0.15, 0.15, len(acq.slabs)))
    elif mod == "MRI T2":
        values["venous"] = u(0.1, 0.5)
        con = Contrast(mod, values, u(0.03, 0.15), u(0.05, 0.25), u(0.5, 0.9) if rng.random() < 0.3 else u(0.05, 0.2),
                       u(0.3, 0.6), noise_sigma=0.5 / u(20, 50))
    else:
        values["venous"] = u(1.8, 2.5)
        gre = acq.variant == "gre"
        artery = u(1.5, 2.5) if gre else u(0.03, 0.12)
        con = Contrast(mod, values, artery, u(1.8, 2.8) if gre else u(1.4, 2.4), u(1.8, 2.8),
                       artery * 0.8 if gre else u(0.5, 1.2), noise_sigma=1.0 / u(20, 50))
    con.texture = WaveNoise(rng, 10, (6.0, 20.0))
    con.texture_amp = float(u(1.5, 4.0) if con.is_ct else u(0.01, 0.03))
    con.bias = WaveNoise(rng, 4, (150.0, 400.0))
    con.bias_amp = 0.0 if con.is_ct else float(u(0.05, 0.3))
    if not con.is_ct:
        con.scale = float(np.exp(u(np.log(100), np.log(2000))))
        if rng.random() < 0.2:
            con.ghost = (float(u(0.02, 0.07)), float(1.0 / u(2.0, 6.0)), int(acq.phase_axis))
    return con


def _tof_travel(tubes: dict[str, Tube], acq: Acquisition, pose: Pose) -> dict[str, np.ndarray]:
    """Path length each arterial sample has travelled inside the slab it is imaged in (saturation resets on entry
    into a fresh slab). Parents come before children in ``tubes``, so the state at each origin is known."""
    lo = np.array([s[0] for s in acq.slabs])
    hi = np.array([s[1] for s in acq.slabs])
    state: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    out = {}
    for name, t in tubes.items():
        if t.kind not in ("artery", "perforator"):
            continue
        uk = acq.to_grid(pose.to_lps(t.pts))[:, 0]
        n = len(uk)
        inside = (uk[None] >= lo[:, None]) & (uk[None] <= hi[:, None])
        entry = np.full(inside.shape, np.nan)
        par = state.get(t.parent) if t.parent else None
        for s in range(len(lo)):
            prev_in = bool(par[0][s, t.attach]) if par is not None else False
            starts = inside[s] & np.concatenate([[not prev_in], ~inside[s][:-1]])
            vals = np.where(starts, t.arc, np.nan)
            if inside[s, 0] and prev_in:
                vals[0] = par[1][s, t.attach]
            idx = np.maximum.accumulate(np.where(np.isfinite(vals), np.arange(n), 0))
            entry[s] = np.where(inside[s], vals[idx], np.nan)
        state[name] = (inside, entry)
        centre = 0.5 * (lo + hi)
        dist = np.abs(uk[None] - centre[:, None]) + np.where(inside, 0.0, np.inf)
        pick = np.argmin(dist, axis=0)
        travel = t.arc - entry[pick, np.arange(n)]
        out[name] = np.where(np.isfinite(travel), travel, 0.0)
    return out


def tube_signals(tubes: dict[str, Tube], con: Contrast, acq: Acquisition, pose: Pose,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Blood (or plaque) signal at every centreline sample, in the protocol's units, bias field included."""
    travel = _tof_travel(tubes, acq, pose) if con.modality == "MRA" else {}
    out = {}
    for name, t in tubes.items():
        jitter = float(rng.uniform(0.95, 1.05))
        if t.kind == "calc":
            sig = np.full(len(t.pts), con.values["plaque"])
        elif t.kind == "vein":
            sig = np.full(len(t.pts), (con.sinus if name in SINUSES else con.vein) * jitter)
        elif con.modality == "CTA":
            sig = con.artery * jitter * (1.0 - con.fade * np.minimum(t.arc / 200.0, 1.0))
        elif con.modality == "MRA":
            tangent = np.gradient(t.pts, axis=0)
            tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-9
            through = np.abs(pose.dir_to_lps(tangent) @ acq.normal)
            speed = np.clip(t.radius / 1.2, 0.4, 1.2) * (0.6 if t.kind == "perforator" else 1.0)
            inflow = np.exp(-travel[name] / (con.sat_len * speed))
            sig = 1.0 + (con.artery * jitter - 1.0) * inflow * (1.0 - con.inplane_loss * (1.0 - through) ** 2)
        elif con.modality == "MRI T1post" and con.artery > 1.0:
            sig = con.artery * jitter * (1.0 - 0.1 * np.minimum(t.arc / 200.0, 1.0))
        else:
            sig = np.full(len(t.pts), con.artery * jitter)
        if not con.is_ct:
            sig = sig * con.modulation(*(t.pts[:, i].astype(np.float32) for i in range(3)))
        out[name] = sig.astype(np.float32)
    return out


def slab_profile(con: Contrast, acq: Acquisition, uk: np.ndarray) -> np.ndarray:
    """TOF stationary-tissue signal along the slab direction: a ramp across each slab and a dip where slabs meet
    (the venetian-blind bands of multi-slab TOF)."""
    prof = np.ones(len(uk), np.float32)
    if not acq.slabs:
        return prof
    lo = np.array([s[0] for s in acq.slabs])
    hi = np.array([s[1] for s in acq.slabs])
    centre = 0.5 * (lo + hi)
    pick = np.argmin(np.abs(uk[:, None] - centre[None]), axis=1)
    rel = np.clip((uk - lo[pick]) / (hi[pick] - lo[pick]), 0, 1)
    edge = np.exp(-np.minimum(rel, 1 - rel) / 0.06)
    tilt = np.array(con.slab_tilt)[pick]
    prof = 1.0 + tilt * (rel - 0.5) - 0.12 * edge * (len(acq.slabs) > 1)
    return prof.astype(np.float32)
