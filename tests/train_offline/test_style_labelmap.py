"""The labelmap phantom style: contract, determinism, protocol contrast at the aneurysm, left/right, labels, geometry.

Fast tests use size "small" (about a second a series); the "real"-size checks are marked slow.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from kernel.labels import LOCATION_COLS, MODALITY_NAMES, SEG_LABEL_VALUES
from train_offline.phantoms.styles.contract import StyleScan
from train_offline.phantoms.styles.labelmap import render_series
from train_offline.phantoms.styles.labelmap.aneurysms import draw_dome, place_sacs
from train_offline.phantoms.styles.labelmap.geometry import draw_pose, draw_protocol, draw_scale
from train_offline.phantoms.styles.labelmap.vessels import Displacement, build_arteries, draw_variants

SIDED = [loc for loc in LOCATION_COLS if loc.startswith(("Left", "Right"))]
QUIET = ["Right Middle Cerebral Artery", "Left Anterior Cerebral Artery"]


def _render(seed: int, modality: str, locations: list[str], **kw) -> StyleScan:
    return render_series(np.random.default_rng(seed), modality, locations, "small", **kw)


def _index(scan: StyleScan, lps: np.ndarray) -> np.ndarray:
    return (np.linalg.inv(scan.affine) @ np.r_[lps, 1.0])[:3]


def _shell_median(scan: StyleScan, centre: np.ndarray, radius: float) -> float:
    v = np.random.default_rng(0).normal(size=(256, 3))
    pts = centre + radius * v / np.linalg.norm(v, axis=1, keepdims=True)
    idx = (np.c_[pts, np.ones(len(pts))] @ np.linalg.inv(scan.affine).T)[:, :3]
    return float(np.median(ndi.map_coordinates(scan.image, idx.T, order=1, mode="nearest")))


def _disc(scan: StyleScan, centre: np.ndarray, radius: float) -> np.ndarray:
    """Pixels of the native slice nearest ``centre`` within ``radius`` mm of it in plane."""
    k, r, c = _index(scan, centre)
    k = int(np.clip(round(k), 0, scan.image.shape[0] - 1))
    rr, cc = np.mgrid[: scan.image.shape[1], : scan.image.shape[2]]
    d2 = ((rr - r) * scan.pixel_spacing[0]) ** 2 + ((cc - c) * scan.pixel_spacing[1]) ** 2
    return scan.image[k][d2 <= radius**2]


@pytest.mark.parametrize("modality", MODALITY_NAMES)
def test_contract_fields_field_of_view_and_sac_label(modality: str) -> None:
    locations = ["Basilar Tip", "Right Posterior Communicating Artery"]
    scan = _render(41, modality, locations, with_labels=True)
    assert scan.image.dtype == np.float32 and scan.image.ndim == 3 and np.isfinite(scan.image).all()
    assert 24 <= scan.image.shape[0] <= 120 and 96 <= scan.image.shape[1] <= 160, scan.image.shape
    assert 1.2 - 1e-6 <= scan.pixel_spacing[0] <= 2.6, scan.pixel_spacing
    if modality == "CTA":
        assert scan.image.min() >= -1024 and scan.image.max() <= 3071
        assert np.percentile(scan.image, 1) < -900, "air should be about -1000 HU"
    else:
        assert scan.image.min() >= 0 and scan.image.max() > 0
    for v in (scan.row_dir, scan.col_dir):
        assert abs(np.linalg.norm(v) - 1) < 1e-9
    assert abs(float(scan.row_dir @ scan.col_dir)) < 1e-9
    assert scan.plane in ("axial", "coronal", "sagittal") and 0 <= scan.tilt_deg < 45
    assert scan.labels_map is not None and scan.labels_map.dtype == np.uint8
    assert set(np.unique(scan.labels_map)) <= {0, *SEG_LABEL_VALUES.values()}
    assert len(np.unique(scan.labels_map)) > 4, "the label map should hold several vessel classes"
    json.dumps(scan.truth)
    assert np.allclose(scan.head_to_lps[3], [0, 0, 0, 1])
    assert [a.location for a in scan.aneurysms] == locations
    for a in scan.aneurysms:  # whole-head protocols and the TOF slab alike cover every aneurysm
        idx = _index(scan, a.centre_lps)
        assert np.all(idx >= 0) and np.all(idx <= np.array(scan.image.shape) - 1), (a.location, idx)
    if scan.three_d:  # the sac carries its location's segmentation value
        k, r, c = np.round(_index(scan, scan.aneurysms[0].centre_lps)).astype(int)
        assert scan.labels_map[k, r, c] == SEG_LABEL_VALUES["Basilar Tip"]


def test_determinism() -> None:
    a = _render(11, "MRA", ["Basilar Tip"], with_labels=True)
    b = _render(11, "MRA", ["Basilar Tip"], with_labels=True)
    c = _render(12, "MRA", ["Basilar Tip"], with_labels=True)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.labels_map.tobytes() == b.labels_map.tobytes()
    assert np.array_equal(a.aneurysms[0].centre_lps, b.aneurysms[0].centre_lps)
    assert json.dumps(a.truth) == json.dumps(b.truth)
    assert a.image.shape != c.image.shape or a.image.tobytes() != c.image.tobytes()


@pytest.mark.parametrize("modality", MODALITY_NAMES)
def test_aneurysm_contrast(modality: str) -> None:
    """CTA and TOF (and T1 post 3D gradient echo): the sac is bright lumen; T2 and T1 post 2D spin echo: flow void."""
    for seed, loc in enumerate(QUIET):
        scan = _render(500 + seed, modality, [loc], dome_mm=6.0)
        a = scan.aneurysms[0]
        vals = _disc(scan, a.centre_lps, 3.0)
        around = _shell_median(scan, a.centre_lps, 6.0)
        variant = scan.truth["variant"]
        if variant == "cta":
            assert vals.max() > 150 and vals.max() > around + 100, (loc, vals.max(), around)
        elif variant in ("tof", "t1-3d-gre"):
            assert vals.max() > 1.3 * around, (variant, loc, vals.max(), around)
        else:
            assert variant in ("t2-2d", "t2-3d", "t1-2d-se"), variant
            assert vals.min() < 0.85 * around, (variant, loc, vals.min(), around)


def test_left_right_in_a_render() -> None:
    """Every sided location of one series: Left in LPS x > 0, Right in x < 0, and on that side of the midline."""
    for modality in ("CTA", "MRI T2"):
        scan = _render(21, modality, SIDED)
        assert [a.location for a in scan.aneurysms] == SIDED
        to_head = np.linalg.inv(scan.head_to_lps)
        for a in scan.aneurysms:
            sign = 1.0 if a.location.startswith("Left") else -1.0
            assert sign * a.centre_lps[0] > 0, (a.location, a.centre_lps)
            assert sign * (to_head @ np.r_[a.centre_lps, 1])[0] < 0, "RAS head frame: left is -x"


def test_left_right_placement_many_seeds() -> None:
    """The placement alone (no rendering) over many patients: the side holds in LPS for every sided location."""
    for seed in range(25):
        rng = np.random.default_rng(seed)
        scale = draw_scale(rng)
        draw_protocol(rng, "CTA", "small")
        arteries = build_arteries(rng, draw_variants(rng, SIDED), Displacement(rng))
        sacs = place_sacs(rng, SIDED, arteries, scale, None)
        pose = draw_pose(rng, scale, [(s.centre, 1.0 if s.location.startswith("Right") else -1.0) for s in sacs])
        for s in sacs:
            sign = 1.0 if s.location.startswith("Left") else -1.0
            assert sign * pose.h_to_lps(s.centre)[0] > 0, (seed, s.location)


@pytest.mark.parametrize("modality", ["CTA", "MRA"])
def test_label_map_on_centrelines(modality: str) -> None:
    """At a labelled centreline point of a large vessel the label map holds that vessel's segmentation value."""
    scan = _render(31, modality, [], with_labels=True)
    hits = total = 0
    for vp in scan.truth["vessel_points"]:
        k, r, c = np.round(_index(scan, np.asarray(vp["lps"]))).astype(int)
        if vp["radius_mm"] < 1.4 or not all(0 <= i < n for i, n in zip((k, r, c), scan.image.shape, strict=True)):
            continue
        total += 1
        hits += int(scan.labels_map[k, r, c] == vp["seg"])
    assert total >= 6 and hits >= total - 1, (hits, total)


