"""Local evaluation gateway: runs ``predict`` over a test folder the way Kaggle's gateway does, and checks more.

Faithful to ``kaggle_evaluation`` (docs/how-to/evaluate-locally.md): reads
``test.csv``, shuffles the unique SeriesInstanceUIDs, exposes each series' ``*.dcm`` files (non-recursive) through
symlinks in a fresh share directory at ``<share>/<absolute series path>``, calls ``predict(dir)`` once per series,
requires a DataFrame with one row, and writes ``submission.parquet`` with SeriesInstanceUID first. It also checks
what the real gateway does not: the 14 column names and their order, finite values in [0, 1].
With ``--kaggle-evaluation DIR`` the real package runs instead. With ``--solution`` it prints the metric, the
per-series time (p50/p95/max) and the fallback count. With ``--explain DIR`` it also writes one PNG per series
(``kernel.explain``: projections around the located centre, crops, candidates, probabilities, truth when given).

    python -m kernel.gateway --data DIR [--weights DIR] [--solution CSV] [--kaggle-evaluation DIR] [--out PATH]
                             [--explain DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from kernel.jsonl import read_jsonl
from kernel.labels import ID_COL, LABEL_COLS
from kernel.metric import score, two_class_columns

__all__ = [
    "Explainer", "GatewayError", "GatewayResult", "check_prediction", "find_kaggle_evaluation", "kernel_main", "main",
    "read_truth", "run_kaggle_evaluation", "run_local_gateway", "score_submission", "share_series", "timing_table",
    "solution_columns", "true_modalities",
]

COMPETITION = "rsna-intracranial-aneurysm-detection"
KAGGLE_INPUT = Path("/kaggle/input")


class GatewayError(RuntimeError):
    """A prediction the real gateway would reject (or score wrongly without saying so)."""


@dataclass
class GatewayResult:
    submission: pl.DataFrame
    seconds: dict[str, float]  # per series UID
    fallbacks: int | None = None  # None when predict is not the kernel's (no records)
    fallback_reasons: dict[str, str] = field(default_factory=dict)
    modalities: dict[str, str | None] = field(default_factory=dict)


def share_series(series_dir: Path, share_root: Path) -> Path:
    """Expose a series' ``*.dcm`` files (non-recursive) as symlinks at ``share_root/<absolute series path>``."""
    series_dir = Path(series_dir).absolute()
    target = share_root / series_dir.relative_to(series_dir.anchor)
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(series_dir.glob("*.dcm")):
        os.symlink(path.absolute(), target / path.name)
    return target


def check_prediction(prediction: Any, uid: str) -> pl.DataFrame:
    """The real gateway's checks (not None, a DataFrame, one row) plus column names/order and value checks."""
    if prediction is None:
        raise GatewayError(f"{uid}: predict returned None")
    if not isinstance(prediction, pl.DataFrame):
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover - pandas ships with the kernel's requirements
            pd = None
        if pd is None or not isinstance(prediction, pd.DataFrame):
            raise GatewayError(f"{uid}: predict must return a polars or pandas DataFrame, got {type(prediction)}")
        prediction = pl.from_pandas(prediction)
    if prediction.height != 1:
        raise GatewayError(f"{uid}: predict must return exactly one row, got {prediction.height}")
    cols = [c for c in prediction.columns if c != ID_COL]
    if cols != LABEL_COLS:
        missing = [c for c in LABEL_COLS if c not in cols]
        extra = [c for c in cols if c not in LABEL_COLS]
        raise GatewayError(
            f"{uid}: columns must be the 14 LABEL_COLS in order (the scorer compares by position); "
            f"missing {missing}, unexpected {extra}, got order {cols}"
        )
    try:
        values = prediction.select(LABEL_COLS).cast(pl.Float64).row(0)
    except Exception as exc:
        raise GatewayError(f"{uid}: prediction values are not numbers: {exc}") from exc
    bad = [c for c, v in zip(LABEL_COLS, values, strict=True) if v is None or not (0.0 <= v <= 1.0)]
    if bad:
        raise GatewayError(f"{uid}: values must be finite probabilities in [0, 1]; bad columns {bad}")
    return pl.DataFrame({ID_COL: [uid], **{c: [float(v)] for c, v in zip(LABEL_COLS, values, strict=True)}})


