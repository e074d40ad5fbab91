"""The fine stage of a fold: candidate sites, native boxes around them, the patch model, fusion chosen out of fold.

    python -m train_offline.fine --config demo --fold 0 [--resume] [--workers 2] [--set fine.epochs=12 ...]
    python -m train_offline.fine --config demo --fold 0 1 2   # every fold's sites, one box pass, then each fold
    python -m train_offline.fine --config demo --fold 1 --coarse weights   # on an exported fold's coarse models

Runs after ``train_offline.train`` in the same fold folder (it needs locator.pt and classifier.pt), or, with
``--coarse WEIGHTS``, on the fold's locator and classifier of an exported weights folder through onnxruntime (the
kernel's own sessions): a fold shipped without a fine stage gains one without retraining its coarse models, and
``export --run ... --keep WEIGHTS`` then adds it to that fold. Each step keeps what it wrote, so a killed run continues
where it stopped:

1. ``fine_sites.jsonl``: per series, through ``kernel.recipe`` as the kernel runs it (locate, classify with the
   location heatmap, ``heatmap_candidates``), the candidate sites, their heatmap channels and the classifier's
   probabilities; plus random bright (vessel) voxels inside the crop as extra negatives.
2. ``fine_boxes/<uid>.npz``: the raw canonical native stack (``kernel.preprocess.canonicalise`` without resampling, the
   array the kernel's fine stage samples from) in a ``box_mm`` cube around every site and every localizer, read from
   the DICOM series in worker processes (int16 where that keeps every value). Patches cut from a box equal patches
   cut from the whole stack. With several folds (``--fold 0 1 2``) every fold's sites come first and each series is
   read once for all the folds' boxes (``fine_prepare.json`` holds that shared pass's time): reading is most of this
   step, so each fold pays about a third of it.
3. ``fine.pt``: ``models.FineNet`` trained on the training folds' sites: every localizer (``truth_repeats`` times,
   each shifted up to ``truth_jitter_mm``) and a draw of candidates and random sites, each patch labelled positive when
   a localizer lies within ``positive_radius_mm`` of its centre; augmented (flips, in-plane transpose, gain, gamma,
   noise, blur up to ``blur_voxels``).
4. ``fine_summary.json`` / ``fine_oof.csv``: the validation fold through ``recipe.fine_probs`` and ``recipe.fuse`` for
   each weight of ``fusion_grid`` and each site heat weight of ``heat_grid``; the best out-of-fold score picks the
   pair export writes into the manifest. Also
   the candidates' recall per dome size (a candidate within dome radius + 2 mm, and within ``positive_radius_mm``).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from kernel import recipe
from kernel.dicom_io import read_series
from kernel.labels import ID_COL, LABEL_COLS, MODALITY_NAMES
from kernel.manifest import ModelSpec
from kernel.metric import evaluate_predictions, roc_auc
from kernel.preprocess import (
    canonicalise,
    crop_around,
    grid_points_lps,
    native_stack,
    normaliser,
    spacing_of,
    voxel_to_world,
    world_to_voxel,
)
from train_offline.cache import atomic_write_bytes, load_cached
from train_offline.config import ConfigError, load_config, parse_overrides, save_config, volume_settings_mismatch
from train_offline.data import SeriesRecord, SeriesStore, records_from_index
from train_offline.domes import DOME_BANDS, band_of, candidate_recall, load_domes, nearest_mm
from train_offline.evaluate import torch_runner
from train_offline.folds import ensure_index, ensure_index_and_folds
from train_offline.loop import atomic_torch_save, run_stage, setup_distributed
from train_offline.losses import heatmap_focal_loss
from train_offline.models import (
    FINE_STRIDE,
    build_classifier,
    build_fine,
    build_locator,
    classifier_spec,
    fine_spec,
    locator_spec,
)

__all__ = ["BoxStore", "FineDataset", "box_jobs", "build_boxes", "cut_box", "extract_boxes", "fine_loss", "main",
           "near_localizer", "patch_auc_by_dome", "patch_tables", "prepare_folds", "series_sites", "site_sample",
           "train_fine", "train_fines"]

SITES_FILE = "fine_sites.jsonl"
BOX_DIR = "fine_boxes"
PREPARE_FILE = "fine_prepare.json"


# --- step 1: sites ---------------------------------------------------------------------------------------------------


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


def _read_jsonl(path: Path) -> dict[str, dict[str, Any]]:
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                out[record[ID_COL]] = record
    return out


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
    path = fold_dir / SITES_FILE
    done = _read_jsonl(path)
    todo = [u for u in uids if u not in done]
    if not todo:
        return done
    if coarse is not None:
        loc_spec, cls_spec, run = coarse
    else:
        loc_spec, cls_spec = locator_spec(config["locator"], fold), classifier_spec(config["classifier"], fold)
        locator, classifier = build_locator(config["locator"]), build_classifier(config["classifier"])
        locator.load_state_dict(torch.load(fold_dir / "locator.pt", map_location="cpu", weights_only=True))
        classifier.load_state_dict(torch.load(fold_dir / "classifier.pt", map_location="cpu", weights_only=True))
        run = torch_runner({loc_spec.name: locator.to(device), cls_spec.name: classifier.to(device)}, device)
    with open(path, "a") as fh:
        for uid in tqdm(todo, desc="fine sites", mininterval=10):
            array, affine = store.volume(uid)
            centre, _ = recipe.locate(array, affine, [loc_spec], run)
            rng = np.random.default_rng([int(config["seed"]), len(uid), sum(map(ord, uid))])
            record = {ID_COL: uid, **series_sites(array, affine, centre, cls_spec, run, config["fine"], rng,
                                                  flip=uid in val_uids)}
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            done[uid] = record
    return done


def all_sites(record: Mapping[str, Any], localizers: Sequence[np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """(n, 3) LPS and kinds ("truth", "candidate", "random") of a series' sites, in box order."""
    points = [*localizers, *record["candidates"], *record["random"]]
    kinds = ["truth"] * len(localizers) + ["candidate"] * len(record["candidates"]) + ["random"] * len(record["random"])
    return np.asarray(points, dtype=np.float64).reshape(-1, 3), kinds


