"""A generator of hostile series folders: everything a real archive (or a careless copy) can throw at the reader.

Each case writes one series folder and says what a correct reader does with it: ``"volume"`` (a usable volume
must come back, the bad parts dropped and reported) or ``"error"`` (``SeriesReadError`` with a reason).

Some cases attack the reader's size rules (a slice 10 km away, a 5 m gap, NumberOfFrames 999,999,999, a declared
pixel data length of 4 GB, a deflated file that inflates to 4 GB, 1-pixel images) and would cost gigabytes or
minutes without them. ``HOOKED`` cases are plain RLE series whose ``ImageComments`` ask a test-only decoder hook
(``install_worker_hooks``, loaded into the read worker by ``RSNA_READ_WORKER_HOOK``) to segfault, hang or eat
memory: without the hook they read normally.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import time
import zlib
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import RLELossless, generate_uid

from testkit.dicom_factory import smooth_field, write_series

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
    write_series(folder, n_slices=3000, rows=16, cols=16, slice_spacing=0.1)
    return "volume"


def huge_file(folder: Path) -> str:
    """One 200 MB single-frame image (10000 x 10000 x 16 bit, 0.03 mm pixels: a 300 mm field of view)."""
    folder.mkdir(parents=True)
    ds = pydicom.dcmread(_first_file(folder.parent / (folder.name + "_src")))
    ds.Rows = ds.Columns = 10_000
    ds.PixelSpacing = [0.03, 0.03]
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


# --- size before allocation ----------------------------------------------------------------------------------------


def _periodic_field(lps: np.ndarray) -> np.ndarray:
    """The factory's pattern, periodic along z: a slice kilometres away still holds an image, not a blank."""
    return smooth_field(np.concatenate([lps[..., :2], lps[..., 2:] % 40.0], axis=-1))


def far_slice(folder: Path) -> str:
    """16 slices of 256^2, one of them 10 km away along the normal: gap resampling would build a grid of 5,015
    slices (1.3 GB, and 4x that in temporaries)."""
    write_series(folder, gaps=[2.0] * 14 + [10_000.0], rows=256, cols=256, field=_periodic_field)
    return "volume"


def huge_gap(folder: Path) -> str:
    """Two runs of 8 slices (256^2) 5 m apart."""
    write_series(folder, gaps=[2.0] * 7 + [5_000.0] + [2.0] * 7, rows=256, cols=256, field=_periodic_field)
    return "volume"


def huge_frame_count(folder: Path) -> str:
    """An Enhanced MR file of 12 frames whose NumberOfFrames says 999,999,999."""
    write_series(folder, n_slices=12, multiframe=True, modality="MR")
    for path in _files(folder):
        ds = pydicom.dcmread(path)
        ds.NumberOfFrames = 999_999_999
        ds.save_as(path)
    return "volume"


def huge_pixel_length(folder: Path) -> str:
    """Every file's PixelData element declares 4 GB; the files hold one frame each."""
    write_series(folder, n_slices=8)
    for path in _files(folder):
        data = bytearray(path.read_bytes())
        at = data.rfind(b"\xe0\x7f\x10\x00OW\x00\x00")
        assert at > 0, "PixelData element not found"
        data[at + 8 : at + 12] = struct.pack("<I", 0xFFFFFFF0)
        path.write_bytes(bytes(data))
    return "volume"


