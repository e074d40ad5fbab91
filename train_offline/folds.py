"""Cross-validation folds: grouped by patient, stratified by modality and by every location.

    python -m train_offline.folds --index index.csv --out folds.csv [--n-folds 5] [--seed 0]

Greedy iterative stratification: patient groups are placed rarest-label first, each into the fold that most needs
its labels (modality, each positive location, negative), ties broken by fold size. After placement, every fold is
checked for positives of every location; where a location has fewer positive patients than folds this cannot hold,
and the report (stderr and the return value) names the location and the folds that miss it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kernel.labels import ID_COL, LOCATION_COLS, MODALITY_NAMES, PRESENT_COL

__all__ = ["ensure_index_and_folds", "fold_report", "make_folds", "main", "select_styles"]


def _label_matrix(frame: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """(N, K) 0/1 matrix of the stratification labels: modalities, locations, negative."""
    names = [f"modality={m}" for m in MODALITY_NAMES] + list(LOCATION_COLS) + ["negative"]
    mod = np.stack([(frame["Modality"] == m).to_numpy() for m in MODALITY_NAMES], axis=1)
    loc = frame[LOCATION_COLS].to_numpy(dtype=bool)
    neg = (frame[PRESENT_COL].to_numpy() == 0)[:, None]
    return np.concatenate([mod, loc, neg], axis=1).astype(np.int64), names


def make_folds(frame: pd.DataFrame, n_folds: int = 5, seed: int = 0, group_col: str = "patient") -> pd.DataFrame:
    """``SeriesInstanceUID, fold`` for every row of ``frame`` (needs Modality, the labels and ``group_col``)."""
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    groups_col = frame[group_col] if group_col in frame.columns else frame[ID_COL]
    labels, _ = _label_matrix(frame)
    group_ids, inverse = np.unique(groups_col.astype(str).to_numpy(), return_inverse=True)
    if len(group_ids) < n_folds:
        raise ValueError(f"{len(group_ids)} patients cannot fill {n_folds} folds")
    group_labels = np.zeros((len(group_ids), labels.shape[1]), dtype=np.int64)
    np.add.at(group_labels, inverse, labels)
    group_size = np.bincount(inverse)
    totals = group_labels.sum(axis=0)
    desired = totals[None, :] / n_folds * np.ones((n_folds, 1))
    counts = np.zeros((n_folds, labels.shape[1]))
    sizes = np.zeros(n_folds)
    rng = np.random.default_rng(seed)
    # Rarest label first: groups holding a rare location are placed while every fold still has room for it.
    rarity = np.where(group_labels > 0, totals[None, :], np.inf).min(axis=1)
    order = np.lexsort((rng.random(len(group_ids)), rarity))
    assignment = np.empty(len(group_ids), dtype=np.int64)
    for g in order:
        has = group_labels[g] > 0
        rarest = int(np.argmin(np.where(has, totals, np.inf)))
        need_rarest = desired[:, rarest] - counts[:, rarest]
        need_all = ((desired[:, has] - counts[:, has]) / np.maximum(desired[:, has], 1e-9)).sum(axis=1)
        if len(MODALITY_NAMES) <= rarest < len(MODALITY_NAMES) + len(LOCATION_COLS):
            # A positive group: the fold that most needs its rarest location, then its other labels, then size.
            key = np.lexsort((rng.random(n_folds), sizes, -need_all, -need_rarest))
        else:  # negatives balance fold sizes first, then modalities
            key = np.lexsort((rng.random(n_folds), -need_all, sizes))
        fold = int(key[0])
        assignment[g] = fold
        counts[fold] += group_labels[g]
        sizes[fold] += group_size[g]
    _repair(assignment, group_labels, counts, sizes, n_locations_from=len(MODALITY_NAMES),
            n_locations=len(LOCATION_COLS), group_size=group_size)
    return pd.DataFrame({ID_COL: frame[ID_COL].astype(str).to_numpy(), "fold": assignment[inverse]})


def _repair(assignment: np.ndarray, group_labels: np.ndarray, counts: np.ndarray, sizes: np.ndarray,
            n_locations_from: int, n_locations: int, group_size: np.ndarray, rounds: int = 50) -> None:
    """Move positive groups into folds that lack a location, when that opens no new gap (in place)."""
    locations = range(n_locations_from, n_locations_from + n_locations)
    for _ in range(rounds):
        moved = False
        for lab in locations:
            for gap in np.flatnonzero(counts[:, lab] == 0):
                # Candidates: groups with this location in a fold holding two or more of it.
                for g in np.flatnonzero(group_labels[:, lab] > 0):
                    src = assignment[g]
                    if counts[src, lab] - group_labels[g, lab] < 1:
                        continue
                    has = [lb for lb in locations if group_labels[g, lb] > 0]
                    if any(counts[src, lb] - group_labels[g, lb] < 1 <= counts[src, lb] for lb in has):
                        continue  # moving it would empty another location in the source fold
                    counts[src] -= group_labels[g]
                    counts[gap] += group_labels[g]
                    sizes[src] -= group_size[g]
                    sizes[gap] += group_size[g]
                    assignment[g] = gap
                    moved = True
                    break
        if not moved:
            return


def fold_report(frame: pd.DataFrame, folds: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Per-fold counts (series, each modality, each location) and the list of (location, fold) gaps."""
    merged = frame.merge(folds, on=ID_COL)
    table = merged.groupby("fold").agg(
        series=(ID_COL, "size"), positive=(PRESENT_COL, "sum"),
        **{m: ("Modality", lambda s, m=m: int((s == m).sum())) for m in MODALITY_NAMES},
        **{c: (c, "sum") for c in LOCATION_COLS},
    )
    gaps = []
    for col in LOCATION_COLS:
        missing = [int(f) for f in table.index if table.loc[f, col] == 0]
        if missing:
            gaps.append(f"{col}: no positive in fold(s) {missing} ({int(merged[col].sum())} positive series in all)")
    return table, gaps


