"""Local gateway simulator: share directory layout, the one-row and column checks, shuffling, scoring plumbing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from kernel import gateway
from kernel.labels import ID_COL, LABEL_COLS
from testkit.kaggle_stub import write_stand_in_package
from testkit.kernel_data import write_test_split


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_split(tmp_path_factory.mktemp("split"), n=6, seed=1, prefer_phantoms=False)


def _row(value: float = 0.25) -> pl.DataFrame:
    return pl.DataFrame({c: [value] for c in LABEL_COLS})


def test_share_series_links_only_top_level_dcm(tmp_path: Path) -> None:
    series = tmp_path / "data" / "series" / "1.2.3"
    (series / "nested").mkdir(parents=True)
    for name in ("a.dcm", "b.dcm", "notes.txt", "nested/c.dcm"):
        (series / name).write_bytes(b"x")
    shared = gateway.share_series(series, tmp_path / "share")
    assert shared == tmp_path / "share" / series.relative_to(series.anchor)  # as kaggle_evaluation lays it out
    assert shared.name == "1.2.3"
    assert sorted(p.name for p in shared.iterdir()) == ["a.dcm", "b.dcm"]
    assert all(p.is_symlink() and p.resolve() == (series / p.name).resolve() for p in shared.iterdir())


def test_check_prediction_accepts_polars_pandas_and_an_id_column() -> None:
    out = gateway.check_prediction(_row(0.3), "u1")
    assert out.columns == [ID_COL, *LABEL_COLS] and out[ID_COL][0] == "u1"
    out = gateway.check_prediction(_row(0.3).to_pandas(), "u2")
    assert out.row(0)[1:] == pytest.approx([0.3] * 14)
    with_id = pl.DataFrame({ID_COL: ["wrong"]}).hstack(_row(0.3))
    assert gateway.check_prediction(with_id, "u3")[ID_COL][0] == "u3"  # the gateway sets the ID


@pytest.mark.parametrize(
    ("prediction", "message"),
    [
        (None, "returned None"),
        ({"a": 1}, "DataFrame"),
        (pl.concat([_row(), _row()]), "exactly one row"),
        (_row().select(list(reversed(LABEL_COLS))), "in order"),
        (_row().drop(LABEL_COLS[3]), "missing"),
        (_row().with_columns(pl.lit(float("nan")).alias(LABEL_COLS[0])), "bad columns"),
        (_row().with_columns(pl.lit(1.5).alias(LABEL_COLS[-1])), "bad columns"),
        (_row().with_columns(pl.lit("x").alias(LABEL_COLS[2])), "not numbers"),
    ],
)
def test_check_prediction_rejects(prediction: object, message: str) -> None:
    with pytest.raises(gateway.GatewayError, match=message):
        gateway.check_prediction(prediction, "u")


def test_run_local_gateway_protocol(split: Path, tmp_path: Path) -> None:
    uids = pl.read_csv(split / "test.csv")[ID_COL].to_list()
    seen: list[tuple[str, list[str], list[str]]] = []

    def fake_predict(series_path: str) -> pd.DataFrame:
        path = Path(series_path)
        siblings = sorted(p.name for p in path.parent.iterdir())
        seen.append((path.name, sorted(os.listdir(path)), siblings))
        return pd.DataFrame({c: [((len(seen) - 1) % 6 + 1) / 10] for c in LABEL_COLS})

    out = tmp_path / "submission.parquet"
    result = gateway.run_local_gateway(split, fake_predict, out=out, seed=7, progress=False)
    submission = pl.read_parquet(out)
    assert submission.columns == [ID_COL, *LABEL_COLS]
    assert sorted(submission[ID_COL]) == sorted(uids)
    order = [name for name, _, _ in seen]
    assert order == submission[ID_COL].to_list() and sorted(order) == sorted(uids)
    for name, files, siblings in seen:
        assert siblings == [name], "each call sees a fresh share directory holding only its own series"
        assert files == sorted(p.name for p in (split / "series" / name).glob("*.dcm"))
    assert submission[LABEL_COLS[0]].to_list() == pytest.approx([i / 10 for i in range(1, 7)])
    assert set(result.seconds) == set(uids) and result.fallbacks is None
    again = gateway.run_local_gateway(split, fake_predict, out=None, seed=7, progress=False)
    assert again.submission[ID_COL].to_list() == order  # the seed fixes the shuffle
    other = gateway.run_local_gateway(split, fake_predict, out=None, seed=8, progress=False)
    assert other.submission[ID_COL].to_list() != order


def test_run_local_gateway_stops_on_a_bad_row(split: Path) -> None:
    with pytest.raises(gateway.GatewayError, match="exactly one row"):
        gateway.run_local_gateway(split, lambda path: pl.concat([_row(), _row()]), out=None, progress=False)


def test_timing_table_percentiles() -> None:
    seconds = {f"u{i}": float(i) for i in range(1, 21)}
    table = gateway.timing_table(seconds, {f"u{i}": ("CTA" if i <= 10 else "MRA") for i in range(1, 21)})
    lines = table.splitlines()
    assert lines[2] == f"| all | 20 | {np.percentile(range(1, 21), 50):.3f} | {np.percentile(range(1, 21), 95):.3f} " \
                       "| 20.000 |"
    assert lines[3].startswith("| all but the first call | 19 | 11.000 |")
    assert lines[4].startswith("| CTA | 10 | 5.500 |") and lines[5].endswith("| 20.000 |")


def test_score_submission_aligns_rows_to_the_solution(split: Path) -> None:
    """Rows are matched by UID: the solution's own labels as scores give 1.0 in any row order, their negation 0.0."""
    solution = pl.read_csv(split / "solution.csv").with_columns(pl.col(ID_COL).cast(pl.Utf8))
    perfect = solution.select(ID_COL, *[pl.col(c).cast(pl.Float64) for c in LABEL_COLS]).reverse()
    assert gateway.solution_columns(split / "solution.csv") == LABEL_COLS  # the synthetic split has both classes
    assert gateway.score_submission(split / "solution.csv", perfect) == 1.0
    inverted = perfect.with_columns([(1.0 - pl.col(c)).alias(c) for c in LABEL_COLS])
    assert gateway.score_submission(split / "solution.csv", inverted) == 0.0
    present_only = gateway.score_submission(split / "solution.csv", perfect, ["Aneurysm Present"])
    assert present_only == 1.0
    with pytest.raises(gateway.GatewayError, match="no prediction"):
        gateway.score_submission(split / "solution.csv", perfect.head(3))


