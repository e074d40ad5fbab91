"""Phantom style ``implicit``: the head as signed distance functions sampled directly on the acquisition grid.

What this style does differently from a label-volume renderer:

- Anatomy: every structure is an implicit surface in an MNI-like head frame, morphed per series (per-axis scale
  and a smooth displacement field). Brain = smooth union of a noise-perturbed cerebral ellipsoid cut by a skull-base
  floor (anterior fossa, deeper temporal fossae, tentorium), cerebellum and brainstem; the interhemispheric fissure
  and CSF sleeves around the basal arteries (cisterns) are smoothly subtracted; the cortex is folded by carving a slab
  around the zero set of a band-limited plane-wave noise (sulci), grey matter a shell of the folded surface. Skull =
  offset of the intracranial envelope with noisy thickness and a diploe layer, plus petrous ridges, clivus, sphenoid,
  vertebrae and mandible; sinuses, mastoids, pharynx, orbits (fat, globes, optic nerves), ventricles, basal ganglia,
  choroid plexus (calcified on CT at random), pineal, pituitary, cavernous sinuses, falx.
- Vessels: centripetal Catmull-Rom splines through the spec's waypoints with per-waypoint jitter, meanders and the odd
  loop (a crossing trochoid); lumen radius varies along each vessel (taper, focal stenosis, fusiform ectasia, a
  flare at each branch origin, infundibula). Variants: hypoplastic/absent A1, hypoplastic/absent AComm, fetal PCA
  (large PComm, small or absent P1), absent/hypoplastic PComm, vertebral dominance. Extra branches: ophthalmic,
  anterior choroidal, SCA, AICA, PICA, callosomarginal, cortical branches snapped onto the brain surface, perforators
  as sub-voxel threads. Veins: SSS and transverse sinuses snapped to the inner table, sigmoid/jugular, straight sinus,
  vein of Galen, internal cerebral and basal veins (beside the P2), superficial middle cerebral veins, cortical veins.
- Aneurysms: a round-cone neck from the parent's centreline smoothly united with a dome (sphere, ellipsoid along the
  flow, harmonic-perturbed sphere, or 2-4 offset spheres), an optional daughter bleb, optional mural thrombus (a
  crescent of the sac without lumen), smoothly blended with the parent wall. Mimics: infundibula, loops, overlapping
  A2s, veins next to arteries, ICA wall calcifications, the vein of Galen.
- Image formation: tissues painted with a box-filter partial volume from the distance fields (coarse ~2.5 mm field
  grid, shading grid ~1 mm for real-size scans); vessels evaluated exactly per native voxel with an anisotropic box
  filter (voxel extent along the distance gradient) and a thin-tube fade, thick 2D slices supersampled 3x along the
  slice axis. CTA: contrast timing from early arterial (dim veins) to early venous (bright veins), distal fading,
  correlated Gaussian noise. TOF: inflow enhancement decaying with path length inside the current slab (resetting
  in each slab of a multi-slab acquisition), extra saturation of in-plane flow, slow flow darkening large sacs,
  suppressed stationary tissue, bright fat, slab ramps and venetian-blind bands. T2: flow voids, bright cisterns,
  voids or bright sinuses. T1post: 3D GRE (bright arteries) or 2D spin echo (arterial voids), enhancing veins,
  sinuses, choroid plexus, pituitary, dura. MR: smooth multiplicative bias, Rician noise, occasional motion ghosts
  along the phase-encode axis, random global scale.

Measured cost per series (2-core machine under a load average of 7-14; CPU seconds, mean / max over seeds; peak
numpy memory traced during the call; "real" with the interpreter adds ~125 MB of RSS):

| protocol   | small: CPU s | small: peak MB | real: CPU s | real: peak MB | real: typical stack            |
|------------|--------------|----------------|-------------|---------------|--------------------------------|
| CTA        | 0.41 / 0.49  | 55 / 78        | 2.3 / 3.6   | 360 / 535     | 512^2 x 300-420, 0.39-0.49 mm  |
| MRA (TOF)  | 0.35 / 0.49  | 30 / 48        | 1.4 / 1.9   | 180 / 235     | 384-640^2 x 120-200            |
| MRI T2     | 0.44 / 0.56  | 59 / 82        | 1.2 / 1.3   | 165 / 270     | 2D 256-512^2 x 24-40, 3D ~1 mm |
| MRI T1post | 0.43 / 0.72  | 57 / 97        | 1.4 / 1.8   | 210 / 275     | 2D 4-5 mm any plane, 3D 1 mm   |

Worst case seen: a 413 x 512 x 512 CTA in 4.0 CPU s with a 714 MB peak RSS (output image and label map included).
"""

