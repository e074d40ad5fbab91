"""``predict(series_path)``: the function the Kaggle gateway calls once per series. It never raises.

Any failure (unreadable series, out of memory, a model error, the time budget running out) returns the fallback row,
the training priors from the manifest, and logs one line with the series UID and the reason. When even the manifest
cannot be read, a constant row is the last resort. On Kaggle the share directory is deleted after every call, as the
official demo does, so the disk does not fill up.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass

import numpy as np
import polars as pl

from kernel.labels import LABEL_COLS

__all__ = [
    "KAGGLE_SHARE_DIR", "LAST_RESORT_PROB", "CallRecord", "Predictor", "call_records", "fallback_frame",
    "get_predictor", "on_kaggle", "predict", "reset_predictor", "row_frame",
]

LOG = logging.getLogger("rsna.kernel")
KAGGLE_SHARE_DIR = "/kaggle/shared"
LAST_RESORT_PROB = 0.5  # used only when the manifest (and so the priors) cannot be read


@dataclass(frozen=True)
class CallRecord:
    """What one predict call did: for the gateway's timing table and fallback count."""

    uid: str
    seconds: float
    level: str  # "full", "no_flip", "one_fold", "few_candidates", "no_fine", or "fallback"
    reason: str | None = None  # why the fallback row was returned
    modality: str | None = None  # modality head's answer (CTA, MRA, MRI T2, MRI T1post)
    read_s: float | None = None  # reading + preprocessing (None when the call did not get that far)
    model_s: float | None = None  # the models (locate + classify)


def on_kaggle() -> bool:
    """True inside a Kaggle notebook or scoring rerun."""
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE") or os.environ.get("KAGGLE_IS_COMPETITION_RERUN"))


def _setup_logging() -> None:
    if not LOG.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s rsna-kernel %(levelname)s %(message)s"))
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)
        LOG.propagate = False


def fallback_frame(priors: list[float] | None) -> pl.DataFrame:
    """One row: the priors, or the last-resort constant."""
    values = priors if priors is not None else [LAST_RESORT_PROB] * len(LABEL_COLS)
    return row_frame(np.asarray(values, dtype=np.float64))


def row_frame(probs: np.ndarray) -> pl.DataFrame:
    """One-row frame with the 14 LABEL_COLS in order, probabilities clipped to [0, 1]."""
    values = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), 0.0, 1.0)
    assert values.shape == (len(LABEL_COLS),) and np.all(np.isfinite(values)), "a row needs 14 finite numbers"
    return pl.DataFrame({col: [float(v)] for col, v in zip(LABEL_COLS, values, strict=True)})


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


