"""Geometry and intensity preprocessing shared by training and the kernel: one implementation of each step.

Conventions (docs/reference/architecture.md): affines map a voxel index (z, y, x, 1) to LPS mm. The canonical
orientation has array axes pointing to superior, posterior and patient-left. Resampling uses the half-pixel grid: the
field of view's edges are kept, steps are exactly the target spacing, and new origin = old origin + 0.5 * (new - old
spacing).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from kernel.dicom_io import DEFAULT_MAX_VOXELS, read_series
from kernel.volume import Native, SeriesReadError, Volume

__all__ = [
    "MAX_OUTPUT_SIDE", "MAX_OUTPUT_VOXELS", "NORMALISERS", "canonicalise", "crop_affine", "crop_around",
    "downsample_mean", "grid_points_lps", "localizer_to_lps", "native_stack", "normalise", "normaliser",
    "prepare_volume", "reverse_z", "sample_patches", "reorient_to_canonical", "resample_to_spacing", "spacing_of",
    "voxel_to_world", "world_to_voxel",
]

# Canonical array axis i is aligned with LPS axis _CANONICAL_LPS_AXIS[i]: z -> S (2), y -> P (1), x -> L (0).
_CANONICAL_LPS_AXIS = (2, 1, 0)
# Largest prepared (canonical, resampled) volume handed to the models: 512 MB of float32, ~10x a 1 mm CTA, and at most
# 2,048 voxels a side (model inputs are cut axis by axis: a 64-slice crop of a 2,048^2 plane is 1 GB on the way).
# Sized before resampling (``prepare_volume``), so a volume the models would choke on is never built.
MAX_OUTPUT_VOXELS = 128_000_000
MAX_OUTPUT_SIDE = 2048


def spacing_of(affine: np.ndarray) -> np.ndarray:
    """Voxel size (dz, dy, dx) in mm: the norms of the affine's first three columns."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def voxel_to_world(affine: np.ndarray, points_zyx: np.ndarray) -> np.ndarray:
    """(N, 3) voxel coordinates (z, y, x) -> (N, 3) LPS mm."""
    pts = np.atleast_2d(np.asarray(points_zyx, dtype=np.float64))
    return pts @ affine[:3, :3].T + affine[:3, 3]


def world_to_voxel(affine: np.ndarray, points_lps: np.ndarray) -> np.ndarray:
    """(N, 3) LPS mm -> (N, 3) fractional voxel coordinates (z, y, x)."""
    pts = np.atleast_2d(np.asarray(points_lps, dtype=np.float64))
    return np.linalg.solve(affine[:3, :3], (pts - affine[:3, 3]).T).T


