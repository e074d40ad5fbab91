"""Write a rendered phantom as a DICOM series with the competition's quirks.

Quirks (each drawn per series by the caller): files named ``<SOPInstanceUID>.dcm``, InstanceNumber ascending
head-to-foot or foot-to-head or shuffled, one Enhanced MR multi-frame file with per-frame functional groups (optionally
per-frame rescale), a scout (other orientation and size), a blank image, a file with another matrix, compressed
transfer syntaxes, MONOCHROME1, signed CT with padding outside the field-of-view circle, and the test split's tag
allow-list. No timestamps or random state outside the given generator: same inputs, same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from kernel.labels import TEST_TAG_ALLOWLIST

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's example root; suffix drawn from the series generator

# Transfer syntaxes drawn per series. JPEG Lossless (process 14) is absent: pydicom 3 has no encoder for it.
TRANSFER_SYNTAXES: dict[str, float] = {
    ExplicitVRLittleEndian: 0.55,
    ImplicitVRLittleEndian: 0.10,
    RLELossless: 0.12,
    JPEGLSLossless: 0.09,
    JPEG2000Lossless: 0.09,
    DeflatedExplicitVRLittleEndian: 0.05,
}
COMPRESSED = {RLELossless, JPEGLSLossless, JPEG2000Lossless}
FILE_META_KEEP = {"MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID",
                  "FileMetaInformationVersion", "ImplementationClassUID", "ImplementationVersionName"}


def make_uid(rng: np.random.Generator) -> str:
    """A random, reproducible DICOM UID (at most 64 characters)."""
    return UID_ROOT + str(int(rng.integers(1, 2**62))) + str(int(rng.integers(0, 10**8)))


@dataclass
class Quirks:
    """What a series carries besides clean slices (all drawn by ``sample_quirks``)."""

    transfer_syntax: str = ExplicitVRLittleEndian
    reverse_order: bool = False  # InstanceNumber 1 at the top (head-to-foot)
    shuffled_instance: bool = False
    multiframe: bool = False
    per_frame_rescale: bool = False
    top_level_geometry: bool = False  # multi-frame file also carries IOP/PixelSpacing at the top level
    scout: bool = False
    blank: bool = False
    odd_size: bool = False
    monochrome1: bool = False
    ct_signed: bool = False
    ct_padding_hu: float = -3024.0
    mr_rescale: bool = False
    allowlist_only: bool = False

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def sample_quirks(rng: np.random.Generator, modality: str, split: str, transfer_syntax: str | None = None) -> Quirks:
    """Draw the quirks of one series (rates per the spec: a few per cent each, multi-frame for ~25% of MRA)."""
    names = list(TRANSFER_SYNTAXES)
    p = np.array([TRANSFER_SYNTAXES[k] for k in names])
    q = Quirks(
        transfer_syntax=transfer_syntax or str(names[int(rng.choice(len(names), p=p / p.sum()))]),
        reverse_order=bool(rng.random() < 0.5),
        shuffled_instance=bool(rng.random() < 0.15),
        multiframe=modality == "MRA" and bool(rng.random() < 0.25),
        scout=bool(rng.random() < 0.06),
        blank=bool(rng.random() < 0.05),
        odd_size=bool(rng.random() < 0.04),
        monochrome1=bool(rng.random() < 0.03),
        ct_signed=modality == "CTA" and bool(rng.random() < 0.3),
        ct_padding_hu=float(rng.choice([-2000.0, -3024.0])),
        mr_rescale=modality != "CTA" and bool(rng.random() < 0.3),
        allowlist_only=split == "test",
    )
    if q.multiframe:
        q.per_frame_rescale = bool(rng.random() < 0.4)
        q.top_level_geometry = bool(rng.random() < 0.5)
        if q.top_level_geometry:  # frames ascend from the top-level position: recoverable once stripped
            q.reverse_order = False
        q.scout = q.blank = q.odd_size = False  # one file holds the whole series
    return q


@dataclass
class Encoding:
    """How physical values become stored integers: value = stored * slope + intercept (per frame)."""

    bits_stored: int
    signed: bool
    slope: np.ndarray  # (Z,) per native slice
    intercept: float
    value_scale: float = 1.0  # factor applied to the rendered image before encoding (MR: random scale)

    def encode(self, values: np.ndarray, k: int) -> np.ndarray:
        lo, hi = (-(2 ** (self.bits_stored - 1)), 2 ** (self.bits_stored - 1) - 1) if self.signed else (
            0, 2**self.bits_stored - 1)
        stored = np.clip(np.rint((values - self.intercept) / self.slope[k]), lo, hi)
        return stored.astype(np.int16 if self.signed else np.uint16)


def choose_encoding(rng: np.random.Generator, image: np.ndarray, modality: str, quirks: Quirks) -> Encoding:
    """CT: HU with intercept -1024 (12-bit unsigned or 16-bit signed). MR: 12-bit unsigned with a random scale."""
    nz = image.shape[0]
    if modality == "CTA":
        return Encoding(16 if quirks.ct_signed else 12, quirks.ct_signed, np.ones(nz), -1024.0)
    top = float(np.percentile(image[:, ::4, ::4], 99.9)) or 1.0
    target = float(rng.uniform(1000, 3800))
    if quirks.mr_rescale:  # stored * slope = value, values kept in arbitrary units of their own
        slope = float(rng.uniform(0.3, 3.0))
        scale = target * slope / top
        image *= np.float32(scale)
        slopes = np.full(nz, slope)
        if quirks.per_frame_rescale:
            slopes = slope * rng.uniform(0.85, 1.15, nz)
        return Encoding(12, False, slopes, 0.0, scale)
    image *= np.float32(target / top)
    return Encoding(12, False, np.ones(nz), 0.0, target / top)


@dataclass
class WrittenSeries:
    """What the writer produced: native slice -> (SOPInstanceUID, frame), slice positions and file names."""

    slice_sops: list[tuple[str, int]]
    positions: np.ndarray  # (Z, 3) LPS of pixel (0, 0) per native slice
    files: list[str] = field(default_factory=list)
    extras: list[str] = field(default_factory=list)


def _base(sop_class: str, modality: str, uids: dict[str, str], patient_id: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.SeriesInstanceUID = uids["series"]
    ds.StudyInstanceUID = uids["study"]
    ds.FrameOfReferenceUID = uids["frame_of_reference"]
    ds.PatientID = patient_id
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.HighBit = 11
    ds.BitsStored = 12
    ds.PixelRepresentation = 0
    return ds


def _set_pixels(ds: Dataset, stored: np.ndarray, enc: Encoding, quirks: Quirks) -> np.ndarray:
    ds.BitsStored = enc.bits_stored
    ds.HighBit = enc.bits_stored - 1
    ds.PixelRepresentation = 1 if enc.signed else 0
    if quirks.monochrome1:
        ds.PhotometricInterpretation = "MONOCHROME1"
        stored = ((-1 - stored) if enc.signed else (2**enc.bits_stored - 1 - stored)).astype(stored.dtype)
    ds.Rows, ds.Columns = int(stored.shape[-2]), int(stored.shape[-1])
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    return stored


def _save(ds: Dataset, arr: np.ndarray, out_dir: Path, quirks: Quirks, rng: np.random.Generator) -> str:
    """Compress (falling back to RLE when an encoder refuses the data), strip for the test split, save."""
    ts = quirks.transfer_syntax
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if ts in COMPRESSED:
        try:
            ds.compress(ts, arr, generate_instance_uid=False)
        except Exception:  # noqa: BLE001 - an encoder that cannot take this data: RLE always can
            ds.compress(RLELossless, arr, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = ts
    if quirks.allowlist_only:
        for elem in list(ds):
            if elem.keyword not in TEST_TAG_ALLOWLIST:
                del ds[elem.tag]
        for elem in list(ds.file_meta):
            if elem.keyword not in FILE_META_KEEP:
                del ds.file_meta[elem.tag]
    name = f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(out_dir / name, enforce_file_format=True)
    return name


@dataclass
class _Stack:
    """What every file of one written series shares: geometry tags, encoding, quirks, UIDs and the pixel source."""

    image: np.ndarray
    acq: Any  # protocols.Acquisition
    enc: Encoding
    quirks: Quirks
    uids: dict[str, str]
    positions: np.ndarray  # (Z, 3) LPS of each native slice
    order: list[int]  # storage order of the native slices
    fov_mask: np.ndarray | None  # CT outside the field-of-view circle: padding

    @property
    def modality(self) -> str:
        return self.acq.dicom_modality

    @property
    def iop(self) -> list[float]:
        return [round(float(v), 6) for v in (*self.acq.row_dir, *self.acq.col_dir)]

    @property
    def pixel_spacing(self) -> list[float]:
        return [round(float(v), 6) for v in self.acq.pixel_spacing]

    def base(self, sop_class: str | None = None) -> Dataset:
        default = CT_STORAGE if self.modality == "CT" else MR_STORAGE
        return _base(sop_class or default, self.modality, self.uids, self.uids["patient"])

    def values_of(self, k: int) -> np.ndarray:
        v = self.image[k]
        if self.fov_mask is not None:
            v = np.where(self.fov_mask, np.float32(self.quirks.ct_padding_hu), v)
        return v


def write_series(
    out_dir: Path,
    image: np.ndarray,
    acq,  # protocols.Acquisition (kept untyped here to avoid an import cycle)
    enc: Encoding,
    quirks: Quirks,
    uids: dict[str, str],
    rng: np.random.Generator,
    extra_images: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> WrittenSeries:
    """Write ``image`` (native stack, float32 physical values) as DICOM files under ``out_dir``.

    ``extra_images`` may hold ``"scout"``: (image (Y, X), affine) of an extra single slice in another orientation.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    nz = image.shape[0]
    positions = np.array([acq.origin + k * acq.slice_spacing * acq.normal for k in range(nz)])
    order = list(range(nz))[::-1] if quirks.reverse_order else list(range(nz))  # storage order
    fov_mask = None
    if acq.dicom_modality == "CT" and quirks.ct_signed:
        yy, xx = np.mgrid[: image.shape[1], : image.shape[2]]
        cy, cx = (image.shape[1] - 1) / 2, (image.shape[2] - 1) / 2
        fov_mask = (yy - cy) ** 2 + (xx - cx) ** 2 > (min(image.shape[1:]) / 2) ** 2
    stack = _Stack(image, acq, enc, quirks, uids, positions, order, fov_mask)
    written = WrittenSeries(slice_sops=[("", 0)] * nz, positions=positions)
    if quirks.multiframe:
        _write_multiframe(stack, written, out_dir, rng)
        return written
    _write_slices(stack, written, out_dir, rng)
    _write_extras(stack, written, out_dir, rng, extra_images)
    return written


