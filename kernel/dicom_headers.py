"""Per-file header parsing: the frames one DICOM file holds, each with its geometry and pixel format, sized from what
its bytes can hold before anything is decoded.

A file's frame count is what its pixel data can hold (a larger NumberOfFrames is corrected, an image that cannot
hold one frame is refused); a file decoded whole through pydicom must fit the byte budget (a deflated file is inflated
as a stream and refused once it passes the budget). Images under ``MIN_IMAGE_SIDE`` pixels a side are not a head.
Headers are read by ``kernel.fast_header`` where it can, else by pydicom with the pixel data deferred.
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from kernel.fast_header import DEFLATED_LE, file_meta, scan_header
from kernel.volume import FrameGeometry

__all__ = ["MIN_IMAGE_SIDE", "FrameHeader", "decode_budget_bytes", "drop_frame", "parse_headers"]

# Smallest image side that can hold a head (also keeps resampling from producing empty axes).
MIN_IMAGE_SIDE = 16
# Most frames (images) one folder may hold after parsing headers.
_MAX_FRAMES = 10_000


@dataclass
class FrameHeader:
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
    study_uid: str = ""
    frame_of_reference_uid: str = ""
    sop_class_uid: str = ""


def drop_frame(dropped: list[tuple[str, str]], fr: FrameHeader, reason: str) -> None:
    """Report a frame as dropped: its file name (with the frame number in a multi-frame file) and why."""
    name = os.path.basename(fr.path) + (f"#frame{fr.frame}" if fr.n_frames > 1 else "")
    dropped.append((name, reason))

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


def decode_budget_bytes(max_voxels: int | None) -> int | None:
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


@dataclass(frozen=True)
class _PixelFormat:
    """A file's image size and pixel format, as its tags state them (checked by ``_pixel_format``)."""

    rows: int
    cols: int
    samples: int
    bits: int
    bits_stored: int
    signed: bool
    photometric: str


def _pixel_format(ds: Dataset) -> _PixelFormat:
    """Size and pixel format of a file's images; ValueError when it holds no monochrome image of a head's size."""
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
    return _PixelFormat(rows, cols, samples, bits, bits_stored, signed, photometric)


