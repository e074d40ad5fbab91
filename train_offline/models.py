"""Torch models, sized by config: a Circle-of-Willis locator and a region classifier with auxiliary dense heads.

Locator: whole-head coarse volume [B, 1, *shape] -> heatmap logits [B, 1, *shape / stride] (spatial softmax target).
Classifier: region crop [B, 1, *shape] -> ``logits`` [B, 14] (LABEL_COLS) and ``modality_logits`` [B, 4]; during
training also ``heatmap`` [B, 13, *shape / 4] (one channel per location, a Gaussian at each localizer) and ``seg``
[B, 14, *shape / 4] (background + 13 vessel classes, where segmentations exist). The location logits read the
heatmap's spatial maximum, so the dense target teaches the classifier where to look.
``ExportClassifier`` wraps a classifier so the ONNX graph has exactly the outputs of docs/reference/manifest.md (logits,
modality_logits and the location heatmap the kernel reads candidate sites from).
FineNet: a patch [B, 1, *patch] sampled from the native stack around a candidate -> ``logit`` [B, 1] (an aneurysm
within ``positive_radius_mm`` of the centre); during training also ``sphere`` [B, 1, *patch / 2] (a ball at each
localizer: where in the patch the aneurysm is).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kernel.labels import LABEL_COLS, LOCATION_COLS, MODALITY_NAMES
from kernel.manifest import ModelSpec

__all__ = [
    "CLASSIFIER_STRIDE", "FINE_STRIDE", "Classifier", "ExportClassifier", "ExportFine", "FineNet", "Locator",
    "build_classifier", "build_fine", "build_locator", "classifier_spec", "fine_spec", "locator_spec",
]

CLASSIFIER_STRIDE = 4  # output stride of the classifier's auxiliary heads
FINE_STRIDE = 2  # output stride of the fine model's sphere map
N_SEG_CLASSES = len(LOCATION_COLS) + 1


def _groups(channels: int) -> int:
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


class ConvNormAct(nn.Sequential):
    """3x3x3 convolution, GroupNorm (batch-size independent, exports to ONNX), SiLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(
            nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.GroupNorm(_groups(cout), cout),
            nn.SiLU(inplace=True),
        )


