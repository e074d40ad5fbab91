"""Phantom style ``randomised``: domain randomisation after SynthSeg, so that the only stable cue left is the
anatomy (a sac on a vessel), not the look of one renderer.

What it does differently:

- Anatomy: its own head label map (``head.py``), painted on a coarse lattice from ellipsoids and tubes in a
  MNI-like RAS frame: scalp, subcutaneous fat, temporalis and neck muscle, skull shell and skull base (sphenoid with
  its sinus, clivus, petrous bone around the carotid canal, orbits, mastoid air, face, mandible, spine), CSF,
  folded grey/white matter of random cortex depth with sulci, deep grey nuclei, ventricles of random size, eyes,
  basal cisterns and CSF sleeves of random width around the circle, cavernous sinuses, dural sinuses and jugulars.
  Per series: global anisotropic scale 0.9-1.1, smooth random shape perturbation, random layer thicknesses.
- Vessels (``anatomy.py``): the spec's centreline table as Catmull-Rom splines through jittered waypoints (shared
  junctions jittered once), random tortuosity, optional loops, diameters jittered per vessel; variants (AComm
  absent/hypoplastic, A1 absent/hypoplastic, fetal PCA, PComm hypoplastic/absent, vertebral dominance, optional
  ophthalmic, anterior choroidal and callosomarginal arteries), small unlabelled branches (M3, PCA cortical,
  lenticulostriate), external carotid and facial arteries, and small veins near the circle (basal veins of
  Rosenthal, internal cerebral, superficial middle cerebral, cortical veins).
- Aneurysms (``aneurysms.py``): one per location entry at a plausible site of that location (bifurcation apex with
  the dome along the flow, PComm posterolateral/inferior, AComm anterior/superior, basilar tip superior,
  ophthalmic origin dorsal, cavernous lateral, pericallosal at the genu, SCA/PICA/AICA origins, vertebrobasilar
  junction); an ellipsoid dome (log-normal 4.5 mm median, neck 0.5-0.9 x dome, aspect ratio 1-2) smoothly joined to
  the parent by a neck, lobulated on some, a daughter bleb on ~15%. Mimics on negatives and positives alike:
  infundibula (< 3 mm cones at branch origins), loops, overlapping branches, veins beside the circle.
- Image formation (``contrast.py``, ``imaging.py``): half the series keep the protocol's look (tissue means drawn in
  the spec's ranges), half draw every tissue's mean freely and independently (any contrast order, lumen brighter or
  darker than brain); the sac always takes its parent artery's value, with random patchy inhomogeneity. Per tissue:
  random texture from smooth fields of several scales; then gamma, a multiplicative bias field, the blur of a
  random acquired resolution (1-1.6x the voxel, up to 2.5x when fully random), thick-slice profiles for 2D, and the
  protocol's geometry (``acquisition.py``: planes, tilts, slabs, 2D/3D, pixel and slice sizes). Vessels and sacs are
  drawn at full resolution as analytically blurred occupancies from signed distances, only inside their bounding
  boxes; the background is painted on a 1.2-1.7 mm lattice ("real") and upsampled.
- Noise and artefacts: CT Gaussian noise (13-20 HU, optionally kernel-correlated), MR Rician (SNR 20-50, wider when
  fully random), TOF multi-slab venetian blinds and distal fading, 2D slice-to-slice gain jitter, random lumen
  profile (laminar flow), random MR output scale.

Measured cost per series (CPU seconds, shared and loaded 2-core machine; mean / max over 10 "small" and 3 "real"
series with labels; peak resident memory of the whole process, torch included, ~0.3 GB of it after import):

    protocol     small CPU s    real CPU s    real shape (typical)        peak RSS, real
    CTA          0.55 / 0.81    2.65 / 3.23   200-300 x 512 x 512         0.9 GB one series, 1.2 GB after three
    MRA          0.45 / 0.64    1.63 / 1.94   120-200 x 384-512^2         0.76 GB
    MRI T2       0.52 / 0.76    1.44 / 2.00   20-40 x 256-512^2 or 3D     0.56 GB
    MRI T1post   0.52 / 0.78    1.30 / 1.61   20-40 x 256-512^2 or 3D     0.60 GB
"""

from __future__ import annotations

import numpy as np
import torch

from kernel.labels import LOCATION_COLS, MODALITY_NAMES

from ..contract import StyleAneurysm, StyleScan
from .acquisition import Acquisition, draw_acquisition, draw_pose
from .anatomy import Tube, VesselTree, build_arteries
from .aneurysms import Sac, mimics, place_aneurysms
from .contrast import CT_RANGE, Contrast, draw_contrast
from .head import HeadShape, build_veins, draw_head
from .imaging import (
    Entries,
    _noise_chunk,
    background,
    coarse_lattice,
    merge_entries,
    sac_entries,
    tissue_labels,
    tube_entries,
)