def _test_paths(data_dir: Path) -> tuple[Path, Path]:
    test_csv, series_dir = data_dir / "test.csv", data_dir / "series"
    if not test_csv.is_file() or not series_dir.is_dir():
        raise FileNotFoundError(f"{data_dir} must hold test.csv and series/<SeriesInstanceUID>/*.dcm")
    return test_csv, series_dir


def _iter_progress(items: list[str], progress: bool):
    if not progress:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc="series", unit="series")


def run_local_gateway(
    data_dir: str | os.PathLike[str],
    predict_fn: Callable[[str], Any],
    *,
    out: str | os.PathLike[str] | None = "submission.parquet",
    share_dir: str | os.PathLike[str] | None = None,
    seed: int | None = None,
    progress: bool = True,
    after_call: Callable[[str, pl.DataFrame], None] | None = None,
) -> GatewayResult:
    """Simulate the gateway over ``data_dir`` (test.csv + series/); write the submission to ``out`` (None: don't).

    ``after_call(uid, checked_row)`` runs after each series' call and checks, outside its timing (``--explain``).
    """
    test_csv, series_root = _test_paths(Path(data_dir))
    uids = list(pl.read_csv(test_csv)[ID_COL].cast(pl.Utf8).unique(maintain_order=True))
    rng = random.Random(seed if seed is not None else time.time())
    uids = rng.sample(uids, len(uids))
    own_share = share_dir is None
    share_root = Path(tempfile.mkdtemp(prefix="rsna_share_")) if own_share else Path(share_dir)
    if not own_share and share_root.exists() and any(share_root.iterdir()):
        raise GatewayError(f"share directory {share_root} must be empty or absent")
    from kernel import predict as kernel_predict

    records_before = len(kernel_predict.call_records())
    rows, seconds = [], {}
    try:
        for uid in _iter_progress(uids, progress):
            shared = share_series(series_root / uid, share_root)
            start = time.perf_counter()
            prediction = predict_fn(str(shared))
            seconds[uid] = time.perf_counter() - start
            rows.append(check_prediction(prediction, uid))
            if after_call is not None:
                after_call(uid, rows[-1])
            shutil.rmtree(share_root, ignore_errors=True)  # a fresh share directory for every series
            share_root.mkdir(parents=True, exist_ok=True)
    finally:
        if own_share:
            shutil.rmtree(share_root, ignore_errors=True)
    columns = [ID_COL, *LABEL_COLS]
    submission = pl.concat(rows) if rows else pl.DataFrame(schema={c: pl.Utf8 if c == ID_COL else pl.Float64
                                                                   for c in columns})
    if out is not None:
        submission.write_parquet(out)
    result = GatewayResult(submission=submission, seconds=seconds)
    if predict_fn is kernel_predict.predict:
        records = kernel_predict.call_records()[records_before:]
        result.fallbacks = sum(r.level == "fallback" for r in records)
        result.fallback_reasons = {r.uid: r.reason or "" for r in records if r.level == "fallback"}
        result.modalities = {r.uid: r.modality for r in records}
    return result


def _read_solution(solution_csv: str | os.PathLike[str]) -> pl.DataFrame:
    return pl.read_csv(solution_csv, infer_schema_length=None).with_columns(pl.col(ID_COL).cast(pl.Utf8))


def solution_columns(solution_csv: str | os.PathLike[str]) -> list[str]:
    """LABEL_COLS holding both classes in the solution (the AUC of any other column is undefined)."""
    solution = _read_solution(solution_csv)
    return two_class_columns(solution.select(LABEL_COLS).to_numpy())


def score_submission(
    solution_csv: str | os.PathLike[str], submission: pl.DataFrame, columns: Sequence[str] = LABEL_COLS
) -> float:
    """Competition metric (``kernel.metric.score``) of a submission against a solution CSV, rows matched by UID."""
    solution = _read_solution(solution_csv)
    missing = set(solution[ID_COL]) - set(submission[ID_COL])
    if missing:
        raise GatewayError(f"{len(missing)} solution series have no prediction, e.g. {sorted(missing)[:3]}")
    return score(solution, submission, columns=list(columns))


