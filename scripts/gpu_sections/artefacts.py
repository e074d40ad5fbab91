"""What one section makes and the next reuses (kept in ``ctx.shared``): the model config, the phantom CTA series and
the exported random-init weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .harness import Ctx, timer

__all__ = ["CPU_MODEL", "ensure_weights", "model_config", "phantom_cta", "write_random_fold"]

# --cpu: models small enough for two shared cores (the same code paths as the full config).
CPU_MODEL = {
    "locator": {"input_shape": [16, 16, 16], "spacing_mm": [12.0, 12.0, 12.0], "channels": [4, 8], "batch_size": 4,
                "epochs": 2, "val_every": 2},
    "classifier": {"input_shape": [16, 16, 16], "spacing_mm": [4.0, 4.0, 4.0], "channels": [4, 8, 8, 8],
                   "batch_size": 4, "epochs": 2, "val_every": 2, "pretrain_epochs": 0},
}


def model_config(ctx: Ctx) -> dict[str, Any]:
    """The full config (``--cpu``: with tiny models) as train_offline.config resolves it."""
    from train_offline.config import load_config

    return load_config("full", None if ctx.gpu else CPU_MODEL)


def phantom_cta(ctx: Ctx) -> Path:
    """One phantom CTA series, uncompressed: full size 400 x 512 x 512 on the GPU machine, small with --cpu."""
    if "cta_folder" in ctx.shared:
        return ctx.shared["cta_folder"]
    from pydicom.uid import ExplicitVRLittleEndian

    from train_offline.phantoms.generate import generate_series

    out = ctx.work / "cta"
    with timer() as t:
        result = generate_series(out, 0, ctx.args.seed, size="full" if ctx.gpu else "small", modality="CTA",
                                 n_slices=400 if ctx.gpu else None, transfer_syntax=ExplicitVRLittleEndian,
                                 with_segmentation=False)
    ctx.shared["cta_folder"] = out / "series" / result.series_uid
    ctx.shared["cta_generate_s"] = t[0]
    return ctx.shared["cta_folder"]


def write_random_fold(config: dict[str, Any], fold_dir: Path, seed: int = 0) -> tuple[Any, Any]:
    """A trained-fold folder (config.yaml, state dicts, summary.json) holding randomly initialised models."""
    import torch
    import yaml

    from train_offline.models import build_classifier, build_locator

    torch.manual_seed(seed)
    locator, classifier = build_locator(config["locator"]), build_classifier(config["classifier"])
    fold_dir.mkdir(parents=True, exist_ok=True)
    (fold_dir / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False))
    torch.save(locator.state_dict(), fold_dir / "locator.pt")
    torch.save(classifier.state_dict(), fold_dir / "classifier.pt")
    summary = {"fold": 0, "validation": {"score": 0.5, "auc_present": 0.5, "centre_error_mm_median": None},
               "label_priors": [0.03] * 13 + [0.43]}
    (fold_dir / "summary.json").write_text(json.dumps(summary))
    return locator, classifier


def ensure_weights(ctx: Ctx) -> tuple[Path, Any, Any]:
    """ONNX weights of the full config's models through train_offline.export (random init), and the torch modules."""
    if "weights" in ctx.shared:
        return ctx.shared["weights"], *ctx.shared["torch_models"]
    from train_offline.export import export_folds

    fold_dir = ctx.work / "random_run" / "fold0"
    locator, classifier = write_random_fold(model_config(ctx), fold_dir, seed=ctx.args.seed)
    weights = ctx.work / "weights"
    with timer() as t:
        export_folds(fold_dir, weights, rescore=False)
    ctx.shared.update(weights=weights, torch_models=(locator, classifier), export_s=t[0])
    return weights, locator, classifier
