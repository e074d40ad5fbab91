"""The fine stage: native boxes equal the whole stack, candidates through the recipe, a tiny fold trained end to end
(train, fine, export) and the exported ensemble answering through the kernel with its fine stage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kernel import recipe
from kernel.dicom_io import read_series
from kernel.labels import ID_COL, LABEL_COLS
from kernel.manifest import load_manifest
from kernel.preprocess import canonicalise, crop_around
from train_offline.config import load_config
from train_offline.data import records_from_index
from train_offline.domes import Dome
from train_offline.fine.boxes import BoxStore, _stored, cut_box
from train_offline.fine.dataset import FineDataset, augment, site_sample
from train_offline.fine.plan import prepare_folds
from train_offline.fine.report import auc_by_candidate, near_localizer, patch_auc_by_dome
from train_offline.fine.sites import all_sites
from train_offline.fine.train import train_fine, train_fines
from train_offline.phantoms.generate import generate_dataset, load_truth
from train_offline.precache_all import precache_all
from train_offline.train import train_fold

SPACING = 3.0
TINY = {
    "name": "tinyfine",
    "data": {"n_folds": 2, "preload": "volumes"},
    "volume_spacing_mm": [SPACING] * 3,
    "locator": {"input_shape": [16, 16, 16], "spacing_mm": [12.0] * 3, "output_stride": 2, "channels": [4, 8],
                "epochs": 1, "batch_size": 4, "sigma_mm": 12.0},
    "classifier": {"input_shape": [32, 32, 32], "spacing_mm": [SPACING] * 3, "channels": [4, 8, 8, 8],
                   "epochs": 1, "batch_size": 4, "heatmap_sigma_mm": 8.0, "jitter_mm": 4.0},
    "fine": {"epochs": 1, "input_shape": [16, 16, 16], "spacing_mm": [1.0] * 3, "channels": [4, 8, 8, 8],
             "candidates": 3, "random_sites": 2, "sites_per_series": 3, "batch_size": 8, "box_mm": 24.0,
             "truth_jitter_mm": 3.0, "recentre_max_mm": 4.0, "fusion_grid": [0.0, 0.5],
             "supplements": []},  # not demo's supplement
    "train": {"device": "cpu", "threads": 1},
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("fine")
    data, cache = root / "data", root / "cache"
    generate_dataset(data, 10, seed=5, split="train", size="small", progress=False)
    precache_all(data, cache, workers=1, spacing=(SPACING,) * 3, progress=False)
    overrides = {**TINY, "data": {**TINY["data"], "root": str(data), "cache": str(cache),
                                  "index": str(root / "index.csv"), "folds_csv": str(root / "folds.csv")},
                 "train": {**TINY["train"], "out_dir": str(root / "runs")}}
    config = load_config("demo", overrides)
    fold_dir = root / "runs" / "tinyfine" / "fold0"
    train_fold(config, 0, fold_dir)
    summary = train_fine(config, 0, fold_dir, workers=1)
    return {"root": root, "data": data, "config": config, "fold_dir": fold_dir, "summary": summary}


def test_box_patches_equal_whole_stack_patches(tiny_run: dict) -> None:
    """What training cuts from a cached box is what the kernel cuts from the whole native stack."""
    series = sorted((tiny_run["data"] / "series").iterdir())[0]
    volume = canonicalise(read_series(series), None)
    centre = volume.affine[:3, 3] + volume.affine[:3, :3] @ (np.asarray(volume.array.shape) / 2.0)
    box = cut_box(volume.array, volume.affine, centre, 24.0)
    for shift in ([0, 0, 0], [2.7, -1.3, 0.4], [-2.9, 2.9, 2.9]):
        point = centre + np.asarray(shift)
        whole = crop_around(volume.array, volume.affine, point, (16, 16, 16), (1.0, 1.0, 1.0))[0]
        part = crop_around(box[0], box[1], point, (16, 16, 16), (1.0, 1.0, 1.0))[0]
        np.testing.assert_array_equal(whole, part)
    norm = lambda a: a * 2.0  # noqa: E731 - a stand-in normalisation, applied after sampling as in the kernel
    sample = site_sample(box, norm, centre, [centre + 1.0], tiny_run["config"]["fine"])
    np.testing.assert_allclose(sample["patch"], 2.0 * crop_around(volume.array, volume.affine, centre, (16, 16, 16),
                                                                  (1.0, 1.0, 1.0))[0])
    assert sample["label"] == 1.0 and sample["sphere"].sum() > 0


def test_fine_stage_writes_sites_boxes_model_and_summary(tiny_run: dict) -> None:
    fold_dir, summary = tiny_run["fold_dir"], tiny_run["summary"]
    sites = [json.loads(line) for line in (fold_dir / "fine_sites.jsonl").read_text().splitlines()]
    assert len(sites) == 10 and all(1 <= len(s["candidates"]) <= 3 and len(s["random"]) == 2 for s in sites)
    assert len(list((fold_dir / "fine_boxes").glob("*.npz"))) == 10
    assert (fold_dir / "fine.pt").is_file() and (fold_dir / "fine_oof.csv").is_file()
    assert summary["fusion_weight"] in (0.0, 0.5)
    assert set(summary["scores_by_weight"]) == {"0.0", "0.5"}
    # the site heatmap weight is chosen with the fusion weight: the summary's score is the best over the heat grid
    assert set(summary["scores_by_site_heatmap_weight"]) == {"0.0", "0.25", "0.5", "1.0", "2.0"}
    assert summary["site_heatmap_weight"] in (0.0, 0.25, 0.5, 1.0, 2.0)
    assert summary["validation"]["score"] == pytest.approx(max(summary["scores_by_site_heatmap_weight"].values()))
    by_heat = summary["scores_by_site_heatmap_weight"]
    assert by_heat[str(summary["site_heatmap_weight"])] == summary["validation"]["score"]
    assert 1.0 <= summary["candidates_per_series"] <= 3.0
    by_dome = summary["patch_auc_by_dome"]  # every validation aneurysm's patch, per band, against far candidates
    truth = load_truth(tiny_run["data"])
    n_val_aneurysms = sum(len(truth[u]["aneurysms"]) for u in pd.read_csv(fold_dir / "fine_oof.csv")[ID_COL])
    assert sum(v["aneurysms"] for k, v in by_dome.items() if k != "negatives") == n_val_aneurysms
    assert all(0.0 <= v["patch_auc"] <= 1.0 for k, v in by_dome.items() if k != "negatives")
    by_modality = summary["patch_auc_by_dome_modality"]  # the same sites, split by protocol
    assert sum(v["aneurysms"] for table in by_modality.values() for k, v in table.items() if k != "negatives") \
        == n_val_aneurysms
    if by_dome:
        assert sum(table["negatives"]["sites"] for table in by_modality.values() if table) \
            <= by_dome["negatives"]["sites"]
    by_candidate = summary["auc_present_by_candidate"]
    assert set(by_candidate) == {"fused", "coarse"} and set(by_candidate["fused"]) == {"found", "missed"}
    # validation scored the candidates where the kernel does: moved up to recentre_max_mm to the sphere map's maximum
    shift = summary["recentre_shift_mm"]
    assert 0.0 < shift["max"] <= 4.0 and shift["p50"] <= shift["p90"] <= shift["max"]
    assert set(summary["candidate_recall_scored"]) == set(summary["candidate_recall"])
    # the coarse-only row (weight 0) is the classifier's own out-of-fold answer
    oof = (fold_dir / "oof.csv").read_text()
    assert oof and summary["scores_by_weight"]["0.0"]["score"] == pytest.approx(
        json.loads((fold_dir / "summary.json").read_text())["validation"]["score"], abs=1e-9)


def test_boxes_are_stored_as_int16_only_when_that_keeps_every_value(tiny_run: dict) -> None:
    whole = np.array([[[-1024.0, 0.0], [3071.0, 12.0]]], dtype=np.float32)
    assert _stored(whole).dtype == np.int16 and np.array_equal(_stored(whole), whole)
    for kept in (whole + 0.5, whole * 20.0, np.zeros((0, 2, 2), np.float32)):  # a fraction, beyond int16, empty
        assert _stored(kept).dtype == np.float32
    boxes = BoxStore(tiny_run["fold_dir"], Path(tiny_run["config"]["data"]["cache"]), {})
    uid = sorted(p.stem for p in (tiny_run["fold_dir"] / "fine_boxes").glob("*.npz"))[0]
    stored, affine = boxes.boxes(uid)[0]
    array, same_affine = boxes.box(uid, 0)
    assert array.dtype == np.float32 and np.array_equal(array, stored) and same_affine is affine


def test_several_folds_share_one_box_pass(tiny_run: dict, tmp_path: Path) -> None:
    """``prepare_folds``: each fold's sites, then every series read once for both folds' boxes; each fold's boxes are
    the ones its own pass cuts, and its fine stage then finds them and quotes the shared pass's time."""
    config = tiny_run["config"]
    dirs = [tmp_path / "fold0", tmp_path / "fold1"]
    shutil.copytree(tiny_run["fold_dir"], dirs[0], ignore=shutil.ignore_patterns("fine*"))
    train_fold(config, 1, dirs[1])
    record = prepare_folds(config, [0, 1], dirs, workers=1)
    assert record["folds"] == [0, 1] and record["series_read"] == 10 and record["boxes_written"] == 20
    assert set(record["sites_s"]) == {"0", "1"} and record["boxes_s"] > 0
    ours = {json.loads(x)[ID_COL]: json.loads(x) for x in (dirs[0] / "fine_sites.jsonl").open()}
    theirs = {json.loads(x)[ID_COL]: json.loads(x) for x in (tiny_run["fold_dir"] / "fine_sites.jsonl").open()}
    assert ours == theirs
    for path in sorted((tiny_run["fold_dir"] / "fine_boxes").glob("*.npz")):
        with np.load(path) as a, np.load(dirs[0] / "fine_boxes" / path.name) as b:
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype
                                              for k in a.files)
    sites1 = {json.loads(x)[ID_COL]: json.loads(x) for x in (dirs[1] / "fine_sites.jsonl").open()}
    assert sites1.keys() == ours.keys() and any(sites1[u]["candidates"] != ours[u]["candidates"] for u in ours)
    records = {r.uid: r for r in records_from_index(pd.read_csv(config["data"]["index"]))}
    for uid, site in sites1.items():  # fold 1's own sites, a box (and its affine) for each
        with np.load(dirs[1] / "fine_boxes" / f"{uid}.npz") as one:
            assert len(one.files) == 2 * len(all_sites(site, [p for _, p in records[uid].points])[0])
    again = prepare_folds(config, [0, 1], dirs, workers=1)  # resumed: nothing to read, the counts kept
    assert again["series_read"] == 10 and again["boxes_written"] == 20
    (summary,) = train_fines(config, [1], dirs[1:], workers=1)
    assert summary["seconds"]["prepared"]["folds"] == [0, 1] and summary["fold"] == 1
    assert json.loads((dirs[1] / "fine_summary.json").read_text())["seconds"]["prepared"]["series_read"] == 10


