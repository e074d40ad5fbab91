"""Classifier training-step time in the default and the channels-last 3D memory layout, measured in one process.

Both layouts get the same model (same seed), the same random batch and the same optimiser; their steps alternate
step by step, so that drifts in machine speed (other jobs, clocks, caches) hit both alike and the ratio can be paired
by step. A step is the whole of training's inner loop: forward, ``losses.classifier_loss``, backward, AdamW.
``train.channels_last`` in a config picks the layout for real runs (``loop.memory_format``).
Callers: ``benchmarks/bench_train_step.py`` (prints a table) and the GPU check's train section.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kernel.labels import LABEL_COLS, LOCATION_COLS, MODALITY_NAMES
from train_offline.loop import memory_format
from train_offline.losses import classifier_loss
from train_offline.models import CLASSIFIER_STRIDE, build_classifier

__all__ = ["StepTimes", "random_batch", "time_classifier_steps"]

def random_batch(shape: list[int], batch: int, seed: int) -> dict[str, torch.Tensor]:
    """Random crops with one localizer per sample and a random vessel map (the step's cost ignores content)."""
    g = torch.Generator().manual_seed(seed)
    cells = [s // CLASSIFIER_STRIDE for s in shape]
    n_loc = len(LOCATION_COLS)
    heatmap = torch.zeros(batch, n_loc, *cells)
    for b in range(batch):
        heatmap[b, b % n_loc, cells[0] // 2, cells[1] // 2, cells[2] // 2] = 1.0
    labels = torch.zeros(batch, len(LABEL_COLS))
    labels[::2, -1] = 1.0
    return {"crop": torch.randn(batch, 1, *shape, generator=g), "labels": labels, "heatmap": heatmap,
            "seg": torch.randint(0, n_loc + 1, (batch, *cells), generator=g),
            "modality": torch.arange(batch) % len(MODALITY_NAMES)}


@dataclass
class StepTimes:
    """Seconds per training step in each layout, index i of both lists being the same batch."""

    default_s: list[float]
    channels_last_s: list[float]
    batch_size: int
    shape: list[int]
    warmup: int
    device: str
    autocast: str | None  # "bfloat16" etc., None for fp32
    peak_mb: float | None  # CUDA: peak memory of both models together

    def ratio(self) -> np.ndarray:
        """channels-last / default, paired by step."""
        n = min(len(self.default_s), len(self.channels_last_s))
        return np.asarray(self.channels_last_s[:n]) / np.asarray(self.default_s[:n])

    def layouts(self) -> dict[str, list[float]]:
        """Layout name -> step seconds, default first."""
        return {"default (contiguous)": self.default_s, "channels-last 3D": self.channels_last_s}

    def as_dict(self) -> dict[str, Any]:
        """The numbers for a JSON report."""
        ratio = self.ratio()
        return {"default_s": self.default_s, "channels_last_s": self.channels_last_s,
                "ratio_median": float(np.median(ratio)) if ratio.size else None, "peak_mb_both": self.peak_mb,
                "batch": self.batch_size, "shape": self.shape, "warmup": self.warmup, "device": self.device,
                "autocast": self.autocast}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def time_classifier_steps(cfg: Mapping[str, Any], batch_size: int, steps: int, warmup: int = 2,
                          device: str | torch.device = "cpu", autocast: torch.dtype | None = None,
                          stop: Callable[[], bool] | None = None, seed: int = 0) -> StepTimes:
    """Time ``steps`` classifier steps per layout after ``warmup`` untimed ones (oneDNN and cuDNN pick their kernels
    in the first), alternating the layouts step by step; ``stop()`` true after a step ends the loop early.

    ``cfg`` is a config's ``classifier`` section (``input_shape``, ``channels``, the loss weights); ``autocast`` the
    lower precision to run the forward pass and loss in (None: fp32).
    """
    assert steps > 0 and warmup >= 0 and batch_size > 0, (steps, warmup, batch_size)
    device = torch.device(device)
    shape = [int(s) for s in cfg["input_shape"]]
    assert len(shape) == 3, f"classifier input_shape must be 3-D, got {shape}"
    runs = []
    for channels_last in (False, True):
        torch.manual_seed(seed)
        fmt = memory_format(channels_last)
        model = build_classifier(cfg).to(device, memory_format=fmt).train()
        runs.append((model, torch.optim.AdamW(model.parameters(), lr=1e-3), fmt, []))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(warmup + steps):
        batch = {k: v.to(device) for k, v in random_batch(shape, batch_size, seed + step).items()}
        for model, optimizer, fmt, times in runs:
            inputs = {k: v.contiguous(memory_format=fmt) if v.dim() == 5 else v for k, v in batch.items()}
            _sync(device)
            start = time.perf_counter()
            with _autocast(device, autocast):
                loss, _ = classifier_loss(model(inputs["crop"]), inputs, cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            _sync(device)
            if step >= warmup:
                times.append(time.perf_counter() - start)
        if stop is not None and stop():
            break
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    default, last = runs[0][3], runs[1][3]
    del runs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return StepTimes(default, last, batch_size, shape, warmup, str(device),
                     None if autocast is None else str(autocast).removeprefix("torch."), peak)
