"""The competition metric: mean weighted columnwise ROC AUC (13 for "Aneurysm Present", 1 per location).

Torch- and scikit-learn-free (numpy only), so the kernel's gateway scores a local run with the same code that
training validates with. Unlike the official scorer, which compares columns by position, columns are matched by
name, and rows by ``SeriesInstanceUID`` when both frames carry it; a missing column or a single-class column raises a
ValueError that names it, so a degenerate CV fold cannot pass silently. ``two_class_columns`` is the one place that
decides where the AUC is defined.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kernel.labels import ID_COL, LABEL_COLS, LABEL_WEIGHTS, MODALITY_NAMES, PRESENT_COL

__all__ = ["column_aucs", "evaluate_predictions", "roc_auc", "score", "score_arrays", "to_numpy_columns",
           "two_class_columns"]


def roc_auc(truth: np.ndarray, score_values: np.ndarray) -> float:
    """ROC AUC of binary labels against scores: the Mann-Whitney U statistic with average ranks for ties.

    Equal to scikit-learn's ``roc_auc_score`` (tested to 1e-12); raises ValueError when one class is absent.
    """
    truth = np.asarray(truth, dtype=np.float64).reshape(-1)
    values = np.asarray(score_values, dtype=np.float64).reshape(-1)
    positives = truth == 1.0
    n_pos = int(positives.sum())
    n_neg = len(truth) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC is undefined with a single class")
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    # Average rank of each run of equal values (ranks start at 1).
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    u = ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def to_numpy_columns(frame: Any, columns: Sequence[str]) -> np.ndarray:
    """(N, C) float64 array of the named columns of a pandas or polars frame; ValueError names any missing."""
    present = list(frame.columns)
    missing = [c for c in columns if c not in present]
    if missing:
        raise ValueError(f"missing column(s) {missing}; frame has {present}")
    return np.column_stack([np.asarray(frame[c], dtype=np.float64) for c in columns])


def two_class_columns(y_true: np.ndarray, columns: Sequence[str] = LABEL_COLS) -> list[str]:
    """The columns of an (N, C) label array that hold both classes: where the AUC is defined."""
    y_true = np.asarray(y_true, dtype=np.float64)
    return [name for j, name in enumerate(columns) if len(np.unique(y_true[:, j])) == 2]


def column_aucs(y_true: np.ndarray, y_score: np.ndarray, columns: Sequence[str] = LABEL_COLS) -> dict[str, float]:
    """ROC AUC per column of (N, C) label and score arrays; ValueError naming single-class or non-finite columns."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != y_score.shape or y_true.shape[1] != len(columns):
        raise ValueError(f"labels {y_true.shape} and scores {y_score.shape} must both be (N, {len(columns)})")
    out, single = {}, []
    defined = set(two_class_columns(y_true, columns))
    for j, name in enumerate(columns):
        truth, pred = y_true[:, j], y_score[:, j]
        if not np.all(np.isfinite(truth)) or not np.all(np.isin(truth, (0.0, 1.0))):
            raise ValueError(f"column {name!r}: labels must be 0 or 1 (found NaN or other values)")
        if not np.all(np.isfinite(pred)):
            raise ValueError(f"column {name!r}: predictions hold NaN or inf")
        if name not in defined:
            single.append(f"{name!r} (only {int(truth[0]) if len(truth) else 'no'} labels)")
            continue
        out[name] = roc_auc(truth, pred)
    if single:
        raise ValueError(f"AUC undefined for single-class column(s): {', '.join(single)}")
    return out


def _weights(columns: Sequence[str]) -> np.ndarray:
    return np.asarray([LABEL_WEIGHTS[LABEL_COLS.index(c)] if c in LABEL_COLS else 1.0 for c in columns])


def score_arrays(
    y_true: np.ndarray, y_score: np.ndarray, columns: Sequence[str] = LABEL_COLS,
    weights: Sequence[float] | None = None,
) -> float:
    """Weighted mean of per-column AUCs of (N, C) arrays; weights default to 13 for PRESENT_COL and 1 elsewhere."""
    aucs = column_aucs(y_true, y_score, columns)
    w = _weights(columns) if weights is None else np.asarray(weights, dtype=np.float64)
    values = np.array([aucs[c] for c in columns])
    return float((values * w).sum() / w.sum())


def _ids(frame: Any) -> list[str] | None:
    return [str(v) for v in frame[ID_COL]] if ID_COL in list(frame.columns) else None


def _aligned(solution: Any, submission: Any, columns: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Label and score arrays, the submission's rows put in the solution's order by SeriesInstanceUID when both
    frames carry it (else taken in order)."""
    y_true = to_numpy_columns(solution, columns)
    y_score = to_numpy_columns(submission, columns)
    sol_ids, sub_ids = _ids(solution), _ids(submission)
    if sol_ids is not None and sub_ids is not None:
        position = {uid: i for i, uid in enumerate(sub_ids)}
        if len(position) != len(sub_ids):
            raise ValueError("submission has duplicate SeriesInstanceUID rows")
        missing = [uid for uid in sol_ids if uid not in position]
        if missing:
            raise ValueError(f"{len(missing)} solution series have no submission row, e.g. {missing[:3]}")
        y_score = y_score[[position[uid] for uid in sol_ids]]
    elif len(y_true) != len(y_score):
        raise ValueError(f"solution has {len(y_true)} rows, submission {len(y_score)}")
    return y_true, y_score


def score(solution: Any, submission: Any, columns: Sequence[str] = LABEL_COLS) -> float:
    """Competition score of a submission frame against a solution frame (pandas or polars).

    Columns are matched by name; extra columns (ID, age, modality) are ignored.
    """
    y_true, y_score = _aligned(solution, submission, columns)
    return score_arrays(y_true, y_score, columns)


def evaluate_predictions(labels: np.ndarray, probs: np.ndarray, modalities: Sequence[str],
                         modality_names: Sequence[str] = MODALITY_NAMES) -> dict[str, Any]:
    """Score, AUC(present), per-column AUCs, undefined columns and AUC(present) per protocol, for (N, 14) arrays."""
    labels, probs = np.asarray(labels, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    defined = two_class_columns(labels)
    index = [LABEL_COLS.index(c) for c in defined]
    result: dict[str, Any] = {"n_series": int(len(labels))}
    result["column_aucs"] = column_aucs(labels[:, index], probs[:, index], defined) if defined else {}
    result["undefined_columns"] = [c for c in LABEL_COLS if c not in defined]
    result["score"] = score_arrays(labels[:, index], probs[:, index], defined) if defined else None
    result["auc_present"] = result["column_aucs"].get(PRESENT_COL)
    per = {}
    modalities = np.asarray(modalities)
    for name in modality_names:
        m = modalities == name
        if m.sum():
            truth = labels[m, -1]
            value = roc_auc(truth, probs[m, -1]) if len(np.unique(truth)) == 2 else None
            per[name] = {"n": int(m.sum()), "auc_present": value}
    result["per_modality"] = per
    return result
