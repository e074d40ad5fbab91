"""The competition metric against scikit-learn, name matching, row alignment and clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from kernel.labels import ID_COL, LABEL_COLS, PRESENT_COL
from kernel.metric import column_aucs, evaluate_predictions, roc_auc, score


def _frames(n: int = 200, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, 14)) < 0.3).astype(int)
    pred = np.clip(truth * rng.uniform(0.0, 0.6, (n, 14)) + rng.random((n, 14)) * 0.7, 0, 1)
    ids = [f"1.2.{i}" for i in range(n)]
    solution = pd.DataFrame(truth, columns=LABEL_COLS).assign(**{ID_COL: ids})
    submission = pd.DataFrame(pred, columns=LABEL_COLS).assign(**{ID_COL: ids})
    return solution, submission


def _sklearn_score(solution: pd.DataFrame, submission: pd.DataFrame) -> float:
    aucs = [roc_auc_score(solution[c], submission[c]) for c in LABEL_COLS]
    return 0.5 * aucs[-1] + 0.5 * float(np.mean(aucs[:-1]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_score_matches_sklearn_weighted_mean(seed: int) -> None:
    solution, submission = _frames(seed=seed)
    assert score(solution, submission) == pytest.approx(_sklearn_score(solution, submission), abs=1e-12)
    assert score(solution, submission, [PRESENT_COL]) == pytest.approx(roc_auc_score(solution[PRESENT_COL],
                                                                                     submission[PRESENT_COL]))
    aucs = column_aucs(solution[LABEL_COLS].to_numpy(), submission[LABEL_COLS].to_numpy())
    assert list(aucs) == LABEL_COLS
    assert 0.5 < aucs[PRESENT_COL] < 1.0  # informative but not perfect predictions


def test_columns_matched_by_name_and_rows_by_id_polars_too() -> None:
    solution, submission = _frames()
    expected = _sklearn_score(solution, submission)
    shuffled = submission[[ID_COL, *reversed(LABEL_COLS)]].sample(frac=1.0, random_state=3)
    assert score(solution, shuffled) == pytest.approx(expected, abs=1e-12)
    assert score(pl.from_pandas(solution), pl.from_pandas(shuffled)) == pytest.approx(expected, abs=1e-12)
    # Without ids rows are positional: shuffling them changes the score.
    assert score(solution.drop(columns=ID_COL), shuffled.drop(columns=ID_COL)) != pytest.approx(expected)


@pytest.mark.parametrize("decimals", [0, 1, 2])
def test_roc_auc_with_ties_matches_sklearn(decimals: int) -> None:
    """Rounded scores make many ties: average ranks must give scikit-learn's value exactly."""
    rng = np.random.default_rng(decimals)
    truth = (rng.random(500) < 0.2).astype(float)
    pred = np.round(np.clip(truth * 0.3 + rng.random(500), 0, 1), decimals)
    assert roc_auc(truth, pred) == pytest.approx(roc_auc_score(truth, pred), abs=1e-12)
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    with pytest.raises(ValueError, match="single class"):
        roc_auc([1, 1], [0.2, 0.3])