def _frame_count(path: str, ds: Dataset, fmt: _PixelFormat, notes: list[str] | None) -> tuple[UID, int]:
    """(transfer syntax, frames the pixel data holds): ``_frames_held``, its corrections appended to ``notes``;
    ValueError for an unsupported BitsAllocated or more than ``_MAX_FRAMES`` frames."""
    if fmt.bits not in (1, 8, 16, 32, 64):
        raise ValueError(f"unsupported BitsAllocated {fmt.bits}")
    tsyntax = UID(ds.file_meta.get("TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian))
    data_bytes, claimed = _pixel_data_bytes(ds, path)
    n_frames, correction = _frames_held(ds, fmt.rows, fmt.cols, fmt.bits, fmt.samples, data_bytes, tsyntax)
    if claimed is not None and notes is not None:
        notes.append(f"{os.path.basename(path)}: PixelData declares {claimed:,} bytes, the file holds {data_bytes:,}")
    if correction is not None and notes is not None:
        notes.append(f"{os.path.basename(path)}: {correction}")
    if n_frames > _MAX_FRAMES:
        raise ValueError(f"{n_frames} frames, more than the {_MAX_FRAMES} a series may hold")
    return tsyntax, n_frames


def _fast_path(ds: Dataset, fmt: _PixelFormat, tsyntax: UID, n_frames: int) -> tuple[int | None, str | None]:
    """(byte offset, numpy dtype) of pixel data that can be read straight from the file (uncompressed little-endian,
    whole frames of 8, 16 or 32 bits), else (None, None): pydicom decodes the file."""
    elem = ds.get_item("PixelData", keep_deferred=True)
    tell = getattr(elem, "value_tell", None)
    if (
        tsyntax in (pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian)
        and tell is not None
        and fmt.bits in (8, 16, 32)
        and (fmt.bits_stored == fmt.bits or not fmt.signed)
        and getattr(elem, "length", 0) >= fmt.rows * fmt.cols * n_frames * fmt.bits // 8
    ):
        return int(tell), ("<i" if fmt.signed else "<u") + str(fmt.bits // 8)
    return None, None


def _functional_groups(
    ds: Dataset, per_frame: Dataset | None, shared: Dataset | None, geom: FrameGeometry | None,
    slope: float | None, intercept: float | None, spacing_between: float | None,
) -> tuple[FrameGeometry | None, float | None, float | None, float | None]:
    """(geometry, slope, intercept, spacing between slices) of one frame of an Enhanced multi-frame file: its
    per-frame functional groups over the shared ones over the top-level values given."""
    groups = [g for g in (per_frame, shared) if g is not None]

    def pick(seq: str, tag: str) -> object:
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
    slope = _float(pick("PixelValueTransformationSequence", "RescaleSlope"), slope)
    intercept = _float(pick("PixelValueTransformationSequence", "RescaleIntercept"), intercept)
    if spacing_between is None:
        spacing_between = _float(pick("PixelMeasuresSequence", "SpacingBetweenSlices"), None) or _float(
            pick("PixelMeasuresSequence", "SliceThickness"), None
        )
    return geom, slope, intercept, spacing_between


def _header_frames(
    path: str, ds: Dataset, budget_bytes: int | None = None, notes: list[str] | None = None
) -> tuple[list[FrameHeader], str, str]:
    """Frames of one parsed file (pixel data not decoded), its modality and series UID.

    The frame count is what the pixel data can hold (``_frames_held``); a file decoded whole through pydicom must fit
    ``budget_bytes``. Corrections are appended to ``notes``.
    """
    fmt = _pixel_format(ds)
    modality = str(ds.get("Modality", "")).strip().upper()
    slope = _float(ds.get("RescaleSlope", 1.0), None)
    intercept = _float(ds.get("RescaleIntercept", 0.0), None)
    if modality not in ("CT", "MR"):
        modality = "CT" if (intercept is not None and intercept <= -1000) else "MR"
    tsyntax, n_frames = _frame_count(path, ds, fmt, notes)
    sop_uid = str(ds.get("SOPInstanceUID", os.path.basename(path)))
    try:
        instance = int(ds.get("InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        instance = 0
    spacing_between = _float(ds.get("SpacingBetweenSlices"), None) or _float(ds.get("SliceThickness"), None)

    top_geom = _geometry(ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient"), ds.get("PixelSpacing"))
    shared = _seq_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")

    fast_offset, fast_dtype = _fast_path(ds, fmt, tsyntax, n_frames)
    decoded_bytes = n_frames * fmt.rows * fmt.cols * max(fmt.bits // 8, 1)
    if fast_offset is None and budget_bytes is not None and decoded_bytes > budget_bytes:
        raise ValueError(f"decodes to {decoded_bytes / 2**20:,.0f} MB at once, over the "
                         f"{budget_bytes / 2**20:,.0f} MB budget")
    series_uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
    uids = {key: str(ds.get(tag, "") or "").strip()
            for key, tag in (("study_uid", "StudyInstanceUID"), ("frame_of_reference_uid", "FrameOfReferenceUID"),
                             ("sop_class_uid", "SOPClassUID"))}

    frames = []
    for f in range(n_frames):
        geom, f_slope, f_intercept = top_geom, slope, intercept
        if per_frame is not None or shared is not None:
            pf = per_frame[f] if per_frame is not None and f < len(per_frame) else None
            geom, f_slope, f_intercept, spacing_between = _functional_groups(
                ds, pf, shared, geom, f_slope, f_intercept, spacing_between)
        if f_slope is None or f_intercept is None or f_slope == 0 or abs(f_slope) > 1e6 or abs(f_intercept) > 1e7:
            raise ValueError(f"invalid rescale (slope={f_slope}, intercept={f_intercept})")
        frames.append(
            FrameHeader(
                path=path, sop_uid=sop_uid, frame=f, n_frames=n_frames, geometry=geom, rows=fmt.rows, cols=fmt.cols,
                slope=f_slope, intercept=f_intercept, monochrome1=fmt.photometric == "MONOCHROME1",
                bits_stored=fmt.bits_stored, signed=fmt.signed, instance_number=instance,
                spacing_between=spacing_between, fast_offset=fast_offset, fast_dtype=fast_dtype,
                transfer_syntax=str(tsyntax), series_uid=series_uid, modality=modality, **uids,
            )
        )
    return frames, modality, series_uid


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


def parse_headers(
    files: list[str], dropped: list[tuple[str, str]], budget_bytes: int | None = None, notes: list[str] | None = None
) -> tuple[list[FrameHeader], dict[str, Dataset]]:
    """Frames of every readable file (at most ``_MAX_FRAMES``) and the pydicom datasets parsed (kept so an
    in-process decode does not parse those files twice)."""
    frames: list[FrameHeader] = []
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