class Predictor:
    """Manifest, ensemble sessions and time budget, created once; ``predict`` maps a series folder to a row."""

    def __init__(self, weights_dir: str | None = None, budget=None, providers: list[str] | None = None):
        from kernel.budget import TimeBudget

        _setup_logging()
        self.budget = budget if budget is not None else TimeBudget()
        self.records: list[CallRecord] = []
        self.priors: list[float] | None = None
        self.manifest = None
        self.ensemble = None
        self.reader = None  # kernel.read_worker.ReadWorker: reading and preprocessing in a worker process
        self.setup_error: str | None = None
        # keep_last: hold the last series' canonical volume and Prediction (for ``kernel.explain``; off on Kaggle)
        self.keep_last = False
        self.last: tuple[str, object, object] | None = None  # (uid, kernel.volume.Volume, recipe.Prediction)
        try:
            from kernel.manifest import load_manifest

            self.manifest = load_manifest(weights_dir)
            self.priors = self.manifest.label_priors
            from kernel.ensemble import Ensemble

            self.ensemble = Ensemble(self.manifest, providers=providers)
            from kernel.read_worker import ReadLimits, ReadWorker

            self.reader = ReadWorker(ReadLimits.resolve(self.manifest.data.get("read_limits", {})))
            LOG.info("models ready: %d sessions in %s on %s", len(self.ensemble.sessions), self.manifest.weights_dir,
                     ",".join(self.ensemble.active_providers))
        except Exception as exc:  # the kernel must still answer every series
            self.setup_error = f"setup failed: {_reason(exc)}"
            LOG.error("%s; every series gets the fallback row", self.setup_error)

    def plans(self):
        """Degradation ladder: all folds with flips, all folds without, one fold without, then (with a fine stage)
        one fold with half the candidates, and one fold without the fine stage."""
        from kernel.ensemble import Plan

        ladder = [("full", Plan(None, True)), ("no_flip", Plan(None, False)), ("one_fold", Plan(1, False))]
        if self.ensemble is not None and self.ensemble.fine:
            k = self.ensemble.fine[0].candidates
            ladder += [("few_candidates", Plan(1, False, max(1, k // 2))), ("no_fine", Plan(1, False, 0))]
        return ladder

    def predict(self, series_path: str) -> tuple[pl.DataFrame, CallRecord]:
        """Row and record for one series folder; never raises."""
        start = time.perf_counter()
        uid = os.path.basename(os.path.normpath(str(series_path)))
        level, reason, modality, frame = "fallback", None, None, None
        self.last = None
        read_s = model_s = None
        try:
            if self.ensemble is None:
                raise RuntimeError(self.setup_error or "no ensemble")
            plans = self.plans()
            choice = self.budget.choose([self.ensemble.runs(p) for _, p in plans])
            if choice is None:
                raise TimeoutError(
                    f"time budget: {self.budget.allowance():.1f} s left per series, "
                    f"cheapest plan needs ~{self.budget.estimate(self.ensemble.runs(plans[-1][1])):.1f} s"
                )
            name, plan = plans[choice]
            wants_native = self.ensemble.wants_native and plan.candidates != 0
            volume = self.reader.prepare(series_path, self.manifest.volume_spacing_mm,
                                         max_voxels=self.manifest.max_voxels, keep_native=wants_native)
            read_s = time.perf_counter() - start
            out = self.ensemble.predict_volume(volume.array, volume.affine, volume.modality, plan,
                                               superior_known=volume.geometry_known, native=volume.native)
            model_s = time.perf_counter() - start - read_s
            if not volume.geometry_known:
                LOG.warning("no geometry uid=%s: slice order %s (locator peak)", uid,
                            "reversed" if out.reversed_z else "kept")
            frame = row_frame(out.probs)
            if self.keep_last:
                self.last = (uid, volume, out)
            self.budget.record(read_s, model_s, out.runs)
            level, modality = name, out.modality
        except Exception as exc:  # MemoryError included: never let one series fail the submission
            reason = _reason(exc)
        finally:
            if on_kaggle():
                shutil.rmtree(KAGGLE_SHARE_DIR, ignore_errors=True)
        if frame is None:
            try:
                frame = fallback_frame(self.priors)
            except Exception as exc:  # malformed priors: the constant row
                reason = f"{reason}; priors unusable ({_reason(exc)})"
                frame = fallback_frame(None)
            LOG.warning("fallback uid=%s reason=%s", uid, reason)
        self.budget.count()
        record = CallRecord(uid=uid, seconds=time.perf_counter() - start, level=level, reason=reason,
                            modality=modality, read_s=read_s, model_s=model_s)
        self.records.append(record)
        return frame, record


_PREDICTOR: Predictor | None = None


def get_predictor(weights_dir: str | None = None) -> Predictor:
    """The process-wide predictor (created on the first call: the gateway's first call has no deadline)."""
    global _PREDICTOR
    if _PREDICTOR is None:
        _PREDICTOR = Predictor(weights_dir)
    return _PREDICTOR


def reset_predictor(predictor: Predictor | None = None) -> None:
    """Replace (or drop) the process-wide predictor; for tests and for choosing another weights folder."""
    global _PREDICTOR
    _PREDICTOR = predictor


def call_records() -> list[CallRecord]:
    """Records of every call so far in this process."""
    return list(_PREDICTOR.records) if _PREDICTOR is not None else []


def predict(series_path: str) -> pl.DataFrame:
    """One row of 14 probabilities (LABEL_COLS order) for the series in ``series_path``; never raises."""
    try:
        return get_predictor().predict(series_path)[0]
    except Exception as exc:  # defensive: Predictor.predict already catches; this guards logging/setup itself
        LOG.error("fallback uid=%s reason=%s", os.path.basename(str(series_path)), _reason(exc))
        return fallback_frame(None)
