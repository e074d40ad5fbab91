"""scripts/gpu_check.py: the --cpu dry run end to end at tiny sizes, its comparisons, and its time limits.

The dry run goes through every section's code path on the CPU (small phantoms, tiny models through --set); the tests
read the report it writes and check that each section holds numbers, not only that it ran. Its comparisons are
between different computations: numpy against torch resampling, onnxruntime against torch (fp32 and bf16 CPU
autocast) for the models, and each difference must be non-zero, finite and within its tolerance; the comparison
helper is also shown to fail on a perturbed or NaN run. The torchrun part (gloo, one process) is slow on two cores and
runs with --runslow.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.py"
if str(REPO / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO / "scripts"))

from gpu_sections import harness  # noqa: E402
from gpu_sections.models import TOLERANCE, Comparison, RunOutputs, compare  # noqa: E402


def _dry_run(tmp: Path, *extra: str, timeout: float = 400) -> tuple[subprocess.CompletedProcess, str, dict]:
    out = tmp / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    env.pop("OUT", None)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--out", str(out), *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    md = (out / "gpu_check.md").read_text() if (out / "gpu_check.md").is_file() else ""
    data = json.loads((out / "gpu_check.json").read_text()) if (out / "gpu_check.json").is_file() else {}
    return proc, md, data


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """The --cpu report (markdown, JSON) without torchrun; fails every test that uses it when the run failed."""
    proc, md, data = _dry_run(tmp_path_factory.mktemp("gpu_check"), "--skip", "torchrun")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "report:" in proc.stdout and md, "no report written"
    return md, data


def _positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_dry_run_report_has_every_section_ok(dry_run) -> None:
    md, data = dry_run
    sections = data["sections"]
    assert list(sections) == ["machine", "preprocess", "models", "e2e", "train"]
    for key, sec in sections.items():
        assert sec["status"] == "ok", (key, sec["status"])
        assert f"*{key}: ok*" in md
    for n, title in enumerate(["Machine", "Preprocessing", "Locator + classifier", "Kernel end to end", "Training"], 1):
        assert f"## {n}. {title}" in md
    assert "onnxruntime's CUDA provider" in md  # the report says what it could not test
    assert data["header"]["commit"]  # train_offline.provenance.git_commit(short=True)

    machine = sections["machine"]["data"]
    assert machine["CUDA available"] is False and machine["torch"] and machine["package pydicom"][0].isdigit()


def test_dry_run_resampling_numpy_against_torch(dry_run) -> None:
    md, data = dry_run
    pre = data["sections"]["preprocess"]["data"]
    for backend in ("numpy", "torch"):
        assert _positive(pre["resample"][backend]["median_s"]) and _positive(pre["prepare_volume_s"][backend])
    assert 0 < pre["resample"]["torch"]["rel_diff"] <= 1e-5  # two implementations of one grid: float rounding apart
    assert pre["resample"]["torch"]["shape"] == pre["resample"]["numpy"]["shape"]
    assert "| `torch` | CPU" in md and "**Per 400 x 512 x 512 CTA**" in md


def test_dry_run_models_torch_against_onnxruntime(dry_run) -> None:
    """torch CPU and onnxruntime CPU are different code (oneDNN vs MLAS): fp32 differs by float rounding, bf16 CPU
    autocast by more; both within their tolerance, and nothing is reported under a precision that did not run."""
    md, data = dry_run
    runs = data["sections"]["models"]["data"]["runs"]
    assert list(runs) == ["onnxruntime CPU fp32", "torch CPU fp32", "torch CPU bf16 autocast (CPU)"]
    reference = runs["onnxruntime CPU fp32"]
    assert reference["reference"] is True and "max_abs_diff" not in reference  # no comparison with itself
    assert len(reference["probs"]) >= 2  # the CTA and at least one more phantom
    for name, r in runs.items():
        assert _positive(r["median_s"]) and _positive(r["median_model_s"]), name
        assert all(len(p) == 14 and all(0 <= v <= 1 for v in p) for p in r["probs"]), name
    fp32, bf16 = runs["torch CPU fp32"], runs["torch CPU bf16 autocast (CPU)"]
    assert 0 < fp32["max_abs_diff"] <= TOLERANCE["fp32"] and fp32["max_centre_shift_mm"] < 1e-3, fp32
    assert fp32["max_abs_diff"] < bf16["max_abs_diff"] <= TOLERANCE["bf16"], bf16  # autocast did lower the precision
    assert math.isfinite(bf16["max_centre_shift_mm"])
    assert fp32["within"] is True and bf16["within"] is True
    assert "| torch CPU | fp16 autocast: not run (CUDA only here) | 0 |" in md
    assert "off: fp32" not in md


def test_dry_run_kernel_end_to_end(dry_run) -> None:
    _, data = dry_run
    e2e = data["sections"]["e2e"]["data"]["rows"]
    for name in ("direct torch", "direct numpy"):
        assert all(_positive(t) for t in e2e[name]["totals"]) and all(_positive(t) for t in e2e[name]["reads"])
    if importlib.util.find_spec("polars") is not None:
        assert e2e["Predictor"]["levels"] == ["full"] * len(e2e["direct torch"]["totals"])


def test_dry_run_training(dry_run) -> None:
    md, data = dry_run
    train = data["sections"]["train"]["data"]
    cl = train["channels_last"]
    assert len(cl["default_s"]) == len(cl["channels_last_s"]) == 2 and cl["autocast"] is None
    assert all(_positive(t) for t in cl["default_s"] + cl["channels_last_s"]) and _positive(cl["ratio_median"])
    assert "fp32 on the CPU (no CUDA autocast)" in md
    assert train["phantoms"]["rc"] == 0 and train["precache"]["rc"] == 0 and train["precache"]["cached"] >= 4
    single = train["single"]
    assert single["status"] == "ok" and single["summary"]["world_size"] == 1
    for stage in ("locator", "classifier"):
        s = single["stages"][stage]
        assert s["epochs"] == 2 and s["steps"] > 0 and _positive(s["s_per_step"]), stage
        assert math.isfinite(s["loss_first"]) and math.isfinite(s["loss_last"]) and s["ddp"] is None, stage
    assert "torchrun" not in train  # --skip torchrun
    assert "| torchrun | skipped (--skip)" in md
    assert "| python -m (one process) | ok |" in md


def _outputs(seed: int = 0) -> RunOutputs:
    rng = np.random.default_rng(seed)
    return RunOutputs(rng.uniform(0.01, 0.99, (3, 14)), rng.uniform(-80, 80, (3, 3)))


def test_compare_passes_a_run_within_tolerance_and_fails_a_perturbed_one() -> None:
    reference = _outputs()
    same = compare(reference, reference, TOLERANCE["fp32"])
    assert same == Comparison(0.0, 0.0, TOLERANCE["fp32"]) and same.within

    close = RunOutputs(reference.probs + 3e-7, reference.centres_lps)
    assert compare(close, reference, TOLERANCE["fp32"]).within

    probs = reference.probs.copy()
    probs[2, 13] += 1e-3  # one probability of the last series
    broken = compare(RunOutputs(probs, reference.centres_lps), reference, TOLERANCE["fp32"])
    assert broken.max_abs_diff == pytest.approx(1e-3) and broken.finite and not broken.within

    centres = reference.centres_lps.copy()
    centres[1] += [3.0, 4.0, 0.0]
    assert compare(RunOutputs(reference.probs, centres), reference, 1.0).max_centre_shift_mm == pytest.approx(5.0)


@pytest.mark.parametrize("where", [(0, 0), (2, 13)], ids=["first", "last"])
def test_compare_fails_a_nan_wherever_it_is(where: tuple[int, int]) -> None:
    """A NaN must not hide behind a larger finite difference (Python's max() would drop it in some orders)."""
    reference = _outputs()
    probs = reference.probs.copy()
    probs[1, 5] += 0.5
    probs[where] = np.nan
    result = compare(RunOutputs(probs, reference.centres_lps), reference, 1.0)
    assert not result.finite and not result.within


def test_compare_refuses_runs_over_different_series() -> None:
    reference = _outputs()
    with pytest.raises(AssertionError, match="different series"):
        compare(RunOutputs(reference.probs[:2], reference.centres_lps[:2]), reference, 1.0)


def test_section_out_of_time_keeps_what_it_measured(tmp_path: Path) -> None:
    report = harness.Report(tmp_path, {"title": "t", "date": "d", "mode": "cpu", "commit": "c", "budget_s": 60,
                                       "t0": time.monotonic()})
    ctx = harness.Ctx(args=argparse.Namespace(skip=[], seed=0), report=report, work=tmp_path, mode="cpu",
                      t0=time.monotonic(), budget_s=60)
    sec = harness.Section("slow", "A slow section", limit_s=1.5)
    report.sections["slow"] = sec

    def slow(ctx: harness.Ctx, sec: harness.Section) -> None:
        report.add(sec, harness.row("first", 1.25))
        res = harness.run_cmd(ctx, "sleeper", [sys.executable, "-c", "import time; time.sleep(30)"], limit_s=60)
        report.add(sec, harness.row("after the command", res.timed_out))
        time.sleep(30)
        report.add(sec, harness.row("never", 0))

    harness.run_section(ctx, sec, slow)
    md = (tmp_path / "gpu_check.md").read_text()
    assert sec.status.startswith("timed out") and "| first | 1.250 |" in md and "*slow: timed out" in md
    assert "| after the command | True |" in md  # the command was ended before the section's own limit
    assert "| never |" not in md
    assert "== sleeper: timed out" in (tmp_path / "gpu_check.log").read_text()


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return names | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level}


def test_one_training_step_benchmark_in_the_product() -> None:
    """The benchmark and the GPU check call train_offline.step_bench (the product importing neither: see
    tests/test_architecture.py)."""
    assert "train_offline.step_bench" in _imports(REPO / "benchmarks" / "bench_train_step.py")
    assert "train_offline.step_bench" in _imports(REPO / "scripts" / "gpu_sections" / "train.py")


@pytest.mark.slow
def test_dry_run_torchrun_gloo_one_process(tmp_path: Path) -> None:
    proc, md, data = _dry_run(tmp_path, "--skip", "preprocess", "models", "e2e", "channels_last", "single")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    run = data["sections"]["train"]["data"]["torchrun"]
    assert run["status"] == "ok" and run["summary"]["world_size"] == 1
    for stage in ("locator", "classifier"):
        s = run["stages"][stage]
        assert s["ddp"] == "gloo" and s["steps"] > 0 and _positive(s["s_per_step"]), stage
    assert "| torchrun --nproc_per_node 1 (gloo) | ok |" in md
