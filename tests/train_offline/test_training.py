"""Training pieces: configs, index and folds on bad and good CSVs, flip label swaps, kernel-identical inputs,
and a tiny end-to-end run (train, resume, export, onnxruntime re-score) plus DDP with 2 gloo processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from kernel.labels import ID_COL, LOCATION_COLS, MODALITY_NAMES, SEG_LABEL_VALUES
from kernel.manifest import load_manifest
from kernel.preprocess import voxel_to_world
from kernel.recipe import locator_base, locator_input
from testkit.training_data import canonical_affine, write_training_set
from train_offline import folds as folds_mod
from train_offline import index as index_mod
from train_offline.config import ConfigError, load_config
from train_offline.data import (
    SEG_FLIP,
    ClassifierDataset,
    SeriesRecord,
    SeriesStore,
    classifier_sample,
    flip_sample,
    localizers_in_crop,
    locator_sample,
    records_from_index,
)
from train_offline.models import build_classifier

REPO = Path(__file__).resolve().parents[2]
SPACING = 4.0
SHAPE = (40, 40, 40)  # 160 mm cube at 4 mm
# Canonical affine: z -> superior, y -> posterior, x -> patient left; centred on the LPS origin.
AFFINE = canonical_affine(SPACING, SHAPE)
TINY = {
    "name": "tiny",
    "data": {"n_folds": 3},
    "volume_spacing_mm": [SPACING] * 3,
    "locator": {"input_shape": [16, 16, 16], "spacing_mm": [8.0] * 3, "output_stride": 2, "channels": [4, 8],
                "epochs": 2, "batch_size": 4, "sigma_mm": 12.0},
    "classifier": {"input_shape": [32, 32, 32], "spacing_mm": [SPACING] * 3, "channels": [4, 8, 8, 8],
                   "epochs": 2, "batch_size": 4, "heatmap_sigma_mm": 8.0, "jitter_mm": 4.0},
    "train": {"device": "cpu", "threads": 1},
}


def _write_dataset(root: Path, n: int = 15, seed: int = 0) -> tuple[Path, Path]:
    """Cached 4 mm CT volumes with a bright blob at each aneurysm, train.csv, localizers, a few segmentations."""
    return write_training_set(root, n=n, seed=seed, spacing=SPACING, shape=SHAPE)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _write_dataset(tmp_path_factory.mktemp("train"))


# --- configs -------------------------------------------------------------------------------------------------------


def test_config_inheritance_and_rejections(tmp_path: Path) -> None:
    demo = load_config("demo")
    assert demo["name"] == "demo" and demo["normalisation"] == {"CT": "ct_angio", "MR": "mr_percentile"}
    assert load_config("full")["train"]["amp"] is True
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nclassifier: {epochs: 3}\n")
    (tmp_path / "parent.yaml").write_text("name: parent\nclassifier: {epochs: 7, lr: 0.01}\n")
    child = load_config(tmp_path / "child.yaml")
    assert child["classifier"]["epochs"] == 3 and child["classifier"]["lr"] == 0.01 and child["name"] == "parent"
    (tmp_path / "typo.yaml").write_text("classifier: {epoch: 3}\n")
    with pytest.raises(ConfigError, match="unknown key classifier.epoch"):
        load_config(tmp_path / "typo.yaml")
    (tmp_path / "abs.yaml").write_text("data: {root: /mnt/data}\n")
    with pytest.raises(ConfigError, match="relative path"):
        load_config(tmp_path / "abs.yaml")
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(tmp_path / "loop.yaml")
    with pytest.raises(ConfigError, match="known configs"):
        load_config("no_such_config")


# --- index and folds -----------------------------------------------------------------------------------------------


def test_parse_coordinates() -> None:
    assert index_mod.parse_coordinates("{'x': 258.36, 'y': 261.36}") == (258.36, 261.36, 0)
    assert index_mod.parse_coordinates("{'x': 1, 'y': 2, 'f': 4}") == (1.0, 2.0, 4)
    for bad in ("{'x': 1}", "[1, 2]", "__import__('os')", "{'x': 'a', 'y': 1}", "{'x': 1, 'y': 2, 'f': -1}"):
        with pytest.raises(ValueError):
            index_mod.parse_coordinates(bad)


def test_index_maps_localizers_and_centres(dataset: tuple[Path, Path]) -> None:
    data, cache = dataset
    index = index_mod.build_index(data, cache, progress=False)
    assert len(index) == 15 and index["n_localizers"].sum() == 8
    row = index.iloc[0]
    point = json.loads(row["localizers"])[0]
    loc = pd.read_csv(data / "train_localizers.csv").iloc[0]
    coords = index_mod.parse_coordinates(loc["coordinates"])
    z = int(loc["SOPInstanceUID"].rsplit(".", 1)[1])
    assert np.allclose(point["voxel"], [z, coords[1], coords[0]], atol=1e-6)  # canonical == native here
    assert np.allclose(point["lps"], voxel_to_world(AFFINE, [[z, coords[1], coords[0]]])[0], atol=1e-3)
    centre = json.loads(row["centre_lps"])  # series 0 has a segmentation
    assert centre is not None and json.loads(index.iloc[1]["centre_lps"]) is None
    records = records_from_index(index)
    assert records[0].centre_lps is not None and records[0].points[0][0] == LOCATION_COLS.index(point["location"])


@pytest.mark.parametrize("mutate, message", [
    (lambda t, lo: t.drop(columns="Basilar Tip"), "missing column.*Basilar Tip"),
    (lambda t, lo: t.assign(**{"Aneurysm Present": [np.nan] + [0] * (len(t) - 1)}), "Aneurysm Present"),
    (lambda t, lo: (lo.__setitem__("coordinates", ["{'x': 1,"] * len(lo)), t)[1], "not a dict literal"),
    (lambda t, lo: (lo.__setitem__("SOPInstanceUID", ["9.9.9"] * len(lo)), t)[1], "9.9.9"),
])
def test_index_cli_bad_csvs_exit_2_without_traceback(dataset: tuple[Path, Path], tmp_path: Path, mutate,
                                                     message: str) -> None:
    data, cache = dataset
    bad = tmp_path / "bad"
    bad.mkdir()
    train = pd.read_csv(data / "train.csv", dtype={ID_COL: str})
    loc = pd.read_csv(data / "train_localizers.csv", dtype={ID_COL: str})
    mutate(train, loc).to_csv(bad / "train.csv", index=False)
    loc.to_csv(bad / "train_localizers.csv", index=False)
    proc = subprocess.run([sys.executable, "-m", "train_offline.index", "--data", str(bad), "--cache", str(cache),
                           "--out", str(tmp_path / "i.csv"), "--no-progress"], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert re.search(message, proc.stderr), proc.stderr


def test_folds_group_patients_and_cover_locations() -> None:
    rng = np.random.default_rng(1)
    n = 300
    frame = pd.DataFrame({ID_COL: [f"s{i}" for i in range(n)], "patient": [f"p{i // 3}" for i in range(n)],
                          "Modality": rng.choice(MODALITY_NAMES, n)})
    for j, col in enumerate(LOCATION_COLS):
        frame[col] = 0
        patients = rng.choice(n // 3, 6 if j else 3, replace=False)  # the first location: 3 positive patients only
        frame.loc[patients * 3 + rng.integers(0, 3, len(patients)), col] = 1
    frame["Aneurysm Present"] = frame[LOCATION_COLS].max(axis=1)
    folds = folds_mod.make_folds(frame, 5, seed=0)
    merged = frame.merge(folds, on=ID_COL)
    assert merged.groupby("patient")["fold"].nunique().max() == 1  # a patient never spans folds
    table, gaps = folds_mod.fold_report(frame, folds)
    assert len(gaps) == 1 and gaps[0].startswith(LOCATION_COLS[0])  # 3 positive series cannot cover 5 folds
    assert (table[LOCATION_COLS[1:]] > 0).all().all()
    assert table["series"].max() - table["series"].min() <= 9


# --- samples: kernel-identical inputs and flips -------------------------------------------------------------------


def test_locator_sample_is_the_kernel_input_with_a_target_at_the_centre() -> None:
    """Unshifted, the sample is the kernel's locator input; a shift of one input voxel moves the content by one voxel;
    the target is a normalised Gaussian whose peak cell holds the Circle-of-Willis centre."""
    rng = np.random.default_rng(0)
    array = rng.random((50, 44, 36), dtype=np.float32)
    cfg = {"input_shape": [16, 16, 16], "spacing_mm": [8.0] * 3, "output_stride": 2, "sigma_mm": 10.0}
    base = locator_base(array, AFFINE, cfg["spacing_mm"])
    centre = base[2] + np.array([10.0, -5.0, 3.0])
    inp, inp_affine, target = locator_sample(base, cfg, centre)
    expected, expected_affine = locator_input(array, AFFINE, cfg["input_shape"], cfg["spacing_mm"])
    np.testing.assert_array_equal(inp, expected)
    np.testing.assert_allclose(inp_affine, expected_affine)
    assert target.shape == (8, 8, 8) and target.sum() == pytest.approx(1.0, abs=1e-5)
    peak = np.array(np.unravel_index(int(np.argmax(target)), target.shape))
    peak_lps = voxel_to_world(inp_affine, ((peak + 0.5) * cfg["output_stride"] - 0.5)[None])[0]
    assert np.all(np.abs(peak_lps - centre) <= cfg["output_stride"] * 8.0 / 2 + 1e-6)
    step = voxel_to_world(base[1], [[1.0, 0.0, 0.0]])[0] - voxel_to_world(base[1], [[0.0, 0.0, 0.0]])[0]
    moved, _, _ = locator_sample(base, cfg, centre, shift_lps=step)  # one input voxel along array axis z
    np.testing.assert_array_equal(moved[:-1], inp[1:])


def test_flip_swaps_labels_heatmaps_and_vessel_values() -> None:
    rng = np.random.default_rng(0)
    array = rng.random(SHAPE, dtype=np.float32)
    left_mca = LOCATION_COLS.index("Left Middle Cerebral Artery")
    right_mca = LOCATION_COLS.index("Right Middle Cerebral Artery")
    centre = voxel_to_world(AFFINE, [[20, 20, 20]])[0]
    point = centre + np.array([20.0, 0.0, 0.0])  # +x in LPS: the patient's left
    labels = np.zeros(14, np.float32)
    labels[[left_mca, 13]] = 1
    record = SeriesRecord("u", labels, 0, [(left_mca, point)], None, "")
    seg = np.zeros(SHAPE, np.uint8)
    seg[18:23, 18:23, 23:28] = SEG_LABEL_VALUES["Left Middle Cerebral Artery"]  # a vessel on the left
    sample = classifier_sample(array, AFFINE, centre, {"input_shape": [16, 16, 16], "spacing_mm": [SPACING] * 3,
                                                       "heatmap_sigma_mm": 4.0}, record, (seg, AFFINE))
    flipped = flip_sample(sample)
    assert flipped["labels"][right_mca] == 1 and flipped["labels"][left_mca] == 0 and flipped["labels"][13] == 1
    peak = np.unravel_index(np.argmax(sample["heatmap"][left_mca]), sample["heatmap"].shape[1:])
    assert peak[2] > 2  # the left-side point sits at high x in the crop
    flipped_peak = np.unravel_index(np.argmax(flipped["heatmap"][right_mca]), flipped["heatmap"].shape[1:])
    assert flipped_peak == (peak[0], peak[1], sample["heatmap"].shape[3] - 1 - peak[2])
    assert flipped["heatmap"][left_mca].max() == 0
    np.testing.assert_array_equal(flipped["crop"], sample["crop"][..., ::-1])
    assert SEG_LABEL_VALUES["Left Middle Cerebral Artery"] in sample["seg"]
    assert SEG_LABEL_VALUES["Right Middle Cerebral Artery"] in flipped["seg"]
    twice = flip_sample(flipped)
    for key in ("crop", "labels", "heatmap", "seg"):
        np.testing.assert_array_equal(twice[key], sample[key])
    assert sorted(SEG_FLIP.tolist()) == list(range(14)) and SEG_FLIP[0] == 0


def test_localizers_in_crop_counts_points_inside_the_shifted_box() -> None:
    """The crop is a 64 x 32 x 32 mm LPS box (x, y, z half-sizes 32, 16, 16) around centre + offset."""
    cfg = {"input_shape": [16, 16, 32], "spacing_mm": [2.0, 2.0, 2.0], "centre_offset_lps_mm": [0.0, 0.0, -10.0]}
    mca, basilar = LOCATION_COLS.index("Left Middle Cerebral Artery"), LOCATION_COLS.index("Basilar Tip")
    centre = np.array([10.0, 20.0, 30.0])
    points = [(mca, centre + [30.0, 0.0, 0.0]),  # inside: 30 <= 32 mm to the left
              (mca, centre + [-34.0, 0.0, 0.0]),  # outside in x
              (basilar, centre + [0.0, 0.0, -25.0]),  # inside only because the box moved 10 mm down
              (basilar, centre + [0.0, 0.0, 8.0])]  # outside: 18 mm above the moved box's centre
    record = SeriesRecord("u", np.zeros(14, np.float32), 0, points, None, "")
    coverage = localizers_in_crop([record], {"u": centre}, cfg)
    assert coverage["all"] == 0.5
    assert coverage["Left Middle Cerebral Artery"] == 0.5 and coverage["Basilar Tip"] == 0.5
    no_offset = localizers_in_crop([record], {"u": centre}, {**cfg, "centre_offset_lps_mm": [0.0, 0.0, 0.0]})
    assert no_offset["Basilar Tip"] == 0.5 and no_offset["all"] == 0.5  # now the point above is in, below is out
    assert localizers_in_crop([record], {}, cfg)["all"] != localizers_in_crop([record], {}, cfg)["all"]  # NaN


def test_classifier_outputs_and_flip_equivariance_of_shapes() -> None:
    model = build_classifier({"input_shape": [32, 32, 32], "channels": [4, 8, 8, 8], "dropout": 0.0}).eval()
    out = model(torch.zeros(2, 1, 32, 32, 32))
    assert out["logits"].shape == (2, 14) and out["modality_logits"].shape == (2, 4)
    assert out["heatmap"].shape == (2, 13, 8, 8, 8) and out["seg"].shape == (2, 14, 8, 8, 8)


def test_channels_last_layout_changes_speed_not_arithmetic() -> None:
    """``train.channels_last`` only changes the memory layout: same outputs and gradients as the default layout,
    and inference inputs follow the model's layout."""
    from train_offline.loop import format_of, memory_format
    from train_offline.losses import classifier_loss

    cfg = {"input_shape": [32, 32, 32], "channels": [4, 8, 8, 8], "dropout": 0.0, "heatmap_weight": 1.0,
           "seg_weight": 0.5, "modality_weight": 0.2, "pos_weight_present": 1.0}
    torch.manual_seed(0)
    plain = build_classifier(cfg)
    last = build_classifier(cfg)
    last.load_state_dict(plain.state_dict())
    last.to(memory_format=memory_format(True))
    assert format_of(plain) == torch.contiguous_format and format_of(last) == torch.channels_last_3d
    crop = torch.randn(2, 1, 32, 32, 32)
    batch = {"labels": torch.zeros(2, 14), "heatmap": torch.zeros(2, 13, 8, 8, 8),
             "seg": torch.randint(0, 14, (2, 8, 8, 8)), "modality": torch.tensor([0, 2])}
    batch["labels"][0, [3, 13]] = 1.0
    batch["heatmap"][0, 3, 4, 4, 4] = 1.0
    losses = []
    for model, fmt in ((plain, torch.contiguous_format), (last, torch.channels_last_3d)):
        loss, _ = classifier_loss(model(crop.contiguous(memory_format=fmt)), batch, cfg)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    for (name, a), b in zip(plain.named_parameters(), last.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-5), name


