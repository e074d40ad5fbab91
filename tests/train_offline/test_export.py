"""ONNX export: checker, exact output names, dynamic batch, torch parity, manifest accepted by the kernel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml

from kernel.ensemble import Ensemble
from kernel.labels import LABEL_COLS
from kernel.manifest import load_manifest
from train_offline.export import ATOL, ExportError, export_model, export_random, main, onnx_parity
from train_offline.models import Locator

TINY = {
    "name": "tiny",
    "volume_spacing_mm": [4.0, 4.0, 4.0],
    "locator": {"input_shape": [16, 16, 16], "spacing_mm": [8.0, 8.0, 8.0], "output_stride": 2, "channels": [4, 8]},
    "classifier": {"input_shape": [32, 32, 32], "spacing_mm": [2.0, 2.0, 2.0], "channels": [4, 8, 8, 8]},
}


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    assert main(["--random-init", "--config", str(root / "tiny.yaml"), "--folds", "2", "--out", str(root / "w")]) == 0
    return root / "w"


def test_random_export_manifest_is_valid_and_complete(tiny_weights: Path) -> None:
    manifest = load_manifest(tiny_weights)  # schema + sha256 of every file
    data = manifest.data
    assert data["label_cols"] == LABEL_COLS and len(data["label_priors"]) == 14
    assert data["volume_spacing_mm"] == [4.0, 4.0, 4.0]
    assert [m["name"] for m in data["models"]] == ["locator_f0", "classifier_f0", "locator_f1", "classifier_f1"]
    for model in data["models"]:
        assert model["git_commit"] and model["config"]["locator"]["channels"] == [4, 8]
        assert 0.0 <= model["parity_max_abs"] <= ATOL
        proto = onnx.load(str(tiny_weights / model["file"]))
        assert proto.opset_import[0].version >= 17
        expected = ["heatmap"] if model["role"] == "locator" else ["logits", "modality_logits", "heatmap"]
        assert [o.name for o in proto.graph.output] == expected


def test_onnx_outputs_have_dynamic_batch_and_contract_shapes(tiny_weights: Path) -> None:
    session = ort.InferenceSession(str(tiny_weights / "classifier_f0.onnx"), providers=["CPUExecutionProvider"])
    logits, modality, heat = session.run(None, {"crop": np.random.default_rng(0).random((3, 1, 32, 32, 32),
                                                                                        np.float32)})
    assert logits.shape == (3, 14) and modality.shape == (3, 4) and heat.shape == (3, 13, 8, 8, 8)
    session = ort.InferenceSession(str(tiny_weights / "locator_f0.onnx"), providers=["CPUExecutionProvider"])
    (heatmap,) = session.run(None, {"volume": np.zeros((5, 1, 16, 16, 16), np.float32)})
    assert heatmap.shape == (5, 1, 8, 8, 8)


def test_kernel_ensemble_runs_the_exported_models(tiny_weights: Path) -> None:
    ensemble = Ensemble(load_manifest(tiny_weights), providers=["CPUExecutionProvider"], threads=1)
    volume = np.random.default_rng(1).normal(40, 20, (40, 48, 48)).astype(np.float32)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    out = ensemble.predict_volume(volume, affine, "CT")
    assert out.probs.shape == (14,) and np.all((out.probs > 0) & (out.probs < 1))
    assert np.isclose(out.modality_probs.sum(), 1.0)
    # the classifier's heatmap gives candidate sites even without a fine model
    assert out.candidates_lps.shape[1] == 3 and 1 <= len(out.candidates_lps) <= 4
    assert len(out.candidate_locations) == len(out.candidate_probs) == len(out.candidates_lps)


def test_parity_check_fails_when_onnx_and_torch_disagree(tmp_path: Path) -> None:
    torch.manual_seed(0)
    locator = Locator((4, 8), 2)
    path = tmp_path / "loc.onnx"
    err = export_model(locator, path, (16, 16, 16), "volume", ["heatmap"])
    assert err <= ATOL
    with torch.no_grad():
        locator.head[-1].bias += 0.5  # torch model changes after export
    with pytest.raises(ExportError, match="differs from torch"):
        onnx_parity(path, locator, (16, 16, 16), "volume", ["heatmap"])


def test_export_random_with_shipped_demo_config_writes_manifest(tmp_path: Path) -> None:
    path = export_random("demo", tmp_path)
    data = json.loads(path.read_text())
    assert data["models"][1]["input_shape"] == data["models"][1]["config"]["classifier"]["input_shape"]
    assert main(["--run", str(tmp_path / "nothing")]) == 2  # clear failure, no traceback


def test_torch_run_and_onnx_run_give_the_same_row_through_the_recipe(tiny_weights: Path) -> None:
    """Training's validation (torch modules through ``torch_runner``) and the kernel (onnxruntime sessions) share
    ``kernel.recipe``: the same weights give the same 14 probabilities, both folds, with flip TTA."""
    from kernel import recipe
    from kernel.preprocess import normalise
    from train_offline.config import load_config
    from train_offline.evaluate import torch_runner
    from train_offline.models import build_classifier, build_locator

    manifest = load_manifest(tiny_weights)
    config = load_config(tiny_weights.parent / "tiny.yaml")
    modules = {}
    for fold in range(2):  # export_random's seeds: the same modules it exported
        torch.manual_seed(fold)
        modules[f"locator_f{fold}"] = build_locator(config["locator"])
        modules[f"classifier_f{fold}"] = build_classifier(config["classifier"])
    volume = np.random.default_rng(2).normal(40, 200, (40, 48, 48)).astype(np.float32)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    ensemble = Ensemble(manifest, providers=["CPUExecutionProvider"], threads=1)
    onnx_out = ensemble.predict_volume(volume, affine, "CT")
    run = torch_runner(modules, torch.device("cpu"))
    torch_out = recipe.predict_volume(normalise(volume, manifest.scheme("CT")), affine, ensemble.locators,
                                      ensemble.classifiers, run)
    np.testing.assert_allclose(torch_out.centre_lps, onnx_out.centre_lps, atol=1e-3)
    np.testing.assert_allclose(torch_out.probs, onnx_out.probs, atol=1e-5)
    np.testing.assert_allclose(torch_out.modality_probs, onnx_out.modality_probs, atol=1e-5)
    assert torch_out.runs == onnx_out.runs == 2 + 2 * 2
