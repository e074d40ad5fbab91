"""The ``full`` config (real data, GPUs) trains end to end: shrunk on the CLI to tiny shapes, channels and one epoch
per stage on the CPU, everything else (spacings, normalisation, sigmas, offsets, learning rates, batch sizes, preload,
folds, pretraining) kept, on a handful of tiny 1 mm series, so the config's own recipe runs here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from testkit.training_data import canonical_affine, write_training_set
from train_offline import train
from train_offline.config import load_config

SHAPE = (64, 64, 64)  # a 64 mm "head" at full's 1 mm volume spacing
AFFINE = canonical_affine(1.0, SHAPE)  # z->S, y->P, x->L, centred on the origin
# The only keys the test changes: shapes, widths, epochs, the device, and the data paths (set per test).
SHRINK = {
    "locator.input_shape": [16, 16, 16],  # 64 mm at full's 4 mm
    "locator.channels": [4, 4, 8, 8],  # full's four levels, narrower
    "locator.epochs": 1,
    "classifier.input_shape": [32, 32, 32],  # 25.6 mm at full's 0.8 mm
    "classifier.channels": [4, 8, 8, 8],
    "classifier.epochs": 1,
    "classifier.pretrain_epochs": 1,
    "train.device": "cpu",
    "train.amp": False,
    "train.num_workers": 0,
    "train.threads": 1,
}
PATHS = ("data.root", "data.cache", "data.index", "data.folds_csv")


def _write_1mm_dataset(root: Path, n: int = 15, seed: int = 0) -> tuple[Path, Path]:
    """The training fixture at 1 mm: a bright 7 mm "Circle of Willis" cube per series (labelled AComm in a
    segmentation for two series of three), a brighter 3 mm aneurysm 8 mm beside it in every second series."""
    return write_training_set(root, n=n, seed=seed, spacing=1.0, shape=SHAPE, uid_root="1.2.9", jitter_vox=4,
                              landmark_half_vox=3, aneurysm_offset_vox=8, segmented=lambda i: i % 3 != 2, sex="M")


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_full_config_trains_one_fold_end_to_end_on_the_cpu(tmp_path: Path) -> None:
    # Only what a CPU cannot afford is shrunk; a recipe key (a spacing, a sigma) stays full's.
    assert {key.rsplit(".", 1)[1] for key in SHRINK} <= {"input_shape", "channels", "epochs", "pretrain_epochs",
                                                         "device", "amp", "num_workers", "threads"}
    full = load_config("full")
    assert full["classifier"]["pretrain_epochs"] > 0 and full["train"]["device"] == "cuda" and full["train"]["amp"]
    data, cache = _write_1mm_dataset(tmp_path)
    paths = {"data.root": data, "data.cache": cache, "data.index": tmp_path / "index.csv",
             "data.folds_csv": tmp_path / "folds.csv"}
    sets = [f"{key}={json.dumps(value)}" for key, value in SHRINK.items()]
    sets += [f"{key}={value}" for key, value in paths.items()]
    out = tmp_path / "full" / "fold0"
    torch.manual_seed(0)
    # --no-fine: this data is cache-only (no DICOM for the native boxes); test_fine.py runs full's fine stage
    assert train.main(["--config", "full", "--fold", "0", "--out", str(out), "--no-fine", "--set", *sets]) == 0

    for name in ("locator.pt", "pretrain.pt", "classifier.pt", "summary.json", "oof.csv", "metrics.jsonl"):
        assert (out / name).is_file(), name
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in records] == [("locator", 0), ("pretrain", 0), ("classifier", 0)]
    summary = json.loads((out / "summary.json").read_text())
    pretrain = summary["pretrain"]
    assert pretrain["epochs"] == 1 and pretrain["series"] > 0 and pretrain["seconds"] is not None
    assert "val_vessel_dice" in pretrain and summary["n_train"] + summary["n_val"] == 15

    # Everything but the shrunk keys and the data paths is full's own: spacings, normalisation, sigmas, offsets...
    saved, wanted = _flat(yaml.safe_load((out / "config.yaml").read_text())), _flat(full)
    assert saved.keys() == wanted.keys()
    changed = {key for key in saved if saved[key] != wanted[key]}
    assert changed == set(SHRINK) | set(PATHS)
    for key, value in SHRINK.items():
        assert saved[key] == value, key
    for key in ("volume_spacing_mm", "normalisation.CT", "normalisation.MR", "locator.spacing_mm", "locator.sigma_mm",
                "locator.output_stride", "classifier.spacing_mm", "classifier.centre_offset_lps_mm",
                "classifier.heatmap_sigma_mm", "classifier.jitter_mm", "classifier.lr", "classifier.pretrain_lr",
                "classifier.batch_size", "data.preload", "data.n_folds"):
        assert key not in changed and saved[key] == wanted[key], key
    assert saved["volume_spacing_mm"] == [1.0, 1.0, 1.0] and saved["classifier.spacing_mm"] == [0.8, 0.8, 0.8]

