"""Reader geometry and decoding: pydicom's real test files, synthetic series checked analytically and by SimpleITK."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from kernel.dicom_io import read_series
from kernel.preprocess import localizer_to_lps, voxel_to_world
from kernel.volume import SeriesReadError
from testkit.dicom_factory import smooth_field, write_series
from testkit.hostile import CASES as CASES_HOSTILE
from testkit.hostile import TreePeak

# (file, expected number of frames) from pydicom's wheel and the pydicom-data package, found offline.
REAL_FILES = [
    "CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
    "emri_small.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm", "JPEG2000.dcm", "JPGExtended.dcm",
    "JPGLosslessP14SV1_1s_1f_8b.dcm", "MR2_J2KR.dcm", "MR2_J2KI.dcm", "693_J2KR.dcm", "liver.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm", "SC_jpeg_no_color_transform_2.dcm",
]


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_files_match_pydicom_decode(name: str, tmp_path: Path) -> None:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} not available offline")
    shutil.copy(path, tmp_path / "a.dcm")
    ds = pydicom.dcmread(path)
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        with pytest.raises(SeriesReadError, match="colour"):
            read_series(tmp_path)
        return
    volume = read_series(tmp_path)
    ref = ds.pixel_array.astype(np.float64)
    ref = ref * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    ref = ref.reshape(-1, *ref.shape[-2:])
    if volume.modality == "CT":
        ref = np.clip(ref, -1024, 4095)
    assert volume.array.dtype == np.float32
    assert volume.array.shape[1:] == ref.shape[1:] and volume.array.shape[0] == ref.shape[0]
    # Frames may be re-ordered by position; as a set of slices they must be identical.
    ours = sorted(volume.array.reshape(len(ref), -1).tolist())
    theirs = sorted(ref.astype(np.float32).reshape(len(ref), -1).tolist())
    np.testing.assert_allclose(np.array(ours), np.array(theirs), rtol=1e-6, atol=1e-3)


def _check_analytic(volume, tol: float) -> None:
    """Every voxel must hold the field at its own LPS centre."""
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in volume.array.shape], indexing="ij")
    idx = np.stack([zz, yy, xx], -1).reshape(-1, 3)
    expected = smooth_field(voxel_to_world(volume.affine, idx)).reshape(volume.array.shape)
    assert np.abs(volume.array - expected).max() <= tol


CASES = {
    "axial": {},
    "axial_reversed": {"reverse": True},
    "coronal": {"plane": "coronal"},
    "sagittal": {"plane": "sagittal", "reverse": True},
    "oblique": {"plane": "axial", "tilt_deg": 17.0},
    "multiframe": {"multiframe": True, "modality": "MR"},
    "allowlist_only": {"allowlist_only": True},
    "scout_blank_odd": {"scout": True, "blank": True, "odd_size": True},
    "rle": {"transfer_syntax": RLELossless},
    "jpegls": {"transfer_syntax": JPEGLSLossless},
    "jpeg2000": {"transfer_syntax": JPEG2000Lossless, "rows": 64, "cols": 64},
    "monochrome1": {"monochrome1": True},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_synthetic_series_geometry(case: str, tmp_path: Path) -> None:
    info = write_series(tmp_path, **CASES[case])
    volume = read_series(tmp_path)
    assert volume.array.shape == info["shape"]
    np.testing.assert_allclose(volume.affine, info["affine"], atol=1e-4)
    tol = 0.51 if CASES[case].get("modality", "CT") == "CT" else 0.26  # storage rounding (1 HU / 0.5 units)
    _check_analytic(volume, tol)
    reasons = " ".join(r for _, r in volume.dropped)
    for kind, _ in info["extras"]:
        assert {"scout": "orientation", "blank": "blank", "odd_size": "size"}[kind] in reasons
    # Every SOP (and frame) maps back to its slice along the normal.
    for k, (sop, frame) in enumerate(zip(info["sop_uids"], info["frame_of_slice"], strict=True)):
        assert volume.slice_lookup[(sop, frame)] == k
    assert volume.geometry_known


def test_multiframe_stripped_of_geometry_says_so(tmp_path: Path) -> None:
    """An Enhanced file cut to the test allow-list keeps no position or orientation: the volume must say so."""
    write_series(tmp_path, multiframe=True, modality="MR", allowlist_only=True, reverse=True)
    volume = read_series(tmp_path)
    assert not volume.geometry_known
    assert any("no image position/orientation" in note for note in volume.notes)


def test_localizer_maps_to_pixel_centre(tmp_path: Path) -> None:
    info = write_series(tmp_path, plane="coronal", tilt_deg=9.0, reverse=True)
    volume = read_series(tmp_path)
    sop = info["sop_uids"][5]
    point = localizer_to_lps(volume, sop, x=7.0, y=3.0)
    expected = info["positions"][5] + 7.0 * info["pixel_spacing"][1] * info["row_dir"]
    expected = expected + 3.0 * info["pixel_spacing"][0] * info["col_dir"]
    np.testing.assert_allclose(point, expected, atol=1e-6)
    assert volume.slice_lookup[(sop, 0)] == 5
    with pytest.raises(KeyError, match="not an image"):
        localizer_to_lps(volume, "1.2.3.unknown", 1, 1)


def test_non_uniform_gaps_are_resampled(tmp_path: Path) -> None:
    gaps = [2.0] * 5 + [3.0] + [2.0] * 6
    write_series(tmp_path, gaps=gaps)
    volume = read_series(tmp_path)
    assert volume.spacing[0] == pytest.approx(2.0)
    assert volume.array.shape[0] == round(sum(gaps) / 2.0) + 1
    assert any("non-uniform" in n for n in volume.notes)
    _check_analytic(volume, tol=2.0)  # linear interpolation of a smooth field across the wide gap


def test_unreadable_folder_raises_clear_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "x.dcm").write_bytes(b"\0" * 100)
    with pytest.raises(SeriesReadError, match=str(tmp_path)):
        read_series(tmp_path)
    with pytest.raises(SeriesReadError, match="not a folder"):
        read_series(tmp_path / "missing")


def test_voxel_budget_subsamples_in_plane(tmp_path: Path) -> None:
    write_series(tmp_path, n_slices=8, rows=40, cols=40)
    volume = read_series(tmp_path, max_voxels=8 * 20 * 20)
    assert volume.array.shape == (8, 20, 20)
    _check_analytic(volume, tol=0.51)


@pytest.mark.parametrize("case", ["axial_reversed", "sagittal", "oblique", "multiframe"])
def test_agrees_with_simpleitk(case: str, tmp_path: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    write_series(tmp_path, **CASES[case])
    volume = read_series(tmp_path)
    files = sorted(str(p) for p in tmp_path.glob("*.dcm"))
    if len(files) == 1:
        image = sitk.ReadImage(files[0])
    else:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
        image = reader.Execute()
    ref = sitk.GetArrayFromImage(image).astype(np.float64)  # (z, y, x) in SimpleITK's own slice order
    rng = np.random.default_rng(0)
    idx = np.stack([rng.integers(0, n, 200) for n in volume.array.shape], -1)
    for z, y, x in idx:
        lps = voxel_to_world(volume.affine, [[z, y, x]])[0]
        i, j, k = image.TransformPhysicalPointToIndex(tuple(float(v) for v in lps))  # (x, y, z) order
        assert abs(ref[k, j, i] - volume.array[z, y, x]) < 1e-3


# --- size before allocation, one series per folder ----------------------------------------------------------------


def test_slices_far_off_the_run_are_a_separate_stack(tmp_path: Path) -> None:
    CASES_HOSTILE["far_slice"](tmp_path / "far")
    volume = read_series(tmp_path / "far")
    assert volume.array.shape == (15, 256, 256) and volume.spacing[0] == pytest.approx(2.0)
    assert [r for _, r in volume.dropped] == ["separate stack along the slice normal (a 10,000.0 mm gap, 5,000 x the "
                                              "median 2 mm)"]
    CASES_HOSTILE["huge_gap"](tmp_path / "gap")  # two runs of 8: the lower one is kept, the other 8 reported
    volume = read_series(tmp_path / "gap")
    assert volume.array.shape == (8, 256, 256) and sum("separate stack" in r for _, r in volume.dropped) == 8
    # A wide gap under the factor is still resampled, not split.
    write_series(tmp_path / "wide", gaps=[2.0] * 8 + [18.0] + [2.0] * 6)
    volume = read_series(tmp_path / "wide")
    assert volume.array.shape[0] == round((16 + 18 + 12) / 2) + 1 and not volume.dropped


def test_frame_count_and_length_are_what_the_data_holds(tmp_path: Path) -> None:
    CASES_HOSTILE["huge_frame_count"](tmp_path / "frames")
    volume = read_series(tmp_path / "frames")
    assert volume.array.shape == (12, 24, 28)
    assert any("NumberOfFrames 999999999 but the pixel data holds 12" in n for n in volume.notes)
    CASES_HOSTILE["huge_pixel_length"](tmp_path / "length")
    volume = read_series(tmp_path / "length")
    assert volume.array.shape == (8, 24, 28)
    assert sum("PixelData declares 4,294,967,280 bytes" in n for n in volume.notes) == 8
    _check_analytic(volume, tol=0.51)


def test_deflated_files_are_read_and_bombs_refused(tmp_path: Path) -> None:
    write_series(tmp_path / "plain", n_slices=6)
    for path in (tmp_path / "plain").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)
    _check_analytic(read_series(tmp_path / "plain"), tol=0.51)
    CASES_HOSTILE["deflate_bomb"](tmp_path / "bomb")
    with TreePeak() as peak:
        volume = read_series(tmp_path / "bomb", max_voxels=10_000_000)
    # Inflated as a stream up to the 38 MB budget, then refused: the 4 GB it inflates to is never held.
    assert peak.growth < 512 << 20, f"{peak.growth / 2**20:.0f} MB"
    assert volume.array.shape == (10, 24, 28)
    assert ("bomb.dcm", "deflated data inflates beyond the 38 MB budget") in volume.dropped


def test_grid_is_sized_before_decoding(tmp_path: Path) -> None:
    gaps = [1.0] * 6 + [5.0] + [1.0] * 6  # 14 slices resampled to 18 at the median gap
    write_series(tmp_path / "s", gaps=gaps, rows=32, cols=32)
    volume = read_series(tmp_path / "s", max_voxels=16 * 32 * 32)  # fits the 14 decoded, not the 18 resampled
    assert volume.array.shape == (18, 16, 16) and volume.array.size <= 16 * 32 * 32
    with pytest.raises(SeriesReadError, match="does not fit the voxel budget"):
        read_series(tmp_path / "s", max_voxels=1000)
    # A file decoded whole by pydicom (here RLE, 12 frames) must fit the byte budget (4 bytes per voxel).
    write_series(tmp_path / "mf", n_slices=12, multiframe=True, modality="MR", transfer_syntax=RLELossless)
    with pytest.raises(SeriesReadError, match="over the 0 MB budget"):
        read_series(tmp_path / "mf", max_voxels=2000)


def test_images_too_small_to_be_a_head(tmp_path: Path) -> None:
    CASES_HOSTILE["tiny_images"](tmp_path / "tiny")
    with pytest.raises(SeriesReadError, match=r"image too small to be a head x2"):
        read_series(tmp_path / "tiny")


def test_one_series_per_folder_and_nested_folders(tmp_path: Path) -> None:
    first = write_series(tmp_path / "mixed", n_slices=12, seed=1)
    write_series(tmp_path / "mixed", n_slices=8, seed=2, origin=(-15.0, -12.0, -13.0))
    volume = read_series(tmp_path / "mixed")
    assert volume.series_uid == first["series_uid"] and volume.array.shape == (12, 24, 28)
    assert sum("another series in the folder" in r for _, r in volume.dropped) == 8
    _check_analytic(volume, tol=0.51)
    info = write_series(tmp_path / "nested" / "a" / "b", n_slices=10)
    os.symlink(tmp_path / "nested", tmp_path / "nested" / "a" / "loop")  # a folder link back up: listed once
    volume = read_series(tmp_path / "nested")
    assert volume.array.shape == (10, 24, 28) and volume.series_uid == info["series_uid"]
    assert ("a/loop", "folder listed before (link loop)") in volume.dropped
