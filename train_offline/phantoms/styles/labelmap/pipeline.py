"""render_series: anatomy -> tissue labels -> intensities -> PSF onto the native grid -> noise and scanner effects."""

from __future__ import annotations

import contextlib

import numpy as np

from kernel.labels import LOCATION_COLS, MODALITY_NAMES

from ..contract import StyleAneurysm, StyleScan
from . import blocks as B
from . import scanner as S
from . import tissues as T
from .aneurysms import Sac, place_sacs
from .canvas import Canvas, ellipsoid, ellipsoid_box, paint_chain
from .contrast import Contrast, background_intensity, draw_contrast
from .formation import Shader, form_image, label_map
from .geometry import Acquisition, Pose, draw_pose, draw_protocol, draw_scale, place_acquisition
from .vessels import Displacement, Path, TreeParams, build_arteries, build_veins, draw_variants, infundibula, landmarks


class Frames:
    """Canonical q / head h / LPS / acquisition u conversions of one series."""

    def __init__(self, pose: Pose, acq: Acquisition) -> None:
        self.pose, self.acq = pose, acq
        self.h_mat = acq.axes @ pose.head_to_lps[:3, :3]
        self.offset = acq.axes @ (pose.shift - acq.origin)
        self.q_mat = self.h_mat @ np.diag(pose.scale)
        self.q_inv = np.linalg.inv(self.q_mat)

    def h_to_u(self, h: np.ndarray) -> np.ndarray:
        return np.asarray(h, float) @ self.h_mat.T + self.offset

    def q_to_u(self, q: np.ndarray) -> np.ndarray:
        return np.asarray(q, float) @ self.q_mat.T + self.offset

    def u_to_q(self, u: np.ndarray) -> np.ndarray:
        return (np.asarray(u, float) - self.offset) @ self.q_inv.T


def _check(modality: str, locations: list[str], size: str, dome_mm: float | None) -> None:
    assert modality in MODALITY_NAMES, f"unknown modality {modality!r}"
    assert size in ("small", "real"), f"size must be 'small' or 'real', got {size!r}"
    bad = [loc for loc in locations if loc not in LOCATION_COLS]
    assert not bad, f"unknown locations {bad}"
    assert dome_mm is None or 1.0 <= dome_mm <= 30.0, f"dome_mm out of range: {dome_mm}"


