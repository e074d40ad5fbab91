"""Read one DICOM series folder into a geometrically correct volume.

Slices are ordered by their position along the slice normal (ImagePositionPatient projected on the cross product of
the ImageOrientationPatient vectors), never by file name or InstanceNumber. The dominant stack (same orientation,
matrix and pixel spacing) is kept; scouts, blank images, odd shapes and duplicate positions are dropped and reported.
Only the tags of the competition's test-time allow-list are relied on.

Sizing before allocation (one rule, ``_GridPlan`` and ``_frames_held``): nothing is allocated or decoded before the
output grid is known from header facts. A file's frame count is what its pixel data can hold (a larger
NumberOfFrames is corrected, an image that cannot hold one frame is refused); a file decoded whole through pydicom
must fit the byte budget (a deflated file is inflated as a stream and refused once it passes the budget); slices
separated from the stack's run by a gap many times the median are a separate stack and dropped; and the output grid
(slices after gap resampling x rows x columns) must fit ``max_voxels``, by an in-plane step, or the series is
refused. Images under 16 pixels a side are not a head. One folder gives one series: when several SeriesInstanceUIDs
are mixed, the one with the dominant stack is kept. Nested subfolders are read.

Decoding: uncompressed little-endian pixel data is read straight from the file at its offset (the fast path, ~5x a
plain pydicom loop); everything else, and anything the fast path refuses, goes through pydicom's decoders (pylibjpeg
plugins for JPEG, JPEG-LS, JPEG 2000, RLE). Compressed series are decoded in a process pool when that pays.
"""

from __future__ import annotations

import math
import os
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from kernel.fast_header import DEFLATED_LE, file_meta, scan_header

__all__ = ["SeriesReadError", "Native", "PatchSampler", "Volume", "FrameGeometry", "read_series", "DEFAULT_MAX_VOXELS"]

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
# Smallest image side that can hold a head (also keeps resampling from producing empty axes).
MIN_IMAGE_SIDE = 16
# A gap along the slice normal this many times the median gap splits the stack into runs; the largest run is kept.
_RUN_GAP_FACTOR = 10.0
# Largest field of view along any axis (mm): no head is near it (images without PixelSpacing are taken at 1 mm, so
# 1,024-pixel photographs pass); beyond it PixelSpacing or the positions are wrong, and resampling to the model
# spacing would build a volume (and model inputs) of that extent.
MAX_EXTENT_MM = 2000.0
# Bounds on what one folder may hold: files listed, subfolder depth, frames (images) kept after parsing headers.
_MAX_FILES = 10_000
_MAX_DEPTH = 8
_MAX_FRAMES = 10_000


class SeriesReadError(Exception):
    """A series folder holds no readable image stack. The message names the folder and the reason."""


@dataclass(frozen=True)
class FrameGeometry:
    """Where one 2D image lies in patient space (LPS mm)."""

    position: tuple[float, float, float]  # ImagePositionPatient: centre of the first transmitted pixel
    row_dir: tuple[float, float, float]  # direction of increasing column index (IOP[:3])
    col_dir: tuple[float, float, float]  # direction of increasing row index (IOP[3:])
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm

    def pixel_to_lps(self, col: float, row: float) -> np.ndarray:
        """LPS point of the (fractional) pixel centre at column ``col`` and row ``row``."""
        return (
            np.asarray(self.position)
            + col * self.pixel_spacing[1] * np.asarray(self.row_dir)
            + row * self.pixel_spacing[0] * np.asarray(self.col_dir)
        )


