"""The recipe with stand-in models: a ``run`` that records its inputs and returns chosen outputs, so every number the
recipe derives (centres, crop placement, flip mapping, averages, plan cost) is checked against a hand computation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from kernel import recipe
from kernel.labels import LABEL_COLS, flip_permutation
from kernel.manifest import ModelSpec
from kernel.preprocess import native_stack, reverse_z, voxel_to_world

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])  # canonical, 2 mm, origin 0


def _locator(name: str, fold: int, shape=(16, 16, 16), spacing=(4.0, 4.0, 4.0), stride: int = 2) -> ModelSpec:
    return ModelSpec(name=name, role="locator", fold=fold, input_name="volume", input_shape=shape,
                     spacing_mm=spacing, output_names=("heatmap",), output_stride=stride)


def _classifier(name: str, fold: int, offset=(0.0, 0.0, 0.0), flip_tta: bool = True) -> ModelSpec:
    return ModelSpec(name=name, role="classifier", fold=fold, input_name="crop", input_shape=(8, 8, 8),
                     spacing_mm=(2.0, 2.0, 2.0), output_names=("logits", "modality_logits"), flip_tta=flip_tta,
                     centre_offset_lps_mm=offset)


class FakeRun:
    """Locators answer a one-hot heatmap at a chosen cell; classifiers answer logits from the crop's mean and from
    the mean of its patient-left half (so a mirrored crop gives different logits); every call is recorded."""

    def __init__(self, peaks: dict[str, tuple[int, int, int]]):
        self.peaks, self.calls = peaks, []

    def __call__(self, spec: ModelSpec, batch: np.ndarray) -> list[np.ndarray]:
        self.calls.append((spec.name, batch.copy()))
        assert batch.dtype == np.float32 and batch.ndim == 5 and batch.shape[1] == 1
        if spec.role == "locator":
            cells = [s // spec.output_stride for s in spec.input_shape]
            heatmap = np.full((len(batch), 1, *cells), -5.0, dtype=np.float32)
            heatmap[:, 0][(slice(None), *self.peaks[spec.name])] = 3.0
            return [heatmap]
        half = batch.shape[-1] // 2
        mean = batch.mean(axis=(1, 2, 3, 4))
        left = batch[..., half:].mean(axis=(1, 2, 3, 4))  # array axis x points to patient-left
        logits = np.stack([mean + (j + 1) * left * (1 if j % 2 else -1) for j in range(len(LABEL_COLS))], axis=1)
        modality = np.stack([mean, left, -mean, -left], axis=1)
        return [logits.astype(np.float32), modality.astype(np.float32)]


def test_locate_maps_each_fold_peak_to_its_cell_centre_and_averages() -> None:
    volume = np.random.default_rng(0).random((32, 32, 32), dtype=np.float32)
    specs = [_locator("a", 0), _locator("b", 1)]
    run = FakeRun({"a": (2, 3, 4), "b": (4, 3, 2)})
    centre, peak = recipe.locate(volume, AFFINE, specs, run)
    _, inp_affine = recipe.locator_input(volume, AFFINE, (16, 16, 16), (4.0, 4.0, 4.0))
    expected = [voxel_to_world(inp_affine, ((np.array(c) + 0.5) * 2 - 0.5)[None])[0] for c in [(2, 3, 4), (4, 3, 2)]]
    # The 3x3x3 centroid refinement of a one-hot peak stays on the peak cell (neighbours weigh exp(-8) each).
    np.testing.assert_allclose(centre, np.mean(expected, axis=0), atol=0.05)
    assert peak == pytest.approx(3.0)
    assert [name for name, _ in run.calls] == ["a", "b"]
    np.testing.assert_array_equal(run.calls[0][1], run.calls[1][1])  # one input for both folds: same shape/spacing


def test_unknown_slice_order_keeps_the_order_whose_heatmap_peaks_higher() -> None:
    volume = np.zeros((32, 32, 32), dtype=np.float32)
    volume[20:] = 1.0  # bright top: the flipped volume is bright at the bottom

    def run(spec: ModelSpec, batch: np.ndarray) -> list[np.ndarray]:
        heatmap = np.zeros((1, 1, 8, 8, 8), dtype=np.float32)
        heatmap[0, 0, 0, 0, 0] = batch[0, 0, -1].mean()  # peak height = brightness of the top slice
        return [heatmap]

    array, _, reversed_z = recipe.locate_upright(volume, AFFINE, [_locator("a", 0)], run, superior_known=False)
    assert not reversed_z and array is volume
    array, _, reversed_z = recipe.locate_upright(volume[::-1], AFFINE, [_locator("a", 0)], run, superior_known=False)
    assert reversed_z and np.array_equal(array, volume)
    _, _, reversed_z = recipe.locate_upright(volume[::-1], AFFINE, [_locator("a", 0)], run, superior_known=True)
    assert not reversed_z


def test_classify_crops_at_the_offset_and_maps_the_flipped_row_back() -> None:
    rng = np.random.default_rng(1)
    volume = rng.random((40, 40, 40), dtype=np.float32)
    centre = np.array([39.0, 39.0, 39.0])  # LPS of voxel (19.5, 19.5, 19.5)
    offset = (4.0, -2.0, 6.0)
    spec = _classifier("c", 0, offset=offset)
    run = FakeRun({})
    out = recipe.classify(volume, AFFINE, centre, [spec], run, flip=True)
    probs, modality = out.probs, out.modality_probs
    (name, batch), = run.calls
    crop, _ = recipe.classifier_crop(volume, AFFINE, centre, spec)
    shifted, _ = recipe.classifier_crop(volume, AFFINE, centre + np.asarray(offset), _classifier("d", 0))
    np.testing.assert_array_equal(crop, shifted)
    np.testing.assert_array_equal(batch[0, 0], crop)
    np.testing.assert_array_equal(batch[1, 0], crop[..., ::-1])
    logits, modality_logits = FakeRun({})(spec, batch)
    rows = recipe.sigmoid(logits)
    expected = (rows[0] + rows[1][flip_permutation()]) / 2
    np.testing.assert_allclose(probs, expected, rtol=1e-12)
    np.testing.assert_allclose(modality, recipe.softmax(modality_logits).mean(axis=0), rtol=1e-12)
    # Without flip TTA (plan or spec), one row.
    recipe.classify(volume, AFFINE, centre, [spec], run, flip=False)
    recipe.classify(volume, AFFINE, centre, [_classifier("e", 0, offset=offset, flip_tta=False)], run, flip=True)
    assert [len(b) for _, b in run.calls[1:]] == [1, 1]


def test_mirrored_volume_gives_label_swapped_probabilities_with_flip_tta() -> None:
    volume = np.random.default_rng(2).random((40, 40, 40), dtype=np.float32)
    centre = np.array([39.0, 39.0, 39.0])  # on the middle of axis x: mirroring keeps the crop window
    specs = [_classifier("c", 0)]
    probs = recipe.classify(volume, AFFINE, centre, specs, FakeRun({}), flip=True).probs
    mirrored = recipe.classify(volume[..., ::-1].copy(), AFFINE, centre, specs, FakeRun({}), flip=True).probs
    np.testing.assert_allclose(mirrored, probs[flip_permutation()], atol=1e-12)
    plain = recipe.classify(volume, AFFINE, centre, specs, FakeRun({}), flip=False).probs
    plain_mirrored = recipe.classify(volume[..., ::-1].copy(), AFFINE, centre, specs, FakeRun({}), flip=False).probs
    assert not np.allclose(plain_mirrored, plain[flip_permutation()], atol=1e-4)


def test_plan_limits_folds_and_counts_runs() -> None:
    volume = np.random.default_rng(3).random((32, 32, 32), dtype=np.float32)
    locators = [_locator("a", 0), _locator("b", 1)]
    classifiers = [_classifier("c0", 0), _classifier("c1", 1, flip_tta=False)]
    assert recipe.plan_runs(locators, classifiers, recipe.Plan()) == 2 + 2 + 1
    assert recipe.plan_runs(locators, classifiers, recipe.Plan(folds=1, flip=False)) == 2
    run = FakeRun({"a": (1, 1, 1), "b": (2, 2, 2)})
    out = recipe.predict_volume(volume, AFFINE, locators, classifiers, run, recipe.Plan(folds=1, flip=True))
    assert [name for name, _ in run.calls] == ["a", "c0"] and out.runs == 3
    assert out.probs.shape == (14,) and out.modality in ("CTA", "MRA", "MRI T2", "MRI T1post")


def test_non_finite_outputs_raise() -> None:
    volume = np.zeros((32, 32, 32), dtype=np.float32)

    def bad(spec: ModelSpec, batch: np.ndarray) -> list[np.ndarray]:
        return [np.full((1, 1, 8, 8, 8), np.nan, dtype=np.float32)]

    with pytest.raises(FloatingPointError, match="locator a"):
        recipe.locate(volume, AFFINE, [_locator("a", 0)], bad)
    with pytest.raises(ValueError, match="no locator"):
        recipe.locate(volume, AFFINE, [], bad)


# --- the fine stage ----------------------------------------------------------------------------------------------


def _heat_classifier(name: str = "h", flip_tta: bool = True) -> ModelSpec:
    return ModelSpec(name=name, role="classifier", fold=0, input_name="crop", input_shape=(8, 8, 8),
                     spacing_mm=(2.0, 2.0, 2.0), output_names=("logits", "modality_logits", "heatmap"),
                     output_stride=2, flip_tta=flip_tta)


def _fine(k: int = 2, weight: float = 0.5, shape=(4, 4, 4), spacing=(0.5, 0.5, 0.5), recentre: float = 0.0,
          name: str = "f", flip: bool = True, found: bool = False) -> ModelSpec:
    return ModelSpec(name=name, role="fine", fold=0, input_name="patch", input_shape=shape, spacing_mm=spacing,
                     output_names=("logit", "sphere") if recentre else ("logit",), output_stride=2, flip_tta=flip,
                     candidates=k, candidate_min_distance_mm=3.0, fusion_weight=weight, recentre_max_mm=recentre,
                     recentre_view=found)


def test_heatmap_candidates_take_peaks_strongest_first_apart_and_refined() -> None:
    heat = np.full((13, 6, 6, 6), -8.0)
    heat[2, 1, 1, 1] = 4.0  # strongest
    heat[5, 1, 1, 2] = 3.5  # next cell: within 3 mm of the first at 2 mm cells -> suppressed
    heat[7, 4, 4, 4] = 2.0  # far away
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    points, channels = recipe.heatmap_candidates(heat, affine, stride=2, k=3, min_distance_mm=3.0)
    # local maxima only: the 3.5 cell next to the 4.0 peak is not one, and the flat -8 floor's maxima are far away
    assert 2 <= len(points) <= 3
    np.testing.assert_array_equal(np.argmax(channels, axis=1)[:2], [2, 7])
    # peak cell (1, 1, 1) at stride 2 covers voxels 2..3: centre 2.5; the 3.5 neighbour (array axis 2, which this
    # identity affine maps to world axis 2) pulls it that way
    assert points[0][2] > 2.5 and abs(points[0][0] - 2.5) < 0.01 and abs(points[0][1] - 2.5) < 0.01
    np.testing.assert_allclose(points[1], [8.5, 8.5, 8.5], atol=0.01)
    far = [np.linalg.norm(points[i] - points[j]) for i in range(len(points)) for j in range(i)]
    assert min(far) >= 3.0  # no two candidates on one peak


def test_fuse_is_identity_at_weight_zero_and_a_logit_mean_otherwise() -> None:
    probs = np.linspace(0.05, 0.9, 14)
    channels = np.full((2, 13), -10.0)
    channels[0, 4] = 10.0
    channels[1, 9] = 10.0
    sites = np.array([0.8, 0.3])
    np.testing.assert_allclose(recipe.fuse(probs, channels, sites, 0.0), probs)
    np.testing.assert_allclose(recipe.fuse(probs, channels[:0], sites[:0], 0.7), probs)
    fused = recipe.fuse(probs, channels, sites, 0.5)
    expected_present = recipe.sigmoid(0.5 * recipe.logit(probs[-1]) + 0.5 * recipe.logit(0.8))
    assert fused[-1] == pytest.approx(expected_present)
    assert fused[4] == pytest.approx(recipe.sigmoid(0.5 * recipe.logit(probs[4]) + 0.5 * recipe.logit(0.8)), rel=1e-6)
    assert fused[9] == pytest.approx(recipe.sigmoid(0.5 * recipe.logit(probs[9]) + 0.5 * recipe.logit(0.3)), rel=1e-6)
    assert fused[0] < probs[0]  # no candidate on that vessel: pulled down


def test_heat_weight_raises_each_site_by_its_heatmap_cell_before_fusion() -> None:
    probs = np.full(14, 0.2)
    channels = np.full((2, 13), -10.0)
    channels[0, 4] = 2.0  # a site the classifier saw on vessel 4
    channels[1, 9] = -3.0  # a site it hardly saw
    sites = np.array([0.6, 0.7])
    plain = recipe.fuse(probs, channels, sites, 0.5)
    boosted = recipe.fuse(probs, channels, sites, 0.5, site_heatmap_weight=0.5)
    np.testing.assert_allclose(recipe.fuse(probs, channels, sites, 0.5, site_heatmap_weight=0.0), plain)
    # site 0: logit(0.6) + 0.5 * 2 beats site 1: logit(0.7) - 1.5, so the maximum changes site
    best = recipe.sigmoid(recipe.logit(0.6) + 1.0)
    assert boosted[-1] == pytest.approx(recipe.sigmoid(0.5 * recipe.logit(0.2) + 0.5 * recipe.logit(best)))
    assert plain[-1] == pytest.approx(recipe.sigmoid(0.5 * recipe.logit(0.2) + 0.5 * recipe.logit(0.7)))
    assert boosted[9] < plain[9] and boosted[4] > plain[4]
    folds = [_fine(), replace(_fine(), site_heatmap_weight=1.0)]
    assert recipe.site_heatmap_weight(folds) == pytest.approx(0.5) and recipe.site_heatmap_weight([]) == 0.0


def _fixed_run(heat_cells: dict[tuple[int, int, int, int], float], fine_logit: float) -> recipe.Runner:
    """A fake ensemble: the locator peaks at the middle cell, the classifier answers logit -1 everywhere with a
    location heatmap of -6 but for ``heat_cells`` ((channel, z, y, x) -> logit), every fine patch ``fine_logit``."""

    def run(spec: ModelSpec, batch: np.ndarray) -> list[np.ndarray]:
        n = len(batch)
        if spec.role == "locator":
            heat = np.full((n, 1, 8, 8, 8), -5.0, dtype=np.float32)
            heat[:, 0, 4, 4, 4] = 3.0
            return [heat]
        if spec.role == "classifier":
            heat = np.full((n, 13, 4, 4, 4), -6.0, dtype=np.float32)
            for (c, z, y, x), value in heat_cells.items():
                heat[:, c, z, y, x] = value
            return [np.full((n, 14), -1.0, np.float32), np.zeros((n, 4), np.float32), heat]
        return [np.full((n, 1), fine_logit, np.float32)]

    return run


def test_fusion_weight_is_the_mean_of_the_fine_folds_used() -> None:
    folds = [_fine(weight=0.25), _fine(weight=0.5), _fine(weight=0.0)]
    assert recipe.fusion_weight(folds) == pytest.approx(0.25)
    assert recipe.fusion_weight(folds[:2]) == pytest.approx(0.375)  # a plan with fewer folds: theirs
    assert recipe.fusion_weight([]) == 0.0
    # the prediction fuses at that mean: two folds of weights 0 and 1 give the same row as one fold at 0.5
    coarse = np.zeros((16, 16, 16), dtype=np.float32)
    run = _fixed_run({(3, 2, 2, 2): 5.0}, fine_logit=2.0)

    def row(fine: list[ModelSpec]) -> np.ndarray:
        return recipe.predict_volume(coarse, np.diag([2.0, 2.0, 2.0, 1.0]), [_locator("l", 0)],
                                     [_heat_classifier()], run, fine=fine).probs

    np.testing.assert_allclose(row([_fine(k=1, weight=0.0), _fine(k=1, weight=1.0)]), row([_fine(k=1, weight=0.5)]))
    assert row([_fine(k=1, weight=0.5)])[-1] > row([_fine(k=1, weight=0.0)])[-1]  # the fine logit 2 > coarse -1


def test_predict_volume_fuses_at_the_folds_site_heatmap_weight_and_returns_what_fuse_needs() -> None:
    """A fine fold with a site heatmap weight raises each site by its heatmap cell before fusion: the row differs from
    the same fold without it, and equals ``fuse`` of what the prediction returns (coarse probabilities, candidate
    channel logits, candidate probabilities) at the folds' weights, so a retune can fuse it again."""
    coarse = np.zeros((16, 16, 16), dtype=np.float32)
    run = _fixed_run({(3, 2, 2, 2): 1.5, (5, 0, 0, 0): 0.5}, fine_logit=0.5)

    def predict(heat: float) -> recipe.Prediction:
        fine = replace(_fine(k=2, weight=0.5), site_heatmap_weight=heat)
        return recipe.predict_volume(coarse, np.diag([2.0, 2.0, 2.0, 1.0]), [_locator("l", 0)],
                                     [_heat_classifier(flip_tta=False)], run, fine=[fine])

    cold, hot = predict(0.0), predict(1.0)
    assert hot.candidate_channel_logits.shape == (2, 13) and hot.candidate_channel_logits[0, 3] == 1.5
    assert hot.probs[-1] > cold.probs[-1]  # the strongest site's cell logit 1.5 raises its logit
    np.testing.assert_allclose(hot.probs, recipe.fuse(hot.coarse_probs, hot.candidate_channel_logits,
                                                      hot.candidate_probs, 0.5, 1.0), rtol=1e-12)
    np.testing.assert_allclose(cold.probs, recipe.fuse(cold.coarse_probs, cold.candidate_channel_logits,
                                                       cold.candidate_probs, 0.5, 0.0), rtol=1e-12)
    no_heatmap = recipe.predict_volume(coarse, np.diag([2.0, 2.0, 2.0, 1.0]), [_locator("l", 0)],
                                       [_classifier("c", 0)], lambda spec, batch: run(spec, batch)[:2])
    assert no_heatmap.candidate_channel_logits.shape == (0, 13) and len(no_heatmap.candidate_probs) == 0