# --- step 2: native boxes --------------------------------------------------------------------------------------------


def cut_box(array: np.ndarray, affine: np.ndarray, point_lps: np.ndarray,
            box_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """The voxels of ``array`` within a ``box_mm`` cube around a point (on the array's own grid, clipped to the array,
    one voxel of margin for trilinear sampling) and the box's affine."""
    spacing, size = spacing_of(affine), np.asarray(array.shape)
    middle = world_to_voxel(affine, np.asarray(point_lps, dtype=np.float64)[None])[0]
    half = box_mm / 2.0 / spacing + 1
    lo = np.clip(np.floor(middle - half), 0, size - 1).astype(int)
    hi = np.maximum(np.clip(np.ceil(middle + half) + 1, 0, size).astype(int), lo + 1)
    box_affine = affine.copy()
    box_affine[:3, 3] = voxel_to_world(affine, lo[None].astype(np.float64))[0]
    return np.ascontiguousarray(array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float32), box_affine


def _stored(box: np.ndarray) -> np.ndarray:
    """A box as written to disk: int16 when that keeps every value (CT in HU, most MR), else float32. Half the bytes
    on disk and in the training process's memory, and the same patches (``crop_around`` samples in float32)."""
    if box.size and np.all(np.isfinite(box)) and box.min() >= -32768 and box.max() <= 32767:
        small = box.astype(np.int16)
        if np.array_equal(small, box):
            return small
    return box


def extract_boxes(series_dir: str, targets: Sequence[tuple[np.ndarray, str]], box_mm: float) -> list[str]:
    """Read a series once as the kernel's fine stage does (canonical, native spacing) and write, for each (points,
    npz path) of ``targets`` (one per fold that needs the series), a box per point."""
    volume = canonicalise(read_series(series_dir), None)
    for points, out_path in targets:
        arrays: dict[str, np.ndarray] = {}
        for i, point in enumerate(np.asarray(points, dtype=np.float64).reshape(-1, 3)):
            box, box_affine = cut_box(volume.array, volume.affine, point, box_mm)
            arrays[f"box{i}"], arrays[f"affine{i}"] = _stored(box), box_affine
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(Path(out_path), buffer.getvalue())
    return [out for _, out in targets]


BoxJobs = dict[str, list[tuple[np.ndarray, str]]]  # series folder -> (points, npz path) per fold that lacks its boxes


def box_jobs(data_root: Path, fold_dir: Path, sites: Mapping[str, Mapping[str, Any]],
             records: Mapping[str, SeriesRecord], jobs: BoxJobs | None = None) -> BoxJobs:
    """Add to ``jobs`` the boxes one fold still lacks: ``fine_boxes/<uid>.npz`` for every series with sites."""
    jobs = {} if jobs is None else jobs
    out_dir = fold_dir / BOX_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    for uid, record in sites.items():
        path = out_dir / f"{uid}.npz"
        if not path.is_file():
            points, _ = all_sites(record, [p for _, p in records[uid].points])
            jobs.setdefault(str(data_root / "series" / uid), []).append((points, str(path)))
    return jobs


def build_boxes(jobs: BoxJobs, box_mm: float, workers: int) -> int:
    """Write the boxes of ``jobs`` (see ``box_jobs``), each series read once for all the folds that need it; returns
    the number of series read."""
    if not jobs:
        return 0
    # spawn: fresh workers that do not inherit the caller's memory (a training process may hold every volume; forked
    # copies of it were killed for memory on 2 x 24 GB)
    with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(extract_boxes, series, targets, box_mm) for series, targets in jobs.items()]
        for future in tqdm(futures, desc="fine boxes", mininterval=10):
            future.result()
    return len(jobs)


