"""Look at a prediction: one PNG per series with what the kernel saw, where it looked and what it answered.

Maximum-intensity projections (MIPs) of slabs through the region around the located Circle of Willis in the three
canonical directions, with the located centre, each classifier's crop box, the candidate sites (probability and
location), the 14 probabilities beside the label truth when a solution is given (verdict HIT / MISS / TRUE NEGATIVE /
FALSE POSITIVE on "Aneurysm Present" at 0.5; a phantom split's aneurysm centres too), and the predicted modality.
``python -m kernel.gateway ... --explain DIR`` writes them; ``render_explanation`` is the drawing, a function of
arrays, usable on its own.

Display convention (radiological): axial and coronal panels show the patient's left on the image's right; axial
has anterior at the top, coronal and sagittal superior at the top, sagittal anterior on the left. Canonical arrays
are (z, y, x) with z -> S, y -> P, x -> L (kernel.preprocess), so the axial MIP is ``max over z`` shown as (y, x)
unflipped, coronal ``max over y`` and sagittal ``max over x`` with z reversed (superior up).

matplotlib is imported inside the drawing functions (object API, Agg canvas, no pyplot state): the Kaggle kernel
embeds this module but never draws.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kernel.labels import LABEL_COLS, LOCATION_COLS, MODALITY_NAMES, PRESENT_COL
from kernel.manifest import ModelSpec
from kernel.preprocess import spacing_of, world_to_voxel
from kernel.recipe import Prediction, classifier_centre

__all__ = [
    "DPI", "FIGSIZE", "SHORT_NAMES", "SLAB_MM", "THRESHOLD", "VIEWS", "Box", "Explanation", "Marker", "candidate_label",
    "explain_call",
    "layout_explanation", "render_explanation", "render_fallback", "truth_columns", "verdict",
]

THRESHOLD = 0.5  # on "Aneurysm Present", for the verdict
VIEWS = ("axial", "coronal", "sagittal")
FIGSIZE = (15.0, 9.0)  # inches; with DPI 80 a 1200 x 720 PNG
DPI = 80
SLAB_MM = 40.0  # thickness of each projected slab, centred on the located centre
# (top, bottom, left, right) edge letters of each panel: radiological, patient left on the image right.
EDGE_LETTERS = {"axial": ("A", "P", "R", "L"), "coronal": ("S", "I", "R", "L"), "sagittal": ("S", "I", "A", "P")}
SHORT_NAMES = {
    "Left Infraclinoid Internal Carotid Artery": "L ICA infraclinoid",
    "Right Infraclinoid Internal Carotid Artery": "R ICA infraclinoid",
    "Left Supraclinoid Internal Carotid Artery": "L ICA supraclinoid",
    "Right Supraclinoid Internal Carotid Artery": "R ICA supraclinoid",
    "Left Middle Cerebral Artery": "L MCA",
    "Right Middle Cerebral Artery": "R MCA",
    "Anterior Communicating Artery": "AComA",
    "Left Anterior Cerebral Artery": "L ACA",
    "Right Anterior Cerebral Artery": "R ACA",
    "Left Posterior Communicating Artery": "L PComA",
    "Right Posterior Communicating Artery": "R PComA",
    "Basilar Tip": "Basilar tip",
    "Other Posterior Circulation": "Other posterior",
    PRESENT_COL: "Aneurysm Present",
}
assert set(SHORT_NAMES) == set(LABEL_COLS) and set(LOCATION_COLS) < set(SHORT_NAMES)


@dataclass(frozen=True)
class Marker:
    """A point drawn on the MIPs: the located centre, a candidate site or a known (truth) aneurysm site."""

    kind: str  # "centre", "candidate" or "truth" (a known aneurysm site, when the truth gives sites)
    label: str
    lps: tuple[float, float, float]
    voxel_zyx: tuple[float, float, float]  # fractional voxel of the full volume
    pixels: dict[str, tuple[float, float]]  # view -> (row, col) in Explanation.images[view]
    in_slab: dict[str, bool]  # view -> whether the point lies inside that view's projected slab


@dataclass(frozen=True)
class Box:
    """A classifier crop drawn on the MIPs (one per distinct crop: folds sharing shape, spacing, offset share one)."""

    label: str
    centre_lps: tuple[float, float, float]
    size_mm: tuple[float, float, float]  # (z, y, x) = input_shape * spacing_mm
    lo_zyx: tuple[float, float, float]  # the crop's edges in full-volume voxel coordinates (voxel centres at ints)
    hi_zyx: tuple[float, float, float]
    rects: dict[str, tuple[float, float, float, float]]  # view -> (row0, col0, row1, col1) image coordinates


@dataclass
class Explanation:
    """What one PNG shows, in numbers (so tests and callers can check what was drawn)."""

    path: Path | None
    title: str
    verdict: str | None  # HIT / MISS / TRUE NEGATIVE / FALSE POSITIVE, None without truth
    probs: np.ndarray  # (14,) LABEL_COLS order: the row shown
    truth_columns: list[str]  # label columns that are 1 in the truth (empty without truth)
    region: tuple[tuple[int, int], ...] = ()  # (start, stop) voxels per axis z, y, x of the projected region
    images: dict[str, np.ndarray] = field(default_factory=dict)  # view -> MIP as displayed (row 0 at the top)
    slabs: dict[str, tuple[int, int]] = field(default_factory=dict)  # view -> projected voxel range on its axis
    markers: list[Marker] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    fallback_reason: str | None = None
    headline: str = ""  # the PNG's title line (verdict, P(present), candidates)
    # view -> (left, top, right, bottom) PNG pixels of the panel's image area (image edges at -0.5 and size - 0.5)
    panels: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)

    def png_pixel(self, view: str, row: float, col: float) -> tuple[float, float]:
        """(x, y) PNG pixel of a point at (row, col) of a view's MIP, as drawn (``render_explanation`` only)."""
        left, top, right, bottom = self.panels[view]
        h, w = self.images[view].shape
        return left + (col + 0.5) / w * (right - left), top + (row + 0.5) / h * (bottom - top)


