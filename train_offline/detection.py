"""Detection metric beside the competition's: FROC points of the kernel's findings against the aneurysms' positions.

    python -m train_offline.detection --findings runs/findings --truth data/phantoms/real_test
    python -m train_offline.detection --findings runs/findings --truth /data/rsna --radius-mm 5

``--findings`` is the output folder of ``python -m kernel.findings`` (``<folder>/<uid>/findings.json``: every
candidate with its probability); ``--truth`` a phantom split (``phantom_truth.jsonl``: centres and dome sizes, via
``train_offline.domes``) or a competition-layout folder (``train_localizers.csv`` placed in LPS through the series'
own headers, ``train.csv`` for the negatives and protocols).

The rule: a finding **hits** an aneurysm when its point lies within the dome's radius + 2 mm of the aneurysm's centre
(ADAM counts a hit within the radius of the centre of mass; the 2 mm are the project's tolerance for small domes,
``domes.found_by``). Without dome sizes (competition data) every aneurysm's hit radius is ``--radius-mm``, default 5
mm: the radius of an assumed 6 mm dome + 2 mm. A finding that hits no aneurysm is a false positive; a second finding
on an aneurysm already hit is neither. At a threshold t an aneurysm is found when a finding with probability >= t
hits it. The FROC point at r false positives per series is the lowest threshold whose false positives per series are
at most r, and the sensitivity there; when even every candidate makes fewer than r per series, that is the
sensitivity of all candidates. Rows: all series; per dome band (each aneurysm's own dome, at the thresholds of all
series); per protocol (that protocol's series, its own thresholds). The median distance of hits is at the 2 FP/series
point (the largest rate asked).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kernel.labels import ID_COL, PRESENT_COL

__all__ = [
    "DEFAULT_RADIUS_MM", "FP_RATES", "Aneurysm", "SeriesTruth", "froc_point", "load_findings", "main", "report",
    "series_scores", "truth_from_competition", "truth_from_phantoms",
]

FP_RATES = (0.5, 1.0, 2.0)
DEFAULT_RADIUS_MM = 5.0  # hit radius without dome sizes: an assumed 6 mm dome's radius + 2 mm
TOLERANCE_MM = 2.0


@dataclass(frozen=True)
class Aneurysm:
    centre_lps: np.ndarray
    hit_radius_mm: float
    band: str  # dome band name ("unknown size" without sizes)


@dataclass
class SeriesTruth:
    uid: str
    protocol: str
    aneurysms: list[Aneurysm] = field(default_factory=list)


def truth_from_phantoms(data_root: Path) -> dict[str, SeriesTruth]:
    """Every series of a phantom split's ``phantom_truth.jsonl``: centres, dome radius + 2 mm, band, protocol."""
    from kernel.jsonl import read_jsonl
    from train_offline.domes import band_of, load_domes

    protocols = {str(r[ID_COL]): str(r.get("modality", "?"))
                 for r in read_jsonl(Path(data_root) / "phantom_truth.jsonl")}
    return {uid: SeriesTruth(uid, protocols.get(uid, "?"),
                             [Aneurysm(d.centre_lps, d.dome_mm / 2 + TOLERANCE_MM, band_of(d.dome_mm)) for d in ds])
            for uid, ds in load_domes(data_root).items()}


def _localizer_lps(series_dir: Path, rows: list[dict]) -> list[np.ndarray]:
    """LPS points of localizer rows on one series, through its headers' per-image geometry (what
    ``kernel.preprocess.localizer_to_lps`` uses); rows whose image has no geometry are left out."""
    from kernel.dicom_headers import parse_headers

    files = sorted(str(p) for p in Path(series_dir).rglob("*") if p.is_file())
    frames, _ = parse_headers(files, [])
    geometry = {(f.sop_uid, f.frame): f.geometry for f in frames if f.geometry is not None}
    points = []
    for row in rows:
        coords = ast.literal_eval(str(row["coordinates"]))
        g = geometry.get((str(row["SOPInstanceUID"]), int(coords.get("f", 0))))
        if g is not None:
            points.append(g.pixel_to_lps(float(coords["x"]), float(coords["y"])))
    return points


