"""The ``implicit`` phantom style against the style contract: determinism, protocol contrast at the aneurysm,
patient left/right, segmentation values on the centrelines, geometry, dome size, real-size voxel spacing."""

from __future__ import annotations

import json
import resource
import time
from functools import lru_cache

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from kernel.labels import LOCATION_COLS, MODALITY_NAMES, SEG_LABEL_VALUES
from train_offline.phantoms.styles.contract import StyleScan
from train_offline.phantoms.styles.implicit import render_series

MCA_ACOM = ("Right Middle Cerebral Artery", "Anterior Communicating Artery")
SIDED = ("Left Middle Cerebral Artery", "Right Posterior Communicating Artery", "Left Anterior Cerebral Artery",
         "Right Infraclinoid Internal Carotid Artery", "Left Supraclinoid Internal Carotid Artery",
         "Right Anterior Cerebral Artery", "Left Posterior Communicating Artery")


@lru_cache(maxsize=32)
def scan_of(modality: str, seed: int, locations: tuple[str, ...] = MCA_ACOM, dome: float | None = None,
            labels: bool = False, size: str = "small") -> StyleScan:
    return render_series(np.random.default_rng(seed), modality, list(locations), size, dome_mm=dome,
                         with_labels=labels)


def to_voxel(scan: StyleScan, lps: np.ndarray) -> np.ndarray:
    """LPS mm -> continuous (k, r, c) voxel coordinates of the native stack."""
    return (np.linalg.inv(scan.affine) @ np.append(lps, 1.0))[:3]


def sample(scan: StyleScan, lps_points: np.ndarray, slice_index: int | None = None) -> np.ndarray:
    """Trilinear samples; with ``slice_index``, in-plane samples of that native slice."""
    vox = (np.linalg.inv(scan.affine) @ np.c_[lps_points, np.ones(len(lps_points))].T)[:3]
    if slice_index is not None:
        vox[0] = slice_index
    return map_coordinates(scan.image, vox, order=1, mode="nearest")


def sphere_dirs(n: int = 64) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi, theta = np.arccos(1 - 2 * i / n), np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)


def centre_and_surround(scan: StyleScan, a) -> tuple[list[float], float]:
    """Mean signal within a quarter radius of the dome centre (3D: trilinear; 2D: on each of the two native slices
    bracketing it, as a reader would look at them), and the median on a shell 3-5 mm outside the dome."""
    r = 0.5 * a.dome_mm
    inner = a.centre_lps + 0.25 * r * np.vstack([np.zeros(3), sphere_dirs(16)])
    shell = np.vstack([a.centre_lps + (r + d) * sphere_dirs() for d in (3.0, 5.0)])
    around = float(np.median(sample(scan, shell)))
    if scan.three_d:
        return [float(sample(scan, inner).mean())], around
    k = to_voxel(scan, a.centre_lps)[0]
    last = scan.image.shape[0] - 1
    ks = sorted({int(np.clip(np.floor(k), 0, last)), int(np.clip(np.ceil(k), 0, last))})
    return [float(sample(scan, inner, kk).mean()) for kk in ks], around


def test_same_seed_same_bytes_other_seed_differs() -> None:
    a = render_series(np.random.default_rng(7), "CTA", list(MCA_ACOM), "small", with_labels=True)
    b = render_series(np.random.default_rng(7), "CTA", list(MCA_ACOM), "small", with_labels=True)
    c = render_series(np.random.default_rng(8), "CTA", list(MCA_ACOM), "small", with_labels=True)
    assert a.image.tobytes() == b.image.tobytes() and a.labels_map.tobytes() == b.labels_map.tobytes()
    assert np.array_equal(a.origin, b.origin) and np.array_equal(a.head_to_lps, b.head_to_lps)
    assert [x.centre_lps.tolist() for x in a.aneurysms] == [x.centre_lps.tolist() for x in b.aneurysms]
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)
    assert not np.allclose([x.centre_lps for x in a.aneurysms], [x.centre_lps for x in c.aneurysms])