def timing_table(seconds: dict[str, float], groups: dict[str, str | None] | None = None) -> str:
    """Markdown table of per-series seconds (p50/p95/max), overall and per group (e.g. modality)."""
    rows = [("all", list(seconds.values()))]
    if len(seconds) > 1:  # the first call also loads the models (the gateway gives it no deadline)
        rows.append(("all but the first call", list(seconds.values())[1:]))
    if groups:
        for name in sorted({g for g in groups.values() if g}):
            rows.append((name, [s for uid, s in seconds.items() if groups.get(uid) == name]))
    lines = ["| series | n | p50 s | p95 s | max s |", "|---|---|---|---|---|"]
    for name, values in rows:
        if values:
            v = np.asarray(values)
            lines.append(f"| {name} | {len(v)} | {np.percentile(v, 50):.3f} | {np.percentile(v, 95):.3f} "
                         f"| {v.max():.3f} |")
    return "\n".join(lines)


def find_kaggle_evaluation(path: str | os.PathLike[str] | None = None) -> Path:
    """Folder to put on sys.path so ``import kaggle_evaluation.rsna_inference_server`` works.

    ``path`` may be the package folder itself or the folder holding it; without it, the competition mount under
    /kaggle/input is searched.
    """
    candidates = [Path(path)] if path is not None else [
        KAGGLE_INPUT / COMPETITION, KAGGLE_INPUT / "competitions" / COMPETITION, *sorted(KAGGLE_INPUT.glob("*")),
    ]
    for cand in candidates:
        if (cand / "rsna_inference_server.py").is_file():
            return cand.parent
        if (cand / "kaggle_evaluation" / "rsna_inference_server.py").is_file():
            return cand
    raise FileNotFoundError(f"no kaggle_evaluation/rsna_inference_server.py in {[str(c) for c in candidates]}")


def _inference_server(predict_fn: Callable[[str], Any], kaggle_evaluation: str | os.PathLike[str] | None):
    root = find_kaggle_evaluation(kaggle_evaluation)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import kaggle_evaluation.rsna_inference_server as rsna

    return rsna.RSNAInferenceServer(predict_fn)


def run_kaggle_evaluation(
    predict_fn: Callable[[str], Any],
    kaggle_evaluation: str | os.PathLike[str] | None,
    data_dir: str | os.PathLike[str] | None = None,
    share_dir: str | os.PathLike[str] | None = None,
) -> pl.DataFrame:
    """Run the real package's local gateway (it writes submission.parquet in the working directory); check it."""
    server = _inference_server(predict_fn, kaggle_evaluation)
    if data_dir is None:  # the package's own defaults: its test.csv and series/ (Kaggle notebook)
        server.run_local_gateway()
    else:
        test_csv, series_dir = _test_paths(Path(data_dir))
        share = share_dir or tempfile.mkdtemp(prefix="rsna_share_")
        shutil.rmtree(share, ignore_errors=True)  # must be empty or absent
        server.run_local_gateway(data_paths=(str(test_csv), str(series_dir)), file_share_dir=str(share))
    submission = pl.read_parquet("submission.parquet")
    if submission.columns != [ID_COL, *LABEL_COLS]:
        raise GatewayError(f"submission.parquet columns are {submission.columns}; expected ID then LABEL_COLS")
    return submission


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="folder with test.csv and series/<uid>/*.dcm")
    parser.add_argument("--weights", type=Path, help="weights folder with manifest.json (default: $RSNA_WEIGHTS_DIR, "
                        "a /kaggle/input dataset, or <repo>/weights)")
    parser.add_argument("--solution", type=Path, help="solution CSV (SeriesInstanceUID + 14 labels): print the score")
    parser.add_argument("--kaggle-evaluation", type=Path, help="run the real kaggle_evaluation package from here")
    parser.add_argument("--out", type=Path, default=Path("submission.parquet"), help="submission path (default: "
                        "%(default)s; the real package always writes ./submission.parquet)")
    parser.add_argument("--seed", type=int, default=None, help="shuffle seed (default: time, like the real gateway)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--explain", type=Path, metavar="DIR", help="write DIR/<uid>.png per series: projections "
                        "around the located centre, crops, candidates, the 14 probabilities (and the truth from "
                        "--solution, else <data>/solution.csv when present)")
    parser.add_argument("--details", type=Path, metavar="FILE", help="write FILE (JSONL), a line per series: the "
                        "row, the classifiers' probabilities before the fine stage, centre, candidates and their "
                        "probabilities and locations, modality (an ablation of the fine stage in one run)")
    return parser