def truth_from_competition(data_root: Path, uids: Sequence[str], radius_mm: float) -> dict[str, SeriesTruth]:
    """Truth for ``uids`` from ``train_localizers.csv`` (placed through ``series/<uid>``) and ``train.csv``: a series
    with localizers is positive; without: negative when train.csv says so (or there is no train.csv), left out when
    train.csv calls it positive (its aneurysms have no position)."""
    import pandas as pd

    root = Path(data_root)
    localizers = pd.read_csv(root / "train_localizers.csv", dtype={ID_COL: str, "SOPInstanceUID": str})
    train = pd.read_csv(root / "train.csv", dtype={ID_COL: str}) if (root / "train.csv").is_file() else None
    labels = {} if train is None else dict(zip(train[ID_COL], train[PRESENT_COL], strict=True))
    protocols = {} if train is None or "Modality" not in train else dict(zip(train[ID_COL], train["Modality"],
                                                                             strict=True))
    out = {}
    for uid in uids:
        rows = localizers[localizers[ID_COL] == uid].to_dict("records")
        if not rows and int(labels.get(uid, 0)) == 1:
            continue
        points = _localizer_lps(root / "series" / uid, rows) if rows else []
        out[uid] = SeriesTruth(uid, str(protocols.get(uid, "?")),
                               [Aneurysm(p, radius_mm, "unknown size") for p in points])
    return out


def load_findings(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray, str | None]]:
    """uid -> (points (K, 3) LPS, probabilities (K,), inferred protocol) of every ``<folder>/<uid>/findings.json``."""
    out = {}
    for path in sorted(Path(folder).glob("*/findings.json")):
        record = json.loads(path.read_text())
        found = record.get("findings", [])
        points = np.asarray([f["point_lps"] for f in found], dtype=np.float64).reshape(-1, 3)
        probs = np.asarray([f["probability"] for f in found], dtype=np.float64)
        inferred = ((record.get("modality") or {}).get("inferred") or {}).get("name")
        out[str(record.get("series_folder", path.parent.name))] = (points, probs, inferred)
    return out


def series_scores(points: np.ndarray, probs: np.ndarray, truth: SeriesTruth) -> tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray]:
    """(per aneurysm: the highest probability of a finding that hits it, -inf if none; per aneurysm: the distance
    of that finding; probabilities of the findings that hit no aneurysm: the false positives)."""
    centres = np.asarray([a.centre_lps for a in truth.aneurysms], dtype=np.float64).reshape(-1, 3)
    radii = np.asarray([a.hit_radius_mm for a in truth.aneurysms], dtype=np.float64)
    dist = np.linalg.norm(points[:, None, :] - centres[None, :, :], axis=-1)  # (K, A)
    hits = dist <= radii[None, :]
    best = np.where(hits, probs[:, None], -np.inf)
    score = best.max(axis=0) if len(points) else np.full(len(centres), -np.inf)
    pick = best.argmax(axis=0) if len(points) else np.zeros(len(centres), dtype=int)
    distance = dist[pick, np.arange(len(centres))] if len(points) else np.full(len(centres), np.inf)
    return score, np.where(np.isfinite(score), distance, np.inf), probs[~hits.any(axis=1)]


def froc_point(fp_probs: np.ndarray, n_series: int, rate: float) -> float:
    """The lowest threshold at which the false positives per series are at most ``rate`` (0.0: every candidate)."""
    fp = np.sort(np.asarray(fp_probs, dtype=np.float64))[::-1]
    allowed = int(np.floor(rate * n_series + 1e-9))
    if len(fp) <= allowed:
        return 0.0
    # Thresholds just above the (allowed + 1)-th highest false positive keep `allowed` of them or fewer.
    return float(np.nextafter(fp[allowed], np.inf))


@dataclass
class _Pooled:
    scores: list[float] = field(default_factory=list)
    distances: list[float] = field(default_factory=list)
    bands: list[str] = field(default_factory=list)
    fp: list[float] = field(default_factory=list)
    series: int = 0


def _pool(uids: Sequence[str], findings: Mapping, truth: Mapping[str, SeriesTruth]) -> _Pooled:
    pooled = _Pooled()
    for uid in uids:
        points, probs, _ = findings[uid]
        score, distance, fp = series_scores(points, probs, truth[uid])
        pooled.scores += score.tolist()
        pooled.distances += distance.tolist()
        pooled.bands += [a.band for a in truth[uid].aneurysms]
        pooled.fp += fp.tolist()
        pooled.series += 1
    return pooled


