"""Section models: the full config's locator + classifier (random init, exported by train_offline.export) through
``kernel.recipe.predict_volume``, torch (``train_offline.evaluate.torch_runner``) against the kernel's own runner,
onnxruntime fp32 on the CPU (``kernel.ensemble.Ensemble.run``): max abs difference of the 14 probabilities, locator
centre shift, seconds per series.

On the GPU machine torch runs on CUDA in fp32 (TF32 convolutions when cuDNN allows them), fp16 and bf16 autocast;
with ``--cpu`` torch runs on the CPU in fp32 and in bf16 autocast (CPU autocast), and fp16 is not run. Each run is
held to the tolerance of its precision (``TOLERANCE``); a run outside it, or with a non-finite number, fails the
section.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .artefacts import ensure_weights, model_config, phantom_cta
from .harness import Ctx, Section, attempt, median, row, run_cmd, table, timer

TITLE = "Locator + classifier: torch (CUDA, autocast) against onnxruntime CPU fp32 (kernel.recipe)"
# Max abs difference of the 14 probabilities from onnxruntime fp32 that a torch run may show, by its arithmetic.
# fp32 against fp32 is float rounding in another order (measured about 1e-7 on the tiny --cpu models); TF32 and
# fp16 keep 10 mantissa bits, bf16 7.
TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2, "fp16": 2e-2, "bf16": 5e-2}


@dataclass(frozen=True)
class RunOutputs:
    """What one runner gave on the series, in series order."""

    probs: np.ndarray  # (series, 14) LABEL_COLS order
    centres_lps: np.ndarray  # (series, 3) mm

    @classmethod
    def of(cls, predictions: Sequence[Any]) -> RunOutputs:
        """From ``kernel.recipe.Prediction`` objects."""
        return cls(np.stack([p.probs for p in predictions]).astype(np.float64),
                   np.stack([p.centre_lps for p in predictions]).astype(np.float64))


@dataclass(frozen=True)
class Comparison:
    """One run against the reference run on the same series."""

    max_abs_diff: float  # of the 14 probabilities, over every series; NaN when either run has a NaN
    max_centre_shift_mm: float
    tolerance: float

    @property
    def finite(self) -> bool:
        return bool(np.isfinite(self.max_abs_diff) and np.isfinite(self.max_centre_shift_mm))

    @property
    def within(self) -> bool:
        """Finite and no probability further than the tolerance from the reference's."""
        return self.finite and self.max_abs_diff <= self.tolerance


def compare(run: RunOutputs, reference: RunOutputs, tolerance: float) -> Comparison:
    """Max abs probability difference and max centre shift of ``run`` from ``reference`` (NaN propagates)."""
    assert run.probs.shape == reference.probs.shape and run.probs.ndim == 2 and len(run.probs), (
        f"runs over different series: {run.probs.shape} vs {reference.probs.shape}")
    assert run.centres_lps.shape == reference.centres_lps.shape == (len(run.probs), 3), (
        run.centres_lps.shape, reference.centres_lps.shape)
    diff = float(np.max(np.abs(run.probs - reference.probs)))
    shift = float(np.max(np.linalg.norm(run.centres_lps - reference.centres_lps, axis=1)))
    return Comparison(diff, shift, tolerance)


