"""Classifier training-step time per sample in the default and the channels-last 3D memory layout.

Builds the classifier of a training config (``demo`` by default) and times full steps (forward, loss, backward, AdamW)
on random crops of the config's input shape with a localizer heatmap and a vessel target, alternating the two layouts
step by step in one process so that machine speed drifts hit both alike. Prints a table of median milliseconds per
sample and the paired ratio; ``train.channels_last`` in a config picks the layout for real runs.

    python benchmarks/bench_train_step.py [--config demo] [--steps 20] [--batch 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernel.labels import LABEL_COLS, LOCATION_COLS, MODALITY_NAMES  # noqa: E402
from train_offline.config import load_config  # noqa: E402
from train_offline.loop import memory_format  # noqa: E402
from train_offline.losses import classifier_loss  # noqa: E402
from train_offline.models import CLASSIFIER_STRIDE, build_classifier  # noqa: E402


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="demo", help="training config name or YAML path (default: demo)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per layout (default: 20)")
    parser.add_argument("--batch", type=int, default=0, help="batch size (default: the config's)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: the config's train.threads)")
    args = parser.parse_args(argv)

    config = load_config(args.config)
    cfg = config["classifier"]
    torch.set_num_threads(args.threads or int(config["train"]["threads"]))
    batch_size = args.batch or int(cfg["batch_size"])
    shape = [int(s) for s in cfg["input_shape"]]
    runs = {}
    for channels_last in (False, True):
        torch.manual_seed(0)
        fmt = memory_format(channels_last)
        model = build_classifier(cfg).to(memory_format=fmt).train()
        runs[channels_last] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3), fmt, [])
    for step in range(args.steps + 2):  # the first two steps warm up oneDNN
        batch = random_batch(shape, batch_size, step)
        for model, optimizer, fmt, times in runs.values():
            inputs = {k: v.contiguous(memory_format=fmt) if v.dim() == 5 else v for k, v in batch.items()}
            start = time.perf_counter()
            loss, _ = classifier_loss(model(inputs["crop"]), inputs, cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step >= 2:
                times.append((time.perf_counter() - start) * 1000.0 / batch_size)
    default, last = (np.asarray(runs[k][3]) for k in (False, True))
    print(f"classifier {cfg['input_shape']} channels {cfg['channels']}, batch {batch_size}, "
          f"{torch.get_num_threads()} threads, {args.steps} steps per layout\n")
    print("| layout | median ms/sample | p10 | p90 |")
    print("|---|---|---|---|")
    for name, t in (("default (contiguous)", default), ("channels-last 3D", last)):
        print(f"| {name} | {np.median(t):.0f} | {np.percentile(t, 10):.0f} | {np.percentile(t, 90):.0f} |")
    ratio = last / default
    print(f"\nchannels-last / default, paired by step: median {np.median(ratio):.2f} "
          f"(range {ratio.min():.2f}-{ratio.max():.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