__all__ = ["render", "render_series"]

CHUNK_SLICES = 24


def render_series(rng: np.random.Generator, modality: str, locations: list[str], size: str, *,
                  dome_mm: float | None = None, with_labels: bool = False) -> StyleScan:
    """The style contract's entry point: one series, half in the protocol's look and half fully randomised."""
    return render(rng, modality, locations, size, dome_mm=dome_mm, with_labels=with_labels)


def render(rng: np.random.Generator, modality: str, locations: list[str], size: str, *, dome_mm: float | None = None,
           with_labels: bool = False, mode: str | None = None) -> StyleScan:
    """``render_series`` with the randomisation regime forced (``mode``: "protocol" or "full") for tests."""
    assert modality in MODALITY_NAMES, f"unknown modality {modality!r}"
    assert size in ("small", "real"), f"size must be 'small' or 'real', not {size!r}"
    assert all(loc in LOCATION_COLS for loc in locations), f"unknown location in {locations}"
    drawn_mode = "protocol" if rng.random() < 0.5 else "full"
    mode = mode or drawn_mode
    scale = rng.uniform(0.9, 1.1) * rng.uniform(0.97, 1.03, 3)
    tree = build_arteries(rng, scale)
    head = draw_head(rng, scale)
    big_veins, small_veins = build_veins(rng, head)
    sacs = place_aneurysms(rng, tree, locations, dome_mm)
    fakes = mimics(rng, tree, sacs)
    sides = [1 if s.location.startswith("Left") else (-1 if s.location.startswith("Right") else 0) for s in sacs]
    head_to_lps = draw_pose(rng, [s.centre for s in sacs], sides)
    acq = draw_acquisition(rng, modality, size, head_to_lps, [s.centre for s in sacs])
    contrast = draw_contrast(rng, modality, acq.three_d, mode)
    image, labels, extra = _form_image(rng, contrast, acq, head_to_lps, head, tree, fakes + small_veins, big_veins,
                                       sacs, size, with_labels)
    to_lps = lambda p: head_to_lps[:3, :3] @ p + head_to_lps[:3, 3]  # noqa: E731
    aneurysms = [StyleAneurysm(s.location, to_lps(s.centre), float(s.dome), float(s.neck), to_lps(s.parent_point),
                               s.bleb, s.shape) for s in sacs]
    truth = _truth(contrast, tree, sacs, fakes, head_to_lps, extra, size)
    return StyleScan(image=image, row_dir=acq.row_dir, col_dir=acq.col_dir, pixel_spacing=(acq.spacing[1],
                     acq.spacing[2]), slice_spacing=acq.spacing[0], slice_thickness=acq.thickness, origin=acq.origin,
                     plane=acq.plane, tilt_deg=acq.tilt_deg, three_d=acq.three_d, aneurysms=aneurysms,
                     head_to_lps=head_to_lps, labels_map=labels, truth=truth)


def _psf(contrast: Contrast, acq: Acquisition) -> tuple[np.ndarray, float]:
    """Per-axis blur (mm) of the random acquired resolution, and the isotropic one used for vessel edges."""
    spacing = np.array(acq.spacing)
    sigma = 0.42 * contrast.psf_factor * spacing
    if not acq.three_d:
        sigma[0] = 0.0
    box = spacing**2 / 12.0
    axes = slice(0, 3) if acq.three_d else slice(1, 3)
    return sigma, float(np.sqrt(np.mean(sigma[axes] ** 2 + box[axes])))


