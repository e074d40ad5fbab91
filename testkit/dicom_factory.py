"""Write small synthetic DICOM series with known geometry for the reader tests.

Every voxel holds ``field(lps)`` of its own patient-space centre, so a reader's geometry can be checked against
the analytic value as well as against an independent reader (SimpleITK).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from kernel.labels import TEST_TAG_ALLOWLIST

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"


def smooth_field(lps: np.ndarray) -> np.ndarray:
    """A smooth, asymmetric test pattern (HU-like values); left/right, front/back and up/down all differ."""
    x, y, z = lps[..., 0], lps[..., 1], lps[..., 2]
    return 300 + 120 * np.sin(x / 9.0 + 0.3) + 90 * np.cos(y / 11.0) + 2.5 * z + 0.8 * x


def plane_directions(plane: str, tilt_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """IOP row/column directions (LPS) for an acquisition plane, optionally tilted about the row direction."""
    base = {
        "axial": ([1, 0, 0], [0, 1, 0]),
        "coronal": ([1, 0, 0], [0, 0, -1]),
        "sagittal": ([0, 1, 0], [0, 0, -1]),
    }[plane]
    row, col = (np.asarray(v, dtype=float) for v in base)
    if tilt_deg:
        t = np.deg2rad(tilt_deg)
        normal = np.cross(row, col)
        col = np.cos(t) * col + np.sin(t) * normal
    return row, col / np.linalg.norm(col)


def _base_dataset(sop_class: str, modality: str, series_uid: str, study_uid: str, for_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.StudyInstanceUID = study_uid
    ds.FrameOfReferenceUID = for_uid
    ds.PatientID = "TEST"
    ds.SeriesDescription = "synthetic"  # not allow-listed: stripped in allow-list mode
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    return ds


def _encode(values: np.ndarray, modality: str) -> tuple[np.ndarray, float, float]:
    """Field values -> stored uint16 plus (slope, intercept)."""
    if modality == "CT":
        return np.clip(np.rint(values + 1024), 0, 4095).astype(np.uint16), 1.0, -1024.0
    return np.clip(np.rint(values * 2), 0, 4095).astype(np.uint16), 0.5, 0.0


def strip_to_allowlist(ds: Dataset) -> None:
    """Delete every tag not in the competition's test-time allow-list (in place)."""
    for elem in list(ds):
        if elem.keyword not in TEST_TAG_ALLOWLIST:
            del ds[elem.tag]