def _rescale_item(slope: float, intercept: float) -> Dataset:
    trans = Dataset()
    trans.RescaleSlope, trans.RescaleIntercept = round(float(slope), 8), intercept
    trans.RescaleType = "US"
    return trans


def _write_multiframe(stack: _Stack, written: WrittenSeries, out_dir: Path, rng: np.random.Generator) -> None:
    """One Enhanced MR file: per-frame positions (and rescale, with the quirk), shared orientation and spacing."""
    acq, enc, quirks = stack.acq, stack.enc, stack.quirks
    ds = stack.base(ENHANCED_MR_STORAGE)
    ds.SOPInstanceUID = make_uid(rng)
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(stack.order)
    frames, per_frame = [], []
    for f, k in enumerate(stack.order):
        frames.append(enc.encode(stack.values_of(k), k))
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [round(float(v), 6) for v in stack.positions[k]]
        item.PlanePositionSequence = Sequence([pos])
        if quirks.per_frame_rescale:
            item.PixelValueTransformationSequence = Sequence([_rescale_item(enc.slope[k], enc.intercept)])
        per_frame.append(item)
        written.slice_sops[k] = (str(ds.SOPInstanceUID), f)
    shared = Dataset()
    ori = Dataset()
    ori.ImageOrientationPatient = stack.iop
    meas = Dataset()
    meas.PixelSpacing = stack.pixel_spacing
    meas.SliceThickness = round(acq.slice_thickness, 4)
    meas.SpacingBetweenSlices = round(acq.slice_spacing, 4)
    shared.PlaneOrientationSequence = Sequence([ori])
    shared.PixelMeasuresSequence = Sequence([meas])
    if not quirks.per_frame_rescale:
        shared.PixelValueTransformationSequence = Sequence([_rescale_item(enc.slope[0], enc.intercept)])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    if quirks.top_level_geometry:
        ds.ImageOrientationPatient = stack.iop
        ds.PixelSpacing = stack.pixel_spacing
        ds.SliceThickness = round(acq.slice_thickness, 4)
        ds.SpacingBetweenSlices = round(acq.slice_spacing, 4)
        ds.ImagePositionPatient = [round(float(v), 6) for v in stack.positions[stack.order[0]]]
    pixels = _set_pixels(ds, np.stack(frames), enc, quirks)
    written.files.append(_save(ds, pixels, out_dir, quirks, rng))


