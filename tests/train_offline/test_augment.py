"""nnU-Net's default augmentation (train_offline/augment.py) in the three stages' samples: targets move with the image
under rotation and scaling, intensity transforms keep what they promise, ``enabled: false`` gives today's samples bit
for bit, a fixed seed gives the same samples, and the left/right flip still swaps the paired labels."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from kernel.labels import LABEL_COLS, LOCATION_COLS, SEG_LABEL_VALUES
from kernel.preprocess import (
    crop_affine,
    crop_around,
    grid_points_lps,
    normaliser,
    voxel_to_world,
    world_to_voxel,
)
from kernel.recipe import classifier_centre, locator_base, locator_input_from_base
from testkit.training_data import canonical_affine, write_training_set
from train_offline.augment import (
    Spatial,
    augment_intensity,
    check_augment,
    contrast,
    gamma,
    gaussian_noise,
    low_resolution,
    rotation_matrix,
    spatial_affine,
    spatial_crop,
    spatial_reach_mm,
)
from train_offline.cache import load_cached
from train_offline.config import DEFAULTS, ConfigError, load_config, parse_overrides
from train_offline.data import (
    LABEL_FLIP,
    LOCATION_FLIP,
    SEG_FLIP,
    ClassifierDataset,
    LocatorDataset,
    SeriesRecord,
    SeriesStore,
    classifier_sample,
    flip_sample,
    locator_sample,
    records_from_index,
)
from train_offline.export import export_random
from train_offline.fine.boxes import cut_box
from train_offline.fine.dataset import FineDataset, augment, site_sample
from train_offline.index import build_index
from train_offline.models import CLASSIFIER_STRIDE, FINE_STRIDE

NORMALISATION = {"CT": "ct_angio", "MR": "mr_percentile"}
LEFT_MCA, RIGHT_MCA = LOCATION_COLS.index("Left Middle Cerebral Artery"), LOCATION_COLS.index(
    "Right Middle Cerebral Artery")
DRAWS = [Spatial((25.0, -20.0, 15.0), 1.3), Spatial((-28.0, 10.0, -22.0), 0.75), Spatial((0.0, 0.0, 30.0), 1.0)]


def all_on(section: str, **changes: float) -> dict:
    """The section's ``augment`` defaults switched on, every probability 1 unless ``changes`` says otherwise."""
    aug = copy.deepcopy(DEFAULTS[section]["augment"])
    aug.update({k: 1.0 for k in aug if k.endswith("_p")}, enabled=True)
    aug.update(changes)
    return aug


