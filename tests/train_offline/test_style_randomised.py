"""Tests of the ``randomised`` phantom style (domain randomisation): contract, determinism, left/right, lumen
contrast per protocol, the sac taking its parent's intensity, label map values, geometry, dome size, real spacing."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from kernel.labels import LOCATION_COLS, MODALITY_NAMES, SEG_LABEL_VALUES
from train_offline.phantoms.styles import randomised
from train_offline.phantoms.styles.contract import StyleScan
from train_offline.phantoms.styles.randomised import acquisition, anatomy, aneurysms, contrast, imaging

LATERAL = [loc for loc in LOCATION_COLS if loc.startswith(("Left", "Right"))]


def _voxel(scan: StyleScan, lps: np.ndarray) -> np.ndarray:
    """Continuous (k, r, c) index of an LPS point."""
    return (np.linalg.inv(scan.affine) @ np.r_[lps, 1.0])[:3]


def _distance_map(scan: StyleScan, lps: np.ndarray) -> np.ndarray:
    """Distance (mm) of every voxel centre to an LPS point."""
    k, r, c = (np.arange(n) for n in scan.image.shape)
    a = scan.affine
    pts = (a[:3, 0] * k[:, None, None, None] + a[:3, 1] * r[None, :, None, None] + a[:3, 2] * c[None, None, :, None]
           + a[:3, 3])
    return np.linalg.norm(pts - lps, axis=-1)


@pytest.fixture(scope="module")
def cta_scan() -> StyleScan:
    return randomised.render(np.random.default_rng(11), "CTA", ["Left Middle Cerebral Artery", "Basilar Tip"], "small",
                             with_labels=True, mode="protocol")


def test_contract_and_determinism(cta_scan: StyleScan) -> None:
    again = randomised.render(np.random.default_rng(11), "CTA", ["Left Middle Cerebral Artery", "Basilar Tip"],
                              "small", with_labels=True, mode="protocol")
    assert isinstance(again, StyleScan) and again.image.dtype == np.float32
    assert again.image.tobytes() == cta_scan.image.tobytes(), "same generator state must give identical pixels"
    assert again.labels_map.tobytes() == cta_scan.labels_map.tobytes()
    other = randomised.render(np.random.default_rng(12), "CTA", ["Left Middle Cerebral Artery", "Basilar Tip"],
                              "small", mode="protocol")
    assert other.image.shape != cta_scan.image.shape or not np.array_equal(other.image, cta_scan.image)
    json.dumps(cta_scan.truth)  # the writer stores it


def test_public_entry_point_draws_both_regimes() -> None:
    seen = set()
    for seed in range(6):
        scan = randomised.render_series(np.random.default_rng(seed), "MRA", [], "small")
        seen.add(scan.truth["randomisation"])
        assert not scan.aneurysms and np.all(scan.image >= 0) and np.isfinite(scan.image).all()
    assert seen == {"protocol", "full"}


@pytest.mark.parametrize("modality", MODALITY_NAMES)
def test_small_geometry_and_units(modality: str) -> None:
    scan = randomised.render(np.random.default_rng(5), modality, ["Right Posterior Communicating Artery"], "small",
                             mode="full")
    nz, ny, nx = scan.image.shape
    assert 96 <= ny <= 160 and 96 <= nx <= 160 and 24 <= nz <= 120
    assert 1.2 <= scan.pixel_spacing[0] <= 2.5 and scan.pixel_spacing[0] == scan.pixel_spacing[1]
    assert abs(np.linalg.norm(scan.row_dir) - 1) < 1e-9 and abs(np.linalg.norm(scan.col_dir) - 1) < 1e-9
    assert abs(float(scan.row_dir @ scan.col_dir)) < 1e-9
    if scan.three_d:
        assert scan.slice_spacing <= 2.5
    else:
        assert 4.0 <= scan.slice_thickness <= 6.0 and scan.slice_spacing >= scan.slice_thickness
    if modality == "CTA":
        assert scan.image.min() >= -1024 and scan.image.max() <= 3071
    else:
        assert scan.image.min() >= 0
    k = _voxel(scan, scan.aneurysms[0].centre_lps)
    assert np.all(k >= 0) and np.all(k <= np.array(scan.image.shape) - 1), "aneurysm outside the field of view"


def test_left_right_in_lps() -> None:
    """A "Left ..." aneurysm lies on the patient's left: LPS x > 0 (RAS head frame mirrored)."""
    scan = randomised.render(np.random.default_rng(3), "MRI T2", LATERAL, "small")
    for a in scan.aneurysms:
        assert (a.centre_lps[0] > 0) == a.location.startswith("Left"), (a.location, a.centre_lps)
    for seed in range(40):  # the same check over many poses and anatomies, without the image
        rng = np.random.default_rng(seed)
        tree = anatomy.build_arteries(rng, np.ones(3))
        sacs = aneurysms.place_aneurysms(rng, tree, LATERAL, None)
        sides = [1 if s.location.startswith("Left") else -1 for s in sacs]
        pose = acquisition.draw_pose(rng, [s.centre for s in sacs], sides)
        for s, side in zip(sacs, sides, strict=True):
            assert side * (pose[:3, :3] @ s.centre + pose[:3, 3])[0] > 0, (seed, s.location)


