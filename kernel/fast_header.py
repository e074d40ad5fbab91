"""A minimal DICOM header scanner for the common case: one uncompressed little-endian image per file.

It reads the first bytes of a file, walks the top-level data elements and returns the few allow-listed tags the
reader needs plus the byte offset of PixelData, ~10x faster than a full pydicom parse. Anything it does not fully
understand (no preamble, big endian, deflate, encapsulated pixel data, functional groups, a header longer than the
read window, a malformed element) makes it return ``None``, and the caller parses the file with pydicom instead.
"""

from __future__ import annotations

import struct

__all__ = ["DEFLATED_LE", "FastHeader", "file_meta", "scan_header"]

_READ_BYTES = 65536
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_IMPLICIT_LE = "1.2.840.10008.1.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian: the dataset after the meta is zlib

# (group, element) -> (name, kind) for the tags we keep. kind: "str", "ds" (decimal strings), "us" (uint16), "is".
_WANTED: dict[int, tuple[str, str]] = {
    0x00080016: ("SOPClassUID", "str"),
    0x00080018: ("SOPInstanceUID", "str"),
    0x00080060: ("Modality", "str"),
    0x00180050: ("SliceThickness", "ds"),
    0x00180088: ("SpacingBetweenSlices", "ds"),
    0x0020000D: ("StudyInstanceUID", "str"),
    0x0020000E: ("SeriesInstanceUID", "str"),
    0x00200013: ("InstanceNumber", "is"),
    0x00200032: ("ImagePositionPatient", "ds"),
    0x00200037: ("ImageOrientationPatient", "ds"),
    0x00200052: ("FrameOfReferenceUID", "str"),
    0x00280002: ("SamplesPerPixel", "us"),
    0x00280004: ("PhotometricInterpretation", "str"),
    0x00280008: ("NumberOfFrames", "is"),
    0x00280010: ("Rows", "us"),
    0x00280011: ("Columns", "us"),
    0x00280030: ("PixelSpacing", "ds"),
    0x00280100: ("BitsAllocated", "us"),
    0x00280101: ("BitsStored", "us"),
    0x00280103: ("PixelRepresentation", "us"),
    0x00281052: ("RescaleIntercept", "ds"),
    0x00281053: ("RescaleSlope", "ds"),
}
_BAIL_TAGS = {0x52009229, 0x52009230}  # functional groups: multi-frame geometry, leave to pydicom
_PIXEL_DATA = 0x7FE00010


class FastHeader(dict):
    """Parsed tag values by keyword, plus ``pixel_offset``/``pixel_length`` and ``transfer_syntax``."""


def _decode(raw: bytes, kind: str) -> object:
    text_kinds = ("str", "ds", "is")
    if kind in text_kinds:
        text = raw.decode("ascii").strip("\x00 ")
        if kind == "str":
            return text
        parts = [p.strip() for p in text.split("\\")]
        if kind == "is":
            return int(parts[0]) if parts and parts[0] else None
        values = [float(p) for p in parts if p]
        return values if len(values) != 1 else values[0]
    if kind == "us":
        return struct.unpack("<H", raw[:2])[0]
    raise ValueError(kind)


def scan_header(path: str) -> FastHeader | None:
    """Scan one file; ``None`` when the fast path does not apply or anything looks unusual."""
    try:
        with open(path, "rb") as fh:
            buf = fh.read(_READ_BYTES)
        return _scan(buf)
    except (OSError, ValueError, struct.error, UnicodeDecodeError, IndexError):
        return None


def _element(buf: bytes, pos: int, explicit: bool) -> tuple[int, int, int]:
    """(tag, value start, value length) of the element at ``pos``; item tags (FFFE,xxxx) carry no VR."""
    group, elem = struct.unpack_from("<HH", buf, pos)
    tag = (group << 16) | elem
    if explicit and group != 0xFFFE:
        vr = buf[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            return tag, pos + 12, struct.unpack_from("<I", buf, pos + 8)[0]
        return tag, pos + 8, struct.unpack_from("<H", buf, pos + 6)[0]
    return tag, pos + 8, struct.unpack_from("<I", buf, pos + 4)[0]


def _skip_undefined(buf: bytes, pos: int, explicit: bool, depth: int = 0) -> int:
    """Position after an undefined-length sequence whose items start at ``pos`` (ends at FFFE,E0DD)."""
    if depth > 8:
        raise ValueError("sequences nested too deep")
    while True:
        tag, start, length = _element(buf, pos, explicit)
        if tag == 0xFFFEE0DD:  # sequence delimitation
            return start
        if tag != 0xFFFEE000:
            raise ValueError("expected an item")
        if length != 0xFFFFFFFF:
            pos = start + length
            continue
        pos = start
        while True:  # item of undefined length: elements until FFFE,E00D
            tag, start, length = _element(buf, pos, explicit)
            if tag == 0xFFFEE00D:
                pos = start
                break
            pos = _skip_undefined(buf, start, explicit, depth + 1) if length == 0xFFFFFFFF else start + length


def file_meta(path: str) -> tuple[str, int] | None:
    """(TransferSyntaxUID, byte offset where the dataset starts) from a file's meta group; ``None`` if unreadable."""
    try:
        with open(path, "rb") as fh:
            buf = fh.read(_READ_BYTES)
        return _meta(buf)
    except (OSError, ValueError, struct.error, UnicodeDecodeError, IndexError):
        return None


def _meta(buf: bytes) -> tuple[str, int] | None:
    """Transfer syntax and the position after the file meta group (always explicit VR little endian)."""
    if len(buf) < 140 or buf[128:132] != b"DICM":
        return None
    pos = 132
    tsyntax = None
    while pos + 8 <= len(buf):
        group, elem = struct.unpack_from("<HH", buf, pos)
        if group != 0x0002:
            break
        vr = buf[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            length = struct.unpack_from("<I", buf, pos + 8)[0]
            start = pos + 12
        else:
            length = struct.unpack_from("<H", buf, pos + 6)[0]
            start = pos + 8
        if length == 0xFFFFFFFF:
            return None
        if elem == 0x0010:
            tsyntax = buf[start : start + length].decode("ascii").strip("\x00 ")
        pos = start + length
    return (tsyntax, pos) if tsyntax else None


def _scan(buf: bytes) -> FastHeader | None:
    meta = _meta(buf)
    if meta is None:
        return None
    tsyntax, pos = meta
    out = FastHeader()
    if tsyntax not in (_EXPLICIT_LE, _IMPLICIT_LE):
        return None
    explicit = tsyntax == _EXPLICIT_LE
    out["transfer_syntax"] = tsyntax
    while pos + 12 <= len(buf):
        tag, start, length = _element(buf, pos, explicit)
        if tag == _PIXEL_DATA:
            if length == 0xFFFFFFFF:
                return None  # encapsulated
            out["pixel_offset"] = start
            out["pixel_length"] = length
            return out
        if tag in _BAIL_TAGS:
            return None  # functional groups (multi-frame geometry): leave to pydicom
        if length == 0xFFFFFFFF:
            pos = _skip_undefined(buf, start, explicit)
            continue
        if start + length > len(buf):
            return None  # header longer than the read window
        wanted = _WANTED.get(tag)
        if wanted is not None and length > 0:
            out[wanted[0]] = _decode(buf[start : start + length], wanted[1])
        pos = start + length
    return None