def blob_volume(point_lps: np.ndarray, spacing: float = 2.0, shape: tuple[int, int, int] = (56, 56, 56),
                sigma_mm: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """A dark cube holding one bright Gaussian blob at ``point_lps`` (canonical affine centred on the origin)."""
    affine = canonical_affine(spacing, shape)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    d2 = np.sum((voxel_to_world(affine, grid) - point_lps) ** 2, axis=1).reshape(shape)
    return np.exp(-d2 / (2 * sigma_mm**2)).astype(np.float32), affine


def record_at(point_lps: np.ndarray, location: int = LEFT_MCA) -> SeriesRecord:
    labels = np.zeros(len(LABEL_COLS), np.float32)
    labels[[location, -1]] = 1
    return SeriesRecord(uid="u", labels=labels, modality=0, points=[(location, point_lps)], centre_lps=point_lps,
                        seg_file="")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Six cached 4 mm noise cubes with a landmark (testkit), their index records and a whole-volume store."""
    data, cache = write_training_set(tmp_path_factory.mktemp("aug"), n=6, spacing=4.0, shape=(40, 40, 40))
    records = records_from_index(build_index(data, cache, progress=False))
    store = SeriesStore(cache, data, records, NORMALISATION, preload="volumes")
    rng = np.random.default_rng(0)
    centres = {r.uid: rng.uniform(-15, 15, 3) for r in records}
    return {"data": data, "cache": cache, "records": records, "store": store, "centres": centres,
            "uids": [r.uid for r in records], "config": load_config("smoke")}


# --- the targets move with the image -----------------------------------------------------------------------------


@pytest.mark.parametrize("spatial", DRAWS)
def test_blob_stays_under_the_heatmap_peak_after_rotation_and_scaling(spatial: Spatial) -> None:
    point = np.array([18.0, -14.0, 10.0])
    array, affine = blob_volume(point)
    centre = np.array([4.0, -2.0, -3.0])
    cfg = {"input_shape": [24, 32, 32], "spacing_mm": [2.0] * 3, "heatmap_sigma_mm": 4.0}
    sample = classifier_sample(array, affine, centre, cfg, record_at(point), None, spatial)
    blob_cell = np.array(np.unravel_index(np.argmax(sample["crop"]), sample["crop"].shape)) // CLASSIFIER_STRIDE
    heat = sample["heatmap"][LEFT_MCA]
    peak_cell = np.array(np.unravel_index(np.argmax(heat), heat.shape))
    assert np.abs(blob_cell - peak_cell).max() <= 1, (blob_cell, peak_cell)
    assert heat.max() > 0.3  # cells 8 mm x scale apart: the nearest lies within half a cell of the localizer
    # the crop voxel of the blob sits at the localizer in LPS: the affine describes the sampled image
    _, grid = spatial_crop(array, affine, centre, cfg["input_shape"], cfg["spacing_mm"], spatial)
    blob_voxel = np.array(np.unravel_index(np.argmax(sample["crop"]), sample["crop"].shape))
    assert np.linalg.norm(voxel_to_world(grid, blob_voxel[None])[0] - point) <= 2.0 * spatial.scale
    # and the transform moved it: without it the blob lies elsewhere in the crop
    plain = classifier_sample(array, affine, centre, cfg, record_at(point), None, None)["crop"]
    assert not np.array_equal(np.unravel_index(np.argmax(plain), plain.shape), tuple(blob_voxel))


def test_seg_target_of_a_rotated_crop_is_the_segmentation_at_the_rotated_points() -> None:
    rng = np.random.default_rng(4)
    shape = (40, 44, 48)
    seg_affine = canonical_affine(1.5, shape)
    labels = rng.integers(0, 14, shape).astype(np.uint8)
    array = rng.random(shape).astype(np.float32)
    centre = np.array([3.0, -5.0, 2.0])
    cfg = {"input_shape": [24, 32, 32], "spacing_mm": [1.5] * 3, "heatmap_sigma_mm": 4.0}
    spatial = Spatial((20.0, -25.0, 12.0), 1.2)
    sample = classifier_sample(array, seg_affine, centre, cfg, record_at(centre), (labels, seg_affine), spatial)
    # the rotated points, built here from the crop's plain grid: cell centres about the crop centre, rotated in the
    # crop's axes (z, y, x; D maps them to LPS), scaled
    plain = crop_affine(seg_affine, centre, cfg["input_shape"], cfg["spacing_mm"])
    cells = grid_points_lps(plain, cfg["input_shape"], CLASSIFIER_STRIDE)
    middle = voxel_to_world(plain, (np.array(cfg["input_shape"])[None] - 1) / 2.0)[0]
    axes = plain[:3, :3] / np.linalg.norm(plain[:3, :3], axis=0)
    turn = axes @ rotation_matrix(spatial.angles_deg) @ axes.T
    rotated = middle + spatial.scale * (cells - middle) @ turn.T
    ijk = np.rint(world_to_voxel(seg_affine, rotated.reshape(-1, 3))).astype(int)
    inside = np.all((ijk >= 0) & (ijk < shape), axis=1)
    expected = np.zeros(len(ijk), np.int64)
    expected[inside] = labels[tuple(ijk[inside].T)]
    assert 0.3 < inside.mean() < 1.0  # the scaled, rotated crop reaches beyond the segmentation
    np.testing.assert_array_equal(sample["seg"], expected.reshape(sample["seg"].shape))


def test_locator_target_peak_follows_the_head() -> None:
    centre = np.array([22.0, 18.0, -12.0])  # the Circle of Willis off the field of view's middle
    array, affine = blob_volume(centre, spacing=2.0, shape=(96, 96, 96), sigma_mm=8.0)
    base = locator_base(array, affine, [6.0] * 3)
    cfg = {"input_shape": [24, 24, 24], "output_stride": 2, "sigma_mm": 8.0}
    peaks = set()
    for spatial in DRAWS:
        inp, inp_affine, target = locator_sample(base, cfg, centre, np.array([5.0, -4.0, 3.0]), spatial)
        head = np.array(np.unravel_index(np.argmax(inp), inp.shape)) // 2
        peak = np.array(np.unravel_index(np.argmax(target), target.shape))
        assert np.abs(head - peak).max() <= 1, (spatial, head, peak)
        assert target.sum() == pytest.approx(1.0, abs=1e-5)
        peaks.add(tuple(peak))
    assert len(peaks) > 1  # the draws moved the head, and the target with it


def test_fine_sphere_target_and_label_move_with_the_patch() -> None:
    point = np.array([4.0, -3.0, 2.0])
    array, affine = blob_volume(point, spacing=0.5, shape=(64, 64, 64), sigma_mm=1.0)
    cfg = {"input_shape": [24, 24, 24], "spacing_mm": [0.6] * 3, "positive_radius_mm": 6.0, "sphere_radius_mm": 2.0}
    for spatial in DRAWS:
        sample = site_sample((array, affine), lambda a: a, np.zeros(3), [point], cfg, spatial)
        blob = np.array(np.unravel_index(np.argmax(sample["patch"]), sample["patch"].shape)) // FINE_STRIDE
        marked = np.argwhere(sample["sphere"] > 0)
        assert sample["label"] == 1.0 and len(marked)
        assert np.abs(marked.mean(axis=0) - blob).max() <= 1.0, spatial


# --- intensity transforms ------------------------------------------------------------------------------------------


def test_gamma_keeps_mean_and_std_and_changes_the_image() -> None:
    image = np.random.default_rng(1).gamma(2.0, 0.2, (24, 24, 24)).astype(np.float32)
    for value, invert in ((0.7, False), (1.5, False), (0.8, True), (1.4, True)):
        out = gamma(image, value, invert)
        assert out.mean() == pytest.approx(image.mean(), abs=1e-5)
        assert out.std() == pytest.approx(image.std(), rel=1e-4)
        assert np.abs(out - image).max() > 0.02 and out.dtype == np.float32


def test_contrast_keeps_the_mean_and_the_range() -> None:
    image = np.random.default_rng(2).random((20, 20, 20)).astype(np.float32)
    lower = contrast(image, 0.75)
    assert lower.mean() == pytest.approx(image.mean(), abs=1e-6) and lower.std() == pytest.approx(
        0.75 * image.std(), rel=1e-4)
    higher = contrast(image, 1.25)
    assert higher.min() >= image.min() and higher.max() <= image.max() and higher.std() > image.std()


def test_low_resolution_keeps_the_shape_and_loses_detail() -> None:
    image = np.random.default_rng(3).random((24, 32, 28)).astype(np.float32)
    for zoom_factor in (0.5, 0.73):
        for order in (1, 3):
            out = low_resolution(image, zoom_factor, order)
            assert out.shape == image.shape and out.dtype == np.float32
            assert np.abs(np.diff(out, axis=2)).mean() < 0.8 * np.abs(np.diff(image, axis=2)).mean()
    assert low_resolution(image, 1.0) is image


def test_noise_has_the_drawn_variance() -> None:
    image = np.zeros((32, 32, 32), np.float32)
    for variance in (0.01, 0.1):
        assert gaussian_noise(image, variance, np.random.default_rng(5)).var() == pytest.approx(variance, rel=0.03)
    aug = all_on("classifier", **{k: 0.0 for k in DEFAULTS["classifier"]["augment"] if k.endswith("_p")})
    aug["noise_p"] = 1.0
    drawn = [augment_intensity(image, np.random.default_rng(s), aug).var() for s in range(12)]
    assert all(0 <= v <= 0.1 * 1.05 for v in drawn) and np.std(drawn) > 0.01  # variances from [0, 0.1]


def test_every_transform_on_keeps_shape_dtype_and_finite_values() -> None:
    image = np.random.default_rng(6).random((16, 20, 24)).astype(np.float32)
    for seed in range(4):
        out = augment_intensity(image, np.random.default_rng(seed), all_on("classifier"))
        assert out.shape == image.shape and out.dtype == np.float32 and np.all(np.isfinite(out))


# --- wiring: off is today's sample, on is deterministic, the flip still swaps -----------------------------------


def _old_classifier_item(store: SeriesStore, uid: str, centre: np.ndarray, cfg: dict, seed: int, epoch: int,
                         i: int) -> dict[str, np.ndarray]:
    """The training sample as the code before ``augment`` built it (crop_around, targets, gain/offset, flip)."""
    array, affine = store.region(uid)
    rng = np.random.default_rng([seed, epoch, i])
    centre = classifier_centre(centre, cfg["centre_offset_lps_mm"]) + rng.uniform(-1, 1, 3) * float(cfg["jitter_mm"])
    shape = [int(s) for s in cfg["input_shape"]]
    crop, grid = crop_around(array, affine, centre, shape, cfg["spacing_mm"])
    points = grid_points_lps(grid, shape, CLASSIFIER_STRIDE)
    heatmap = np.zeros((len(LOCATION_COLS), *points.shape[:3]), np.float32)
    record = store.records[uid]
    for loc, lps in record.points:
        blob = np.exp(-np.sum((points - lps) ** 2, -1) / (2.0 * float(cfg["heatmap_sigma_mm"]) ** 2)).astype(np.float32)
        heatmap[loc] = np.maximum(heatmap[loc], blob)
    seg = np.full(points.shape[:3], -1, np.int64)
    if store.seg(uid) is not None:
        labels, seg_affine = store.seg(uid)
        ijk = np.rint(world_to_voxel(seg_affine, points.reshape(-1, 3))).astype(np.int64)
        inside = np.all((ijk >= 0) & (ijk < np.asarray(labels.shape)), axis=1)
        values = np.zeros(len(ijk), np.int64)
        values[inside] = labels[tuple(ijk[inside].T)]
        seg = values.reshape(points.shape[:3])
    jitter = float(cfg["intensity_jitter"])
    crop = crop * rng.uniform(1 - jitter, 1 + jitter) + rng.uniform(-jitter, jitter) / 2
    sample = {"crop": crop, "labels": record.labels.copy(), "heatmap": heatmap, "seg": seg,
              "modality": np.int64(record.modality)}
    return flip_sample(sample) if rng.random() < float(cfg["flip_p"]) else sample


@pytest.mark.parametrize("absent", [False, True])
def test_disabled_samples_are_bit_identical_to_the_code_before_augment(tiny: dict, absent: bool) -> None:
    """``enabled: false`` (and configs saved before the key existed) train exactly as before."""
    store, uids, centres = tiny["store"], tiny["uids"], tiny["centres"]
    loc_cfg, cls_cfg = copy.deepcopy(tiny["config"]["locator"]), copy.deepcopy(tiny["config"]["classifier"])
    assert loc_cfg["augment"]["enabled"] is False and cls_cfg["augment"]["enabled"] is False
    if absent:
        del loc_cfg["augment"], cls_cfg["augment"]
    classifier = ClassifierDataset(store, uids, centres, cls_cfg, train=True, seed=7)
    locator = LocatorDataset(store, uids, loc_cfg, train=True, seed=7)
    for epoch in (0, 1):
        classifier.set_epoch(epoch)
        locator.set_epoch(epoch)
        for i, uid in enumerate(uids):
            expected = _old_classifier_item(store, uid, centres[uid], cls_cfg, 7, epoch, i)
            got = classifier[i]
            assert torch.equal(got["crop"][0], torch.from_numpy(np.ascontiguousarray(expected["crop"])))
            for key in ("labels", "heatmap", "seg", "modality"):
                assert np.array_equal(got[key].numpy(), expected[key]), key
        for i, uid in enumerate(locator.uids):
            shift = np.random.default_rng([7, epoch, i]).uniform(-1, 1, 3) * float(loc_cfg["shift_mm"])
            base = locator_base(*store.volume(uid), loc_cfg["spacing_mm"])
            inp, _ = locator_input_from_base(base, loc_cfg["input_shape"], shift_lps=shift)
            assert torch.equal(locator[i]["volume"][0], torch.from_numpy(inp))


class _Boxes:
    """The fine stage's box store for a cached set: boxes cut from the cached volume around every site."""

    def __init__(self, tiny: dict, sites: dict, box_mm: float):
        self.boxes, self.norms = {}, {}
        for record in tiny["records"]:
            volume = load_cached(tiny["cache"], record.uid)
            points = [p for _, p in record.points] + sites[record.uid]["candidates"] + sites[record.uid]["random"]
            self.boxes[record.uid] = [cut_box(np.asarray(volume.array), volume.affine, np.asarray(p), box_mm)
                                      for p in points]
            self.norms[record.uid] = normaliser("ct_angio", np.asarray(volume.array))

    def box(self, uid: str, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.boxes[uid][i]

    def normalise(self, uid: str) -> Callable[[np.ndarray], np.ndarray]:
        return self.norms[uid]


def _fine_setup(tiny: dict, aug: dict | None) -> FineDataset:
    rng = np.random.default_rng(1)
    sites = {r.uid: {"candidates": [list(rng.uniform(-12, 12, 3)) for _ in range(3)], "random": [[0.0, 0.0, 0.0]]}
             for r in tiny["records"]}
    cfg = {**tiny["config"]["fine"], "intensity_jitter": 0.15, "blur_voxels": 1.0}
    if aug is not None:
        cfg["augment"] = aug
    records = {r.uid: r for r in tiny["records"]}
    return FineDataset(sites, records, _Boxes(tiny, sites, float(cfg["box_mm"])), tiny["uids"], cfg, seed=5)


def test_fine_disabled_is_the_old_augmentation_and_enabled_is_deterministic(tiny: dict) -> None:
    off = _fine_setup(tiny, None)
    assert off.cfg["augment"]["enabled"] is False
    cfg = off.cfg
    for i in range(len(off)):  # the patch as the code before ``augment`` built it
        uid, site, kind, point = off.items[i]
        rng = np.random.default_rng([5, 0, i])
        centre = point + rng.uniform(-1, 1, 3) * float(cfg["truth_jitter_mm" if kind == "truth" else
                                                            "candidate_jitter_mm"])
        patch, grid = crop_around(*off.boxes.box(uid, site), centre, cfg["input_shape"], cfg["spacing_mm"])
        points = grid_points_lps(grid, cfg["input_shape"], FINE_STRIDE)
        sphere = np.zeros(points.shape[:3], np.float32)
        for _, lps in tiny["store"].records[uid].points:
            sphere[np.sum((points - lps) ** 2, -1) <= float(cfg["sphere_radius_mm"]) ** 2] = 1.0
        expected = augment({"patch": off.boxes.normalise(uid)(patch), "sphere": sphere, "label": np.float32(0)}, rng,
                           0.15, 1.0)
        got = off[i]
        assert np.array_equal(got["patch"][0].numpy(), expected["patch"])
        assert np.array_equal(got["sphere"][0].numpy(), expected["sphere"])
    with pytest.warns(UserWarning, match="box_mm"):
        on, again = _fine_setup(tiny, all_on("fine")), _fine_setup(tiny, all_on("fine"))
    for i in range(len(on)):
        a, b = on[i], again[i]
        assert all(torch.equal(a[k], b[k]) for k in a) and a["patch"].shape == off[i]["patch"].shape


def test_fixed_seed_gives_the_same_augmented_samples(tiny: dict) -> None:
    store, uids, centres = tiny["store"], tiny["uids"], tiny["centres"]
    cfg = {**tiny["config"]["classifier"], "augment": all_on("classifier", rotation_p=0.5, scale_p=0.5)}
    a, b = (ClassifierDataset(store, uids, centres, cfg, train=True, seed=3) for _ in range(2))
    first = [a[i] for i in range(len(uids))]
    assert all(torch.equal(x[k], b[i][k]) for i, x in enumerate(first) for k in x)
    a.set_epoch(1)
    assert not all(torch.equal(x["crop"], a[i]["crop"]) for i, x in enumerate(first))
    loc_cfg = {**tiny["config"]["locator"], "augment": all_on("locator")}
    c, d = (LocatorDataset(store, uids, loc_cfg, train=True, seed=3) for _ in range(2))
    assert all(torch.equal(c[i][k], d[i][k]) for i in range(len(c)) for k in ("volume", "target"))
    plain = ClassifierDataset(store, uids, centres, cfg, train=False)  # validation is never augmented
    assert plain.augment is None and LocatorDataset(store, uids, loc_cfg, train=False).augment is None


class _OneSeries:
    """A store of one series (the part of ``SeriesStore`` a ``ClassifierDataset`` reads)."""

    def __init__(self, array: np.ndarray, affine: np.ndarray, record: SeriesRecord, seg: np.ndarray):
        self.array, self.affine, self.records, self.labels = array, affine, {"u": record}, seg

    def region(self, uid: str) -> tuple[np.ndarray, np.ndarray]:
        return self.array, self.affine

    def seg(self, uid: str) -> tuple[np.ndarray, np.ndarray]:
        return self.labels, self.affine


def test_flip_still_swaps_paired_labels_after_the_new_transforms() -> None:
    point = np.array([14.0, -10.0, 8.0])
    array, affine = blob_volume(point)
    seg = np.where(array > 0.3, SEG_LABEL_VALUES["Left Middle Cerebral Artery"], 0).astype(np.uint8)
    store = _OneSeries(array, affine, record_at(point, LEFT_MCA), seg)
    cfg = {**load_config("smoke")["classifier"], "input_shape": [24, 32, 32], "spacing_mm": [2.0] * 3,
           "augment": all_on("classifier", rotation_p=1.0, scale_p=1.0)}
    kept = ClassifierDataset(store, ["u"], {"u": np.zeros(3)}, {**cfg, "flip_p": 0.0}, train=True, seed=2)[0]
    flipped = ClassifierDataset(store, ["u"], {"u": np.zeros(3)}, {**cfg, "flip_p": 1.0}, train=True, seed=2)[0]
    assert torch.equal(flipped["labels"], kept["labels"][LABEL_FLIP])
    assert flipped["labels"][RIGHT_MCA] == 1 and flipped["labels"][LEFT_MCA] == 0
    assert torch.equal(flipped["crop"], kept["crop"].flip(-1))
    assert torch.equal(flipped["heatmap"], kept["heatmap"][LOCATION_FLIP].flip(-1))
    assert flipped["heatmap"][RIGHT_MCA].max() > 0.5 and flipped["heatmap"][LEFT_MCA].max() == 0
    right = SEG_LABEL_VALUES["Right Middle Cerebral Artery"]
    assert (kept["seg"] > 0).any() and torch.equal(flipped["seg"], torch.from_numpy(SEG_FLIP)[kept["seg"]].flip(-1))
    assert set(flipped["seg"].unique().tolist()) == {0, right}


def test_regions_store_holds_every_rotated_scaled_crop(tiny: dict) -> None:
    """preload=regions keeps a region as large as the farthest reach of a rotated, scaled crop: crops are identical to
    crops of the whole volume."""
    uids, centres = tiny["uids"], tiny["centres"]
    cfg = {**tiny["config"]["classifier"], "input_shape": [12, 16, 16],
           "augment": all_on("classifier", noise_p=0.0)}
    regions = SeriesStore(tiny["cache"], tiny["data"], tiny["records"], NORMALISATION, preload="regions")
    for uid in uids:
        regions.keep_region(uid, *tiny["store"].volume(uid), centres[uid], cfg)
    a = ClassifierDataset(tiny["store"], uids, centres, cfg, train=True, seed=1)
    b = ClassifierDataset(regions, uids, centres, cfg, train=True, seed=1)
    for i in range(len(uids)):
        assert regions.region(uids[i])[0].size < tiny["store"].volume(uids[i])[0].size
        assert all(torch.equal(a[i][k], b[i][k]) for k in a[i])


def test_spatial_affine_and_reach() -> None:
    grid = crop_affine(canonical_affine(1.5, (40, 40, 40)), [3.0, 1.0, -2.0], [8, 10, 12], [1.5] * 3)
    assert np.array_equal(spatial_affine(grid, [8, 10, 12], Spatial()), grid)
    turned = spatial_affine(grid, [8, 10, 12], Spatial((10.0, 20.0, 30.0), 1.2))
    middle = (np.array([8, 10, 12])[None] - 1) / 2.0
    np.testing.assert_allclose(voxel_to_world(turned, middle), voxel_to_world(grid, middle))  # about the centre
    np.testing.assert_allclose(np.linalg.norm(turned[:3, :3], axis=0), [1.8] * 3)  # steps x scale
    assert np.linalg.det(turned[:3, :3]) * np.linalg.det(grid[:3, :3]) > 0  # a rotation: no mirror hidden in it
    half = np.array([8, 10, 12]) * 1.5 / 2
    off = {"enabled": False}
    assert np.array_equal(spatial_reach_mm([8, 10, 12], [1.5] * 3, off), half)
    reach = spatial_reach_mm([8, 10, 12], [1.5] * 3, all_on("classifier"))
    assert np.all(reach > half * 1.4) and np.all(reach <= np.linalg.norm(half) * 1.4 + 1e-9)


def test_config_switches_it_on_and_refuses_large_rotations() -> None:
    config = load_config("demo", parse_overrides(["classifier.augment.enabled=true", "fine.augment.scale_p=0.5"]))
    assert config["classifier"]["augment"]["enabled"] is True and config["locator"]["augment"]["enabled"] is False
    assert config["fine"]["augment"]["scale_p"] == 0.5 and config["fine"]["augment"]["mirror_x_p"] == 0.5
    check_augment(config["classifier"]["augment"])
    with pytest.raises(ConfigError, match="rotation_deg"):
        check_augment({**config["classifier"]["augment"], "rotation_deg": 45.0})
    with pytest.raises(ConfigError, match="gamma"):
        check_augment({**config["classifier"]["augment"], "gamma": [1.5, 0.7]})


def test_augment_settings_travel_in_the_manifest(tmp_path: Path) -> None:
    """The exported entries' ``config`` holds every stage's ``augment`` (export copies the resolved config)."""
    manifest = json.loads(export_random("smoke", tmp_path).read_text())
    config = load_config("smoke")
    assert manifest["models"]
    for entry in manifest["models"]:
        for section in ("locator", "classifier", "fine"):
            assert entry["config"][section]["augment"] == config[section]["augment"], (entry["role"], section)