def _eval_volumes(ctx: Ctx, sec: Section) -> list[tuple[str, np.ndarray, np.ndarray, str, bool]]:
    """(label, canonical array, affine, DICOM modality, geometry known) at the manifest's volume spacing: the
    preprocessing section's CTA and 3 (``--cpu``: 1) training phantoms of other modalities."""
    import sys

    from kernel.jsonl import read_jsonl
    from kernel.preprocess import prepare_volume

    spacing = tuple(model_config(ctx)["volume_spacing_mm"])
    volumes = []
    if "cta_canonical" in ctx.shared:
        array, affine, modality = ctx.shared["cta_canonical"]
        volumes.append(("phantom CTA " + "x".join(map(str, array.shape)), array, affine, modality, True))
    else:
        v = prepare_volume(phantom_cta(ctx), spacing)
        volumes.append(("phantom CTA " + "x".join(map(str, v.array.shape)), v.array, v.affine, v.modality, True))
    n = 3 if ctx.gpu else 1
    out = ctx.work / "eval"
    res = run_cmd(ctx, "phantoms_eval", [sys.executable, "-m", "train_offline.phantoms", "--out", str(out), "--n",
                                         str(n), "--seed", str(ctx.args.seed + 11), "--split", "train", "--size",
                                         "real" if ctx.gpu else "small", "--workers", str(n), "--quiet"], 60)
    if res.rc != 0:
        ctx.report.add(sec, f"(extra phantoms failed: rc {res.rc}; only the CTA is compared)")
        return volumes
    for truth in read_jsonl(out / "phantom_truth.jsonl"):
        v = prepare_volume(out / "series" / truth["SeriesInstanceUID"], spacing)
        volumes.append((f"phantom {truth['modality']} " + "x".join(map(str, v.array.shape)), v.array, v.affine,
                        v.modality, v.geometry_known))
    return volumes


def _timed(run: Callable, box: list[float], sync: Callable[[], None]) -> Callable:
    def wrapped(spec, batch):
        start = time.perf_counter()
        out = run(spec, batch)
        sync()
        box.append(time.perf_counter() - start)
        return out

    return wrapped


@dataclass
class _Bench:
    """The series and models every runner is measured on, and the reference run once it is measured."""

    inputs: list[tuple[str, np.ndarray, np.ndarray, bool]]  # label, normalised array, affine, superior known
    locators: list[Any]
    classifiers: list[Any]
    reference: RunOutputs | None = None


def _measure(ctx: Ctx, sec: Section, bench: _Bench, runner: str, precision: str, tolerance: str | None,
             run: Callable, context: Callable[[], Any]) -> None:
    """One warm-up series, then every series timed; compared with the reference (None: this run is the reference)."""
    from kernel import recipe

    model_box: list[float] = []
    timed_run = _timed(run, model_box, ctx.sync if runner.startswith("torch") else lambda: None)

    def predict(array: np.ndarray, affine: np.ndarray, known: bool) -> Any:
        return recipe.predict_volume(array, affine, bench.locators, bench.classifiers, timed_run, recipe.Plan(),
                                     superior_known=known)

    with context():  # warm-up: sessions, cuDNN algorithm choice
        predict(*bench.inputs[0][1:])
    totals, models, preds = [], [], []
    for _, array, affine, known in bench.inputs:
        model_box.clear()
        with context(), timer() as t:
            preds.append(predict(array, affine, known))
        totals.append(t[0])
        models.append(sum(model_box))
    outputs = RunOutputs.of(preds)
    entry: dict[str, Any] = {"runner": runner, "precision": precision, "median_s": median(totals),
                             "median_model_s": median(models), "probs": outputs.probs.round(6).tolist()}
    if tolerance is None:
        bench.reference = outputs
        entry["reference"] = True
        cells = ["reference", "-", "-", "-"]
    else:
        cmp = compare(outputs, bench.reference, TOLERANCE[tolerance])
        entry.update(max_abs_diff=cmp.max_abs_diff, max_centre_shift_mm=cmp.max_centre_shift_mm,
                     tolerance=cmp.tolerance, within=cmp.within)
        cells = [cmp.max_abs_diff, cmp.max_centre_shift_mm, cmp.tolerance, "yes" if cmp.within else "NO"]
        if not cmp.within:
            sec.data.setdefault("failed", []).append(f"{runner} {precision} outside tolerance")
    sec.data.setdefault("runs", {})[f"{runner} {precision}"] = entry
    ctx.report.add(sec, row(runner, precision, len(preds), median(totals), median(models), *cells))


def torch_precisions(ctx: Ctx) -> list[tuple[str, Any, str | None]]:
    """(label, autocast dtype or None, tolerance key or None: not run) of the torch runs in this mode."""
    import torch

    if ctx.gpu:
        tf32 = torch.backends.cudnn.allow_tf32
        return [("fp32 (TF32 convolutions)" if tf32 else "fp32", None, "tf32" if tf32 else "fp32"),
                ("fp16 autocast", torch.float16, "fp16"), ("bf16 autocast", torch.bfloat16, "bf16")]
    return [("fp32", None, "fp32"), ("bf16 autocast (CPU)", torch.bfloat16, "bf16"),
            ("fp16 autocast: not run (CUDA only here)", torch.float16, None)]


