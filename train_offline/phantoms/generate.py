"""Generator API: one phantom series (DICOM + labels + ground truth), or a whole dataset in the competition layout.

``generate_series`` is a pure function of (seed, index, split, size): the per-series generator is seeded with
``(seed, index)``, so the worker count never changes the output. ``generate_dataset`` runs it in a process pool and
writes the CSVs, the segmentations for a subset of train series, and ``phantom_truth.jsonl`` (ground truth that the
competition does not give: aneurysm centres in LPS mm, the head pose, protocol and quirks; for tests and debugging).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm import tqdm

from kernel.jsonl import read_jsonl_by
from kernel.labels import ID_COL, LABEL_COLS, LOCALIZER_COLS, LOCATION_COLS, PRESENT_COL, TRAIN_CSV_COLS
from train_offline.phantoms.anatomy import build_anatomy, sample_locations
from train_offline.phantoms.dicom_writer import Quirks, choose_encoding, make_uid, sample_quirks, write_series
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


def _scout_plane(acq: Acquisition, rng: np.random.Generator) -> tuple[tuple[int, int], np.ndarray]:
    """(size (rows, columns), affine (z, y, x) -> LPS) of a localizer image through the field-of-view centre,
    orthogonal to the series, at a coarse pixel of its own."""
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
    return size, aff


def _scout(acq: Acquisition, anatomy, tissue, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The classic style's scout: the head rendered on the localizer plane."""
    size, aff = _scout_plane(acq, rng)
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


@dataclass
class Rendered:
    """One series rendered by any style, before encoding: the native stack, its geometry and what the truth needs."""

    image: np.ndarray  # float32 (Z, Y, X), physical units
    acq: Acquisition
    labels_map: np.ndarray | None
    head_to_lps: np.ndarray
    aneurysms: list[dict[str, Any]]  # location, centre_lps, parent_lps, centre_head_ras, dome_mm (head frame), ...
    variants: dict[str, Any]
    mimics: list[dict[str, Any]]
    scout: tuple[np.ndarray, np.ndarray] | None = None  # (image (Y, X), affine) when the quirks ask for one


def _render_classic(rng: np.random.Generator, modality: str, locations: list[str], size: str, split: str,
                    with_labels: bool, dome_mm: float | None, n_slices: int | None, transfer_syntax: str | None,
                    quirks_override: dict[str, object] | None) -> tuple[Rendered, Quirks]:
    """The original renderer (style ``classic``), drawing from ``rng`` in its historical order (byte-identical)."""
    anatomy = build_anatomy(rng, locations, dome_mm=dome_mm)
    acq = sample_acquisition(rng, modality, anatomy, size)
    if n_slices is not None:
        shift = (n_slices - acq.shape[0]) / 2 * acq.slice_spacing
        acq.origin = acq.origin - shift * acq.normal
        acq.shape = (int(n_slices), acq.shape[1], acq.shape[2])
    tissue, sigma, rician, bias = sample_tissue(rng, modality, acq.three_d)
    quirks = _quirks(rng, modality, split, transfer_syntax, quirks_override)
    image, labels_map = render(acq.grid, anatomy, tissue, rng, noise_sigma=sigma, rician=rician, bias=bias,
                               with_labels=with_labels)
    aneurysms = [{"location": a.location, "centre_lps": a.centre_lps, "parent_lps": a.parent_lps,
                  "centre_head_ras": a.centre_ras, "dome_mm": a.dome_mm, "neck_mm": a.neck_mm, "bleb": a.has_bleb}
                 for a in anatomy.aneurysms]
    mimics = [{"kind": m["kind"], "vessel": m["vessel"], "centre_lps": np.round(m["centre_lps"], 4).tolist()}
              for m in anatomy.mimics]
    rendered = Rendered(image, acq, labels_map, anatomy.head_to_lps, aneurysms,
                        json.loads(json.dumps(anatomy.variants, default=str)), mimics)
    if quirks.scout:
        rendered.scout = _scout(acq, anatomy, tissue, rng)
    return rendered, quirks