@pytest.mark.parametrize("crop_spacing", [SPACING, 3.0])
def test_regions_store_gives_the_crops_of_whole_volumes(dataset: tuple[Path, Path], crop_spacing: float) -> None:
    """preload=regions keeps only a box around each centre, yet every jittered, flipped crop is bit-identical."""
    data, cache = dataset
    records = [SeriesRecord(uid=f"1.2.3.{i}", labels=np.zeros(14, np.float32), modality=0, points=[],
                            centre_lps=None, seg_file="") for i in range(6)]
    cfg = {**load_config("demo")["classifier"], "input_shape": [16, 16, 16], "spacing_mm": [crop_spacing] * 3,
           "jitter_mm": 6.0, "centre_offset_lps_mm": [0.0, 4.0, -8.0]}
    rng = np.random.default_rng(3)
    centres = {r.uid: rng.uniform(-60, 60, 3) for r in records}  # some crops reach outside the volume
    uids = [r.uid for r in records]
    whole = SeriesStore(cache, data, records, {"CT": "ct_angio", "MR": "mr_percentile"}, preload="volumes")
    regions = SeriesStore(cache, data, records, {"CT": "ct_angio", "MR": "mr_percentile"}, preload="regions")
    for uid in uids:
        regions.keep_region(uid, *whole.volume(uid), centres[uid], cfg)
    for uid in uids:
        assert regions.region(uid)[0].size < 0.4 * whole.region(uid)[0].size
        assert regions.volume(uid)[0].shape == SHAPE  # the locator still sees the whole head
    for epoch in range(3):
        a = ClassifierDataset(whole, uids, centres, cfg, train=True, seed=1)
        b = ClassifierDataset(regions, uids, centres, cfg, train=True, seed=1)
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for i in range(len(uids)):
            x, y = a[i], b[i]
            for key in x:
                assert torch.equal(x[key], y[key]), (epoch, i, key)
    with pytest.raises(ValueError, match="data.preload"):
        SeriesStore(cache, data, records, {"CT": "ct_angio", "MR": "mr_percentile"}, preload="crops")


