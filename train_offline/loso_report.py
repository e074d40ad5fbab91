"""The leave-one-style-out table (``python -m train_offline.loso``) from the gateway's ``--details`` files.

Per held-out style, the in-style score (the model trained on every style, on that style's test split) against the
out-of-style score (the model trained on the other styles): weighted AUC (the competition metric) and AUC(present),
each with a bootstrap 95% interval over series, and the gap (in - out) with its own paired interval (the two models
scored on the same resampled series); AUC(present) per protocol and per largest-dome band; candidate recall per dome
band (``domes.candidate_recall``: a candidate within dome radius + 2 mm, from the details' ``candidates_lps``); the
modality head's accuracy per protocol (the details' ``modality`` against the truth's).

Bootstrap rule: a resample in which a column that holds both classes in the whole test split holds one class is
redrawn, so every resample scores the same columns as the point estimate (columns single-class in the whole split are
left out of both, as ``kernel.metric`` does). After ``MAX_REDRAWS`` failed draws (only on toy splits, where a column
has one or two positives) the last draw is kept with its single-class columns left out; ``left_out_resamples`` in
the JSON counts them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kernel.jsonl import read_jsonl
from kernel.labels import ID_COL, LABEL_COLS, LABEL_WEIGHTS, MODALITY_NAMES, PRESENT_COL
from kernel.metric import roc_auc, two_class_columns
from train_offline.domes import DOME_BANDS, Dome, candidate_recall, load_domes

__all__ = ["MAX_REDRAWS", "Scored", "Split", "bootstrap_indices", "bootstrap_scores", "build_table", "load_split",
           "loso_markdown", "model_name", "read_details", "split_metrics", "write_report"]

MAX_REDRAWS = 200
PRESENT = LABEL_COLS.index(PRESENT_COL)


@dataclass
class Split:
    """One style's test split: its series (solution order), labels, protocols and aneurysm domes."""

    style: str
    uids: list[str]
    labels: np.ndarray  # (N, 14)
    protocols: list[str]  # the truth's modality per series
    domes: dict[str, list[Dome]] = field(default_factory=dict)

    @property
    def largest_dome(self) -> np.ndarray:
        """Largest dome (patient mm) per series; NaN without an aneurysm."""
        return np.array([max((d.dome_mm for d in self.domes.get(u, [])), default=math.nan) for u in self.uids])


@dataclass
class Scored:
    """One export's gateway details on a split, in the split's series order."""

    probs: np.ndarray  # (N, 14)
    modality: list[str | None]  # the modality head's protocol (None on a fallback row)
    candidates: dict[str, np.ndarray]  # uid -> (K, 3) LPS (empty on a fallback row)
    fallbacks: int


def load_split(test_dir: Path, style: str) -> Split:
    """A phantom test split: ``solution.csv`` (labels), ``phantom_truth.jsonl`` (protocol, domes)."""
    solution = pd.read_csv(test_dir / "solution.csv", dtype={ID_COL: str})
    truth = {str(r[ID_COL]): r for r in read_jsonl(test_dir / "phantom_truth.jsonl")}
    uids = solution[ID_COL].tolist()
    missing = [u for u in uids if u not in truth]
    if missing:
        raise ValueError(f"{test_dir}: {len(missing)} solution series are not in phantom_truth.jsonl")
    return Split(style, uids, solution[LABEL_COLS].to_numpy(dtype=np.float64),
                 [str(truth[u]["modality"]) for u in uids], load_domes(test_dir))


def read_details(path: Path, split: Split) -> Scored:
    """A gateway ``--details`` JSONL put in the split's order; every split series must have a line."""
    lines = {str(r[ID_COL]): r for r in read_jsonl(path)}
    missing = [u for u in split.uids if u not in lines]
    if missing:
        raise ValueError(f"{path}: {len(missing)} series of the {split.style} split have no line, e.g. {missing[0]}")
    rows = [lines[u] for u in split.uids]
    return Scored(probs=np.array([r["probs"] for r in rows], dtype=np.float64),
                  modality=[r.get("modality") for r in rows],
                  candidates={u: np.asarray(r.get("candidates_lps") or [], dtype=np.float64).reshape(-1, 3)
                              for u, r in zip(split.uids, rows, strict=True)},
                  fallbacks=sum(bool(r.get("fallback")) for r in rows))