def _render_style(style: str, rng: np.random.Generator, modality: str, locations: list[str], size: str, split: str,
                  with_labels: bool, dome_mm: float | None, transfer_syntax: str | None,
                  quirks_override: dict[str, object] | None) -> tuple[Rendered, Quirks]:
    """A series of an independently written style (``styles.STYLES``), through the same quirks and writer."""
    from train_offline.phantoms.styles import render_with

    scan = render_with(style, rng, modality, locations, size, dome_mm=dome_mm, with_labels=with_labels)
    acq = Acquisition(modality_name=modality, plane=scan.plane, row_dir=np.asarray(scan.row_dir, dtype=float),
                      col_dir=np.asarray(scan.col_dir, dtype=float),
                      pixel_spacing=(float(scan.pixel_spacing[0]), float(scan.pixel_spacing[1])),
                      slice_spacing=float(scan.slice_spacing), slice_thickness=float(scan.slice_thickness),
                      shape=tuple(int(v) for v in scan.image.shape), origin=np.asarray(scan.origin, dtype=float),
                      n_sub=1, tilt_deg=float(scan.tilt_deg), three_d=bool(scan.three_d))
    quirks = _quirks(rng, modality, split, transfer_syntax, quirks_override)
    scale = float(abs(np.linalg.det(np.asarray(scan.head_to_lps, dtype=float)[:3, :3])) ** (1 / 3))
    to_head = np.linalg.inv(np.asarray(scan.head_to_lps, dtype=float))
    aneurysms = [{"location": a.location, "centre_lps": np.asarray(a.centre_lps, dtype=float),
                  "parent_lps": np.asarray(a.parent_lps, dtype=float),
                  "centre_head_ras": to_head[:3, :3] @ np.asarray(a.centre_lps, dtype=float) + to_head[:3, 3],
                  "dome_mm": a.dome_mm / scale, "neck_mm": a.neck_mm / scale, "bleb": bool(a.bleb), "shape": a.shape}
                 for a in scan.aneurysms]  # sizes in the head frame, as the classic truth (domes.load_domes)
    rendered = Rendered(scan.image, acq, scan.labels_map, np.asarray(scan.head_to_lps, dtype=float), aneurysms,
                        json.loads(json.dumps(scan.truth, default=str)), [])
    if quirks.scout:
        rendered.scout = _scout_from_volume(acq, scan.image, rng)
    return rendered, quirks


def _quirks(rng: np.random.Generator, modality: str, split: str, transfer_syntax: str | None,
            overrides: dict[str, object] | None) -> Quirks:
    quirks = sample_quirks(rng, modality, split, transfer_syntax)
    for key, value in (overrides or {}).items():
        if key not in quirks.__dataclass_fields__:
            raise ValueError(f"unknown quirk {key!r}; known: {sorted(quirks.__dataclass_fields__)}")
        setattr(quirks, key, value)
    return quirks