def render_series(rng: np.random.Generator, modality: str, locations: list[str], size: str, *,
                  dome_mm: float | None = None, with_labels: bool = False) -> StyleScan:
    """One series of ``modality`` with an aneurysm per entry of ``locations`` (see the style contract)."""
    _check(modality, list(locations), size, dome_mm)
    with _one_blas_thread():  # many small matrix products: threads only add overhead (series run in parallel)
        return _render(rng, modality, list(locations), size, dome_mm, with_labels)


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _render(rng: np.random.Generator, modality: str, locations: list[str], size: str, dome_mm: float | None,
            with_labels: bool) -> StyleScan:
    scale = draw_scale(rng)
    proto = draw_protocol(rng, modality, size)
    variants = draw_variants(rng, list(locations))
    disp = Displacement(rng)
    arteries = build_arteries(rng, variants, disp)
    veins = build_veins(rng, disp)
    infs = infundibula(rng, arteries)
    sacs = place_sacs(rng, list(locations), arteries, scale, dome_mm)
    sided = [(s.centre, 1.0 if s.location.startswith("Right") else -1.0) for s in sacs
             if s.location.startswith(("Left", "Right"))]
    pose = draw_pose(rng, scale, sided)
    centres = pose.h_to_lps(np.array([s.centre for s in sacs]).reshape(-1, 3))
    acq = place_acquisition(rng, proto, pose, centres)
    frames = Frames(pose, acq)
    contrast = draw_contrast(rng, acq.variant)
    canvas = _canvas(acq, frames, size)
    T.paint_head(canvas, rng, T.HeadParams(rng), landmarks(arteries))
    _paint_cuffs(canvas, arteries, sacs, pose.scale, rng.uniform(0.6, 1.3))
    bias = S.Bias(rng, rng.uniform(0.04, 0.25)) if contrast.family != "cta" else None
    bg = background_intensity(canvas.labels, contrast, canvas.random_field(rng, rng.uniform(4.0, 8.0)))
    if bias is not None:
        bg *= bias(*canvas.xyz())
    canvas.q = []  # the coordinates are no longer needed: free them
    prims = _prims(rng, arteries, veins, infs, sacs, frames, acq, 3.5 if size == "small" else 2.0)
    fine = _fine_grid(acq, prims, size)
    inflow = S.tof_profiles(rng, acq) if acq.variant == "tof" else None
    shader = Shader(contrast, prims, sacs, frames, canvas, bg, bias, inflow[1] if inflow else None)
    acc, lumen, segs = B.render_blocks(fine, prims, shader, with_labels)
    image, effects = form_image(rng, acq, frames, canvas, bg, acc, contrast, inflow[0] if inflow else None)
    del bg, canvas
    labels_map = label_map(acq, fine, lumen, segs, 0.4 if acq.three_d else 0.2) if with_labels else None
    aneurysms = [StyleAneurysm(location=s.location, centre_lps=pose.h_to_lps(s.centre), dome_mm=float(s.dome),
                               neck_mm=float(s.neck), parent_lps=pose.h_to_lps(s.parent), bleb=s.bleb, shape=s.shape)
                 for s in sacs]
    truth = _truth(acq, contrast, variants, sacs, infs, arteries, pose, effects, size)
    return StyleScan(image=image, row_dir=acq.axes[2].copy(), col_dir=acq.axes[1].copy(),
                     pixel_spacing=(float(acq.spacing[1]), float(acq.spacing[2])), slice_spacing=float(acq.spacing[0]),
                     slice_thickness=float(acq.thickness), origin=acq.origin.copy(), plane=acq.plane,
                     tilt_deg=float(acq.tilt_deg), three_d=bool(acq.three_d), aneurysms=aneurysms,
                     head_to_lps=pose.head_to_lps, labels_map=labels_map, truth=truth)


def _canvas(acq: Acquisition, frames: Frames, size: str) -> Canvas:
    """The coarse background grid: 1.0-1.4 mm (real) or 2.0-2.6 mm (small), covering the stack plus the PSF reach."""
    px, ss = acq.spacing[1], acq.spacing[0]
    if size == "small":
        h_in = float(np.clip(1.5 * px, 2.0, 2.6))
        h_n = float(np.clip(1.5 * ss, 2.0, 2.6)) if acq.three_d else float(np.clip(acq.thickness / 2.5, 1.6, 2.4))
    else:
        h_in = float(np.clip(2.5 * px, 1.0, 1.4))
        h_n = float(np.clip(2.5 * ss, 1.0, 1.4)) if acq.three_d else float(np.clip(acq.thickness / 4.0, 1.0, 1.5))
    step = np.array([h_n, h_in, h_in])
    margin = 3.0 * np.maximum(acq.psf_sigma, 0.5) + 2.0 * step + np.array([0.5 * acq.slab_width, 0, 0])
    start = -margin
    shape = np.ceil((acq.extent + 2 * margin) / step).astype(int) + 1
    return Canvas(tuple(shape), start, step, frames.q_mat, frames.offset)


def _paint_cuffs(canvas: Canvas, arteries: dict[str, Path], sacs: list[Sac], scale: np.ndarray, factor: float) -> None:
    """CSF around the intracranial arteries and sacs (cisternal and sulcal cuffs), on the coarse canvas."""
    brain = T.BRAIN_LIKE
    for p in arteries.values():
        if p.sleeve <= 0:
            continue
        idx = np.unique(np.r_[np.arange(0, len(p.points), 2), len(p.points) - 1])
        paint_chain(canvas, T.CSF, p.points[idx], p.radius[idx] + p.sleeve * factor, only=brain)
    for s in sacs:
        if "Infraclinoid" in s.location:
            continue
        c = s.centre / scale
        r = 0.5 * s.dome + 1.5 * factor
        canvas.paint(T.CSF, ellipsoid(c, (r, r, r)), *ellipsoid_box(c, (r, r, r)), only=brain)