class ResBlock(nn.Module):
    """Two ConvNormAct with a residual connection (projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = ConvNormAct(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv3d(cout, cout, 3, padding=1, bias=False), nn.GroupNorm(_groups(cout), cout))
        self.skip = (
            nn.Identity() if cin == cout and stride == 1
            else nn.Sequential(nn.Conv3d(cin, cout, 1, stride=stride, bias=False), nn.GroupNorm(_groups(cout), cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.conv2(self.conv1(x)) + self.skip(x))


class Locator(nn.Module):
    """Small 3D encoder-decoder: coarse head volume -> one heatmap channel at ``output_stride``."""

    def __init__(self, channels: Sequence[int] = (8, 16, 32), output_stride: int = 2):
        super().__init__()
        assert len(channels) >= 2, "locator needs at least two channel widths"
        assert output_stride in (1, 2, 4) and 2 ** (len(channels) - 1) >= output_stride, "unsupported output_stride"
        self.output_stride = output_stride
        self.stem = ConvNormAct(1, channels[0])
        self.down = nn.ModuleList(ResBlock(a, b, 2) for a, b in zip(channels[:-1], channels[1:], strict=True))
        level = {1: 0, 2: 1, 4: 2}[output_stride]
        self.level = level
        self.lateral = nn.ModuleList(nn.Conv3d(c, channels[level], 1) for c in channels[level:])
        self.head = nn.Sequential(ConvNormAct(channels[level], channels[level]), nn.Conv3d(channels[level], 1, 1))

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        feats = [self.stem(volume)]
        for block in self.down:
            feats.append(block(feats[-1]))
        merged = self.lateral[0](feats[self.level])
        for i, feat in enumerate(feats[self.level + 1 :], start=1):
            merged = merged + F.interpolate(self.lateral[i](feat), scale_factor=2.0**i, mode="nearest")
        return self.head(merged)


class Classifier(nn.Module):
    """3D residual encoder over the region crop, a light decoder at stride 4 for the dense heads, pooled heads."""

    def __init__(self, channels: Sequence[int] = (12, 24, 48, 96), dropout: float = 0.1):
        super().__init__()
        assert len(channels) == 4, "classifier channels: 4 widths (strides 2, 4, 8, 16)"
        c0, c1, c2, c3 = channels
        # Full-resolution convolution before the first downsampling: aneurysms are only a few voxels wide.
        self.stem = nn.Sequential(ConvNormAct(1, c0), ConvNormAct(c0, c0, stride=2))
        self.stage1 = ResBlock(c0, c1, 2)
        self.stage2 = ResBlock(c1, c2, 2)
        self.stage3 = ResBlock(c2, c3, 2)
        self.lat1, self.lat2, self.lat3 = nn.Conv3d(c1, c1, 1), nn.Conv3d(c2, c1, 1), nn.Conv3d(c3, c1, 1)
        self.decoder = ConvNormAct(c1, c1)
        self.heatmap_head = nn.Conv3d(c1, len(LOCATION_COLS), 1)
        nn.init.constant_(self.heatmap_head.bias, -4.0)  # start near "no aneurysm anywhere" (focal-loss practice)
        self.seg_head = nn.Conv3d(c1, N_SEG_CLASSES, 1)
        self.dropout = nn.Dropout(dropout)
        pooled = 2 * c3 + c1
        self.label_head = nn.Linear(pooled, len(LABEL_COLS))
        self.modality_head = nn.Linear(2 * c3, len(MODALITY_NAMES))
        # How much each location logit trusts the peak of its heatmap channel (learned, starts at 1).
        self.peak_scale = nn.Parameter(torch.ones(len(LABEL_COLS)))

    def forward(self, crop: torch.Tensor) -> dict[str, torch.Tensor]:
        f1 = self.stage1(self.stem(crop))
        f2 = self.stage2(f1)
        f3 = self.stage3(f2)
        d = self.lat1(f1) + F.interpolate(self.lat2(f2), scale_factor=2.0, mode="nearest")
        d = d + F.interpolate(self.lat3(f3), scale_factor=4.0, mode="nearest")
        d = self.decoder(d)
        heatmap = self.heatmap_head(d)
        seg = self.seg_head(d)
        peaks = torch.amax(heatmap, dim=(2, 3, 4))  # [B, 13]
        peaks = torch.cat([peaks, torch.amax(peaks, dim=1, keepdim=True)], dim=1)  # present: the strongest location
        deep = torch.cat([torch.mean(f3, dim=(2, 3, 4)), torch.amax(f3, dim=(2, 3, 4))], dim=1)
        pooled = torch.cat([deep, torch.amax(d, dim=(2, 3, 4))], dim=1)
        logits = self.label_head(self.dropout(pooled)) + self.peak_scale * peaks
        return {"logits": logits, "modality_logits": self.modality_head(self.dropout(deep)), "heatmap": heatmap,
                "seg": seg}


class ExportClassifier(nn.Module):
    """The inference graph: exactly (logits, modality_logits, heatmap)."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, crop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.classifier(crop)
        return out["logits"], out["modality_logits"], out["heatmap"]


class FineNet(nn.Module):
    """Patch classifier at the fine spacing: full-resolution stem, three stride-2 residual stages, pooled logit and a
    stride-2 decoder for the auxiliary sphere target."""

    def __init__(self, channels: Sequence[int] = (16, 32, 64, 96), dropout: float = 0.1):
        super().__init__()
        assert len(channels) == 4, "fine channels: 4 widths (strides 1, 2, 4, 8)"
        c0, c1, c2, c3 = channels
        self.stem = nn.Sequential(ConvNormAct(1, c0), ConvNormAct(c0, c0))
        self.stage1 = ResBlock(c0, c1, 2)
        self.stage2 = ResBlock(c1, c2, 2)
        self.stage3 = ResBlock(c2, c3, 2)
        self.lat1, self.lat2, self.lat3 = nn.Conv3d(c1, c1, 1), nn.Conv3d(c2, c1, 1), nn.Conv3d(c3, c1, 1)
        self.decoder = ConvNormAct(c1, c1)
        self.sphere_head = nn.Conv3d(c1, 1, 1)
        nn.init.constant_(self.sphere_head.bias, -3.0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * c3 + c1, 1)

    def forward(self, patch: torch.Tensor) -> dict[str, torch.Tensor]:
        f1 = self.stage1(self.stem(patch))
        f2 = self.stage2(f1)
        f3 = self.stage3(f2)
        d = self.lat1(f1) + F.interpolate(self.lat2(f2), scale_factor=2.0, mode="nearest")
        d = self.decoder(d + F.interpolate(self.lat3(f3), scale_factor=4.0, mode="nearest"))
        sphere = self.sphere_head(d)
        pooled = torch.cat([torch.mean(f3, dim=(2, 3, 4)), torch.amax(f3, dim=(2, 3, 4)),
                            torch.amax(d, dim=(2, 3, 4))], dim=1)
        logit = self.head(self.dropout(pooled)) + torch.amax(sphere, dim=(2, 3, 4))
        return {"logit": logit, "sphere": sphere}