def test_greedy_nms_keeps_points_in_order_at_least_the_distance_apart() -> None:
    points = np.array([[3.0, 0, 0], [0, 0, 0], [9, 0, 0], [20, 0, 0]])  # already strongest first
    assert recipe.greedy_nms(points, 10, 8.0).tolist() == [0, 3]  # 1 and 2 lie within 8 mm of point 0
    assert recipe.greedy_nms(points, 1, 8.0).tolist() == [0]
    assert recipe.greedy_nms(points, 10, 8.0, scale=(0.5, 1.0, 1.0)).tolist() == [0, 3]  # x in half-mm units
    assert recipe.greedy_nms(points, 10, 2.0, scale=(0.5, 1.0, 1.0)).tolist() == [0, 2, 3]
    assert recipe.greedy_nms(np.zeros((0, 3)), 3, 1.0).tolist() == []


def test_fine_stage_samples_the_native_stack_and_mirrors_heatmaps_back() -> None:
    coarse = np.zeros((16, 16, 16), dtype=np.float32)
    native = np.zeros((64, 64, 64), dtype=np.float32)
    native_affine = np.diag([0.5, 0.5, 0.5, 1.0])
    native[40:44, 40:44, 40:44] = 7.0  # at LPS (20..21.5)^3
    seen = []

    def run(spec: ModelSpec, batch: np.ndarray) -> list[np.ndarray]:
        if spec.role == "locator":
            heat = np.full((1, 1, 8, 8, 8), -5.0, dtype=np.float32)
            heat[0, 0, 4, 4, 4] = 3.0
            return [heat]
        if spec.role == "classifier":
            n = len(batch)
            heat = np.full((n, 13, 4, 4, 4), -6.0, dtype=np.float32)
            heat[0, 3, 3, 3, 3] = 5.0  # plain row: location 3 at cell (3, 3, 3)
            if n == 2:  # the mirrored row sees the same site mirrored in x, on the mirrored location channel
                heat[1, recipe.LOCATION_FLIP[3], 3, 3, 0] = 5.0
            return [np.zeros((n, 14), np.float32), np.zeros((n, 4), np.float32), heat]
        seen.append(batch.copy())
        return [batch.mean(axis=(1, 2, 3, 4))[:, None].astype(np.float32)]

    stack = native_stack(native, native_affine, lambda a: a / 7.0)
    pred = recipe.predict_volume(coarse, np.diag([2.0, 2.0, 2.0, 1.0]), [_locator("l", 0)], [_heat_classifier()],
                                 run, fine=[_fine(k=1)], native=stack)
    assert pred.candidate_locations == (recipe.LOCATION_COLS[3],)
    # crop: 8^3 at 2 mm around the located centre; the heatmap peak agreed in both rows (mirroring mapped back)
    assert len(seen) == 1 and seen[0].shape == (2, 1, 4, 4, 4)
    patch = seen[0][0, 0]
    assert patch.max() <= 1.0 and patch.min() >= 0.0  # normalised with the given normaliser
    np.testing.assert_array_equal(seen[0][1], seen[0][0][..., ::-1])
    assert pred.candidate_probs.shape == (1,)
    plain = recipe.predict_volume(coarse, np.diag([2.0, 2.0, 2.0, 1.0]), [_locator("l", 0)], [_heat_classifier()],
                                  run, recipe.Plan(candidates=0), fine=[_fine(k=1)], native=stack)
    assert len(plain.candidates_lps) == 0 and plain.runs < pred.runs
    assert recipe.plan_runs([_locator("l", 0)], [_heat_classifier()], recipe.Plan(), [_fine(k=8)]) == 1 + 2 + 4


