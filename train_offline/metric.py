"""The competition metric: mean weighted columnwise ROC AUC (13 for "Aneurysm Present", 1 per location).

Unlike the official scorer, which compares columns by position, columns are matched by name, and rows by
``SeriesInstanceUID`` when both frames carry it; a missing column or a single-class column raises a ValueError that
names it, so a degenerate CV fold cannot pass silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from kernel.labels import ID_COL, LABEL_COLS, LABEL_WEIGHTS, PRESENT_COL

__all__ = ["column_aucs", "present_auc", "score", "score_arrays", "to_numpy_columns"]


def to_numpy_columns(frame: Any, columns: Sequence[str]) -> np.ndarray:
    """(N, C) float64 array of the named columns of a pandas or polars frame; ValueError names any missing."""
    present = list(frame.columns)
    missing = [c for c in columns if c not in present]
    if missing:
        raise ValueError(f"missing column(s) {missing}; frame has {present}")
    return np.column_stack([np.asarray(frame[c], dtype=np.float64) for c in columns])


def _ids(frame: Any) -> list[str] | None:
    return [str(v) for v in frame[ID_COL]] if ID_COL in list(frame.columns) else None


def score_arrays(
    y_true: np.ndarray, y_score: np.ndarray, columns: Sequence[str] = LABEL_COLS,
    weights: Sequence[float] | None = None,
) -> float:
    """Weighted mean of per-column AUCs of (N, C) arrays; weights default to 13 for PRESENT_COL and 1 elsewhere."""
    aucs = column_aucs(y_true, y_score, columns)
    if weights is None:
        weights = [LABEL_WEIGHTS[LABEL_COLS.index(c)] if c in LABEL_COLS else 1.0 for c in columns]
    w = np.asarray(weights, dtype=np.float64)
    values = np.array([aucs[c] for c in columns])
    return float((values * w).sum() / w.sum())


def column_aucs(y_true: np.ndarray, y_score: np.ndarray, columns: Sequence[str] = LABEL_COLS) -> dict[str, float]:
    """ROC AUC per column of (N, C) label and score arrays; ValueError naming single-class or non-finite columns."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != y_score.shape or y_true.shape[1] != len(columns):
        raise ValueError(f"labels {y_true.shape} and scores {y_score.shape} must both be (N, {len(columns)})")
    out = {}
    single = []
    for j, name in enumerate(columns):
        truth, pred = y_true[:, j], y_score[:, j]
        if not np.all(np.isfinite(truth)) or not np.all(np.isin(truth, (0.0, 1.0))):
            raise ValueError(f"column {name!r}: labels must be 0 or 1 (found NaN or other values)")
        if not np.all(np.isfinite(pred)):
            raise ValueError(f"column {name!r}: predictions hold NaN or inf")
        if len(np.unique(truth)) < 2:
            single.append(f"{name!r} (only {int(truth[0]) if len(truth) else 'no'} labels)")
            continue
        out[name] = float(roc_auc_score(truth, pred))
    if single:
        raise ValueError(f"AUC undefined for single-class column(s): {', '.join(single)}")
    return out


def score(solution: Any, submission: Any, columns: Sequence[str] = LABEL_COLS) -> float:
    """Competition score of a submission frame against a solution frame (pandas or polars).

    Columns are matched by name; extra columns (ID, age, modality) are ignored. When both frames have
    SeriesInstanceUID the submission is aligned to the solution's rows by it, else rows are taken in order.
    """
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
    return score_arrays(y_true, y_score, columns)


def present_auc(solution: Any, submission: Any) -> float:
    """AUC of the "Aneurysm Present" column alone (same matching rules as ``score``)."""
    return score(solution, submission, columns=[PRESENT_COL])
