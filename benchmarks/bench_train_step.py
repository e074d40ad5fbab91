"""Classifier training-step time per sample in the default and the channels-last 3D memory layout.

Builds the classifier of a training config (``demo`` by default) and times full steps (forward, loss, backward, AdamW)
on random crops of the config's input shape with a localizer heatmap and a vessel target, alternating the two layouts
step by step in one process (``train_offline.step_bench.time_classifier_steps``, which the GPU check calls too).
Prints a table of median milliseconds per sample and the paired ratio; ``train.channels_last`` in a config picks the
layout for real runs.

    python benchmarks/bench_train_step.py [--config demo] [--steps 20] [--batch 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train_offline.config import load_config  # noqa: E402
from train_offline.step_bench import time_classifier_steps  # noqa: E402


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
    result = time_classifier_steps(cfg, batch_size, args.steps, warmup=2)  # the first two steps warm up oneDNN
    print(f"classifier {cfg['input_shape']} channels {cfg['channels']}, batch {batch_size}, "
          f"{torch.get_num_threads()} threads, {args.steps} steps per layout\n")
    print("| layout | median ms/sample | p10 | p90 |")
    print("|---|---|---|---|")
    for name, seconds in result.layouts().items():
        ms = np.asarray(seconds) * 1000.0 / batch_size
        print(f"| {name} | {np.median(ms):.0f} | {np.percentile(ms, 10):.0f} | {np.percentile(ms, 90):.0f} |")
    ratio = result.ratio()
    print(f"\nchannels-last / default, paired by step: median {np.median(ratio):.2f} "
          f"(range {ratio.min():.2f}-{ratio.max():.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
