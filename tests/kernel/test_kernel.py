"""Kernel: manifest validation, provider choice, flip TTA label swap, time budget, and a predict that never raises."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kernel import predict as kernel_predict
from kernel.budget import TimeBudget
from kernel.ensemble import CPU, CUDA, SPIN_ENV, TENSORRT, Ensemble, Plan, choose_providers
from kernel.labels import LABEL_COLS, flip_permutation
from kernel.manifest import ManifestError, find_weights_dir, load_manifest, validate_manifest
from kernel.preprocess import prepare_volume
from kernel.recipe import classify
from testkit.dicom_factory import write_series
from testkit.hostile import CASES
from testkit.onnx_factory import write_random_weights

REPO = Path(__file__).resolve().parents[2]
PRIORS = [0.01 * (i + 1) for i in range(13)] + [0.43]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_weights(tmp_path_factory.mktemp("weights"), folds=2, seed=3, priors=PRIORS)


@pytest.fixture(scope="module")
def predictor(weights: Path) -> kernel_predict.Predictor:
    return kernel_predict.Predictor(str(weights), budget=TimeBudget(limit_s=1e6, n_series=10, margin_s=0))


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("series") / "1.2.3.4"
    write_series(folder, n_slices=30, rows=40, cols=44, modality="CT", allowlist_only=True)
    return folder


# --- manifest ----------------------------------------------------------------------------------------------------


def test_validate_manifest_lists_every_problem(weights: Path) -> None:
    good = json.loads((weights / "manifest.json").read_text())
    validate_manifest(good)
    bad = json.loads(json.dumps(good))
    bad["label_cols"] = list(reversed(LABEL_COLS))
    bad["label_priors"] = bad["label_priors"][:13]
    bad["models"] = [m for m in bad["models"] if m["role"] == "classifier"]
    bad["models"][0]["input_shape"] = [32, 32]
    with pytest.raises(ManifestError) as info:
        validate_manifest(bad)
    message = str(info.value)
    for fragment in ("label_cols", "label_priors", "at least one locator", "input_shape"):
        assert fragment in message, f"{fragment!r} missing from: {message}"


def test_load_manifest_checks_hashes_and_location(weights: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "w"
    shutil.copytree(weights, copy)
    monkeypatch.setenv("RSNA_WEIGHTS_DIR", str(copy))
    assert find_weights_dir() == copy
    assert find_weights_dir(weights) == weights  # an explicit folder wins over the environment
    manifest = load_manifest()
    assert manifest.label_priors == pytest.approx(PRIORS)
    assert [m.fold for m in manifest.models("locator")] == [0, 1]
    with open(copy / "classifier_f1.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ManifestError, match="classifier_f1.*sha256"):
        load_manifest()
    load_manifest(check_hashes=False)
    monkeypatch.setenv("RSNA_WEIGHTS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ManifestError, match="no manifest.json"):
        load_manifest()


# --- providers and ensemble --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("available", "tensorrt", "expected"),
    [
        ([TENSORRT, CUDA, CPU], False, [CUDA, CPU]),
        ([TENSORRT, CUDA, CPU], True, [TENSORRT, CUDA, CPU]),
        ([CUDA, CPU], True, [CUDA, CPU]),
        (["AzureExecutionProvider", CPU], False, [CPU]),
        ([TENSORRT, CPU], True, [CPU]),  # TensorRT needs the CUDA provider beside it
    ],
)
def test_choose_providers(available: list[str], tensorrt: bool, expected: list[str]) -> None:
    assert choose_providers(available, tensorrt=tensorrt) == expected


def test_cuda_listed_on_a_cpu_build_still_runs(weights: Path) -> None:
    ensemble = Ensemble(load_manifest(weights), providers=choose_providers([CUDA, CPU]))
    assert ensemble.providers[0] == CUDA
    assert CPU in ensemble.active_providers
    assert ensemble.runs(Plan()) == 2 + 2 * 2 and ensemble.runs(Plan(1, False)) == 2


@pytest.mark.parametrize(("env", "expected"), [(None, "0"), ("0", "0"), ("1", "1")])
def test_idle_workers_block_unless_asked_to_spin(weights: Path, monkeypatch: pytest.MonkeyPatch, env: str | None,
                                                 expected: str) -> None:
    if env is None:
        monkeypatch.delenv(SPIN_ENV, raising=False)
    else:
        monkeypatch.setenv(SPIN_ENV, env)
    ensemble = Ensemble(load_manifest(weights))
    for session in ensemble.sessions.values():
        options = session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == expected
        assert options.inter_op_num_threads == 1


def test_flip_tta_maps_a_mirrored_input_to_swapped_labels(weights: Path) -> None:
    """With TTA, mirroring the patient left/right must give exactly the label-swapped probabilities."""
    ensemble = Ensemble(load_manifest(weights))
    rng = np.random.default_rng(0)
    array = rng.random((32, 32, 32)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])  # classifier spacing: the crop is the whole array, no interpolation
    centre = np.array([15.5 * 2, 15.5 * 2, 15.5 * 2])[::-1]  # LPS of voxel (15.5, 15.5, 15.5)
    perm = flip_permutation()
    probs = classify(array, affine, centre, ensemble.classifiers, ensemble.run, True).probs
    mirrored = classify(array[..., ::-1].copy(), affine, centre, ensemble.classifiers, ensemble.run, True).probs
    np.testing.assert_allclose(mirrored, probs[perm], atol=1e-6)
    plain = classify(array, affine, centre, ensemble.classifiers, ensemble.run, False).probs
    plain_mirrored = classify(array[..., ::-1].copy(), affine, centre, ensemble.classifiers, ensemble.run, False).probs
    assert not np.allclose(plain_mirrored, plain[perm], atol=1e-4), "the test model is symmetric: nothing tested"


def test_unknown_slice_order_gives_the_same_answer_both_ways(weights: Path) -> None:
    """Without geometry the frame order may run feet-to-head or head-to-feet: the locator's peak picks the order, so
    both stackings of one volume get the same row, and the order whose locator peak is higher is the one used."""
    ensemble = Ensemble(load_manifest(weights))
    rng = np.random.default_rng(4)
    array = rng.normal(100.0, 30.0, (40, 40, 40)).astype(np.float32)
    array[26:32, 10:30, 12:28] += 400.0  # something bright in the upper part, so the two orders differ
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    up = ensemble.predict_volume(array, affine, "CT", superior_known=False)
    down = ensemble.predict_volume(array[::-1].copy(), affine, "CT", superior_known=False)
    np.testing.assert_allclose(up.probs, down.probs, atol=1e-6)
    assert up.reversed_z != down.reversed_z
    known_up = ensemble.predict_volume(array, affine, "CT")
    known_down = ensemble.predict_volume(array[::-1].copy(), affine, "CT")
    assert not np.allclose(known_up.probs, known_down.probs, atol=1e-4), "orientation changes nothing: no test"
    chosen = known_down if up.reversed_z else known_up
    np.testing.assert_allclose(up.probs, chosen.probs, atol=1e-6)


def test_classifier_crop_follows_the_manifest_centre_offset(weights: Path, tmp_path: Path) -> None:
    """A classifier with ``centre_offset_lps_mm`` sees the crop cut at the locator centre plus that offset."""
    shifted = tmp_path / "shifted"
    shutil.copytree(weights, shifted)
    manifest = json.loads((shifted / "manifest.json").read_text())
    offset = [0.0, 6.0, -8.0]  # LPS mm: 3 voxels posterior, 4 voxels inferior at 2 mm
    for model in manifest["models"]:
        if model["role"] == "classifier":
            model["centre_offset_lps_mm"] = offset
    validate_manifest(manifest)
    (shifted / "manifest.json").write_text(json.dumps(manifest))
    rng = np.random.default_rng(1)
    array = rng.random((48, 48, 48)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    centre = np.array([47.0, 47.0, 47.0])
    plain = Ensemble(load_manifest(weights))
    moved = Ensemble(load_manifest(shifted))
    expected = classify(array, affine, centre + np.asarray(offset), plain.classifiers, plain.run).probs
    got = classify(array, affine, centre, moved.classifiers, moved.run).probs
    np.testing.assert_allclose(got, expected, atol=1e-6)
    unshifted = classify(array, affine, centre, plain.classifiers, plain.run).probs
    assert not np.allclose(got, unshifted, atol=1e-4), "the offset changed nothing: nothing tested"
    manifest["models"][1]["centre_offset_lps_mm"] = [0.0, "up", 1.0]
    with pytest.raises(ManifestError, match="centre_offset_lps_mm"):
        validate_manifest(manifest)


# --- time budget -------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_budget_degrades_then_falls_back() -> None:
    clock = FakeClock()
    budget = TimeBudget(limit_s=100.0, n_series=10, margin_s=0.0, clock=clock)
    plans = [6, 4, 2]
    assert budget.choose(plans) == 0  # nothing measured yet: the full plan
    budget.record(fixed_s=1.0, model_s=6.0, runs=6)  # 1 s reading + 1 s per model run
    budget.count()
    assert budget.estimate(4) == pytest.approx(5.0)
    assert budget.choose(plans) == 0  # 100 s for 9 series: 11.1 s each
    clock.now, budget.done = 50.0, 5  # 50 s for 5 series: 10 s each
    assert budget.choose(plans) == 0
    clock.now = 72.0  # 5.6 s each
    assert budget.choose(plans) == 1
    clock.now = 84.0  # 3.2 s each
    assert budget.choose(plans) == 2
    clock.now = 90.0  # 2 s each: not even one fold
    assert budget.choose(plans) is None
    clock.now = 101.0
    assert budget.allowance() < 0 and budget.choose(plans) is None


def test_budget_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RSNA_TIME_LIMIT_S", "3600")
    monkeypatch.setenv("RSNA_N_SERIES", "40")
    monkeypatch.setenv("RSNA_TIME_MARGIN_S", "600")
    budget = TimeBudget(clock=FakeClock())
    assert (budget.limit_s, budget.n_series, budget.margin_s) == (3600.0, 40, 600.0)
    assert budget.allowance() == pytest.approx(3000.0 / 40)
    monkeypatch.setenv("RSNA_N_SERIES", "many")
    with pytest.raises(ValueError, match="RSNA_N_SERIES"):
        TimeBudget()


# --- predict -----------------------------------------------------------------------------------------------------


def _check_row(frame: pl.DataFrame) -> np.ndarray:
    assert isinstance(frame, pl.DataFrame) and frame.height == 1
    assert frame.columns == LABEL_COLS
    values = np.array(frame.row(0), dtype=np.float64)
    assert np.all(np.isfinite(values)) and np.all((values >= 0) & (values <= 1))
    return values


def test_predict_matches_the_pipeline_by_hand(predictor: kernel_predict.Predictor, ct_series: Path) -> None:
    frame, record = predictor.predict(str(ct_series))
    values = _check_row(frame)
    assert record.level == "full" and record.reason is None and record.uid == "1.2.3.4"
    manifest = predictor.manifest
    volume = prepare_volume(ct_series, manifest.volume_spacing_mm, max_voxels=manifest.max_voxels)
    expected = predictor.ensemble.predict_volume(volume.array, volume.affine, volume.modality, Plan())
    np.testing.assert_allclose(values, expected.probs, atol=1e-9)
    assert not np.allclose(values, PRIORS)


@pytest.mark.parametrize("case", sorted(set(CASES) - {"thousands_of_slices", "huge_file"}))
def test_predict_never_raises_on_hostile_series(case: str, predictor: kernel_predict.Predictor,
                                                tmp_path: Path) -> None:
    folder = tmp_path / f"uid_{case}"
    expect = CASES[case](folder)
    frame, record = predictor.predict(str(folder))
    values = _check_row(frame)
    if expect == "error":
        assert record.level == "fallback" and record.reason, record
        np.testing.assert_allclose(values, PRIORS)
    else:
        assert record.level == "full", record


@pytest.mark.parametrize("kind", ["empty", "not_dicom", "truncated", "missing"])
def test_predict_falls_back_without_raising(kind: str, predictor: kernel_predict.Predictor, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "9.8.7"
    if kind != "missing":
        folder.mkdir()
    if kind == "not_dicom":
        (folder / "notes.txt").write_text("not a DICOM file")
        (folder / "scan.dcm").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(2000))
    if kind == "truncated":
        write_series(folder, n_slices=8)
        for path in sorted(folder.glob("*.dcm")):
            path.write_bytes(path.read_bytes()[:200])
    with caplog.at_level("WARNING", logger="rsna.kernel"):  # caplog's handler sits on the kernel's logger
        frame, record = predictor.predict(str(folder))
    np.testing.assert_allclose(_check_row(frame), PRIORS)
    assert record.level == "fallback"
    lines = [r.getMessage() for r in caplog.records if "fallback" in r.getMessage()]
    assert len(lines) == 1 and "uid=9.8.7" in lines[0] and "reason=" in lines[0], lines


def test_predict_without_weights_returns_the_constant_row(tmp_path: Path, ct_series: Path) -> None:
    predictor = kernel_predict.Predictor(str(tmp_path / "no_weights"))
    frame, record = predictor.predict(str(ct_series))
    np.testing.assert_allclose(_check_row(frame), kernel_predict.LAST_RESORT_PROB)
    assert record.level == "fallback" and "manifest" in record.reason


def test_predict_falls_back_when_the_budget_is_spent(weights: Path, ct_series: Path) -> None:
    clock = FakeClock()
    predictor = kernel_predict.Predictor(str(weights), budget=TimeBudget(limit_s=10, n_series=5, margin_s=0,
                                                                         clock=clock))
    assert predictor.predict(str(ct_series))[1].level == "full"
    clock.now = 11.0
    frame, record = predictor.predict(str(ct_series))
    assert record.level == "fallback" and record.reason.startswith("TimeoutError: time budget")
    np.testing.assert_allclose(_check_row(frame), PRIORS)


def test_budget_chooses_fewer_flips_before_the_fallback(weights: Path, ct_series: Path) -> None:
    clock = FakeClock()
    budget = TimeBudget(limit_s=1000, n_series=100, margin_s=0, clock=clock)
    predictor = kernel_predict.Predictor(str(weights), budget=budget)
    budget.fixed_s, budget.per_run_s = 1.0, 1.0  # full: 1 + 6 runs; no flip: 1 + 4; one fold: 1 + 2
    clock.now = 1000 - 100 * 5.5  # 5.5 s per series left
    assert predictor.predict(str(ct_series))[1].level == "no_flip"
    budget.fixed_s, budget.per_run_s = 1.0, 1.0  # the call above taught the budget its real (tiny) cost
    clock.now = 1000 - 99 * 3.5
    assert predictor.predict(str(ct_series))[1].level == "one_fold"


def test_share_dir_is_deleted_only_on_kaggle(predictor: kernel_predict.Predictor, ct_series: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    share = tmp_path / "shared"
    share.mkdir()
    monkeypatch.setattr(kernel_predict, "KAGGLE_SHARE_DIR", str(share))
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.delenv("KAGGLE_IS_COMPETITION_RERUN", raising=False)
    predictor.predict(str(ct_series))
    assert share.exists()
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    predictor.predict(str(ct_series))
    assert not share.exists()


def test_module_level_predict_is_a_plain_function(weights: Path, ct_series: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RSNA_WEIGHTS_DIR", str(weights))
    kernel_predict.reset_predictor()
    try:
        frame = kernel_predict.predict(str(ct_series))
        _check_row(frame)
        assert kernel_predict.call_records()[-1].uid == ct_series.name
        assert type(kernel_predict.predict).__name__ == "function"
    finally:
        kernel_predict.reset_predictor()


def test_weights_found_under_kaggle_input(weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kernel import manifest as manifest_module

    kaggle_input = tmp_path / "input"
    dataset = kaggle_input / "datasets" / "someone" / "rsna-weights"
    shutil.copytree(weights, dataset)
    decoy = kaggle_input / "rsna-intracranial-aneurysm-detection" / "series" / "1.2.3"
    decoy.mkdir(parents=True)
    (decoy / "manifest.json").write_text("{}")  # inside the competition's series: never looked at
    monkeypatch.delenv("RSNA_WEIGHTS_DIR", raising=False)
    monkeypatch.setattr(manifest_module, "KAGGLE_INPUT", kaggle_input)
    assert find_weights_dir() == dataset
    shutil.copytree(weights, kaggle_input / "other-weights")
    with pytest.raises(ManifestError, match="several weights datasets"):
        find_weights_dir()


def test_budget_drops_half_the_candidates_then_the_fine_stage(ct_series: Path) -> None:
    """With the shipped weights (a fine stage): as the time per series shrinks the ladder reaches one fold with half
    the fine candidates, then one fold without the fine stage, each a real prediction, before the fallback row."""
    clock = FakeClock()
    budget = TimeBudget(limit_s=1000, n_series=100, margin_s=0, clock=clock)
    predictor = kernel_predict.Predictor(str(REPO / "weights"), budget=budget)
    predictor.keep_last = True
    costs = {name: predictor.ensemble.runs(plan) for name, plan in predictor.plans()}
    assert list(costs) == ["full", "no_flip", "one_fold", "few_candidates", "no_fine"]
    assert costs["one_fold"] > costs["few_candidates"] > costs["no_fine"]
    k = predictor.ensemble.fine[0].candidates
    for level, runs in (("few_candidates", costs["few_candidates"]), ("no_fine", costs["no_fine"])):
        budget.fixed_s, budget.per_run_s = 1.0, 1.0
        budget.done = 0
        clock.now = 1000 - 100 * (1.0 + runs + 0.5)  # just enough for this level, not for the one above
        frame, record = predictor.predict(str(ct_series))
        assert record.level == level, (record, costs)
        prediction = predictor.last[2]
        assert np.all(np.isfinite(_check_row(frame)))
        if level == "few_candidates":
            assert 1 <= len(prediction.candidates_lps) <= max(1, k // 2)
            assert len(prediction.candidate_probs) == len(prediction.candidates_lps)
        else:  # no fine stage: the row is the classifiers' own
            np.testing.assert_allclose(prediction.probs, prediction.coarse_probs)
    budget.fixed_s, budget.per_run_s = 1.0, 1.0
    clock.now = 1000 - 100 * (1.0 + costs["no_fine"] - 0.5)
    assert predictor.predict(str(ct_series))[1].level == "fallback"
