"""The recipe: a normalised canonical volume -> model inputs -> model outputs -> 14 probabilities. Written once.

Pure functions. Every model evaluation goes through a ``run(spec, batch) -> outputs`` that the caller passes: the
kernel's ``Ensemble.run`` (onnxruntime sessions) on Kaggle, a torch ``run`` in training's validation
(``train_offline.evaluate.torch_runner``). So what is validated is what is shipped:

1. locate: each locator fold sees ``locator_input`` (block-mean downsampling, centre crop/pad around the middle of
   the field of view); ``heatmap_peak_lps`` of its heatmap is its centre; the folds' centres are averaged. A series
   with no geometry is tried in both slice orders and the order whose heatmaps peak higher is kept.
2. classify: each classifier fold sees ``crop_around(classifier_centre(centre, offset))``; with flip TTA its batch
   also holds the crop mirrored on axis x (patient left/right) and that row's probabilities are mapped back with
   ``flip_permutation``; sigmoid label and softmax modality probabilities are averaged over rows and folds. Classifiers
   with a third output also return their 13-channel location heatmap (mirrored back the same way, averaged).
3. fine (optional): ``heatmap_candidates`` takes the strongest heatmap peaks as candidate sites; each fine fold sees a
   patch at its own fine spacing sampled straight from the native stack around every candidate (``fine_patches``;
   never a whole-volume resample at that spacing), with flip TTA. Where the fine models return their sphere map and
   set ``recentre_max_mm``, each candidate is first moved to the map's maximum nearby (``recentre``). ``fuse``
   combines the fine probability of the best candidate with the classifiers' probabilities in logit space (the
   location columns through the candidates' heatmap channels), at the mean of the fine folds' fusion weights
   (``fusion_weight``), each site's logit first raised by its heatmap cell's logit times the mean heat weight
   (``site_heatmap_weight``).

Array and affine conventions: ``kernel.preprocess`` (axes z -> S, y -> P, x -> L; affines voxel (z, y, x) -> LPS).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from kernel.labels import LABEL_COLS, LOCATION_COLS, MODALITY_NAMES, flip_permutation
from kernel.manifest import ModelSpec
from kernel.preprocess import (
    crop_affine,
    crop_around,
    downsample_mean,
    grid_points_lps,
    native_stack,
    resample_to_spacing,
    reverse_z,
    spacing_of,
    voxel_to_world,
)
from kernel.volume import Native

__all__ = [
    "Classified", "Native", "Plan", "Prediction", "Runner", "classifier_centre", "classifier_crop", "classify",
    "fine_patches", "fine_probs", "fuse", "fusion_weight", "greedy_nms", "heatmap_candidates", "heatmap_peak_lps",
    "locate", "locate_upright", "locator_base", "locator_input", "locator_input_from_base", "logit", "plan_runs",
    "predict_volume", "recentre", "sigmoid", "site_heatmap_weight", "softmax",
]

Runner = Callable[[ModelSpec, np.ndarray], Sequence[np.ndarray]]
"""Runs one model on a float32 (B, 1, z, y, x) batch; returns its outputs in ``spec.output_names`` order."""

LABEL_FLIP = flip_permutation(LABEL_COLS)
LOCATION_FLIP = flip_permutation(LOCATION_COLS)
PROB_EPS = 1e-6  # probabilities are clipped to [eps, 1 - eps] before a logit


@dataclass(frozen=True)
class Plan:
    """How much of the ensemble to run: at most ``folds`` models per role (None: all), whether to flip, and at most
    ``candidates`` fine candidates per series (None: the manifest's; 0: skip the fine stage)."""

    folds: int | None = None
    flip: bool = True
    candidates: int | None = None


@dataclass(frozen=True)
class Prediction:
    probs: np.ndarray  # (14,) LABEL_COLS order
    modality_probs: np.ndarray  # (4,) MODALITY_NAMES order
    centre_lps: np.ndarray  # (3,) mean locator centre
    runs: int  # model evaluations (a flipped copy in the batch counts as one more)
    reversed_z: bool = False  # the slice order was reversed because the locator found the head upright that way
    # Candidate aneurysm sites, strongest first (empty when no classifier returns a location heatmap):
    candidates_lps: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # (K, 3) LPS mm
    candidate_probs: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (K,) P(aneurysm at the candidate)
    candidate_locations: tuple[str, ...] = ()  # (K,) LOCATION_COLS name the coarse heatmap gives each candidate
    coarse_probs: np.ndarray | None = None  # (14,) the classifiers' probabilities before the fine stage's fusion
    # (K, 13) each candidate's heatmap-cell channel logits: with coarse_probs and candidate_probs, what ``fuse`` needs
    # to fuse the series again at other weights (retune)
    candidate_channel_logits: np.ndarray = field(default_factory=lambda: np.zeros((0, len(LOCATION_COLS))))

    @property
    def modality(self) -> str:
        return MODALITY_NAMES[int(np.argmax(self.modality_probs))]


def logit(probs: np.ndarray) -> np.ndarray:
    """Log-odds of probabilities clipped to [PROB_EPS, 1 - PROB_EPS] (float64)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), PROB_EPS, 1.0 - PROB_EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function (float64)."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(logits, dtype=np.float64)))


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax in float64 along ``axis``."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


# --- model inputs and outputs ----------------------------------------------------------------------------------------


def locator_base(array: np.ndarray, affine: np.ndarray,
                 spacing_zyx_mm: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(downsampled volume, its affine, LPS middle of the field of view): what every locator input is cut from.

    Block mean where the spacing ratio is one integer on all axes (thin vessels do not alias), linear otherwise.
    Training caches this per series and cuts shifted inputs from it (augmentation).
    """
    ratio = np.asarray(spacing_zyx_mm, dtype=np.float64) / spacing_of(affine)
    if np.allclose(ratio, ratio[0]) and abs(ratio[0] - round(ratio[0])) < 1e-3 and round(ratio[0]) >= 1:
        small, small_affine = downsample_mean(array, affine, int(round(ratio[0])))
    else:
        small, small_affine = resample_to_spacing(array, affine, spacing_zyx_mm)
    middle = voxel_to_world(affine, (np.asarray(array.shape, dtype=np.float64)[None] - 1) / 2.0)[0]
    return small, small_affine, middle


def locator_input(array: np.ndarray, affine: np.ndarray, shape_zyx: Sequence[int], spacing_zyx_mm: Sequence[float],
                  fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Whole-volume locator input and its affine: ``locator_base`` centre-cropped/padded to ``shape_zyx`` around the
    middle of the field of view."""
    return locator_input_from_base(locator_base(array, affine, spacing_zyx_mm), shape_zyx, fill)


def locator_input_from_base(base: tuple[np.ndarray, np.ndarray, np.ndarray], shape_zyx: Sequence[int],
                            fill: float = 0.0, shift_lps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``locator_input`` from a computed ``locator_base``, its field of view moved by ``shift_lps`` when given
    (training's augmentation; the kernel never shifts)."""
    small, small_affine, middle = base
    centre = middle if shift_lps is None else middle + shift_lps
    return crop_around(small, small_affine, centre, shape_zyx, fill=fill)


def heatmap_peak_lps(heatmap: np.ndarray, affine: np.ndarray, stride: int = 1) -> np.ndarray:
    """LPS point of a locator heatmap's peak, refined by the centroid of its 3x3x3 neighbourhood.

    ``heatmap`` is (d, h, w) (leading singleton axes are squeezed); ``affine`` is that of the locator input;
    heatmap voxel i covers input voxels [i * stride, (i + 1) * stride).
    """
    hm = np.asarray(heatmap, dtype=np.float64)
    while hm.ndim > 3:
        hm = hm[0]
    peak = np.array(np.unravel_index(int(np.argmax(hm)), hm.shape))
    lo = np.maximum(peak - 1, 0)
    hi = np.minimum(peak + 2, hm.shape)
    patch = hm[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    weights = np.exp(patch - patch.max())  # softmax over the neighbourhood: works for logits and probabilities
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), axis=-1)
    refined = (grid * weights[..., None]).reshape(-1, 3).sum(0) / weights.sum()
    input_index = (refined + 0.5) * stride - 0.5
    return voxel_to_world(affine, input_index[None])[0]


def classifier_centre(locator_centre_lps: Sequence[float], offset_lps_mm: Sequence[float]) -> np.ndarray:
    """Where a classifier's crop is centred: the locator's centre plus the model's crop-centre offset (LPS mm).

    Aneurysm sites are not symmetric about the Circle of Willis (in the phantoms, posterior-circulation localizers lie
    up to 42 mm below it, the highest ones, ACA, 25 mm above), so a crop can be shifted to cover them without growing.
    """
    return np.asarray(locator_centre_lps, dtype=np.float64) + np.asarray(offset_lps_mm, dtype=np.float64)


def classifier_crop(array: np.ndarray, affine: np.ndarray, centre_lps: Sequence[float],
                    spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """The classifier input around a locator centre: ``crop_around`` at the spec's offset, shape and spacing."""
    return crop_around(array, affine, classifier_centre(centre_lps, spec.centre_offset_lps_mm), spec.input_shape,
                       spec.spacing_mm)


def _group_by_input(specs: Sequence[ModelSpec]) -> dict[tuple, list[ModelSpec]]:
    """Models sharing an input shape, spacing and crop-centre offset share one input array."""
    groups: dict[tuple, list[ModelSpec]] = {}
    for spec in specs:
        groups.setdefault((spec.input_shape, spec.spacing_mm, spec.centre_offset_lps_mm), []).append(spec)
    return groups


def plan_runs(locators: Sequence[ModelSpec], classifiers: Sequence[ModelSpec], plan: Plan,
              fine: Sequence[ModelSpec] = ()) -> int:
    """Model evaluations a plan costs (the cost unit of the kernel's time budget). Every 4 fine candidates count as
    one evaluation per fold (two with flips, one more where the fold recentres them): four 32^3 patches hold about as
    many voxels as a 48 x 64 x 64 crop."""
    flips = sum(2 if (plan.flip and spec.flip_tta) else 1 for spec in classifiers[: plan.folds])
    fine_runs = 0
    if fine and plan.candidates != 0:
        k = fine[0].candidates if plan.candidates is None else min(fine[0].candidates, plan.candidates)
        per_fold = -(-k // 4)
        fine_runs = sum(per_fold * ((2 if (plan.flip and spec.flip_tta) else 1) + spec.recentres)
                        for spec in fine[: plan.folds])
    return len(locators[: plan.folds]) + flips + fine_runs


# --- the two stages --------------------------------------------------------------------------------------------------


def locate(array: np.ndarray, affine: np.ndarray, locators: Sequence[ModelSpec], run: Runner) -> tuple[np.ndarray,
                                                                                                       float]:
    """(mean LPS centre, mean heatmap peak logit) of the locator folds on a normalised canonical volume."""
    if not locators:
        raise ValueError("no locator to run")
    centres, peaks = [], []
    for (shape, spacing, _), specs in _group_by_input(locators).items():
        inp, inp_affine = locator_input(array, affine, shape, spacing)
        batch = inp[None, None].astype(np.float32, copy=False)
        for spec in specs:
            heatmap = np.asarray(run(spec, batch)[0])
            if not np.all(np.isfinite(heatmap)):
                raise FloatingPointError(f"locator {spec.name} returned non-finite values")
            centres.append(heatmap_peak_lps(heatmap[0, 0], inp_affine, spec.output_stride))
            peaks.append(float(heatmap.max()))
    return np.mean(centres, axis=0), float(np.mean(peaks))


def locate_upright(array: np.ndarray, affine: np.ndarray, locators: Sequence[ModelSpec], run: Runner,
                   superior_known: bool = True) -> tuple[np.ndarray, np.ndarray, bool]:
    """(array in the order used, mean centre, whether the slice order was reversed).

    ``superior_known=False`` (a series without any image position/orientation: its slice axis is frame order) runs
    the locators on both slice orders and keeps the one whose heatmap peaks higher: the locator has only seen upright
    heads. On 100 phantom series of every protocol, stacked both ways, the correct order won every time (smallest
    margin 1.2 logits); on stripped multi-frame phantoms 13 of 15 (pixel size is lost there too).
    """
    centre, peak = locate(array, affine, locators, run)
    if superior_known:
        return array, centre, False
    flipped = np.ascontiguousarray(array[::-1])
    centre_f, peak_f = locate(flipped, affine, locators, run)
    if peak_f > peak:
        return flipped, centre_f, True
    return array, centre, False


@dataclass(frozen=True)
class Classified:
    """The classifiers' answer: mean probabilities and, when they return one, their mean location heatmap."""

    probs: np.ndarray  # (14,)
    modality_probs: np.ndarray  # (4,)
    heatmap: np.ndarray | None = None  # (13, d, h, w) logits, mean over folds and flips
    heatmap_affine: np.ndarray | None = None  # the crop's affine (heatmap cell i covers crop voxels i * stride ...)
    heatmap_stride: int = 1


def classify(array: np.ndarray, affine: np.ndarray, centre_lps: np.ndarray, classifiers: Sequence[ModelSpec],
             run: Runner, flip: bool = True) -> Classified:
    """Mean (14,) label and (4,) modality probabilities of the classifier folds around ``centre_lps``, and the mean
    location heatmap of the first input group's folds that return one."""
    if not classifiers:
        raise ValueError("no classifier to run")
    label_probs, modality_probs, heatmaps = [], [], []
    heat_affine, heat_stride, heat_group = None, 1, None
    for group, specs in enumerate(_group_by_input(classifiers).values()):
        crop, crop_affine = classifier_crop(array, affine, centre_lps, specs[0])
        plain = crop[None, None]
        both = np.concatenate([plain, plain[..., ::-1]], axis=0)  # axis x: patient left/right
        for spec in specs:
            flipped = flip and spec.flip_tta
            batch = np.ascontiguousarray(both if flipped else plain, dtype=np.float32)
            outputs = run(spec, batch)
            logits, modality_logits = outputs[:2]
            probs = sigmoid(logits)
            if probs.shape != (len(batch), len(LABEL_COLS)) or np.shape(modality_logits)[-1] != len(MODALITY_NAMES):
                raise ValueError(f"classifier {spec.name} returned shapes {probs.shape}, "
                                 f"{np.shape(modality_logits)}; expected (B, 14) and (B, 4)")
            if flipped:
                probs[1] = probs[1][LABEL_FLIP]
            label_probs.append(probs.mean(axis=0))
            modality_probs.append(softmax(modality_logits).mean(axis=0))
            if len(outputs) > 2 and heat_group in (None, group):
                heat = np.asarray(outputs[2], dtype=np.float64)
                if heat.ndim != 5 or heat.shape[:2] != (len(batch), len(LOCATION_COLS)):
                    raise ValueError(f"classifier {spec.name} heatmap has shape {heat.shape}; expected "
                                     f"(B, {len(LOCATION_COLS)}, d, h, w)")
                rows = [heat[0]]
                if flipped:
                    rows.append(heat[1][LOCATION_FLIP][..., ::-1])
                heatmaps.append(np.mean(rows, axis=0))
                heat_affine, heat_stride, heat_group = crop_affine, spec.output_stride, group
    heatmap = np.mean(heatmaps, axis=0) if heatmaps else None
    return Classified(np.mean(label_probs, axis=0), np.mean(modality_probs, axis=0), heatmap, heat_affine,
                      heat_stride)


def greedy_nms(points: np.ndarray, k: int, min_distance_mm: float, scale: Sequence[float] | float = 1.0) -> np.ndarray:
    """Indices of at most ``k`` of ``points`` (already in priority order, strongest first), taken greedily: each at
    least ``min_distance_mm`` from every one taken before it. ``scale`` turns the points' units into mm (per axis),
    e.g. heatmap cell indices times the cell size."""
    scaled = np.asarray(points, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    taken: list[int] = []
    for i in range(len(scaled)):
        if len(taken) >= k:
            break
        if any(np.linalg.norm((scaled[i] - scaled[j]) * scale) < min_distance_mm for j in taken):
            continue
        taken.append(i)
    return np.asarray(taken, dtype=int)


def heatmap_candidates(heatmap: np.ndarray, affine: np.ndarray, stride: int, k: int,
                       min_distance_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(points (n, 3) LPS, channel logits (n, 13)) of the ``k`` strongest peaks of a (13, d, h, w) location heatmap.

    A cell's score is its strongest channel; peaks are local maxima of the score (no stronger cell among their 26
    neighbours), taken greedily, strongest first, each at least ``min_distance_mm`` from those taken (fewer than
    ``k`` when the heatmap has fewer peaks). Each point is refined to the score-weighted centroid of its 3x3x3
    neighbourhood (``heatmap_peak_lps``); its channel logits are those of its cell.
    """
    heat = np.asarray(heatmap, dtype=np.float64)
    score = heat.max(axis=0)
    cell_mm = spacing_of(affine) * stride
    padded = np.pad(score, 1, constant_values=-np.inf)
    d, h, w = score.shape
    neighbours = np.max([padded[i:i + d, j:j + h, m:m + w] for i in range(3) for j in range(3) for m in range(3)],
                        axis=0)
    flat_scores = np.where(score >= neighbours, score, -np.inf).ravel()
    order = [i for i in np.argsort(flat_scores)[::-1] if np.isfinite(flat_scores[i])]
    cells = np.array([np.unravel_index(int(flat), score.shape) for flat in order], dtype=int).reshape(-1, 3)
    points, channels = [], []
    for cell in cells[greedy_nms(cells, k, min_distance_mm, cell_mm)]:
        lo = np.maximum(cell - 1, 0)
        hi = np.minimum(cell + 2, score.shape)
        window = np.full_like(score, -np.inf)
        window[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = score[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        points.append(heatmap_peak_lps(np.where(np.isfinite(window), window, score.min() - 50.0), affine, stride))
        channels.append(heat[:, cell[0], cell[1], cell[2]])
    if not points:
        return np.zeros((0, 3)), np.zeros((0, len(LOCATION_COLS)))
    return np.asarray(points), np.asarray(channels)


def fine_patches(native: Native, points_lps: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """(n, 1, z, y, x) float32 patches at the fine spec's shape and spacing around each point, sampled from the
    native stack (trilinear, zero outside it) and normalised like the canonical volume."""
    raw = native.sample(np.asarray(points_lps, dtype=np.float64), spec.input_shape, spec.spacing_mm)
    return np.ascontiguousarray(np.stack([native.normalise(p) for p in raw])[:, None], dtype=np.float32)


def recentre(native: Native, points_lps: np.ndarray, fine: Sequence[ModelSpec],
             run: Runner) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """((n, 3) the candidates moved to the maximum of the fine folds' mean sphere map around each, at most
    ``recentre_max_mm`` away (the mean of the folds' settings); {fold name: (n,) its logits at the found points}).

    The sphere map (logits per stride-``output_stride`` cell of the patch, the fine model's auxiliary output)
    places a small dome to a cell of 2 fine voxels, where the coarse heatmap's peak is a 6 mm cell; the patch is then
    scored centred on it (``fine_probs``, which can count the found point's logit as one more view). One unflipped
    run per moving fold; without one the points come back unchanged and the logits empty.
    """
    points = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
    movers = [s for s in fine if s.recentres]
    if not movers or not len(points):
        return points.copy(), {}
    specs = next(iter(_group_by_input(movers).values()))
    spec = specs[0]
    patches = fine_patches(native, points, spec)
    maps, found = [], {}
    for s in specs:
        logits, sphere = run(s, patches)[:2]
        sphere = np.asarray(sphere, dtype=np.float64)
        expected = (len(points), 1, *(n // s.output_stride for n in s.input_shape))
        if sphere.shape != expected:
            raise ValueError(f"fine model {s.name} sphere map has shape {sphere.shape}; expected {expected}")
        maps.append(sphere[:, 0])
        found[s.name] = np.asarray(logits, dtype=np.float64).reshape(len(points), -1)[:, 0]
    mean_map = np.mean(maps, axis=0)
    radius = float(np.mean([s.recentre_max_mm for s in specs]))
    moved = np.empty_like(points)
    for i, point in enumerate(points):
        grid = grid_points_lps(crop_affine(native.affine, point, spec.input_shape, spec.spacing_mm), spec.input_shape,
                               spec.output_stride)
        near = np.linalg.norm(grid - point, axis=-1) <= radius
        score = np.where(near, mean_map[i], -np.inf)
        moved[i] = grid[np.unravel_index(int(np.argmax(score)), score.shape)] if near.any() else point
    return moved, found


def fine_probs(native: Native, points_lps: np.ndarray, fine: Sequence[ModelSpec], run: Runner,
               flip: bool = True, found: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """(n,) mean P(aneurysm at the point) of the fine folds. Each fold averages its views: the patch at the point,
    with flip TTA also mirrored on x, and with ``recentre_view`` its logits at the found points (``found``, from
    ``recentre``: the move's own patch, a view that costs no run)."""
    if len(points_lps) == 0:
        return np.zeros(0)
    out = []
    for specs in _group_by_input(fine).values():
        patches = fine_patches(native, points_lps, specs[0])
        both = None  # the patches and their mirrors, built once for the folds that flip
        for spec in specs:
            flipped = flip and spec.flip_tta
            if flipped and both is None:
                both = np.ascontiguousarray(np.concatenate([patches, patches[..., ::-1]], axis=0))
            logits = np.asarray(run(spec, both if flipped else patches)[0], dtype=np.float64)
            views = list(sigmoid(logits.reshape(len(logits), -1)[:, 0]).reshape(2 if flipped else 1, -1))
            if spec.recentre_view and found is not None and spec.name in found:
                views.append(sigmoid(np.asarray(found[spec.name], dtype=np.float64)))
            out.append(np.mean(views, axis=0))
    return np.mean(out, axis=0)


def fuse(probs: np.ndarray, channel_logits: np.ndarray, site_probs: np.ndarray, weight: float,
         site_heatmap_weight: float = 0.0) -> np.ndarray:
    """(14,) the classifiers' probabilities combined with the fine stage's in logit space.

    Aneurysm Present: ``(1 - w) logit(p) + w logit(max site prob)``. Location c: the same with ``max_k site_k *
    assign_kc``, where ``assign_k`` is the softmax over the 13 channels of candidate k's heatmap cell (which vessel the
    classifier thinks the site is on). With ``site_heatmap_weight`` h each site's logit first gains h times its cell's
    strongest channel logit: the patch model and the classifier's heatmap judge a site together (an aneurysm-like
    patch on a spot the classifier saw no vessel site at counts less). ``weight`` 0 returns ``probs``; no candidate
    leaves ``probs`` unchanged.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if len(site_probs) == 0 or weight <= 0.0:
        return probs.copy()
    channels = np.asarray(channel_logits, dtype=np.float64).reshape(len(site_probs), -1)
    site = np.asarray(site_probs, dtype=np.float64)
    if site_heatmap_weight:
        site = sigmoid(logit(site) + site_heatmap_weight * channels.max(axis=1))
    assign = softmax(channels, axis=1)  # (n, 13)
    fine = np.concatenate([(site[:, None] * assign).max(axis=0), [site.max()]])
    return sigmoid((1.0 - weight) * logit(probs) + weight * logit(fine))


def fusion_weight(fine: Sequence[ModelSpec]) -> float:
    """The ensemble's fusion weight: the mean of the fine folds' own (each chosen by its out-of-fold score), so a
    fold ensemble fuses as strongly as its folds did on average and a plan with fewer folds uses theirs."""
    return float(np.mean([spec.fusion_weight for spec in fine])) if fine else 0.0


def site_heatmap_weight(fine: Sequence[ModelSpec]) -> float:
    """The ensemble's site heat weight (``fuse``): the mean of the fine folds' own, as ``fusion_weight``."""
    return float(np.mean([spec.site_heatmap_weight for spec in fine])) if fine else 0.0


def predict_volume(array: np.ndarray, affine: np.ndarray, locators: Sequence[ModelSpec],
                   classifiers: Sequence[ModelSpec], run: Runner, plan: Plan = Plan(), *,
                   superior_known: bool = True, fine: Sequence[ModelSpec] = (),
                   native: Native | None = None) -> Prediction:
    """Locate, classify and (with fine models and a classifier heatmap) refine a normalised canonical volume with the
    plan's folds; raises on non-finite output.

    ``native`` is the stack the fine stage samples from; without it the fine patches come from ``array`` itself.
    """
    locators, classifiers = list(locators)[: plan.folds], list(classifiers)[: plan.folds]
    fine = list(fine)[: plan.folds]
    array, centre, reversed_z = locate_upright(array, affine, locators, run, superior_known)
    out = classify(array, affine, centre, classifiers, run, plan.flip)
    probs = out.probs
    points, cand_probs, names = np.zeros((0, 3)), np.zeros(0), ()
    if out.heatmap is not None:
        k = fine[0].candidates if fine else 4
        if plan.candidates is not None:
            k = min(k, plan.candidates)
        min_distance = fine[0].candidate_min_distance_mm if fine else 8.0
        points, channels = heatmap_candidates(out.heatmap, out.heatmap_affine, out.heatmap_stride, k, min_distance)
        names = tuple(LOCATION_COLS[int(i)] for i in np.argmax(channels, axis=1)) if len(points) else ()
        if fine and len(points):
            if native is None:
                native = native_stack(array, affine)
            elif reversed_z:
                native = reverse_z(native)
            points, found = recentre(native, points, fine, run)
            cand_probs = fine_probs(native, points, fine, run, plan.flip, found)
            probs = fuse(probs, channels, cand_probs, fusion_weight(fine), site_heatmap_weight(fine))
        else:
            cand_probs = sigmoid(channels.max(axis=1)) if len(points) else np.zeros(0)
    else:
        channels = np.zeros((0, len(LOCATION_COLS)))
    if not (np.all(np.isfinite(probs)) and np.all(np.isfinite(out.modality_probs))
            and np.all(np.isfinite(cand_probs))):
        raise FloatingPointError("the ensemble returned non-finite probabilities")
    return Prediction(probs=probs, modality_probs=out.modality_probs, centre_lps=centre,
                      runs=plan_runs(locators, classifiers, plan, fine if len(points) else ()),
                      reversed_z=reversed_z, candidates_lps=points, candidate_probs=cand_probs,
                      candidate_locations=names, coarse_probs=out.probs,
                      candidate_channel_logits=np.asarray(channels, dtype=np.float64).reshape(-1, len(LOCATION_COLS)))