class BoxStore:
    """Each series' native boxes (raw intensities) and the normalisation of its canonical volume, loaded once."""

    def __init__(self, fold_dir: Path, cache_dir: Path, normalisation: Mapping[str, str],
                 supplement_caches: Mapping[str, Path] | None = None):
        self.box_dir, self.cache_dir, self.normalisation = fold_dir / BOX_DIR, Path(cache_dir), dict(normalisation)
        self.supplement_caches = {uid: Path(c) for uid, c in (supplement_caches or {}).items()}  # uid -> its cache
        self._boxes: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._norms: dict[str, Callable[[np.ndarray], np.ndarray]] = {}

    def boxes(self, uid: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every box of a series as stored (int16 or float32, see ``_stored``) with its affine."""
        if uid not in self._boxes:
            with np.load(self.box_dir / f"{uid}.npz") as data:
                n = len(data.files) // 2
                self._boxes[uid] = [(data[f"box{i}"], data[f"affine{i}"]) for i in range(n)]
        return self._boxes[uid]

    def box(self, uid: str, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Box ``i`` of a series in float32 (the raw intensities the kernel's native stack holds) and its affine."""
        array, affine = self.boxes(uid)[i]
        return array.astype(np.float32, copy=False), affine

    def normalise(self, uid: str) -> Callable[[np.ndarray], np.ndarray]:
        """The kernel's patch normalisation for this series: statistics of its canonical volume (the cache)."""
        if uid not in self._norms:
            volume = load_cached(self.supplement_caches.get(uid, self.cache_dir), uid, mmap=True)
            scheme = self.normalisation["CT" if volume.modality == "CT" else "MR"]
            self._norms[uid] = normaliser(scheme, np.asarray(volume.array))
        return self._norms[uid]


# --- step 3: the patch model -----------------------------------------------------------------------------------------


def site_sample(box: tuple[np.ndarray, np.ndarray], norm: Callable[[np.ndarray], np.ndarray], centre_lps: np.ndarray,
                localizers: Sequence[np.ndarray], cfg: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Patch (as the kernel samples it), its label (a localizer within ``positive_radius_mm``) and the stride-2 ball
    target (cells within ``sphere_radius_mm`` of a localizer)."""
    shape = [int(s) for s in cfg["input_shape"]]
    patch, patch_affine = crop_around(box[0], box[1], centre_lps, shape, cfg["spacing_mm"])
    patch = norm(patch)
    points = grid_points_lps(patch_affine, shape, FINE_STRIDE)
    sphere = np.zeros(points.shape[:3], dtype=np.float32)
    label = 0.0
    for lps in localizers:
        if np.linalg.norm(np.asarray(lps) - centre_lps) <= float(cfg["positive_radius_mm"]):
            label = 1.0
        sphere[np.sum((points - lps) ** 2, axis=-1) <= float(cfg["sphere_radius_mm"]) ** 2] = 1.0
    return {"patch": patch, "label": np.float32(label), "sphere": sphere}


def augment(sample: dict[str, np.ndarray], rng: np.random.Generator, jitter: float,
            blur_voxels: float = 0.0) -> dict[str, np.ndarray]:
    """Flips on every axis, an in-plane transpose, gain/offset, gamma and Gaussian noise, and on half the patches a
    Gaussian blur of up to ``blur_voxels`` (sigma drawn per axis: a softer or thicker-sliced scanner than the
    renderer's). Varies the renderer's look so the model learns aneurysms, not one set of intensities and edges."""
    patch, sphere = sample["patch"], sample["sphere"]
    if blur_voxels > 0 and rng.random() < 0.5:
        patch = gaussian_filter(patch, rng.uniform(0.0, blur_voxels, 3), mode="nearest", truncate=3.0)
    for axis in range(3):
        if rng.random() < 0.5:
            patch, sphere = patch[(slice(None),) * axis + (slice(None, None, -1),)], \
                sphere[(slice(None),) * axis + (slice(None, None, -1),)]
    if rng.random() < 0.5:
        patch, sphere = patch.transpose(0, 2, 1), sphere.transpose(0, 2, 1)
    patch = np.clip(patch, 0.0, None) ** rng.uniform(1 - jitter * 2, 1 + jitter * 2)
    patch = patch * rng.uniform(1 - jitter, 1 + jitter) + rng.uniform(-jitter, jitter) / 2
    patch = patch + rng.normal(0.0, rng.uniform(0.0, jitter / 2), patch.shape)
    return {**sample, "patch": np.ascontiguousarray(patch, dtype=np.float32), "sphere": np.ascontiguousarray(sphere)}


class FineDataset(Dataset):
    """Training patches: per series and epoch ``per_series`` sites, every localizer first (``truth_repeats`` times),
    then a draw of candidates and random sites; centres shifted (``truth_jitter_mm`` / ``candidate_jitter_mm``),
    patches augmented."""

    def __init__(self, sites: Mapping[str, Mapping[str, Any]], records: Mapping[str, SeriesRecord],
                 boxes: BoxStore, uids: Sequence[str], cfg: Mapping[str, Any], seed: int = 0):
        self.sites, self.records, self.boxes, self.cfg, self.seed = sites, records, boxes, cfg, seed
        self.uids = [u for u in uids if u in sites]
        self.per_series = int(cfg["per_series"])
        self.truth_repeats = int(cfg["truth_repeats"])  # each localizer this often per series and epoch
        # hard negatives: the classifier's own peaks (its false positives) beside random bright voxels; "random"
        # leaves them out (the ablation of the lever)
        kinds = {"candidates": ("candidate", "random"), "random": ("random",)}
        if cfg["negatives"] not in kinds:
            raise ConfigError(f"fine.negatives must be one of {sorted(kinds)}, got {cfg['negatives']!r}")
        self.negative_kinds = kinds[cfg["negatives"]]
        self.epoch = 0
        self.items: list[tuple[str, int, str, np.ndarray]] = []  # (series, box index, kind, site LPS)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        rng = np.random.default_rng([self.seed, epoch, 7])
        items = []
        for uid in self.uids:
            points, kinds = all_sites(self.sites[uid], [p for _, p in self.records[uid].points])
            truth = [i for i, k in enumerate(kinds) if k == "truth"] * self.truth_repeats
            others = [i for i, k in enumerate(kinds) if k in self.negative_kinds]
            chosen = truth[: self.per_series]
            rest = self.per_series - len(chosen)
            if rest > 0 and others:
                chosen += list(rng.choice(others, size=min(rest, len(others)), replace=False))
            while len(chosen) < self.per_series:  # too few sites: repeat (fixed epoch length)
                chosen.append(chosen[len(chosen) % max(len(chosen), 1)] if chosen else 0)
            items.extend((uid, int(i), kinds[int(i)] if kinds else "random", points[int(i)] if kinds else np.zeros(3))
                         for i in chosen)
        self.items = items

    def __len__(self) -> int:
        return len(self.uids) * self.per_series

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        uid, site, kind, point = self.items[i]
        localizers = [p for _, p in self.records[uid].points]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        jitter = float(self.cfg["truth_jitter_mm" if kind == "truth" else "candidate_jitter_mm"])
        centre = point + rng.uniform(-1, 1, 3) * jitter
        sample = site_sample(self.boxes.box(uid, site), self.boxes.normalise(uid), centre, localizers, self.cfg)
        sample = augment(sample, rng, float(self.cfg["intensity_jitter"]), float(self.cfg["blur_voxels"]))
        return {"patch": torch.from_numpy(sample["patch"][None]), "label": torch.tensor([sample["label"]]),
                "sphere": torch.from_numpy(sample["sphere"][None])}


def fine_loss(out: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
              cfg: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE on the patch label + focal loss on the ball target (``sphere_weight``)."""
    label = F.binary_cross_entropy_with_logits(out["logit"].float(), batch["label"])
    sphere = heatmap_focal_loss(out["sphere"].float(), batch["sphere"])
    return label + float(cfg["sphere_weight"]) * sphere, {"label": label.item(), "sphere": sphere.item()}


# --- step 4: out-of-fold validation ----------------------------------------------------------------------------------


def validation_site_probs(model: nn.Module, spec: ModelSpec, sites: Mapping[str, Mapping[str, Any]], boxes: BoxStore,
                          records: Mapping[str, SeriesRecord], uids: Sequence[str], device: torch.device,
                          kind: str = "candidate") -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(P(aneurysm), the (n, 3) LPS points scored) per validation series, through the kernel's recipe from each
    site's native box: candidates ("candidate") moved by ``recipe.recentre`` where the spec sets
    ``recentre_max_mm``, then ``recipe.fine_probs`` (the spec's views: flip TTA, the found point's logit). "truth": a
    patch centred on each localizer, unmoved."""
    run = torch_runner({spec.name: model}, device)
    probs, scored = {}, {}
    for uid in uids:
        localizers = [p for _, p in records[uid].points]
        points, kinds = all_sites(sites[uid], localizers)
        norm = boxes.normalise(uid)
        p, q = [], []
        for i in (i for i, k in enumerate(kinds) if k == kind):
            native = native_stack(*boxes.box(uid, i), norm)
            point, found = (recipe.recentre(native, points[i][None], [spec], run) if kind == "candidate"
                            else (points[i][None], None))
            p.append(recipe.fine_probs(native, point, [spec], run, flip=True, found=found)[0])
            q.append(point[0])
        probs[uid], scored[uid] = np.array(p), np.asarray(q, dtype=np.float64).reshape(-1, 3)
    return probs, scored


def _shift_percentiles(sites: Mapping[str, Mapping[str, Any]], scored: Mapping[str, np.ndarray],
                       uids: Sequence[str]) -> dict[str, float]:
    """Percentiles (50, 90, max) of how far ``recipe.recentre`` moved the validation candidates (mm)."""
    shifts = np.concatenate([np.linalg.norm(np.asarray(sites[u]["candidates"], dtype=np.float64).reshape(-1, 3)
                                            - scored[u], axis=1) for u in uids] or [np.zeros(0)])
    if not len(shifts):
        return {}
    return {"p50": round(float(np.percentile(shifts, 50)), 2), "p90": round(float(np.percentile(shifts, 90)), 2),
            "max": round(float(shifts.max()), 2)}


def near_localizer(points: np.ndarray, localizers: Sequence[np.ndarray], radius_mm: float) -> np.ndarray:
    """(n,) bool: each point (LPS mm) lies within ``radius_mm`` of a localizer: what a patch there is labelled."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if not len(localizers):
        return np.zeros(len(points), dtype=bool)
    dist = np.linalg.norm(points[:, None, :] - np.asarray(localizers, dtype=np.float64)[None], axis=-1)
    return (dist <= radius_mm).any(axis=1)


def patch_tables(truth_probs: Mapping[str, np.ndarray], site_probs: Mapping[str, np.ndarray],
                 sites: Mapping[str, Mapping[str, Any]], records: Mapping[str, SeriesRecord],
                 domes: Mapping[str, list], uids: Sequence[str], radius_mm: float) -> dict[str, Any]:
    """The summary's ``patch_auc_by_dome`` (all protocols) and ``patch_auc_by_dome_modality``: P at each aneurysm's
    localizer (band of its nearest dome) against P at the candidates farther than ``radius_mm`` from every one."""
    truth_rows: dict[str, list[tuple[str, float]]] = {}
    negative_probs: dict[str, list[float]] = {}
    for u in uids:
        modality = MODALITY_NAMES[records[u].modality]
        localizers = [np.asarray(q) for _, q in records[u].points]
        if domes.get(u):
            truth_rows.setdefault(modality, []).extend(
                (band_of(min(domes[u], key=lambda d, q=q: float(np.linalg.norm(d.centre_lps - q))).dome_mm), float(p))
                for q, p in zip(localizers, truth_probs[u], strict=True))
        far = ~near_localizer(np.asarray(sites[u]["candidates"]), localizers, radius_mm)
        negative_probs.setdefault(modality, []).extend(float(p) for p in np.asarray(site_probs[u])[far])
    return {"patch_auc_by_dome": patch_auc_by_dome([r for rows in truth_rows.values() for r in rows],
                                                   [p for probs in negative_probs.values() for p in probs]),
            "patch_auc_by_dome_modality": {m: patch_auc_by_dome(truth_rows.get(m, []), negative_probs[m])
                                           for m in sorted(negative_probs)}}


def patch_auc_by_dome(truth: Sequence[tuple[str, float]], negatives: Sequence[float]) -> dict[str, dict[str, Any]]:
    """Per dome band: the fine model's patch AUC with the patch centred on each aneurysm (``truth``: (band, P)) against
    every negative site (``negatives``: P at candidates far from every aneurysm). Candidate recall aside, this says
    whether the patch model can tell a dome of that size from the classifier's false peaks."""
    neg = np.asarray(negatives, dtype=np.float64)
    out: dict[str, dict[str, Any]] = {}
    for name, _, _ in DOME_BANDS:
        pos = np.array([p for band, p in truth if band == name], dtype=np.float64)
        if len(pos) == 0:
            continue
        labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))].astype(int)
        auc = float(roc_auc(labels, np.r_[pos, neg])) if len(neg) else None
        out[name] = {"aneurysms": int(len(pos)), "patch_auc": auc, "median_p": float(np.median(pos))}
    if out:
        out["negatives"] = {"sites": int(len(neg)), "median_p": float(np.median(neg)) if len(neg) else None}
    return out


