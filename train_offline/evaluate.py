"""Validation the kernel's way: torch models run through ``kernel.recipe``, scored with ``kernel.metric``.

No model input is built and no output aggregated here: ``torch_runner`` turns torch modules into the recipe's
``run(spec, batch)``, so training validates exactly the inputs, flips and averages the kernel ships. Also the plots of
a fold and the re-score of exported ONNX weights through the kernel's own ensemble on cached volumes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kernel import recipe
from kernel.jsonl import read_jsonl
from kernel.labels import ID_COL, LABEL_COLS
from kernel.manifest import ModelSpec
from kernel.metric import evaluate_predictions
from kernel.recipe import Runner
from train_offline.loop import format_of

__all__ = ["plot_fold", "predict_centres", "predict_classifier", "score_with_onnx", "torch_runner"]


def torch_runner(models: Mapping[str, nn.Module], device: torch.device) -> Runner:
    """The recipe's ``run`` for torch modules keyed by spec name: eval mode, no grad, inputs in the model's layout,
    outputs (a tensor, or a dict read by ``spec.output_names``) as float32 numpy arrays."""

    layouts = {name: format_of(model) for name, model in models.items()}  # once, not per series

    @torch.no_grad()
    def run(spec: ModelSpec, batch: np.ndarray) -> list[np.ndarray]:
        model = models[spec.name]
        model.eval()
        out = model(torch.from_numpy(batch).to(device, memory_format=layouts[spec.name]))
        outputs = [out[name] for name in spec.output_names] if isinstance(out, Mapping) else [out]
        return [o.float().cpu().numpy() for o in outputs]

    return run


def predict_centres(locator: nn.Module, spec: ModelSpec, volumes: Callable[[str], tuple[np.ndarray, np.ndarray]],
                    uids: Sequence[str], device: torch.device,
                    each: Callable[[str, np.ndarray, np.ndarray, np.ndarray], None] | None = None
                    ) -> dict[str, np.ndarray]:
    """LPS Circle-of-Willis centre per series through ``recipe.locate`` (as the kernel).

    ``volumes(uid)`` gives a normalised canonical (array, affine); ``each(uid, array, affine, centre)`` is called with
    every volume read here (training keeps the classifier's region from it without a second read).
    """
    run = torch_runner({spec.name: locator}, device)
    centres = {}
    for uid in uids:
        array, affine = volumes(uid)
        centres[uid], _ = recipe.locate(array, affine, [spec], run)
        if each is not None:
            each(uid, array, affine, centres[uid])
    return centres


def predict_classifier(classifier: nn.Module, spec: ModelSpec,
                       volumes: Callable[[str], tuple[np.ndarray, np.ndarray]], uids: Sequence[str],
                       centres: Mapping[str, np.ndarray], device: torch.device,
                       flip_tta: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(N, 14) label and (N, 4) modality probabilities through ``recipe.classify`` around the given centres."""
    run = torch_runner({spec.name: classifier}, device)
    probs, modality = [], []
    for uid in uids:
        array, affine = volumes(uid)
        out = recipe.classify(array, affine, centres[uid], [spec], run, flip_tta)
        p, m = out.probs, out.modality_probs
        probs.append(p)
        modality.append(m)
    return np.asarray(probs), np.asarray(modality)


def plot_fold(out_dir: Path, labels: np.ndarray, probs: np.ndarray) -> None:
    """learning_curves.png (loss, validation score, centre error) and roc_curves.png (one panel per label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    records = read_jsonl(out_dir / "metrics.jsonl")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for stage, ax in (("locator", axes[0]), ("classifier", axes[1])):
        rows = [r for r in records if r["stage"] == stage]
        ax.plot([r["epoch"] + 1 for r in rows], [r["train_loss"] for r in rows], "o-", label="train loss")
        ax.set(title=f"{stage} training loss", xlabel="epoch")
        ax.legend()
    rows = [r for r in records if r["stage"] == "classifier" and r.get("val_score") is not None]
    axes[2].plot([r["epoch"] + 1 for r in rows], [r["val_score"] for r in rows], "o-", label="val score")
    axes[2].plot([r["epoch"] + 1 for r in rows], [r["val_auc_present"] for r in rows], "s-",
                 label="val AUC present")
    axes[2].set(title="classifier validation", xlabel="epoch", ylim=(0.4, 1.01))
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(out_dir / "learning_curves.png", dpi=80)
    plt.close(fig)
    fig, axes = plt.subplots(3, 5, figsize=(18, 11))
    for j, (name, ax) in enumerate(zip(LABEL_COLS, axes.flat, strict=False)):
        if len(np.unique(labels[:, j])) == 2:
            fpr, tpr, _ = roc_curve(labels[:, j], probs[:, j])
            from sklearn.metrics import auc as area

            ax.plot(fpr, tpr, label=f"AUC {area(fpr, tpr):.3f} (n+={int(labels[:, j].sum())})")
            ax.legend(loc="lower right", fontsize=8)
        else:
            ax.text(0.5, 0.5, "single class", ha="center")
        ax.plot([0, 1], [0, 1], "k:", lw=0.5)
        ax.set_title(name, fontsize=9)
    axes.flat[-1].axis("off")
    fig.tight_layout()
    fig.savefig(out_dir / "roc_curves.png", dpi=70)
    plt.close(fig)




def score_with_onnx(weights_dir: Path, config: Mapping[str, Any], uids: Sequence[str]) -> dict[str, float]:
    """Re-score series through the kernel's onnxruntime ensemble on their cached volumes (the Kaggle path)."""
    from kernel.ensemble import Ensemble
    from kernel.manifest import load_manifest
    from train_offline.cache import load_cached
    from train_offline.index import load_index

    index = load_index(Path(config["data"]["index"])).set_index(ID_COL)
    ensemble = Ensemble(load_manifest(weights_dir), providers=["CPUExecutionProvider"],
                        threads=int(config["train"]["threads"]))
    rows = []
    for uid in uids:
        volume = load_cached(Path(config["data"]["cache"]), uid)
        out = ensemble.predict_volume(np.asarray(volume.array), volume.affine, volume.modality)
        rows.append(out.probs)
    labels = index.loc[list(uids), LABEL_COLS].to_numpy(dtype=np.float64)
    metrics = evaluate_predictions(labels, np.asarray(rows), index.loc[list(uids), "Modality"].tolist())
    return {"score": metrics["score"], "auc_present": metrics["auc_present"]}