def ensure_index(root: Path, cache: Path, index_path: Path) -> None:
    """Write ``index_path`` (``train_offline.index`` of a data root and its cache) unless it exists."""
    from train_offline.index import build_index

    if not index_path.is_file():
        index_path.parent.mkdir(parents=True, exist_ok=True)
        build_index(root, cache).to_csv(index_path, index=False)


def ensure_index_and_folds(config: Mapping[str, Any], rank: int, world: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(index, folds) of a config's data, each built on first use (rank 0 writes, every rank waits for it); the index
    cut to ``data.styles`` (``select_styles``) and ``data.limit``, the folds made from all of it."""
    from train_offline.index import load_index
    from train_offline.loop import barrier

    data = config["data"]
    index_path, folds_path = Path(data["index"]), Path(data["folds_csv"])
    if rank == 0:
        ensure_index(Path(data["root"]), Path(data["cache"]), index_path)
    barrier(world)
    index = load_index(index_path)
    if rank == 0 and not folds_path.is_file():
        folds = make_folds(index, int(data["n_folds"]), int(config["seed"]))
        _, gaps = fold_report(index, folds)
        for gap in gaps:
            print(f"warning: {gap}", file=sys.stderr)
        folds.to_csv(folds_path, index=False)
    barrier(world)
    folds = pd.read_csv(folds_path, dtype={ID_COL: str})
    index = select_styles(index, data["styles"], index_path)
    if int(data["limit"]) > 0:
        index = index.iloc[: int(data["limit"])]
    return index, folds


def select_styles(index: pd.DataFrame, styles: Sequence[str], index_path: Path | str = "the index") -> pd.DataFrame:
    """The rows of ``index`` whose phantom style is in ``styles`` (``data.styles``; empty: every row).

    Applied after the folds are made from the whole index, so one folds file serves every subset of styles and a
    series keeps its fold in each. A style with no series (a typo, or an index built before the style column) is an
    error, not an empty training set."""
    if not styles:
        return index
    if "style" not in index.columns:
        raise ValueError(f"data.styles {list(styles)} needs the index's style column: {index_path} was built before "
                         "it; delete it so that training builds it again")
    present = set(index["style"])
    missing = [s for s in styles if s not in present]
    if missing:
        raise ValueError(f"data.styles: no series of style(s) {missing} in {index_path} (its styles: "
                         f"{sorted(present)})")
    return index[index["style"].isin(list(styles))].reset_index(drop=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train_offline.folds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, required=True, help="index CSV (train_offline.index) or train.csv")
    parser.add_argument("--out", type=Path, required=True, help="folds CSV to write (SeriesInstanceUID, fold)")
    parser.add_argument("--n-folds", type=int, default=5, help="number of folds (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="tie-break seed (default 0)")
    args = parser.parse_args(argv)
    try:
        frame = pd.read_csv(args.index, dtype={ID_COL: str, "patient": str})
        missing = [c for c in (ID_COL, "Modality", *LOCATION_COLS, PRESENT_COL) if c not in frame.columns]
        if missing:
            raise ValueError(f"{args.index}: missing column(s) {missing}")
        folds = make_folds(frame, args.n_folds, args.seed, group_col="patient" if "patient" in frame else "PatientID")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        print(f"folds failed: {exc}", file=sys.stderr)
        return 2
    table, gaps = fold_report(frame, folds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    folds.to_csv(args.out, index=False)
    print(table.to_string())
    for gap in gaps:
        print(f"warning: {gap}: too few positive patients to cover every fold", file=sys.stderr)
    print(f"wrote {args.out}: {len(folds)} series in {args.n_folds} folds, {len(gaps)} location gaps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
