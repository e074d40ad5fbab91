"""Reorientation, resampling, crops and normalisation: numbers against scipy and against the patient's sides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import map_coordinates
from scipy.spatial.transform import Rotation

from kernel.preprocess import (
    crop_affine,
    crop_around,
    downsample_mean,
    grid_points_lps,
    normalise,
    prepare_volume,
    reorient_to_canonical,
    resample_to_spacing,
    spacing_of,
    voxel_to_world,
    world_to_voxel,
)
from kernel.recipe import heatmap_peak_lps, locator_input
from testkit.dicom_factory import smooth_field, write_series


def _smooth_volume(shape=(30, 40, 36)) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    return (5 + np.sin(z / 6) + np.cos(y / 8) * np.sin(x / 7)).astype(np.float32)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("target", [(1.0, 1.0, 1.0), (0.5, 0.8, 1.7)])
def test_resample_matches_map_coordinates_on_half_pixel_grid(backend: str, target: tuple) -> None:
    array = _smooth_volume()
    affine = np.diag([0.7, 0.45, 0.6, 1.0])
    affine[:3, 3] = [-10.0, 4.0, 2.0]
    out, new_affine = resample_to_spacing(array, affine, target, backend=backend)
    np.testing.assert_allclose(spacing_of(new_affine), target)
    # Where each output voxel sits in the input's index space, derived from the two affines alone.
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in out.shape], indexing="ij"), -1).reshape(-1, 3)
    src = world_to_voxel(affine, voxel_to_world(new_affine, idx))
    ref = map_coordinates(array, src.T, order=1, mode="nearest").reshape(out.shape)
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()
    # Half-pixel grid: the field of view's first edge is kept.
    first_edge_old = affine[:3, 3] - 0.5 * np.diag(affine)[:3]
    first_edge_new = new_affine[:3, 3] - 0.5 * np.asarray(target)
    np.testing.assert_allclose(first_edge_new, first_edge_old, atol=1e-9)


def test_numpy_and_torch_resampling_agree() -> None:
    array = np.random.default_rng(0).random((25, 33, 41)).astype(np.float32)
    affine = np.diag([1.3, 0.45, 0.45, 1.0])
    a, aff_a = resample_to_spacing(array, affine, (1, 1, 1), backend="numpy")
    b, aff_b = resample_to_spacing(array, affine, (1, 1, 1), backend="torch")
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_array_equal(aff_a, aff_b)


@settings(max_examples=40, deadline=None)
@given(
    angles=st.tuples(*[st.floats(-180, 180)] * 3),
    spacing=st.tuples(*[st.floats(0.3, 3.0)] * 3),
    flips=st.tuples(*[st.booleans()] * 3),
)
def test_reorient_preserves_every_voxel_position(angles, spacing, flips) -> None:
    """Property: after reorientation each voxel still sits at the same LPS point, and axes point S, P, L."""
    rng = np.random.default_rng(1)
    array = rng.random((5, 6, 7)).astype(np.float32)
    rot = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    affine = np.eye(4)
    affine[:3, :3] = rot * np.asarray(spacing) * np.where(flips, -1.0, 1.0)
    affine[:3, 3] = rng.normal(0, 50, 3)
    out, new_affine = reorient_to_canonical(array, affine)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in array.shape], indexing="ij"), -1).reshape(-1, 3)
    new_idx = np.rint(world_to_voxel(new_affine, voxel_to_world(affine, idx))).astype(int)
    np.testing.assert_array_equal(out[tuple(new_idx.T)], array[tuple(idx.T)])
    # Each canonical axis has a positive component along its LPS axis (z -> S, y -> P, x -> L).
    assert new_affine[2, 0] > 0 and new_affine[1, 1] > 0 and new_affine[0, 2] > 0


def _marker_field(marker_lps: np.ndarray):
    def field(lps: np.ndarray) -> np.ndarray:
        d2 = ((lps - marker_lps) ** 2).sum(-1)
        return smooth_field(lps) * 0.1 + 1500.0 * np.exp(-d2 / 8.0)

    return field


@pytest.mark.parametrize(
    "geometry",
    [
        {"plane": "axial"},
        {"plane": "axial", "reverse": True},
        {"plane": "coronal"},
        {"plane": "sagittal"},
        {"plane": "sagittal", "reverse": True},
        {"plane": "axial", "tilt_deg": 25.0},
        {"plane": "coronal", "tilt_deg": -20.0, "multiframe": True, "modality": "MR"},
    ],
)
def test_patient_right_stays_right(geometry: dict, tmp_path: Path) -> None:
    """A marker at the patient's right (LPS x < 0) ends up at low x indices of the canonical volume."""
    marker = np.array([-9.0, 2.0, 1.0])
    # First pixel of the first slice, so that the field of view covers [-16, 16] mm in every plane.
    origin = {"axial": (-16.0, -16.0, -16.0), "coronal": (-16.0, -16.0, 16.0), "sagittal": (16.0, -16.0, 16.0)}
    write_series(
        tmp_path, n_slices=24, rows=28, cols=28, slice_spacing=1.5, pixel_spacing=(1.2, 1.2),
        origin=origin[geometry["plane"]], field=_marker_field(marker), **geometry,
    )
    volume = prepare_volume(tmp_path, (1.0, 1.0, 1.0))
    peak = np.array(np.unravel_index(int(np.argmax(volume.array)), volume.array.shape))
    peak_lps = voxel_to_world(volume.affine, peak[None])[0]
    assert peak_lps[0] < 0, "the marker must stay on the patient's right"
    assert np.linalg.norm(peak_lps - marker) < 2.5
    # Mirror check: the x index of the marker is below the index of the LPS point mirrored to the patient's left.
    mirrored = world_to_voxel(volume.affine, (marker * [-1, 1, 1])[None])[0]
    assert peak[2] < mirrored[2]


