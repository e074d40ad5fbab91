"""onnxruntime ensemble: locator folds -> Circle-of-Willis centre -> classifier folds with left/right flip TTA.

Sessions are created once per process (they are the state here); everything else is a pure function of arrays.
Model inputs follow the ONNX contract in docs/ARCHITECTURE.md: the locator sees ``locator_input`` of the normalised
canonical volume, the classifier a ``crop_around`` the mean locator centre. A flipped crop (axis x, patient
left/right) is run in the same batch and its probabilities are mapped back with ``flip_permutation()``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kernel.labels import LABEL_COLS, MODALITY_NAMES, flip_permutation
from kernel.manifest import Manifest
from kernel.preprocess import (
    CENTRE_OFFSET_KEY,
    classifier_centre,
    crop_around,
    heatmap_peak_lps,
    locator_input,
    normalise,
)

__all__ = ["Ensemble", "EnsembleOutput", "Plan", "choose_providers", "sigmoid", "softmax"]

CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
CPU = "CPUExecutionProvider"
TENSORRT_ENV = "RSNA_TENSORRT"  # "1": put TensorRT first when onnxruntime lists it (engine build takes minutes)
THREADS_ENV = "RSNA_ORT_THREADS"


def choose_providers(available: Sequence[str], *, tensorrt: bool = False) -> list[str]:
    """Execution providers in priority order: CUDA (TensorRT first if asked and listed) when listed, else CPU."""
    chosen = []
    if CUDA in available:
        if tensorrt and TENSORRT in available:
            chosen.append(TENSORRT)
        chosen.append(CUDA)
    chosen.append(CPU)
    return chosen


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(logits, dtype=np.float64)))


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


@dataclass(frozen=True)
class Plan:
    """How much of the ensemble to run: at most ``folds`` models per role (None: all) and whether to flip."""

    folds: int | None = None
    flip: bool = True


@dataclass(frozen=True)
class EnsembleOutput:
    probs: np.ndarray  # (14,) LABEL_COLS order
    modality_probs: np.ndarray  # (4,) MODALITY_NAMES order
    centre_lps: np.ndarray  # (3,) mean locator centre
    runs: int  # model evaluations (a flipped copy in the batch counts as one more)
    reversed_z: bool = False  # the slice order was reversed because the locator found the head upright that way

    @property
    def modality(self) -> str:
        return MODALITY_NAMES[int(np.argmax(self.modality_probs))]


def _group_by_input(models: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Models sharing an input shape, spacing and crop-centre offset share one input array."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for model in models:
        key = (tuple(int(s) for s in model["input_shape"]), tuple(float(s) for s in model["spacing_mm"]),
               tuple(float(s) for s in model.get(CENTRE_OFFSET_KEY, (0.0, 0.0, 0.0))))
        groups.setdefault(key, []).append(model)
    return groups


class Ensemble:
    """The manifest's ONNX models as onnxruntime sessions, created once."""

    def __init__(self, manifest: Manifest, providers: Sequence[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        self.manifest = manifest
        if providers is None:
            providers = choose_providers(ort.get_available_providers(), tensorrt=os.environ.get(TENSORRT_ENV) == "1")
        self.providers = list(providers)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = threads if threads is not None else int(os.environ.get(THREADS_ENV, "0"))
        options.intra_op_num_threads = max(threads, 0)  # 0: onnxruntime picks (one per physical core)
        options.inter_op_num_threads = 1
        self.sessions: dict[str, Any] = {}
        for role in ("locator", "classifier"):
            for model in manifest.models(role):
                path = str(manifest.model_path(model))
                try:
                    session = ort.InferenceSession(path, options, providers=self.providers)
                except Exception:  # a GPU provider that fails to initialise must not cost the CPU path
                    if self.providers == [CPU]:
                        raise
                    session = ort.InferenceSession(path, options, providers=[CPU])
                self.sessions[model["name"]] = session
        self.locators = manifest.models("locator")
        self.classifiers = manifest.models("classifier")
        self.active_providers = sorted({p for s in self.sessions.values() for p in s.get_providers()})

    def runs(self, plan: Plan) -> int:
        """Model evaluations a plan costs (the cost unit of the time budget)."""
        n_loc = len(self.locators[: plan.folds])
        flips = sum(2 if (plan.flip and m.get("flip_tta", True)) else 1 for m in self.classifiers[: plan.folds])
        return n_loc + flips

    def locate(self, array: np.ndarray, affine: np.ndarray, folds: int | None = None) -> np.ndarray:
        """Mean LPS centre of the locator folds on a normalised canonical volume."""
        return self._locate(array, affine, folds)[0]

    def _locate(self, array: np.ndarray, affine: np.ndarray, folds: int | None = None) -> tuple[np.ndarray, float]:
        """(mean LPS centre, mean heatmap peak logit) of the locator folds."""
        centres, peaks = [], []
        for (shape, spacing, _), models in _group_by_input(self.locators[:folds]).items():
            inp, inp_affine = locator_input(array, affine, shape, spacing)
            batch = inp[None, None].astype(np.float32, copy=False)
            for model in models:
                (heatmap,) = self.sessions[model["name"]].run([model["output_name"]], {model["input_name"]: batch})
                if not np.all(np.isfinite(heatmap)):
                    raise FloatingPointError(f"locator {model['name']} returned non-finite values")
                centres.append(heatmap_peak_lps(heatmap[0, 0], inp_affine, int(model["output_stride"])))
                peaks.append(float(heatmap.max()))
        return np.mean(centres, axis=0), float(np.mean(peaks))

    def classify(
        self, array: np.ndarray, affine: np.ndarray, centre_lps: np.ndarray, plan: Plan = Plan()
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean label and modality probabilities of the classifier folds (with flip TTA) around ``centre_lps``."""
        perm = flip_permutation(LABEL_COLS)
        label_probs, modality_probs = [], []
        for (shape, spacing, _), models in _group_by_input(self.classifiers[: plan.folds]).items():
            crop, _ = crop_around(array, affine, classifier_centre(centre_lps, models[0]), shape, spacing)
            plain = crop[None, None]
            both = np.concatenate([plain, plain[..., ::-1]], axis=0)  # axis x: patient left/right
            for model in models:
                flip = plan.flip and model.get("flip_tta", True)
                batch = np.ascontiguousarray(both if flip else plain, dtype=np.float32)
                logits, modality_logits = self.sessions[model["name"]].run(
                    list(model["output_names"]), {model["input_name"]: batch}
                )
                probs = sigmoid(logits)
                if probs.shape != (len(batch), len(LABEL_COLS)) or modality_logits.shape[-1] != len(MODALITY_NAMES):
                    raise ValueError(f"classifier {model['name']} returned shapes {probs.shape}, "
                                     f"{modality_logits.shape}; expected (B, 14) and (B, 4)")
                if flip:
                    probs[1] = probs[1][perm]
                label_probs.append(probs.mean(axis=0))
                modality_probs.append(softmax(modality_logits).mean(axis=0))
        return np.mean(label_probs, axis=0), np.mean(modality_probs, axis=0)

    def predict_volume(self, array: np.ndarray, affine: np.ndarray, dicom_modality: str,
                       plan: Plan = Plan(), *, superior_known: bool = True) -> EnsembleOutput:
        """Normalise a canonical volume (scheme from the manifest), locate, classify.

        ``superior_known=False`` (a series without any image position/orientation: its slice axis is frame order)
        runs the locators on both slice orders and keeps the one whose heatmap peaks higher: the locator has only
        seen upright heads. On 100 phantom series of every protocol, stacked both ways, the correct order won every
        time (smallest margin 1.2 logits); on stripped multi-frame phantoms 13 of 15 (pixel size is lost there too).
        """
        normalised = normalise(array, self.manifest.scheme(dicom_modality))
        centre, peak = self._locate(normalised, affine, plan.folds)
        reversed_z = False
        if not superior_known:
            flipped = np.ascontiguousarray(normalised[::-1])
            centre_f, peak_f = self._locate(flipped, affine, plan.folds)
            if peak_f > peak:
                normalised, centre, reversed_z = flipped, centre_f, True
        probs, modality_probs = self.classify(normalised, affine, centre, plan)
        if not (np.all(np.isfinite(probs)) and np.all(np.isfinite(modality_probs))):
            raise FloatingPointError("the ensemble returned non-finite probabilities")
        return EnsembleOutput(probs=probs, modality_probs=modality_probs, centre_lps=centre, runs=self.runs(plan),
                              reversed_z=reversed_z)