def test_reverse_z_samples_the_reversed_stack_without_copying_it() -> None:
    """reverse_z(stack) gives the patches of the stack with its slices reversed (what a series with no geometry whose
    locator found it upside down is sampled from), at a fine spacing off the native grid and across an edge."""
    rng = np.random.default_rng(3)
    array = rng.normal(size=(23, 30, 28)).astype(np.float32)
    affine = np.array([[0.0, 0.0, -0.7, 40.0], [0.0, -0.6, 0.0, 12.0], [1.3, 0.0, 0.0, -8.0], [0, 0, 0, 1.0]])
    points = voxel_to_world(affine, np.array([[4.3, 10.2, 9.9], [11.0, 15.5, 14.0], [21.6, 2.0, 26.5]]))
    expected = native_stack(np.ascontiguousarray(array[::-1]), affine).sample(points, (7, 6, 5), (0.5, 0.45, 0.4))
    reversed_stack = reverse_z(native_stack(array, affine))
    got = reversed_stack.sample(points, (7, 6, 5), (0.5, 0.45, 0.4))
    assert got.shape == (3, 7, 6, 5) and got.flags.c_contiguous
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(expected).max() > 0.5 and (expected == 0).any()  # real samples, and the third patch is cut by an edge
    assert reversed_stack.shape == array.shape and np.shares_memory(reversed_stack.array, array)