def fused_scores(sites: Mapping[str, Mapping[str, Any]], site_probs: Mapping[str, np.ndarray],
                 records: Mapping[str, SeriesRecord], uids: Sequence[str], weights: Sequence[float],
                 heat_weight: float = 0.0) -> dict[float, tuple[dict[str, Any], np.ndarray]]:
    """Out-of-fold metrics and (n, 14) fused probabilities for each fusion weight (sites raised by ``heat_weight``
    times their heatmap cell's logit, ``recipe.fuse``)."""
    labels = np.stack([records[u].labels for u in uids])
    modalities = [MODALITY_NAMES[records[u].modality] for u in uids]
    out = {}
    for w in weights:
        probs = np.stack([recipe.fuse(np.asarray(sites[u]["probs"]), np.asarray(sites[u]["channels"]).reshape(-1, 13),
                                      site_probs[u], float(w), heat_weight) for u in uids])
        out[float(w)] = (evaluate_predictions(labels, probs, modalities), probs)
    return out


def best_pair(scores: Mapping[tuple[float, float], float]) -> tuple[float, float]:
    """The (fusion weight, heat weight) with the best out-of-fold score; ties keep the smaller heat weight, then the
    smaller fusion weight (training, ``train_offline.retune`` and ``train_offline.scan`` choose alike)."""
    return min(scores, key=lambda pair: (-scores[pair], pair[1], pair[0]))