def write_series(
    out_dir: Path,
    *,
    n_slices: int = 16,
    rows: int = 24,
    cols: int = 28,
    slice_spacing: float = 2.0,
    pixel_spacing: tuple[float, float] = (1.0, 1.25),
    plane: str = "axial",
    tilt_deg: float = 0.0,
    origin: tuple[float, float, float] = (-15.0, -12.0, -14.0),
    modality: str = "CT",
    field: Callable[[np.ndarray], np.ndarray] = smooth_field,
    reverse: bool = False,
    multiframe: bool = False,
    allowlist_only: bool = False,
    scout: bool = False,
    blank: bool = False,
    odd_size: bool = False,
    gaps: list[float] | None = None,
    transfer_syntax: str | None = None,
    monochrome1: bool = False,
    seed: int = 0,
) -> dict:
    """Write one series into ``out_dir``; returns its geometry (affine of the true stack, uids, file names)."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    row_dir, col_dir = plane_directions(plane, tilt_deg)
    normal = np.cross(row_dir, col_dir)
    offsets = np.arange(n_slices) * slice_spacing if gaps is None else np.concatenate([[0.0], np.cumsum(gaps)])
    n_slices = len(offsets)
    positions = [np.asarray(origin) + o * normal for o in offsets]

    def image_at(pos: np.ndarray, r: int = rows, c: int = cols, rd=row_dir, cd=col_dir) -> np.ndarray:
        j2, i2 = np.meshgrid(np.arange(c), np.arange(r))
        lps = pos + j2[..., None] * pixel_spacing[1] * rd + i2[..., None] * pixel_spacing[0] * cd
        return field(lps)

    series_uid, study_uid, for_uid = generate_uid(), generate_uid(), generate_uid()
    sop_class = CT_STORAGE if modality == "CT" else MR_STORAGE
    order = list(range(n_slices))[::-1] if reverse else list(range(n_slices))
    instance_numbers = list(range(1, n_slices + 1))
    rng.shuffle(instance_numbers)
    files: list[str] = []
    sop_uids: list[str] = []

    def save(ds: Dataset) -> str:
        if allowlist_only:
            strip_to_allowlist(ds)
        if transfer_syntax is not None:
            ds.compress(transfer_syntax, generate_instance_uid=False)
        name = f"{rng.getrandbits(40):010x}.dcm"
        ds.save_as(out_dir / name, enforce_file_format=True)
        files.append(name)
        return name

    if multiframe:
        ds = _base_dataset(ENHANCED_MR_STORAGE, modality, series_uid, study_uid, for_uid)
        ds.SOPInstanceUID = generate_uid()
        ds.Rows, ds.Columns = rows, cols
        ds.NumberOfFrames = n_slices
        frames, per_frame = [], []
        for k in order:
            stored, slope, intercept = _encode(image_at(positions[k]), modality)
            frames.append(stored)
            item = Dataset()
            pos_item = Dataset()
            pos_item.ImagePositionPatient = [float(v) for v in positions[k]]
            item.PlanePositionSequence = Sequence([pos_item])
            per_frame.append(item)
        shared = Dataset()
        ori = Dataset()
        ori.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        meas = Dataset()
        meas.PixelSpacing = list(pixel_spacing)
        meas.SliceThickness = slice_spacing
        trans = Dataset()
        trans.RescaleSlope, trans.RescaleIntercept = slope, intercept
        shared.PlaneOrientationSequence = Sequence([ori])
        shared.PixelMeasuresSequence = Sequence([meas])
        shared.PixelValueTransformationSequence = Sequence([trans])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
        ds.PixelData = np.stack(frames).tobytes()
        sop_uids = [ds.SOPInstanceUID] * n_slices
        save(ds)
    else:
        for rank, k in enumerate(order):
            ds = _base_dataset(sop_class, modality, series_uid, study_uid, for_uid)
            ds.SOPInstanceUID = generate_uid()
            ds.InstanceNumber = instance_numbers[rank]
            ds.ImagePositionPatient = [float(v) for v in positions[k]]
            ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
            ds.PixelSpacing = list(pixel_spacing)
            ds.SliceThickness = slice_spacing
            ds.Rows, ds.Columns = rows, cols
            stored, slope, intercept = _encode(image_at(positions[k]), modality)
            if monochrome1:
                ds.PhotometricInterpretation = "MONOCHROME1"
                stored = (4095 - stored).astype(np.uint16)
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
            ds.PixelData = stored.tobytes()
            sop_uids.append(ds.SOPInstanceUID)
            save(ds)
        sop_uids = [sop_uids[order.index(k)] for k in range(n_slices)]

    extras = []
    if scout:  # a lateral localizer through the middle of the volume: other orientation, other size
        ds = _base_dataset(sop_class, modality, series_uid, study_uid, for_uid)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = 0
        srow, scol = plane_directions("sagittal")
        ds.ImagePositionPatient = [float(v) for v in positions[0]]
        ds.ImageOrientationPatient = [float(v) for v in (*srow, *scol)]
        ds.PixelSpacing = [2.0, 2.0]
        ds.Rows, ds.Columns = 20, 30
        stored, slope, intercept = _encode(image_at(positions[0], 20, 30, srow, scol), modality)
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = stored.tobytes()
        extras.append(("scout", save(ds)))
    if blank:  # a constant image at a position of its own beyond the stack
        ds = _base_dataset(sop_class, modality, series_uid, study_uid, for_uid)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = n_slices + 1
        ds.ImagePositionPatient = [float(v) for v in positions[n_slices // 2] + 0.5 * slice_spacing * normal]
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = list(pixel_spacing)
        ds.Rows, ds.Columns = rows, cols
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, 0.0
        ds.PixelData = np.zeros((rows, cols), np.uint16).tobytes()
        extras.append(("blank", save(ds)))
    if odd_size:  # same orientation, different matrix
        ds = _base_dataset(sop_class, modality, series_uid, study_uid, for_uid)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = n_slices + 2
        ds.ImagePositionPatient = [float(v) for v in positions[1] + 0.25 * slice_spacing * normal]
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = list(pixel_spacing)
        ds.Rows, ds.Columns = rows + 4, cols - 4
        stored, slope, intercept = _encode(image_at(positions[1], rows + 4, cols - 4), modality)
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = stored.tobytes()
        extras.append(("odd_size", save(ds)))

    affine = np.eye(4)
    step = (positions[-1] - positions[0]) / max(n_slices - 1, 1) if gaps is None else normal * slice_spacing
    affine[:3, 0] = step if n_slices > 1 else normal * slice_spacing
    affine[:3, 1] = col_dir * pixel_spacing[0]
    affine[:3, 2] = row_dir * pixel_spacing[1]
    affine[:3, 3] = positions[0]
    return {
        "affine": affine,
        "series_uid": series_uid,
        "sop_uids": sop_uids,
        "frame_of_slice": [order.index(k) for k in range(n_slices)] if multiframe else [0] * n_slices,
        "positions": positions,
        "files": files,
        "extras": extras,
        "row_dir": row_dir,
        "col_dir": col_dir,
        "pixel_spacing": pixel_spacing,
        "shape": (n_slices, rows, cols),
    }
