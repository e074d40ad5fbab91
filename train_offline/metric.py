"""The competition metric: mean weighted columnwise ROC AUC (13 for "Aneurysm Present", 1 per location).

Unlike the official scorer, which compares columns by position, columns are matched by name, and rows by
``SeriesInstanceUID`` when both frames carry it; a missing column or a single-class column raises a ValueError that
names it, so a degenerate CV fold cannot pass silently.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from kernel.labels import ID_COL, LABEL_COLS, LABEL_WEIGHTS, PRESENT_COL

__all__ = ["column_aucs", "main", "present_auc", "report", "score", "score_arrays", "to_numpy_columns"]


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


def _read_table(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".jsonl":
        return pd.read_json(path, lines=True, dtype={ID_COL: str})
    return pd.read_csv(path, dtype={ID_COL: str})


def report(solution: pd.DataFrame, submission: pd.DataFrame, groups: pd.Series | None = None) -> str:
    """Markdown: overall score, AUC per label, and per group (e.g. protocol) AUC(present) and score where defined."""
    merged = solution[[ID_COL, *LABEL_COLS]].merge(submission[[ID_COL, *LABEL_COLS]], on=ID_COL,
                                                   suffixes=("", "_pred"), how="left")
    if merged[[f"{c}_pred" for c in LABEL_COLS]].isna().any().any():
        raise ValueError("some solution series have no submission row")
    truth = merged[LABEL_COLS].to_numpy(float)
    pred = merged[[f"{c}_pred" for c in LABEL_COLS]].to_numpy(float)
    defined = [j for j in range(len(LABEL_COLS)) if len(np.unique(truth[:, j])) == 2]
    names = [LABEL_COLS[j] for j in defined]
    aucs = column_aucs(truth[:, defined], pred[:, defined], names)
    lines = [f"score (mean weighted columnwise AUC over {len(names)} defined columns): "
             f"{score_arrays(truth[:, defined], pred[:, defined], names):.4f}", "",
             "| label | positives | AUC |", "|---|---|---|"]
    for j, name in enumerate(LABEL_COLS):
        value = f"{aucs[name]:.3f}" if name in aucs else "undefined (one class)"
        lines.append(f"| {name} | {int(truth[:, j].sum())} | {value} |")
    if groups is not None:
        keys = merged[ID_COL].map(groups).fillna("?").to_numpy()
        lines += ["", "| group | series | positives | AUC(present) |", "|---|---|---|---|"]
        for key in sorted(set(keys)):
            m = keys == key
            t, p = truth[m, -1], pred[m, -1]
            value = f"{column_aucs(t[:, None], p[:, None], [PRESENT_COL])[PRESENT_COL]:.3f}" if len(
                np.unique(t)) == 2 else "undefined"
            lines.append(f"| {key} | {int(m.sum())} | {int(t.sum())} | {value} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train_offline.metric",
                                     description="Score a submission (CSV or parquet) against a solution CSV.")
    parser.add_argument("--solution", type=Path, required=True, help="SeriesInstanceUID + 14 label columns")
    parser.add_argument("--submission", type=Path, required=True, help="submission.parquet or a CSV of the same")
    parser.add_argument("--groups", type=Path, help="CSV/JSONL with SeriesInstanceUID and a group column")
    parser.add_argument("--group-col", default="Modality", help="group column in --groups (default Modality)")
    args = parser.parse_args(argv)
    try:
        groups = None
        if args.groups:
            table = _read_table(args.groups)
            groups = pd.Series(table[args.group_col].to_numpy(), index=table[ID_COL].astype(str))
        print(report(_read_table(args.solution), _read_table(args.submission), groups))
    except (OSError, KeyError, ValueError) as exc:
        print(f"metric failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
