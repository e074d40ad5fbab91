"""Training samples built with the kernel's own preprocessing: the model sees what it will see on Kaggle.

Inputs come from the cache (``train_offline.cache.load_cached``) through ``kernel.preprocess.normalise``,
``kernel.recipe.locator_base``/``locator_input_from_base`` (the kernel's locator input, shifted for augmentation) and
``crop_around`` around ``kernel.recipe.classifier_centre`` (jittered). Augmentation: locator field-of-
view shifts; classifier crop-centre jitter, intensity gain/offset, and a patient left/right flip (array axis x) that
swaps the paired labels (``kernel.labels.flip_permutation``), the heatmap channels and the vessel label values. With
``<stage>.augment.enabled`` also nnU-Net's default set (``train_offline.augment``): rotation and scaling done in the
sampling, every target computed at the LPS points of the same grid, then intensity transforms.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from kernel.labels import ID_COL, LABEL_COLS, LOCATION_COLS, MODALITY_NAMES, SEG_LABEL_VALUES, flip_permutation
from kernel.preprocess import (
    grid_points_lps,
    normalise,
    spacing_of,
    voxel_to_world,
    world_to_voxel,
)
from kernel.recipe import classifier_centre, locator_base, locator_input_from_base
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
from train_offline.cache import load_cached
from train_offline.models import CLASSIFIER_STRIDE

__all__ = [
    "PRELOAD_MODES", "ClassifierDataset", "LocatorDataset", "SeriesRecord", "SeriesStore", "classifier_sample",
    "classifier_targets", "flip_sample", "label_priors", "localizers_in_crop", "locator_sample",
    "records_from_index", "seg_flip_lookup",
]

LOCATION_FLIP = flip_permutation(LOCATION_COLS)
LABEL_FLIP = flip_permutation(LABEL_COLS)
IGNORE = -1  # seg target value where no segmentation exists


def seg_flip_lookup() -> np.ndarray:
    """lookup[v] = vessel label value after a left/right flip (0 stays background)."""
    lookup = np.arange(len(LOCATION_COLS) + 1)
    for i, name in enumerate(LOCATION_COLS):
        lookup[SEG_LABEL_VALUES[name]] = SEG_LABEL_VALUES[LOCATION_COLS[LOCATION_FLIP[i]]]
    return lookup


SEG_FLIP = seg_flip_lookup()


@dataclass
class SeriesRecord:
    """What training needs about one series (from the index)."""

    uid: str
    labels: np.ndarray  # (14,) float32, LABEL_COLS order
    modality: int  # index into MODALITY_NAMES
    points: list[tuple[int, np.ndarray]]  # (location index, LPS mm)
    centre_lps: np.ndarray | None  # Circle-of-Willis centre from the segmentation
    seg_file: str  # relative to the data root, "" when none


def records_from_index(index: pd.DataFrame) -> list[SeriesRecord]:
    """SeriesRecords from an index frame (``train_offline.index``)."""
    out = []
    for row in index.to_dict("records"):
        points = [(LOCATION_COLS.index(p["location"]), np.asarray(p["lps"], dtype=np.float64))
                  for p in json.loads(row["localizers"])]
        centre = json.loads(row["centre_lps"]) if isinstance(row["centre_lps"], str) else None
        out.append(SeriesRecord(
            uid=str(row[ID_COL]), labels=np.asarray([row[c] for c in LABEL_COLS], dtype=np.float32),
            modality=MODALITY_NAMES.index(row["Modality"]), points=points,
            centre_lps=None if centre is None else np.asarray(centre, dtype=np.float64),
            seg_file=str(row.get("seg_file") or "")))
    return out


def label_priors(records: Sequence[SeriesRecord]) -> list[float]:
    """Training prevalence of each label: the kernel's fallback row."""
    return np.mean([r.labels for r in records], axis=0).astype(float).tolist()