class ExportFine(nn.Module):
    """The fine inference graph: exactly (logit, sphere): the patch logit and the stride-2 sphere map (logits) that
    ``kernel.recipe.recentre`` moves candidates to."""

    def __init__(self, fine: FineNet):
        super().__init__()
        self.fine = fine

    def forward(self, patch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.fine(patch)
        return out["logit"], out["sphere"]


def build_locator(cfg: Mapping[str, Any]) -> Locator:
    """Locator from the config's ``locator`` section; checks the input shape divides by the stride."""
    stride = int(cfg["output_stride"])
    if any(int(s) % (2 ** (len(cfg["channels"]) - 1)) for s in cfg["input_shape"]):
        raise ValueError(f"locator input_shape {cfg['input_shape']} must divide by 2^(levels-1)")
    return Locator(tuple(int(c) for c in cfg["channels"]), stride)


def build_classifier(cfg: Mapping[str, Any]) -> Classifier:
    """Classifier from the config's ``classifier`` section; the crop must divide by 16 (four stride-2 stages)."""
    if any(int(s) % 16 for s in cfg["input_shape"]):
        raise ValueError(f"classifier input_shape {cfg['input_shape']} must divide by 16")
    return Classifier(tuple(int(c) for c in cfg["channels"]), float(cfg["dropout"]))


def locator_spec(cfg: Mapping[str, Any], fold: int) -> ModelSpec:
    """The locator's input/output contract from the config's ``locator`` section (export adds file and scores)."""
    z, y, x = (int(s) for s in cfg["input_shape"])
    dz, dy, dx = (float(s) for s in cfg["spacing_mm"])
    return ModelSpec(name=f"locator_f{fold}", role="locator", fold=int(fold), input_name="volume",
                     input_shape=(z, y, x), spacing_mm=(dz, dy, dx), output_names=("heatmap",),
                     output_stride=int(cfg["output_stride"]))


def classifier_spec(cfg: Mapping[str, Any], fold: int) -> ModelSpec:
    """The classifier's contract from the config's ``classifier`` section: crop, offset, outputs, flip TTA."""
    z, y, x = (int(s) for s in cfg["input_shape"])
    dz, dy, dx = (float(s) for s in cfg["spacing_mm"])
    off_l, off_p, off_s = (float(v) for v in cfg.get("centre_offset_lps_mm", (0.0, 0.0, 0.0)))
    return ModelSpec(name=f"classifier_f{fold}", role="classifier", fold=int(fold), input_name="crop",
                     input_shape=(z, y, x), spacing_mm=(dz, dy, dx),
                     output_names=("logits", "modality_logits", "heatmap"), output_stride=CLASSIFIER_STRIDE,
                     flip_tta=True, centre_offset_lps_mm=(off_l, off_p, off_s))


def build_fine(cfg: Mapping[str, Any]) -> FineNet:
    """Fine patch model from the config's ``fine`` section; the patch must divide by 8 (three stride-2 stages)."""
    if any(int(s) % 8 for s in cfg["input_shape"]):
        raise ValueError(f"fine input_shape {cfg['input_shape']} must divide by 8")
    return FineNet(tuple(int(c) for c in cfg["channels"]), float(cfg["dropout"]))


def fine_spec(cfg: Mapping[str, Any], fold: int, fusion_weight: float | None = None,
              site_heatmap_weight: float | None = None) -> ModelSpec:
    """The fine model's contract from the config's ``fine`` section: patch, spacing, candidates, fusion and site
    heatmap weights (the config's unless given: the out-of-fold choices)."""
    z, y, x = (int(s) for s in cfg["input_shape"])
    dz, dy, dx = (float(s) for s in cfg["spacing_mm"])
    weight = float(cfg["fusion_weight"] if fusion_weight is None else fusion_weight)
    heat = float(cfg.get("site_heatmap_weight", 0.0) if site_heatmap_weight is None else site_heatmap_weight)
    moves = float(cfg.get("recentre_max_mm", 0.0))
    return ModelSpec(name=f"fine_f{fold}", role="fine", fold=int(fold), input_name="patch", input_shape=(z, y, x),
                     spacing_mm=(dz, dy, dx), output_names=("logit", "sphere"), output_stride=FINE_STRIDE,
                     flip_tta=bool(cfg.get("flip_tta", True)), candidates=int(cfg["candidates"]),
                     candidate_min_distance_mm=float(cfg["candidate_min_distance_mm"]), fusion_weight=weight,
                     recentre_max_mm=moves,  # 0: trained/scored before moves
                     recentre_view=bool(cfg.get("recentre_view", False)) and moves > 0, site_heatmap_weight=heat)