def _thin(points: np.ndarray, min_step: float) -> np.ndarray:
    """Indices of path samples about ``min_step`` mm apart (always keeping both ends)."""
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    keep = np.flatnonzero(np.diff(np.floor(s / min_step), prepend=-1.0) > 0)
    return np.unique(np.r_[keep, len(points) - 1])


def _path_prims(paths: list[Path], frames: Frames, wall: float, min_step: float) -> B.Prims:
    parts = []
    for p in paths:
        idx = _thin(p.points, min_step)
        u, r, f = frames.q_to_u(p.points[idx]), p.radius[idx], p.flow[idx]
        n = len(u) - 1
        if n < 1:
            continue
        parts.append(B.Prims(a=u[:-1], b=u[1:], ra=r[:-1], rb=r[1:], kind=np.full(n, p.kind, np.uint8),
                             seg=np.full(n, p.seg, np.uint8), wall=np.full(n, wall if p.kind == B.ARTERY else 0.2),
                             sleeve=np.full(n, p.sleeve), flow_a=f[:-1], flow_b=f[1:], gain=np.full(n, p.gain),
                             sac=np.full(n, -1, np.int32)))
    return B.Prims.concat(parts)


def _prims(rng: np.random.Generator, arteries: dict[str, Path], veins: list[Path], infs: list[Path], sacs: list[Sac],
           frames: Frames, acq: Acquisition, min_step: float) -> B.Prims:
    """All capsules in the acquisition frame: arteries, infundibula, veins, aneurysm sacs, wall calcifications."""
    wall = rng.uniform(0.3, 0.6)
    parts = [_path_prims(list(arteries.values()) + infs + veins, frames, wall, min_step)]
    for i, s in enumerate(sacs):
        a = frames.h_to_u(np.array([c[0] for c in s.caps]))
        b = frames.h_to_u(np.array([c[1] for c in s.caps]))
        n = len(a)
        sleeve = rng.uniform(0.8, 2.0) if "Infraclinoid" not in s.location else 0.2
        parts.append(B.Prims(a=a, b=b, ra=np.array([c[2] for c in s.caps]), rb=np.array([c[3] for c in s.caps]),
                             kind=np.full(n, B.SAC, np.uint8), seg=np.full(n, s.seg, np.uint8),
                             wall=np.full(n, rng.uniform(0.25, 0.5)), sleeve=np.full(n, sleeve),
                             flow_a=np.full(n, s.flow), flow_b=np.full(n, s.flow), gain=np.ones(n),
                             sac=np.full(n, i, np.int32)))
    if rng.random() < 0.45:  # calcified plaques in the wall of the siphon, vertebral or basilar artery
        hosts = [k for k in arteries if k.rsplit("_", 1)[0] in ("ica_cav", "ica_petr", "va") or k == "basilar"]
        for _ in range(int(rng.integers(1, 5))):
            p = arteries[str(rng.choice(sorted(hosts)))]
            j = int(rng.integers(len(p.points)))
            off = rng.normal(size=3)
            off *= (p.radius[j] + 0.2) / np.linalg.norm(off)
            c = frames.q_to_u(p.points[j:j + 1] + off)
            r = np.array([rng.uniform(0.4, 1.0)])
            parts.append(B.Prims(a=c, b=c, ra=r, rb=r, kind=np.array([B.CALC], np.uint8),
                                 seg=np.array([p.seg], np.uint8), wall=np.zeros(1), sleeve=np.zeros(1),
                                 flow_a=np.zeros(1), flow_b=np.zeros(1), gain=np.ones(1), sac=np.full(1, -1, np.int32)))
    prims = B.Prims.concat(parts)
    reach = np.maximum(prims.ra, prims.rb)[:, None] + 4.0
    lo, hi = -3.0 * acq.psf_sigma - acq.slab_width, acq.extent + 3.0 * acq.psf_sigma + acq.slab_width
    keep = np.all((np.maximum(prims.a, prims.b) + reach > lo) & (np.minimum(prims.a, prims.b) - reach < hi), axis=1)
    return B.Prims(*(getattr(prims, f)[keep] for f in B.Prims.__dataclass_fields__))