def deflate_bomb(folder: Path, inflated_mib: int = 4095) -> str:
    """A good series plus one Deflated Explicit VR file (4 MB on disk) that inflates to 4 GB of pixel data."""
    write_series(folder, n_slices=10)
    ds = pydicom.dcmread(_files(folder)[0])
    del ds.PixelData
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    head = BytesIO()
    head.write(b"\0" * 128 + b"DICM")
    pydicom.filewriter.write_file_meta_info(head, ds.file_meta, enforce_standard=True)
    body = pydicom.filebase.DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(body, ds)
    body.write(b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", inflated_mib << 20))
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    start = deflate.compress(body.getvalue()) + deflate.flush(zlib.Z_FULL_FLUSH)
    # After a full flush the stream is byte-aligned with no history: one compressed MiB of zeros can be repeated.
    mib = deflate.compress(bytes(1 << 20)) + deflate.flush(zlib.Z_FULL_FLUSH)
    final = b"\x03\x00"  # an empty final block
    (folder / "bomb.dcm").write_bytes(head.getvalue() + start + mib * inflated_mib + final)
    return "volume"


def huge_field_of_view(folder: Path) -> str:
    """64 x 64 images with 40 mm pixels (a 2.6 m field of view): resampled to 1 mm that is a 2,560^2 volume per slice
    and model inputs to match, in the main process."""
    write_series(folder, n_slices=4, rows=64, cols=64, pixel_spacing=(40.0, 40.0))
    return "error"


def tiny_images(folder: Path) -> str:
    """A 1 x 1 image and a 1-pixel-wide one: not a head."""
    write_series(folder, n_slices=2)
    for path, (rows, cols) in zip(_files(folder), [(1, 1), (300, 1)], strict=True):
        ds = pydicom.dcmread(path)
        ds.Rows, ds.Columns = rows, cols
        ds.PixelData = np.full(rows * cols, 1000, np.uint16).tobytes()
        ds.save_as(path)
    return "error"


def interleaved_series(folder: Path) -> str:
    """Two SeriesInstanceUIDs in one folder, their slices interleaved along the same normal (12 and 8 slices)."""
    write_series(folder, n_slices=12, seed=1)
    write_series(folder, n_slices=8, seed=2, origin=(-15.0, -12.0, -13.0))
    return "volume"


def nested_subfolders(folder: Path) -> str:
    """The series sits two folders down."""
    write_series(folder / "study" / "series", n_slices=10)
    return "volume"


# --- cases for the read worker's limits (test-only decoder hooks) --------------------------------------------------

HOOK_TAG = "hostile:"


def _hooked(folder: Path, action: str) -> str:
    write_series(folder, n_slices=8, transfer_syntax=RLELossless)
    for path in _files(folder):
        ds = pydicom.dcmread(path)
        ds.ImageComments = HOOK_TAG + action
        ds.save_as(path)
    return "volume"


def decoder_segfault(folder: Path) -> str:
    """With the hook: the decoder dereferences NULL (a real SIGSEGV)."""
    return _hooked(folder, "segfault")


def decoder_hang(folder: Path) -> str:
    """With the hook: the decoder sleeps forever."""
    return _hooked(folder, "hang")


def decoder_memory_hog(folder: Path) -> str:
    """With the hook: the decoder touches shared memory (not counted by RLIMIT_DATA) until something stops it."""
    return _hooked(folder, "hog")


def decoder_memory_error(folder: Path) -> str:
    """With the hook: the decoder asks numpy for 64 GB (refused by the worker's data limit: a MemoryError)."""
    return _hooked(folder, "alloc")


# What each hooked case does inside a worker that loaded the hooks: the worker dies, hangs, is killed for memory, or
# raises MemoryError. Everywhere else these series read normally.
HOOKED: dict[str, str] = {
    "decoder_segfault": "crash", "decoder_hang": "hang", "decoder_memory_hog": "memory",
    "decoder_memory_error": "memory_error",
}


def _hook_action(action: str) -> None:
    if action == "segfault":
        ctypes.string_at(0)  # reads address 0: SIGSEGV in native code
    elif action == "hang":
        while True:
            time.sleep(3600)
    elif action == "hog":
        held = []
        while True:
            block = mmap.mmap(-1, 32 << 20)  # MAP_SHARED | MAP_ANONYMOUS
            np.frombuffer(block, np.uint8)[::4096] = 1
            held.append(block)
    elif action == "alloc":
        np.ones(64 << 30, np.uint8)


def install_worker_hooks() -> None:
    """Test-only: wrap the reader's pydicom decode so that a file whose ImageComments is ``hostile:<action>`` does
    that action. The read worker calls it at start when ``RSNA_READ_WORKER_HOOK`` names it
    (``testkit.hostile:install_worker_hooks``).
    """
    import kernel.dicom_io as dicom_io

    original = dicom_io._decode_file

    def hooked(path: str, step: int = 1, ds: pydicom.Dataset | None = None, n_frames: int | None = None) -> np.ndarray:
        comments = str(ds.get("ImageComments", "")) if ds is not None else ""
        if comments.startswith(HOOK_TAG):
            _hook_action(comments[len(HOOK_TAG):])
        return original(path, step, ds, n_frames)

    dicom_io._decode_file = hooked


CASES: dict[str, HostileCase] = {
    fn.__name__: fn
    for fn in (
        truncated_files, some_truncated, random_bytes, dicom_without_pixels, wrong_rows_columns, nan_rescale,
        absurd_rescale, unsupported_transfer_syntax, single_slice, all_at_one_position, zero_sized, colour_rgb,
        four_d_frames, symlink_loop, unreadable_file, thousands_of_slices, huge_file, non_image_objects,
        mixed_with_non_images, empty_folder, far_slice, huge_gap, huge_frame_count, huge_pixel_length, deflate_bomb,
        huge_field_of_view, tiny_images, interleaved_series, nested_subfolders, decoder_segfault, decoder_hang,
        decoder_memory_hog, decoder_memory_error,
    )
}


class TreePeak:
    """Peak RSS of this process and all its descendants while the ``with`` block runs, measured from /proc.

    Two measurements, the larger is kept: the summed RSS of the process tree sampled every ``period_s`` (sees
    children that come and go), and this process's VmHWM (reset on entry) plus the largest peak a child reported
    through ``add_child_peak`` (a VmHWM sees what sampling misses).
    """

    def __init__(self, period_s: float = 0.005) -> None:
        self.period_s = period_s
        self.baseline = 0
        self.sampled = 0
        self.child_peak = 0
        self.own_peak = 0
        self._stop = None
        self._thread = None

    def __enter__(self) -> TreePeak:
        import threading

        from kernel.procmem import reset_peak_rss, rss_bytes, tree_rss_bytes

        self.baseline = rss_bytes()
        reset_peak_rss()
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self.sampled = max(self.sampled, tree_rss_bytes())
                self._stop.wait(self.period_s)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def add_child_peak(self, peak_bytes: int) -> None:
        self.child_peak = max(self.child_peak, int(peak_bytes))

    def __exit__(self, *exc: object) -> None:
        from kernel.procmem import peak_rss_bytes

        self._stop.set()
        self._thread.join()
        self.own_peak = peak_rss_bytes()

    @property
    def peak(self) -> int:
        """Peak bytes of the whole tree (upper bound: pages shared between processes count in each)."""
        return max(self.sampled, self.own_peak + self.child_peak)

    @property
    def growth(self) -> int:
        """Peak beyond this process's RSS on entry (the models, the test harness)."""
        return self.peak - self.baseline