def _row(name: str, pooled: _Pooled, thresholds: Sequence[float], mask: np.ndarray | None = None) -> str:
    scores, distances = np.asarray(pooled.scores), np.asarray(pooled.distances)
    if mask is not None:
        scores, distances = scores[mask], distances[mask]
    cells = [f"{np.mean(scores >= t):.3f}" if len(scores) else "-" for t in thresholds]
    hit = distances[scores >= thresholds[-1]] if len(scores) else np.zeros(0)
    median = f"{np.median(hit):.1f}" if len(hit) else "-"
    return f"| {name} | {pooled.series} | {len(scores)} | " + " | ".join(cells) + f" | {median} |"


def _threshold_text(t: float) -> str:
    return "p >= 0 (every candidate)" if t <= 0.0 else f"p >= {t:.4f}"


def report(findings: Mapping, truth: Mapping[str, SeriesTruth], rates: Sequence[float] = FP_RATES,
           radius_note: str = "") -> str:
    """Markdown FROC tables: all series, per dome band, per protocol."""
    uids = sorted(set(findings) & set(truth))
    if not uids:
        raise ValueError("no series has both a findings.json and truth")
    pooled = _pool(uids, findings, truth)
    thresholds = [froc_point(np.asarray(pooled.fp), pooled.series, r) for r in rates]
    head = " | ".join(f"sens @ {r:g} FP/series" for r in rates)
    columns = f"| series | aneurysms | {head} | median hit distance mm (@ {rates[-1]:g}) |"
    rule = "|---" * (4 + len(rates)) + "|"
    per_series = len(pooled.fp) / pooled.series
    lines = [f"{len(uids)} series with findings and truth, {len(pooled.scores)} aneurysms; hit: a finding within the "
             f"dome radius + {TOLERANCE_MM:g} mm of an aneurysm centre{radius_note}; every candidate together makes "
             f"{per_series:.2f} false positives per series",
             "operating points (all series): " + ", ".join(f"{r:g} FP/series at {_threshold_text(t)}"
                                                           for r, t in zip(rates, thresholds, strict=True)),
             "", "| series set " + columns, rule, _row("all", pooled, thresholds)]
    bands = np.asarray(pooled.bands)
    lines += ["", "| dome band (thresholds of all series) " + columns, rule]
    from train_offline.domes import DOME_BANDS

    for band in [name for name, _, _ in DOME_BANDS] + ["unknown size"]:
        if (bands == band).any():
            lines.append(_row(band, pooled, thresholds, bands == band))
    lines += ["", "| protocol (own thresholds) " + columns, rule]
    for protocol in sorted({truth[u].protocol for u in uids}):
        sub = _pool([u for u in uids if truth[u].protocol == protocol], findings, truth)
        sub_thresholds = [froc_point(np.asarray(sub.fp), sub.series, r) for r in rates]
        lines.append(_row(protocol, sub, sub_thresholds))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train_offline.detection",
                                     description="FROC of python -m kernel.findings outputs against aneurysm "
                                                 "positions (phantom truth or train_localizers.csv).")
    parser.add_argument("--findings", type=Path, required=True, help="output folder of python -m kernel.findings")
    parser.add_argument("--truth", type=Path, required=True,
                        help="phantom split (phantom_truth.jsonl) or competition-layout folder (train_localizers.csv, "
                             "train.csv, series/)")
    parser.add_argument("--radius-mm", type=float, default=DEFAULT_RADIUS_MM,
                        help="hit radius without dome sizes (competition data; default %(default)s mm)")
    parser.add_argument("--fp", type=float, nargs="+", default=list(FP_RATES),
                        help="false positives per series of the FROC points (default 0.5 1 2)")
    args = parser.parse_args(argv)
    try:
        findings = load_findings(args.findings)
        if (args.truth / "phantom_truth.jsonl").is_file():
            truth, note = truth_from_phantoms(args.truth), ""
        else:
            truth = truth_from_competition(args.truth, sorted(findings), args.radius_mm)
            note = f" (no dome sizes: a hit within {args.radius_mm:g} mm)"
        missing = sorted(set(truth) - set(findings))
        if missing:
            print(f"{len(missing)} truth series have no findings.json (not scored), e.g. {missing[0]}",
                  file=sys.stderr)
        print(report(findings, truth, sorted(args.fp), note))
    except (OSError, KeyError, ValueError) as exc:
        print(f"detection failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