def _fine_grid(acq: Acquisition, prims: B.Prims, size: str) -> B.FineGrid:
    """Fine vessel grid: 0.3-0.6 mm (real) or 0.65-1 mm (small); thick 2D slices get up to 1 mm along the normal."""
    px, ss = acq.spacing[1], acq.spacing[0]
    if size == "small":
        h_in, h_n = np.clip(0.55 * px, 0.65, 1.0), np.clip(0.55 * ss, 0.65, 1.0)
        block = 24
    else:
        h_in, h_n = np.clip(0.8 * px, 0.3, 0.5), np.clip(0.8 * ss, 0.3, 0.6)
        block = 20
    if not acq.three_d:
        h_n = np.clip(acq.thickness / 5.0, 0.6, 1.0)
    step = np.array([h_n, h_in, h_in], float)
    reach = 3.0 * acq.psf_sigma + acq.slab_width + 2.0
    if len(prims):
        r = (np.maximum(prims.ra, prims.rb) + prims.wall + prims.sleeve)[:, None]
        lo = np.maximum(np.minimum(prims.a, prims.b).min(axis=0) - r.max() - 1.0, -reach)
        hi = np.minimum(np.maximum(prims.a, prims.b).max(axis=0) + r.max() + 1.0, acq.extent + reach)
    else:
        lo, hi = np.zeros(3), np.ones(3)
    n_blocks = np.maximum(np.ceil((hi - lo) / (step * block)).astype(int), 1)
    return B.FineGrid(lo, step, n_blocks, block, acq.shape, acq.spacing, acq.psf_sigma, acq.slab_width,
                      acq.sinc_cutoff())


def _truth(acq: Acquisition, contrast: Contrast, variants: TreeParams, sacs: list[Sac], infs: list[Path],
           arteries: dict[str, Path], pose: Pose, effects: dict, size: str) -> dict:
    """Style facts for the record (JSON-serialisable): protocol variant, anatomy variants, contrast and effects, and
    three labelled centreline points per main vessel (LPS) for checks."""
    points = []
    for key, p in arteries.items():
        if p.seg == 0 or key.startswith("branch"):
            continue
        for j in sorted({len(p.points) // 4, len(p.points) // 2, (3 * len(p.points)) // 4}):
            points.append({"name": key, "seg": int(p.seg), "radius_mm": round(float(p.radius[j]), 3),
                           "lps": [round(float(v), 3) for v in pose.q_to_lps(p.points[j])]})
    fx = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in effects.items()}
    return {
        "style": "labelmap", "size": size, "variant": acq.variant, "slabs": [list(s) for s in acq.slabs],
        "noise_grain": float(acq.noise_grain), "psf_sigma_mm": [float(v) for v in acq.psf_sigma],
        "contrast": {"artery": float(contrast.artery), "noise": float(contrast.noise), **contrast.options},
        "tissue_levels": {name: float(v) for name, v in zip(T.TISSUE_NAMES, contrast.tissue, strict=True)},
        "variants": {k: (v if not isinstance(v, np.generic) else v.item()) for k, v in variants.as_dict().items()},
        "infundibula": [p.name for p in infs],
        "sacs": [{"location": s.location, "shape": s.shape, "bleb": s.bleb, "thrombus": float(s.thrombus),
                  "patchiness": float(s.patchiness)} for s in sacs],
        "effects": {k: v for k, v in fx.items() if k != "slice_gain"},
        "vessel_points": points,
        "aneurysm_sac_labelled": True,
        "scale": [float(v) for v in pose.scale],
    }