@pytest.mark.parametrize("modality", MODALITY_NAMES)
def test_contract_types_and_geometry(modality: str) -> None:
    scan = scan_of(modality, 11, labels=True)
    assert scan.image.dtype == np.float32 and scan.image.ndim == 3 and np.isfinite(scan.image).all()
    assert scan.labels_map.dtype == np.uint8 and scan.labels_map.shape == scan.image.shape
    assert abs(np.linalg.norm(scan.row_dir) - 1) < 1e-9 and abs(np.linalg.norm(scan.col_dir) - 1) < 1e-9
    assert abs(float(scan.row_dir @ scan.col_dir)) < 1e-9
    assert scan.plane in ("axial", "coronal", "sagittal") and 0 <= scan.tilt_deg <= 25
    assert 1.2 <= min(scan.pixel_spacing) and max(scan.pixel_spacing) <= 2.5, "small: 1.2-2.5 mm pixels"
    assert 96 <= min(scan.image.shape[1:]) and max(scan.image.shape[1:]) <= 160
    assert 24 <= scan.image.shape[0] <= 120
    lin = scan.head_to_lps[:3, :3]
    gram = lin.T @ lin
    assert np.allclose(gram, gram[0, 0] * np.eye(3), atol=1e-9), "head pose must be a similarity"
    assert lin[0, 0] < 0 and lin[1, 1] < 0 and lin[2, 2] > 0, "RAS head frame -> LPS: (x, y, z) -> (-x, -y, z)"
    assert len(scan.aneurysms) == 2 and scan.aneurysms[0].location == MCA_ACOM[0]
    json.dumps(scan.truth)  # the writer stores it
    for a in scan.aneurysms:
        k, r, c = to_voxel(scan, a.centre_lps)
        assert -0.5 <= k <= scan.image.shape[0] - 0.5, "aneurysm centre outside the stack"
        assert 0 <= r <= scan.image.shape[1] - 1 and 0 <= c <= scan.image.shape[2] - 1
    if modality == "CTA":
        assert scan.image.min() >= -1024 and scan.image.max() <= 3071
        assert abs(float(np.median(scan.image[:, :4, :4])) + 1000) < 60, "corners are air"
    else:
        assert scan.image.min() >= 0


@pytest.mark.parametrize("modality", MODALITY_NAMES)
def test_aneurysm_signal_follows_the_protocol(modality: str) -> None:
    """CTA, TOF and T1post 3D GRE: bright lumen; T2 and T1post spin echo: flow void (darker than its surroundings)."""
    for seed in (21, 22, 23):
        scan = scan_of(modality, seed, dome=8.0)
        bright = modality in ("CTA", "MRA") or scan.truth["sequence"]["variant"] == "gre"
        for a in scan.aneurysms:
            centres, around = centre_and_surround(scan, a)
            centre = max(centres) if bright else min(centres)
            if modality == "CTA":
                assert centre > around + 150, (seed, a.location, centre, around)
            elif bright:
                assert centre > 1.5 * around, (seed, a.location, centre, around)
            else:
                assert centre < 0.6 * around, (seed, a.location, centre, around)


def test_left_and_right_locations_sit_on_the_patients_side() -> None:
    """A "Left ..." aneurysm is on the patient's left: LPS x > 0; "Right ..." x < 0 (and the parent too)."""
    for seed in range(2):
        for modality in MODALITY_NAMES:
            scan = scan_of(modality, 30 + 4 * seed + MODALITY_NAMES.index(modality), SIDED)
            for a in scan.aneurysms:
                sign = 1 if a.location.startswith("Left") else -1
                assert sign * a.centre_lps[0] > 0, (seed, modality, a.location, a.centre_lps)
                assert sign * a.parent_lps[0] > 0 or "Anterior Cerebral" in a.location, (a.location, a.parent_lps)


def test_label_map_carries_each_vessels_value_on_its_centreline() -> None:
    hits, total, seen = 0, 0, set()
    both_pcomm = ("Right Posterior Communicating Artery", "Left Posterior Communicating Artery")
    for seed, modality in enumerate(MODALITY_NAMES):
        scan = scan_of(modality, 60 + seed, both_pcomm, None, True)
        for p in scan.truth["vessel_points"]:
            idx = np.rint(to_voxel(scan, np.array(p["lps"]))).astype(int)
            if np.all(idx >= 0) and np.all(idx < scan.image.shape):
                total += 1
                hits += int(scan.labels_map[tuple(idx)] == p["label"])
                seen.add(p["label"])
        assert set(np.unique(scan.labels_map)) <= {0, *SEG_LABEL_VALUES.values()}
        assert (scan.labels_map == 0).mean() > 0.95, "labels only on vessels"
    assert total > 100 and hits / total > 0.9, (hits, total)
    assert seen == set(SEG_LABEL_VALUES.values()), "every one of the 13 classes appears on some centreline"


