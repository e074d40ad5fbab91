"""Generator API: one phantom series (DICOM + labels + ground truth), or a whole dataset in the competition layout.

``generate_series`` is a pure function of (seed, index, split, size): the per-series generator is seeded with
``(seed, index)``, so the worker count never changes the output. ``generate_dataset`` runs it in a process pool and
writes the CSVs, the segmentations for a subset of train series, and ``phantom_truth.jsonl`` (ground truth that the
competition does not give: aneurysm centres in LPS mm, the head pose, protocol and quirks; for tests and debugging).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm import tqdm

from kernel.jsonl import read_jsonl_by
from kernel.labels import ID_COL, LABEL_COLS, LOCALIZER_COLS, LOCATION_COLS, PRESENT_COL, TRAIN_CSV_COLS
from train_offline.phantoms.anatomy import build_anatomy, sample_locations
from train_offline.phantoms.dicom_writer import choose_encoding, make_uid, sample_quirks, write_series
from train_offline.phantoms.protocols import PLANES, Acquisition, sample_acquisition, sample_modality, sample_tissue
from train_offline.phantoms.render import Grid, render

SPLITS = ("train", "test")
SEG_FRACTION = 0.3
TRUTH_FILE = "phantom_truth.jsonl"


@dataclass
class SeriesResult:
    """Everything known about one generated series (the CSV rows plus the ground truth)."""

    series_uid: str
    modality: str
    labels: dict[str, int]
    age: int
    sex: str
    localizers: list[dict[str, str]]
    truth: dict


def _localizer(acq: Acquisition, written, centre: np.ndarray) -> tuple[str, int, float, float]:
    """(SOP, frame, column, row) of the slice passing nearest ``centre`` and the centre's in-plane pixel position."""
    w = (written.positions - centre) @ acq.normal
    k = int(np.argmin(np.abs(w)))
    d = centre - written.positions[k]
    col = float(d @ acq.row_dir) / acq.pixel_spacing[1]
    row = float(d @ acq.col_dir) / acq.pixel_spacing[0]
    sop, frame = written.slice_sops[k]
    return sop, frame, col, row