def auc_by_band(labels_present: np.ndarray, scores: np.ndarray, uids: Sequence[str],
                domes: Mapping[str, list]) -> dict[str, float | None]:
    """AUC(Aneurysm Present) of each largest-dome band's positives against every negative."""
    negatives = labels_present == 0
    out: dict[str, float | None] = {}
    bands = np.array([band_of(max(d.dome_mm for d in domes[u])) if domes.get(u) else "" for u in uids])
    for name, _, _ in DOME_BANDS:
        keep = negatives | ((labels_present == 1) & (bands == name))
        pos = int(((labels_present == 1) & (bands == name)).sum())
        out[name] = float(roc_auc(labels_present[keep], scores[keep])) if pos and negatives.any() else None
    return out


def auc_by_candidate(labels_present: np.ndarray, scores: np.ndarray, uids: Sequence[str], domes: Mapping[str, list],
                     candidates: Mapping[str, Any], radius_mm: float) -> dict[str, dict[str, Any]]:
    """What a missed candidate costs: AUC(Aneurysm Present) of the positives with a candidate within ``radius_mm`` of
    one of their aneurysms ("found") and of the other positives ("missed"), each against every negative."""
    negatives = labels_present == 0
    kinds = []
    for label, uid in zip(labels_present, uids, strict=True):
        cands = np.asarray(candidates.get(uid, []), dtype=np.float64).reshape(-1, 3)
        if label != 1 or not domes.get(uid):
            kinds.append("")
        else:
            kinds.append("found" if any(nearest_mm(cands, d) <= radius_mm for d in domes[uid]) else "missed")
    kinds_arr = np.array(kinds)
    out: dict[str, dict[str, Any]] = {}
    for name in ("found", "missed"):
        keep = negatives | (kinds_arr == name)
        n = int((kinds_arr == name).sum())
        auc = float(roc_auc(labels_present[keep], scores[keep])) if n and negatives.any() else None
        out[name] = {"positives": n, "auc_present": auc}
    return out


# --- the fold ---------------------------------------------------------------------------------------------------------


def load_supplements(cfg: Mapping[str, Any], known: set[str]) -> list[tuple[Path, Path, list[SeriesRecord]]]:
    """(data root, cache, records) of each of ``fine.supplements``: training-only series. The index is built on first
    use. A series also in the main data (``known``) or in two supplements would leak across folds: refused."""
    from train_offline.index import load_index

    out, seen = [], set(known)
    for i, item in enumerate(cfg["supplements"]):
        if not isinstance(item, Mapping) or sorted(item) != ["cache", "index", "root"] or not all(
                isinstance(v, str) for v in item.values()):
            raise ConfigError(f"fine.supplements[{i}] must be a mapping of root, cache and index paths, got {item!r}")
        root, cache, index_path = Path(item["root"]), Path(item["cache"]), Path(item["index"])
        if not index_path.is_file() and not (root / "train.csv").is_file():
            raise FileNotFoundError(f"fine.supplements[{i}]: {root / 'train.csv'} is missing (generate it, e.g. "
                                    "python -m train_offline.phantoms --dome-range 2 4.5 ...)")
        ensure_index(root, cache, index_path)
        records = records_from_index(load_index(index_path))
        shared = seen & {r.uid for r in records}
        if shared:
            raise ValueError(f"fine.supplements[{i}] ({root}) repeats {len(shared)} series of the training data or "
                             f"of an earlier supplement, e.g. {sorted(shared)[0]}")
        seen |= {r.uid for r in records}
        out.append((root, cache, records))
    return out


@dataclass
class FoldPlan:
    """One fold's series and their sites (step 1 done): what its boxes are cut for and its training reads."""

    train_uids: list[str]
    val_uids: list[str]
    main_uids: list[str]  # the main data's series with sites (the validation fold's alone for a rescore)
    records: dict[str, SeriesRecord]  # main data and supplements
    supplements: list[tuple[Path, Path, list[SeriesRecord]]]
    sites: dict[str, dict[str, Any]]
    provenance: dict[str, Any] | None
    sites_s: float

    @property
    def extra_uids(self) -> list[str]:
        return [r.uid for _, _, extra in self.supplements for r in extra]