def test_evaluation_leaves_out_single_class_columns() -> None:
    solution, submission = _frames()
    truth, pred = solution[LABEL_COLS].to_numpy(float).copy(), submission[LABEL_COLS].to_numpy(float)
    truth[:, 7] = 0  # Left ACA: no positive
    kept = [j for j in range(14) if j != 7]
    aucs = [roc_auc_score(truth[:, j], pred[:, j]) for j in kept]
    value = (13 * aucs[-1] + sum(aucs[:-1])) / (13 + 12)
    modalities = ["CTA", "MRA"] * (len(truth) // 2)
    result = evaluate_predictions(truth, pred, modalities)
    assert result["score"] == pytest.approx(value, abs=1e-12)
    assert result["undefined_columns"] == ["Left Anterior Cerebral Artery"]
    cta = np.asarray(modalities) == "CTA"
    assert result["per_modality"]["CTA"]["auc_present"] == pytest.approx(roc_auc_score(truth[cta, -1], pred[cta, -1]))
    assert result["per_modality"]["CTA"]["n"] == int(cta.sum()) and "MRI T2" not in result["per_modality"]


def test_perfect_and_inverted_predictions() -> None:
    solution, _ = _frames()
    assert score(solution, solution) == pytest.approx(1.0)
    inverted = solution.copy()
    inverted[LABEL_COLS] = 1 - inverted[LABEL_COLS]
    assert score(solution, inverted) == pytest.approx(0.0)


def test_single_class_column_is_named() -> None:
    solution, submission = _frames()
    solution["Left Anterior Cerebral Artery"] = 0
    with pytest.raises(ValueError, match="single-class.*Left Anterior Cerebral Artery"):
        score(solution, submission)


def test_missing_column_and_missing_rows_are_named() -> None:
    solution, submission = _frames()
    with pytest.raises(ValueError, match="Basilar Tip"):
        score(solution, submission.drop(columns="Basilar Tip"))
    with pytest.raises(ValueError, match="no submission row"):
        score(solution, submission.iloc[1:])
    bad = solution.astype({c: float for c in LABEL_COLS})
    bad.loc[0, PRESENT_COL] = np.nan
    with pytest.raises(ValueError, match="Aneurysm Present"):
        score(bad, submission)


def test_report_cli_per_label_and_per_group(tmp_path) -> None:
    from train_offline.metric import main

    solution, submission = _frames()
    solution.to_csv(tmp_path / "solution.csv", index=False)
    submission.sample(frac=1.0, random_state=0).to_parquet(tmp_path / "submission.parquet")
    groups = pd.DataFrame({ID_COL: solution[ID_COL], "Modality": ["CTA", "MRA"] * (len(solution) // 2)})
    groups.to_csv(tmp_path / "groups.csv", index=False)
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--solution", str(tmp_path / "solution.csv"), "--submission",
                     str(tmp_path / "submission.parquet"), "--groups", str(tmp_path / "groups.csv")]) == 0
    text = out.getvalue()
    assert f"{_sklearn_score(solution, submission):.4f}" in text
    cta = solution[ID_COL].isin(groups[groups.Modality == "CTA"][ID_COL])
    expected = roc_auc_score(solution.loc[cta, PRESENT_COL], submission.loc[cta, PRESENT_COL])
    assert f"| CTA | {int(cta.sum())} | {int(solution.loc[cta, PRESENT_COL].sum())} | {expected:.3f} |" in text
    assert main(["--solution", str(tmp_path / "missing.csv"), "--submission", str(tmp_path / "x.csv")]) == 2


def test_report_by_largest_dome_against_every_negative(tmp_path) -> None:
    import contextlib
    import io
    import json

    from train_offline.metric import main

    solution, submission = _frames()
    solution.to_csv(tmp_path / "solution.csv", index=False)
    submission.to_parquet(tmp_path / "submission.parquet")
    positives = solution.loc[solution[PRESENT_COL] == 1, ID_COL].tolist()
    sizes = {uid: [2.0, 5.0, 7.0][i % 3] for i, uid in enumerate(positives)}  # head scale 2 below: patient mm x2
    with open(tmp_path / "phantom_truth.jsonl", "w") as fh:
        for uid in solution[ID_COL]:
            domes = [{"location": "Basilar Tip", "centre_lps": [0, 0, 0], "dome_mm": sizes[uid] / 2}] \
                if uid in sizes else []
            fh.write(json.dumps({"SeriesInstanceUID": uid, "head_to_lps": (np.eye(4) * 2).tolist(),
                                 "aneurysms": domes}) + "\n")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--solution", str(tmp_path / "solution.csv"), "--submission",
                     str(tmp_path / "submission.parquet"), "--domes", str(tmp_path)]) == 0
    text = out.getvalue()
    negatives = solution[PRESENT_COL] == 0
    for band, size in (("< 3.5 mm", 2.0), ("4.5-6 mm", 5.0), (">= 6 mm", 7.0)):
        keep = negatives | solution[ID_COL].map(lambda u, s=size: sizes.get(u) == s)
        expected = roc_auc_score(solution.loc[keep, PRESENT_COL], submission.loc[keep, PRESENT_COL])
        n = sum(1 for v in sizes.values() if v == size)
        assert f"| {band} | {n} | {expected:.3f} |" in text
    assert "| 3.5-4.5 mm | 0 | undefined |" in text


def test_details_jsonl_scores_either_field(tmp_path) -> None:
    """The gateway's --details lines: ``probs`` and ``coarse_probs`` each score as the submission they hold; a
    fallback line (no coarse_probs) keeps its row."""
    import json

    from train_offline.metric import read_submission

    solution, submission = _frames()
    rng = np.random.default_rng(3)
    coarse = submission.copy()
    coarse[LABEL_COLS] = rng.random((len(coarse), len(LABEL_COLS)))
    with open(tmp_path / "details.jsonl", "w") as fh:
        for i, uid in enumerate(submission[ID_COL]):
            line = {ID_COL: uid, "probs": submission.loc[i, LABEL_COLS].tolist()}
            if i:
                line["coarse_probs"] = coarse.loc[i, LABEL_COLS].tolist()
            else:
                line["fallback"] = True
            fh.write(json.dumps(line) + "\n")
    coarse.loc[0, LABEL_COLS] = submission.loc[0, LABEL_COLS]
    for field, expected in (("probs", submission), ("coarse_probs", coarse)):
        got = read_submission(tmp_path / "details.jsonl", field)
        assert list(got.columns) == [ID_COL, *LABEL_COLS] and got[ID_COL].tolist() == expected[ID_COL].tolist()
        np.testing.assert_allclose(got[LABEL_COLS].to_numpy(float), expected[LABEL_COLS].to_numpy(float))
        assert score(solution, got) == pytest.approx(score(solution, expected), abs=1e-12)
    assert score(solution, coarse) != pytest.approx(score(solution, submission))
    with pytest.raises(KeyError, match="no 'modality'"):
        read_submission(tmp_path / "details.jsonl", "modality")