def test_crop_around_same_spacing_is_exact_and_pads() -> None:
    array = _smooth_volume()
    affine = np.diag([0.7, 0.45, 0.6, 1.0])
    centre = voxel_to_world(affine, [[10, 12, 14]])[0]
    crop, crop_affine = crop_around(array, affine, centre, (5, 6, 7), fill=-1.0)
    np.testing.assert_array_equal(crop, array[8:13, 10:16, 11:18])  # even size: the centre rounds half up
    np.testing.assert_allclose(voxel_to_world(crop_affine, [[0, 0, 0]])[0], voxel_to_world(affine, [[8, 10, 11]])[0])
    corner = voxel_to_world(affine, [[0, 0, 0]])[0]
    crop, _ = crop_around(array, affine, corner, (4, 4, 4), fill=-1.0)
    assert (crop[:1] == -1).all() and crop[1, 1, 1] == array[0, 0, 0]  # centre 1.5 -> start -1.5 rounds to -1


def test_crop_around_other_spacing_matches_map_coordinates() -> None:
    array = _smooth_volume()
    affine = np.diag([0.7, 0.45, 0.6, 1.0])
    centre = voxel_to_world(affine, [[15.3, 20.1, 17.8]])[0]
    crop, crop_affine = crop_around(array, affine, centre, (6, 8, 5), (1.0, 0.9, 1.1))
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in crop.shape], indexing="ij"), -1).reshape(-1, 3)
    src = world_to_voxel(affine, voxel_to_world(crop_affine, idx))
    ref = map_coordinates(array, src.T, order=1).reshape(crop.shape)
    np.testing.assert_allclose(crop, ref, rtol=1e-5)
    np.testing.assert_allclose(voxel_to_world(crop_affine, [[2.5, 3.5, 2.0]])[0], centre, atol=1e-9)


def test_crop_affine_is_the_affine_crop_around_returns() -> None:
    """The affine of a patch sampled elsewhere (``Native.sample``): equal to ``crop_around``'s on the voxel grid (the
    centre rounded) and off it, on an oblique-free but permuted, mirrored affine."""
    array = _smooth_volume()
    affine = np.array([[0.0, 0.0, -0.6, 40.0], [0.0, -0.45, 0.0, 12.0], [0.7, 0.0, 0.0, -8.0], [0, 0, 0, 1.0]])
    centre = voxel_to_world(affine, [[10.4, 12.6, 14.5]])[0]
    for shape, spacing in (((5, 6, 7), None), ((6, 8, 5), (1.0, 0.9, 1.1))):
        _, expected = crop_around(array, affine, centre, shape, spacing)
        np.testing.assert_allclose(crop_affine(affine, centre, shape, spacing), expected, atol=1e-12)
    grid = grid_points_lps(crop_affine(affine, centre, (6, 8, 4), (1.0, 1.0, 1.0)), (6, 8, 4), 2)
    assert grid.shape == (3, 4, 2, 3)
    np.testing.assert_allclose(grid.reshape(-1, 3).mean(axis=0), centre, atol=1e-9)  # cells symmetric about it


def test_downsample_mean_and_locator_input() -> None:
    array = np.random.default_rng(0).random((16, 24, 20)).astype(np.float32)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    small, small_affine = downsample_mean(array, affine, 4)
    assert small.shape == (4, 6, 5)
    assert small[1, 2, 3] == pytest.approx(array[4:8, 8:12, 12:16].mean(), rel=1e-5)
    np.testing.assert_allclose(small_affine[:3, 3], [1.5, 1.5, 1.5])
    loc, loc_affine = locator_input(array, affine, (8, 8, 8), (4.0, 4.0, 4.0))
    assert loc.shape == (8, 8, 8)
    middle = voxel_to_world(loc_affine, [[3.5, 3.5, 3.5]])[0]
    np.testing.assert_allclose(middle, (np.array(array.shape) - 1) / 2, atol=2.0)


