"""Findings a radiologist's viewer can open: the kernel's candidate aneurysm sites, per series, as files.

``python -m kernel.findings DIR --out OUT`` runs the kernel's own ``kernel.predict.Predictor`` (the same isolated
read worker, limits and fallback; a time budget that never degrades) on one series folder or a folder of series
folders and writes, per series, ``OUT/<folder name>/``:

- ``findings.json``: the series' UIDs, modality (as read and as inferred), the 14 probabilities, and each candidate
  site as a finding: LPS point, the nearest native image (SOPInstanceUID, frame, pixel column/row as in
  ``train_localizers.csv``), probability, location and its probability, the stage that scored it; the weights'
  manifest sha256 and the kit version. Schema: ``kernel/findings.schema.json``.
- ``findings.mrk.json``: a 3D Slicer markups fiducial list (LPS, mm), one control point per finding at or above the
  threshold.
- ``findings_sr.dcm``: a DICOM Comprehensive 3D SR (TID 1500) of the same findings (``kernel.findings_sr``; needs
  highdicom, which the Kaggle kernel never imports).
- ``explain.png``: the ``kernel.explain`` page, whose numbered candidates are the JSON's findings.

Resumable: every file is written to a temporary name and renamed, ``findings.json`` last; a series whose
``findings.json`` lists every requested output is skipped on a rerun, and a killed writer's temporary files are
removed when its series is done again. ``OUT/summary.csv`` holds one row per series.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kernel.labels import LABEL_COLS, LOCATION_COLS, MODALITY_NAMES, PRESENT_COL
from kernel.volume import Volume

if TYPE_CHECKING:
    from kernel.budget import TimeBudget

__all__ = [
    "ALL_FORMATS", "DEFAULT_THRESHOLD", "FINDINGS_FORMAT", "FORMAT_FILES", "ImageRef", "SUMMARY_COLUMNS",
    "default_formats", "findings_record", "is_complete", "kit_version", "main", "markups", "nearest_image",
    "never_degrading_budget", "run_findings", "series_folders", "write_series",
]

FINDINGS_FORMAT = "1.0"  # version of findings.json's layout (kernel/findings.schema.json)
DEFAULT_THRESHOLD = 0.5
FORMAT_FILES = {"json": "findings.json", "mrk": "findings.mrk.json", "sr": "findings_sr.dcm", "png": "explain.png"}
ALL_FORMATS = tuple(FORMAT_FILES)
SUMMARY_COLUMNS = ["uid", "status", "p_present", "n_findings", "seconds", "reason"]
MARKUPS_SCHEMA_URL = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
                      "Schema/markups-schema-v1.0.3.json#")
_TMP_TAG = ".tmp-"  # temporary files are ".<name>.tmp-<pid>"; a killed writer's are removed on the next pass


# --- geometry: a point -> the nearest native image -------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRef:
    """The native image nearest a point and the point's pixel position on it (``train_localizers.csv`` convention:
    column ``x``, row ``y``, pixel centres at integers; ``kernel.preprocess.localizer_to_lps`` is the inverse)."""

    sop_uid: str
    frame: int  # 0-based frame of a multi-frame file (0 for a single-frame file)
    multi_frame: bool
    column: float
    row: float
    distance_mm: float  # from the point to the image's plane


def nearest_image(volume: Volume, point_lps: Sequence[float]) -> ImageRef | None:
    """The kept image whose plane passes nearest ``point_lps`` and the point's projection on it in pixels; None
    without per-image geometry (``frame_geometry`` of the kept images)."""
    keys = [k for k in volume.slice_lookup if k in volume.frame_geometry]
    if not keys:
        return None
    point = np.asarray(point_lps, dtype=np.float64).reshape(3)
    geoms = [volume.frame_geometry[k] for k in keys]
    positions = np.array([g.position for g in geoms])
    normals = np.cross([g.row_dir for g in geoms], [g.col_dir for g in geoms])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    distance = np.einsum("ij,ij->i", point - positions, normals)
    best = int(np.argmin(np.abs(distance)))
    g = geoms[best]
    # Solve position + col * dx * row_dir + row * dy * col_dir = the point's projection (exact for oblique planes).
    basis = np.stack([np.asarray(g.row_dir) * g.pixel_spacing[1], np.asarray(g.col_dir) * g.pixel_spacing[0]], axis=1)
    (col, row), *_ = np.linalg.lstsq(basis, point - positions[best], rcond=None)
    sop, frame = keys[best]
    frames_of_sop = sum(1 for s, _ in volume.slice_lookup if s == sop)
    return ImageRef(sop, int(frame), frames_of_sop > 1 or frame > 0, float(col), float(row),
                    float(abs(distance[best])))


# --- the record (findings.json) --------------------------------------------------------------------------------------


def kit_version() -> str:
    """``kernel-<sha256 of kernel/*.py, 12 hex>``: names the exact kernel code, in the repository and in the built
    single-file kernel (which writes the same files)."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return f"kernel-{digest.hexdigest()[:12]}"


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _finding(index: int, point: np.ndarray, probability: float, channel_logits: np.ndarray, stage: str,
             threshold: float, volume: Volume) -> dict[str, Any]:
    """One candidate as a finding: its point, nearest image, probability, location (the heatmap cell's softmax over
    the 13 channels, the assignment ``recipe.fuse`` uses) and the stage that scored it."""
    from kernel.explain import candidate_label

    assign = _softmax(np.asarray(channel_logits, dtype=np.float64))
    location = LOCATION_COLS[int(np.argmax(assign))]
    ref = nearest_image(volume, point)
    image = None
    if ref is not None:
        coordinates: dict[str, Any] = {"x": round(ref.column, 4), "y": round(ref.row, 4)}
        if ref.multi_frame:
            coordinates["f"] = ref.frame
        image = {"SOPInstanceUID": ref.sop_uid, "SOPClassUID": volume.sop_class_uids.get(ref.sop_uid),
                 "frame": ref.frame if ref.multi_frame else None,
                 "frame_number": ref.frame + 1 if ref.multi_frame else None,
                 "coordinates": coordinates, "distance_mm": round(ref.distance_mm, 4)}
    return {"index": index, "label": candidate_label(index, probability, location),
            "point_lps": [round(float(v), 4) for v in point], "probability": round(float(probability), 6),
            "above_threshold": bool(probability >= threshold), "location": location,
            "location_probability": round(float(assign.max()), 6), "stage": stage, "image": image}


def _placement_problem(volume: Volume | None) -> str | None:
    """Why the series' points cannot be placed in the patient's frame (None when they can)."""
    if volume is None:
        return "no volume: the series got the fallback row"
    if not volume.geometry_known:
        return ("no image position/orientation (e.g. a multi-frame file stripped of its functional groups): the "
                "volume's frame is not the patient's, so no point is given")
    if not volume.frame_of_reference_uid:
        return "no FrameOfReferenceUID in the files: points could not be tied to the patient's frame"
    return None


def findings_record(uid: str, record: Any, volume: Volume | None, prediction: Any, row: Sequence[float], *,
                    stage: str, threshold: float, manifest_sha256: str | None) -> dict[str, Any]:
    """``findings.json`` of one predict call (``record``: its ``kernel.predict.CallRecord``; ``volume`` and
    ``prediction``: what the predictor kept, None after a fallback; ``row``: the 14 probabilities returned)."""
    problem = _placement_problem(volume)
    findings: list[dict[str, Any]] = []
    n_candidates = 0
    if prediction is not None:
        n_candidates = len(prediction.candidates_lps)
        if problem is None:
            logits = np.asarray(prediction.candidate_channel_logits, dtype=np.float64).reshape(n_candidates, -1)
            findings = [_finding(k + 1, prediction.candidates_lps[k], float(prediction.candidate_probs[k]),
                                 logits[k], stage, threshold, volume) for k in range(n_candidates)]
    inferred = None if prediction is None else {
        "name": prediction.modality,
        "probabilities": {m: round(float(p), 6) for m, p in zip(MODALITY_NAMES, prediction.modality_probs,
                                                                 strict=True)}}
    status = "fallback" if record.level == "fallback" else ("ok" if problem is None else "not_placed")
    return {
        "format": FINDINGS_FORMAT,
        "SeriesInstanceUID": (volume.series_uid if volume is not None and volume.series_uid else uid),
        "StudyInstanceUID": (volume.study_uid or None) if volume is not None else None,
        "FrameOfReferenceUID": (volume.frame_of_reference_uid or None) if volume is not None else None,
        "series_folder": uid,
        "status": status,
        "reason": record.reason if status == "fallback" else problem,
        "level": record.level,
        "modality": {"dicom": volume.modality if volume is not None else None, "inferred": inferred},
        "probabilities": {c: round(float(p), 6) for c, p in zip(LABEL_COLS, row, strict=True)},
        "threshold": threshold,
        "candidates": n_candidates,
        "findings": findings,
        "geometry_known": None if volume is None else bool(volume.geometry_known),
        "dropped_files": 0 if volume is None else len(volume.dropped),
        "weights": {"manifest_sha256": manifest_sha256},
        "kit": {"version": kit_version(), "findings_format": FINDINGS_FORMAT},
        "outputs": {}, "skipped": {}, "seconds": {},
    }


# --- 3D Slicer markups -----------------------------------------------------------------------------------------------


def markups(record: dict[str, Any]) -> dict[str, Any]:
    """A 3D Slicer markups fiducial list (schema 1.0.3, LPS mm): one control point per finding at or above the
    threshold, labelled as on the explain PNG ("1: 0.81 L MCA")."""
    points = []
    for f in record["findings"]:
        if not f["above_threshold"]:
            continue
        image = f["image"] or {}
        points.append({
            "id": str(f["index"]),
            "label": f["label"],
            "description": (f"P(aneurysm) {f['probability']:.3f} ({f['stage']} stage); {f['location']} "
                            f"{f['location_probability']:.2f}; nearest image {image.get('SOPInstanceUID', '-')}"),
            "associatedNodeID": "", "position": list(f["point_lps"]),
            "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
            "selected": True, "locked": True, "visibility": True, "positionStatus": "defined",
        })
    return {"@schema": MARKUPS_SCHEMA_URL, "markups": [{
        "type": "Fiducial", "name": f"aneurysm findings {record['SeriesInstanceUID']}", "coordinateSystem": "LPS",
        "coordinateUnits": "mm", "locked": True, "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": len(points), "controlPoints": points, "measurements": [],
    }]}


# --- writing ---------------------------------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}{_TMP_TAG}{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=1, allow_nan=False) + "\n").encode()


def _clear_temporaries(folder: Path) -> None:
    """Remove what a killed writer left in a series folder (temporary files and the PNG's temporary folder)."""
    import shutil

    for path in folder.glob(f".*{_TMP_TAG}*"):
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def is_complete(folder: Path, formats: Iterable[str]) -> bool:
    """Whether a series folder holds a ``findings.json`` that lists every requested format as written (and present)
    or as skipped with a reason."""
    try:
        record = json.loads((folder / FORMAT_FILES["json"]).read_text())
    except (OSError, ValueError):
        return False
    for fmt in formats:
        if fmt == "json" or fmt in record.get("skipped", {}):
            continue
        name = record.get("outputs", {}).get(fmt)
        if not name or not (folder / name).is_file():
            return False
    return True


def never_degrading_budget() -> TimeBudget:
    """A ``kernel.budget.TimeBudget`` that always affords the full plan (no notebook limit here)."""
    from kernel.budget import TimeBudget

    return TimeBudget(limit_s=float("inf"), n_series=1, margin_s=0.0)


def _stage(predictor: Any, level: str) -> str:
    """"fine" when the call's plan ran the fine stage on the candidates (``recipe.predict_volume``), else
    "heatmap" (the classifier's heatmap cell scored them)."""
    plan = dict(predictor.plans()).get(level)
    fine = predictor.ensemble is not None and bool(predictor.ensemble.fine)
    return "fine" if fine and plan is not None and plan.candidates != 0 else "heatmap"


def _manifest_sha256(predictor: Any) -> str | None:
    from kernel.manifest import sha256_file

    try:
        return sha256_file(Path(predictor.manifest.weights_dir) / "manifest.json")
    except Exception:  # noqa: BLE001 - no manifest: the fallback row; the record says null
        return None


def _write_png(predictor: Any, record: dict[str, Any], row: Sequence[float], folder: Path) -> str:
    """The explain page (``kernel.explain.explain_call``), drawn into a temporary folder and renamed. Its numbered
    candidates are the JSON's findings (the title names those at or above the threshold); a series whose points are
    not placed is drawn without them."""
    from kernel.explain import explain_call

    uid, placed = record["series_folder"], record["status"] == "ok"
    above = [f"#{f['index']}" for f in record["findings"] if f["above_threshold"]]
    note = f"|  findings >= {record['threshold']:g}: {', '.join(above) or 'none'}" if placed else ""
    last = predictor.last
    if last is not None and not placed:
        prediction = last[2]
        predictor.last = (last[0], last[1], replace(prediction, candidates_lps=np.zeros((0, 3)),
                                                    candidate_probs=np.zeros(0), candidate_locations=()))
    tmp_dir = folder / f".png{_TMP_TAG}{os.getpid()}"
    tmp_dir.mkdir(exist_ok=True)
    try:
        drawn = explain_call(predictor, uid, list(row), None, tmp_dir, note)
        os.replace(drawn.path, folder / FORMAT_FILES["png"])
    finally:
        predictor.last = last
        import shutil

        shutil.rmtree(tmp_dir, ignore_errors=True)
    return FORMAT_FILES["png"]


def write_series(predictor: Any, series_dir: Path, out_root: Path, *, threshold: float = DEFAULT_THRESHOLD,
                 formats: Sequence[str] = ("json", "mrk", "png"), manifest_sha256: str | None = None) -> dict:
    """Predict one series and write its requested outputs into ``out_root/<folder name>/``; returns the record.

    Never raises for the series itself (the predictor falls back; a writer's failure is recorded in ``skipped``).
    """
    start = time.perf_counter()
    uid = Path(series_dir).name
    folder = Path(out_root) / uid
    folder.mkdir(parents=True, exist_ok=True)
    _clear_temporaries(folder)
    predictor.keep_last = True
    frame, call = predictor.predict(str(series_dir))
    row = [float(v) for v in frame.row(0)]
    last = predictor.last if predictor.last is not None and predictor.last[0] == uid else None
    volume, prediction = (last[1], last[2]) if last is not None else (None, None)
    record = findings_record(uid, call, volume, prediction, row, stage=_stage(predictor, call.level),
                             threshold=threshold, manifest_sha256=manifest_sha256)
    predicted = time.perf_counter() - start
    writers = {"mrk": lambda: _write_markups(record, folder),
               "sr": lambda: _write_sr(record, volume, series_dir, folder),
               "png": lambda: _write_png(predictor, record, row, folder)}
    for fmt in formats:
        if fmt in writers:
            try:
                record["outputs"][fmt] = writers[fmt]()
            except Exception as exc:  # noqa: BLE001 - one format failing must not lose the others
                record["skipped"][fmt] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    predictor.last = None  # do not hold the volume longer than needed
    record["outputs"]["json"] = FORMAT_FILES["json"]
    record["seconds"] = {"predict": round(predicted, 3), "total": round(time.perf_counter() - start, 3)}
    _write_atomic(folder / FORMAT_FILES["json"], _json_bytes(record))  # last: its presence marks the series done
    return record


def _write_markups(record: dict[str, Any], folder: Path) -> str:
    if record["status"] != "ok":
        raise ValueError(f"no markups: {record['reason']}")
    _write_atomic(folder / FORMAT_FILES["mrk"], _json_bytes(markups(record)))
    return FORMAT_FILES["mrk"]


def _write_sr(record: dict[str, Any], volume: Volume | None, series_dir: Path, folder: Path) -> str:
    from kernel.findings_sr import sr_bytes

    if record["status"] != "ok" or volume is None:
        raise ValueError(f"no SR: {record['reason']}")
    _write_atomic(folder / FORMAT_FILES["sr"], sr_bytes(record, volume.sop_class_uids, series_dir))
    return FORMAT_FILES["sr"]


# --- many series -----------------------------------------------------------------------------------------------------


def series_folders(root: Path) -> list[Path]:
    """The series to run: ``root`` itself when it holds files, else its subfolders (``root/series/`` first when
    present: a competition-layout folder), in name order."""
    root = Path(root)
    if (root / "series").is_dir():
        root = root / "series"
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    if any(p.is_file() for p in root.iterdir()):
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _summary_row(uid: str, record: dict[str, Any] | None) -> dict[str, Any]:
    if record is None:
        return {"uid": uid, "status": "missing", "p_present": "", "n_findings": "", "seconds": "", "reason": ""}
    return {"uid": uid, "status": record["status"], "p_present": record["probabilities"][PRESENT_COL],
            "n_findings": sum(f["above_threshold"] for f in record["findings"]),
            "seconds": record.get("seconds", {}).get("total", ""), "reason": record.get("reason") or ""}


def _write_summary(out_root: Path, rows: list[dict[str, Any]]) -> None:
    import io

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_atomic(out_root / "summary.csv", text.getvalue().encode())


def run_findings(series: Sequence[Path], out_root: Path, predictor: Any, *, threshold: float = DEFAULT_THRESHOLD,
                 formats: Sequence[str] = ("json", "mrk", "png"), progress: bool = True) -> list[dict[str, Any]]:
    """Write every series' findings (skipping those complete from an earlier run) and ``out_root/summary.csv``
    (rewritten after each series); returns the summary rows."""
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    sha = _manifest_sha256(predictor)
    records: dict[str, dict[str, Any] | None] = {}
    for path in series:
        folder = out_root / path.name
        records[path.name] = json.loads((folder / "findings.json").read_text()) if is_complete(folder, formats) \
            else None
    todo = [p for p in series if records[p.name] is None]
    from tqdm import tqdm

    bar = tqdm(todo, desc="findings", unit="series", disable=not progress or not todo)
    for path in bar:
        records[path.name] = write_series(predictor, path, out_root, threshold=threshold, formats=formats,
                                          manifest_sha256=sha)
        _write_summary(out_root, [_summary_row(uid, r) for uid, r in records.items()])
    rows = [_summary_row(uid, r) for uid, r in records.items()]
    _write_summary(out_root, rows)
    return rows


def default_formats() -> list[str]:
    """json, mrk and png, plus sr when highdicom is importable."""
    import importlib.util

    return ["json", "mrk", *(["sr"] if importlib.util.find_spec("highdicom") else []), "png"]


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write the kernel's candidate aneurysm sites as findings a viewer can open: findings.json, a 3D "
                    "Slicer markups file, a DICOM SR and the explain PNG per series, and OUT/summary.csv.",
        epilog="examples:\n"
               f"  {prog} data/phantoms/real_test/series --out runs/findings\n"
               f"  {prog} path/to/one/series_folder --out runs/findings --formats json,mrk --threshold 0.3\n"
               "A rerun skips the series whose outputs are complete (a killed run resumes where it stopped).")
    parser.add_argument("dir", type=Path, metavar="DIR",
                        help="one series folder, or a folder of series folders (a competition-layout folder's "
                             "series/ is used when present)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (OUT/<series folder>/ per series)")
    parser.add_argument("--weights", type=Path, help="weights folder with manifest.json (default: $RSNA_WEIGHTS_DIR, "
                        "a /kaggle/input dataset, or <repo>/weights)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="P(aneurysm at the site) at or above which a finding goes into the markups and the SR "
                             "(default %(default)s; findings.json lists every candidate)")
    parser.add_argument("--formats", default=None,
                        help=f"comma list of {','.join(ALL_FORMATS)} (default json,mrk,png, plus sr when highdicom "
                             "is installed)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _formats(text: str | None, parser: argparse.ArgumentParser) -> list[str]:
    import importlib.util

    formats = default_formats() if text is None else [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in ALL_FORMATS]
    if unknown:
        parser.error(f"unknown format(s) {unknown}; choose from {','.join(ALL_FORMATS)}")
    if "sr" in formats and importlib.util.find_spec("highdicom") is None:
        parser.error("--formats sr needs highdicom: pip install 'highdicom>=0.28,<0.29' (it is in "
                     "requirements-dev.txt; the Kaggle kernel never needs it)")
    return ["json", *[f for f in formats if f != "json"]]


def main(argv: Sequence[str] | None = None, prog: str = "python -m kernel.findings") -> int:
    """CLI: findings for one series or a folder of series."""
    parser = _parser(prog)
    args = parser.parse_args(argv)
    formats = _formats(args.formats, parser)
    if not 0.0 <= args.threshold <= 1.0:
        parser.error("--threshold must lie in [0, 1]")
    try:
        series = series_folders(args.dir)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    from kernel.predict import Predictor

    predictor = Predictor(None if args.weights is None else str(args.weights), budget=never_degrading_budget())
    rows = run_findings(series, args.out, predictor, threshold=args.threshold, formats=formats,
                        progress=not args.no_progress)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    print(f"{len(rows)} series in {args.out} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}); "
          f"summary: {args.out / 'summary.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