def _scout(acq: Acquisition, anatomy, tissue, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One orthogonal localizer image through the field-of-view centre, other matrix and pixel size."""
    plane = "sagittal" if acq.plane != "sagittal" else "coronal"
    row, col = (np.asarray(v, dtype=float) for v in PLANES[plane])
    size = (int(rng.choice([64, 80])), int(rng.choice([72, 96])))
    ps = float(rng.uniform(2.5, 3.5))
    centre = acq.origin + acq.affine[:3, :3] @ ((np.array(acq.shape) - 1) / 2)
    origin = centre - (size[1] - 1) / 2 * ps * row - (size[0] - 1) / 2 * ps * col
    aff = np.eye(4)
    aff[:3, 0] = np.cross(row, col) * ps
    aff[:3, 1] = col * ps
    aff[:3, 2] = row * ps
    aff[:3, 3] = origin
    img, _ = render(Grid((1, *size), aff, 1), anatomy, tissue, rng, noise_sigma=0.0, rician=False)
    return img[0], aff


def nifti_affine(affine_zyx: np.ndarray) -> np.ndarray:
    """NIfTI (i=column, j=row, k=slice) -> RAS affine from a (z, y, x) -> LPS affine."""
    perm = np.zeros((4, 4))
    perm[0, 2] = perm[1, 1] = perm[2, 0] = perm[3, 3] = 1.0  # (x, y, z, 1) -> (z, y, x, 1)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_zyx @ perm


def _write_nifti(path: Path, array_zyx: np.ndarray, affine_zyx: np.ndarray) -> None:
    # A transposed view, no copy: nibabel writes Fortran order, i.e. the (Z, Y, X) array's own memory order.
    img = nib.Nifti1Image(array_zyx.transpose(2, 1, 0), nifti_affine(affine_zyx))
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def generate_series(
    out: str | os.PathLike[str],
    index: int,
    seed: int,
    *,
    split: str = "train",
    size: str = "small",
    with_segmentation: bool | None = None,
    modality: str | None = None,
    locations: list[str] | None = None,
    transfer_syntax: str | None = None,
    n_slices: int | None = None,
    quirks_override: dict[str, object] | None = None,
    dome_mm: float | None = None,
    segmentations: bool = True,
) -> SeriesResult:
    """Generate series ``index`` of dataset ``seed`` under ``out/series/<uid>/``; returns its labels and ground truth.

    Optional overrides (modality, locations, transfer syntax, slice count, quirks, ``dome_mm``: every sac a sphere of
    that diameter in patient mm, see ``anatomy.build_anatomy``) are for tests and benchmarks; by default everything is
    drawn from the series generator. ``segmentations=False`` writes no segmentation but draws as with it.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng([int(seed), int(index)])
    out = Path(out)
    uids = {k: make_uid(rng) for k in ("series", "study", "frame_of_reference")}
    uids["patient"] = f"PHANTOM{int(seed):04d}{int(index):06d}"
    modality = modality or sample_modality(rng)
    locations = sample_locations(rng) if locations is None else list(locations)
    if with_segmentation is None:
        with_segmentation = split == "train" and bool(rng.random() < SEG_FRACTION)
    with_segmentation = with_segmentation and segmentations  # after the draw: the series stay the same bytes
    anatomy = build_anatomy(rng, locations, dome_mm=dome_mm)
    acq = sample_acquisition(rng, modality, anatomy, size)
    if n_slices is not None:
        shift = (n_slices - acq.shape[0]) / 2 * acq.slice_spacing
        acq.origin = acq.origin - shift * acq.normal
        acq.shape = (int(n_slices), acq.shape[1], acq.shape[2])
    tissue, sigma, rician, bias = sample_tissue(rng, modality, acq.three_d)
    quirks = sample_quirks(rng, modality, split, transfer_syntax)
    for key, value in (quirks_override or {}).items():
        if key not in quirks.__dataclass_fields__:
            raise ValueError(f"unknown quirk {key!r}; known: {sorted(quirks.__dataclass_fields__)}")
        setattr(quirks, key, value)
    image, labels_map = render(acq.grid, anatomy, tissue, rng, noise_sigma=sigma, rician=rician, bias=bias,
                               with_labels=with_segmentation)
    extra = {"scout": _scout(acq, anatomy, tissue, rng)} if quirks.scout else None
    enc = choose_encoding(rng, image, modality, quirks)  # MR: scales ``image`` in place
    if extra:
        extra["scout"][0][...] *= np.float32(enc.value_scale)  # the scout shares the series' scale
    series_dir = out / "series" / uids["series"]
    written = write_series(series_dir, image, acq, enc, quirks, uids, rng, extra)

    localizers, aneurysm_truth = [], []
    for a in anatomy.aneurysms:
        sop, frame, col, row = _localizer(acq, written, a.centre_lps)
        coords = {"x": round(col, 2), "y": round(row, 2)}
        if quirks.multiframe:
            coords["f"] = frame
        localizers.append({ID_COL: uids["series"], "SOPInstanceUID": sop, "coordinates": str(coords),
                           "location": a.location})
        aneurysm_truth.append({
            "location": a.location, "centre_lps": a.centre_lps.round(4).tolist(),
            "parent_lps": a.parent_lps.round(4).tolist(), "centre_head_ras": a.centre_ras.round(4).tolist(),
            "dome_mm": round(a.dome_mm, 3), "neck_mm": round(a.neck_mm, 3), "bleb": a.has_bleb,
            "sop_uid": sop, "frame": frame, "x": round(col, 2), "y": round(row, 2),
        })
    labels = {c: int(any(a.location == c for a in anatomy.aneurysms)) for c in LOCATION_COLS}
    labels[PRESENT_COL] = int(bool(anatomy.aneurysms))

    if with_segmentation and labels_map is not None:
        seg_dir = out / "segmentations" / uids["series"]
        seg_dir.mkdir(parents=True, exist_ok=True)
        # The image volume holds what the DICOM files decode to (stored * slope + intercept), as a converter would.
        decoded = np.stack([enc.encode(image[k], k) * np.float32(enc.slope[k]) + np.float32(enc.intercept)
                            for k in range(image.shape[0])])
        vol = decoded.astype(np.int16) if modality == "CTA" else decoded.astype(np.float32)
        _write_nifti(seg_dir / f"{uids['series']}.nii", vol, acq.affine)
        _write_nifti(seg_dir / f"{uids['series']}_cowseg.nii", labels_map, acq.affine)

    truth = {
        ID_COL: uids["series"], "index": int(index), "seed": int(seed), "split": split, "size": size,
        "modality": modality, "plane": acq.plane, "tilt_deg": round(acq.tilt_deg, 3), "three_d": acq.three_d,
        "shape_zyx": list(acq.shape), "affine": acq.affine.round(6).tolist(),
        "pixel_spacing": list(acq.pixel_spacing), "slice_spacing": acq.slice_spacing,
        "head_to_lps": anatomy.head_to_lps.round(8).tolist(), "aneurysms": aneurysm_truth,
        "variants": json.loads(json.dumps(anatomy.variants, default=str)), "quirks": quirks.as_dict(),
        "mimics": [{"kind": m["kind"], "vessel": m["vessel"], "centre_lps": np.round(m["centre_lps"], 4).tolist()}
                   for m in anatomy.mimics],
        "segmentation": bool(with_segmentation), "n_files": len(written.files) + len(written.extras),
    }
    age = int(np.clip(rng.normal(58, 14), 18, 90))
    sex = "Female" if rng.random() < 0.6 else "Male"
    return SeriesResult(uids["series"], modality, labels, age, sex, localizers, truth)


def _checked_dome_range(dome_range: tuple[float, float]) -> tuple[float, float]:
    lo, hi = float(dome_range[0]), float(dome_range[1])
    if not 0 < lo <= hi:
        raise ValueError(f"dome range must satisfy 0 < low <= high, got {dome_range}")
    return lo, hi


def supplement_draw(seed: int, index: int, dome_range: tuple[float, float]) -> tuple[list[str], float]:
    """Locations (at least one, competition frequencies) and dome diameter of series ``index`` of a dome-range
    supplement: drawn from their own stream, so the head, scanner and noise are the generator's as for any series."""
    lo, hi = _checked_dome_range(dome_range)
    rng = np.random.default_rng([int(seed), int(index), 1])
    return sample_locations(rng, force_positive=True), float(rng.uniform(lo, hi))


def _job(args: tuple) -> SeriesResult:
    out, index, seed, split, size, dome_range, segmentations = args
    try:
        locations, dome_mm = supplement_draw(seed, index, dome_range) if dome_range else (None, None)
        return generate_series(out, index, seed, split=split, size=size, locations=locations, dome_mm=dome_mm,
                               segmentations=segmentations)
    except Exception as exc:
        raise RuntimeError(f"phantom series {index} of seed {seed} ({split}, {size}) failed: {exc!r}") from exc


def generate_dataset(
    out: str | os.PathLike[str],
    n: int,
    seed: int = 0,
    *,
    split: str = "train",
    size: str = "small",
    workers: int = 1,
    progress: bool = True,
    dome_range: tuple[float, float] | None = None,
    segmentations: bool = True,
) -> list[SeriesResult]:
    """Write ``n`` series and the competition CSVs for ``split`` into ``out``; returns the per-series results.

    ``dome_range`` (low, high mm) makes a training supplement: every series positive, each sac a sphere with a
    diameter drawn uniformly in the range (e.g. 2-4 mm: many more small domes than the drawn sizes give).
    ``segmentations=False`` writes none (the draw is kept, so the series are the same bytes)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if dome_range is not None:
        _checked_dome_range(dome_range)  # a bad range fails here, not in a worker
    jobs = [(str(out), i, seed, split, size, dome_range, segmentations) for i in range(n)]
    results: Iterable[SeriesResult]
    if workers <= 1:
        results = (_job(j) for j in jobs)
        results = list(tqdm(results, total=n, desc=f"phantoms {split}", disable=not progress))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(tqdm(pool.map(_job, jobs, chunksize=1), total=n, desc=f"phantoms {split}",
                                disable=not progress))
    write_tables(out, list(results), split)
    return list(results)


def write_tables(out: Path, results: list[SeriesResult], split: str) -> None:
    """The competition CSVs (train: train.csv + train_localizers.csv; test: test.csv + solution.csv) and truth."""
    if split == "train":
        rows = [{ID_COL: r.series_uid, "PatientAge": r.age, "PatientSex": r.sex, "Modality": r.modality, **r.labels}
                for r in results]
        pd.DataFrame(rows, columns=TRAIN_CSV_COLS).to_csv(out / "train.csv", index=False)
        locs = [loc for r in results for loc in r.localizers]
        pd.DataFrame(locs, columns=LOCALIZER_COLS).to_csv(out / "train_localizers.csv", index=False)
    else:
        pd.DataFrame({ID_COL: [r.series_uid for r in results]}).to_csv(out / "test.csv", index=False)
        sol = [{ID_COL: r.series_uid, **{c: r.labels[c] for c in LABEL_COLS}} for r in results]
        pd.DataFrame(sol, columns=[ID_COL, *LABEL_COLS]).to_csv(out / "solution.csv", index=False)
    with open(out / TRUTH_FILE, "w") as fh:
        for r in results:
            fh.write(json.dumps(r.truth, sort_keys=True) + "\n")


def load_truth(out: str | os.PathLike[str]) -> dict[str, dict]:
    """Ground truth written by ``generate_dataset``: SeriesInstanceUID -> record."""
    return read_jsonl_by(Path(out) / TRUTH_FILE, ID_COL)