def truth_columns(truth: dict[str, Any] | None) -> list[str]:
    """LABEL_COLS that are 1 in a truth row (a solution.csv row as a dict); empty without truth."""
    if not truth:
        return []
    return [c for c in LABEL_COLS if c in truth and truth[c] is not None and int(truth[c]) == 1]


def verdict(p_present: float, truth: dict[str, Any] | None, threshold: float = THRESHOLD) -> str | None:
    """HIT / MISS / TRUE NEGATIVE / FALSE POSITIVE of P(Aneurysm Present) against the truth; None without it."""
    if not truth or truth.get(PRESENT_COL) is None:
        return None
    positive, predicted = int(truth[PRESENT_COL]) == 1, float(p_present) >= threshold
    if positive:
        return "HIT" if predicted else "MISS"
    return "FALSE POSITIVE" if predicted else "TRUE NEGATIVE"


def candidate_label(number: int, probability: float | None, location: str | None) -> str:
    """A candidate's label on the PNG ("1: 0.81 L MCA"); ``kernel.findings`` writes the same text for each finding."""
    p = f" {probability:.2f}" if probability is not None else ""
    where = f" {SHORT_NAMES.get(location, location)}" if location else ""
    return f"{number}:{p}{where}"


def _pixel(view: str, voxel: np.ndarray, region: np.ndarray) -> tuple[float, float]:
    """(row, col) of a full-volume voxel (z, y, x) in a view's displayed MIP of ``region`` ((3, 2) start, stop)."""
    z, y, x = np.asarray(voxel, dtype=np.float64) - region[:, 0]
    nz = region[0, 1] - region[0, 0]
    if view == "axial":
        return float(y), float(x)
    if view == "coronal":
        return float(nz - 1 - z), float(x)
    return float(nz - 1 - z), float(y)