@dataclass
class Volume:
    """A 3-D image with its geometry. ``affine`` maps a voxel index (z, y, x, 1) to LPS millimetres."""

    array: np.ndarray
    affine: np.ndarray
    modality: str
    series_uid: str = ""
    slice_lookup: dict[tuple[str, int], int] = field(default_factory=dict)
    source_affine: np.ndarray | None = None
    source_shape: tuple[int, int, int] = (0, 0, 0)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    frame_geometry: dict[tuple[str, int], FrameGeometry] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # False when no image had a position/orientation (e.g. an Enhanced multi-frame file stripped of its functional
    # groups): the axes are then frame order and pixel grid, and superior/inferior is a guess.
    geometry_known: bool = True
    # The canonical stack before resampling (native spacing, raw intensities), when asked for
    # (``kernel.preprocess.canonicalise(keep_native=True)``): what a fine stage samples its patches from.
    native: Native | None = None

    def __post_init__(self) -> None:
        assert self.array.ndim == 3, f"volume must be 3-D (Z, Y, X), got shape {self.array.shape}"
        assert self.affine.shape == (4, 4), f"affine must be 4x4, got {self.affine.shape}"
        assert self.modality in ("CT", "MR"), f"modality must be CT or MR, got {self.modality!r}"
        if self.source_affine is None:
            self.source_affine = self.affine.copy()
            self.source_shape = tuple(self.array.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (dz, dy, dx) in mm, from the affine's column norms."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


PatchSampler = Callable[[np.ndarray, Sequence[int], Sequence[float]], np.ndarray]
"""``sample(points_lps (n, 3), shape_zyx, spacing_zyx_mm) -> (n, z, y, x) float32`` patches centred on the points."""


def _identity(array: np.ndarray) -> np.ndarray:
    return array


@dataclass(frozen=True)
class Native:
    """The canonical stack at native spacing (raw intensities) that a fine stage samples its patches from.

    It is a sampler, not necessarily an array: an isolated read (``kernel.isolation``) keeps the stack in its worker
    and samples the patches there, so a 400 x 512 x 512 stack is never copied between processes for a few small
    patches. ``array`` is set when the stack is in this process (``kernel.preprocess.native_stack``). ``normalise``
    is applied to each patch (the canonical volume's normalisation; identity until the ensemble sets it).
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    sample: PatchSampler
    normalise: Callable[[np.ndarray], np.ndarray] = _identity
    array: np.ndarray | None = None


@dataclass
class _Frame:
    """One 2D image candidate: a single-frame file or one frame of a multi-frame file."""

    path: str
    sop_uid: str
    frame: int
    n_frames: int
    geometry: FrameGeometry | None
    rows: int
    cols: int
    slope: float
    intercept: float
    monochrome1: bool
    bits_stored: int
    signed: bool
    instance_number: int
    spacing_between: float | None
    fast_offset: int | None = None  # byte offset of uncompressed pixel data, when the fast path applies
    transfer_syntax: str = ""
    fast_dtype: str | None = None
    series_uid: str = ""
    modality: str = ""


def _floats(value: object, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if len(out) != n or not all(math.isfinite(v) for v in out):
        return None
    return out


def _float(value: object, default: float | None) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


def _unit(v: tuple[float, ...]) -> tuple[float, float, float] | None:
    arr = np.asarray(v, dtype=np.float64)
    norm = float(np.linalg.norm(arr))
    if norm < 1e-6:
        return None
    arr = arr / norm
    return (float(arr[0]), float(arr[1]), float(arr[2]))


def _geometry(ipp: object, iop: object, spacing: object) -> FrameGeometry | None:
    pos = _floats(ipp, 3)
    ori = _floats(iop, 6)
    sp = _floats(spacing, 2)
    if pos is None or ori is None:
        return None
    row_dir, col_dir = _unit(ori[:3]), _unit(ori[3:])
    if row_dir is None or col_dir is None or abs(float(np.dot(row_dir, col_dir))) > 1e-2:
        return None
    if sp is None or min(sp) <= 0:
        sp = (1.0, 1.0)
    return FrameGeometry(pos, row_dir, col_dir, (sp[0], sp[1]))


def _seq_item(ds: Dataset, seq: str, idx: int = 0) -> Dataset | None:
    value = ds.get(seq)
    if value is None:
        return None
    try:
        return value[idx]
    except (IndexError, TypeError):
        return None


def _budget_bytes(max_voxels: int | None) -> int | None:
    """Largest single decode or inflate allowed: the float32 volume the voxel budget describes."""
    return None if max_voxels is None else 4 * int(max_voxels)


def _pixel_data_bytes(ds: Dataset, path: str) -> tuple[int, int | None]:
    """(bytes of pixel data the file really holds, the declared length when larger): the declared length is cut to
    what lies between the element's offset and the end of the file (a declared length is a claim, the size a fact).
    """
    elem = ds.get_item("PixelData", keep_deferred=True)
    if elem is None:
        return 0, None
    value = getattr(elem, "value", None)
    if isinstance(value, bytes | bytearray):
        return len(value), None
    length, tell = getattr(elem, "length", None), getattr(elem, "value_tell", None)
    try:
        size = os.path.getsize(path)
    except OSError:
        size = 0
    avail = max(size - int(tell), 0) if tell is not None else size
    if length in (None, 0xFFFFFFFF):
        return avail, None
    return min(int(length), avail), (int(length) if int(length) > avail else None)


def _frames_held(
    ds: Dataset, rows: int, cols: int, bits: int, samples: int, data_bytes: int, tsyntax: UID
) -> tuple[int, str | None]:
    """The frame count a file's pixel data can hold, and a note when NumberOfFrames claims more.

    Uncompressed: whole frames in the bytes the file really holds (raises when not even one fits); without
    NumberOfFrames (not allow-listed) that is the count. Encapsulated: NumberOfFrames when the data could hold that
    many items, else (or without the tag) the codestreams that open a fragment.
    """
    declared: int | None = None
    try:
        n = ds.get("NumberOfFrames")
        declared = int(n) if n is not None and int(n) >= 1 else None  # type: ignore[call-overload]
    except (TypeError, ValueError):
        declared = None
    if not tsyntax.is_compressed:
        held = data_bytes * 8 // (rows * cols * samples * bits)
        if held < 1:
            raise ValueError(f"pixel data too short ({data_bytes} bytes hold less than one {rows} x {cols} frame)")
        if declared is None or declared <= held:
            return declared or held, None
        return held, f"NumberOfFrames {declared} but the pixel data holds {held}: {held} read"
    if declared is not None and declared * 8 <= data_bytes:  # every frame needs at least one 8-byte item
        return declared, None
    try:
        counted = max(_count_encapsulated_frames(ds.PixelData, tsyntax), 1)
    except Exception:  # noqa: BLE001 - malformed encapsulation: the decoder reports it later
        counted = 1
    if declared is None or declared <= counted:
        return declared or counted, None
    return counted, f"NumberOfFrames {declared} but the pixel data holds {counted} codestreams: {counted} read"


def _count_encapsulated_frames(pixel_data: bytes, tsyntax: UID) -> int:
    """Frames in encapsulated pixel data without NumberOfFrames: fragments that open a new codestream.

    One frame may span several fragments, so counting fragments alone is wrong; a frame starts where a fragment begins
    with the codec's start marker (JPEG/JPEG-LS SOI, JPEG 2000 SOC or JP2 signature, an RLE header).
    """
    from pydicom.encaps import generate_fragments

    fragments = list(generate_fragments(pixel_data))[1:]  # the first item is the basic offset table
    if tsyntax == pydicom.uid.RLELossless:
        def starts(frag: bytes) -> bool:
            return 1 <= int.from_bytes(frag[:4], "little") <= 15 and frag[4:8] == b"\x40\0\0\0"
    else:
        def starts(frag: bytes) -> bool:
            return frag[:2] in (b"\xff\xd8", b"\xff\x4f") or frag[4:8] == b"jP  "
    return sum(1 for frag in fragments if starts(bytes(frag[:8])))


def _header_frames(
    path: str, ds: Dataset, budget_bytes: int | None = None, notes: list[str] | None = None
) -> tuple[list[_Frame], str, str]:
    """Frames of one parsed file (pixel data not decoded), its modality and series UID.

    The frame count is what the pixel data can hold (``_frames_held``); a file decoded whole through pydicom must fit
    ``budget_bytes``. Corrections are appended to ``notes``.
    """
    if "PixelData" not in ds:
        raise ValueError("no pixel data (not an image)")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise ValueError(f"zero-sized image ({rows} x {cols})")
    if rows < MIN_IMAGE_SIDE or cols < MIN_IMAGE_SIDE:
        raise ValueError(f"image too small to be a head ({rows} x {cols} pixels, under {MIN_IMAGE_SIDE} a side)")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise ValueError(f"colour image (SamplesPerPixel={samples})")
    bits = int(ds.get("BitsAllocated", 16) or 16)
    bits_stored = int(ds.get("BitsStored", bits) or bits)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"unsupported photometric interpretation {photometric}")
    modality = str(ds.get("Modality", "")).strip().upper()
    slope = _float(ds.get("RescaleSlope", 1.0), None)
    intercept = _float(ds.get("RescaleIntercept", 0.0), None)
    if modality not in ("CT", "MR"):
        modality = "CT" if (intercept is not None and intercept <= -1000) else "MR"
    if bits not in (1, 8, 16, 32, 64):
        raise ValueError(f"unsupported BitsAllocated {bits}")
    tsyntax = UID(ds.file_meta.get("TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian))
    data_bytes, claimed = _pixel_data_bytes(ds, path)
    n_frames, correction = _frames_held(ds, rows, cols, bits, samples, data_bytes, tsyntax)
    if claimed is not None and notes is not None:
        notes.append(f"{os.path.basename(path)}: PixelData declares {claimed:,} bytes, the file holds {data_bytes:,}")
    if correction is not None and notes is not None:
        notes.append(f"{os.path.basename(path)}: {correction}")
    if n_frames > _MAX_FRAMES:
        raise ValueError(f"{n_frames} frames, more than the {_MAX_FRAMES} a series may hold")
    sop_uid = str(ds.get("SOPInstanceUID", os.path.basename(path)))
    try:
        instance = int(ds.get("InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        instance = 0
    spacing_between = _float(ds.get("SpacingBetweenSlices"), None) or _float(ds.get("SliceThickness"), None)

    top_geom = _geometry(ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient"), ds.get("PixelSpacing"))
    shared = _seq_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")

    fast_offset, fast_dtype = None, None
    elem = ds.get_item("PixelData", keep_deferred=True)
    tell = getattr(elem, "value_tell", None)
    if (
        tsyntax in (pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian)
        and tell is not None
        and bits in (8, 16, 32)
        and (bits_stored == bits or not signed)
        and getattr(elem, "length", 0) >= rows * cols * n_frames * bits // 8
    ):
        fast_offset = int(tell)
        fast_dtype = ("<i" if signed else "<u") + str(bits // 8)
    decoded_bytes = n_frames * rows * cols * max(bits // 8, 1)
    if fast_offset is None and budget_bytes is not None and decoded_bytes > budget_bytes:
        raise ValueError(f"decodes to {decoded_bytes / 2**20:,.0f} MB at once, over the "
                         f"{budget_bytes / 2**20:,.0f} MB budget")
    series_uid = str(ds.get("SeriesInstanceUID", "") or "").strip()

    frames = []
    for f in range(n_frames):
        geom, f_slope, f_intercept = top_geom, slope, intercept
        if per_frame is not None or shared is not None:
            pf = per_frame[f] if per_frame is not None and f < len(per_frame) else None
            groups = [g for g in (pf, shared) if g is not None]

            def pick(seq: str, tag: str, groups: list[Dataset] = groups) -> object:
                for g in groups:
                    item = _seq_item(g, seq)
                    if item is not None and tag in item:
                        return item.get(tag)
                return None

            g2 = _geometry(
                pick("PlanePositionSequence", "ImagePositionPatient") or ds.get("ImagePositionPatient"),
                pick("PlaneOrientationSequence", "ImageOrientationPatient") or ds.get("ImageOrientationPatient"),
                pick("PixelMeasuresSequence", "PixelSpacing") or ds.get("PixelSpacing"),
            )
            if g2 is not None:
                geom = g2
            f_slope = _float(pick("PixelValueTransformationSequence", "RescaleSlope"), f_slope)
            f_intercept = _float(pick("PixelValueTransformationSequence", "RescaleIntercept"), f_intercept)
            if spacing_between is None:
                spacing_between = _float(pick("PixelMeasuresSequence", "SpacingBetweenSlices"), None) or _float(
                    pick("PixelMeasuresSequence", "SliceThickness"), None
                )
        if f_slope is None or f_intercept is None or f_slope == 0 or abs(f_slope) > 1e6 or abs(f_intercept) > 1e7:
            raise ValueError(f"invalid rescale (slope={f_slope}, intercept={f_intercept})")
        frames.append(
            _Frame(
                path=path, sop_uid=sop_uid, frame=f, n_frames=n_frames, geometry=geom, rows=rows, cols=cols,
                slope=f_slope, intercept=f_intercept, monochrome1=photometric == "MONOCHROME1",
                bits_stored=bits_stored, signed=signed, instance_number=instance,
                spacing_between=spacing_between, fast_offset=fast_offset, fast_dtype=fast_dtype,
                transfer_syntax=str(tsyntax), series_uid=series_uid, modality=modality,
            )
        )
    return frames, modality, series_uid


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


class _Refused(ValueError):
    """A file refused by the size rules (its message is the reason)."""


def _check_inflated(path: str, offset: int, budget_bytes: int | None) -> None:
    """Inflate a deflated dataset as a stream, keeping nothing, and refuse it once it passes ``budget_bytes``."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    with open(path, "rb") as fh:
        fh.seek(offset)
        while not inflater.eof:
            data = fh.read(1 << 20)
            if not data:
                break
            while data:
                total += len(inflater.decompress(data, 1 << 24))
                if budget_bytes is not None and total > budget_bytes:
                    raise _Refused(f"deflated data inflates beyond the {budget_bytes / 2**20:,.0f} MB budget")
                data = inflater.unconsumed_tail


class _FastDataset:
    """The slice of pydicom's Dataset interface that ``_header_frames`` uses, over a ``scan_header`` result."""

    def __init__(self, header: dict) -> None:
        self._header = header
        self.file_meta = {"TransferSyntaxUID": header["transfer_syntax"]}

    def get(self, key: str, default: object = None) -> object:
        return self._header.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key == "PixelData" or key in self._header

    def get_item(self, key: str, keep_deferred: bool = False) -> SimpleNamespace | None:
        if key != "PixelData":
            return None
        return SimpleNamespace(value_tell=self._header["pixel_offset"], length=self._header["pixel_length"])


def _parse_headers(
    files: list[str], dropped: list[tuple[str, str]], budget_bytes: int | None = None, notes: list[str] | None = None
) -> tuple[list[_Frame], dict[str, Dataset]]:
    """Frames of every readable file (at most ``_MAX_FRAMES``) and the pydicom datasets parsed (kept so an
    in-process decode does not parse those files twice)."""
    frames: list[_Frame] = []
    datasets: dict[str, Dataset] = {}
    for path in files:
        name = os.path.basename(path)
        try:
            fast = scan_header(path)
            if fast is not None:
                ds = _FastDataset(fast)
            else:
                meta = file_meta(path)
                if meta is not None and meta[0] == DEFLATED_LE:
                    _check_inflated(path, meta[1], budget_bytes)
                    ds = pydicom.dcmread(path)  # whole: a deferred read cannot seek inside a deflated stream
                else:
                    ds = pydicom.dcmread(path, defer_size=1024)
        except _Refused as exc:
            dropped.append((name, str(exc)))
            continue
        except (InvalidDicomError, EOFError) as exc:
            dropped.append((name, f"not DICOM ({str(exc)[:80]})"))
            continue
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, never fatal
            dropped.append((name, f"unreadable DICOM ({type(exc).__name__}: {str(exc)[:80]})"))
            continue
        try:
            file_frames, _, _ = _header_frames(path, ds, budget_bytes, notes)
        except Exception as exc:  # noqa: BLE001
            dropped.append((name, str(exc)[:120]))
            continue
        if len(frames) + len(file_frames) > _MAX_FRAMES:
            dropped.append((name, f"beyond the {_MAX_FRAMES:,} images a series may hold"))
            continue
        frames.extend(file_frames)
        if isinstance(ds, Dataset):
            datasets[path] = ds
    return frames, datasets


def _one_series(frames: list[_Frame], dropped: list[tuple[str, str]], notes: list[str]) -> tuple[list[_Frame], str]:
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
            _drop(dropped, f, f"another series in the folder (SeriesInstanceUID {f.series_uid[:64]})")
    notes.append(f"{len(uids)} series in the folder: kept {best} ({uids[best]} images)")
    return [f for f in frames if f.series_uid in ("", best)], best


def _stack_key(fr: _Frame) -> tuple:
    g = fr.geometry
    assert g is not None
    ori = tuple(round(v, 2) for v in (*g.row_dir, *g.col_dir))
    return (ori, fr.rows, fr.cols, round(g.pixel_spacing[0], 3), round(g.pixel_spacing[1], 3))


def _drop(dropped: list[tuple[str, str]], fr: _Frame, reason: str) -> None:
    name = os.path.basename(fr.path) + (f"#frame{fr.frame}" if fr.n_frames > 1 else "")
    dropped.append((name, reason))


def _select_stack(frames: list[_Frame], dropped: list[tuple[str, str]], notes: list[str]) -> list[_Frame]:
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
                _drop(dropped, f, f"image size {f.rows}x{f.cols} differs from the stack's {shape[0]}x{shape[1]}")
        return sorted(kept, key=lambda f: (f.instance_number, f.path, f.frame))
    for f in frames:
        if f.geometry is None:
            _drop(dropped, f, "no image position/orientation")
    counts = Counter(_stack_key(f) for f in with_geom)
    best = counts.most_common(1)[0][0]
    kept = []
    for f in with_geom:
        key = _stack_key(f)
        if key == best:
            kept.append(f)
        elif key[0] != best[0]:
            _drop(dropped, f, "other orientation (scout/localizer or second stack)")
        elif key[1:3] != best[1:3]:
            _drop(dropped, f, f"image size {f.rows}x{f.cols} differs from the stack's {best[1]}x{best[2]}")
        else:
            _drop(dropped, f, "pixel spacing differs from the stack's")
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
            _drop(dropped, kept[i], "duplicate slice position")
        else:
            out.append(kept[i])
            out_dist.append(dist[i])
    return _largest_run(out, np.asarray(out_dist), dropped, notes)


def _largest_run(
    stack: list[_Frame], dist: np.ndarray, dropped: list[tuple[str, str]], notes: list[str]
) -> list[_Frame]:
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
        _drop(dropped, f, reason)
    notes.append(f"stack split at {len(cuts)} gap(s) of {_RUN_GAP_FACTOR:g}x the median or more: kept slices "
                 f"{lo}-{hi - 1} of {len(stack)}")
    return stack[lo:hi]


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


def _read_fast(fr: _Frame) -> np.ndarray:
    assert fr.fast_offset is not None and fr.fast_dtype is not None
    n = fr.rows * fr.cols
    dtype = np.dtype(fr.fast_dtype)
    raw = np.fromfile(fr.path, dtype=dtype, count=n, offset=fr.fast_offset + fr.frame * n * dtype.itemsize)
    if raw.size != n:
        raise ValueError("pixel data shorter than Rows x Columns")
    return raw.reshape(fr.rows, fr.cols)


def _to_values(raw: np.ndarray, fr: _Frame, out: np.ndarray, clip: tuple[float, float] | None) -> None:
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


def _normal_positions(stack: list[_Frame]) -> tuple[np.ndarray, np.ndarray]:
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


def _grid_plan(stack: list[_Frame], max_voxels: int | None, series_dir: Path, notes: list[str]) -> tuple[int, int]:
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
    frames, datasets = _parse_headers(files, dropped, _budget_bytes(max_voxels), notes)
    if not frames:
        reasons = Counter(r.split(" (")[0] for _, r in dropped).most_common(3)
        why = "; ".join(f"{r} x{c}" for r, c in reasons) or "no files"
        raise SeriesReadError(f"{series_dir}: no readable image in {len(files)} file(s): {why}")
    frames, series_uid = _one_series(frames, dropped, notes)
    modality = Counter(f.modality for f in frames).most_common(1)[0][0]
    frame_geometry = {(f.sop_uid, f.frame): f.geometry for f in frames if f.geometry is not None}
    stack = _select_stack(frames, dropped, notes)
    step_yx, max_slices = _grid_plan(stack, max_voxels, series_dir, notes)
    for path in {f.path for f in frames} - {f.path for f in stack}:
        datasets.pop(path, None)

    # Decode: fast path for plain files, pydicom for the rest (in a pool when there are many).
    slow_paths = sorted({f.path for f in stack if f.fast_offset is None})
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    pool_workers = workers if any(f.transfer_syntax in _SLOW_CODECS for f in stack) else 1
    rows, cols = stack[0].rows, stack[0].cols
    n_frames = {f.path: f.n_frames for f in stack}
    decoded = _decode_many(slow_paths, pool_workers, step_yx, datasets, n_frames) if slow_paths else {}
    datasets.clear()
    out_rows, out_cols = len(range(0, rows, step_yx)), len(range(0, cols, step_yx))
    array = np.empty((len(stack), out_rows, out_cols), dtype=np.float32)  # filled slice by slice: no stack copy
    clip = _CT_HU_RANGE if modality == "CT" else None

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
            status = list(pool.map(decode_into, range(len(stack))))
    else:
        status = [decode_into(i) for i in range(len(stack))]
    for fr, st in zip(stack, status, strict=True):
        if st not in (None, "blank"):
            _drop(dropped, fr, st)
    decoded_ok = [i for i, st in enumerate(status) if st in (None, "blank")]
    if not decoded_ok:
        why, count = Counter(status).most_common(1)[0]
        raise SeriesReadError(f"{series_dir}: {len(stack)} image(s) found but none could be decoded: {why} x{count}")
    blank = [i for i in decoded_ok if status[i] == "blank"]
    keep = decoded_ok
    # Blank images (constant) are dropped unless that would leave too little.
    if blank and len(blank) < len(decoded_ok) / 2:
        for i in blank:
            _drop(dropped, stack[i], "blank image (constant value)")
        keep = [i for i in decoded_ok if status[i] != "blank"]
    if len(keep) < len(stack):  # compact in place (keep is ascending): no second copy of the stack
        for j, i in enumerate(keep):
            if i != j:
                array[j] = array[i]
        array = array[: len(keep)]
    good = [stack[i] for i in keep]

    affine, slice_index, array = _stack_affine(good, array, step_yx, notes, max_slices)
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
    )


def _stack_affine(
    stack: list[_Frame], array: np.ndarray, step_yx: int, notes: list[str], max_slices: int | None = None
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