def _write_slices(stack: _Stack, written: WrittenSeries, out_dir: Path, rng: np.random.Generator) -> None:
    """One file per native slice, in storage order, InstanceNumber in order or shuffled."""
    acq, enc, quirks = stack.acq, stack.enc, stack.quirks
    numbers = list(range(1, len(stack.order) + 1))
    if quirks.shuffled_instance:
        numbers = [int(v) for v in rng.permutation(numbers)]
    for rank, k in enumerate(stack.order):
        ds = stack.base()
        ds.SOPInstanceUID = make_uid(rng)
        ds.InstanceNumber = numbers[rank]
        ds.ImagePositionPatient = [round(float(v), 6) for v in stack.positions[k]]
        ds.ImageOrientationPatient = stack.iop
        ds.PixelSpacing = stack.pixel_spacing
        ds.SliceThickness = round(acq.slice_thickness, 4)
        if acq.slice_thickness != acq.slice_spacing:
            ds.SpacingBetweenSlices = round(acq.slice_spacing, 4)
        ds.RescaleSlope, ds.RescaleIntercept = round(float(enc.slope[k]), 8), enc.intercept
        ds.RescaleType = "HU" if stack.modality == "CT" else "US"
        stored = _set_pixels(ds, enc.encode(stack.values_of(k), k), enc, quirks)
        written.files.append(_save(ds, stored, out_dir, quirks, rng))
        written.slice_sops[k] = (str(ds.SOPInstanceUID), 0)