def _classifier_groups(specs: Sequence[ModelSpec]) -> list[tuple[ModelSpec, list[str]]]:
    groups: dict[tuple, tuple[ModelSpec, list[str]]] = {}
    for spec in specs:
        key = (tuple(spec.input_shape), tuple(spec.spacing_mm), tuple(spec.centre_offset_lps_mm))
        groups.setdefault(key, (spec, []))[1].append(spec.name)
    return list(groups.values())


def layout_explanation(
    array: np.ndarray,
    affine: np.ndarray,
    prediction: Prediction,
    classifier_specs: Sequence[ModelSpec],
    truth: dict[str, Any] | None = None,
    title: str = "",
    *,
    margin_mm: float = 12.0,
    min_half_mm: float = 40.0,
    slab_mm: float | None = SLAB_MM,
) -> Explanation:
    """Everything ``render_explanation`` draws, without drawing: region, MIPs, marker and box positions, verdict.

    The region is the box around the located centre (at least ``min_half_mm`` each way) that holds every classifier
    crop, candidate and truth site, plus ``margin_mm``, clipped to the volume. Each MIP shows the region's other two
    axes and projects a ``slab_mm`` slab centred on the located centre (None: the whole region), so the skull above
    and below the Circle of Willis does not wash out the axial view of a CTA.
    """
    array = np.asarray(array)
    affine = np.asarray(affine, dtype=np.float64)
    spacing = spacing_of(affine)
    centre_lps = np.asarray(prediction.centre_lps, dtype=np.float64).reshape(3)
    centre_vox = world_to_voxel(affine, centre_lps[None])[0]
    crops = _crop_boxes(affine, centre_lps, classifier_specs)
    cand_lps = np.asarray(prediction.candidates_lps, dtype=np.float64).reshape(-1, 3)
    sites = list((truth or {}).get("sites") or [])
    site_lps = np.asarray([s["centre_lps"] for s in sites], dtype=np.float64).reshape(-1, 3)
    cand_vox, site_vox = (world_to_voxel(affine, p) if len(p) else np.zeros((0, 3)) for p in (cand_lps, site_lps))
    extents = [centre_vox[None] - min_half_mm / spacing, centre_vox[None] + min_half_mm / spacing, cand_vox, site_vox,
               *[edge[None] for *_, lo, hi in crops for edge in (lo, hi)]]
    region = _region(np.concatenate(extents), array.shape, margin_mm / spacing)
    slabs = _slabs(region, centre_vox, None if slab_mm is None else slab_mm / 2.0 / spacing)

    def marker(kind: str, label: str, lps: np.ndarray, vox: np.ndarray) -> Marker:
        in_slab = {view: bool(slabs[view][0] - 0.5 <= vox[axis] < slabs[view][1] - 0.5)
                   for axis, view in enumerate(VIEWS)}
        return Marker(kind, label, tuple(map(float, lps)), tuple(map(float, vox)),
                      {view: _pixel(view, vox, region) for view in VIEWS}, in_slab)

    markers = [marker("centre", "located centre", centre_lps, centre_vox)]
    probs_c = np.asarray(prediction.candidate_probs, dtype=np.float64).reshape(-1)
    names_c = list(prediction.candidate_locations)
    for k, (lps, vox) in enumerate(zip(cand_lps, cand_vox, strict=True)):
        markers.append(marker("candidate", candidate_label(k + 1, probs_c[k] if k < len(probs_c) else None,
                                                           names_c[k] if k < len(names_c) else None), lps, vox))
    for k, (site, lps, vox) in enumerate(zip(sites, site_lps, site_vox, strict=True)):
        where = site.get("location")
        markers.append(marker("truth", f"T{k + 1}: {SHORT_NAMES.get(where, where) if where else 'aneurysm'}", lps,
                              vox))
    probs = np.asarray(prediction.probs, dtype=np.float64).reshape(-1)
    return Explanation(path=None, title=title, verdict=verdict(probs[LABEL_COLS.index(PRESENT_COL)], truth),
                       probs=probs, truth_columns=truth_columns(truth),
                       region=tuple((int(a), int(b)) for a, b in region), images=_projections(array, region, slabs),
                       slabs=slabs, markers=markers, boxes=[_box(crop, region) for crop in crops])