def test_real_package_path_is_used_when_given(split: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in kaggle_evaluation package: the gateway must import it from the given folder and call it."""
    package = tmp_path / "download" / "kaggle_evaluation"
    write_stand_in_package(package)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "kaggle_evaluation", raising=False)
    monkeypatch.delitem(sys.modules, "kaggle_evaluation.rsna_inference_server", raising=False)
    assert gateway.find_kaggle_evaluation(package) == package.parent
    assert gateway.find_kaggle_evaluation(package.parent) == package.parent
    submission = gateway.run_kaggle_evaluation(lambda path: _row(0.125), package, split)
    assert submission.height == 6 and submission[LABEL_COLS[5]].to_list() == [0.125] * 6
    monkeypatch.delitem(sys.modules, "kaggle_evaluation", raising=False)
    monkeypatch.delitem(sys.modules, "kaggle_evaluation.rsna_inference_server", raising=False)
    with pytest.raises(gateway.GatewayError, match="columns"):
        gateway.run_kaggle_evaluation(lambda path: _row(0.1).select(list(reversed(LABEL_COLS))), package, split)


def test_kernel_main_serves_on_a_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KAGGLE_IS_COMPETITION_RERUN set: the competition's package is found under /kaggle/input and serve() runs."""
    package = tmp_path / "input" / gateway.COMPETITION / "kaggle_evaluation"
    write_stand_in_package(package)
    monkeypatch.setattr(gateway, "KAGGLE_INPUT", tmp_path / "input")
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    monkeypatch.delitem(sys.modules, "kaggle_evaluation", raising=False)
    monkeypatch.delitem(sys.modules, "kaggle_evaluation.rsna_inference_server", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert gateway.kernel_main(["--data", "ignored"]) == 0
    from kaggle_evaluation import rsna_inference_server

    from kernel import predict as kernel_predict

    assert rsna_inference_server.SERVED == [kernel_predict.predict]
    monkeypatch.delenv("KAGGLE_IS_COMPETITION_RERUN")
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    with pytest.raises(SystemExit):  # off Kaggle without --data: a usage error, not a silent run
        gateway.kernel_main([])


def test_true_modalities_from_solution_or_phantom_truth(split: Path, tmp_path: Path) -> None:
    solution = pl.read_csv(split / "solution.csv")
    from_solution = gateway.true_modalities(None, split / "solution.csv")
    assert from_solution == dict(zip(solution[ID_COL], solution["Modality"], strict=True))
    data = tmp_path / "phantom_split"
    data.mkdir()
    (data / "phantom_truth.jsonl").write_text('{"SeriesInstanceUID": "1.2", "modality": "MRI T2"}\n'
                                              '{"SeriesInstanceUID": "3.4", "modality": "CTA"}\n')
    no_modality = tmp_path / "solution.csv"
    solution.drop("Modality").write_csv(no_modality)
    assert gateway.true_modalities(data, no_modality) == {"1.2": "MRI T2", "3.4": "CTA"}
    assert gateway.true_modalities(tmp_path, None) == {}
