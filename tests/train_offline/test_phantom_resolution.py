"""Resolution of the phantom sizes: does a 3 mm dome come out resolved on the native grid?

A CTA and a TOF-MRA series hold one 3 mm dome at the right M1 bifurcation, drawn with
``generate_series(..., dome_mm=3.0)`` (a sphere of 3 mm in the patient) and read back through
``kernel.dicom_io.read_series``. Small and real series of one seed share the head and the dome; only the grid differs.

Criteria, on the reader's volume:

(a) contrast: the voxel nearest the dome centre is at least N times the median of its parent-vessel-free
    neighbourhood (voxels within 8 mm of the centre and more than 1.5 mm from every vessel voxel of the segmentation).
    N is 80% of the lowest sac / brain ratio that ``protocols.sample_tissue`` can draw (the spec's intensity table),
    the rest being room for noise and the bias field:
    CTA N = 0.8 x 280 HU (artery) / 45 HU (grey matter) = 5.0;
    TOF-MRA N = 0.8 x 3.0 (artery, brain = 1) x 0.9^1.8 (inflow fading at the M1) x 0.6 (sac factor) / 1.05 (white
    matter) = 1.13.
(b) extent: along each axis of the native grid, twice the distance from the dome centre to the half-contrast
    crossing (linear between voxel centres, on the side where the profile drops first: neck and parent lie on one
    side) equals 3 mm / spacing within one voxel, and is at least 3 voxels (the dome is resolved).

The real size meets both. The small size does not: its voxels are 1.2-2.5 mm, so the dome is 1-2.5 voxels across on
every axis (a blob that a detector cannot tell from a vessel crossing). Contrast and size-within-a-voxel still hold at
small (the analytic partial volume keeps the centre voxel full); it is the 3-voxel resolution that fails, and the
small test asserts exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from scipy import ndimage

from kernel.dicom_io import read_series
from kernel.preprocess import world_to_voxel
from train_offline.phantoms.anatomy import KIND_ANEURYSM, build_anatomy
from train_offline.phantoms.generate import SeriesResult, generate_series
from train_offline.phantoms.protocols import sample_acquisition

DOME_MM = 3.0
SEED = 1
LOCATION = "Right Middle Cerebral Artery"
N_CONTRAST = {
    "CTA": 0.8 * 280.0 / 45.0,  # 5.0
    "MRA": 0.8 * 3.0 * 0.9**1.8 * 0.6 / 1.05,  # 1.13
}
NEIGHBOURHOOD_MM = 8.0
VESSEL_CLEARANCE_MM = 1.5


@dataclass
class DomeMeasurement:
    """What the reader's volume shows of the dome."""

    spacing: np.ndarray  # (dz, dy, dx) mm
    peak: float  # value of the voxel nearest the dome centre
    background: float  # median of the parent-vessel-free neighbourhood
    extent_vox: np.ndarray  # (3,) measured diameter along z, y, x in voxels

    @property
    def contrast(self) -> float:
        return self.peak / self.background

    @property
    def drawn_vox(self) -> np.ndarray:
        return DOME_MM / self.spacing


def _half_crossing_mm(values: list[float], offsets_mm: list[float], threshold: float) -> float | None:
    """Distance (mm) from the centre where a profile first falls below ``threshold``; None if it never does."""
    j = next((i for i, v in enumerate(values) if v < threshold), None)
    if j is None:
        return None
    if j == 0:
        return 0.0
    va, vb, ta, tb = values[j - 1], values[j], offsets_mm[j - 1], offsets_mm[j]
    return ta + (va - threshold) / (va - vb) * (tb - ta)


def measure_dome(out: Path, result: SeriesResult) -> DomeMeasurement:
    """Contrast and per-axis extent of the series' first aneurysm, from the DICOM files and the segmentation."""
    uid = result.series_uid
    vol = read_series(out / "series" / uid)
    np.testing.assert_allclose(vol.affine, np.asarray(result.truth["affine"]), atol=1e-4)  # the native grid
    array = vol.array
    spacing = np.asarray(vol.spacing)
    centre = world_to_voxel(vol.affine, np.asarray(result.truth["aneurysms"][0]["centre_lps"])[None])[0]
    k = np.rint(centre).astype(int)

    seg = np.asarray(nib.load(out / "segmentations" / uid / f"{uid}_cowseg.nii").dataobj).transpose(2, 1, 0)
    half = np.ceil(NEIGHBOURHOOD_MM / spacing).astype(int)
    box = tuple(slice(max(c - h, 0), min(c + h + 1, n)) for c, h, n in zip(k, half, array.shape, strict=True))
    free = ndimage.distance_transform_edt(seg[box] == 0, sampling=spacing) > VESSEL_CLEARANCE_MM
    background = float(np.median(array[box][free]))
    peak = float(array[tuple(k)])

    threshold = 0.5 * (peak + background)
    extent = []
    for axis in range(3):
        radii = []
        for step in (1, -1):
            values, offsets = [], []
            for j in range(int(np.ceil(NEIGHBOURHOOD_MM / spacing[axis]))):
                idx = k.copy()
                idx[axis] += step * j
                if not 0 <= idx[axis] < array.shape[axis]:
                    break
                values.append(float(array[tuple(idx)]))
                offsets.append((idx[axis] - centre[axis]) * step * spacing[axis])
            r = _half_crossing_mm(values, offsets, threshold)
            if r is not None:
                radii.append(r)
        assert radii, f"axis {axis}: the profile never falls to half contrast"
        extent.append(2 * min(radii) / spacing[axis])
    return DomeMeasurement(spacing, peak, background, np.array(extent))


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], DomeMeasurement]:
    out = tmp_path_factory.mktemp("resolution")
    found = {}
    for i, (size, modality) in enumerate([("real", "CTA"), ("real", "MRA"), ("small", "CTA"), ("small", "MRA")]):
        r = generate_series(out / size, i % 2, SEED, size=size, modality=modality, locations=[LOCATION],
                            dome_mm=DOME_MM, with_segmentation=True, transfer_syntax=ExplicitVRLittleEndian)
        found[(size, modality)] = measure_dome(out / size, r)
    return found