def reorient_to_canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute and flip array axes so they point, as nearly as possible, to superior, posterior and patient-left.

    The permutation maximises the summed |cosine| between array axes and LPS axes, so oblique stacks go to their
    nearest canonical orientation; the residual rotation stays in the returned affine (no interpolation here).
    """
    assert array.ndim == 3, f"expected a 3-D array, got {array.shape}"
    directions = affine[:3, :3] / spacing_of(affine)  # unit column per array axis
    best = max(
        itertools.permutations(range(3)),
        key=lambda perm: sum(abs(directions[_CANONICAL_LPS_AXIS[i], perm[i]]) for i in range(3)),
    )
    out = np.transpose(array, best)
    new_affine = np.eye(4)
    new_affine[:3, :3] = affine[:3, list(best)]
    new_affine[:3, 3] = affine[:3, 3]
    flips = []
    for i in range(3):
        if new_affine[_CANONICAL_LPS_AXIS[i], i] < 0:
            flips.append(i)
            new_affine[:3, 3] += new_affine[:3, i] * (out.shape[i] - 1)
            new_affine[:3, i] = -new_affine[:3, i]
    if flips:
        out = np.flip(out, axis=tuple(flips))
    return np.ascontiguousarray(out), new_affine


def _half_pixel_grid(n_in: int, old: float, new: float) -> tuple[int, np.ndarray]:
    """Output size and source coordinates of the half-pixel grid along one axis."""
    n_out = max(int(np.floor(n_in * old / new + 1e-6)), 1)
    src = (np.arange(n_out) + 0.5) * (new / old) - 0.5
    return n_out, src


def _interp_axis(array: np.ndarray, axis: int, src: np.ndarray, fill: float | None = None) -> np.ndarray:
    """Linear interpolation of ``array`` along ``axis`` at fractional coordinates ``src``.

    Out-of-range coordinates take the edge value (``fill=None``) or ``fill``.
    """
    n = array.shape[axis]
    clamped = np.clip(src, 0.0, n - 1)
    lo = np.floor(clamped).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    w = (clamped - lo).astype(np.float32)
    shape = [1] * array.ndim
    shape[axis] = len(src)
    w = w.reshape(shape)
    a = np.take(array, lo, axis=axis)
    if np.all(w == 0):
        out = a
    else:
        b = np.take(array, hi, axis=axis)
        out = a + (b - a) * w
    if fill is not None:
        outside = (src < -1e-6) | (src > n - 1 + 1e-6)
        if outside.any():
            out = out.copy() if out is a else out
            index = [slice(None)] * array.ndim
            index[axis] = np.flatnonzero(outside)
            out[tuple(index)] = fill
    return out


def _resample_numpy(array: np.ndarray, grids: list[np.ndarray]) -> np.ndarray:
    out = array
    # Shrink the axis with the largest reduction first: less work for the later axes.
    order = sorted(range(3), key=lambda ax: len(grids[ax]) / array.shape[ax])
    for ax in order:
        if len(grids[ax]) == array.shape[ax] and np.allclose(grids[ax], np.arange(array.shape[ax])):
            continue
        out = _interp_axis(out, ax, grids[ax])
    return np.ascontiguousarray(out, dtype=np.float32)


def _resample_torch(array: np.ndarray, scale: np.ndarray, device: str) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)[None, None]
        out = F.interpolate(
            t, scale_factor=tuple(float(s) for s in scale), mode="trilinear", align_corners=False,
            recompute_scale_factor=False,
        )
        return out[0, 0].cpu().numpy()


def _torch_device() -> str | None:
    """"cuda" when torch sees a GPU, "cpu" when torch is importable, None without torch."""
    if os.environ.get("RSNA_RESAMPLE_BACKEND") == "numpy":
        return None
    try:
        import torch
    except ImportError:
        return None
    return "cuda" if torch.cuda.is_available() else "cpu"


def resample_to_spacing(
    array: np.ndarray,
    affine: np.ndarray,
    spacing_zyx_mm: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Linear resampling to ``spacing_zyx_mm`` on the half-pixel grid; returns the array and its exact affine.

    ``backend``: "numpy" (separable, no extra dependency), "torch" (CPU or GPU ``interpolate``, same grid and the
    same numbers to float rounding) or "auto" (torch when importable, on the GPU when there is one).
    """
    assert array.ndim == 3 and len(spacing_zyx_mm) == 3, "resample_to_spacing takes a 3-D array and 3 spacings"
    old = spacing_of(affine)
    new = np.asarray(spacing_zyx_mm, dtype=np.float64)
    assert np.all(new > 0), f"target spacing must be positive, got {spacing_zyx_mm}"
    grids = []
    for ax in range(3):
        _, src = _half_pixel_grid(array.shape[ax], old[ax], new[ax])
        grids.append(src)
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] * (new / old)
    new_affine[:3, 3] = voxel_to_world(affine, np.array([[g[0] for g in grids]]))[0]
    if all(len(g) == n and np.allclose(g, np.arange(n)) for g, n in zip(grids, array.shape, strict=True)):
        return np.ascontiguousarray(array, dtype=np.float32), new_affine
    device = _torch_device() if backend == "auto" else ("cpu" if backend == "torch" else None)
    if backend == "cuda":
        device = "cuda"
    if device is not None:
        scale = old / new
        n_out = np.array([len(g) for g in grids])
        # torch sizes the output as floor(n * scale): nudge the scale where float rounding would lose a voxel.
        scale = np.where(np.floor(np.asarray(array.shape) * scale) < n_out, scale * (1 + 1e-7), scale)
        out = _resample_torch(array, scale, device)
        assert out.shape == tuple(len(g) for g in grids), "torch grid size differs from the half-pixel grid"
        return out, new_affine
    return _resample_numpy(array, grids), new_affine


