"""Training losses: locator heatmap cross-entropy, CenterNet focal loss on location heatmaps, the classifier's sum,
and the vessel-segmentation pretraining loss."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from kernel.labels import LABEL_COLS

__all__ = ["classifier_loss", "heatmap_focal_loss", "locator_loss", "pretrain_loss"]


def locator_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the spatial softmax against the Gaussian target distribution."""
    log_p = F.log_softmax(logits.flatten(1).float(), dim=1)
    return -(target.flatten(1) * log_p).sum(dim=1).mean()


def heatmap_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0,
                       beta: float = 4.0) -> torch.Tensor:
    """CenterNet focal loss on Gaussian targets: cells at a localizer (target >= 0.5) are positives; negatives near
    them are down-weighted by (1 - target)^beta; confident false peaks cost the most. Normalised by the positives."""
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    p = log_p.exp()
    positive = target >= 0.5
    pos_loss = -((1.0 - p) ** alpha * log_p)[positive].sum()
    neg_loss = -((1.0 - target) ** beta * p**alpha * log_not_p)[~positive].sum()
    return (pos_loss + neg_loss) / positive.sum().clamp(min=1)


def _seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """14-class vessel cross-entropy where a segmentation exists (target -1 elsewhere is ignored)."""
    if bool((target >= 0).any()):
        return F.cross_entropy(logits.float(), target, ignore_index=-1)
    return logits.float().sum() * 0.0  # keeps every parameter in the graph (DDP needs that)


def classifier_loss(out: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
                    cfg: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """Label BCE + heatmap focal loss + vessel CE (where segmented) + modality CE."""
    pos_weight = torch.ones(len(LABEL_COLS), device=out["logits"].device)
    pos_weight[-1] = float(cfg["pos_weight_present"])
    labels = F.binary_cross_entropy_with_logits(out["logits"].float(), batch["labels"], pos_weight=pos_weight)
    heat = heatmap_focal_loss(out["heatmap"].float(), batch["heatmap"])
    seg = _seg_loss(out["seg"], batch["seg"])
    modality = F.cross_entropy(out["modality_logits"].float(), batch["modality"])
    total = (labels + float(cfg["heatmap_weight"]) * heat + float(cfg["seg_weight"]) * seg
             + float(cfg["modality_weight"]) * modality)
    return total, {"labels": labels.item(), "heatmap": heat.item(), "seg": seg.item(), "modality": modality.item()}


def pretrain_loss(out: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """Vessel-segmentation pretraining: the vessel CE on ``seg`` alone.

    The label, heatmap and modality outputs enter with weight zero: their heads get zero gradients, but every
    parameter stays in the graph, so DistributedDataParallel's unused-parameter check does not fail.
    """
    seg = _seg_loss(out["seg"], batch["seg"])
    unused = sum(out[key].float().sum() for key in ("logits", "heatmap", "modality_logits")) * 0.0
    return seg + unused, {"seg": seg.item()}
