"""scripts/gpu_check.py: the --cpu dry run end to end at tiny sizes, and its time limits.

The dry run goes through every section's code path on the CPU (small phantoms, tiny models through --set, fp32
where autocast needs CUDA); the tests read the report it writes and check that each section holds numbers, not only
that it ran. The torchrun part (gloo, one process) is slow on two cores and runs with --runslow.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


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
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, str, dict, float]:
    start = time.monotonic()
    proc, md, data = _dry_run(tmp_path_factory.mktemp("gpu_check"), "--skip", "torchrun")
    return proc, md, data, time.monotonic() - start


def _positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_dry_run_report_has_every_section_with_numbers(dry_run) -> None:
    proc, md, data, seconds = dry_run
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "report:" in proc.stdout and md, "no report written"
    sections = data["sections"]
    assert list(sections) == ["machine", "preprocess", "models", "e2e", "train"]
    for key, sec in sections.items():
        assert sec["status"] == "ok", (key, sec["status"])
        assert f"*{key}: ok*" in md
    for n, title in enumerate(["Machine", "Preprocessing", "Locator + classifier", "Kernel end to end", "Training"], 1):
        assert f"## {n}. {title}" in md
    assert "onnxruntime's CUDA provider" in md  # the report says what it could not test

    machine = sections["machine"]["data"]
    assert machine["CUDA available"] is False and machine["torch"] and machine["package pydicom"][0].isdigit()

    pre = sections["preprocess"]["data"]
    for backend in ("numpy", "torch"):
        assert _positive(pre["resample"][backend]["median_s"]) and _positive(pre["prepare_volume_s"][backend])
    assert 0 < pre["resample"]["torch"]["rel_diff"] <= 1e-5  # the same grid, float rounding apart
    assert pre["resample"]["torch"]["shape"] == pre["resample"]["numpy"]["shape"]
    assert "| `torch` | CPU" in md and "**Per 400 x 512 x 512 CTA**" in md

    runs = sections["models"]["data"]["runs"]
    assert len(runs) == 4 and runs["onnxruntime CPU fp32"]["max_abs_diff"] == 0
    for name, r in runs.items():
        assert _positive(r["median_s"]) and _positive(r["median_model_s"]), name
        assert all(len(p) == 14 and all(0 <= v <= 1 for v in p) for p in r["probs"]), name
        assert r["max_abs_diff"] < 1e-4 and r["max_centre_shift_mm"] < 1e-3, name  # fp32 everywhere on the CPU
    assert len(runs["onnxruntime CPU fp32"]["probs"]) >= 2  # the CTA and at least one more phantom

    e2e = sections["e2e"]["data"]["rows"]
    for name in ("direct torch", "direct numpy"):
        assert all(_positive(t) for t in e2e[name]["totals"]) and all(_positive(t) for t in e2e[name]["reads"])
    if importlib.util.find_spec("polars") is not None:
        assert e2e["Predictor"]["levels"] == ["full"] * len(e2e["direct torch"]["totals"])

    train = sections["train"]["data"]
    cl = train["channels_last"]
    assert all(_positive(t) for t in cl["default_s"] + cl["channels_last_s"]) and _positive(cl["ratio_median"])
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
    print(f"dry run: {seconds:.0f} s")


def test_section_out_of_time_keeps_what_it_measured(tmp_path: Path) -> None:
    gc = _load_script()
    args = gc.parse_args(["--cpu", "--out", str(tmp_path)])
    report = gc.Report(tmp_path, {"title": "t", "date": "d", "mode": "cpu", "commit": "c", "budget_s": 60,
                                  "t0": time.monotonic()})
    ctx = gc.Ctx(args=args, report=report, work=tmp_path, mode="cpu", t0=time.monotonic(), budget_s=60)
    sec = gc.Section("slow", "A slow section", limit_s=1.5)
    report.sections["slow"] = sec

    def slow(ctx, sec):
        report.add(sec, gc.row("first", 1.25))
        res = gc.run_cmd(ctx, "sleeper", [sys.executable, "-c", "import time; time.sleep(30)"], limit_s=60)
        report.add(sec, gc.row("after the command", res.timed_out))
        time.sleep(30)

    start = time.monotonic()
    gc.run_section(ctx, sec, slow)
    assert time.monotonic() - start < 10
    md = (tmp_path / "gpu_check.md").read_text()
    assert sec.status.startswith("timed out") and "| first | 1.250 |" in md and "*slow: timed out" in md
    assert "| after the command | True |" in md  # the command was ended before the section's own limit
    assert "== sleeper: timed out" in (tmp_path / "gpu_check.log").read_text()


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
