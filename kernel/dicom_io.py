"""Read one DICOM series folder into a geometrically correct volume: walk the folder, decode the chosen stack, and
assemble the ``Volume`` (``read_series``, the reader's public entry).

The jobs on the way each live in their own module: ``kernel.dicom_headers`` parses each file's header into frames
sized from what its bytes hold (byte budgets, frame counts), ``kernel.dicom_stack`` chooses the series and its
dominant stack, orders it along the slice normal and plans the output grid, ``kernel.volume`` holds the types. Only
the tags of the competition's test-time allow-list are relied on.

Sizing before allocation: nothing is allocated or decoded before the output grid is known from header facts
(``dicom_stack.grid_plan``). Blank images are dropped and reported. One folder gives one series; nested subfolders
are read (depth and file count bounded).

Decoding: uncompressed little-endian pixel data is read straight from the file at its offset (the fast path, ~5x a
plain pydicom loop); everything else, and anything the fast path refuses, goes through pydicom's decoders (pylibjpeg
plugins for JPEG, JPEG-LS, JPEG 2000, RLE). Compressed series are decoded in a process pool when that pays.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from kernel.dicom_headers import FrameHeader, decode_budget_bytes, drop_frame, parse_headers
from kernel.dicom_stack import grid_plan, one_series, select_stack, stack_affine
from kernel.volume import SeriesReadError, Volume

__all__ = ["DEFAULT_MAX_VOXELS", "read_series"]

# Largest number of voxels decoded at full resolution; beyond it the stack is subsampled in-plane before decoding.
DEFAULT_MAX_VOXELS = 400_000_000
# Series in a slow codec (JPEG 2000: ~15-19 ms a 512^2 slice) with at least this many files are decoded in a process
# pool. Fast codecs (RLE, JPEG-LS, JPEG) lose more to the pool's start-up and transfers than they gain.
_PARALLEL_MIN_FILES = 24
# Stacks with at least this many frames are converted to float32 in threads.
_THREADED_MIN_FRAMES = 64
_SLOW_CODECS = {
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",  # HTJ2K
}
_CT_HU_RANGE = (-1024.0, 4095.0)
# Bounds on what one folder may hold: files listed, subfolder depth.
_MAX_FILES = 10_000
_MAX_DEPTH = 8


def _list_files(series_dir: Path, dropped: list[tuple[str, str]]) -> list[str]:
    """Files under ``series_dir``, nested subfolders included (depth and count bounded, each folder listed once so
    a link loop ends), in sorted order. What is not a regular file is reported in ``dropped``."""
    files: list[str] = []
    seen: set[tuple[int, int]] = set()

    def walk(folder: str, rel: str, depth: int) -> None:
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                dropped.append((rel.rstrip("/") or ".", "folder listed before (link loop)"))
                return
            seen.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            if depth == 0:
                raise SeriesReadError(f"{series_dir}: cannot list folder ({exc.strerror or exc})") from exc
            dropped.append((rel.rstrip("/"), f"unreadable folder ({exc.strerror or exc})"))
            return
        subfolders = []
        for entry in entries:
            name = rel + entry.name
            try:
                if entry.is_dir():
                    subfolders.append(entry)
                    continue
                if not entry.is_file():
                    dropped.append((name, "not a regular file"))
                    continue
            except OSError as exc:  # broken link, link loop, permission
                dropped.append((name, f"unreadable ({exc.strerror or exc})"))
                continue
            if len(files) >= _MAX_FILES:
                dropped.append((name, f"beyond the first {_MAX_FILES:,} files"))
                continue
            files.append(entry.path)
        for entry in subfolders:
            if depth + 1 > _MAX_DEPTH:
                dropped.append((rel + entry.name, f"folder nested deeper than {_MAX_DEPTH}"))
            else:
                walk(entry.path, rel + entry.name + "/", depth + 1)

    walk(str(series_dir), "", 0)
    return files


def _decode_file(path: str, step: int = 1, ds: Dataset | None = None, n_frames: int | None = None) -> np.ndarray:
    """All frames of one file as a raw (N, rows, cols) array through pydicom's decoders, every ``step``-th pixel.

    ``ds``: the file's dataset from the header pass (its deferred pixel data is read now), else the file is parsed.
    ``n_frames``: the frame count the header pass worked out (``_frames_held``); the decoder is told that count, so a
    NumberOfFrames the data cannot hold never sizes an allocation.
    """
    if ds is None:
        ds = pydicom.dcmread(path)
    if n_frames is not None and (n_frames > 1 or "NumberOfFrames" in ds):
        ds.NumberOfFrames = n_frames
    arr = ds.pixel_array
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"unexpected pixel array shape {arr.shape}")
    return np.ascontiguousarray(arr[:, ::step, ::step]) if step > 1 else arr


def _read_fast(fr: FrameHeader) -> np.ndarray:
    assert fr.fast_offset is not None and fr.fast_dtype is not None
    n = fr.rows * fr.cols
    dtype = np.dtype(fr.fast_dtype)
    raw = np.fromfile(fr.path, dtype=dtype, count=n, offset=fr.fast_offset + fr.frame * n * dtype.itemsize)
    if raw.size != n:
        raise ValueError("pixel data shorter than Rows x Columns")
    return raw.reshape(fr.rows, fr.cols)


def _to_values(raw: np.ndarray, fr: FrameHeader, out: np.ndarray, clip: tuple[float, float] | None) -> None:
    """Stored values -> modality values (MONOCHROME1 inversion, rescale, optional clip), written into ``out``."""
    if fr.monochrome1:
        # Invert within the stored range: lo + hi - value (lo + hi = -1 for signed, 2**bits - 1 for unsigned).
        np.subtract(np.float32(-1 if fr.signed else 2**fr.bits_stored - 1), raw, out=out, dtype=np.float32)
        if fr.slope != 1.0:
            out *= np.float32(fr.slope)
        if fr.intercept != 0.0:
            out += np.float32(fr.intercept)
    elif fr.slope == 1.0:  # the common case: one pass
        np.add(raw, np.float32(fr.intercept), out=out, dtype=np.float32)
    else:
        np.multiply(raw, np.float32(fr.slope), out=out, dtype=np.float32)
        if fr.intercept != 0.0:
            out += np.float32(fr.intercept)
    if clip is not None:
        np.clip(out, clip[0], clip[1], out=out)


def _decode_many(
    paths: list[str], workers: int, step: int, datasets: dict[str, Dataset], n_frames: dict[str, int]
) -> dict[str, np.ndarray | Exception]:
    """Decode files through pydicom, in a process pool when there are enough of them to pay for it."""
    if workers <= 1 or len(paths) < _PARALLEL_MIN_FILES:
        return {p: _decode_file_safe(p, step, datasets.get(p), n_frames.get(p)) for p in paths}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_decode_file_safe, paths, [step] * len(paths), [None] * len(paths),
                           [n_frames.get(p) for p in paths], chunksize=8)
        return dict(zip(paths, results, strict=True))


def _decode_file_safe(
    path: str, step: int = 1, ds: Dataset | None = None, n_frames: int | None = None
) -> np.ndarray | Exception:
    try:
        return _decode_file(path, step, ds, n_frames)
    except Exception as exc:  # noqa: BLE001
        return ValueError(f"{type(exc).__name__}: {str(exc)[:100]}")


def read_series(
    series_dir: str | os.PathLike[str],
    *,
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    workers: int | None = None,
) -> Volume:
    """Read the dominant image stack of a series folder into a float32 (Z, Y, X) volume with its LPS affine.

    CT comes back in Hounsfield units (clipped to [-1024, 4095] so padding values do not bleed into resampling), MR as
    stored with any rescale applied; MONOCHROME1 is inverted. Non-uniform slice gaps are resampled linearly onto a
    uniform grid at the median gap. A stack beyond ``max_voxels`` is subsampled in-plane before decoding. Raises
    ``SeriesReadError`` when nothing readable remains.
    """
    series_dir = Path(series_dir)
    if not series_dir.is_dir():
        raise SeriesReadError(f"{series_dir}: not a folder")
    dropped: list[tuple[str, str]] = []
    notes: list[str] = []
    files = _list_files(series_dir, dropped)
    frames, datasets = parse_headers(files, dropped, decode_budget_bytes(max_voxels), notes)
    if not frames:
        reasons = Counter(r.split(" (")[0] for _, r in dropped).most_common(3)
        why = "; ".join(f"{r} x{c}" for r, c in reasons) or "no files"
        raise SeriesReadError(f"{series_dir}: no readable image in {len(files)} file(s): {why}")
    frames, series_uid = one_series(frames, dropped, notes)
    modality = Counter(f.modality for f in frames).most_common(1)[0][0]
    frame_geometry = {(f.sop_uid, f.frame): f.geometry for f in frames if f.geometry is not None}
    stack = select_stack(frames, dropped, notes)
    step_yx, max_slices = grid_plan(stack, max_voxels, series_dir, notes)
    for path in {f.path for f in frames} - {f.path for f in stack}:
        datasets.pop(path, None)

    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    array, status = _decode_stack(stack, datasets, step_yx, workers, _CT_HU_RANGE if modality == "CT" else None)
    array, good = _keep_decoded(array, stack, status, dropped, series_dir)

    affine, slice_index, array = stack_affine(good, array, step_yx, notes, max_slices)
    slice_lookup = {(f.sop_uid, f.frame): int(slice_index[i]) for i, f in enumerate(good)}
    return Volume(
        array=np.ascontiguousarray(array, dtype=np.float32),
        affine=affine,
        modality=modality,
        series_uid=series_uid or series_dir.name,
        slice_lookup=slice_lookup,
        source_affine=affine.copy(),
        source_shape=tuple(array.shape),
        dropped=dropped,
        frame_geometry=frame_geometry,
        notes=notes,
        geometry_known=good[0].geometry is not None,
        study_uid=_dominant(f.study_uid for f in good),
        frame_of_reference_uid=_dominant(f.frame_of_reference_uid for f in good),
        sop_class_uids={f.sop_uid: f.sop_class_uid for f in good if f.sop_class_uid},
    )


def _dominant(values: Iterable[str]) -> str:
    """The most common non-empty value ("" when there is none)."""
    counts = Counter(v for v in values if v)
    return counts.most_common(1)[0][0] if counts else ""


def _decode_stack(
    stack: list[FrameHeader], datasets: dict[str, Dataset], step_yx: int, workers: int,
    clip: tuple[float, float] | None,
) -> tuple[np.ndarray, list[str | None]]:
    """The stack decoded into a float32 (slices, rows, cols) array at the in-plane step, and per frame None, "blank"
    or why it could not be decoded. The fast path reads plain files; pydicom decodes the rest (in a process pool when
    there are many); ``datasets`` is emptied once decoded."""
    slow_paths = sorted({f.path for f in stack if f.fast_offset is None})
    pool_workers = workers if any(f.transfer_syntax in _SLOW_CODECS for f in stack) else 1
    rows, cols = stack[0].rows, stack[0].cols
    n_frames = {f.path: f.n_frames for f in stack}
    decoded = _decode_many(slow_paths, pool_workers, step_yx, datasets, n_frames) if slow_paths else {}
    datasets.clear()
    out_rows, out_cols = len(range(0, rows, step_yx)), len(range(0, cols, step_yx))
    array = np.empty((len(stack), out_rows, out_cols), dtype=np.float32)  # filled slice by slice: no stack copy

    def decode_into(i: int) -> str | None:
        """Decode frame i into array[i]; returns "blank", an error message, or None. Runs in threads: file reads
        and numpy arithmetic release the GIL."""
        fr = stack[i]
        try:
            if fr.fast_offset is not None:
                raw = _read_fast(fr)[::step_yx, ::step_yx]
            else:
                result = decoded[fr.path]
                if isinstance(result, Exception):
                    raise result
                if fr.frame >= result.shape[0] or result.shape[1:] != (out_rows, out_cols):
                    raise ValueError(f"decoded shape {result.shape} does not match Rows/Columns/frames")
                raw = result[fr.frame]
            if raw.dtype.kind == "f" and not np.isfinite(raw).all():
                raise ValueError("non-finite pixel values")
            _to_values(raw, fr, array[i], clip)
        except Exception as exc:  # noqa: BLE001
            return f"pixel data unreadable ({str(exc)[:100]})"
        return "blank" if raw.max() == raw.min() else None

    if len(stack) >= _THREADED_MIN_FRAMES and workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return array, list(pool.map(decode_into, range(len(stack))))
    return array, [decode_into(i) for i in range(len(stack))]


def _keep_decoded(
    array: np.ndarray, stack: list[FrameHeader], status: list[str | None], dropped: list[tuple[str, str]],
    series_dir: Path,
) -> tuple[np.ndarray, list[FrameHeader]]:
    """The decoded slices (blank ones too when they are half the stack or more) and their frames, compacted in place;
    the others are reported in ``dropped``. SeriesReadError when none could be decoded."""
    for fr, st in zip(stack, status, strict=True):
        if st not in (None, "blank"):
            drop_frame(dropped, fr, st)
    decoded_ok = [i for i, st in enumerate(status) if st in (None, "blank")]
    if not decoded_ok:
        why, count = Counter(status).most_common(1)[0]
        raise SeriesReadError(f"{series_dir}: {len(stack)} image(s) found but none could be decoded: {why} x{count}")
    blank = [i for i in decoded_ok if status[i] == "blank"]
    keep = decoded_ok
    # Blank images (constant) are dropped unless that would leave too little.
    if blank and len(blank) < len(decoded_ok) / 2:
        for i in blank:
            drop_frame(dropped, stack[i], "blank image (constant value)")
        keep = [i for i in decoded_ok if status[i] != "blank"]
    if len(keep) < len(stack):  # compact in place (keep is ascending): no second copy of the stack
        for j, i in enumerate(keep):
            if i != j:
                array[j] = array[i]
        array = array[: len(keep)]
    return array, [stack[i] for i in keep]