@pytest.mark.parametrize("modality", MODALITY_NAMES)
def test_lumen_contrast_follows_protocol(modality: str) -> None:
    """In the protocol regime the sac looks like the protocol's lumen: bright on CTA and TOF, dark (flow void) on
    T2 and 2D T1 spin echo, bright on 3D T1 GRE."""
    for seed in (1, 2):
        scan = randomised.render(np.random.default_rng(seed), modality, ["Basilar Tip"], "small", dome_mm=9.0,
                                 mode="protocol")
        a = scan.aneurysms[0]
        dist = _distance_map(scan, a.centre_lps)
        core = float(np.mean(scan.image[dist <= 1.5])) if (dist <= 1.5).any() else float(scan.image.flat[dist.argmin()])
        shell = float(np.median(scan.image[(dist > 8.0) & (dist < 13.0)]))
        bright = modality in ("CTA", "MRA") or (modality == "MRI T1post" and scan.three_d)
        if bright:
            assert core > shell * 1.5 + (100 if modality == "CTA" else 0), (modality, seed, core, shell)
        else:
            assert core < 0.8 * shell, (modality, seed, core, shell)


def test_sac_takes_parent_intensity_in_full_regime() -> None:
    """With no inhomogeneity the sac's voxels carry exactly the parent artery's value there (any contrast)."""
    rng = np.random.default_rng(7)
    tree = anatomy.build_arteries(rng, np.ones(3))
    sacs = aneurysms.place_aneurysms(rng, tree, ["Right Middle Cerebral Artery"], 6.0)
    pose = acquisition.draw_pose(rng, [sacs[0].centre], [-1])
    acq = acquisition.draw_acquisition(rng, "CTA", "small", pose, [sacs[0].centre])
    c = contrast.draw_contrast(rng, "CTA", True, "full")
    c.sac_patch = 0.0
    lat = acq.lattice(pose)
    gain = np.ones(acq.shape[0], np.float32)
    (idx, occ, val, lab, inside), = imaging.sac_entries(rng, c, lat, sacs, 1.0, (0.0,), gain)
    parent = sacs[0].parent
    i = int(np.argmin(np.linalg.norm(parent.points - sacs[0].parent_point, axis=1)))
    expected = imaging._tube_values(c, parent, lat.to_grid(parent.points))[i]
    assert np.allclose(val, expected, rtol=1e-5), "sac intensity must equal the parent artery's"
    assert np.all(lab == SEG_LABEL_VALUES["Right Middle Cerebral Artery"]) and inside.sum() > 20


def test_label_map_on_centrelines(cta_scan: StyleScan) -> None:
    """The label map at a labelled vessel's centreline carries that vessel's segmentation value."""
    labels = cta_scan.labels_map
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, *SEG_LABEL_VALUES.values()}
    hits, total = 0, 0
    for line in cta_scan.truth["centrelines"].values():
        if line["radius_mm"] < 1.2:  # thinner than a voxel on the small grid
            continue
        for p in line["points_lps"][2:-2]:
            k = np.round(_voxel(cta_scan, np.array(p))).astype(int)
            if np.all(k >= 0) and np.all(k < labels.shape):
                total += 1
                hits += int(labels[tuple(k)] == line["label"])
    assert total > 50 and hits / total > 0.85, (hits, total)


def test_dome_size_honoured_and_reported() -> None:
    scan = randomised.render(np.random.default_rng(4), "MRA", ["Anterior Communicating Artery", "Right Middle "
                             "Cerebral Artery", "Anterior Communicating Artery"], "small", dome_mm=3.0)
    assert len(scan.aneurysms) == 3 and all(a.dome_mm == 3.0 for a in scan.aneurysms)
    assert all(0.5 * 3.0 <= a.neck_mm <= 0.9 * 3.0 for a in scan.aneurysms)
    free = [aneurysms.draw_dome(np.random.default_rng(s), None) for s in range(400)]
    assert 3.8 < float(np.median(free)) < 5.3 and min(free) >= 2.0 and max(free) <= 25.0


@pytest.mark.slow
@pytest.mark.parametrize("modality", MODALITY_NAMES)
def test_real_size_spacing(modality: str) -> None:
    """Real-scan voxel sizes of the protocol (spec table); prints the render time."""
    t0 = time.process_time()
    scan = randomised.render_series(np.random.default_rng(21), modality, ["Left Middle Cerebral Artery"], "real")
    print(f"{modality}: {scan.image.shape} in {time.process_time() - t0:.2f} CPU s ({scan.truth['randomisation']})")
    px, dz, nz = scan.pixel_spacing[0], scan.slice_spacing, scan.image.shape[0]
    if modality == "CTA":
        assert 0.39 <= px <= 0.49 and 0.5 <= dz <= 1.0 and 200 <= nz <= 600 and scan.image.shape[1:] == (512, 512)
    elif modality == "MRA":
        assert 0.29 <= px <= 0.5 and 0.5 <= dz <= 1.0 and 120 <= nz <= 200 and scan.three_d
    elif scan.three_d:
        assert 0.4 <= px <= 1.0 and 0.8 <= dz <= 1.0
    else:
        assert 0.4 <= px <= 1.0 and 4.0 <= scan.slice_thickness <= 6.0
    if scan.three_d:
        assert 3.0 / max(px, dz) >= 3.0, "a 3 mm dome must span 3 voxels"
