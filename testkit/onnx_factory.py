"""Tiny random-weight ONNX models and a manifest that follow the model contract (docs/reference/manifest.md).

Built with ``onnx.helper`` (no torch), so kernel tests and benchmarks run before any trained export exists.
Locator: Conv3d(1->1, k3) [+ AveragePool(stride)] -> ``heatmap``. Classifier: Conv3d(1->4, k3, s2) -> ReLU ->
GlobalAveragePool -> two Gemm heads -> ``logits`` [B, 14] and ``modality_logits`` [B, 4]. Dynamic batch axis.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kernel.labels import LABEL_COLS, MODALITY_NAMES
from kernel.manifest import sha256_file, validate_manifest

OPSET = 17


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnx_factory")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def locator_model(shape: Sequence[int], stride: int, rng: np.random.Generator) -> onnx.ModelProto:
    """Random 3x3x3 convolution (+ average pool by ``stride``) as a heatmap."""
    w = numpy_helper.from_array(rng.normal(0, 0.5, (1, 1, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(1, np.float32), "b")
    nodes = [helper.make_node("Conv", ["volume", "w", "b"], ["conv"], pads=[1] * 6, kernel_shape=[3, 3, 3])]
    last = "conv"
    if stride > 1:
        nodes.append(helper.make_node("AveragePool", ["conv"], ["pooled"], kernel_shape=[stride] * 3,
                                      strides=[stride] * 3))
        last = "pooled"
    nodes.append(helper.make_node("Identity", [last], ["heatmap"]))
    out_shape = ["batch", 1, *[s // stride for s in shape]]
    graph = helper.make_graph(
        nodes, "locator",
        [helper.make_tensor_value_info("volume", TensorProto.FLOAT, ["batch", 1, *shape])],
        [helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, out_shape)],
        initializer=[w, b],
    )
    return _model(graph)


def classifier_model(shape: Sequence[int], rng: np.random.Generator, channels: int = 4) -> onnx.ModelProto:
    """Random strided conv -> ReLU -> global pool -> label and modality heads."""
    inits = [
        numpy_helper.from_array(rng.normal(0, 1.0, (channels, 1, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.1, channels).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(0, 1.0, (channels, len(LABEL_COLS))).astype(np.float32), "w_labels"),
        numpy_helper.from_array(rng.normal(0, 0.5, len(LABEL_COLS)).astype(np.float32), "b_labels"),
        numpy_helper.from_array(rng.normal(0, 1.0, (channels, len(MODALITY_NAMES))).astype(np.float32), "w_mod"),
        numpy_helper.from_array(np.zeros(len(MODALITY_NAMES), np.float32), "b_mod"),
    ]
    nodes = [
        helper.make_node("Conv", ["crop", "w", "b"], ["conv"], pads=[1] * 6, kernel_shape=[3, 3, 3],
                         strides=[2, 2, 2]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "w_labels", "b_labels"], ["logits"]),
        helper.make_node("Gemm", ["features", "w_mod", "b_mod"], ["modality_logits"]),
    ]
    graph = helper.make_graph(
        nodes, "classifier",
        [helper.make_tensor_value_info("crop", TensorProto.FLOAT, ["batch", 1, *shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABEL_COLS)]),
         helper.make_tensor_value_info("modality_logits", TensorProto.FLOAT, ["batch", len(MODALITY_NAMES)])],
        initializer=inits,
    )
    return _model(graph)


def write_random_weights(
    out_dir: str | Path,
    *,
    folds: int = 2,
    seed: int = 0,
    locator_shape: Sequence[int] = (32, 32, 32),
    locator_spacing: Sequence[float] = (8.0, 8.0, 8.0),
    locator_stride: int = 2,
    classifier_shape: Sequence[int] = (32, 32, 32),
    classifier_spacing: Sequence[float] = (2.0, 2.0, 2.0),
    volume_spacing: Sequence[float] = (2.0, 2.0, 2.0),
    priors: Sequence[float] | None = None,
    validation_score: float = 0.5,
) -> Path:
    """Write ``folds`` locators and classifiers plus a valid manifest.json into ``out_dir``; return the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    models = []
    for fold in range(folds):
        for role in ("locator", "classifier"):
            name = f"{role}_f{fold}"
            file = f"{name}.onnx"
            if role == "locator":
                onnx.save(locator_model(locator_shape, locator_stride, rng), out / file)
                entry = {"input_name": "volume", "input_shape": list(locator_shape),
                         "spacing_mm": list(locator_spacing), "output_name": "heatmap",
                         "output_stride": locator_stride, "validation": {"centre_error_mm_median": 0.0}}
            else:
                onnx.save(classifier_model(classifier_shape, rng), out / file)
                entry = {"input_name": "crop", "input_shape": list(classifier_shape),
                         "spacing_mm": list(classifier_spacing), "output_names": ["logits", "modality_logits"],
                         "flip_tta": True, "validation": {"score": validation_score, "auc_present": 0.5}}
            models.append({"name": name, "role": role, "file": file, "sha256": sha256_file(out / file),
                           "fold": fold, **entry, "config": {"random_init": True}, "git_commit": "test"})
    manifest = {
        "format_version": 1,
        "label_cols": LABEL_COLS,
        "modality_names": MODALITY_NAMES,
        "label_priors": list(priors) if priors is not None else [0.03] * 13 + [0.43],
        "volume_spacing_mm": list(volume_spacing),
        "normalisation": {"CT": "ct_angio", "MR": "mr_percentile"},
        "max_voxels": 400_000_000,
        "models": models,
    }
    validate_manifest(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out