def test_aneurysm_voxels_carry_the_location_value() -> None:
    scan = scan_of("MRA", 12, ("Basilar Tip",), 7.0, True)
    a = scan.aneurysms[0]
    k, r, c = np.rint(to_voxel(scan, a.centre_lps)).astype(int)
    assert scan.labels_map[k, r, c] == SEG_LABEL_VALUES["Basilar Tip"]


def test_dome_mm_is_honoured_and_visible() -> None:
    small = scan_of("CTA", 40, ("Anterior Communicating Artery",), 3.0)
    big = scan_of("CTA", 40, ("Anterior Communicating Artery",), 12.0)
    assert small.aneurysms[0].dome_mm == pytest.approx(3.0) and big.aneurysms[0].dome_mm == pytest.approx(12.0)
    for a in (*small.aneurysms, *big.aneurysms):
        assert 0.5 * a.dome_mm <= a.neck_mm <= 0.9 * a.dome_mm + 1e-9

    def bright_volume(scan: StyleScan) -> float:
        a = scan.aneurysms[0]
        pts = a.centre_lps + np.random.default_rng(0).uniform(-9, 9, (4000, 3))
        pts = pts[np.linalg.norm(pts - a.centre_lps, axis=1) < 9]
        return float((sample(scan, pts) > 200).mean())

    assert bright_volume(big) > max(3 * bright_volume(small), bright_volume(small) + 0.08)
    free = scan_of("CTA", 41, tuple(LOCATION_COLS))
    domes = [a.dome_mm for a in free.aneurysms]
    assert all(2.0 <= d <= 25.0 for d in domes) and len(set(domes)) == len(domes)


def test_negative_series_has_no_aneurysm_but_full_anatomy() -> None:
    scan = scan_of("MRI T2", 50, (), None, True)
    assert scan.aneurysms == [] and len(np.unique(scan.labels_map)) >= 10
    assert {m["kind"] for m in scan.truth["mimics"]} >= {"vein_of_galen"}


REAL_SPACING = {  # protocol: (pixel range, 3D slice range, 2D thickness range)
    "CTA": ((0.39, 0.49), (0.5, 1.0), None),
    "MRA": ((0.29, 0.5), (0.5, 1.0), None),
    "MRI T2": ((0.4, 1.0), (0.8, 1.0), (4.0, 6.0)),
    "MRI T1post": ((0.4, 1.0), (0.8, 1.0), (4.0, 5.0)),
}


@pytest.mark.slow
@pytest.mark.parametrize("modality", MODALITY_NAMES)
def test_real_size_spacing_and_cost(modality: str) -> None:
    t0 = time.process_time()
    scan = render_series(np.random.default_rng(3), modality, ["Anterior Communicating Artery"], "real", dome_mm=3.0)
    cpu = time.process_time() - t0
    print(f"\nimplicit real {modality}: {scan.image.shape} pixel {scan.pixel_spacing[0]:.3f} slice "
          f"{scan.slice_spacing:.3f} thick {scan.slice_thickness:.2f} {'3D' if scan.three_d else '2D'}: "
          f"cpu {cpu:.2f} s, peak rss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    pixel, sl3d, thick2d = REAL_SPACING[modality]
    assert pixel[0] - 1e-6 <= scan.pixel_spacing[0] <= pixel[1] + 1e-6
    if scan.three_d:
        assert sl3d[0] - 1e-6 <= scan.slice_spacing <= sl3d[1] + 1e-6
        assert 3.0 / max(scan.slice_spacing, *scan.pixel_spacing) >= 2.99, "a 3 mm dome spans >= 3 voxels"
    else:
        assert thick2d[0] - 1e-6 <= scan.slice_thickness <= thick2d[1] + 1e-6
    if modality == "CTA":
        assert scan.image.shape[1:] == (512, 512) and 200 <= scan.image.shape[0] <= 600
    if modality == "MRA":
        assert 120 <= scan.image.shape[0] <= 200