def _write_extras(stack: _Stack, written: WrittenSeries, out_dir: Path, rng: np.random.Generator,
                  extra_images: dict[str, tuple[np.ndarray, np.ndarray]] | None) -> None:
    """The files that do not belong to the stack, as the quirks ask: a scout, a blank image, another matrix."""
    acq, enc, quirks, image, positions = stack.acq, stack.enc, stack.quirks, stack.image, stack.positions
    nz, normal = image.shape[0], acq.normal

    def extra(pos: np.ndarray, values: np.ndarray, iop_x: list[float], ps_x: list[float], number: int) -> None:
        ds = stack.base()
        ds.SOPInstanceUID = make_uid(rng)
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [round(float(v), 6) for v in pos]
        ds.ImageOrientationPatient = iop_x
        ds.PixelSpacing = ps_x
        ds.SliceThickness = round(acq.slice_thickness, 4)
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, enc.intercept
        stored = _set_pixels(ds, Encoding(enc.bits_stored, enc.signed, np.ones(1), enc.intercept).encode(values, 0),
                             enc, quirks)
        written.extras.append(_save(ds, stored, out_dir, quirks, rng))

    if quirks.scout and extra_images and "scout" in extra_images:
        simg, saff = extra_images["scout"]
        srow = saff[:3, 2] / np.linalg.norm(saff[:3, 2])
        scol = saff[:3, 1] / np.linalg.norm(saff[:3, 1])
        sps = [round(float(np.linalg.norm(saff[:3, 1])), 6), round(float(np.linalg.norm(saff[:3, 2])), 6)]
        extra(saff[:3, 3], simg, [round(float(v), 6) for v in (*srow, *scol)], sps, 0)
    if quirks.blank:  # a constant image one step beyond the last slice
        blank = np.full(image.shape[1:], enc.intercept if stack.modality == "CT" else 0.0, dtype=np.float32)
        extra(positions[-1] + acq.slice_spacing * normal, blank, stack.iop, stack.pixel_spacing, nz + 1)
    if quirks.odd_size:  # another matrix one step before the first slice
        r, c = image.shape[1] - 8, image.shape[2] + 8
        odd = np.zeros((r, c), dtype=np.float32)
        odd[:, : min(c, image.shape[2])] = image[0, :r, : min(c, image.shape[2])]
        extra(positions[0] - acq.slice_spacing * normal, odd, stack.iop, stack.pixel_spacing, nz + 2)