# --- end to end --------------------------------------------------------------------------------------------------


def _tiny_config(tmp_path: Path, dataset: tuple[Path, Path]) -> list[str]:
    data, cache = dataset
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return ["--config", str(tmp_path / "tiny.yaml"), "--set", f"data.root={data}", f"data.cache={cache}",
            f"data.index={tmp_path / 'index.csv'}", f"data.folds_csv={tmp_path / 'folds.csv'}"]


def test_train_resume_export_rescore(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    from train_offline import export, train

    args = _tiny_config(tmp_path, dataset)
    out = tmp_path / "run" / "fold0"
    assert train.main([*args[:2], "--fold", "0", "--out", str(out), *args[2:], "classifier.val_every=2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_train"] + summary["n_val"] == 15 and len(summary["label_priors"]) == 14
    assert summary["validation"]["score"] is not None and 0.0 <= summary["validation"]["score"] <= 1.0
    for name in ("locator.pt", "classifier.pt", "oof.csv", "learning_curves.png", "roc_curves.png", "config.yaml"):
        assert (out / name).is_file(), name
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in lines] == [("locator", 0), ("locator", 1), ("classifier", 0),
                                                          ("classifier", 1)]
    # val_every=2: the first classifier epoch is not validated, the last always is.
    assert "val_score" not in lines[2] and "val_score" in lines[3]
    # Resume with more classifier epochs: continues after epoch 1, the locator is reused.
    more = [*args, "classifier.epochs=3"]
    assert train.main([*more[:2], "--fold", "0", "--out", str(out), "--resume", *more[2:]]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in lines][-1] == ("classifier", 2) and len(lines) == 5
    weights = tmp_path / "weights"
    assert export.main(["--run", str(tmp_path / "run"), "--out", str(weights)]) == 0
    manifest = json.loads((weights / "manifest.json").read_text())
    cls = manifest["models"][1]
    assert cls["validation"]["score_onnx"] == pytest.approx(json.loads((out / "summary.json").read_text())
                                                            ["validation"]["score"], abs=1e-3)
    assert manifest["volume_spacing_mm"] == [SPACING] * 3
    assert manifest["label_priors"] == pytest.approx(summary["label_priors"])
    assert cls["validation"]["label_priors"] == pytest.approx(summary["label_priors"])
    assert cls["validation"]["oof_file"] == "oof_classifier_f0.csv"
    assert (weights / "oof_classifier_f0.csv").read_text() == (out / "oof.csv").read_text()

    # An ensemble across sessions: a later run holds only fold 1; --keep carries fold 0 over from the first export.
    later = tmp_path / "later" / "fold1"
    shutil.copytree(out, later)
    other_priors = [0.5] * 14
    (later / "summary.json").write_text(json.dumps({**json.loads((out / "summary.json").read_text()), "fold": 1,
                                                    "label_priors": other_priors}))
    merged = tmp_path / "merged"
    assert export.main(["--run", str(later.parent), "--keep", str(weights), "--out", str(merged), "--no-rescore"]) == 0
    both = load_manifest(merged)
    assert [(m.role, m.fold) for m in both.models("classifier")] == [("classifier", 0), ("classifier", 1)]
    assert {m.fold for m in both.models("locator")} == {0, 1}
    assert (merged / "classifier_f0.onnx").read_bytes() == (weights / "classifier_f0.onnx").read_bytes()
    # each fold's out-of-fold file: the kept one carried over, the run's own written; pooled they score every series
    assert (merged / "oof_classifier_f0.csv").read_bytes() == (weights / "oof_classifier_f0.csv").read_bytes()
    assert [m.validation["oof_file"] for m in both.models("classifier")] == ["oof_classifier_f0.csv",
                                                                            "oof_classifier_f1.csv"]
    assert both.label_priors == pytest.approx(np.mean([summary["label_priors"], other_priors], axis=0))
    assert export.main(["--run", str(tmp_path / "run"), "--keep", str(weights), "--out", str(tmp_path / "x"),
                        "--no-rescore"]) == 2  # every kept fold is in the run: nothing to keep
    config = yaml.safe_load((later / "config.yaml").read_text())
    (later / "config.yaml").write_text(yaml.safe_dump({**config, "volume_spacing_mm": [2.0, 2.0, 2.0]}))
    assert export.main(["--run", str(later.parent), "--keep", str(weights), "--out", str(tmp_path / "y"),
                        "--no-rescore"]) == 2  # another volume spacing is another recipe


def test_torchrun_two_gloo_processes(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    args = _tiny_config(tmp_path, dataset)
    out = tmp_path / "ddp" / "fold1"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "-m", "train_offline.train", *args[:2], "--fold", "1", "--out", str(out), *args[2:], "data.preload=regions"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["validation"]["n_series"] == summary["n_val"]


def test_heatmap_focal_loss_rewards_hits_and_punishes_false_peaks() -> None:
    from train_offline.losses import heatmap_focal_loss

    target = torch.zeros(2, 13, 6, 6, 6)
    target[0, 3, 2, 2, 2] = 0.9
    logits = torch.full_like(target, -4.0)
    base = heatmap_focal_loss(logits, target)
    hit = logits.clone()
    hit[0, 3, 2, 2, 2] = 3.0
    false_peak = hit.clone()
    false_peak[1, 5, 4, 4, 4] = 3.0
    assert heatmap_focal_loss(hit, target) < 0.1 * base
    assert heatmap_focal_loss(false_peak, target) > heatmap_focal_loss(hit, target) + 1.0
