"""A stand-in for the competition's ``kaggle_evaluation`` package: the same module and class names, a local gateway
that calls ``predict`` once per test.csv row and writes ./submission.parquet, and a ``serve`` that records the call."""

from __future__ import annotations

from pathlib import Path

SERVER_SOURCE = """\
import polars as pl

SERVED = []


class RSNAInferenceServer:
    def __init__(self, predict):
        self.predict = predict

    def run_local_gateway(self, data_paths=None, file_share_dir=None):
        test_csv, series = data_paths
        rows = []
        for uid in pl.read_csv(test_csv, infer_schema_length=0)['SeriesInstanceUID']:
            row = self.predict(series + '/' + uid)
            rows.append(row.insert_column(0, pl.Series('SeriesInstanceUID', [uid])))
        pl.concat(rows).write_parquet('submission.parquet')

    def serve(self):
        SERVED.append(self.predict)
"""


def write_stand_in_package(package: Path) -> Path:
    """Write ``package`` (a folder named ``kaggle_evaluation``) with ``rsna_inference_server.py``; returns it."""
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "rsna_inference_server.py").write_text(SERVER_SOURCE)
    return package