def downsample_mean(array: np.ndarray, affine: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Block-mean downsampling by an integer factor (no aliasing of thin vessels); half-pixel grid like resampling."""
    assert factor >= 1, "factor must be >= 1"
    if factor == 1:
        return array, affine
    shape = [max(n // factor, 1) for n in array.shape]
    cropped = array[: shape[0] * factor, : shape[1] * factor, : shape[2] * factor]
    if any(n < factor for n in array.shape):  # an axis shorter than one block: pad by edge values
        pad = [(0, max(factor - n, 0)) for n in cropped.shape]
        cropped = np.pad(cropped, pad, mode="edge")
    out = cropped.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean(axis=(1, 3, 5), dtype=np.float32)
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] * factor
    new_affine[:3, 3] = voxel_to_world(affine, np.full((1, 3), 0.5 * (factor - 1)))[0]
    return out.astype(np.float32), new_affine


# --- intensity normalisation: named schemes, chosen by the manifest -------------------------------------------------


Normaliser = Callable[[np.ndarray], np.ndarray]


def _ct_angio(reference: np.ndarray) -> Normaliser:
    """CT window for vessels: HU [-150, 650] -> [0, 1] (bone saturates, brain sits near 0.24); no statistics."""
    return lambda a: np.clip((a + 150.0) / 800.0, 0.0, 1.0).astype(np.float32)


def _robust_range(array: np.ndarray, lo_pct: float, hi_pct: float) -> tuple[float, float]:
    step = max(1, int(round((array.size / 2_000_000) ** (1 / 3))))
    sample = array[::step, ::step, ::step]
    lo, hi = np.percentile(sample, [lo_pct, hi_pct])
    return float(lo), float(hi)


def _mr_percentile(reference: np.ndarray) -> Normaliser:
    """MR has no absolute scale: map the reference's 1st..99.5th percentile to [0, 1], clip at 2 (vessels stay
    distinct)."""
    lo, hi = _robust_range(reference, 1.0, 99.5)
    scale = max(hi - lo, 1e-6)
    return lambda a: np.clip((a - lo) / scale, 0.0, 2.0).astype(np.float32)


def _zscore(reference: np.ndarray) -> Normaliser:
    """Zero mean, unit variance over the whole reference volume."""
    mean, std = float(reference.mean()), max(float(reference.std()), 1e-6)
    return lambda a: ((a - mean) / std).astype(np.float32)


# scheme name -> a function that takes the statistics from a reference volume and returns the normaliser
NORMALISERS: dict[str, Callable[[np.ndarray], Normaliser]] = {
    "ct_angio": _ct_angio,
    "mr_percentile": _mr_percentile,
    "zscore": _zscore,
}


def normaliser(scheme: str, reference: np.ndarray) -> Normaliser:
    """The named scheme (a key of ``NORMALISERS``) with the statistics of ``reference`` computed once: a patch sampled
    from the native stack is normalised with the statistics of the whole canonical volume, as the volume itself is."""
    if scheme not in NORMALISERS:
        raise KeyError(f"unknown normalisation scheme {scheme!r}; known: {sorted(NORMALISERS)}")
    return NORMALISERS[scheme](reference)


def normalise(array: np.ndarray, scheme: str, reference: np.ndarray | None = None) -> np.ndarray:
    """Apply the named scheme, statistics from ``reference`` (default: the array itself)."""
    return normaliser(scheme, array if reference is None else reference)(array)


# --- series -> canonical volume --------------------------------------------------------------------------------------


def prepare_volume(
    series_dir: str | os.PathLike[str],
    spacing_zyx_mm: Sequence[float] | None = (1.0, 1.0, 1.0),
    *,
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    backend: str = "auto",
    keep_native: bool = False,
) -> Volume:
    """Read a series, reorient it to canonical and resample it (``spacing_zyx_mm=None`` keeps the native spacing).

    The returned Volume keeps the native ``slice_lookup``/``source_affine``/``frame_geometry`` so localizers map;
    with ``keep_native`` also the canonical stack at native spacing (``native``, see ``native_stack``). A series whose
    resampled volume would be over ``MAX_OUTPUT_VOXELS`` or ``MAX_OUTPUT_SIDE`` raises ``SeriesReadError`` before
    it is resampled.
    """
    volume = read_series(series_dir, max_voxels=max_voxels)
    if spacing_zyx_mm is not None:
        _check_output_grid(series_dir, volume, spacing_zyx_mm)
    return canonicalise(volume, spacing_zyx_mm, backend=backend, keep_native=keep_native)


def _check_output_grid(series_dir: str | os.PathLike[str], volume: Volume, spacing_zyx_mm: Sequence[float]) -> None:
    """Refuse a series whose volume at ``spacing_zyx_mm`` would be over ``MAX_OUTPUT_VOXELS`` or ``MAX_OUTPUT_SIDE``.

    Sized from the extents in mm, which are the same under any reorientation (the finest target spacing per side).
    """
    extents = [n * s for n, s in zip(volume.array.shape, volume.spacing, strict=True)]
    voxels = math.prod(extents) / math.prod(spacing_zyx_mm)
    side = max(extents) / min(spacing_zyx_mm)
    at = "x".join(f"{s:g}" for s in spacing_zyx_mm)
    if voxels > MAX_OUTPUT_VOXELS:
        raise SeriesReadError(f"{series_dir}: at {at} mm the volume would hold {voxels:,.0f} voxels, over the "
                              f"{MAX_OUTPUT_VOXELS:,} handed to the models")
    if side > MAX_OUTPUT_SIDE:
        raise SeriesReadError(f"{series_dir}: at {at} mm the volume would be {side:,.0f} voxels long, over the "
                              f"{MAX_OUTPUT_SIDE:,} a side handed to the models")


def canonicalise(
    volume: Volume, spacing_zyx_mm: Sequence[float] | None = (1.0, 1.0, 1.0), *, backend: str = "auto",
    keep_native: bool = False,
) -> Volume:
    """Reorient (and optionally resample) a native volume; geometry records are kept, and with ``keep_native`` the
    reoriented array before resampling (a view of the read array where possible: no copy)."""
    array, affine = reorient_to_canonical(volume.array, volume.affine)
    native = native_stack(array, affine) if keep_native else None
    if spacing_zyx_mm is not None:
        array, affine = resample_to_spacing(array, affine, spacing_zyx_mm, backend=backend)
    return replace(volume, array=array, affine=affine, native=native)


def localizer_to_lps(volume: Volume, sop_uid: str, x: float, y: float, frame: int = 0) -> np.ndarray:
    """LPS point of a localizer given as pixel column ``x`` and row ``y`` (pixel centres at integers) on a SOP."""
    key = (str(sop_uid), int(frame))
    geometry = volume.frame_geometry.get(key)
    if geometry is not None:
        return geometry.pixel_to_lps(float(x), float(y))
    if key in volume.slice_lookup and volume.source_affine is not None:
        return voxel_to_world(volume.source_affine, np.array([[volume.slice_lookup[key], y, x]]))[0]
    raise KeyError(f"SOPInstanceUID {sop_uid} (frame {frame}) is not an image of series {volume.series_uid}")


# --- patches ----------------------------------------------------------------------------------------------------


def crop_around(
    array: np.ndarray,
    affine: np.ndarray,
    centre_lps: Sequence[float],
    shape_zyx: Sequence[int],
    spacing_zyx_mm: Sequence[float] | None = None,
    fill: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A ``shape_zyx`` patch centred on a physical point, at ``spacing_zyx_mm`` (default: the array's own).

    At the array's own spacing the patch is cut on the voxel grid (centre rounded to the nearest voxel, no blur);
    otherwise it is sampled trilinearly. Outside the volume the patch holds ``fill``.
    """
    shape = np.asarray(shape_zyx, dtype=int)
    starts, ratio = _crop_grid(affine, centre_lps, shape, spacing_zyx_mm)
    sources = [starts[ax] + np.arange(shape[ax]) * ratio[ax] for ax in range(3)]
    # Cut the input to the box the samples need before interpolating, so no intermediate is larger than that box (a
    # 64^3 crop of a 1 x 6666^2 image used to make a 64 x 6666^2 array). Samples outside the volume keep their fill:
    # the box starts at 0 when any sample lies below 0 and ends at the edge when any lies beyond it.
    box = []
    for ax, src in enumerate(sources):
        n = array.shape[ax]
        lo = int(np.clip(np.floor(src.min()), 0, n - 1))
        hi = int(np.clip(np.ceil(src.max()) + 1, lo + 1, n))
        box.append(slice(lo, hi))
    out = np.asarray(array[tuple(box)], dtype=np.float32)
    for ax in range(3):
        out = _interp_axis(out, ax, sources[ax] - box[ax].start, fill=fill)
    return np.ascontiguousarray(out, dtype=np.float32), _grid_affine(affine, starts, ratio)


