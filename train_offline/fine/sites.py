"""Step 1 of the fine stage: each series' candidate sites, through ``kernel.recipe`` as the kernel runs it.

Per series (``fine_sites.jsonl``, one line each, resumable): the classifier heatmap's peaks (``heatmap_candidates``)
with their channel logits, the classifier's probabilities, and random bright (vessel) voxels inside the crop as extra
negatives. The fold's locator and classifier come from its fold folder (torch) or from an exported weights folder
(``--coarse``, onnxruntime).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from kernel import recipe
from kernel.labels import ID_COL
from kernel.manifest import ModelSpec
from kernel.preprocess import voxel_to_world
from train_offline.config import ConfigError, volume_settings_mismatch
from train_offline.data import SeriesStore
from train_offline.evaluate import torch_runner
from train_offline.models import build_classifier, build_locator, classifier_spec, locator_spec
from train_offline.resume import resume_jsonl

__all__ = ["SITES_FILE", "Coarse", "all_sites", "compute_sites", "exported_coarse", "series_sites"]

SITES_FILE = "fine_sites.jsonl"


def series_sites(array: np.ndarray, affine: np.ndarray, centre: np.ndarray, spec: ModelSpec, run: recipe.Runner,
                 cfg: Mapping[str, Any], rng: np.random.Generator, flip: bool) -> dict[str, Any]:
    """One series' sites: the recipe's candidates (heatmap peaks) and channel logits, the classifier's probabilities,
    and ``random_sites`` random voxels among the brightest 0.5% of the crop (vessels: negatives the heatmap may not
    offer)."""
    out = recipe.classify(array, affine, centre, [spec], run, flip)
    if out.heatmap is None:
        raise ValueError(f"classifier {spec.name} returns no heatmap: the fine stage needs one")
    points, channels = recipe.heatmap_candidates(out.heatmap, out.heatmap_affine, out.heatmap_stride,
                                                 int(cfg["candidates"]), float(cfg["candidate_min_distance_mm"]))
    crop, crop_affine = recipe.classifier_crop(array, affine, centre, spec)
    bright = np.argwhere(crop >= np.quantile(crop, 0.995))
    chosen = bright[rng.choice(len(bright), size=min(int(cfg["random_sites"]), len(bright)), replace=False)]
    randoms = voxel_to_world(crop_affine, chosen.astype(np.float64)) if len(chosen) else np.zeros((0, 3))
    return {"centre": np.round(centre, 3).tolist(), "probs": out.probs.tolist(),
            "modality_probs": out.modality_probs.tolist(), "candidates": np.round(points, 3).tolist(),
            "channels": np.round(channels, 4).tolist(), "random": np.round(randoms, 3).tolist()}


Coarse = tuple[ModelSpec, ModelSpec, recipe.Runner]  # a fold's locator spec, classifier spec and their runner


def exported_coarse(weights: Path, config: Mapping[str, Any], fold: int,
                    val_uids: Sequence[str]) -> tuple[Coarse, dict[str, Any]]:
    """Fold ``fold``'s locator and classifier of an exported weights folder, an onnxruntime runner for them and their
    provenance (names and sha256, written into fine_summary.json; export checks it against ``--keep``).

    Refused when the export was made on other volume settings than ``config``'s (the cached volumes would not be its
    inputs) or when its classifier was validated on other series than this fold's (its training series would leak
    into the fine stage's out-of-fold score)."""
    from kernel.ensemble import Ensemble
    from kernel.manifest import load_manifest

    manifest = load_manifest(weights)
    mismatch = volume_settings_mismatch(manifest.data, config)
    if mismatch:
        raise ConfigError(f"--coarse {weights}: {mismatch}")
    specs = {}
    for role in ("locator", "classifier"):
        found = [s for s in manifest.models(role) if s.fold == fold]
        if len(found) != 1:
            raise ValueError(f"--coarse {weights}: {len(found)} {role} models of fold {fold} (need exactly one)")
        specs[role] = found[0]
    oof_file = specs["classifier"].validation.get("oof_file")
    if oof_file and (weights / oof_file).is_file():
        exported = set(pd.read_csv(weights / oof_file, usecols=[ID_COL])[ID_COL])
        if exported != set(val_uids):
            raise ValueError(f"--coarse {weights}: fold {fold}'s classifier was validated on {len(exported)} series, "
                             f"{len(exported ^ set(val_uids))} of them not in this fold's {len(val_uids)} (another "
                             f"fold split or data set)")
    ensemble = Ensemble(manifest, providers=["CPUExecutionProvider"], threads=int(config["train"]["threads"]))
    provenance = {"weights": str(weights),
                  **{role: {"name": spec.name, "sha256": spec.sha256} for role, spec in specs.items()}}
    return (specs["locator"], specs["classifier"], ensemble.run), provenance


def compute_sites(config: Mapping[str, Any], fold: int, fold_dir: Path, store: SeriesStore, uids: Sequence[str],
                  val_uids: set[str], device: torch.device,
                  coarse: Coarse | None = None) -> dict[str, dict[str, Any]]:
    """Sites of every series (appended to ``fine_sites.jsonl``; series already there are kept). Validation series run
    with flip TTA, as the kernel; training series without (half the time; their candidates are training data).
    ``coarse`` (locator spec, classifier spec, runner) replaces the fold folder's locator.pt / classifier.pt."""
    runner: list[Coarse] = [coarse] if coarse is not None else []

    def sites_of(uid: str) -> dict[str, Any]:
        if not runner:  # the fold's checkpoints, loaded once and only when a series is missing
            runner.append(_fold_coarse(config, fold, fold_dir, device))
        loc_spec, cls_spec, run = runner[0]
        array, affine = store.volume(uid)
        centre, _ = recipe.locate(array, affine, [loc_spec], run)
        rng = np.random.default_rng([int(config["seed"]), len(uid), sum(map(ord, uid))])
        return series_sites(array, affine, centre, cls_spec, run, config["fine"], rng, flip=uid in val_uids)

    return resume_jsonl(fold_dir / SITES_FILE, uids, sites_of, desc="fine sites")


def _fold_coarse(config: Mapping[str, Any], fold: int, fold_dir: Path, device: torch.device) -> Coarse:
    """A fold folder's locator.pt and classifier.pt as the recipe's specs and a torch runner."""
    loc_spec, cls_spec = locator_spec(config["locator"], fold), classifier_spec(config["classifier"], fold)
    locator, classifier = build_locator(config["locator"]), build_classifier(config["classifier"])
    locator.load_state_dict(torch.load(fold_dir / "locator.pt", map_location="cpu", weights_only=True))
    classifier.load_state_dict(torch.load(fold_dir / "classifier.pt", map_location="cpu", weights_only=True))
    return loc_spec, cls_spec, torch_runner({loc_spec.name: locator.to(device), cls_spec.name: classifier.to(device)},
                                            device)


def all_sites(record: Mapping[str, Any], localizers: Sequence[np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """(n, 3) LPS and kinds ("truth", "candidate", "random") of a series' sites, in box order."""
    points = [*localizers, *record["candidates"], *record["random"]]
    kinds = ["truth"] * len(localizers) + ["candidate"] * len(record["candidates"]) + ["random"] * len(record["random"])
    return np.asarray(points, dtype=np.float64).reshape(-1, 3), kinds