def test_heatmap_peak_lps_finds_gaussian_centre() -> None:
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-100.0, -90.0, -80.0]
    true_vox = np.array([5.3, 7.6, 9.2])
    grid = np.stack(np.meshgrid(*[np.arange(16)] * 3, indexing="ij"), -1)
    heatmap = -((grid - true_vox) ** 2).sum(-1) / 2.0  # log of a unit Gaussian: logits
    point = heatmap_peak_lps(heatmap[None, None], affine)
    np.testing.assert_allclose(point, voxel_to_world(affine, true_vox[None])[0], atol=4.0 * 0.35)


def test_normalise_schemes() -> None:
    hu = np.array([[[-3024, -1000, 0, 40, 400, 2000]]], dtype=np.float32)
    ct = normalise(hu, "ct_angio")
    assert ct.min() == 0.0 and ct.max() == 1.0 and 0.2 < ct[0, 0, 3] < 0.3
    mr = normalise(np.random.default_rng(0).random((10, 10, 10)).astype(np.float32) * 3000, "mr_percentile")
    assert 0 <= mr.min() and mr.max() <= 2.0 and abs(np.percentile(mr, 50) - 0.5) < 0.05
    with pytest.raises(KeyError, match="unknown normalisation"):
        normalise(hu, "nope")


@settings(max_examples=15, deadline=None)
@given(
    plane=st.sampled_from(["axial", "coronal", "sagittal"]),
    tilt=st.floats(-30, 30),
    reverse=st.booleans(),
    slice_spacing=st.floats(0.6, 3.0),
    pixel=st.floats(0.5, 1.6),
    target=st.floats(0.8, 2.0),
)
def test_dicom_round_trip_keeps_the_affine(plane, tilt, reverse, slice_spacing, pixel, target) -> None:
    """Property: write -> read -> reorient -> resample; every output voxel holds the field at its own LPS point."""
    import tempfile

    def linear_field(lps: np.ndarray) -> np.ndarray:  # linear interpolation reproduces a linear field exactly
        return 200.0 + 3.0 * lps[..., 0] - 2.0 * lps[..., 1] + 1.5 * lps[..., 2]

    with tempfile.TemporaryDirectory() as tmp:
        write_series(Path(tmp), n_slices=10, rows=16, cols=18, slice_spacing=slice_spacing,
                     pixel_spacing=(pixel, pixel), plane=plane, tilt_deg=tilt, reverse=reverse,
                     field=linear_field)
        volume = prepare_volume(tmp, (target, target, target), backend="numpy")
    np.testing.assert_allclose(spacing_of(volume.affine), target, rtol=1e-6)
    # Compare away from the edges, where the half-pixel grid clamps to the edge value.
    inner = tuple(slice(1, max(n - 1, 2)) for n in volume.array.shape)
    idx = np.stack(np.meshgrid(*[np.arange(n)[s] for n, s in zip(volume.array.shape, inner, strict=True)],
                               indexing="ij"), -1).reshape(-1, 3)
    expected = linear_field(voxel_to_world(volume.affine, idx)).reshape(volume.array[inner].shape)
    src = world_to_voxel(volume.source_affine, voxel_to_world(volume.affine, idx))
    inside = np.all((src >= 0) & (src <= np.asarray(volume.source_shape) - 1), axis=1).reshape(expected.shape)
    assert inside.any()
    np.testing.assert_allclose(volume.array[inner][inside], expected[inside], atol=0.6)  # 1-HU storage rounding


def test_crop_of_a_huge_single_slice_never_builds_a_huge_intermediate() -> None:
    """The input is cut to the box the samples need first: a 64^3 crop of a 1 x 3000 x 3000 image stays small in
    memory (interpolating z over the whole image would build 64 x 3000 x 3000 floats, 2.3 GB), and equals the crop of
    a window of the image around the same point."""
    import tracemalloc

    image = np.random.default_rng(0).random((1, 3000, 3000), dtype=np.float32)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    tracemalloc.start()
    crop, _ = crop_around(image, affine, [1500.0, 1500.0, 0.0], (64, 64, 64), (1.5, 1.5, 1.5))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert crop.shape == (64, 64, 64) and peak < 200e6, f"peak {peak / 1e6:.0f} MB"
    window = image[:, 1500 - 60 : 1500 + 60, 1500 - 60 : 1500 + 60]
    small_affine = affine.copy()
    small_affine[:3, 3] = voxel_to_world(affine, [[0, 1440, 1440]])[0]
    same, _ = crop_around(window, small_affine, [1500.0, 1500.0, 0.0], (64, 64, 64), (1.5, 1.5, 1.5))
    np.testing.assert_allclose(crop, same, atol=1e-6)