# --- bootstrap -----------------------------------------------------------------------------------------------------


def bootstrap_indices(labels: np.ndarray, n_resamples: int = 1000, seed: int = 0,
                      max_redraws: int = MAX_REDRAWS) -> tuple[np.ndarray, int]:
    """(n_resamples, N) series indices drawn with replacement, and how many resamples kept a single-class column.

    A draw in which a column holding both classes in ``labels`` holds one is redrawn (the module's rule)."""
    labels = np.asarray(labels, dtype=np.float64)
    defined = [j for j in range(labels.shape[1]) if len(np.unique(labels[:, j])) == 2]
    rng = np.random.default_rng(seed)
    n = len(labels)
    out, kept_short = np.empty((n_resamples, n), dtype=np.int64), 0
    for r in range(n_resamples):
        for _ in range(max_redraws):
            draw = rng.integers(0, n, n)
            sums = labels[draw][:, defined].sum(axis=0)
            if np.all((sums > 0) & (sums < n)):
                break
        else:
            kept_short += 1
        out[r] = draw
    return out, kept_short


def _weighted(aucs: np.ndarray, columns: Sequence[int]) -> float:
    """The competition's weighted mean of the finite column AUCs among ``columns``."""
    values = aucs[list(columns)]
    weights = np.asarray(LABEL_WEIGHTS, dtype=np.float64)[list(columns)]
    ok = np.isfinite(values)
    return float((values[ok] * weights[ok]).sum() / weights[ok].sum()) if ok.any() else math.nan


def _column_aucs(labels: np.ndarray, probs: np.ndarray, columns: Sequence[int]) -> np.ndarray:
    """(14,) AUC per column (NaN where not in ``columns`` or single-class)."""
    out = np.full(labels.shape[1], np.nan)
    for j in columns:
        if 0 < labels[:, j].sum() < len(labels):
            out[j] = roc_auc(labels[:, j], probs[:, j])
    return out


def _interval(values: Sequence[float]) -> list[float] | None:
    arr = np.asarray([v for v in values if np.isfinite(v)])
    return [round(float(np.percentile(arr, 2.5)), 4), round(float(np.percentile(arr, 97.5)), 4)] if len(arr) else None