def _crop_grid(affine: np.ndarray, centre_lps: Sequence[float], shape: np.ndarray,
               spacing_zyx_mm: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray]:
    """(first sample, step) in the array's voxel coordinates of a ``crop_around`` patch, per axis."""
    assert shape.shape == (3,) and np.all(shape > 0), f"crop shape must be 3 positive ints, got {shape}"
    old = spacing_of(affine)
    new = old if spacing_zyx_mm is None else np.asarray(spacing_zyx_mm, dtype=np.float64)
    ratio = new / old
    centre = world_to_voxel(affine, np.asarray(centre_lps, dtype=np.float64)[None])[0]
    starts = centre - (shape - 1) / 2.0 * ratio
    same = np.isclose(ratio, 1.0, rtol=1e-6)
    return np.where(same, np.floor(starts + 0.5), starts), ratio  # round half up: the same rule for every parity


def _grid_affine(affine: np.ndarray, starts: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    out = np.asarray(affine, dtype=np.float64).copy()
    out[:3, :3] = out[:3, :3] * ratio
    out[:3, 3] = voxel_to_world(affine, starts[None])[0]
    return out


def crop_affine(affine: np.ndarray, centre_lps: Sequence[float], shape_zyx: Sequence[int],
                spacing_zyx_mm: Sequence[float] | None = None) -> np.ndarray:
    """The affine of the ``crop_around`` patch (same arguments) without cutting it: where a patch that was sampled
    elsewhere (``Native.sample``) lies, so its model output cells can be placed in LPS."""
    shape = np.asarray(shape_zyx, dtype=int)
    return _grid_affine(affine, *_crop_grid(affine, centre_lps, shape, spacing_zyx_mm))


def grid_points_lps(affine: np.ndarray, shape: Sequence[int], stride: int) -> np.ndarray:
    """(d, h, w, 3) LPS centres of the stride-``stride`` output cells of an input with ``affine`` and ``shape``."""
    axes = [(np.arange(n // stride) + 0.5) * stride - 0.5 for n in shape]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    return voxel_to_world(affine, grid.reshape(-1, 3)).reshape(*grid.shape)


def sample_patches(array: np.ndarray, affine: np.ndarray, points_lps: np.ndarray, shape_zyx: Sequence[int],
                   spacing_zyx_mm: Sequence[float] | None = None) -> np.ndarray:
    """(n, z, y, x) float32: ``crop_around`` each LPS point (fill 0 outside the volume)."""
    points = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
    shape = tuple(int(n) for n in shape_zyx)
    if len(points) == 0:
        return np.zeros((0, *shape), dtype=np.float32)
    return np.stack([crop_around(array, affine, p, shape, spacing_zyx_mm)[0] for p in points])


def native_stack(array: np.ndarray, affine: np.ndarray,
                 normalise: Callable[[np.ndarray], np.ndarray] | None = None) -> Native:
    """A ``Native`` that samples an array held in this process (``sample_patches``)."""
    affine = np.asarray(affine, dtype=np.float64)

    def sample(points_lps: np.ndarray, shape_zyx: Sequence[int], spacing_zyx_mm: Sequence[float]) -> np.ndarray:
        return sample_patches(array, affine, points_lps, shape_zyx, spacing_zyx_mm)

    native = Native(tuple(int(n) for n in array.shape), affine, sample, array=array)  # type: ignore[arg-type]
    return native if normalise is None else replace(native, normalise=normalise)


def reverse_z(native: Native) -> Native:
    """The stack with its slice order reversed (same affine), as ``native_stack(array[::-1], affine)`` samples it,
    without the reversed copy: each point is mirrored on z (voxel index i -> n - 1 - i) and its patch reversed on z.

    Trilinear samples commute with the mirror, so the patches are the same (voxel-grid cuts at the array's own spacing
    can differ by one voxel where a patch centre falls exactly half-way between voxels).
    """
    n, affine, inner = native.shape[0], native.affine, native.sample

    def sample(points_lps: np.ndarray, shape_zyx: Sequence[int], spacing_zyx_mm: Sequence[float]) -> np.ndarray:
        voxels = world_to_voxel(affine, np.asarray(points_lps, dtype=np.float64).reshape(-1, 3))
        voxels[:, 0] = (n - 1) - voxels[:, 0]
        patches = inner(voxel_to_world(affine, voxels), shape_zyx, spacing_zyx_mm)
        return np.ascontiguousarray(patches[:, ::-1])

    array = None if native.array is None else native.array[::-1]
    return replace(native, sample=sample, array=array)
