"""The recipe with stand-in models: a ``run`` that records its inputs and returns chosen outputs, so every number the
recipe derives (centres, crop placement, flip mapping, averages, plan cost) is checked against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest

from kernel import recipe
from kernel.labels import LABEL_COLS, flip_permutation
from kernel.manifest import ModelSpec
from kernel.preprocess import voxel_to_world

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
    probs, modality = recipe.classify(volume, AFFINE, centre, [spec], run, flip=True)
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
    probs, _ = recipe.classify(volume, AFFINE, centre, specs, FakeRun({}), flip=True)
    mirrored, _ = recipe.classify(volume[..., ::-1].copy(), AFFINE, centre, specs, FakeRun({}), flip=True)
    np.testing.assert_allclose(mirrored, probs[flip_permutation()], atol=1e-12)
    plain, _ = recipe.classify(volume, AFFINE, centre, specs, FakeRun({}), flip=False)
    plain_mirrored, _ = recipe.classify(volume[..., ::-1].copy(), AFFINE, centre, specs, FakeRun({}), flip=False)
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