def bootstrap_scores(labels: np.ndarray, probs_in: np.ndarray, probs_out: np.ndarray | None = None,
                     n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Weighted AUC and AUC(present) of ``probs_in`` (and ``probs_out`` and the paired gap in - out), each as
    ``{"point", "ci"}`` with a percentile 95% interval over ``n_resamples`` resamples of the series."""
    labels = np.asarray(labels, dtype=np.float64)
    columns = [LABEL_COLS.index(c) for c in two_class_columns(labels)]
    models = {"in": np.asarray(probs_in, dtype=np.float64)}
    if probs_out is not None:
        models["out"] = np.asarray(probs_out, dtype=np.float64)
    draws, short = bootstrap_indices(labels, n_resamples, seed)
    point = {k: _column_aucs(labels, p, columns) for k, p in models.items()}
    samples: dict[str, list[np.ndarray]] = {k: [] for k in models}
    for draw in draws:
        for k, p in models.items():
            samples[k].append(_column_aucs(labels[draw], p[draw], columns))
    out: dict[str, Any] = {"resamples": n_resamples, "seed": seed, "left_out_resamples": short}
    for metric, value in (("score", lambda a: _weighted(a, columns)), ("auc_present", lambda a: float(a[PRESENT]))):
        per = {k: np.array([value(a) for a in samples[k]]) for k in models}
        out[metric] = {k: {"point": _round(value(point[k])), "ci": _interval(per[k])} for k in models}
        if "out" in models:
            out[metric]["gap"] = {"point": _round(value(point["in"]) - value(point["out"])),
                                  "ci": _interval(per["in"] - per["out"])}
    return out


def _round(value: float) -> float | None:
    return round(float(value), 4) if np.isfinite(value) else None


# --- the other columns ---------------------------------------------------------------------------------------------


def split_metrics(split: Split, scored: Scored) -> dict[str, Any]:
    """AUC(present) per protocol and per largest-dome band, candidate recall per dome band, modality accuracy per
    protocol, fallbacks: what one export did on one split (point values)."""
    truth, present = split.labels[:, PRESENT], scored.probs[:, PRESENT]
    protocols = np.asarray(split.protocols)
    per_protocol, modality = {}, {}
    predicted = np.asarray([m if m is not None else "" for m in scored.modality])
    for name in MODALITY_NAMES:
        m = protocols == name
        if m.any():
            t = truth[m]
            per_protocol[name] = {"series": int(m.sum()), "positives": int(t.sum()),
                                  "auc_present": _round(roc_auc(t, present[m])) if 0 < t.sum() < m.sum() else None}
            modality[name] = {"series": int(m.sum()), "accuracy": round(float(np.mean(predicted[m] == name)), 4)}
    modality["all"] = {"series": len(protocols), "accuracy": round(float(np.mean(predicted == protocols)), 4)}
    largest, per_band = split.largest_dome, {}
    for name, lo, hi in DOME_BANDS:
        band = (truth == 1) & (largest >= lo) & (largest < hi)
        keep = band | (truth == 0)
        per_band[name] = {"positives": int(band.sum()),
                          "auc_present": _round(roc_auc(truth[keep], present[keep]))
                          if band.any() and (truth == 0).any() else None}
    recall = candidate_recall(scored.candidates, split.domes, split.uids, positive_radius_mm=6.0)
    return {"series": len(split.uids), "positives": int(truth.sum()), "fallbacks": scored.fallbacks,
            "auc_present_by_protocol": per_protocol, "auc_present_by_dome": per_band,
            "candidate_recall": {k: {"aneurysms": v["aneurysms"], "recall": round(v["within_radius_2mm"], 4)}
                                 for k, v in recall.items()},
            "modality_accuracy": modality}


def model_name(held_out: str | None) -> str:
    """The run/export name of the model trained on every style (``all``) or without one (``without_<style>``)."""
    return "all" if held_out is None else f"without_{held_out}"


def build_table(splits: Mapping[str, Split], details: Mapping[tuple[str, str, str], Path],
                variants: Sequence[str], n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The table's rows (one per variant and held-out style with both models scored) and the model-by-style matrix
    of weighted AUCs, from ``details[(variant, model, style)]`` files (those present)."""
    scored = {key: read_details(path, splits[key[2]]) for key, path in details.items() if path.is_file()}
    rows, matrix = [], {}
    for variant in variants:
        for style, split in splits.items():
            key_in, key_out = (variant, "all", style), (variant, model_name(style), style)
            if key_in not in scored or key_out not in scored:
                continue
            a, b = scored[key_in], scored[key_out]
            rows.append({"variant": variant, "held_out": style, "series": len(split.uids),
                         "positives": int(split.labels[:, PRESENT].sum()),
                         **bootstrap_scores(split.labels, a.probs, b.probs, n_resamples, seed),
                         "in": split_metrics(split, a), "out": split_metrics(split, b)})
        for (v, model, style), s in scored.items():
            if v == variant:
                columns = [LABEL_COLS.index(c) for c in two_class_columns(splits[style].labels)]
                value = _weighted(_column_aucs(splits[style].labels, s.probs, columns), columns)
                matrix.setdefault(variant, {}).setdefault(model, {})[style] = _round(value)
    return {"rows": rows, "matrix": matrix}


# --- markdown ------------------------------------------------------------------------------------------------------


def _ci(entry: Mapping[str, Any]) -> str:
    point, ci = entry.get("point"), entry.get("ci")
    if point is None:
        return "-"
    return f"{point:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{point:.3f}"


def _pair(a: float | None, b: float | None) -> str:
    return " / ".join("-" if v is None else f"{v:.2f}" for v in (a, b))


def _section(title: str, note: str, head: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return ["", f"## {title}", "", note, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(r) + " |" for r in body)]


def loso_markdown(table: Mapping[str, Any], header: Sequence[str] = ()) -> str:
    """``loso.md``: the headline table and, one row per (variant, held-out style) each, the detail tables."""
    rows = table["rows"]
    lead = [[r["variant"], r["held_out"], f"{r['series']} ({r['positives']})", _ci(r["score"]["in"]),
             _ci(r["score"]["out"]), _ci(r["score"]["gap"]), _ci(r["auc_present"]["in"]),
             _ci(r["auc_present"]["out"]), _ci(r["auc_present"]["gap"])] for r in rows]
    lines = ["# Leave-one-style-out", "", *header]
    lines += _section("In-style against out-of-style", "in: the model trained on every style; out: the model that "
                      "never saw the held-out style; both on that style's test split. Point [bootstrap 95% interval]; "
                      "gap = in - out, paired (the same resampled series).",
                      ["variant", "held-out style", "series (positives)", "weighted AUC in", "out", "gap",
                       "AUC(present) in", "out", "gap"], lead)
    lines += _section("AUC(present) per protocol", "in / out (series).",
                      ["variant", "held-out style", *MODALITY_NAMES],
                      [[r["variant"], r["held_out"], *(_by(r, "auc_present_by_protocol", p, "auc_present", "series")
                                                      for p in MODALITY_NAMES)] for r in rows])
    bands = [b for b, _, _ in DOME_BANDS]
    lines += _section("AUC(present) per largest dome", "That band's positive series against every negative; in / out "
                      "(positives).", ["variant", "held-out style", *bands],
                      [[r["variant"], r["held_out"], *(_by(r, "auc_present_by_dome", b, "auc_present", "positives")
                                                      for b in bands)] for r in rows])
    lines += _section("Candidate recall per dome", "Aneurysms with a candidate site within dome radius + 2 mm; "
                      "in / out (aneurysms).", ["variant", "held-out style", *bands, "all"],
                      [[r["variant"], r["held_out"], *(_by(r, "candidate_recall", b, "recall", "aneurysms")
                                                      for b in [*bands, "all"])] for r in rows])
    lines += _section("Modality head accuracy per protocol", "The details' predicted protocol against the truth's; "
                      "in / out (series); fallbacks count as wrong.", ["variant", "held-out style", *MODALITY_NAMES,
                                                                        "all", "fallbacks in / out"],
                      [[r["variant"], r["held_out"], *(_by(r, "modality_accuracy", p, "accuracy", "series")
                                                      for p in [*MODALITY_NAMES, "all"]),
                        f"{r['in']['fallbacks']} / {r['out']['fallbacks']}"] for r in rows])
    lines += _matrix(table["matrix"])
    return "\n".join(lines) + "\n"


def _by(row: Mapping[str, Any], group: str, key: str, value: str, count: str) -> str:
    a, b = row["in"][group].get(key), row["out"][group].get(key)
    if a is None and b is None:
        return "-"
    n = (a or b).get(count)
    return f"{_pair((a or {}).get(value), (b or {}).get(value))} ({n})"


def _matrix(matrix: Mapping[str, Mapping[str, Mapping[str, float | None]]]) -> list[str]:
    styles = sorted({s for models in matrix.values() for by in models.values() for s in by})
    body = [[variant, model, *("-" if by.get(s) is None else f"{by[s]:.3f}" for s in styles)]
            for variant, models in matrix.items() for model, by in sorted(models.items())]
    return _section("Every model on every style", "Weighted AUC of each export on each style's test split (rows: "
                    "the model and the styles it was trained without).", ["variant", "model", *styles], body)


def write_report(out: Path, table: Mapping[str, Any], settings: Mapping[str, Any], header: Sequence[str]) -> str:
    """``out/loso.json`` (settings + table) and ``out/loso.md``; returns the markdown."""
    text = loso_markdown(table, header)
    (out / "loso.json").write_text(json.dumps({"settings": settings, **table}, indent=1))
    (out / "loso.md").write_text(text)
    return text