def test_pooled_out_of_fold_files_score_as_one_submission(tmp_path) -> None:
    """Several submissions (one per fold) pool into one; with --only-submitted the solution is cut to their series,
    the score equals scikit-learn's on that subset, and a series in two files is refused."""
    import contextlib
    import io

    from train_offline.metric import main

    solution, submission = _frames()
    solution.to_csv(tmp_path / "train.csv", index=False)
    half = len(submission) // 2
    subset = submission.iloc[: half + 10]
    subset.iloc[:half].to_csv(tmp_path / "fold0.csv", index=False)
    subset.iloc[half:].to_csv(tmp_path / "fold1.csv", index=False)
    args = ["--solution", str(tmp_path / "train.csv"), "--submission", str(tmp_path / "fold0.csv"),
            str(tmp_path / "fold1.csv")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*args, "--only-submitted"]) == 0
    expected = _sklearn_score(solution.iloc[: half + 10].reset_index(drop=True), subset.reset_index(drop=True))
    assert f"series: {half + 10}\n" in out.getvalue()
    assert f"{expected:.4f}" in out.getvalue()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(args) == 2  # without the flag the other series have no row
        assert main([*args, str(tmp_path / "fold1.csv"), "--only-submitted"]) == 2
    assert "no submission row" in err.getvalue() and "more than one submission" in err.getvalue()


def test_candidate_report_counts_recall_per_band_and_the_cost_of_a_miss(tmp_path) -> None:
    """Three positives (2 mm dome found 1 mm off, 2 mm dome missed 5 mm off, 7 mm dome found 4 mm off: within its
    radius + 2 = 5.5 mm) and a fallback line: the table's fractions and medians are those by hand."""
    import json

    from train_offline.domes import load_domes
    from train_offline.metric import candidate_report

    truth = {"a": ([0.0, 0.0, 0.0], 2.0, [[1.0, 0.0, 0.0], [30.0, 0.0, 0.0]]),
             "b": ([10.0, 0.0, 0.0], 2.0, [[15.0, 0.0, 0.0]]),
             "c": ([0.0, 20.0, 0.0], 7.0, [[0.0, 24.0, 0.0], [9.0, 9.0, 9.0], [1.0, 1.0, 1.0]])}
    with open(tmp_path / "phantom_truth.jsonl", "w") as fh:
        for uid, (centre, dome, _) in truth.items():
            fh.write(json.dumps({ID_COL: uid, "head_to_lps": np.eye(4).tolist(),
                                 "aneurysms": [{"location": "Basilar Tip", "centre_lps": centre, "dome_mm": dome}]})
                     + "\n")
        fh.write(json.dumps({ID_COL: "n", "head_to_lps": np.eye(4).tolist(), "aneurysms": []}) + "\n")
    present = {"a": 0.9, "b": 0.2, "c": 0.7, "n": 0.1}
    rows = [{ID_COL: u, "probs": [0.0] * 13 + [present[u]], "candidates_lps": truth[u][2] if u in truth else []}
            for u in present] + [{ID_COL: "f", "probs": [0.5] * 14, "fallback": True}]
    details = pd.DataFrame(rows)
    text = candidate_report(details, load_domes(tmp_path), radius_mm=6.0)
    assert "candidates per series: mean 1.50, min 0, max 3 (4 series)" in text
    assert "| < 3.5 mm | 2 | 0.50 | 1.00 |" in text  # a within 3 mm, b 5 mm off: outside 1 + 2, inside 6
    assert "| >= 6 mm | 1 | 1.00 | 1.00 |" in text
    assert "| all | 3 | 0.67 | 1.00 |" in text
    assert "| < 3.5 mm | 1 / 1 | 0.900 / 0.200 |" in text and "| >= 6 mm | 1 / 0 | 0.700 / - |" in text
    with pytest.raises(KeyError, match="candidates_lps"):
        candidate_report(details.drop(columns="candidates_lps"), load_domes(tmp_path))