def test_train_with_several_folds_trains_every_coarse_fold_before_the_shared_box_pass(
        tiny_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``train --fold 0 1``: both folds' locator and classifier first, then one box pass (each series read once),
    then each fold's fine stage."""
    from train_offline import train

    config = {**tiny_run["config"], "train": {**tiny_run["config"]["train"], "out_dir": str(tmp_path)}}
    monkeypatch.setattr(train, "load_config", lambda name, overrides: config)
    assert train.main(["--config", "tiny", "--fold", "0", "1"]) == 0
    dirs = [tmp_path / "tinyfine" / f"fold{k}" for k in (0, 1)]
    for d in dirs:
        prepared = json.loads((d / "fine_summary.json").read_text())["seconds"]["prepared"]
        assert prepared["folds"] == [0, 1] and prepared["series_read"] == 10 and prepared["boxes_written"] == 20
    first_site = min((d / "fine_sites.jsonl").stat().st_mtime_ns for d in dirs)
    assert max((d / "classifier.pt").stat().st_mtime_ns for d in dirs) < first_site


def test_auc_by_candidate_splits_positives_by_a_near_candidate() -> None:
    """Found: a candidate within the radius of one of the series' aneurysms; each split against every negative."""
    uids = ["a", "b", "c", "d", "e"]
    labels = np.array([1, 1, 1, 0, 0])
    scores = np.array([0.9, 0.2, 0.8, 0.5, 0.1])
    origin = np.zeros(3)
    domes = {"a": [Dome("x", origin, 3.0)], "b": [Dome("x", origin, 3.0)],
             "c": [Dome("x", origin + 40.0, 3.0), Dome("x", origin, 5.0)]}
    candidates = {"a": [[1.0, 0.0, 0.0]], "b": [[20.0, 0.0, 0.0]], "c": [[40.0, 47.0, 40.0]], "d": [], "e": []}
    out = auc_by_candidate(labels, scores, uids, domes, candidates, 6.0)
    assert out == {"found": {"positives": 1, "auc_present": 1.0}, "missed": {"positives": 2, "auc_present": 0.75}}
    candidates["c"] = [[40.0, 44.0, 40.0]]  # 4 mm from c's first aneurysm: found
    out = auc_by_candidate(labels, scores, uids, domes, candidates, 6.0)
    assert out["found"] == {"positives": 2, "auc_present": 1.0} and out["missed"]["positives"] == 1


def test_near_localizer_labels_points_within_the_radius_of_any_localizer() -> None:
    points = np.array([[0.0, 0.0, 0.0], [5.9, 0.0, 0.0], [0.0, 6.1, 0.0], [20.0, 20.0, 20.0]])
    localizers = [np.zeros(3), np.array([20.0, 20.0, 26.0])]
    assert near_localizer(points, localizers, 6.0).tolist() == [True, True, False, True]
    assert near_localizer(points, [], 6.0).tolist() == [False] * 4  # a negative series


def test_patch_auc_by_dome_ranks_each_bands_aneurysms_against_the_far_candidates() -> None:
    truth = [("< 3.5 mm", 0.2), ("< 3.5 mm", 0.6), (">= 6 mm", 0.9)]
    negatives = [0.1, 0.3, 0.5, 0.7]
    out = patch_auc_by_dome(truth, negatives)
    assert set(out) == {"< 3.5 mm", ">= 6 mm", "negatives"}  # bands without an aneurysm are left out
    # 0.2 beats 1 of 4 negatives, 0.6 beats 3 of 4: (1 + 3) / 8
    assert out["< 3.5 mm"] == {"aneurysms": 2, "patch_auc": 0.5, "median_p": pytest.approx(0.4)}
    assert out[">= 6 mm"]["patch_auc"] == 1.0
    assert out["negatives"] == {"sites": 4, "median_p": pytest.approx(0.4)}
    assert patch_auc_by_dome([], negatives) == {}  # real data: no sizes, no table


def test_truth_repeats_draw_each_localizer_more_often(tiny_run: dict) -> None:
    """``truth_repeats`` 2 puts every localizer twice into a series' draw; the epoch length is unchanged (3 draws a
    series: every tiny series has at least 3 other sites, so no draw is padded)."""
    fold_dir, config = tiny_run["fold_dir"], tiny_run["config"]
    sites = {json.loads(line)["SeriesInstanceUID"]: json.loads(line)
             for line in (fold_dir / "fine_sites.jsonl").read_text().splitlines()}
    records = {r.uid: r for r in records_from_index(pd.read_csv(config["data"]["index"]))}
    boxes = BoxStore(fold_dir, Path(config["data"]["cache"]), config["normalisation"])
    uids = sorted(sites)
    counts = {}
    for repeats in (1, 2):
        cfg = {**config["fine"], "sites_per_series": 3, "truth_repeats": repeats}
        dataset = FineDataset(sites, records, boxes, uids, cfg, seed=3)
        assert len(dataset.items) == len(dataset) == 3 * len(uids)
        counts[repeats] = sum(kind == "truth" for _, _, kind, _ in dataset.items)
    expected = sum(min(len(records[u].points), 3) for u in uids)
    assert expected > 0 and counts[1] == expected
    assert counts[2] == sum(min(2 * len(records[u].points), 3) for u in uids) > counts[1]


def test_augment_blur_smooths_the_patch_and_keeps_the_target() -> None:
    rng = np.random.default_rng(0)
    patch = rng.uniform(0.5, 1.5, (16, 16, 16)).astype(np.float32)  # positive: the gamma clip keeps it
    sphere = (rng.random((8, 8, 8)) > 0.9).astype(np.float32)
    sample = {"patch": patch, "sphere": sphere, "label": np.float32(1)}
    plain, blurred = [], []
    for seed in range(40):
        plain.append(augment(sample, np.random.default_rng(seed), 0.0)["patch"].std())
        out = augment(sample, np.random.default_rng(seed), 0.0, blur_voxels=2.0)
        blurred.append(out["patch"].std())
        assert out["sphere"].sum() == sphere.sum() and out["patch"].dtype == np.float32
    plain, blurred = np.array(plain), np.array(blurred)
    np.testing.assert_allclose(plain, patch.std(), rtol=1e-5)  # flips and transposes keep the values
    assert 10 <= (blurred < 0.9 * plain).sum() <= 30  # about half the patches are blurred, and then visibly


def test_resume_keeps_the_finished_stage(tiny_run: dict) -> None:
    fold_dir = tiny_run["fold_dir"]
    before = (fold_dir / "fine.pt").stat().st_mtime_ns
    again = train_fine(tiny_run["config"], 0, fold_dir, resume=True, workers=1)
    assert (fold_dir / "fine.pt").stat().st_mtime_ns == before
    assert again["scores_by_weight"] == tiny_run["summary"]["scores_by_weight"]


def test_rescore_validates_the_trained_model_again_from_validation_boxes_only(tiny_run: dict, tmp_path: Path) -> None:
    """``--rescore`` rewrites the summary of an unchanged fine.pt: same out-of-fold scores, the training's times
    and counts kept, sites found and boxes cut only for the validation series."""
    fold_dir = tmp_path / "fold0"
    shutil.copytree(tiny_run["fold_dir"], fold_dir,
                    ignore=shutil.ignore_patterns("fine_boxes", "fine_sites.jsonl", "fine_summary.json"))
    with pytest.raises(FileNotFoundError, match="fine.pt"):
        train_fine(tiny_run["config"], 0, tmp_path / "untrained", workers=1, rescore=True)
    earlier = tiny_run["summary"]
    (fold_dir / "fine_summary.json").write_text(json.dumps(earlier))
    weights = (fold_dir / "fine.pt").read_bytes()
    again = train_fine(tiny_run["config"], 0, fold_dir, workers=1, rescore=True)
    assert (fold_dir / "fine.pt").read_bytes() == weights
    assert again["validation"]["score"] == pytest.approx(earlier["validation"]["score"], abs=1e-6)
    assert again["seconds"] == earlier["seconds"] and again["rescore_seconds"] > 0
    val_uids = set(pd.read_csv(fold_dir / "fine_oof.csv")["SeriesInstanceUID"])
    assert {p.stem for p in (fold_dir / "fine_boxes").glob("*.npz")} == val_uids
    assert {json.loads(x)[ID_COL] for x in (fold_dir / "fine_sites.jsonl").open()} == val_uids
    assert again["n_train_series"] == earlier["n_train_series"] > 0
    assert json.loads((fold_dir / "fine_summary.json").read_text())["patch_auc_by_dome"] == again["patch_auc_by_dome"]


def test_recentring_off_scores_the_candidates_where_they_were_found(tiny_run: dict, tmp_path: Path) -> None:
    """``fine.recentre_max_mm: 0`` scores each candidate unmoved; a box too small for a patch moved that far is
    refused before anything runs (validation would score zeros where the kernel sees the scan)."""
    from train_offline.config import ConfigError

    fold_dir = tmp_path / "fold0"
    shutil.copytree(tiny_run["fold_dir"], fold_dir, ignore=shutil.ignore_patterns("fine_summary.json"))
    config = tiny_run["config"]
    off = train_fine({**config, "fine": {**config["fine"], "recentre_max_mm": 0.0}}, 0, fold_dir, workers=1,
                     rescore=True)
    assert off["recentre_shift_mm"]["max"] == 0.0 and off["candidate_recall_scored"] == off["candidate_recall"]
    assert off["candidate_recall"] == tiny_run["summary"]["candidate_recall"]  # the same sites, found again
    with pytest.raises(ConfigError, match="box_mm"):  # 7.5 mm half patch + 5 mm > 12 mm half box
        train_fine({**config, "fine": {**config["fine"], "recentre_max_mm": 5.0}}, 0, fold_dir, workers=1,
                   rescore=True)


def test_supplement_series_join_every_folds_training_only(tiny_run: dict, tmp_path: Path) -> None:
    """``fine.supplements``: training-only series (here a small-dome supplement) get sites and boxes and join the
    training set; validation is the same fold's; a supplement that repeats the training data is refused."""
    from train_offline.config import ConfigError

    extra, cache = tmp_path / "extra", tmp_path / "extra_cache"
    generate_dataset(extra, 3, seed=77, split="train", size="small", progress=False, dome_range=(2.0, 4.0),
                     segmentations=False)
    precache_all(extra, cache, workers=1, spacing=(SPACING,) * 3, progress=False)
    fold_dir = tmp_path / "fold0"  # the trained fold, its main series' sites and boxes kept
    shutil.copytree(tiny_run["fold_dir"], fold_dir, ignore=shutil.ignore_patterns("fine.pt", "fine_summary.json"))
    item = {"root": str(extra), "cache": str(cache), "index": str(tmp_path / "extra_index.csv")}
    config = {**tiny_run["config"], "fine": {**tiny_run["config"]["fine"], "supplements": [item]}}
    summary = train_fine(config, 0, fold_dir, workers=1)
    extra_uids = set(pd.read_csv(extra / "train.csv")[ID_COL])
    sites = {json.loads(x)[ID_COL] for x in (fold_dir / "fine_sites.jsonl").open()}
    assert len(sites) == 13 and extra_uids <= sites
    assert extra_uids <= {p.stem for p in (fold_dir / "fine_boxes").glob("*.npz")}
    assert summary["n_supplement_series"] == 3 and summary["supplements"] == [str(extra)]
    assert summary["n_train_series"] == tiny_run["summary"]["n_train_series"] + 3
    assert summary["n_val"] == tiny_run["summary"]["n_val"]
    assert not extra_uids & set(pd.read_csv(fold_dir / "fine_oof.csv")[ID_COL])
    assert (tmp_path / "extra_index.csv").is_file()  # built on first use
    main = {"root": str(tiny_run["data"]), "cache": config["data"]["cache"], "index": config["data"]["index"]}
    for bad, error in (([main], ValueError), ([{"root": str(extra)}], ConfigError)):
        with pytest.raises(error, match="supplements"):
            train_fine({**config, "fine": {**config["fine"], "supplements": bad}}, 0, fold_dir, workers=1)


def test_exported_ensemble_runs_the_fine_stage_in_the_kernel(tiny_run: dict, tmp_path: Path) -> None:
    from kernel.ensemble import Ensemble
    from kernel.preprocess import prepare_volume
    from train_offline.export import export_folds

    out = export_folds(tiny_run["root"] / "runs" / "tinyfine", tmp_path / "weights", rescore=False)
    manifest = load_manifest(out.parent)
    fine = manifest.models("fine")
    assert len(fine) == 1 and fine[0].candidates == 3
    assert fine[0].fusion_weight == tiny_run["summary"]["fusion_weight"]
    assert fine[0].site_heatmap_weight == tiny_run["summary"]["site_heatmap_weight"]
    assert fine[0].validation["oof_file"] == "oof_fine_f0.csv"
    fold_dir = tiny_run["root"] / "runs" / "tinyfine" / "fold0"
    assert (out.parent / "oof_fine_f0.csv").read_text() == (fold_dir / "fine_oof.csv").read_text()
    ensemble = Ensemble(manifest, providers=["CPUExecutionProvider"])
    assert ensemble.wants_native
    series = sorted((tiny_run["data"] / "series").iterdir())[1]
    volume = prepare_volume(series, manifest.volume_spacing_mm, keep_native=True)
    with_fine = ensemble.predict_volume(volume.array, volume.affine, volume.modality, native=volume.native)
    n = len(with_fine.candidates_lps)
    assert 1 <= n <= 3 and with_fine.candidates_lps.shape == (n, 3) and len(with_fine.candidate_locations) == n
    assert np.all((with_fine.candidate_probs > 0) & (with_fine.candidate_probs < 1))
    plain = ensemble.predict_volume(volume.array, volume.affine, volume.modality, recipe.Plan(candidates=0))
    assert with_fine.runs > plain.runs
    if fine[0].fusion_weight > 0:
        assert not np.allclose(with_fine.probs, plain.probs)
    else:
        np.testing.assert_allclose(with_fine.probs, plain.probs)


def test_predictor_fine_stage_is_the_same_with_the_isolated_reader(tiny_run: dict, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's Predictor with the read worker (fine patches sampled inside it, only they cross) gives the row,
    candidates and candidate probabilities of in-process reading."""
    from kernel.predict import Predictor
    from kernel.read_worker import ISOLATION_ENV
    from train_offline.export import export_folds

    weights = export_folds(tiny_run["root"] / "runs" / "tinyfine", tmp_path / "weights", rescore=False).parent
    series = sorted((tiny_run["data"] / "series").iterdir())[:3]
    outs = {}
    for isolated in ("1", "0"):
        monkeypatch.setenv(ISOLATION_ENV, isolated)
        predictor = Predictor(str(weights), providers=["CPUExecutionProvider"])
        predictor.keep_last = True
        rows = []
        for path in series:
            frame, record = predictor.predict(str(path))
            assert record.level == "full", record
            rows.append((frame.to_numpy()[0], predictor.last[2]))
        assert (predictor.reader.last.outcome == "ok") == (isolated == "1")
        assert isolated == "0" or predictor.last[1].native.array is None  # the stack stayed in the worker
        predictor.reader.close()
        outs[isolated] = rows
    assert sum(len(out.candidates_lps) for _, out in outs["1"]) > 0
    for (row_w, out_w), (row_p, out_p) in zip(outs["1"], outs["0"], strict=True):
        np.testing.assert_allclose(row_w, row_p, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(out_w.candidates_lps, out_p.candidates_lps, atol=1e-6)
        np.testing.assert_allclose(out_w.candidate_probs, out_p.candidate_probs, rtol=1e-6, atol=1e-7)


def test_full_configs_fine_stage_runs_at_tiny_shapes(tiny_run: dict, tmp_path: Path) -> None:
    """``full``'s fine section (0.45 mm, 36 mm boxes, its jitters and radii) with only shapes, widths and epochs
    shrunk, on the tiny fold's locator and classifier."""
    import shutil

    full = load_config("full")["fine"]
    shrink = {"input_shape": [16, 16, 16], "channels": [4, 8, 8, 8], "epochs": 1, "sites_per_series": 3,
              "candidates": 3, "batch_size": 8, "fusion_grid": [0.0, 0.5]}
    config = {**tiny_run["config"], "fine": {**full, **shrink}}
    fold_dir = tmp_path / "fold0"
    fold_dir.mkdir()
    for name in ("locator.pt", "classifier.pt", "summary.json", "config.yaml"):
        shutil.copy(tiny_run["fold_dir"] / name, fold_dir / name)
    summary = train_fine(config, 0, fold_dir, workers=1)
    assert summary["config"]["spacing_mm"] == [0.45, 0.45, 0.45] == full["spacing_mm"]
    assert summary["config"]["box_mm"] == full["box_mm"] and (fold_dir / "fine.pt").is_file()
    assert {k for k in full if summary["config"][k] != full[k]} == set(shrink)


def test_fine_stage_on_an_exported_folds_coarse_models(tiny_run: dict, tmp_path: Path) -> None:
    """``--coarse WEIGHTS``: the sites come from the exported locator and classifier through onnxruntime and equal
    the checkpoints' sites; ``export --keep`` then adds the fine model to the kept fold, and refuses a fine stage whose
    coarse models the kept export does not hold."""
    import shutil

    import pandas as pd

    from train_offline.config import load_saved_config
    from train_offline.export import ExportError, export_folds

    weights = export_folds(tiny_run["fold_dir"], tmp_path / "w1", rescore=False).parent
    exported = load_manifest(weights)
    specs = {s.role: s for s in exported.models("locator") + exported.models("classifier")}
    fold_dir = tmp_path / "runs" / "fold0"
    summary = train_fine(tiny_run["config"], 0, fold_dir, workers=1, coarse=weights)
    assert not (fold_dir / "classifier.pt").exists()
    assert load_saved_config(fold_dir / "config.yaml")["fine"] == tiny_run["config"]["fine"]
    assert {r: summary["coarse"][r]["sha256"] for r in specs} == {r: s.sha256 for r, s in specs.items()}
    ours = {json.loads(x)["SeriesInstanceUID"]: json.loads(x) for x in (fold_dir / "fine_sites.jsonl").open()}
    theirs = {json.loads(x)["SeriesInstanceUID"]: json.loads(x)
              for x in (tiny_run["fold_dir"] / "fine_sites.jsonl").open()}
    assert ours.keys() == theirs.keys()
    for uid, site in ours.items():  # onnxruntime vs torch: the same centres, candidates and probabilities
        np.testing.assert_allclose(site["centre"], theirs[uid]["centre"], atol=1e-2)
        np.testing.assert_allclose(site["candidates"], theirs[uid]["candidates"], atol=1e-2)
        np.testing.assert_allclose(site["probs"], theirs[uid]["probs"], atol=1e-3)
        np.testing.assert_allclose(site["random"], theirs[uid]["random"], atol=1e-2)
    assert summary["scores_by_weight"]["0.0"]["score"] == pytest.approx(
        tiny_run["summary"]["scores_by_weight"]["0.0"]["score"], abs=2e-3)

    merged = export_folds(tmp_path / "runs", tmp_path / "w2", rescore=False, keep=weights).parent
    models = load_manifest(merged)
    for role, spec in specs.items():
        assert [s.sha256 for s in models.models(role)] == [spec.sha256]
    (fine,) = models.models("fine")
    assert fine.fold == 0 and fine.fusion_weight == summary["fusion_weight"]
    assert fine.validation["score"] == pytest.approx(summary["validation"]["score"])
    assert (merged / "oof_fine_f0.csv").read_text() == (fold_dir / "fine_oof.csv").read_text()

    with pytest.raises(ExportError, match="--keep"):
        export_folds(tmp_path / "runs", tmp_path / "w3", rescore=False)
    bad = tmp_path / "bad" / "fold0"
    shutil.copytree(fold_dir, bad, ignore=shutil.ignore_patterns("fine_boxes"))
    record = json.loads((bad / "fine_summary.json").read_text())
    record["coarse"]["classifier"]["sha256"] = "0" * 64
    (bad / "fine_summary.json").write_text(json.dumps(record))
    with pytest.raises(ExportError, match="does not hold"):
        export_folds(bad.parent, tmp_path / "w4", rescore=False, keep=weights)
    # an export validated on other series than this fold's is refused (its training series would leak)
    oof = pd.read_csv(weights / "oof_classifier_f0.csv")
    oof.iloc[1:].to_csv(weights / "oof_classifier_f0.csv", index=False)
    with pytest.raises(ValueError, match="validated on"):
        train_fine(tiny_run["config"], 0, tmp_path / "other", workers=1, coarse=weights)


def test_retune_rechooses_the_fusion_pair_from_dicom_and_keeps_the_models(tiny_run: dict, tmp_path: Path) -> None:
    """``train_offline.retune`` on an export: the fold's validation series through the kernel from DICOM, the best
    (fusion, site heatmap) pair written into the fine entry, the out-of-fold rows rewritten, the models unchanged.

    The kept sites are the kernel's own: fused again at the export's pair they give the kernel's row, and the pair
    chosen is the grid's best by the metric, computed here independently of the retune's choice."""
    from kernel.jsonl import read_jsonl_by
    from kernel.metric import score_arrays
    from train_offline.export import export_folds
    from train_offline.retune import main as retune

    weights = export_folds(tiny_run["root"] / "runs" / "tinyfine", tmp_path / "weights", rescore=False).parent
    before = load_manifest(weights)
    fine0 = before.models("fine")[0]
    shipped_oof = pd.read_csv(weights / "oof_fine_f0.csv")
    grid = {"fusion": [0.0, 0.5, 1.0], "heat": [0.0, 0.5, 2.0]}
    assert retune(["--weights", str(weights), "--data", str(tiny_run["data"]), "--work", str(tmp_path / "work"),
                   "--heatmap-grid", *map(str, grid["heat"]), "--fusion-grid", *map(str, grid["fusion"])]) == 0
    after = load_manifest(weights)
    roles = ("locator", "classifier", "fine")
    assert [m.sha256 for r in roles for m in after.models(r)] == [m.sha256 for r in roles for m in before.models(r)]
    fine = after.models("fine")[0]
    assert fine.validation["before_retune"]["fusion_weight"] == fine0.fusion_weight
    by_heat = fine.validation["retune"]["best_score_by_site_heatmap_weight"]  # the grid the pooled choice was made on
    assert set(by_heat) == {"0.0", "0.5", "2.0"} and max(by_heat.values()) == pytest.approx(fine.validation["score"])
    records = read_jsonl_by(tmp_path / "work" / "fold0.jsonl", ID_COL)
    oof = pd.read_csv(weights / "oof_fine_f0.csv")
    uids = oof[ID_COL].tolist()
    assert uids == shipped_oof[ID_COL].tolist()  # the fold's validation series, in order
    for uid in uids:  # the kept sites re-fused at the export's own pair are the kernel's row for that series
        r = records[uid]
        np.testing.assert_allclose(recipe.fuse(r["probs"], r["channel_logits"], r["site_probs"], fine0.fusion_weight,
                                               fine0.site_heatmap_weight), r["fused_probs"], rtol=1e-9, atol=1e-12)
    labels = pd.read_csv(tiny_run["data"] / "train.csv", dtype={ID_COL: str}).set_index(ID_COL).loc[uids, LABEL_COLS]
    scores = {}
    for w in grid["fusion"]:
        for h in grid["heat"]:
            rows = np.stack([recipe.fuse(records[u]["probs"], records[u]["channel_logits"], records[u]["site_probs"],
                                         w, h) for u in uids])
            defined = [c for c in LABEL_COLS if labels[c].nunique() == 2]
            idx = [LABEL_COLS.index(c) for c in defined]
            scores[(w, h)] = score_arrays(labels[defined].to_numpy(float), rows[:, idx], defined)
    best = max(scores.values())
    assert scores[(fine.fusion_weight, fine.site_heatmap_weight)] == pytest.approx(best, abs=1e-12)
    assert fine.validation["score"] == pytest.approx(best, abs=1e-12)
    np.testing.assert_allclose(oof[LABEL_COLS].to_numpy(float),
                               np.stack([recipe.fuse(records[u]["probs"], records[u]["channel_logits"],
                                                     records[u]["site_probs"], fine.fusion_weight,
                                                     fine.site_heatmap_weight) for u in uids]), rtol=1e-9)
    # a second run reads the kept sites back instead of computing them again
    mtime = (tmp_path / "work" / "fold0.jsonl").stat().st_mtime_ns
    assert retune(["--weights", str(weights), "--data", str(tiny_run["data"]), "--work", str(tmp_path / "work"),
                   "--dry-run"]) == 0
    assert (tmp_path / "work" / "fold0.jsonl").stat().st_mtime_ns == mtime


def test_best_pair_prefers_the_score_then_the_smaller_heat_then_fusion_weight() -> None:
    from train_offline.fusion import best_pair

    assert best_pair({(0.5, 0.0): 0.80, (0.75, 1.0): 0.85, (0.25, 2.0): 0.84}) == (0.75, 1.0)
    assert best_pair({(0.75, 1.0): 0.85, (0.5, 0.5): 0.85, (0.25, 0.5): 0.85}) == (0.25, 0.5)
