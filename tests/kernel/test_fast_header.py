"""The fast header scanner must agree with pydicom on every file it accepts, and decline what it cannot read."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from kernel.fast_header import scan_header


def _bundled_files() -> list[Path]:
    roots = [Path(get_testdata_file("CT_small.dcm", download=False)).parent]
    try:
        import data_store  # the pydicom-data package

        roots.append(Path(data_store.__file__).parent)
    except ImportError:
        pass
    return sorted({p for root in roots for p in root.rglob("*.dcm")})


KEYS = [
    "Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel", "InstanceNumber",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope", "RescaleIntercept",
    "SOPInstanceUID", "SeriesInstanceUID", "Modality", "PhotometricInterpretation", "NumberOfFrames",
]


def _same(fast: object, ref: object) -> bool:
    if isinstance(fast, list):
        return [float(v) for v in ref] == fast
    if isinstance(fast, float):
        return float(ref) == fast
    if isinstance(fast, int):
        return int(ref) == fast
    return str(ref).strip() == fast


def test_fast_header_agrees_with_pydicom_on_bundled_files() -> None:
    files = _bundled_files()
    assert len(files) > 50
    accepted = 0
    for path in files:
        header = scan_header(str(path))
        if header is None:
            continue
        ds = pydicom.dcmread(path, defer_size=1024)
        accepted += 1
        for key in KEYS:
            ref = ds.get(key)
            if ref is None or ref == "":
                assert header.get(key) in (None, ""), f"{path.name}: {key}"
                continue
            assert _same(header[key], ref), f"{path.name}: {key} fast={header.get(key)!r} pydicom={ref!r}"
        pixel = ds.get_item("PixelData", keep_deferred=True)
        assert header["pixel_offset"] == pixel.value_tell, path.name
        assert header["pixel_length"] == pixel.length, path.name
    assert accepted >= 20, f"the fast path accepted only {accepted} of {len(files)} files"


@pytest.mark.parametrize("data", [b"", b"\0" * 200, b"\0" * 128 + b"DICM" + b"\xff" * 64])
def test_fast_header_declines_garbage(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(data)
    assert scan_header(str(path)) is None
