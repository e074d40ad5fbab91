"""Section e2e: the kernel's seconds per series (read, canonical, resample with torch CUDA against numpy, the
ensemble on the CPU), through the two calls ``kernel.predict.Predictor.predict`` makes and through the Predictor."""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path
from typing import Any

from .artefacts import ensure_weights, phantom_cta
from .harness import Ctx, Section, median, row, table, timer

TITLE = "Kernel end to end per series with torch-CUDA preprocessing"


def _factory_ct(folder: Path, gpu: bool, seed: int) -> Path:
    from testkit.dicom_factory import write_series

    if gpu:  # as benchmarks/bench_kernel.py: uncompressed CT 400 x 512 x 512, 0.45 mm pixels, 0.625 mm slices
        write_series(folder, n_slices=400, rows=512, cols=512, slice_spacing=0.625, pixel_spacing=(0.45, 0.45),
                     origin=(-115.0, -115.0, -125.0), modality="CT", seed=seed)
    else:
        write_series(folder, n_slices=24, rows=96, cols=96, slice_spacing=2.0, pixel_spacing=(1.5, 1.5),
                     origin=(-72.0, -72.0, -24.0), modality="CT", seed=seed)
    return folder


def _series(ctx: Ctx) -> tuple[list[Path], Path, float]:
    """The series to time (the phantom CTA and factory CTs), a small warm-up series, and the seconds writing took."""
    from testkit.dicom_factory import write_series

    series = [phantom_cta(ctx)]
    with timer() as t_write:
        for i in range(2 if ctx.gpu else 1):
            series.append(_factory_ct(ctx.work / "e2e" / f"ct{i}", ctx.gpu, seed=i))
        warm = ctx.work / "e2e" / "warm"
        write_series(warm, n_slices=32 if ctx.gpu else 8, rows=512 if ctx.gpu else 64, cols=512 if ctx.gpu else 64,
                     modality="CT", seed=99)
    return series, warm, t_write[0]


def _direct_rows(ctx: Ctx, sec: Section, ensemble: Any, series: list[Path], warm: Path) -> None:
    """prepare_volume + Ensemble.predict_volume per series, with the fast resampling backend and with numpy."""
    from kernel.preprocess import prepare_volume
    from kernel.recipe import Plan

    manifest = ensemble.manifest
    def one(folder: Path, backend: str) -> tuple[float, float]:
        start = time.perf_counter()
        volume = prepare_volume(folder, manifest.volume_spacing_mm, max_voxels=manifest.max_voxels, backend=backend)
        read = time.perf_counter() - start
        ensemble.predict_volume(volume.array, volume.affine, volume.modality, Plan(),
                                superior_known=volume.geometry_known)
        return time.perf_counter() - start, read

    for backend in ("cuda" if ctx.gpu else "torch", "numpy"):
        one(warm, backend)
        totals, reads = zip(*(one(folder, backend) for folder in series), strict=True)
        models = [a - b for a, b in zip(totals, reads, strict=True)]
        sec.data["rows"][f"direct {backend}"] = {"totals": list(totals), "reads": list(reads)}
        ctx.report.add(sec, row("prepare_volume + Ensemble.predict_volume", f"`{backend}`", len(totals),
                                median(totals), median(reads), median(models), max(totals)))


def _predictor_row(ctx: Ctx, sec: Section, weights: Path, series: list[Path], warm: Path) -> None:
    """The kernel's Predictor (reading in this process, where torch sees the GPU) on the same series."""
    from kernel.budget import TimeBudget
    from kernel.ensemble import CPU
    from kernel.predict import Predictor

    old = os.environ.get("RSNA_READ_ISOLATION")
    os.environ["RSNA_READ_ISOLATION"] = "0"
    try:
        predictor = Predictor(str(weights), budget=TimeBudget(limit_s=1e9, margin_s=0), providers=[CPU])
        predictor.predict(str(warm))
        totals, reads, models, levels = [], [], [], []
        for folder in series:
            with timer() as t:
                _, record = predictor.predict(str(folder))
            totals.append(t[0])
            reads.append(record.read_s or float("nan"))
            models.append(record.model_s or float("nan"))
            levels.append(record.level if record.level == "full" else f"{record.level}: {record.reason}")
    finally:
        if old is None:
            os.environ.pop("RSNA_READ_ISOLATION", None)
        else:
            os.environ["RSNA_READ_ISOLATION"] = old
    sec.data["rows"]["Predictor"] = {"totals": totals, "reads": reads, "models": models, "levels": levels}
    ctx.report.add(sec, row("kernel.predict.Predictor (RSNA_READ_ISOLATION=0)", "auto", len(totals), median(totals),
                            median(reads), median(models), max(totals))
                   + ("" if set(levels) == {"full"} else f" levels: {levels}"))


def run(ctx: Ctx, sec: Section) -> None:
    """Direct calls with each resampling backend, then the Predictor when polars is there."""
    from kernel.ensemble import CPU, Ensemble
    from kernel.manifest import load_manifest
    from kernel.recipe import Plan

    weights, _, _ = ensure_weights(ctx)
    manifest = load_manifest(weights)
    series, warm, write_s = _series(ctx)
    ensemble = Ensemble(manifest, providers=[CPU])
    ctx.report.add(sec, f"Weights from the models section (onnxruntime {', '.join(ensemble.active_providers)}, "
                        f"{ensemble.runs(Plan())} model runs per series). Per "
                        f"series: `prepare_volume(series, {list(manifest.volume_spacing_mm)} mm, backend=...)` then "
                        f"`Ensemble.predict_volume` (normalise, locate, classify with flips): the two calls "
                        f"`kernel.predict.Predictor.predict` makes. Series files written in {write_s:.1f} s and in the "
                        f"page cache; one warm-up call first.")
    ctx.report.add(sec)
    sec.lines += table(["path", "resampling", "series", "median s per series", "read + preprocess s", "models s",
                        "max s"])
    sec.data["rows"] = {}
    _direct_rows(ctx, sec, ensemble, series, warm)
    try:
        importlib.import_module("polars")
    except ImportError:
        ctx.report.add(sec, row("kernel.predict.Predictor", "auto", 0, None, None, None, None)
                       + " skipped: polars is not installed (its 54 MB wheel is not carried); the rows above are its "
                         "calls")
        return
    _predictor_row(ctx, sec, weights, series, warm)
