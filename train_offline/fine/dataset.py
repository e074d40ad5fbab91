"""Step 3 of the fine stage's data: training patches around sites, their labels and sphere targets, augmented.

Every localizer (``truth_repeats`` times, shifted up to ``truth_jitter_mm``) and a draw of candidates and random sites
per series and epoch; a patch is positive when a localizer lies within ``positive_radius_mm`` of its centre, and its
stride-2 sphere target marks the cells within ``sphere_radius_mm`` of a localizer. Augmentation: ``augment`` (flips on
every axis, transpose, gain/offset, gamma, noise, blur), or with ``fine.augment.enabled`` nnU-Net's default set
(``train_offline.augment``: rotation and scaling in the sampling, the sphere target at the same grid's LPS points,
intensity transforms, a mirror on x only; ``augment_nnunet``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch.utils.data import Dataset

from kernel.preprocess import grid_points_lps
from train_offline.augment import (
    Spatial,
    augment_enabled,
    augment_intensity,
    augment_rng,
    check_augment,
    draw_spatial,
    spatial_crop,
    spatial_reach_mm,
)
from train_offline.config import ConfigError
from train_offline.data import SeriesRecord
from train_offline.fine.boxes import BoxStore
from train_offline.fine.sites import all_sites
from train_offline.losses import heatmap_focal_loss
from train_offline.models import FINE_STRIDE

__all__ = ["FineDataset", "augment", "augment_nnunet", "fine_loss", "site_sample"]


def site_sample(box: tuple[np.ndarray, np.ndarray], norm: Callable[[np.ndarray], np.ndarray], centre_lps: np.ndarray,
                localizers: Sequence[np.ndarray], cfg: Mapping[str, Any],
                spatial: Spatial | None = None) -> dict[str, np.ndarray]:
    """Patch (as the kernel samples it; with ``spatial`` rotated/scaled about its centre, the box's edge values
    standing in beyond the box), its label (a localizer within ``positive_radius_mm``) and the stride-2 sphere target
    (cells of the patch's own grid within ``sphere_radius_mm`` of a localizer)."""
    shape = [int(s) for s in cfg["input_shape"]]
    patch, patch_affine = spatial_crop(box[0], box[1], centre_lps, shape, cfg["spacing_mm"], spatial,
                                       edge=spatial is not None)
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


def augment_nnunet(sample: dict[str, np.ndarray], rng: np.random.Generator,
                   aug: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """nnU-Net's intensity transforms on the patch (``train_offline.augment.augment_intensity``), then a patient
    left/right mirror (array axis x) of patch and sphere target with ``mirror_x_p``: never y or z (anatomy)."""
    patch, sphere = augment_intensity(sample["patch"], rng, aug), sample["sphere"]
    if rng.random() < float(aug["mirror_x_p"]):
        patch, sphere = patch[..., ::-1], sphere[..., ::-1]
    return {**sample, "patch": np.ascontiguousarray(patch, dtype=np.float32), "sphere": np.ascontiguousarray(sphere)}


class FineDataset(Dataset):
    """Training patches: per series and epoch ``sites_per_series`` sites, every localizer first (``truth_repeats``
    times), then a draw of candidates and random sites; centres shifted (``truth_jitter_mm`` /
    ``candidate_jitter_mm``), patches augmented."""

    def __init__(self, sites: Mapping[str, Mapping[str, Any]], records: Mapping[str, SeriesRecord],
                 boxes: BoxStore, uids: Sequence[str], cfg: Mapping[str, Any], seed: int = 0):
        self.sites, self.records, self.boxes, self.cfg, self.seed = sites, records, boxes, cfg, seed
        self.uids = [u for u in uids if u in sites]
        self.sites_per_series = int(cfg["sites_per_series"])
        self.truth_repeats = int(cfg["truth_repeats"])  # each localizer this often per series and epoch
        # hard negatives: the classifier's own peaks (its false positives) beside random bright voxels; "random"
        # leaves them out (the ablation of the lever)
        kinds = {"candidates": ("candidate", "random"), "random": ("random",)}
        if cfg["negatives"] not in kinds:
            raise ConfigError(f"fine.negatives must be one of {sorted(kinds)}, got {cfg['negatives']!r}")
        self.negative_kinds = kinds[cfg["negatives"]]
        self.augment = cfg.get("augment") if augment_enabled(cfg.get("augment")) else None
        if self.augment is not None:
            check_augment(self.augment, "fine.augment")
            self._check_box_reach()
        self.epoch = 0
        self.items: list[tuple[str, int, str, np.ndarray]] = []  # (series, box index, kind, site LPS)
        self.set_epoch(0)

    def _check_box_reach(self) -> None:
        """Warn when a rotated, scaled, jittered patch can reach beyond its cached box (``box_mm``): the box's edge
        values then stand in for the voxels beyond it."""
        reach = spatial_reach_mm(self.cfg["input_shape"], self.cfg["spacing_mm"], self.augment).max() + max(
            float(self.cfg["truth_jitter_mm"]), float(self.cfg["candidate_jitter_mm"])) * np.sqrt(3)
        if reach > float(self.cfg["box_mm"]) / 2.0:
            warnings.warn(f"fine.augment: a rotated, scaled patch reaches {reach:.1f} mm from its site, beyond the "
                          f"cached box (box_mm {self.cfg['box_mm']}); edge values stand in there (box_mm >= "
                          f"{2 * reach:.0f} holds every draw)", stacklevel=2)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        rng = np.random.default_rng([self.seed, epoch, 7])
        items = []
        for uid in self.uids:
            points, kinds = all_sites(self.sites[uid], [p for _, p in self.records[uid].points])
            truth = [i for i, k in enumerate(kinds) if k == "truth"] * self.truth_repeats
            others = [i for i, k in enumerate(kinds) if k in self.negative_kinds]
            chosen = truth[: self.sites_per_series]
            rest = self.sites_per_series - len(chosen)
            if rest > 0 and others:
                chosen += list(rng.choice(others, size=min(rest, len(others)), replace=False))
            while len(chosen) < self.sites_per_series:  # too few sites: repeat (fixed epoch length)
                chosen.append(chosen[len(chosen) % max(len(chosen), 1)] if chosen else 0)
            items.extend((uid, int(i), kinds[int(i)] if kinds else "random", points[int(i)] if kinds else np.zeros(3))
                         for i in chosen)
        self.items = items

    def __len__(self) -> int:
        return len(self.uids) * self.sites_per_series

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        uid, site, kind, point = self.items[i]
        localizers = [p for _, p in self.records[uid].points]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        jitter = float(self.cfg["truth_jitter_mm" if kind == "truth" else "candidate_jitter_mm"])
        centre = point + rng.uniform(-1, 1, 3) * jitter
        if self.augment is None:
            sample = site_sample(self.boxes.box(uid, site), self.boxes.normalise(uid), centre, localizers, self.cfg)
            sample = augment(sample, rng, float(self.cfg["intensity_jitter"]), float(self.cfg["blur_voxels"]))
        else:
            aug_rng = augment_rng(self.seed, self.epoch, i)
            sample = site_sample(self.boxes.box(uid, site), self.boxes.normalise(uid), centre, localizers, self.cfg,
                                 draw_spatial(aug_rng, self.augment))
            sample = augment_nnunet(sample, aug_rng, self.augment)
        return {"patch": torch.from_numpy(sample["patch"][None]), "label": torch.tensor([sample["label"]]),
                "sphere": torch.from_numpy(sample["sphere"][None])}


def fine_loss(out: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
              cfg: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE on the patch label + focal loss on the sphere target (``sphere_weight``)."""
    label = F.binary_cross_entropy_with_logits(out["logit"].float(), batch["label"])
    sphere = heatmap_focal_loss(out["sphere"].float(), batch["sphere"])
    return label + float(cfg["sphere_weight"]) * sphere, {"label": label.item(), "sphere": sphere.item()}
