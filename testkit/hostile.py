"""A generator of hostile series folders: everything a real archive (or a careless copy) can throw at the reader.

Each case writes one series folder and says what a correct reader does with it: ``"volume"`` (a usable volume
must come back, the bad parts dropped and reported) or ``"error"`` (``SeriesReadError`` with a reason).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from testkit.dicom_factory import write_series

HostileCase = Callable[[Path], str]


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def _rewrite(folder: Path, n_slices: int, edit: Callable[[pydicom.Dataset], None], **save_kwargs: object) -> None:
    """Write a good series, then apply ``edit`` to every file's dataset and save it back."""
    write_series(folder, n_slices=n_slices)
    for path in _files(folder):
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path, **save_kwargs)


def truncated_files(folder: Path) -> str:
    """Every file cut in the middle of its pixel data."""
    write_series(folder, n_slices=6)
    for path in _files(folder):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 500])
    return "error"


def some_truncated(folder: Path) -> str:
    """Two of twelve files truncated: the rest must still make a volume."""
    write_series(folder, n_slices=12)
    for path in _files(folder)[:2]:
        path.write_bytes(path.read_bytes()[:-300])
    return "volume"


def random_bytes(folder: Path) -> str:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        (folder / f"{i}.dcm").write_bytes(rng.bytes(4096))
    return "error"


def dicom_without_pixels(folder: Path) -> str:
    _rewrite(folder, 4, lambda ds: ds.__delattr__("PixelData"))
    return "error"


def wrong_rows_columns(folder: Path) -> str:
    """Rows/Columns claim more pixels than the data holds."""
    _rewrite(folder, 5, lambda ds: setattr(ds, "Rows", ds.Rows * 3))
    return "error"


def nan_rescale(folder: Path) -> str:
    _rewrite(folder, 5, lambda ds: setattr(ds, "RescaleSlope", "NaN"))
    return "error"


def absurd_rescale(folder: Path) -> str:
    _rewrite(folder, 5, lambda ds: setattr(ds, "RescaleSlope", "1e30"))
    return "error"


def unsupported_transfer_syntax(folder: Path) -> str:
    """Claims MPEG2 with junk encapsulated data."""

    def edit(ds: pydicom.Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
        ds.PixelData = pydicom.encaps.encapsulate([b"\x00\x00\x01\xb3" + os.urandom(200)])
        ds["PixelData"].VR = "OB"

    _rewrite(folder, 4, edit, enforce_file_format=True)
    return "error"


def single_slice(folder: Path) -> str:
    write_series(folder, n_slices=1)
    return "volume"


def all_at_one_position(folder: Path) -> str:
    _rewrite(folder, 6, lambda ds: setattr(ds, "ImagePositionPatient", [0.0, 0.0, 0.0]))
    return "volume"


def zero_sized(folder: Path) -> str:
    def edit(ds: pydicom.Dataset) -> None:
        ds.Rows = 0
        ds.PixelData = b""

    _rewrite(folder, 3, edit)
    return "error"


def _make_rgb(ds: pydicom.Dataset, frames: int = 1) -> None:
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = np.zeros((frames, ds.Rows, ds.Columns, 3), np.uint8).tobytes()


def colour_rgb(folder: Path) -> str:
    _rewrite(folder, 3, _make_rgb)
    return "error"


def four_d_frames(folder: Path) -> str:
    """One file claiming frames x samples: a 4-D colour cine."""
    folder.mkdir(parents=True)
    ds = pydicom.dcmread(_first_file(folder.parent / (folder.name + "_src")))
    _make_rgb(ds, frames=4)
    ds.save_as(folder / "cine.dcm")
    return "error"


def _first_file(src: Path) -> Path:
    write_series(src, n_slices=1)
    return _files(src)[0]


def symlink_loop(folder: Path) -> str:
    write_series(folder, n_slices=5)
    os.symlink(folder / "loop_b.dcm", folder / "loop_a.dcm")
    os.symlink(folder / "loop_a.dcm", folder / "loop_b.dcm")
    os.symlink(folder / "missing.dcm", folder / "dangling.dcm")
    os.mkfifo(folder / "fifo.dcm")  # opening it would block forever
    (folder / "subdir.dcm").mkdir()
    return "volume"


def unreadable_file(folder: Path) -> str:
    write_series(folder, n_slices=5)
    path = _files(folder)[0]
    path.chmod(0)  # root can still read it; the FIFO/dangling cases cover what root cannot
    return "volume"


def thousands_of_slices(folder: Path) -> str:
    write_series(folder, n_slices=3000, rows=8, cols=8, slice_spacing=0.1)
    return "volume"


def huge_file(folder: Path) -> str:
    """One 200 MB single-frame image (10000 x 10000 x 16 bit)."""
    folder.mkdir(parents=True)
    ds = pydicom.dcmread(_first_file(folder.parent / (folder.name + "_src")))
    ds.Rows = ds.Columns = 10_000
    ds.PixelData = (np.arange(10_000, dtype=np.uint16)[None] * np.ones((10_000, 1), np.uint16)).tobytes()
    ds.save_as(folder / "huge.dcm")
    return "volume"


def non_image_objects(folder: Path) -> str:
    """A structured report and a presentation state, no images."""
    folder.mkdir(parents=True)
    for sop_class, name in (("1.2.840.10008.5.1.4.1.1.88.22", "sr.dcm"), ("1.2.840.10008.5.1.4.1.1.11.1", "pr.dcm")):
        ds = pydicom.Dataset()
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.Modality = "SR" if name == "sr.dcm" else "PR"
        ds.save_as(folder / name, enforce_file_format=True)
    return "error"


def mixed_with_non_images(folder: Path) -> str:
    """A good series plus a structured report, a text file and a scout."""
    write_series(folder, n_slices=8, scout=True)
    non_image_objects(folder / "_tmp")
    for p in (folder / "_tmp").iterdir():
        p.rename(folder / p.name)
    (folder / "_tmp").rmdir()
    (folder / "README.txt").write_text("not a dicom")
    return "volume"


def empty_folder(folder: Path) -> str:
    folder.mkdir(parents=True)
    return "error"


CASES: dict[str, HostileCase] = {
    fn.__name__: fn
    for fn in (
        truncated_files, some_truncated, random_bytes, dicom_without_pixels, wrong_rows_columns, nan_rescale,
        absurd_rescale, unsupported_transfer_syntax, single_slice, all_at_one_position, zero_sized, colour_rgb,
        four_d_frames, symlink_loop, unreadable_file, thousands_of_slices, huge_file, non_image_objects,
        mixed_with_non_images, empty_folder,
    )
}