def test_dome_size_honoured_and_drawn() -> None:
    scan = _render(51, "CTA", ["Anterior Communicating Artery", "Left Middle Cerebral Artery"], dome_mm=3.0)
    assert [a.dome_mm for a in scan.aneurysms] == [3.0, 3.0]
    assert all(a.neck_mm <= a.dome_mm for a in scan.aneurysms)
    free = _render(51, "CTA", ["Anterior Communicating Artery"])
    assert free.aneurysms[0].dome_mm != 3.0
    domes = np.array([draw_dome(np.random.default_rng(i)) for i in range(600)])
    assert 3.9 < np.median(domes) < 5.1 and domes.min() >= 2.0 and domes.max() <= 25.0


def test_negative_series_and_bad_arguments() -> None:
    scan = _render(61, "MRI T1post", [])
    assert scan.aneurysms == [] and scan.labels_map is None
    with pytest.raises(AssertionError):
        _render(0, "PET", [])
    with pytest.raises(AssertionError):
        _render(0, "CTA", ["Middle Cerebral Artery"])


@pytest.mark.slow
@pytest.mark.parametrize("modality", MODALITY_NAMES)
def test_real_size_geometry(modality: str) -> None:
    """Real-size series: voxel sizes within the spec's ranges, a 3 mm dome at least 3 voxels across in 3D; prints
    the render time."""
    t0, c0 = time.perf_counter(), time.process_time()
    scan = render_series(np.random.default_rng(7), modality, ["Anterior Communicating Artery"], "real", dome_mm=3.0)
    print(f"\n{modality}: {scan.truth['variant']} {scan.image.shape} in {time.perf_counter() - t0:.2f} s wall, "
          f"{time.process_time() - c0:.2f} CPU-s")
    px, ss, th = scan.pixel_spacing[0], scan.slice_spacing, scan.slice_thickness
    if modality == "CTA":
        assert 0.39 <= px <= 0.49 and 0.5 <= ss <= 1.0 and 200 <= scan.image.shape[0] <= 600
        assert scan.image.shape[1:] == (512, 512)
    elif modality == "MRA":
        assert 0.29 <= px <= 0.5 and 0.5 <= ss <= 1.0 and 120 <= scan.image.shape[0] <= 200
    elif scan.three_d:
        assert 0.45 <= px <= 1.0 and 0.8 <= ss <= 1.0
    else:
        assert 0.4 <= px <= 0.9 and 4.0 <= th <= 6.0
    if scan.three_d:
        assert 3.0 / max(px, ss) >= 2.9