def _scout_from_volume(acq: Acquisition, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray,
                                                                                              np.ndarray]:
    """A scout for a style without a renderer of its own planes: its volume sampled on the localizer plane
    (linear; outside the volume its darkest percentile)."""
    from scipy.ndimage import map_coordinates

    size, aff = _scout_plane(acq, rng)
    rr, cc = np.mgrid[: size[0], : size[1]]
    lps = aff[:3, 3] + rr[..., None] * aff[:3, 1] + cc[..., None] * aff[:3, 2]
    vox = (lps - acq.origin) @ np.linalg.inv(acq.affine[:3, :3]).T
    fill = float(np.percentile(image[:, ::8, ::8], 1))
    values = map_coordinates(image, vox.reshape(-1, 3).T, order=1, mode="constant", cval=fill)
    return values.reshape(size).astype(np.float32), aff


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
    style: str = "classic",
) -> SeriesResult:
    """Generate series ``index`` of dataset ``seed`` under ``out/series/<uid>/``; returns its labels and ground truth.

    ``style`` picks the renderer (``classic``, the original, or one of ``styles.STYLES``); the labels, modality,
    UIDs and file quirks are drawn the same way for every style. Optional overrides (modality, locations, transfer
    syntax, slice count (classic only), quirks, ``dome_mm``: every sac a sphere of that diameter in patient mm) are
    for tests and benchmarks; by default everything is drawn from the series generator. ``segmentations=False``
    writes no segmentation but draws as with it.
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
    if style == "classic":
        rendered, quirks = _render_classic(rng, modality, locations, size, split, with_segmentation, dome_mm,
                                           n_slices, transfer_syntax, quirks_override)
    elif n_slices is not None:
        raise ValueError(f"n_slices is a classic-style override (style {style!r})")
    else:
        rendered, quirks = _render_style(style, rng, modality, locations, size, split, with_segmentation, dome_mm,
                                         transfer_syntax, quirks_override)
    enc = choose_encoding(rng, rendered.image, modality, quirks)  # MR: scales the image in place
    extra = {"scout": rendered.scout} if rendered.scout is not None else None
    if extra:
        extra["scout"][0][...] *= np.float32(enc.value_scale)  # the scout shares the series' scale
    written = write_series(out / "series" / uids["series"], rendered.image, rendered.acq, enc, quirks, uids, rng,
                           extra)
    localizers, aneurysm_truth = _localizers(rendered, written, uids["series"], quirks.multiframe)
    labels = {c: int(any(a["location"] == c for a in rendered.aneurysms)) for c in LOCATION_COLS}
    labels[PRESENT_COL] = int(bool(rendered.aneurysms))
    if with_segmentation and rendered.labels_map is not None:
        _write_segmentation(out / "segmentations" / uids["series"], uids["series"], rendered, enc, modality)
    truth = _truth(rendered, quirks, aneurysm_truth, uids["series"], index, seed, split, size, modality, style,
                   bool(with_segmentation), len(written.files) + len(written.extras))
    age = int(np.clip(rng.normal(58, 14), 18, 90))
    sex = "Female" if rng.random() < 0.6 else "Male"
    return SeriesResult(uids["series"], modality, labels, age, sex, localizers, truth)


def _localizers(rendered: Rendered, written, series_uid: str, multiframe: bool) -> tuple[list[dict], list[dict]]:
    """The competition's localizer rows (nearest native slice, pixel column/row) and the truth's aneurysm records."""
    localizers, truth = [], []
    for a in rendered.aneurysms:
        sop, frame, col, row = _localizer(rendered.acq, written, a["centre_lps"])
        coords = {"x": round(col, 2), "y": round(row, 2)}
        if multiframe:
            coords["f"] = frame
        localizers.append({ID_COL: series_uid, "SOPInstanceUID": sop, "coordinates": str(coords),
                           "location": a["location"]})
        record = {
            "location": a["location"], "centre_lps": np.asarray(a["centre_lps"]).round(4).tolist(),
            "parent_lps": np.asarray(a["parent_lps"]).round(4).tolist(),
            "centre_head_ras": np.asarray(a["centre_head_ras"]).round(4).tolist(),
            "dome_mm": round(float(a["dome_mm"]), 3), "neck_mm": round(float(a["neck_mm"]), 3), "bleb": a["bleb"],
            "sop_uid": sop, "frame": frame, "x": round(col, 2), "y": round(row, 2),
        }
        if "shape" in a:
            record["shape"] = a["shape"]
        truth.append(record)
    return localizers, truth


def _write_segmentation(seg_dir: Path, series_uid: str, rendered: Rendered, enc, modality: str) -> None:
    """``<uid>.nii`` (what the DICOM files decode to, as a converter would write it) and ``<uid>_cowseg.nii``."""
    seg_dir.mkdir(parents=True, exist_ok=True)
    image = rendered.image
    decoded = np.stack([enc.encode(image[k], k) * np.float32(enc.slope[k]) + np.float32(enc.intercept)
                        for k in range(image.shape[0])])
    vol = decoded.astype(np.int16) if modality == "CTA" else decoded.astype(np.float32)
    _write_nifti(seg_dir / f"{series_uid}.nii", vol, rendered.acq.affine)
    _write_nifti(seg_dir / f"{series_uid}_cowseg.nii", rendered.labels_map, rendered.acq.affine)


def _truth(rendered: Rendered, quirks: Quirks, aneurysms: list[dict], series_uid: str, index: int, seed: int,
           split: str, size: str, modality: str, style: str, segmentation: bool, n_files: int) -> dict[str, Any]:
    """The series' ``phantom_truth.jsonl`` record (``style`` only when not ``classic``, so classic sets keep their
    bytes)."""
    acq = rendered.acq
    truth = {
        ID_COL: series_uid, "index": int(index), "seed": int(seed), "split": split, "size": size,
        "modality": modality, "plane": acq.plane, "tilt_deg": round(acq.tilt_deg, 3), "three_d": acq.three_d,
        "shape_zyx": list(acq.shape), "affine": acq.affine.round(6).tolist(),
        "pixel_spacing": list(acq.pixel_spacing), "slice_spacing": acq.slice_spacing,
        "head_to_lps": rendered.head_to_lps.round(8).tolist(), "aneurysms": aneurysms,
        "variants": rendered.variants, "quirks": quirks.as_dict(), "mimics": rendered.mimics,
        "segmentation": segmentation, "n_files": n_files,
    }
    if style != "classic":
        truth["style"] = style
    return truth


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


def series_style(styles: Sequence[str], seed: int, index: int) -> str:
    """The style of series ``index`` of a dataset over ``styles`` (one: that one; several: drawn uniformly from its
    own stream, so a series' content does not depend on which other styles the set mixes in)."""
    if len(styles) == 1:
        return styles[0]
    return str(styles[int(np.random.default_rng([int(seed), int(index), 2]).integers(len(styles)))])


def _job(args: tuple) -> SeriesResult:
    out, index, seed, split, size, dome_range, segmentations, styles = args
    style = series_style(styles, seed, index)
    try:
        locations, dome_mm = supplement_draw(seed, index, dome_range) if dome_range else (None, None)
        return generate_series(out, index, seed, split=split, size=size, locations=locations, dome_mm=dome_mm,
                               segmentations=segmentations, style=style)
    except Exception as exc:
        raise RuntimeError(f"phantom series {index} of seed {seed} ({split}, {size}, style {style}) failed: "
                           f"{exc!r}") from exc


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
    styles: Sequence[str] = ("classic",),
) -> list[SeriesResult]:
    """Write ``n`` series and the competition CSVs for ``split`` into ``out``; returns the per-series results.

    ``dome_range`` (low, high mm) makes a training supplement: every series positive, each sac a sphere with a
    diameter drawn uniformly in the range (e.g. 2-4 mm: many more small domes than the drawn sizes give).
    ``segmentations=False`` writes none (the draw is kept, so the series are the same bytes). ``styles``: the
    renderers (one, or several mixed, ``series_style``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if dome_range is not None:
        _checked_dome_range(dome_range)  # a bad range fails here, not in a worker
    from train_offline.phantoms.styles import check_styles

    styles = check_styles(styles)
    jobs = [(str(out), i, seed, split, size, dome_range, segmentations, tuple(styles)) for i in range(n)]
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