def true_modalities(data_dir: Path | None, solution: Path | None) -> dict[str, str]:
    """UID -> modality from the solution's Modality column or a phantom split's phantom_truth.jsonl (else empty)."""
    if solution is not None:
        truth = pl.read_csv(solution, infer_schema_length=None)
        if "Modality" in truth.columns:
            return dict(zip(truth[ID_COL].cast(pl.Utf8).to_list(), truth["Modality"].to_list(), strict=True))
    jsonl = data_dir / "phantom_truth.jsonl" if data_dir is not None else None
    if jsonl is not None and jsonl.is_file():
        return {str(r[ID_COL]): str(r["modality"]) for r in read_jsonl(jsonl) if ID_COL in r and "modality" in r}
    return {}


def _report(result: GatewayResult, solution: Path | None, data_dir: Path | None = None) -> None:
    n = result.submission.height
    print(f"{n} series predicted; submission columns checked (SeriesInstanceUID + 14 LABEL_COLS in order)")
    if result.fallbacks is not None:
        print(f"fallback rows: {result.fallbacks} of {n}")
        for uid, reason in sorted(result.fallback_reasons.items())[:10]:
            print(f"  {uid}: {reason}")
    groups = true_modalities(data_dir, solution) or {
        uid: f"{m} (modality head)" for uid, m in result.modalities.items() if m
    }
    print(timing_table(result.seconds, groups))
    if solution is not None:
        columns = solution_columns(solution)
        if len(columns) == len(LABEL_COLS):
            print(f"score: {score_submission(solution, result.submission):.4f}")
        else:  # a small split: the same metric over the columns where it is defined, said plainly
            single = [c for c in LABEL_COLS if c not in columns]
            print(f"score over all 14 columns undefined: single-class in the solution: {single}")
            if columns:
                value = score_submission(solution, result.submission, columns)
                print(f"score ({len(columns)} of 14 columns): {value:.4f}")