def plan_fold(config: Mapping[str, Any], fold: int, fold_dir: Path, device: torch.device,
              coarse: Path | None = None, rescore: bool = False) -> FoldPlan:
    """A fold's split, its supplements and the sites of its series (step 1; sites already written are kept)."""
    cfg = config["fine"]
    for name in ("locator.pt", "classifier.pt") if coarse is None else ():
        if not (fold_dir / name).is_file():
            raise FileNotFoundError(f"{fold_dir / name} is missing: train the fold first (python -m "
                                    f"train_offline.train --config {config['name']} --fold {fold})")
    index, folds = ensure_index_and_folds(config, 0, 1)
    index = index.merge(folds, on=ID_COL, how="inner")
    train_uids = index.loc[index["fold"] != fold, ID_COL].tolist()
    val_uids = index.loc[index["fold"] == fold, ID_COL].tolist()
    records = {r.uid: r for r in records_from_index(index)}
    store = SeriesStore(Path(config["data"]["cache"]), Path(config["data"]["root"]), list(records.values()),
                        config["normalisation"], preload="none")
    supplements = load_supplements(cfg, set(records))
    for _, _, extra in supplements:
        records.update({r.uid: r for r in extra})
    exported, provenance = None, None
    if coarse is not None:  # the fold folder holds only this stage: its config is written here for export
        exported, provenance = exported_coarse(coarse, config, fold, val_uids)
        fold_dir.mkdir(parents=True, exist_ok=True)
        save_config(fold_dir / "config.yaml", config)
    t = time.perf_counter()
    main_uids = val_uids if rescore else train_uids + val_uids  # a rescore needs the validation series only
    sites = compute_sites(config, fold, fold_dir, store, main_uids, set(val_uids), device, exported)
    for root, cache, extra in supplements if not rescore else ():  # training series of every fold
        extra_store = SeriesStore(cache, root, extra, config["normalisation"], preload="none")
        sites = compute_sites(config, fold, fold_dir, extra_store, [r.uid for r in extra], set(), device, exported)
    return FoldPlan(train_uids, val_uids, main_uids, records, supplements if not rescore else [], sites, provenance,
                    round(time.perf_counter() - t, 1))


def plan_box_jobs(config: Mapping[str, Any], fold_dir: Path, plan: FoldPlan, jobs: BoxJobs | None = None) -> BoxJobs:
    """The boxes a planned fold still lacks, its main series and its supplements', added to ``jobs``."""
    jobs = box_jobs(Path(config["data"]["root"]), fold_dir, {u: plan.sites[u] for u in plan.main_uids
                                                             if u in plan.sites}, plan.records, jobs)
    for root, _, extra in plan.supplements:
        jobs = box_jobs(root, fold_dir, {r.uid: plan.sites[r.uid] for r in extra}, plan.records, jobs)
    return jobs


def _with_earlier(fresh: dict[str, Any], earlier: dict[str, Any] | None) -> dict[str, Any]:
    """A shared pass's record with an earlier (killed, then resumed) pass of the same folds added: times and counts."""
    if not earlier or earlier.get("folds") != fresh["folds"]:
        return fresh
    return {**fresh, "boxes_s": round(earlier["boxes_s"] + fresh["boxes_s"], 1),
            "series_read": earlier["series_read"] + fresh["series_read"],
            "boxes_written": earlier["boxes_written"] + fresh["boxes_written"],
            "sites_s": {k: round(earlier["sites_s"].get(k, 0.0) + v, 1) for k, v in fresh["sites_s"].items()}}


def _prepare(config: Mapping[str, Any], folds: Sequence[int], fold_dirs: Sequence[Path], workers: int,
             coarse: Path | None) -> tuple[dict[str, Any], list[FoldPlan]]:
    """``prepare_folds``, also returning each fold's plan (``train_fines`` hands them on, not planning twice)."""
    _, _, device = setup_distributed(config["train"]["device"])
    torch.set_num_threads(int(config["train"]["threads"]))
    jobs: BoxJobs = {}
    plans = []
    for fold, fold_dir in zip(folds, fold_dirs, strict=True):
        plans.append(plan_fold(config, fold, fold_dir, device, coarse))
        jobs = plan_box_jobs(config, fold_dir, plans[-1], jobs)
    t = time.perf_counter()
    n_read = build_boxes(jobs, float(config["fine"]["box_mm"]), workers)
    fresh = {"folds": [int(f) for f in folds],
             "sites_s": {str(f): p.sites_s for f, p in zip(folds, plans, strict=True)},
             "boxes_s": round(time.perf_counter() - t, 1), "series_read": n_read,
             "boxes_written": sum(len(v) for v in jobs.values())}
    records = []
    for fold_dir in fold_dirs:
        path = Path(fold_dir) / PREPARE_FILE
        records.append(_with_earlier(fresh, json.loads(path.read_text()) if path.is_file() else None))
        path.write_text(json.dumps(records[-1], indent=1))
    return records[-1], plans


def prepare_folds(config: Mapping[str, Any], folds: Sequence[int], fold_dirs: Sequence[Path], workers: int = 2,
                  coarse: Path | None = None) -> dict[str, Any]:
    """Steps 1 and 2 for several folds at once: each fold's sites, then one pass over the series that cuts every
    fold's boxes (a series is read and decoded once, not once per fold: most of the boxes step's time). Writes
    ``fine_prepare.json`` into each fold folder (the shared pass's time, added up over resumed runs) and returns it;
    ``train_fine`` then finds its sites and boxes done and quotes it in its summary."""
    return _prepare(config, folds, fold_dirs, workers, coarse)[0]


