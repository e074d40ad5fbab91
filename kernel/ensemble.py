"""onnxruntime ensemble: the manifest's models as sessions, and the ``run`` the recipe calls.

Sessions are created once per process (they are the state here); which inputs the models see and how their outputs
become a row is ``kernel.recipe``, the same code training validates with.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from kernel import recipe
from kernel.manifest import Manifest, ModelSpec
from kernel.preprocess import normalise, normaliser
from kernel.recipe import Plan, Prediction
from kernel.volume import Native

__all__ = ["Ensemble", "Plan", "Prediction", "choose_providers"]

CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
CPU = "CPUExecutionProvider"
TENSORRT_ENV = "RSNA_TENSORRT"  # "1": put TensorRT first when onnxruntime lists it (engine build takes minutes)
THREADS_ENV = "RSNA_ORT_THREADS"
SPIN_ENV = "RSNA_ORT_SPIN"  # "1": idle onnxruntime workers spin (its default); off here, see Ensemble


def choose_providers(available: Sequence[str], *, tensorrt: bool = False) -> list[str]:
    """Execution providers in priority order: CUDA (TensorRT first if asked and listed) when listed, else CPU."""
    chosen = []
    if CUDA in available:
        if tensorrt and TENSORRT in available:
            chosen.append(TENSORRT)
        chosen.append(CUDA)
    chosen.append(CPU)
    return chosen


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
        # Each session owns a thread pool, and the recipe runs nine of them back to back: a finished session's
        # workers spinning for more work take the cores from the next one (classifier runs 83 -> 46 ms, a series
        # 1.43 -> 1.24 s on 2 cores; docs/history/log.md). One model run alone is slightly faster with spinning (a
        # classifier run 35 against 46 ms), but here no model runs alone.
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         "1" if os.environ.get(SPIN_ENV) == "1" else "0")
        self.sessions: dict[str, Any] = {}
        for role in ("locator", "classifier", "fine"):
            for model in manifest.models(role):
                path = str(manifest.model_path(model))
                try:
                    session = ort.InferenceSession(path, options, providers=self.providers)
                except Exception:  # a GPU provider that fails to initialise must not cost the CPU path
                    if self.providers == [CPU]:
                        raise
                    session = ort.InferenceSession(path, options, providers=[CPU])
                self.sessions[model.name] = session
        self.locators = manifest.models("locator")
        self.classifiers = manifest.models("classifier")
        self.fine = manifest.models("fine")
        self.active_providers = sorted({p for s in self.sessions.values() for p in s.get_providers()})

    def run(self, spec: ModelSpec, batch: np.ndarray) -> list[np.ndarray]:
        """One model on one float32 batch through its onnxruntime session (the recipe's ``Runner``)."""
        return self.sessions[spec.name].run(list(spec.output_names), {spec.input_name: batch})

    def runs(self, plan: Plan) -> int:
        """Model evaluations a plan costs (the cost unit of the time budget)."""
        return recipe.plan_runs(self.locators, self.classifiers, plan, self.fine)

    @property
    def wants_native(self) -> bool:
        """Whether the fine stage needs the native stack (fine models and a classifier that returns a heatmap)."""
        return bool(self.fine) and any(len(spec.output_names) > 2 for spec in self.classifiers)

    def predict_volume(self, array: np.ndarray, affine: np.ndarray, dicom_modality: str,
                       plan: Plan | None = None, *, superior_known: bool = True,
                       native: Native | None = None, fold: int | None = None) -> Prediction:
        """Normalise a canonical volume (scheme from the manifest), then the recipe: locate, classify, refine.

        ``native`` (the canonical stack at native spacing, ``Volume.native``) is what fine patches are sampled from;
        each patch is normalised with the canonical volume's statistics. ``fold`` runs that fold's models alone (an
        out-of-fold prediction of a training series); the kernel runs them all.
        """
        def of_fold(specs: list[ModelSpec]) -> list[ModelSpec]:
            return specs if fold is None else [s for s in specs if s.fold == fold]

        locators, classifiers, fine = of_fold(self.locators), of_fold(self.classifiers), of_fold(self.fine)
        if not (locators and classifiers):
            raise ValueError(f"fold {fold} has no locator or no classifier in {self.manifest.weights_dir}")
        scheme = self.manifest.scheme(dicom_modality)
        normalised = normalise(array, scheme)
        stack = None
        if native is not None and fine:
            stack = replace(native, normalise=normaliser(scheme, array))
        return recipe.predict_volume(normalised, affine, locators, classifiers, self.run, plan or Plan(),
                                     superior_known=superior_known, fine=fine, native=stack)
