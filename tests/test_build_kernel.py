"""build_kernel.py: the built file, copied alone next to a weights folder, runs the gateway and scores.

The end-to-end test builds the kernel with the shipped weights, copies the single file and the weights dataset to a
temporary folder, runs it in a subprocess on a test split, and checks the submission (columns, order, range, no NaN),
parity with the package run in-process, and the score against the shipped weights' recorded validation score.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import build_kernel
from kernel import predict as kernel_predict
from kernel.budget import TimeBudget
from kernel.labels import ID_COL, LABEL_COLS
from kernel.manifest import load_manifest
from testkit.kernel_data import write_test_split
from testkit.onnx_factory import write_random_weights

REPO = Path(__file__).resolve().parent.parent
TRAINED_MARGIN = 0.1  # the shipped ensemble must score within this of its recorded validation score


@pytest.mark.parametrize("text", ["plain\n", "a ''' b\n", "ends with \\", "c:\\path\\n'\"\n", "crlf\r\n", ""])
def test_literal_round_trips(text: str) -> None:
    assert ast.literal_eval(build_kernel.literal(text)) == text


def test_build_is_byte_identical_and_complete(tmp_path: Path) -> None:
    weights = write_random_weights(tmp_path / "w", folds=1, seed=2)
    outputs = []
    for run in ("a", "b"):
        build_kernel.build(tmp_path / run, name="k", weights=weights, user="me")
        files = sorted(p.relative_to(tmp_path / run) for p in (tmp_path / run).rglob("*") if p.is_file())
        outputs.append({str(f): (tmp_path / run / f).read_bytes() for f in files})
    assert outputs[0] == outputs[1]
    assert sorted(outputs[0]) == sorted([
        "kernel/k.py", "kernel/k.ipynb", "kernel/kernel-metadata.json", "weights/manifest.json",
        "weights/dataset-metadata.json", "weights/locator_f0.onnx", "weights/classifier_f0.onnx",
    ])
    code = outputs[0]["kernel/k.py"].decode()
    notebook = json.loads(outputs[0]["kernel/k.ipynb"])
    assert len(notebook["cells"]) == 1 and "".join(notebook["cells"][0]["source"]) == code
    namespace: dict = {}
    exec(compile(code.split("\ndef _install_sources", 1)[0], "k.py", "exec"), namespace)  # data part only
    for rel in ("kernel/predict.py", "kernel/gateway.py", "kernel/preprocess.py", "kernel/dicom_io.py",
                "kernel/volume.py", "kernel/dicom_headers.py", "kernel/dicom_stack.py", "kernel/procmem.py",
                "kernel/read_worker.py", "kernel/read_worker_main.py"):
        assert namespace["SOURCES"][rel] == (REPO / rel).read_text(), f"{rel} not embedded verbatim"
    assert "def predict(series_path: str)" in code  # readable text, not an opaque blob
    meta = json.loads(outputs[0]["kernel/kernel-metadata.json"])
    assert meta["competition_sources"] == ["rsna-intracranial-aneurysm-detection"]
    assert meta["enable_gpu"] is True and meta["enable_internet"] is False
    assert meta["code_file"] == "k.ipynb" and meta["dataset_sources"] == ["me/rsna-aneurysm-weights"]
    assert json.loads(outputs[0]["weights/dataset-metadata.json"])["id"] == "me/rsna-aneurysm-weights"
    assert outputs[0]["weights/locator_f0.onnx"] == (weights / "locator_f0.onnx").read_bytes()


def test_build_refuses_stale_weights(tmp_path: Path) -> None:
    weights = write_random_weights(tmp_path / "w", folds=1, seed=2)
    (weights / "locator_f0.onnx").write_bytes(b"stale")
    with pytest.raises(Exception, match="sha256"):
        build_kernel.build(tmp_path / "dist", weights=weights)


def test_wheel_download_command_targets_kaggle() -> None:
    cmd = build_kernel.pip_download_command(Path("/x"), "3.11")
    assert [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--platform"] == list(build_kernel.PLATFORMS)
    assert cmd[1:4] == ["-m", "pip", "download"] and "--only-binary=:all:" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.11"
    for requirement in ("onnxruntime-gpu", "onnxruntime", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pyjpegls"):
        assert requirement in cmd


def test_built_kernel_alone_runs_the_gateway_and_scores(tmp_path: Path) -> None:
    weights = load_manifest(REPO / "weights").weights_dir  # the shipped weights: they must load
    dist = tmp_path / "dist"
    paths = build_kernel.build(dist, name="rsna-kernel", weights=weights)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(paths["kernel"], run / "rsna-kernel.py")
    shutil.copytree(paths["weights"], run / "weights")
    data = write_test_split(tmp_path / "data", n=8, seed=11)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RSNA_", "KAGGLE_")) and k != "PYTHONPATH"}
    env["TMPDIR"] = str(tmp_path / "tmp")  # where the kernel unpacks its sources
    env["RSNA_TIME_LIMIT_S"] = "1e7"  # the full plan even on a loaded machine, so the rows can be compared below
    (tmp_path / "tmp").mkdir()
    proc = subprocess.run(
        [sys.executable, "rsna-kernel.py", "--data", str(data), "--weights", "weights", "--solution",
         str(data / "solution.csv"), "--seed", "0", "--no-progress"],
        cwd=run, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    unpacked = list((tmp_path / "tmp").glob("rsna_kernel_*/kernel/predict.py"))
    assert len(unpacked) == 1, "the kernel must run from its own embedded sources"
    submission = pl.read_parquet(run / "submission.parquet")
    test_uids = pl.read_csv(data / "test.csv")[ID_COL].cast(pl.Utf8).to_list()
    assert submission.columns == [ID_COL, *LABEL_COLS]
    assert sorted(submission[ID_COL].to_list()) == sorted(test_uids)
    values = submission.select(LABEL_COLS).to_numpy()
    assert values.dtype == np.float64 and np.all(np.isfinite(values)) and np.all((values >= 0) & (values <= 1))
    assert "fallback rows: 0 of 8" in proc.stdout, proc.stdout + proc.stderr

    # Parity: the package in this process gives the same rows as the built file.
    predictor = kernel_predict.Predictor(str(run / "weights"), budget=TimeBudget(limit_s=1e6, margin_s=0))
    for uid, *row in submission.iter_rows():
        frame, record = predictor.predict(str(data / "series" / uid))
        assert record.level == "full", record
        np.testing.assert_allclose(row, frame.row(0), atol=1e-6, err_msg=uid)

    match = re.search(r"^score(?: \((\d+) of 14 columns\))?: ([0-9.]+)$", proc.stdout, flags=re.M)
    from kernel.metric import score

    assert match, "the built kernel did not print a score: " + proc.stdout + proc.stderr
    solution = pl.read_csv(data / "solution.csv")
    columns = [c for c in LABEL_COLS if solution[c].n_unique() == 2]  # small splits miss rare locations
    assert int(match.group(1) or 14) == len(columns) and solution["Aneurysm Present"].n_unique() == 2
    aligned = solution.select(ID_COL).join(submission, on=ID_COL, how="left", maintain_order="left")
    expected = score(solution.to_pandas(), aligned.to_pandas(), columns=columns)
    assert float(match.group(2)) == pytest.approx(expected, abs=1e-4)
    trained = load_manifest(run / "weights").validation_score()
    assert trained is not None and trained > 0.6, f"the shipped weights record no trained score ({trained})"
    assert expected >= trained - TRAINED_MARGIN, f"score {expected:.3f} below {trained - TRAINED_MARGIN:.3f} " \
                                                 f"(validation score {trained:.3f})"