def train_fines(config: Mapping[str, Any], folds: Sequence[int], fold_dirs: Sequence[Path], resume: bool = False,
                workers: int = 2, coarse: Path | None = None) -> list[dict[str, Any]]:
    """The fine stage of several folds: ``prepare_folds`` (one box pass for all), then ``train_fine`` fold by fold."""
    plans: Sequence[FoldPlan | None] = (_prepare(config, folds, fold_dirs, workers, coarse)[1] if len(folds) > 1
                                        else [None] * len(folds))
    return [train_fine(config, fold, fold_dir, resume=resume, workers=workers, coarse=coarse, plan=plan)
            for fold, fold_dir, plan in zip(folds, fold_dirs, plans, strict=True)]


def train_fine(config: Mapping[str, Any], fold: int, fold_dir: Path, resume: bool = False,
               workers: int = 2, coarse: Path | None = None, rescore: bool = False,
               plan: FoldPlan | None = None) -> dict[str, Any]:
    """Steps 1-4 of the module docstring for one fold; returns the fine summary. ``coarse``: an exported weights
    folder whose fold ``fold`` locator and classifier give the sites (instead of the fold folder's checkpoints).
    ``rescore``: validate the trained ``fine.pt`` again (sites and boxes of the validation series only; the earlier
    summary's times and training counts kept) and rewrite the summary and out-of-fold file: after the summary gained
    a table, or to measure an inference setting such as ``fine.candidates``. ``plan``: the fold's plan from a shared
    pass (``train_fines``; its sites time is in ``fine_prepare.json``)."""
    cfg = config["fine"]
    if rescore and not (fold_dir / "fine.pt").is_file():
        raise FileNotFoundError(f"--rescore: {fold_dir / 'fine.pt'} is missing: train the fine stage first")
    if int(cfg["epochs"]) < 1:
        raise ConfigError("fine.epochs is 0: set fine.epochs (e.g. --set fine.epochs=12) to train a fine stage")
    reach = float(cfg.get("recentre_max_mm", 0.0)) + max((int(n) - 1) / 2.0 * float(d)
                                                         for n, d in zip(cfg["input_shape"], cfg["spacing_mm"],
                                                                         strict=True))
    if reach > float(cfg["box_mm"]) / 2.0:
        raise ConfigError(f"fine.box_mm {cfg['box_mm']} is too small: a patch moved fine.recentre_max_mm "
                          f"{cfg.get('recentre_max_mm', 0.0)} reaches {reach:.1f} mm from its site (box_mm >= "
                          f"{2 * reach:.1f}); validation would score it on zeros where the kernel sees the scan")
    _, _, device = setup_distributed(config["train"]["device"])
    torch.set_num_threads(int(config["train"]["threads"]))
    seed = int(config["seed"]) + 1000 * fold + 17
    torch.manual_seed(seed)
    started = time.perf_counter()
    times: dict[str, Any] = {"sites_s": 0.0}
    if plan is None:
        plan = plan_fold(config, fold, fold_dir, device, coarse, rescore)
        times["sites_s"] = plan.sites_s
    train_uids, val_uids, records, sites = plan.train_uids, plan.val_uids, plan.records, plan.sites
    supplements, extra_uids, provenance = plan.supplements, plan.extra_uids, plan.provenance
    t = time.perf_counter()
    build_boxes(plan_box_jobs(config, fold_dir, plan), float(cfg["box_mm"]), workers)
    times["boxes_s"] = round(time.perf_counter() - t, 1)
    if (fold_dir / PREPARE_FILE).is_file() and not rescore:  # sites and boxes made with other folds: their time
        times["prepared"] = json.loads((fold_dir / PREPARE_FILE).read_text())

    boxes = BoxStore(fold_dir, Path(config["data"]["cache"]), config["normalisation"],
                     {r.uid: cache for _, cache, extra in supplements for r in extra})
    model, spec = build_fine(cfg), fine_spec(cfg, fold)
    domes = load_domes(config["data"]["root"])
    labels_present = np.array([records[u].labels[-1] for u in val_uids])
    state: dict[str, Any] = {}

    def step(net: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        return fine_loss(net(batch["patch"]), batch, cfg)

    def validate(_epoch: int) -> dict[str, Any]:
        site_probs, scored = validation_site_probs(model, spec, sites, boxes, records, val_uids, device)
        grid = [float(w) for w in cfg["fusion_grid"]]
        by_heat = {float(h): fused_scores(sites, site_probs, records, val_uids, grid, float(h))
                   for h in cfg.get("heat_grid", [0.0])}
        best_w, best_h = best_pair({(w, h): f[w][0]["score"] for h, f in by_heat.items() for w in f})
        fused = by_heat[best_h]
        state.update(site_probs=site_probs, scored=scored, fused=fused, best=best_w, heat=best_h,
                     by_heat={h: max(m["score"] for m, _ in f.values()) for h, f in by_heat.items()})
        # patch-level AUC over every validation candidate as scored (label: a localizer within positive_radius_mm)
        y = np.concatenate([near_localizer(scored[u], [q for _, q in records[u].points],
                                           float(cfg["positive_radius_mm"])) for u in val_uids])
        p = np.concatenate([np.asarray(site_probs[u], dtype=np.float64) for u in val_uids])
        patch_auc = float(roc_auc(y.astype(int), p)) if 0 < y.sum() < len(y) else None
        return {"val_patch_auc": patch_auc, "val_fusion_weight": best_w, "val_heat_weight": best_h,
                "val_score": fused[best_w][0]["score"], "val_auc_present": fused[best_w][0]["auc_present"],
                "val_score_coarse": fused[0.0][0]["score"] if 0.0 in fused else None}

    ctx = {"rank": 0, "world": 1, "device": device, "seed": seed, "resume": resume, "amp": config["train"]["amp"],
           "num_workers": config["train"]["num_workers"], "channels_last": False}
    dataset = FineDataset(sites, records, boxes, train_uids + extra_uids, cfg, seed=seed)
    t = time.perf_counter()
    if (resume or rescore) and (fold_dir / "fine.pt").is_file():
        model.load_state_dict(torch.load(fold_dir / "fine.pt", map_location="cpu", weights_only=True))
        model.to(device)
    else:
        model = run_stage("fine", model, dataset, cfg, step, validate, fold_dir, ctx)
        atomic_torch_save(model.state_dict(), fold_dir / "fine.pt")
    times["train_s"] = round(time.perf_counter() - t, 1)
    if "fused" not in state:
        validate(int(cfg["epochs"]) - 1)
    best = state["best"]
    metrics, probs = state["fused"][best]
    truth_probs, _ = validation_site_probs(model, spec, sites, boxes, records, val_uids, device, kind="truth")
    coarse_metrics, coarse_probs = state["fused"].get(0.0, (None, None))
    scored_sites = {u: {**sites[u], "candidates": state["scored"][u].tolist()} for u in val_uids}
    radius = float(cfg["positive_radius_mm"])
    summary = {
        "fold": fold, "fusion_weight": best, "heat_weight": state["heat"], "config": json.loads(json.dumps(cfg)),
        "n_train_series": len(dataset.uids), "n_supplement_series": len(extra_uids),
        "supplements": [str(root) for root, _, _ in supplements], "n_val": len(val_uids),
        "scores_by_weight": {str(w): {"score": m["score"], "auc_present": m["auc_present"]}
                             for w, (m, _) in state["fused"].items()},
        "scores_by_heat_weight": {str(h): score for h, score in state["by_heat"].items()},
        "validation": metrics,
        "auc_present_by_dome": auc_by_band(labels_present, probs[:, -1], val_uids, domes),
        "auc_present_by_dome_coarse": None if coarse_probs is None else auc_by_band(
            labels_present, coarse_probs[:, -1], val_uids, domes),
        "candidate_recall": candidate_recall({u: sites[u]["candidates"] for u in val_uids}, domes, val_uids, radius),
        "candidate_recall_scored": candidate_recall(state["scored"], domes, val_uids, radius),
        "recentre_shift_mm": _shift_percentiles(sites, state["scored"], val_uids),
        "auc_present_by_candidate": {
            stage: auc_by_candidate(labels_present, p[:, -1], val_uids, domes, state["scored"], radius)
            for stage, p in (("fused", probs), ("coarse", coarse_probs)) if p is not None},
        **patch_tables(truth_probs, state["site_probs"], scored_sites, records, domes, val_uids, radius),
        "candidates_per_series": float(np.mean([len(sites[u]["candidates"]) for u in val_uids])),
        "seconds": {**times, "total_s": round(time.perf_counter() - started, 1)},
        "coarse": provenance,
    }
    if rescore:  # what the training saw and how long it took stay; the rescore's time goes beside them
        earlier = fold_dir / "fine_summary.json"
        summary["rescore_seconds"] = summary["seconds"]["total_s"]
        trained = json.loads(earlier.read_text()) if earlier.is_file() else {}
        summary["seconds"] = trained.get("seconds", summary["seconds"])
        # the training's counts (summaries from before supplements had none); unknown without its summary
        summary.update({"n_train_series": trained.get("n_train_series"),
                        "n_supplement_series": trained.get("n_supplement_series", 0 if trained else None),
                        "supplements": trained.get("supplements", [] if trained else None)})
    (fold_dir / "fine_summary.json").write_text(json.dumps(summary, indent=1))
    oof = pd.DataFrame(probs, columns=LABEL_COLS)
    oof.insert(0, ID_COL, val_uids)
    oof.to_csv(fold_dir / "fine_oof.csv", index=False)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train_offline.fine", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="demo", help="config name in train_offline/configs or a YAML path")
    parser.add_argument("--fold", type=int, nargs="+", default=[0],
                        help="validation fold(s) (default 0); several, e.g. --fold 0 1 2, find every fold's sites "
                             "first and read each series once for all their boxes, then train fold by fold")
    parser.add_argument("--out", type=Path, help="fold folder (default <train.out_dir>/<name>/fold<K>; one fold)")
    parser.add_argument("--resume", action="store_true", help="keep a finished fine.pt / continue its checkpoint")
    parser.add_argument("--rescore", action="store_true",
                        help="validate a trained fine.pt again (validation series' sites and boxes only) and "
                             "rewrite its summary")
    parser.add_argument("--coarse", type=Path, default=None, metavar="WEIGHTS",
                        help="take the fold's locator and classifier from this exported weights folder (onnxruntime) "
                             "instead of the fold folder's locator.pt / classifier.pt")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes reading DICOM for the native boxes (default 2)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. fine.epochs=12")
    args = parser.parse_args(argv)
    if args.out is not None and len(args.fold) > 1:
        parser.error("--out takes one --fold")
    try:
        config = load_config(args.config, parse_overrides(args.set))
        dirs = [args.out or Path(config["train"]["out_dir"]) / config["name"] / f"fold{k}" for k in args.fold]
        if args.rescore:
            summaries = [train_fine(config, k, d, resume=args.resume, workers=args.workers, coarse=args.coarse,
                                    rescore=True) for k, d in zip(args.fold, dirs, strict=True)]
        else:
            summaries = train_fines(config, args.fold, dirs, resume=args.resume, workers=args.workers,
                                    coarse=args.coarse)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"fine failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    for fold, out, summary in zip(args.fold, dirs, summaries, strict=True):
        v = summary["validation"]
        print(f"fold {fold} fine: val score {v['score']:.4f}, AUC present {v['auc_present']:.4f} at fusion weight "
              f"{summary['fusion_weight']}, heat weight {summary['heat_weight']} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