def read_truth(solution: Path | None, data_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """UID -> solution row as a dict (LABEL_COLS; "Modality" from it or ``true_modalities``; "sites": the aneurysm
    centres of a phantom split's phantom_truth.jsonl); empty without a solution."""
    if solution is None or not Path(solution).is_file():
        return {}
    truth = {str(row[ID_COL]): row for row in _read_solution(solution).to_dicts()}
    for uid, modality in true_modalities(data_dir, solution).items():
        if uid in truth:
            truth[uid].setdefault("Modality", modality)
    jsonl = data_dir / "phantom_truth.jsonl" if data_dir is not None else None
    if jsonl is not None and jsonl.is_file():
        for row in read_jsonl(jsonl):
            uid = str(row.get(ID_COL))
            if uid in truth and isinstance(row.get("aneurysms"), list):
                truth[uid]["sites"] = [{"centre_lps": a["centre_lps"], "location": a.get("location")}
                                       for a in row["aneurysms"] if "centre_lps" in a]
    return truth


class Explainer:
    """``--explain``: after each call, ``kernel.explain.explain_call`` writes ``out_dir/<uid>.png``.

    A failed drawing is reported and counted, never fatal: the run still scores.
    """

    def __init__(self, out_dir: Path, truth: dict[str, dict[str, Any]]):
        from kernel import predict as kernel_predict

        self.out_dir, self.truth = Path(out_dir), truth
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.predictor = kernel_predict.get_predictor()  # created now (before the first call) to keep the last
        self.predictor.keep_last = True
        self.written: list[Path] = []
        self.failed: dict[str, str] = {}

    def __call__(self, uid: str, row: pl.DataFrame) -> None:
        from kernel import explain

        try:
            probs = [float(v) for v in row.select(LABEL_COLS).row(0)]
            self.written.append(explain.explain_call(self.predictor, uid, probs, self.truth.get(uid), self.out_dir)
                                .path)
        except Exception as exc:  # a drawing bug must not lose the submission
            self.failed[uid] = f"{type(exc).__name__}: {exc}"
            print(f"explain {uid}: {self.failed[uid]}", file=sys.stderr)
        finally:
            self.predictor.last = None  # do not hold a volume longer than needed

    def wrapped(self, predict_fn: Callable[[str], Any]) -> Callable[[str], Any]:
        """``predict_fn`` that explains each call (for the real package, which offers no hook)."""

        def predict_and_explain(series_path: str) -> Any:
            prediction = predict_fn(series_path)
            uid = os.path.basename(os.path.normpath(str(series_path)))
            try:
                row = check_prediction(prediction, uid)
            except GatewayError:
                return prediction  # the package reports it
            self(uid, row)
            return prediction

        return predict_and_explain

    def summary(self) -> str:
        text = f"explain: wrote {len(self.written)} PNGs to {self.out_dir}"
        return text + (f"; {len(self.failed)} failed: {sorted(self.failed)[:5]}" if self.failed else "")


class Details:
    """``--details``: after each call, a JSON line per series with what the prediction held (``recipe.Prediction``)."""

    def __init__(self, path: Path):
        from kernel import predict as kernel_predict

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        self.predictor = kernel_predict.get_predictor()
        self.predictor.keep_last = True
        self.count = 0

    def __call__(self, uid: str, row: pl.DataFrame) -> None:
        import json

        record: dict[str, Any] = {ID_COL: uid, "probs": [float(v) for v in row.select(LABEL_COLS).row(0)]}
        last = self.predictor.last
        if last is not None and last[0] == uid:
            out = last[2]
            record.update(
                coarse_probs=None if out.coarse_probs is None else np.round(out.coarse_probs, 6).tolist(),
                centre_lps=np.round(out.centre_lps, 2).tolist(), modality=out.modality,
                candidates_lps=np.round(out.candidates_lps, 2).tolist(),
                candidate_probs=np.round(out.candidate_probs, 6).tolist(),
                candidate_locations=list(out.candidate_locations))
        else:
            record["fallback"] = True
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        self.count += 1


def _chain(*callbacks: Callable[[str, pl.DataFrame], None] | None) -> Callable[[str, pl.DataFrame], None] | None:
    """One after-call hook running the given ones in order (None when there are none)."""
    active = [c for c in callbacks if c is not None]
    if not active:
        return None

    def run(uid: str, row: pl.DataFrame) -> None:
        for callback in active:
            callback(uid, row)

    return run


def main(argv: Sequence[str] | None = None, prog: str = "python -m kernel.gateway") -> int:
    """CLI: simulate the gateway (or run the real one) with the kernel's ``predict``."""
    args = _parser(prog).parse_args(argv)
    if args.data is None and args.kaggle_evaluation is None:
        _parser(prog).error("--data is required (or --kaggle-evaluation to use the package's own test set)")
    if args.weights is not None:
        os.environ["RSNA_WEIGHTS_DIR"] = str(args.weights.absolute())
    from kernel import predict as kernel_predict

    kernel_predict.reset_predictor()
    explainer = None
    if args.explain is not None:
        truth_csv = args.solution
        if truth_csv is None and args.data is not None and (args.data / "solution.csv").is_file():
            truth_csv = args.data / "solution.csv"
        explainer = Explainer(args.explain, read_truth(truth_csv, args.data))
    details = Details(args.details) if args.details is not None else None
    after_call = _chain(details, explainer)  # details first: the explainer drops the kept volume
    if args.kaggle_evaluation is not None:
        records_before = len(kernel_predict.call_records())
        predict_fn = explainer.wrapped(kernel_predict.predict) if explainer else kernel_predict.predict
        submission = run_kaggle_evaluation(predict_fn, args.kaggle_evaluation, args.data)
        if args.out.absolute() != Path("submission.parquet").absolute():
            shutil.copyfile("submission.parquet", args.out)
        records = kernel_predict.call_records()[records_before:]
        result = GatewayResult(
            submission=submission, seconds={r.uid: r.seconds for r in records},
            fallbacks=sum(r.level == "fallback" for r in records),
            fallback_reasons={r.uid: r.reason or "" for r in records if r.level == "fallback"},
            modalities={r.uid: r.modality for r in records},
        )
    else:
        result = run_local_gateway(args.data, kernel_predict.predict, out=args.out, seed=args.seed,
                                   progress=not args.no_progress, after_call=after_call)
    print(f"wrote {args.out}")
    if explainer is not None:
        print(explainer.summary())
    if details is not None:
        print(f"details: {details.count} lines in {details.path}")
    _report(result, args.solution, args.data)
    return 0


def kernel_main(argv: Sequence[str] | None = None, prog: str = "kernel") -> int:
    """Entry point of the built kernel: ``serve()`` on a Kaggle rerun, the real local gateway in a Kaggle notebook
    without arguments, else the local simulator on ``--data``."""
    from kernel import predict as kernel_predict

    argv = list(argv or [])
    if os.environ.get("KAGGLE_IS_COMPETITION_RERUN"):
        _inference_server(kernel_predict.predict, None).serve()
        return 0
    if not argv and kernel_predict.on_kaggle():
        submission = run_kaggle_evaluation(kernel_predict.predict, None)
        print(submission.head())
        return 0
    return main(argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