from __future__ import annotations

import numpy as np

from kernel.labels import LOCATION_COLS, MODALITY_NAMES, SEG_LABEL_VALUES

from ..contract import StyleAneurysm, StyleScan
from .anatomy import CISTERNS, Head, Morph, sleeve_field
from .aneurysms import midline_x, place_aneurysms, to_grid
from .contrast import draw_contrast, tube_signals
from .geometry import draw_acquisition, draw_pose, make_grids
from .raster import Background, Vessels, add_noise, centreline_labels
from .sdf import upsample
from .tree import add_calcifications, build_arteries, build_veins, sleeve_points
from .vessels import TreeBuilder, draw_variants

__all__ = ["render_series"]

KIND_ORDER = {"vein": 0, "artery": 1, "perforator": 2, "calc": 3}


def _rasterise(rng, acq, pose, morph, head, tubes, specs, con, grids, with_labels, step):
    """Background on the shading grid, upsampled; vessels and aneurysms composited; sub-slices averaged; noise."""
    img = Background(acq, pose, morph, grids).render(head, con)
    img = upsample(img, grids.a, grids.f_shape)
    lab = np.zeros(img.shape, np.uint8) if with_labels else None
    painter = Vessels(img, lab, acq, grids)
    signals = tube_signals(tubes, con, acq, pose, rng)
    grid_pts = {n: acq.to_grid(pose.to_lps(t.pts)) for n, t in tubes.items()}
    for name in sorted(tubes, key=lambda n: KIND_ORDER[tubes[n].kind]):
        t = tubes[name]
        painter.tube(grid_pts[name], t.radius * pose.scale, signals[name], t.label)
    for spec in specs:
        parent = tubes[spec.parent]
        thr = con.values["thrombus"] * (1.0 if con.is_ct else float(con.modulation(
            *(np.float32(c) for c in spec.centre))))
        slow = float(signals[spec.parent][spec.index]) if con.is_ct else con.sac_slow
        painter.aneurysm(to_grid(spec, pose, acq), grid_pts[spec.parent], parent.radius * pose.scale,
                         signals[spec.parent], slow, thr, SEG_LABEL_VALUES[spec.location], step * pose.scale)
    if acq.n_sub > 1:
        img = img.reshape(acq.n_slices, acq.n_sub, acq.n_rows, acq.n_cols).mean(axis=1)
        if lab is not None:
            lab = np.ascontiguousarray(lab[acq.n_sub // 2 :: acq.n_sub])
    if lab is not None:
        for name, t in tubes.items():
            if t.kind == "artery":
                centreline_labels(lab, acq, grid_pts[name], t.label)
    add_noise(rng, img, con, acq.pixel[1])
    return np.ascontiguousarray(img, dtype=np.float32), lab


def render_series(rng: np.random.Generator, modality: str, locations: list[str], size: str, *,
                  dome_mm: float | None = None, with_labels: bool = False) -> StyleScan:
    """Render one series of ``modality`` with one aneurysm per entry of ``locations`` (see the contract)."""
    assert modality in MODALITY_NAMES, f"unknown modality {modality!r}"
    assert size in ("small", "real"), f"size must be 'small' or 'real', not {size!r}"
    assert all(loc in LOCATION_COLS for loc in locations), f"unknown location in {locations}"
    assert dome_mm is None or dome_mm > 0, "dome_mm must be positive"
    morph, head = Morph(rng), Head(rng)
    variants = draw_variants(rng, locations)
    pose = draw_pose(rng)
    step = 0.45 if size == "real" else 0.7
    builder = TreeBuilder(rng, morph, step)
    build_arteries(builder, head, variants, rng)
    genu = np.array([midline_x(builder), *builder.tubes["a2_R"].pts[builder.at_u("a2_R", 4.5)][1:]])
    pose.centre_midline(genu, float(rng.uniform(-0.3, 0.3)))
    specs = place_aneurysms(rng, builder, locations, dome_mm, pose.scale)
    add_calcifications(builder, rng)
    build_veins(builder, head, rng)
    head.cisterns = sleeve_field(*sleeve_points(builder.tubes), CISTERNS)
    acq = draw_acquisition(rng, modality, size, pose, [pose.to_lps(s.centre) for s in specs])
    grids = make_grids(rng, acq, size)
    con = draw_contrast(rng, acq)
    image, labels = _rasterise(rng, acq, pose, morph, head, builder.tubes, specs, con, grids, with_labels, step)
    aneurysms = [StyleAneurysm(s.location, pose.to_lps(s.centre), s.dome * pose.scale, s.neck * pose.scale,
                               pose.to_lps(s.neck_point), s.bleb is not None,
                               s.shape + ("+thrombus" if s.thrombus is not None else "")) for s in specs]
    truth = _truth(acq, pose, con, variants, builder, specs, grids)
    return StyleScan(image, acq.row_dir, acq.col_dir, acq.pixel, float(acq.slice_spacing), float(acq.thickness),
                     acq.origin, acq.plane, float(acq.tilt_deg), bool(acq.three_d), aneurysms, pose.matrix, labels,
                     truth)


def _truth(acq, pose, con, variants, builder, specs, grids) -> dict:
    """JSON-serialisable facts: pose, sequence, variants, noise, mimics, aneurysm sites, labelled centreline points."""
    def lps(p: np.ndarray) -> list[float]:
        return [round(float(c), 2) for c in pose.to_lps(np.asarray(p, float))]

    points = []
    for name, t in builder.tubes.items():
        if t.kind != "artery":
            continue
        for value in np.unique(t.label[t.label > 0]):
            run = np.nonzero(t.label == value)[0]
            for i in run[np.linspace(0, len(run) - 1, 5).astype(int)[1:-1]]:
                points.append({"vessel": name, "label": int(value), "lps": lps(t.pts[i]),
                               "radius_mm": round(float(t.radius[i] * pose.scale), 3)})
    return {
        "style": "implicit",
        "pose": {"scale": round(pose.scale, 4), "pitch_yaw_roll_deg": [round(a, 2) for a in pose.angles_deg]},
        "sequence": {"variant": acq.variant, "n_sub": acq.n_sub, "slabs_mm": [list(map(float, s)) for s in acq.slabs],
                     "shading_factors": list(grids.a), "coarse_factors": list(grids.g)},
        "contrast": {"artery": round(float(con.artery), 3), "vein": round(float(con.vein), 3),
                     "sinus": round(float(con.sinus), 3), "noise_sigma": round(float(con.noise_sigma), 4),
                     "ghost": con.ghost, "scale": round(float(con.scale), 3)},
        "variants": variants.as_dict(),
        "mimics": [{**{k: v for k, v in m.items() if k != "head"}, "lps": lps(m["head"])} for m in builder.mimics],
        "aneurysm_sites": [{"location": s.location, "site": s.site, "parent": s.parent,
                            "thrombus": s.thrombus is not None} for s in specs],
        "vessel_points": points,
    }