def _slab_gains(rng: np.random.Generator, contrast: Contrast, acq: Acquisition) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice gains: TOF multi-slab inflow (vessels fade across each slab) and background/slice jitter."""
    nz = acq.shape[0]
    art = np.ones(nz, np.float32)
    bg = np.ones(nz, np.float32)
    if contrast.slabs > 1 or contrast.slab_drop > 0:
        edges = np.linspace(0, nz, contrast.slabs + 1).round().astype(int)
        for j in range(contrast.slabs):
            k = np.arange(edges[j], edges[j + 1])
            art[k] = 1.0 - contrast.slab_drop * (k - edges[j]) / max(edges[j + 1] - edges[j], 1)
            bg[k] *= np.float32(1.0 + rng.normal(0, 0.02))
    if contrast.slice_gain_sd > 0:
        bg *= (1.0 + rng.normal(0, contrast.slice_gain_sd, nz)).astype(np.float32)
    return art, bg


def _form_image(rng: np.random.Generator, contrast: Contrast, acq: Acquisition, head_to_lps: np.ndarray,
                head: HeadShape, tree: VesselTree, extra_tubes: list[Tube], big_veins: list[Tube], sacs: list[Sac],
                size: str, with_labels: bool) -> tuple[np.ndarray, np.ndarray | None, dict[str, object]]:
    """Background on the coarse lattice, sparse vessels and sacs at full resolution, then slab-by-slab assembly."""
    fine = acq.lattice(head_to_lps)
    coarse, n_sub = coarse_lattice(rng, acq, fine, size)
    lab, fields = tissue_labels(rng, coarse, head, tree.tubes, big_veins, [(s.centre, s.radius) for s in sacs])
    sigma_axes, sigma_v = _psf(contrast, acq)
    bg = background(contrast, coarse, lab, fields, sigma_axes, n_sub, acq.spacing)
    del lab, fields
    art_gain, bg_gain = _slab_gains(rng, contrast, acq)
    offsets = acq.sub_offsets(1.0)
    parts = tube_entries(contrast, fine, tree.tubes + extra_tubes, sigma_v, offsets, art_gain)
    parts += sac_entries(rng, contrast, fine, sacs, sigma_v, offsets, art_gain)
    ent = merge_entries(parts)
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    image = _assemble(contrast, acq, bg, ent, bg_gain, gen)
    labels = None
    if with_labels:
        labels = np.zeros(acq.shape, np.uint8)
        labels.reshape(-1)[ent.idx[ent.inside]] = ent.label[ent.inside]
    extra = {"coarse_shape": list(coarse.shape), "sub_slices": n_sub, "psf_sigma_mm": np.round(sigma_axes, 3).tolist(),
             "vessel_edge_sigma_mm": round(sigma_v, 3), "vessel_voxels": int(len(ent.idx))}
    return image, labels, extra


def _assemble(c: Contrast, acq: Acquisition, bg: np.ndarray, ent: Entries, bg_gain: np.ndarray,
              gen: torch.Generator) -> np.ndarray:
    """Per slab of slices: upsample the background, composite the vessels, slice gains, noise, units."""
    nz, ny, nx = acq.shape
    nzc, per = bg.shape[0], ny * nx
    out = np.empty(acq.shape, np.float32)
    for k0 in range(0, nz, CHUNK_SLICES):
        k1 = min(nz, k0 + CHUNK_SLICES)
        if nzc == nz:
            zs = bg[k0:k1].copy()
        else:
            pos = np.clip((np.arange(k0, k1) + 0.5) * nzc / nz - 0.5, 0, nzc - 1)
            i0 = np.minimum(pos.astype(np.int64), nzc - 2)
            w = (pos - i0).astype(np.float32)[:, None, None]
            zs = bg[i0] * (1.0 - w) + bg[i0 + 1] * w
        sl = out[k0:k1]
        if zs.shape[1:] == (ny, nx):
            sl[...] = zs
        else:  # bilinear, half-pixel centres: the same mapping as ``raster.lin_up``
            coarse = torch.from_numpy(np.ascontiguousarray(zs))[:, None]
            sl[...] = torch.nn.functional.interpolate(coarse, size=(ny, nx), mode="bilinear", align_corners=False)[:, 0]
        a, b = np.searchsorted(ent.idx, [k0 * per, k1 * per])
        flat = sl.reshape(-1)
        li = ent.idx[a:b] - k0 * per
        flat[li] += (ent.val[a:b] - flat[li]) * ent.occ[a:b]
        if np.any(bg_gain[k0:k1] != 1.0):
            sl *= bg_gain[k0:k1, None, None]
        _noise_chunk(c, sl, gen)
        if c.modality == "CTA":
            np.clip(sl, CT_RANGE[0], CT_RANGE[1], out=sl)
        else:
            np.maximum(sl, 0.0, out=sl)
            sl *= np.float32(c.out_scale)
    return out


def _truth(c: Contrast, tree: VesselTree, sacs: list[Sac], fakes: list[Tube], head_to_lps: np.ndarray,
           extra: dict[str, object], size: str) -> dict[str, object]:
    """Style-specific facts, JSON-serialisable: regime and drawn values, variants, mimics, sites, centrelines."""
    def lps(p: np.ndarray) -> list[float]:
        return np.round(head_to_lps[:3, :3] @ p + head_to_lps[:3, 3], 1).tolist()

    lines = {t.name: {"label": int(t.label), "radius_mm": round(float(np.median(t.radii)), 2),
                      "points_lps": [lps(p) for p in t.points[::4]]} for t in tree.tubes if t.label}
    sites = [{"location": s.location, "site": s.site, "shape": s.shape, "height_mm": round(s.height, 2),
              "parent": s.parent.name, "direction_lps": np.round(head_to_lps[:3, :3] @ s.direction, 3).tolist()}
             for s in sacs]
    return {"style": "randomised", "randomisation": c.mode, "size": size, "contrast": c.summary(),
            "variants": tree.variants, "mimics": [t.name for t in fakes], "aneurysm_sites": sites,
            "labels_note": "vessel voxels carry their segment's value; sac voxels their location's value",
            "centrelines": lines, **extra}