# --- recentring on the fine model's sphere map ----------------------------------------------------------------------

OBLIQUE_FREE = np.array([[0.0, 0.0, -0.5, 30.0], [0.0, -0.5, 0.0, 25.0], [0.5, 0.0, 0.0, -12.0], [0, 0, 0, 1.0]])


def _blob_stack(centre_lps: np.ndarray, sigma_mm: float = 1.2) -> np.ndarray:
    """A 80^3 stack at 0.5 mm (axes permuted and mirrored against LPS) holding one Gaussian blob."""
    idx = np.stack(np.meshgrid(*[np.arange(80)] * 3, indexing="ij"), -1).reshape(-1, 3)
    d2 = np.sum((voxel_to_world(OBLIQUE_FREE, idx) - centre_lps) ** 2, axis=1)
    return np.exp(-d2 / (2 * sigma_mm**2)).reshape(80, 80, 80).astype(np.float32)


def _ball_run(calls: list) -> recipe.Runner:
    """A fine model whose sphere map is the patch's 2x2x2 block mean (so it peaks where the blob is), logit the mean of
    the patch's central 2x2x2 voxels."""
    def run(spec: ModelSpec, batch: np.ndarray) -> list[np.ndarray]:
        calls.append((spec.name, batch.shape))
        n, _, z, y, x = batch.shape
        ball = batch.reshape(n, 1, z // 2, 2, y // 2, 2, x // 2, 2).mean(axis=(3, 5, 7))
        middle = batch[:, :, z // 2 - 1:z // 2 + 1, y // 2 - 1:y // 2 + 1, x // 2 - 1:x // 2 + 1]
        return [middle.mean(axis=(1, 2, 3, 4))[:, None], ball.astype(np.float32)]
    return run


def test_recentre_moves_a_candidate_onto_the_blob_within_reach() -> None:
    blob = voxel_to_world(OBLIQUE_FREE, [[40.3, 38.6, 41.2]])[0]
    stack = native_stack(_blob_stack(blob), OBLIQUE_FREE)
    near, far = blob + [1.0, 0.5, -1.0], blob + [0.0, 3.0, 0.0]  # 1.5 mm and 3 mm off the blob
    calls: list = []
    fine = [_fine(shape=(16, 16, 16), recentre=2.0)]
    moved, found = recipe.recentre(stack, np.array([near, far]), fine, _ball_run(calls))
    assert calls == [("f", (2, 1, 16, 16, 16))]  # one unflipped run of every candidate's patch
    # that run's logits are those of the patches at the found points (what recentre_view counts as a view)
    at_found = recipe.fine_patches(stack, np.array([near, far]), fine[0])[:, :, 7:9, 7:9, 7:9].mean(axis=(1, 2, 3, 4))
    assert list(found) == ["f"] and found["f"].shape == (2,)
    np.testing.assert_allclose(found["f"], at_found, rtol=1e-6)
    # the sphere map's cells are 1 mm (stride 2 at 0.5 mm): the blob's cell centre is within half a diagonal of it
    assert np.linalg.norm(moved[0] - blob) <= np.sqrt(3) * 0.5 + 1e-9
    # out of reach: moved at most 2 mm, towards the blob
    assert np.linalg.norm(moved[1] - far) <= 2.0 + 1e-9
    assert np.linalg.norm(moved[1] - blob) <= 1.0 + np.sqrt(3) * 0.5
    # the patch centred on the moved point has the blob in its middle: sampled there, its peak voxel is central
    patch = stack.sample(moved[:1], (16, 16, 16), (0.5, 0.5, 0.5))[0]
    assert np.all(np.abs(np.array(np.unravel_index(np.argmax(patch), patch.shape)) - 7.5) <= 1.5)


def test_recentre_is_a_no_op_without_a_recentring_fold_and_averages_the_folds_maps() -> None:
    blob = voxel_to_world(OBLIQUE_FREE, [[40.0, 40.0, 40.0]])[0]
    stack = native_stack(_blob_stack(blob), OBLIQUE_FREE)
    points = np.array([blob + [1.5, 0.0, 0.0]])
    calls: list = []
    unchanged, found = recipe.recentre(stack, points, [_fine(shape=(16, 16, 16))], _ball_run(calls))
    np.testing.assert_array_equal(unchanged, points)
    assert found == {}
    none, found = recipe.recentre(stack, points[:0], [_fine(recentre=2.0)], _ball_run(calls))
    assert calls == [] and none.shape == (0, 3) and found == {}

    def opposed(spec: ModelSpec, batch: np.ndarray) -> list[np.ndarray]:  # one fold sees the blob, one its negative
        logit, ball = _ball_run(calls)(spec, batch)
        return [logit, ball if spec.name == "a" else -0.4 * ball]

    folds = [_fine(shape=(16, 16, 16), recentre=2.0, name="a"), _fine(shape=(16, 16, 16), recentre=2.0, name="b")]
    moved, found = recipe.recentre(stack, points, folds, opposed)
    assert sorted(found) == ["a", "b"]
    assert np.linalg.norm(moved[0] - blob) <= np.sqrt(3) * 0.5 + 1e-9  # the mean map (0.3 x blob) still peaks there
    moved_b, _ = recipe.recentre(stack, points, folds[1:], opposed)
    assert np.linalg.norm(moved_b[0] - blob) > np.linalg.norm(points[0] - blob)  # b alone runs from the blob


def test_recentre_on_a_reversed_stack_matches_the_reversed_copy() -> None:
    blob = voxel_to_world(OBLIQUE_FREE, [[30.2, 44.7, 36.1]])[0]
    array = _blob_stack(blob)
    points = np.array([blob + [0.8, -1.1, 0.6]])
    mirrored = voxel_to_world(OBLIQUE_FREE, [[79 - 30.2, 44.7, 36.1]])[0] + [0.8, -1.1, 0.6]
    fine = [_fine(shape=(16, 16, 16), recentre=3.0)]
    got, _ = recipe.recentre(reverse_z(native_stack(array, OBLIQUE_FREE)), np.array([mirrored]), fine, _ball_run([]))
    expected, _ = recipe.recentre(native_stack(np.ascontiguousarray(array[::-1]), OBLIQUE_FREE), np.array([mirrored]),
                                  fine, _ball_run([]))
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert np.linalg.norm(got[0] - voxel_to_world(OBLIQUE_FREE, [[79 - 30.2, 44.7, 36.1]])[0]) < 1.0
    assert not np.allclose(points, got)


def test_predict_volume_scores_the_recentred_candidates() -> None:
    """The fine stage moves each candidate before scoring it: one unflipped run, then the flipped pair at the moved
    point; the prediction reports the moved points and the plan counts the extra run."""
    coarse = np.zeros((16, 16, 16), dtype=np.float32)
    native_affine = np.diag([0.5, 0.5, 0.5, 1.0])
    idx = np.stack(np.meshgrid(*[np.arange(64)] * 3, indexing="ij"), -1).reshape(-1, 3).astype(np.float64)
    blob = np.array([20.6, 19.2, 21.4])
    native = np.exp(-np.sum((idx * 0.5 - blob) ** 2, axis=1) / 2.0).reshape(64, 64, 64).astype(np.float32)
    fine_calls: list = []

    def run(spec: ModelSpec, batch: np.ndarray) -> list[np.ndarray]:
        n = len(batch)
        if spec.role == "locator":
            heat = np.full((n, 1, 8, 8, 8), -5.0, dtype=np.float32)
            heat[0, 0, 4, 4, 4] = 3.0
            return [heat]
        if spec.role == "classifier":
            heat = np.full((n, 13, 4, 4, 4), -6.0, dtype=np.float32)
            heat[:, 3, 2, 2, 2] = 5.0  # cell (2, 2, 2) of a 2 mm crop at stride 2: centre near (17.5, 17.5, 17.5)
            return [np.zeros((n, 14), np.float32), np.zeros((n, 4), np.float32), heat]
        return _ball_run(fine_calls)(spec, batch)

    fine = [_fine(k=1, shape=(16, 16, 16), recentre=5.0)]
    pred = recipe.predict_volume(coarse, np.diag([2.0, 2.0, 2.0, 1.0]), [_locator("l", 0)], [_heat_classifier()],
                                 run, fine=fine, native=native_stack(native, native_affine))
    found = recipe.predict_volume(coarse, np.diag([2.0, 2.0, 2.0, 1.0]), [_locator("l", 0)], [_heat_classifier()],
                                  run, fine=[_fine(k=1, shape=(16, 16, 16))],
                                  native=native_stack(native, native_affine))
    assert [shape[0] for _, shape in fine_calls] == [1, 2, 2]  # move (plain), score (pair); the unmoved run: pair
    assert np.linalg.norm(found.candidates_lps[0] - blob) > 2.0  # the heatmap's peak is off the blob
    assert np.linalg.norm(pred.candidates_lps[0] - blob) <= np.sqrt(3) * 0.5 + 1e-9
    assert pred.candidate_probs[0] > found.candidate_probs[0]  # centred on the blob, the patch sees its peak
    assert pred.runs == found.runs + 1
    assert recipe.plan_runs([_locator("l", 0)], [_heat_classifier()], recipe.Plan(),
                            [_fine(k=8, recentre=5.0)]) == 1 + 2 + 4 + 2

    # recentre_view without flips: the move's run, then one plain run at the moved point; the candidate's score is the
    # mean of the two views' probabilities
    fine_calls.clear()
    views = recipe.predict_volume(coarse, np.diag([2.0, 2.0, 2.0, 1.0]), [_locator("l", 0)], [_heat_classifier()],
                                  run, fine=[_fine(k=1, shape=(16, 16, 16), recentre=5.0, flip=False, found=True)],
                                  native=native_stack(native, native_affine))
    assert [shape[0] for _, shape in fine_calls] == [1, 1]
    np.testing.assert_allclose(views.candidates_lps, pred.candidates_lps)
    stack = native_stack(native, native_affine)
    middle = (slice(None), slice(None), slice(7, 9), slice(7, 9), slice(7, 9))
    at_found = recipe.fine_patches(stack, found.candidates_lps, fine[0])[middle].mean()
    at_moved = recipe.fine_patches(stack, pred.candidates_lps, fine[0])[middle].mean()
    np.testing.assert_allclose(views.candidate_probs[0], (recipe.sigmoid(at_found) + recipe.sigmoid(at_moved)) / 2,
                               rtol=1e-6)


def test_fine_probs_average_each_folds_views() -> None:
    """Per fold: the patch, its mirror with flip TTA, the found point's logit with recentre_view (ignored without it);
    then the mean over folds."""
    rng = np.random.default_rng(5)
    stack = native_stack(rng.normal(size=(40, 40, 40)).astype(np.float32), np.diag([0.5, 0.5, 0.5, 1.0]))
    points = np.array([[9.0, 10.0, 8.5], [11.0, 9.5, 10.0]])

    def run(spec: ModelSpec, batch: np.ndarray) -> list[np.ndarray]:  # logit: the mean of the patch's first x half
        return [batch[..., : batch.shape[-1] // 2].mean(axis=(1, 2, 3, 4))[:, None] * 5.0]

    patches = recipe.fine_patches(stack, points, _fine(shape=(8, 8, 8)))
    plain = recipe.sigmoid(run(_fine(), patches)[0][:, 0])
    mirror = recipe.sigmoid(run(_fine(), np.ascontiguousarray(patches[..., ::-1]))[0][:, 0])
    assert np.abs(plain - mirror).max() > 0.05  # the two views differ
    found = {"f": np.array([2.0, -1.0]), "g": np.array([-3.0, 0.5])}
    p_found = recipe.sigmoid(found["f"])

    def probs(**kw) -> np.ndarray:
        return recipe.fine_probs(stack, points, [_fine(shape=(8, 8, 8), recentre=2.0, **kw)], run, found=found)

    np.testing.assert_allclose(probs(flip=False), plain, rtol=1e-6)
    np.testing.assert_allclose(probs(flip=True), (plain + mirror) / 2, rtol=1e-6)
    np.testing.assert_allclose(probs(flip=False, found=True), (plain + p_found) / 2, rtol=1e-6)
    np.testing.assert_allclose(probs(flip=True, found=True), (plain + mirror + p_found) / 3, rtol=1e-6)
    two = recipe.fine_probs(stack, points, [_fine(shape=(8, 8, 8), recentre=2.0, flip=False, found=True),
                                            _fine(shape=(8, 8, 8), recentre=2.0, flip=False, found=True, name="g")],
                            run, found=found)
    np.testing.assert_allclose(two, ((plain + p_found) / 2 + (plain + recipe.sigmoid(found["g"])) / 2) / 2, rtol=1e-6)