@pytest.mark.parametrize("modality", ["CTA", "MRA"])
def test_real_size_resolves_a_3mm_dome(series: dict, modality: str) -> None:
    m = series[("real", modality)]
    assert m.spacing[0] <= 1.0 and np.all(m.spacing[1:] <= 0.8), m.spacing
    assert m.contrast >= N_CONTRAST[modality], f"contrast {m.contrast:.2f} < N = {N_CONTRAST[modality]:.2f}"
    assert np.all(np.abs(m.extent_vox - m.drawn_vox) <= 1.0), f"extent {m.extent_vox} vs drawn {m.drawn_vox} voxels"
    assert np.all(m.extent_vox >= 3.0), f"a 3 mm dome is only {m.extent_vox} voxels across"


@pytest.mark.parametrize("modality", ["CTA", "MRA"])
def test_small_size_does_not_resolve_a_3mm_dome(series: dict, modality: str) -> None:
    """Documents the failure at small: 1.2-2.5 mm voxels, so fewer than 3 voxels across the dome on every axis
    (drawn and measured), although contrast and size within a voxel hold (see the module docstring)."""
    m = series[("small", modality)]
    assert np.all(m.drawn_vox < 3.0), m.spacing
    assert np.all(m.extent_vox < 3.0), f"small unexpectedly resolves the dome: {m.extent_vox} voxels"
    assert m.contrast >= N_CONTRAST[modality]  # what does not fail at small
    assert np.all(np.abs(m.extent_vox - m.drawn_vox) <= 1.0)


def test_real_geometry_ranges() -> None:
    """Many drawn acquisitions (no rendering): the real size's grids per protocol, the dome holding >= 3 voxels in
    every 3D protocol, whole-head fields of view for CTA and 3D MR, a slab for TOF."""
    for i in range(160):
        rng = np.random.default_rng([99, i])
        modality = ["CTA", "MRA", "MRI T2", "MRI T1post"][i % 4]
        anatomy = build_anatomy(rng, [LOCATION] if i % 3 else [])
        acq = sample_acquisition(rng, modality, anatomy, "real")
        dz, (dy, dx) = acq.slice_spacing, acq.pixel_spacing
        n, rows, cols = acq.shape
        if acq.three_d:
            assert DOME_MM / max(dz, dy, dx) >= 3.0, (modality, dz, dy)
        else:
            assert 4.0 <= dz <= 6.0 and 0.4 <= dy <= 0.9, (modality, dz, dy)
        if modality in ("CTA", "MRA"):
            assert dy <= 0.8 and dz <= 1.0
        if modality == "MRA":
            assert n * dz <= 120.0, "TOF is a slab around the circle of Willis"
        elif acq.three_d:
            assert min(rows * dy, cols * dx) >= 200.0 and n * dz >= 150.0, "whole head"
        assert acq.n_sub == 1 or not acq.three_d


def test_dome_override_draws_a_sphere_and_keeps_the_head() -> None:
    a = build_anatomy(np.random.default_rng(5), [LOCATION])
    b = build_anatomy(np.random.default_rng(5), [LOCATION], dome_mm=DOME_MM)
    np.testing.assert_array_equal(a.head_to_lps, b.head_to_lps)
    assert a.head_params == b.head_params and a.variants == b.variants
    sac = b.cap_kind == KIND_ANEURYSM
    np.testing.assert_array_equal(a.cap_a[a.cap_kind != KIND_ANEURYSM], b.cap_a[~sac])  # vessels, mimics unchanged
    body = np.flatnonzero(sac)[1]  # the neck, then the dome body (a sphere: both ends at the centre)
    np.testing.assert_allclose(b.cap_a[body], b.cap_b[body])
    assert b.cap_ra[body] * 2 == pytest.approx(DOME_MM)
    assert sac.sum() == 2 and b.aneurysms[0].dome_mm * b.scale == pytest.approx(DOME_MM)
