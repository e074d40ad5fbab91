"""Index of a competition-layout folder: labels, modality, localizers in canonical voxels, Circle-of-Willis centres.

    python -m train_offline.index --data DIR --cache DIR --out index.csv [--lenient]

Localizers ``{'x': col, 'y': row[, 'f': frame]}`` on a SOP go to LPS through the cached volume's native geometry
(``kernel.preprocess.localizer_to_lps``), then to voxel coordinates of the canonical cached volume. The frame key
``'f'`` (multi-frame files; unconfirmed in the real data) is read as a 0-based frame index; without it frame 0.
Positive series without localizers are kept (labels only). Where ``segmentations/<uid>/<uid>_cowseg.nii`` exists,
the Circle-of-Willis centre is the mean of the centroids of the central vessel classes (the locator's target).
The ``style`` column names the phantom renderer of each series (``series_styles``: from ``phantom_truth.jsonl``,
``classic`` where a record has no ``style`` key; ``unknown`` without that file, as for the competition data), so
one mixed phantom set serves every leave-one-style-out training (``data.styles``).
Bad input (missing column, NaN label, malformed coordinates, a SOP that is not an image of its series) raises
DataIndexError with every problem listed; the CLI prints it and exits 2 without a traceback.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from kernel.jsonl import read_jsonl
from kernel.labels import ID_COL, LABEL_COLS, LOCALIZER_COLS, LOCATION_COLS, MODALITY_NAMES, SEG_LABEL_VALUES
from kernel.preprocess import localizer_to_lps, world_to_voxel
from train_offline.cache import is_cached, load_cached

__all__ = [
    "CENTRAL_SEG_LABELS", "UNKNOWN_STYLE", "DataIndexError", "build_index", "cow_centre_from_seg", "load_index",
    "main", "parse_coordinates", "read_labels", "read_localizers", "seg_path", "series_styles",
]

# Vessel classes around the circle itself (basilar tip, PComms, supraclinoid ICAs, AComm): their mean centroid is a
# stable Circle-of-Willis centre (the long ICA, MCA and posterior branches would pull a plain centroid away).
CENTRAL_SEG_LABELS = [SEG_LABEL_VALUES[n] for n in (
    "Basilar Tip", "Right Posterior Communicating Artery", "Left Posterior Communicating Artery",
    "Right Supraclinoid Internal Carotid Artery", "Left Supraclinoid Internal Carotid Artery",
    "Anterior Communicating Artery")]
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
UNKNOWN_STYLE = "unknown"  # a series that is not a phantom (or not in its folder's phantom_truth.jsonl)


class DataIndexError(ValueError):
    """The competition CSVs or the cache disagree with what the index needs; the message lists every problem."""


def read_labels(path: Path) -> pd.DataFrame:
    """train.csv with its ID, Modality and 14 label columns checked (0/1, no NaN, known modality, unique IDs)."""
    try:
        frame = pd.read_csv(path, dtype={ID_COL: str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataIndexError(f"cannot read {path}: {exc}") from exc
    problems = []
    missing = [c for c in (ID_COL, "Modality", *LABEL_COLS) if c not in frame.columns]
    if missing:
        raise DataIndexError(f"{path}: missing column(s) {missing}")
    for col in LABEL_COLS:
        bad = frame[~frame[col].isin([0, 1])]
        if len(bad):
            problems.append(f"{path.name}: column {col!r} must be 0 or 1 (NaN or other values in {len(bad)} rows, "
                            f"e.g. series {bad[ID_COL].iloc[0]})")
    unknown = sorted(set(frame["Modality"]) - set(MODALITY_NAMES))
    if unknown:
        problems.append(f"{path.name}: unknown Modality values {unknown}; expected {MODALITY_NAMES}")
    dup = frame[ID_COL][frame[ID_COL].duplicated()]
    if len(dup):
        problems.append(f"{path.name}: duplicate {ID_COL} {sorted(set(dup))[:3]}")
    if problems:
        raise DataIndexError("\n  - ".join(["bad labels:", *problems]))
    frame[LABEL_COLS] = frame[LABEL_COLS].astype(int)
    return frame


def parse_coordinates(text: str) -> tuple[float, float, int]:
    """``"{'x': 258.3, 'y': 261.3[, 'f': 4]}"`` -> (x, y, frame); ValueError on anything else (no eval)."""
    try:
        value = ast.literal_eval(str(text))
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"not a dict literal: {text!r}") from exc
    if not isinstance(value, dict) or "x" not in value or "y" not in value:
        raise ValueError(f"coordinates need 'x' and 'y' keys: {text!r}")
    x, y, frame = value["x"], value["y"], value.get("f", 0)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in (x, y, frame)):
        raise ValueError(f"coordinates must be finite numbers: {text!r}")
    if frame < 0 or int(frame) != frame:
        raise ValueError(f"frame 'f' must be a non-negative integer: {text!r}")
    return float(x), float(y), int(frame)


def read_localizers(path: Path, labels: pd.DataFrame) -> pd.DataFrame:
    """train_localizers.csv with parsed x, y, frame; checks columns, locations, series membership."""
    try:
        frame = pd.read_csv(path, dtype={ID_COL: str, "SOPInstanceUID": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataIndexError(f"cannot read {path}: {exc}") from exc
    missing = [c for c in LOCALIZER_COLS if c not in frame.columns]
    if missing:
        raise DataIndexError(f"{path}: missing column(s) {missing}")
    problems, parsed = [], []
    for uid, sop, coords, location in frame[LOCALIZER_COLS].itertuples(index=False, name=None):
        try:
            parsed.append(parse_coordinates(coords))
        except ValueError as exc:
            problems.append(f"{path.name}: series {uid} SOP {sop}: {exc}")
            parsed.append((math.nan, math.nan, 0))
        if location not in LOCATION_COLS:
            problems.append(f"{path.name}: series {uid}: unknown location {location!r}")
    unknown = sorted(set(frame[ID_COL]) - set(labels[ID_COL]))
    if unknown:
        problems.append(f"{path.name}: {len(unknown)} series not in train.csv, e.g. {unknown[:3]}")
    if problems:
        raise DataIndexError("\n  - ".join(["bad localizers:", *problems[:20]]))
    frame["x"] = [p[0] for p in parsed]
    frame["y"] = [p[1] for p in parsed]
    frame["frame"] = [p[2] for p in parsed]
    return frame


def seg_path(data_dir: Path, uid: str) -> Path:
    return data_dir / "segmentations" / uid / f"{uid}_cowseg.nii"


def cow_centre_from_seg(path: Path, labels: Sequence[int] = CENTRAL_SEG_LABELS) -> np.ndarray | None:
    """LPS Circle-of-Willis centre: mean of the LPS centroids of the central vessel classes present (None if none)."""
    import nibabel as nib

    image = nib.load(str(path))
    seg = np.asarray(image.dataobj)
    lps_affine = RAS_TO_LPS @ image.affine
    centroids = []
    for value in labels:
        ijk = np.argwhere(seg == value)
        if len(ijk):
            centroids.append(ijk.mean(axis=0) @ lps_affine[:3, :3].T + lps_affine[:3, 3])
    return np.mean(centroids, axis=0) if centroids else None


def series_styles(data_dir: Path) -> dict[str, str]:
    """SeriesInstanceUID -> phantom style from ``<data_dir>/phantom_truth.jsonl`` (a record without ``style`` is
    ``classic``: the generator writes the key only for the other styles); {} without that file."""
    records = read_jsonl(data_dir / "phantom_truth.jsonl", missing_ok=True)
    return {str(r[ID_COL]): str(r.get("style", "classic")) for r in records if ID_COL in r}


def build_index(data_dir: Path, cache_dir: Path, *, lenient: bool = False, progress: bool = True) -> pd.DataFrame:
    """One row per cached series: labels, modality, seg file, CoW centre (LPS), localizers (JSON, LPS + voxel),
    phantom style."""
    labels = read_labels(data_dir / "train.csv")
    loc_path = data_dir / "train_localizers.csv"
    localizers = read_localizers(loc_path, labels) if loc_path.is_file() else pd.DataFrame(
        columns=[*LOCALIZER_COLS, "x", "y", "frame"])
    by_uid = {uid: g for uid, g in localizers.groupby(ID_COL)}
    styles = series_styles(data_dir)
    rows, problems, not_cached = [], [], []
    for rec in tqdm(labels.to_dict("records"), desc="index", disable=not progress):
        uid = rec[ID_COL]
        if not is_cached(cache_dir, uid):
            not_cached.append(uid)
            continue
        volume = load_cached(cache_dir, uid, mmap=True)
        points = []
        for loc in by_uid.get(uid, pd.DataFrame()).itertuples(index=False):
            try:
                lps = localizer_to_lps(volume, loc.SOPInstanceUID, loc.x, loc.y, loc.frame)
            except KeyError as exc:
                message = f"series {uid}: {exc.args[0] if exc.args else exc}"
                (print(f"warning: {message}; localizer skipped", file=sys.stderr) if lenient
                 else problems.append(message))
                continue
            voxel = world_to_voxel(volume.affine, lps[None])[0]
            points.append({"location": loc.location, "lps": [round(float(v), 3) for v in lps],
                           "voxel": [round(float(v), 3) for v in voxel]})
        seg = seg_path(data_dir, uid)
        centre = cow_centre_from_seg(seg) if seg.is_file() else None
        row = {ID_COL: uid, "patient": str(rec.get("PatientID", uid)), "Modality": rec["Modality"],
               **{c: int(rec[c]) for c in LABEL_COLS},
               "seg_file": os.path.relpath(seg, data_dir) if seg.is_file() else "",
               "centre_lps": json.dumps(None if centre is None else [round(float(v), 3) for v in centre]),
               "localizers": json.dumps(points), "n_localizers": len(points),
               "dicom_modality": volume.modality, "shape": json.dumps(list(volume.array.shape)),
               "style": styles.get(uid, UNKNOWN_STYLE)}
        rows.append(row)
    if problems:
        raise DataIndexError("\n  - ".join(["localizers that do not map to an image of their series "
                                         "(use --lenient to skip them):", *problems[:20]]))
    if not_cached:
        print(f"warning: {len(not_cached)} series of train.csv are not in the cache (skipped), e.g. "
              f"{not_cached[:3]}", file=sys.stderr)
    index = pd.DataFrame(rows)
    positives_without = index[(index["Aneurysm Present"] == 1) & (index["n_localizers"] == 0)] if len(index) else []
    if len(positives_without):
        print(f"note: {len(positives_without)} positive series have no localizer (kept, labels only)", file=sys.stderr)
    return index


def load_index(path: Path) -> pd.DataFrame:
    """Read an index CSV written by ``build_index`` (IDs as strings)."""
    return pd.read_csv(path, dtype={ID_COL: str, "patient": str, "seg_file": str}, keep_default_na=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train_offline.index", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="competition-layout folder (train.csv, ...)")
    parser.add_argument("--cache", type=Path, required=True, help="precache_all output folder")
    parser.add_argument("--out", type=Path, required=True, help="index CSV to write")
    parser.add_argument("--lenient", action="store_true", help="skip localizers whose SOP is not in the series")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        index = build_index(args.data, args.cache, lenient=args.lenient, progress=not args.no_progress)
    except DataIndexError as exc:
        print(f"index failed: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    index.to_csv(args.out, index=False)
    print(f"wrote {args.out}: {len(index)} series, {int(index['n_localizers'].sum())} localizers, "
          f"{int((index['seg_file'] != '').sum())} with segmentations; styles "
          f"{dict(sorted(index['style'].value_counts().items()))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