CropBox = tuple[ModelSpec, list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _crop_boxes(affine: np.ndarray, centre_lps: np.ndarray, specs: Sequence[ModelSpec]) -> list[CropBox]:
    """(spec, fold names, crop centre LPS, size mm, lo voxel, hi voxel) of each distinct classifier crop."""
    spacing = spacing_of(affine)
    out = []
    for spec, names in _classifier_groups(specs):
        box_centre = classifier_centre(centre_lps, spec.centre_offset_lps_mm)
        size_mm = np.asarray(spec.input_shape, dtype=np.float64) * np.asarray(spec.spacing_mm, dtype=np.float64)
        c = world_to_voxel(affine, box_centre[None])[0]
        half = size_mm / spacing / 2.0  # crop_around samples along the array axes: axis-aligned in voxel space
        out.append((spec, names, box_centre, size_mm, c - half, c + half))
    return out


def _region(points_vox: np.ndarray, shape: Sequence[int], margin_vox: np.ndarray) -> np.ndarray:
    """(3, 2) voxel (start, stop) per axis of the box holding every point plus the margin, clipped to the volume."""
    size = np.asarray(shape, dtype=np.float64)
    lo, hi = points_vox.min(axis=0) - margin_vox, points_vox.max(axis=0) + margin_vox
    start = np.clip(np.floor(lo), 0, size - 1).astype(int)
    stop = np.clip(np.ceil(hi) + 1, start + 1, size).astype(int)
    return np.stack([start, stop], axis=1)


def _slabs(region: np.ndarray, centre_vox: np.ndarray, half_vox: np.ndarray | None) -> dict[str, tuple[int, int]]:
    """View -> the voxel range projected along its axis: ``half_vox`` either side of the centre (None: the region;
    also the region when the centre lies outside the volume)."""
    slabs = {}
    for axis, view in enumerate(VIEWS):  # axial projects axis 0 (z), coronal 1 (y), sagittal 2 (x)
        a, b = int(region[axis, 0]), int(region[axis, 1])
        if half_vox is not None:
            lo_s = max(a, int(np.floor(centre_vox[axis] - half_vox[axis] + 0.5)))
            hi_s = min(b, int(np.floor(centre_vox[axis] + half_vox[axis] + 0.5)) + 1)
            a, b = (lo_s, hi_s) if hi_s > lo_s else (a, b)
        slabs[view] = (a, b)
    return slabs


def _projections(array: np.ndarray, region: np.ndarray, slabs: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """View -> MIP of the region's slab, as displayed (radiological, superior up)."""
    start, stop = region[:, 0], region[:, 1]
    sub = array[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]

    def project(axis: int) -> np.ndarray:
        a, b = slabs[VIEWS[axis]]
        index = [slice(None)] * 3
        index[axis] = slice(a - start[axis], b - start[axis])
        return sub[tuple(index)].max(axis=axis)

    return {
        "axial": np.ascontiguousarray(project(0)),  # (y, x): anterior up, patient left right
        "coronal": np.ascontiguousarray(project(1)[::-1]),  # (z reversed, x): superior up
        "sagittal": np.ascontiguousarray(project(2)[::-1]),  # (z reversed, y): superior up, anterior left
    }


def _box(crop: CropBox, region: np.ndarray) -> Box:
    spec, names, box_centre, size_mm, blo, bhi = crop
    rects = {}
    for view in VIEWS:
        (r0, c0), (r1, c1) = _pixel(view, blo, region), _pixel(view, bhi, region)
        rects[view] = (min(r0, r1), min(c0, c1), max(r0, r1), max(c0, c1))
    shape_txt = "x".join(str(int(s)) for s in spec.input_shape)
    spacing_txt = "/".join(f"{s:g}" for s in spec.spacing_mm)
    offset = ",".join(f"{v:+g}" for v in spec.centre_offset_lps_mm)
    label = f"{', '.join(names)}: {shape_txt} @ {spacing_txt} mm, offset ({offset}) mm LPS"
    return Box(label, tuple(map(float, box_centre)), tuple(map(float, size_mm)), tuple(map(float, blo)),
               tuple(map(float, bhi)), rects)


# --- drawing ---------------------------------------------------------------------------------------------------------


def _figure(figsize: tuple[float, float], dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _headline(exp: Explanation, n_candidates: int | None) -> str:
    p = exp.probs[LABEL_COLS.index(PRESENT_COL)]
    parts = [exp.title] if exp.title else []
    if exp.verdict is not None:
        parts.append(f"{exp.verdict}: P(present) {p:.2f} at {THRESHOLD:g}, truth "
                     f"{'aneurysm' if PRESENT_COL in exp.truth_columns else 'none'}")
    else:
        parts.append(f"P(present) {p:.2f} (no truth given)")
    if n_candidates is not None:
        parts.append(f"{n_candidates} candidates" if n_candidates else "no candidates (none returned)")
    return "  |  ".join(parts)


def _draw_probs(ax, exp: Explanation, truth_given: bool) -> None:
    """The 14 probabilities as bars (Aneurysm Present highlighted), the truth column beside them."""
    n = len(LABEL_COLS)
    ys = np.arange(n)
    present = LABEL_COLS.index(PRESENT_COL)
    colours = ["#d62728" if i == present else "#4c78a8" for i in range(n)]
    ax.barh(ys, exp.probs, color=colours, height=0.7)
    ax.axvline(THRESHOLD, color="#444444", lw=0.8, ls="--")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_yticks(ys)
    ax.set_yticklabels([SHORT_NAMES[c] for c in LABEL_COLS], fontsize=8)
    ax.get_yticklabels()[present].set_fontweight("bold")
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlabel(f"probability (dashed: {THRESHOLD:g})", fontsize=8)
    for i, p in enumerate(exp.probs):
        ax.text(min(p, 0.86) + 0.01, i, f"{p:.3f}", va="center", fontsize=7,
                fontweight="bold" if i == present else "normal")
    transform = ax.get_yaxis_transform()  # x in axes fraction, y in data
    ax.text(1.03, -1.0, "truth" if truth_given else "truth: -", transform=transform, fontsize=8, va="center",
            fontweight="bold", clip_on=False)
    if truth_given:
        for i, col in enumerate(LABEL_COLS):
            hit = col in exp.truth_columns
            ax.text(1.05, i, "1" if hit else "0", transform=transform, va="center", fontsize=8, clip_on=False,
                    color="#2ca02c" if hit else "#999999", fontweight="bold" if hit else "normal")
    ax.set_title("14 output probabilities (Aneurysm Present in red)", fontsize=9)


def _draw_mip(ax, view: str, exp: Explanation, spacing: np.ndarray, vmin: float, vmax: float) -> None:
    from matplotlib.patches import Rectangle

    image = exp.images[view]
    row_mm, col_mm = {"axial": (spacing[1], spacing[2]), "coronal": (spacing[0], spacing[2]),
                      "sagittal": (spacing[0], spacing[1])}[view]
    ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, aspect=row_mm / col_mm, interpolation="nearest")
    for box in exp.boxes:
        r0, c0, r1, c1 = box.rects[view]
        ax.add_patch(Rectangle((c0, r0), c1 - c0, r1 - r0, fill=False, ec="#ffd700", lw=1.2, ls="--"))
    for marker in exp.markers:
        r, c = marker.pixels[view]
        alpha = 1.0 if marker.in_slab[view] else 0.45  # outside this view's slab: projected, drawn faint
        if marker.kind == "centre":
            ax.plot([c], [r], marker="+", ms=14, mew=2, color="#00e5ff", alpha=alpha)
            continue
        colour, shape, dy = ("#39ff14", "D", 8) if marker.kind == "truth" else ("#ff4040", "o", -4)
        ax.plot([c], [r], marker=shape, ms=10, mfc="none", mew=1.5, color=colour, alpha=alpha)
        ax.text(c + 4, r + dy, marker.label.split(":")[0], color=colour, fontsize=8, fontweight="bold",
                alpha=alpha, clip_on=True)
    h, w = image.shape
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    top, bottom, left, right = EDGE_LETTERS[view]
    style = {"color": "#ffff66", "fontsize": 11, "fontweight": "bold", "transform": ax.transAxes,
             "ha": "center", "va": "center"}
    ax.text(0.5, 0.96, top, **style)
    ax.text(0.5, 0.04, bottom, **style)
    ax.text(0.03, 0.5, left, **style)
    ax.text(0.97, 0.5, right, **style)
    bar_px = 20.0 / col_mm  # a 20 mm scale bar
    ax.plot([w * 0.05, w * 0.05 + bar_px], [h * 0.93, h * 0.93], color="white", lw=2)
    ax.text(w * 0.05, h * 0.90, "20 mm", color="white", fontsize=7)
    axis_names = {"axial": ("x: patient R -> L", "y: A -> P"), "coronal": ("x: patient R -> L", "z: I -> S (up)"),
                  "sagittal": ("y: A -> P", "z: I -> S (up)")}[view]
    ax.set_xlabel(axis_names[0], fontsize=8)
    ax.set_ylabel(axis_names[1], fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    projected = {"axial": "along z (S-I)", "coronal": "along y (A-P)", "sagittal": "along x (L-R)"}[view]
    axis = VIEWS.index(view)
    a, b = exp.slabs[view]
    ax.set_title(f"{view} MIP, {(b - a) * spacing[axis]:.0f} mm slab {projected}", fontsize=9)


def _info_text(exp: Explanation, prediction: Prediction, truth: dict[str, Any] | None) -> str:
    lines = []
    modality_probs = np.asarray(prediction.modality_probs, dtype=np.float64).reshape(-1)
    true_modality = (truth or {}).get("Modality")
    lines.append(f"predicted modality: {prediction.modality}"
                 + (f"   (truth: {true_modality})" if true_modality else ""))
    lines.append("   " + "  ".join(f"{m} {p:.2f}" for m, p in zip(MODALITY_NAMES, modality_probs, strict=False)))
    c = exp.markers[0].lps
    lines.append(f"located centre (cyan +): LPS ({c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f}) mm")
    if prediction.reversed_z:
        lines.append("slice order reversed (no geometry; the locator found the head upright that way)")
    lines.append("classifier crops (yellow dashed):")
    lines.extend(f"   {box.label}" for box in exp.boxes)
    if not exp.boxes:
        lines.append("   none")
    candidates = [m for m in exp.markers if m.kind == "candidate"]
    lines.append("candidates (red circles), P(aneurysm at the site) and location:" if candidates
                 else "candidates: none returned (the classifier gives no location heatmap)")
    lines.extend(f"   {m.label}" for m in candidates[:8])
    if len(candidates) > 8:
        lines.append(f"   ... {len(candidates) - 8} more")
    if truth:
        located = [SHORT_NAMES[col] for col in exp.truth_columns if col != PRESENT_COL]
        lines.append(f"truth: {', '.join(located) if located else 'no aneurysm'}")
        lines.extend(f"   {m.label} (green diamond)" for m in exp.markers if m.kind == "truth")
        if truth.get("sites_note"):
            lines.append(f"   {truth['sites_note']}")
    (z0, z1), (y0, y1), (x0, x1) = exp.region
    lines.append(f"region voxels z {z0}:{z1}, y {y0}:{y1}, x {x0}:{x1} (normalised intensities)")
    lines.append("radiological: patient left on the image right; faint markers lie outside that view's slab")
    return "\n".join(lines)


def _save(fig, out_path: str | os.PathLike[str], dpi: int) -> Path:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)  # no bbox_inches: the PNG is exactly figsize * dpi
    return out


def render_explanation(
    array: np.ndarray,
    affine: np.ndarray,
    prediction: Prediction,
    classifier_specs: Sequence[ModelSpec],
    truth: dict[str, Any] | None,
    title: str,
    out_path: str | os.PathLike[str],
    *,
    figsize: tuple[float, float] = FIGSIZE,
    dpi: int = DPI,
) -> Explanation:
    """Draw one series' explanation PNG at ``out_path`` (figsize * dpi pixels); return what it drew.

    ``array`` is the normalised canonical volume the models saw (z, y, x), ``affine`` its voxel -> LPS map,
    ``truth`` a solution row as a dict (LABEL_COLS -> 0/1; optionally "Modality", and "sites": a list of
    ``{"centre_lps": (3,), "location": name}`` known aneurysm sites, drawn as green diamonds) or None.
    """
    exp = layout_explanation(array, affine, prediction, classifier_specs, truth, title)
    n_candidates = sum(m.kind == "candidate" for m in exp.markers)
    fig = _figure(figsize, dpi)
    grid = fig.add_gridspec(2, 3, height_ratios=[1.35, 1.0], left=0.09, right=0.98, top=0.92, bottom=0.06,
                            hspace=0.22, wspace=0.12)
    values = np.concatenate([image.ravel() for image in exp.images.values()])
    vmin, vmax = (float(v) for v in np.percentile(values, [1.0, 99.7]))
    vmax = vmax if vmax > vmin else vmin + 1.0
    spacing = spacing_of(np.asarray(affine, dtype=np.float64))
    mip_axes = {view: fig.add_subplot(grid[0, i]) for i, view in enumerate(VIEWS)}
    for view, ax in mip_axes.items():
        _draw_mip(ax, view, exp, spacing, vmin, vmax)
    _draw_probs(fig.add_subplot(grid[1, 0]), exp, truth is not None)
    info = fig.add_subplot(grid[1, 1:])
    info.axis("off")
    info.text(0.06, 1.0, _info_text(exp, prediction, truth), va="top", ha="left", fontsize=8.5, family="monospace",
              transform=info.transAxes)
    exp.headline = _headline(exp, n_candidates)
    fig.suptitle(exp.headline, fontsize=11, fontweight="bold", color=_verdict_colour(exp.verdict))
    exp.path = _save(fig, out_path, dpi)
    height = fig.get_size_inches()[1] * dpi
    for view, ax in mip_axes.items():  # after the save's draw: each axes box is its image area (fixed aspect)
        box = ax.get_window_extent()
        exp.panels[view] = (float(box.x0), float(height - box.y1), float(box.x1), float(height - box.y0))
    return exp


def _verdict_colour(value: str | None) -> str:
    return {"HIT": "#1a7f1a", "TRUE NEGATIVE": "#1a7f1a", "MISS": "#c00000", "FALSE POSITIVE": "#c06000"}.get(
        value or "", "black")


def render_fallback(
    title: str,
    reason: str | None,
    out_path: str | os.PathLike[str],
    probs: Sequence[float] | None = None,
    truth: dict[str, Any] | None = None,
    *,
    figsize: tuple[float, float] = FIGSIZE,
    dpi: int = DPI,
) -> Explanation:
    """The PNG for a series that got the fallback row: why, and the row that was submitted (the priors)."""
    values = np.asarray(probs if probs is not None else [np.nan] * len(LABEL_COLS), dtype=np.float64).reshape(-1)
    p_present = values[LABEL_COLS.index(PRESENT_COL)]
    exp = Explanation(path=None, title=title, verdict=verdict(p_present, truth) if np.isfinite(p_present) else None,
                      probs=np.nan_to_num(values), truth_columns=truth_columns(truth),
                      fallback_reason=reason or "unknown")
    fig = _figure(figsize, dpi)
    grid = fig.add_gridspec(2, 3, height_ratios=[1.35, 1.0], left=0.09, right=0.98, top=0.92, bottom=0.06,
                            hspace=0.22, wspace=0.12)
    note = fig.add_subplot(grid[0, :])
    note.axis("off")
    wrapped = "\n".join(textwrap.wrap(f"reason: {exp.fallback_reason}", 110))
    note.text(0.5, 0.62, "FALLBACK ROW: no volume and no prediction to show", ha="center", va="center", fontsize=16,
              fontweight="bold", color="#c00000", transform=note.transAxes)
    note.text(0.5, 0.40, wrapped, ha="center", va="center", fontsize=10, family="monospace",
              transform=note.transAxes)
    note.text(0.5, 0.22, "the submitted row is the manifest's label priors (below)", ha="center", va="center",
              fontsize=10, transform=note.transAxes)
    _draw_probs(fig.add_subplot(grid[1, 0]), exp, truth is not None)
    exp.headline = _headline(exp, None) + "  |  FALLBACK"
    fig.suptitle(exp.headline, fontsize=11, fontweight="bold", color=_verdict_colour(exp.verdict))
    exp.path = _save(fig, out_path, dpi)
    return exp


# --- the gateway's glue ----------------------------------------------------------------------------------------------


def explain_call(predictor: Any, uid: str, row_probs: Sequence[float], truth: dict[str, Any] | None,
                 out_dir: str | os.PathLike[str], note: str = "") -> Explanation:
    """The PNG ``out_dir/<uid>.png`` for the predictor's latest call on ``uid`` (``predictor.keep_last`` must be
    set before the call): the full explanation when it kept a prediction, else the fallback page with its reason.

    ``predictor`` is a ``kernel.predict.Predictor``; ``row_probs`` the row the gateway received; ``note`` is added to
    the title.
    """
    from kernel.preprocess import normalise

    out_path = Path(out_dir) / f"{uid}.png"
    record = next((r for r in reversed(predictor.records) if r.uid == uid), None)
    last = predictor.last
    if last is not None and last[0] == uid:
        _, volume, prediction = last
        array = normalise(volume.array, predictor.manifest.scheme(volume.modality))
        if prediction.reversed_z:  # the recipe ran on the reversed stack (same affine): show what it saw
            array = np.ascontiguousarray(array[::-1])
        if truth and truth.get("sites") and not getattr(volume, "geometry_known", True):
            truth = {**truth, "sites": [], "sites_note": "truth sites not drawn: the series has no geometry, so its "
                     "LPS frame is not the patient's"}
        specs = predictor.manifest.models("classifier")
        level = record.level if record is not None else "full"
        plan = dict(predictor.plans()).get(level)
        if plan is not None and plan.folds is not None:  # the crops of the folds this call ran
            specs = specs[: plan.folds]
        title = f"{uid}  [{level}]" + (f"  {note}" if note else "")
        return render_explanation(array, volume.affine, prediction, specs, truth, title, out_path)
    if record is None:
        reason = "no call record for this series"
    elif record.level != "fallback":
        reason = "predictor.keep_last was off: nothing kept to explain"
    else:
        reason = record.reason
    return render_fallback(uid, reason, out_path, row_probs, truth)