def locator_sample(base: tuple[np.ndarray, np.ndarray, np.ndarray], cfg: Mapping[str, Any],
                   centre_lps: np.ndarray | None, shift_lps: np.ndarray | None = None, spatial: Spatial | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Locator input (``kernel.recipe.locator_input_from_base`` of a ``locator_base``, its field of view optionally
    shifted, with ``spatial`` rotated/scaled about its centre) and its target distribution (a normalised Gaussian at
    the Circle-of-Willis centre, at the LPS points of the input's own grid)."""
    shape, stride = [int(s) for s in cfg["input_shape"]], int(cfg["output_stride"])
    if spatial is None:
        inp, inp_affine = locator_input_from_base(base, shape, shift_lps=shift_lps)
    else:
        small, small_affine, middle = base
        centre = middle if shift_lps is None else middle + shift_lps
        inp, inp_affine = spatial_crop(small, small_affine, centre, shape, None, spatial)
    if centre_lps is None:
        return inp, inp_affine, None
    points = grid_points_lps(inp_affine, shape, stride)
    d2 = np.sum((points - centre_lps) ** 2, axis=-1)
    target = np.exp(-d2 / (2.0 * float(cfg["sigma_mm"]) ** 2))
    total = target.sum()
    target = target / total if total > 1e-12 else np.full_like(target, 1.0 / target.size)
    return inp, inp_affine, target.astype(np.float32)


def classifier_sample(array: np.ndarray, affine: np.ndarray, centre_lps: np.ndarray, cfg: Mapping[str, Any],
                      record: SeriesRecord, seg: tuple[np.ndarray, np.ndarray] | None, spatial: Spatial | None = None
                      ) -> dict[str, np.ndarray]:
    """Crop (``crop_around``; with ``spatial`` rotated/scaled about its centre) and its targets
    (``classifier_targets`` at the crop's own grid, so they move with the image)."""
    shape = [int(s) for s in cfg["input_shape"]]
    crop, crop_affine = spatial_crop(array, affine, centre_lps, shape, cfg["spacing_mm"], spatial)
    return {"crop": crop, **classifier_targets(crop_affine, shape, cfg, record, seg)}


def classifier_targets(crop_affine: np.ndarray, shape: Sequence[int], cfg: Mapping[str, Any], record: SeriesRecord,
                       seg: tuple[np.ndarray, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Targets at the LPS centres of a crop's stride-4 cells (any rotation of its grid): heatmap (13 channels, a
    Gaussian at each localizer), seg (the segmentation's nearest voxel, ``IGNORE`` without one), labels, modality."""
    points = grid_points_lps(crop_affine, shape, CLASSIFIER_STRIDE)
    heatmap = np.zeros((len(LOCATION_COLS), *points.shape[:3]), dtype=np.float32)
    sigma = float(cfg["heatmap_sigma_mm"])
    for loc, lps in record.points:
        blob = np.exp(-np.sum((points - lps) ** 2, axis=-1) / (2.0 * sigma**2)).astype(np.float32)
        heatmap[loc] = np.maximum(heatmap[loc], blob)
    if seg is None:
        seg_target = np.full(points.shape[:3], IGNORE, dtype=np.int64)
    else:
        labels, lps_affine = seg
        ijk = np.rint(world_to_voxel(lps_affine, points.reshape(-1, 3))).astype(np.int64)
        inside = np.all((ijk >= 0) & (ijk < np.asarray(labels.shape)), axis=1)
        values = np.zeros(len(ijk), dtype=np.int64)
        values[inside] = labels[tuple(ijk[inside].T)]
        seg_target = values.reshape(points.shape[:3])
    return {"labels": record.labels.copy(), "heatmap": heatmap, "seg": seg_target,
            "modality": np.int64(record.modality)}


def localizers_in_crop(records: Sequence[SeriesRecord], centres: Mapping[str, np.ndarray],
                      cfg: Mapping[str, Any]) -> dict[str, float]:
    """Fraction of localizer points inside the classifier crop placed as at inference, overall and per location.

    A point outside the crop cannot be seen by the classifier; this is the ceiling its location AUC works under.
    The canonical volume's axes are LPS-aligned (z -> S, y -> P, x -> L), so the crop is an LPS box.
    """
    half_lps = (np.asarray(cfg["input_shape"], dtype=np.float64) * np.asarray(cfg["spacing_mm"], dtype=np.float64)
                / 2.0)[::-1]
    inside: dict[str, list[bool]] = {}
    for record in records:
        if record.uid not in centres:
            continue
        box_centre = classifier_centre(centres[record.uid], cfg["centre_offset_lps_mm"])
        for loc, lps in record.points:
            inside.setdefault(LOCATION_COLS[loc], []).append(bool(np.all(np.abs(lps - box_centre) <= half_lps)))
    every = [v for values in inside.values() for v in values]
    out = {"all": float(np.mean(every)) if every else float("nan")}
    out.update({name: float(np.mean(inside[name])) for name in LOCATION_COLS if name in inside})
    return out


def flip_sample(sample: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Patient left/right flip (array axis x): image and dense targets mirrored, paired labels and classes swapped."""
    seg = sample["seg"][..., ::-1]
    seg = np.where(seg >= 0, SEG_FLIP[np.clip(seg, 0, None)], seg)
    return {**sample, "crop": np.ascontiguousarray(sample["crop"][..., ::-1]),
            "labels": sample["labels"][LABEL_FLIP],
            "heatmap": np.ascontiguousarray(sample["heatmap"][LOCATION_FLIP][..., ::-1]),
            "seg": np.ascontiguousarray(seg)}


def _seg_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vessel label map and its (i, j, k) -> LPS affine."""
    import nibabel as nib

    image = nib.load(str(path))
    return np.asarray(image.dataobj).astype(np.uint8), np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine


PRELOAD_MODES = ("volumes", "regions", "none")


class SeriesStore:
    """Normalised canonical volumes (and segmentations) by uid, held in memory as ``preload`` says.

    ``volumes`` keeps every whole volume (small data). ``regions`` keeps nothing until ``keep_region`` is given a
    locator centre, then only the box each classifier crop can come from (crop plus the jitter margin): memory
    follows the crop, not the head, and crops are identical to crops of the whole volume. ``none`` reads the cache
    every time.
    """

    def __init__(self, cache_dir: Path, data_dir: Path, records: Sequence[SeriesRecord],
                 normalisation: Mapping[str, str], preload: str = "volumes"):
        if preload not in PRELOAD_MODES:
            raise ValueError(f"data.preload must be one of {PRELOAD_MODES}, got {preload!r}")
        self.cache_dir, self.data_dir, self.normalisation = Path(cache_dir), Path(data_dir), dict(normalisation)
        self.records = {r.uid: r for r in records}
        self.preload = preload
        self._volumes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._regions: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._segs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if preload == "volumes":
            for uid in tqdm(self.records, desc="preload volumes", mininterval=5, disable=len(self.records) < 100):
                self._volumes[uid] = self._load(uid)

    def _load(self, uid: str) -> tuple[np.ndarray, np.ndarray]:
        volume = load_cached(self.cache_dir, uid, mmap=True)
        scheme = self.normalisation["CT" if volume.modality == "CT" else "MR"]
        return normalise(np.asarray(volume.array), scheme), volume.affine

    def volume(self, uid: str) -> tuple[np.ndarray, np.ndarray]:
        """(normalised array, affine) of a whole series."""
        return self._volumes[uid] if uid in self._volumes else self._load(uid)

    def region(self, uid: str) -> tuple[np.ndarray, np.ndarray]:
        """What classifier crops are cut from: the kept region in ``regions`` mode, else the whole volume."""
        return self._regions[uid] if uid in self._regions else self.volume(uid)

    def keep_region(self, uid: str, array: np.ndarray, affine: np.ndarray, centre: np.ndarray,
                    cfg: Mapping[str, Any]) -> None:
        """In ``regions`` mode keep, of the whole volume ``array``, the box that holds every crop around ``centre``.

        Called with the volume the locator has just read (no second read). The box is cut on the volume's own grid
        (clipped to the volume, so nothing outside it is invented) and covers the crop's physical extent (with
        ``augment`` on, the farthest a rotated, scaled crop reaches) plus ``jitter_mm`` and two voxels for trilinear
        sampling on each side, so a crop of the region equals the crop of the whole volume.
        """
        if self.preload != "regions":
            return
        extent = np.asarray(cfg["input_shape"], dtype=np.float64) * np.asarray(cfg["spacing_mm"], dtype=np.float64)
        spacing, size = spacing_of(affine), np.asarray(array.shape)
        half = extent / spacing / 2.0
        if augment_enabled(cfg.get("augment")):
            half = np.maximum(half, spatial_reach_mm(cfg["input_shape"], cfg["spacing_mm"], cfg["augment"]) / spacing)
        half = half + np.ceil(float(cfg["jitter_mm"]) / spacing) + 2
        middle = world_to_voxel(affine, classifier_centre(centre, cfg["centre_offset_lps_mm"])[None])[0]
        lo = np.clip(np.floor(middle - half), 0, size - 1).astype(int)
        hi = np.maximum(np.clip(np.ceil(middle + half) + 1, 0, size).astype(int), lo + 1)
        region_affine = affine.copy()
        region_affine[:3, 3] = voxel_to_world(affine, lo[None].astype(np.float64))[0]
        self._regions[uid] = (np.ascontiguousarray(array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]), region_affine)

    def seg(self, uid: str) -> tuple[np.ndarray, np.ndarray] | None:
        record = self.records[uid]
        if not record.seg_file:
            return None
        if uid not in self._segs:
            self._segs[uid] = _seg_volume(self.data_dir / record.seg_file)
        return self._segs[uid]


class LocatorDataset(Dataset):
    """Locator inputs and target distributions for series with a known Circle-of-Willis centre."""

    def __init__(self, store: SeriesStore, uids: Sequence[str], cfg: Mapping[str, Any], train: bool, seed: int = 0):
        self.store, self.cfg, self.train, self.seed = store, cfg, train, seed
        self.uids = [u for u in uids if store.records[u].centre_lps is not None]
        self.epoch = 0
        self.augment = cfg.get("augment") if train and augment_enabled(cfg.get("augment")) else None
        if self.augment is not None:
            check_augment(self.augment, "locator.augment")
        self._bases: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def base(self, uid: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``kernel.recipe.locator_base`` of a series (downsampled volume, affine, field-of-view middle), kept."""
        if uid not in self._bases:
            self._bases[uid] = locator_base(*self.store.volume(uid), self.cfg["spacing_mm"])
        return self._bases[uid]

    def __len__(self) -> int:
        return len(self.uids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        uid = self.uids[i]
        shift, spatial, aug_rng = None, None, None
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            shift = rng.uniform(-1, 1, 3) * float(self.cfg["shift_mm"])
        if self.augment is not None:
            aug_rng = augment_rng(self.seed, self.epoch, i)
            spatial = draw_spatial(aug_rng, self.augment)
        inp, _, target = locator_sample(self.base(uid), self.cfg, self.store.records[uid].centre_lps, shift, spatial)
        if aug_rng is not None:
            inp = augment_intensity(inp, aug_rng, self.augment)
        return {"volume": torch.from_numpy(inp[None]), "target": torch.from_numpy(target[None])}


class ClassifierDataset(Dataset):
    """Region crops around given centres (the locator's predictions) with dense targets and augmentation."""

    def __init__(self, store: SeriesStore, uids: Sequence[str], centres: Mapping[str, np.ndarray],
                 cfg: Mapping[str, Any], train: bool, seed: int = 0):
        self.store, self.uids, self.centres, self.cfg, self.train, self.seed = store, list(uids), centres, cfg, \
            train, seed
        self.epoch = 0
        self.augment = cfg.get("augment") if train and augment_enabled(cfg.get("augment")) else None
        if self.augment is not None:
            check_augment(self.augment, "classifier.augment")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.uids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        uid = self.uids[i]
        array, affine = self.store.region(uid)
        centre = classifier_centre(self.centres[uid], self.cfg["centre_offset_lps_mm"])
        rng = np.random.default_rng([self.seed, self.epoch, i]) if self.train else None
        if rng is not None:
            centre = centre + rng.uniform(-1, 1, 3) * float(self.cfg["jitter_mm"])
        aug_rng = None if self.augment is None else augment_rng(self.seed, self.epoch, i)
        spatial = None if aug_rng is None else draw_spatial(aug_rng, self.augment)
        sample = classifier_sample(array, affine, centre, self.cfg, self.store.records[uid], self.store.seg(uid),
                                   spatial)
        if rng is not None:
            jitter = float(self.cfg["intensity_jitter"])
            sample["crop"] = sample["crop"] * rng.uniform(1 - jitter, 1 + jitter) + rng.uniform(-jitter, jitter) / 2
            if aug_rng is not None:
                sample["crop"] = augment_intensity(sample["crop"], aug_rng, self.augment)
            if rng.random() < float(self.cfg["flip_p"]):
                sample = flip_sample(sample)
        return {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else torch.tensor(v)
                for k, v in {**sample, "crop": sample["crop"][None].astype(np.float32)}.items()}
