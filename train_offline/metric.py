"""Metric reports on top of ``kernel.metric``: AUC per label and per group (e.g. protocol), as a CLI.

    python -m train_offline.metric --solution solution.csv --submission submission.parquet [--groups truth.jsonl]
        [--domes data/phantoms/real_test]     # + AUC(present) by largest dome (phantom_truth.jsonl there)
    python -m train_offline.metric --solution S.csv --submission details.jsonl --domes DATA --candidates
                                          # + the kernel's candidate sites: recall per dome band, cost of a miss
    python -m train_offline.metric --solution train.csv --submission weights/oof_classifier_f*.csv --only-submitted
                                          # pooled out-of-fold score of the shipped folds

The metric itself (mean weighted columnwise ROC AUC) lives in ``kernel.metric``, so the kernel's gateway and
training's validation score with the same code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kernel.labels import ID_COL, LABEL_COLS
from kernel.metric import column_aucs, roc_auc, score_arrays, two_class_columns

__all__ = ["candidate_report", "main", "read_submission", "read_submissions", "report"]


def _read_table(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".jsonl":
        return pd.read_json(path, lines=True, dtype={ID_COL: str})
    return pd.read_csv(path, dtype={ID_COL: str})


def read_submission(path: Path, field: str = "probs") -> pd.DataFrame:
    """A submission table; a gateway ``--details`` JSONL becomes one from its ``field`` list (``probs``: the rows the
    kernel returned; ``coarse_probs``: the classifiers' before the fine stage), so both score from one run."""
    table = _read_table(path)
    if path.suffix != ".jsonl":
        return table
    if field not in table.columns:
        raise KeyError(f"{path} has no {field!r} field (details lines carry probs and coarse_probs)")
    rows = [probs if isinstance(probs, list) else fallback
            for probs, fallback in zip(table[field], table["probs"], strict=True)]  # fallback rows: no coarse_probs
    out = pd.DataFrame(rows, columns=LABEL_COLS)
    out.insert(0, ID_COL, table[ID_COL].astype(str).to_numpy())
    return out


def read_submissions(paths: Sequence[Path], field: str = "probs") -> pd.DataFrame:
    """Several submissions as one table (e.g. the out-of-fold predictions of each fold); a series in two is an
    error, since pooled out-of-fold scores must see each series once."""
    table = pd.concat([read_submission(p, field)[[ID_COL, *LABEL_COLS]] for p in paths], ignore_index=True)
    twice = table[ID_COL][table[ID_COL].duplicated()]
    if len(twice):
        raise ValueError(f"{len(twice)} series have rows in more than one submission (first: {twice.iloc[0]})")
    return table


def report(solution: pd.DataFrame, submission: pd.DataFrame, groups: pd.Series | None = None,
           largest_dome: pd.Series | None = None, only_submitted: bool = False) -> str:
    """Markdown: overall score, AUC per label, per group (e.g. protocol) AUC(present), and with ``largest_dome``
    (patient mm per positive series) AUC(present) of each dome band's positives against every negative.
    ``only_submitted`` scores the solution's series that have a row (out-of-fold predictions of some folds)."""
    if only_submitted:
        solution = solution[solution[ID_COL].astype(str).isin(set(submission[ID_COL].astype(str)))]
        if solution.empty:
            raise ValueError("no submission series is in the solution")
    merged = solution[[ID_COL, *LABEL_COLS]].merge(submission[[ID_COL, *LABEL_COLS]], on=ID_COL,
                                                   suffixes=("", "_pred"), how="left")
    if merged[[f"{c}_pred" for c in LABEL_COLS]].isna().any().any():
        raise ValueError("some solution series have no submission row")
    truth = merged[LABEL_COLS].to_numpy(float)
    pred = merged[[f"{c}_pred" for c in LABEL_COLS]].to_numpy(float)
    names = two_class_columns(truth)
    defined = [LABEL_COLS.index(c) for c in names]
    aucs = column_aucs(truth[:, defined], pred[:, defined], names)
    lines = [f"series: {len(merged)}",
             f"score (mean weighted columnwise AUC over {len(names)} defined columns): "
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
            value = f"{roc_auc(t, p):.3f}" if len(np.unique(t)) == 2 else "undefined"
            lines.append(f"| {key} | {int(m.sum())} | {int(t.sum())} | {value} |")
    if largest_dome is not None:
        from train_offline.domes import DOME_BANDS

        sizes = merged[ID_COL].map(largest_dome).to_numpy(dtype=float)
        t, p = truth[:, -1], pred[:, -1]
        lines += ["", "| largest dome | positives | AUC(present) vs all negatives |", "|---|---|---|"]
        for name, lo, hi in DOME_BANDS:
            m = (t == 1) & (sizes >= lo) & (sizes < hi)
            keep = m | (t == 0)
            value = f"{roc_auc(t[keep], p[keep]):.3f}" if m.any() and (t == 0).any() else "undefined"
            lines.append(f"| {name} | {int(m.sum())} | {value} |")
    return "\n".join(lines)


def candidate_report(details: pd.DataFrame, domes: Mapping[str, list], radius_mm: float = 6.0) -> str:
    """Markdown: how many candidate sites the kernel took per series, the fraction of aneurysms with one within dome
    radius + 2 mm and within ``radius_mm`` per dome band (``domes.candidate_recall``), and what a miss costs: the
    P(present) of positive series whose every aneurysm has a candidate within radius + 2 mm, against the others."""
    from train_offline.domes import DOME_BANDS, band_of, candidate_recall, found_by

    if "candidates_lps" not in details.columns:
        raise KeyError("the details file has no candidates_lps (write it with kernel.gateway --details)")
    live = details[details["candidates_lps"].apply(lambda c: isinstance(c, list))]
    cands = {str(u): np.asarray(c, dtype=np.float64).reshape(-1, 3)
             for u, c in zip(live[ID_COL], live["candidates_lps"], strict=True)}
    uids = list(cands)
    counts = np.array([len(c) for c in cands.values()])
    recall = candidate_recall(cands, domes, uids, radius_mm)
    lines = [f"candidates per series: mean {counts.mean():.2f}, min {counts.min()}, max {counts.max()} "
             f"({len(uids)} series)", "",
             f"| largest dome | aneurysms | candidate within r + 2 mm | within {radius_mm:g} mm |", "|---|---|---|---|"]
    for name in [*(b for b, _, _ in DOME_BANDS), "all"]:
        if name in recall:
            r = recall[name]
            lines.append(f"| {name} | {r['aneurysms']} | {r['within_radius_2mm']:.2f} | "
                         f"{r['within_positive_radius']:.2f} |")
    present = {str(u): float(p[-1]) for u, p in zip(live[ID_COL], live["probs"], strict=True)}
    lines += ["", "| largest dome | positives: every aneurysm found / not | median P(present) found / not |",
              "|---|---|---|"]
    for name, _, _ in DOME_BANDS:
        found, missed = [], []
        for uid in uids:
            if domes.get(uid) and band_of(max(d.dome_mm for d in domes[uid])) == name:
                hit = all(found_by(cands[uid], d) for d in domes[uid])
                (found if hit else missed).append(present[uid])
        if found or missed:
            med = [f"{np.median(v):.3f}" if v else "-" for v in (found, missed)]
            lines.append(f"| {name} | {len(found)} / {len(missed)} | {med[0]} / {med[1]} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train_offline.metric",
                                     description="Score a submission (CSV or parquet) against a solution CSV.")
    parser.add_argument("--solution", type=Path, required=True, help="SeriesInstanceUID + 14 label columns")
    parser.add_argument("--submission", type=Path, required=True, nargs="+",
                        help="submission.parquet, a CSV of the same, or the gateway's --details JSONL; several are "
                             "pooled (each series in one)")
    parser.add_argument("--field", default="probs", choices=["probs", "coarse_probs"],
                        help="with a --details JSONL: the kernel's rows (probs, default) or the classifiers' before "
                             "the fine stage (coarse_probs)")
    parser.add_argument("--groups", type=Path, help="CSV/JSONL with SeriesInstanceUID and a group column")
    parser.add_argument("--group-col", default="Modality", help="group column in --groups (default Modality)")
    parser.add_argument("--domes", type=Path, help="phantom data folder with phantom_truth.jsonl: AUC by dome size")
    parser.add_argument("--candidates", action="store_true",
                        help="with a --details JSONL and --domes: candidate sites per series and their recall per "
                             "dome band")
    parser.add_argument("--only-submitted", action="store_true",
                        help="score only the solution series that have a row (e.g. train.csv against the pooled "
                             "out-of-fold files of the trained folds)")
    args = parser.parse_args(argv)
    try:
        groups = None
        if args.groups:
            table = _read_table(args.groups)
            groups = pd.Series(table[args.group_col].to_numpy(), index=table[ID_COL].astype(str))
        largest = None
        if args.domes:
            from train_offline.domes import load_domes

            domes = load_domes(args.domes)
            if not domes:
                raise ValueError(f"no phantom_truth.jsonl in {args.domes}")
            largest = pd.Series({uid: max(d.dome_mm for d in ds) for uid, ds in domes.items() if ds}, dtype=float)
        print(report(_read_table(args.solution), read_submissions(args.submission, args.field), groups, largest,
                     only_submitted=args.only_submitted))
        if args.candidates:
            if not (args.domes and len(args.submission) == 1 and args.submission[0].suffix == ".jsonl"):
                raise ValueError("--candidates needs one --details JSONL as the submission and --domes")
            print("\n" + candidate_report(_read_table(args.submission[0]), domes))
    except (OSError, KeyError, ValueError) as exc:
        print(f"metric failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