def _header(ctx: Ctx, sec: Section, manifest: Any) -> None:
    from kernel.ensemble import CPU

    locs, clss = manifest.models("locator"), manifest.models("classifier")
    parity = {m.name: m.parity_max_abs for m in (*locs, *clss)}
    sec.data.update(export_s=ctx.shared["export_s"], parity_max_abs=parity,
                    models={m.name: {"input_shape": m.input_shape, "spacing_mm": m.spacing_mm} for m in (*locs, *clss)})
    ctx.report.add(sec, f"Weights: the full config's models{'' if ctx.gpu else ' (--cpu: tiny widths and inputs)'}, "
                        f"random init, exported by `train_offline.export.export_folds` in "
                        f"{ctx.shared['export_s']:.1f} s (export parity torch CPU vs onnxruntime: "
                        f"{', '.join(f'{k} {v:.1e}' for k, v in parity.items())}). "
                        f"Locator {locs[0].input_shape} at {locs[0].spacing_mm} mm, classifier {clss[0].input_shape} "
                        f"at {clss[0].spacing_mm} mm with flip TTA (batch 2). Each series: "
                        f"`kernel.recipe.predict_volume` on the normalised canonical volume, run = `Ensemble.run` "
                        f"(onnxruntime {CPU}, fp32: the reference) or `torch_runner` (torch on "
                        f"{'CUDA' if ctx.gpu else 'the CPU'}); tolerance = the largest difference the precision may "
                        f"show (a run outside it fails the section).")


def run(ctx: Ctx, sec: Section) -> None:
    """onnxruntime fp32 first (the reference), then torch in each precision of this mode."""
    import torch

    from kernel.ensemble import CPU, Ensemble
    from kernel.manifest import load_manifest
    from kernel.preprocess import normalise
    from train_offline.evaluate import torch_runner

    rep = ctx.report
    weights, locator, classifier = ensure_weights(ctx)
    manifest = load_manifest(weights)
    _header(ctx, sec, manifest)
    volumes = _eval_volumes(ctx, sec)
    bench = _Bench([(label, normalise(a, manifest.scheme(m)), aff, gk) for label, a, aff, m, gk in volumes],
                   manifest.models("locator"), manifest.models("classifier"))
    rep.add(sec, "Series: " + "; ".join(label for label, *_ in bench.inputs) + ".")
    rep.add(sec)
    sec.lines += table(["runner", "precision", "series", "median s per series (recipe)", "median model s",
                        "max abs diff of the 14 probabilities vs onnxruntime", "max centre shift mm", "tolerance",
                        "within"])
    ensemble = Ensemble(manifest, providers=[CPU])
    _measure(ctx, sec, bench, "onnxruntime CPU", "fp32", None, ensemble.run, contextlib.nullcontext)
    device = ctx.device()
    torch_run = torch_runner({bench.locators[0].name: locator.to(device).eval(),
                              bench.classifiers[0].name: classifier.to(device).eval()}, device)
    runner = f"torch {'CUDA' if ctx.gpu else 'CPU'}"
    for precision, dtype, tolerance in torch_precisions(ctx):
        if tolerance is None:
            rep.add(sec, row(runner, precision, 0, None, None, None, None, None, None))
            continue
        if ctx.left() < 10:
            rep.add(sec, row(runner, precision, 0, None, None, None, None, None, None) + " (section time spent)")
            continue

        def context(dtype=dtype) -> Any:
            return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)

        attempt(ctx, sec, f"torch {precision}",
                lambda p=precision, t=tolerance, c=context: _measure(ctx, sec, bench, runner, p, t, torch_run, c))
    rep.add(sec)
    rep.add(sec, "onnxruntime's CUDA provider is not measured here: the machine has the CPU build of onnxruntime and "
                 "onnxruntime-gpu is too large to carry (see docs/results/benchmarks.md, GPU check).")
