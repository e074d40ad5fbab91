"""Which frames make the stack, in what order and on what grid: one series per folder, the dominant stack ordered along
the slice normal, its largest run, the output grid sized from header facts before anything is decoded, and the
stack's affine.

Slices are ordered by their position along the slice normal (ImagePositionPatient projected on the cross product of
the ImageOrientationPatient vectors), never by file name or InstanceNumber. The dominant stack (same orientation,
matrix and pixel spacing) is kept; scouts, odd shapes and duplicate positions are dropped and reported. When several
SeriesInstanceUIDs are mixed, the one with the dominant stack is kept. Slices separated from the stack's run by a gap
many times the median are a separate stack and dropped; the output grid (slices after gap resampling x rows x
columns) must fit ``max_voxels``, by an in-plane step, or the series is refused (``grid_plan``).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np

from kernel.dicom_headers import MIN_IMAGE_SIDE, FrameHeader, drop_frame
from kernel.volume import SeriesReadError

__all__ = ["MAX_EXTENT_MM", "grid_plan", "one_series", "select_stack", "stack_affine"]

# A gap along the slice normal this many times the median gap splits the stack into runs; the largest run is kept.
_RUN_GAP_FACTOR = 10.0
# Largest field of view along any axis (mm): no head is near it (images without PixelSpacing are taken at 1 mm, so
# 1,024-pixel photographs pass); beyond it PixelSpacing or the positions are wrong, and resampling to the model
# spacing would build a volume (and model inputs) of that extent.
MAX_EXTENT_MM = 2000.0


def one_series(
    frames: list[FrameHeader], dropped: list[tuple[str, str]], notes: list[str]
) -> tuple[list[FrameHeader], str]:
    """Frames of one SeriesInstanceUID: the one whose dominant stack is largest (images without the tag join it)."""
    uids = Counter(f.series_uid for f in frames if f.series_uid)
    if len(uids) <= 1:
        return frames, next(iter(uids), "")

    def stack_size(uid: str) -> int:
        keys = Counter(_stack_key(f) if f.geometry is not None else (f.rows, f.cols)
                       for f in frames if f.series_uid == uid)
        return keys.most_common(1)[0][1]

    best = max(sorted(uids), key=lambda u: (stack_size(u), uids[u]))
    for f in frames:
        if f.series_uid not in ("", best):
            drop_frame(dropped, f, f"another series in the folder (SeriesInstanceUID {f.series_uid[:64]})")
    notes.append(f"{len(uids)} series in the folder: kept {best} ({uids[best]} images)")
    return [f for f in frames if f.series_uid in ("", best)], best


def _stack_key(fr: FrameHeader) -> tuple:
    g = fr.geometry
    assert g is not None
    ori = tuple(round(v, 2) for v in (*g.row_dir, *g.col_dir))
    return (ori, fr.rows, fr.cols, round(g.pixel_spacing[0], 3), round(g.pixel_spacing[1], 3))


def select_stack(frames: list[FrameHeader], dropped: list[tuple[str, str]], notes: list[str]) -> list[FrameHeader]:
    """Keep the dominant stack (orientation, matrix, pixel spacing), ordered along the slice normal."""
    with_geom = [f for f in frames if f.geometry is not None]
    if not with_geom:
        # No geometry at all: the only order left is InstanceNumber/frame order. Said loudly in the notes.
        notes.append("no image position/orientation: slices ordered by InstanceNumber as a last resort")
        sizes = Counter((f.rows, f.cols) for f in frames)
        shape = sizes.most_common(1)[0][0]
        kept = [f for f in frames if (f.rows, f.cols) == shape]
        for f in frames:
            if (f.rows, f.cols) != shape:
                drop_frame(dropped, f, f"image size {f.rows}x{f.cols} differs from the stack's {shape[0]}x{shape[1]}")
        return sorted(kept, key=lambda f: (f.instance_number, f.path, f.frame))
    for f in frames:
        if f.geometry is None:
            drop_frame(dropped, f, "no image position/orientation")
    counts = Counter(_stack_key(f) for f in with_geom)
    best = counts.most_common(1)[0][0]
    kept = []
    for f in with_geom:
        key = _stack_key(f)
        if key == best:
            kept.append(f)
        elif key[0] != best[0]:
            drop_frame(dropped, f, "other orientation (scout/localizer or second stack)")
        elif key[1:3] != best[1:3]:
            drop_frame(dropped, f, f"image size {f.rows}x{f.cols} differs from the stack's {best[1]}x{best[2]}")
        else:
            drop_frame(dropped, f, "pixel spacing differs from the stack's")
    g0 = kept[0].geometry
    assert g0 is not None
    normal = np.cross(g0.row_dir, g0.col_dir)
    dist = np.array([float(np.dot(f.geometry.position, normal)) for f in kept])  # type: ignore[union-attr]
    order = np.argsort(dist, kind="stable")
    kept = [kept[i] for i in order]
    dist = dist[order]
    if len(kept) > 1 and float(dist[-1] - dist[0]) < 1e-3:
        notes.append("all slices share one position: ordered by InstanceNumber, spaced by SpacingBetweenSlices")
        return sorted(kept, key=lambda f: (f.instance_number, f.path, f.frame))
    out, out_dist = [kept[0]], [dist[0]]
    for i in range(1, len(kept)):
        if dist[i] - dist[i - 1] < 1e-3:
            drop_frame(dropped, kept[i], "duplicate slice position")
        else:
            out.append(kept[i])
            out_dist.append(dist[i])
    return _largest_run(out, np.asarray(out_dist), dropped, notes)


def _largest_run(
    stack: list[FrameHeader], dist: np.ndarray, dropped: list[tuple[str, str]], notes: list[str]
) -> list[FrameHeader]:
    """Split the ordered stack where a gap along the normal is ``_RUN_GAP_FACTOR`` times the median gap or more;
    keep the run with the most slices (the lowest of equals). A far-off slice would otherwise stretch the grid."""
    if len(stack) < 3:
        return stack
    gaps = np.diff(dist)
    median = float(np.median(gaps))
    cuts = np.flatnonzero(gaps >= _RUN_GAP_FACTOR * median) + 1
    if not len(cuts):
        return stack
    bounds = [0, *cuts.tolist(), len(stack)]
    runs = list(zip(bounds[:-1], bounds[1:], strict=True))
    lo, hi = max(runs, key=lambda r: r[1] - r[0])
    widest = float(gaps[cuts - 1].max())
    reason = (f"separate stack along the slice normal (a {widest:,.1f} mm gap, {widest / median:,.0f} x the "
              f"median {median:.3g} mm)")
    for f in stack[:lo] + stack[hi:]:
        drop_frame(dropped, f, reason)
    notes.append(f"stack split at {len(cuts)} gap(s) of {_RUN_GAP_FACTOR:g}x the median or more: kept slices "
                 f"{lo}-{hi - 1} of {len(stack)}")
    return stack[lo:hi]


def _normal_positions(stack: list[FrameHeader]) -> tuple[np.ndarray, np.ndarray]:
    """Slice normal of the stack's first image and every image's position along it (mm)."""
    g0 = stack[0].geometry
    assert g0 is not None
    normal = np.cross(g0.row_dir, g0.col_dir)
    return normal, np.array([float(np.dot(f.geometry.position, normal)) for f in stack])  # type: ignore[union-attr]


def _slice_grid(dist: np.ndarray) -> tuple[float, bool, int]:
    """(median gap, uniform, output slices) for ordered positions along the normal: the one place the z grid is
    sized. Non-uniform gaps are resampled at the median gap over the whole span; uniform means within 1% or 0.01 mm.
    """
    if len(dist) < 2 or float(dist[-1] - dist[0]) < 1e-3:
        return 0.0, True, len(dist)
    gaps = np.diff(dist)
    step = float(np.median(gaps))
    uniform = bool(np.all(np.abs(gaps - step) <= max(0.01 * step, 0.01)))
    return step, uniform, len(dist) if uniform else int(round(float(dist[-1] - dist[0]) / step)) + 1


def grid_plan(stack: list[FrameHeader], max_voxels: int | None, series_dir: Path, notes: list[str]) -> tuple[int, int]:
    """(in-plane step, most slices) of the output grid, from header facts, before anything is decoded.

    The grid is the larger of the decoded stack and its gap-resampled version; an in-plane step keeps it inside
    ``max_voxels``. When even images of ``MIN_IMAGE_SIDE`` pixels a side would not fit, or the field of view is
    larger than ``MAX_EXTENT_MM`` along an axis, the series is refused.
    """
    rows, cols = stack[0].rows, stack[0].cols
    slices = len(stack)
    g0 = stack[0].geometry
    pixel = g0.pixel_spacing if g0 is not None else (1.0, 1.0)
    depth = len(stack) * (stack[0].spacing_between or 1.0)
    if g0 is not None:
        step_z, _, n_out = _slice_grid(_normal_positions(stack)[1])
        slices = max(slices, n_out)
        depth = n_out * step_z if step_z > 0 else depth
    extent = (depth, rows * pixel[0], cols * pixel[1])
    if max(extent) > MAX_EXTENT_MM:
        raise SeriesReadError(
            f"{series_dir}: field of view {extent[0]:,.0f} x {extent[1]:,.0f} x {extent[2]:,.0f} mm, larger than any "
            f"head ({MAX_EXTENT_MM:,.0f} mm): PixelSpacing or the slice positions are wrong")
    step = 1
    if max_voxels is not None and slices * rows * cols > max_voxels:
        step = math.ceil(math.sqrt(slices * rows * cols / max_voxels))
        while slices * math.ceil(rows / step) * math.ceil(cols / step) > max_voxels:
            step += 1
        if min(math.ceil(rows / step), math.ceil(cols / step)) < MIN_IMAGE_SIDE:
            raise SeriesReadError(
                f"{series_dir}: a grid of {slices:,} slices x {rows} x {cols} does not fit the voxel budget "
                f"({max_voxels:,}) even at {MIN_IMAGE_SIDE} pixels a side")
        notes.append(f"over the voxel budget ({slices * rows * cols:,} > {max_voxels:,}): in-plane step {step}")
    return step, slices


def stack_affine(
    stack: list[FrameHeader], array: np.ndarray, step_yx: int, notes: list[str], max_slices: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Affine of the ordered stack; resamples non-uniform gaps (never to more than ``max_slices``, the planned grid).
    Returns (affine, slice index per frame, array)."""
    g0 = stack[0].geometry
    n = len(stack)
    if g0 is None:  # no geometry anywhere: axis-aligned axial stack, spacing from tags
        dz = stack[0].spacing_between or 1.0
        affine = np.eye(4)
        affine[:3, :3] = np.array([[0.0, 0.0, step_yx], [0.0, step_yx, 0.0], [dz, 0.0, 0.0]])
        return affine, np.arange(n), array
    normal, dist = _normal_positions(stack)
    affine = np.eye(4)
    affine[:3, 1] = np.asarray(g0.col_dir) * g0.pixel_spacing[0] * step_yx
    affine[:3, 2] = np.asarray(g0.row_dir) * g0.pixel_spacing[1] * step_yx
    affine[:3, 3] = g0.position
    if n == 1 or float(dist[-1] - dist[0]) < 1e-3:
        dz = stack[0].spacing_between or 1.0
        affine[:3, 0] = normal * dz
        return affine, np.arange(n), array
    step, uniform, n_out = _slice_grid(dist)
    # Slice direction from the first to the last position: keeps a gantry tilt (sheared stack) exact.
    first = np.asarray(stack[0].geometry.position)  # type: ignore[union-attr]
    last = np.asarray(stack[-1].geometry.position)  # type: ignore[union-attr]
    if uniform:
        affine[:3, 0] = (last - first) / (n - 1)
        return affine, np.arange(n), array
    if max_slices is not None and n_out > max_slices:
        raise SeriesReadError(f"resampling the gaps would need {n_out} slices, beyond the planned {max_slices}")
    targets = dist[0] + np.arange(n_out) * step
    hi = np.clip(np.searchsorted(dist, targets, side="right"), 1, n - 1)
    lo = hi - 1
    w = np.clip((targets - dist[lo]) / (dist[hi] - dist[lo]), 0.0, 1.0).astype(np.float32)
    out = np.empty((n_out, *array.shape[1:]), dtype=np.float32)
    for k in range(n_out):  # slice by slice: no temporaries the size of the grid
        np.multiply(array[lo[k]], 1 - w[k], out=out[k])
        out[k] += array[hi[k]] * w[k]
    affine[:3, 0] = normal * step
    notes.append(f"non-uniform slice gaps ({np.diff(dist).min():.3f}-{np.diff(dist).max():.3f} mm): "
                 f"resampled to {n_out} slices at {step:.3f} mm")
    slice_index = np.rint((dist - dist[0]) / step).astype(int)
    return affine, slice_index, out
