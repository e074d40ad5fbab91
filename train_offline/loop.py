"""The epoch loop: AdamW + cosine schedule, DistributedDataParallel, per-epoch checkpoints and resume, a JSONL log.

One loop for both stages; what a step computes and how an epoch is validated are passed in.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

__all__ = ["atomic_torch_save", "barrier", "format_of", "log_jsonl", "memory_format", "run_stage",
           "setup_distributed", "unwrap"]


def setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group under torchrun (gloo on CPU, nccl on CUDA).

    Under torchrun the group is initialised even for one process (``--nproc_per_node 1``), so the stages run in
    DistributedDataParallel over NCCL/gloo exactly as on N GPUs; a plain ``python -m`` run stays without a group.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launched = world > 1 or "TORCHELASTIC_RUN_ID" in os.environ  # torchrun sets it for every worker
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if launched and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world, device


def barrier(world: int) -> None:
    """Wait for every rank (no-op in one process)."""
    if world > 1:
        dist.barrier()


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file and a rename: a killed run never leaves a half-written checkpoint."""
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def log_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON record as a line."""
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def memory_format(channels_last: bool) -> torch.memory_format:
    """Channels-last 3D layout for convolutions (config ``train.channels_last``), else the default layout.

    oneDNN's CPU convolutions then skip their layout copies: the demo classifier's step takes 0.71x the time on 2
    cores (benchmarks/bench_train_step.py); the arithmetic is the same.
    """
    return torch.channels_last_3d if channels_last else torch.contiguous_format


def format_of(model: nn.Module) -> torch.memory_format:
    """The layout a model's 5-D weights are in, so inputs can match it."""
    return memory_format(any(p.dim() == 5 and not p.is_contiguous() and p.is_contiguous(
        memory_format=torch.channels_last_3d) for p in model.parameters()))


def run_stage(stage: str, model: nn.Module, dataset: Any, cfg: Mapping[str, Any], step: Callable[[dict], tuple],
              validate_fn: Callable[[int], dict[str, Any]], out_dir: Path, ctx: Mapping[str, Any]) -> nn.Module:
    """Epoch loop with AdamW + cosine schedule, DDP sharding, per-epoch checkpoint and resume, metrics log."""
    rank, world, device, seed = ctx["rank"], ctx["world"], ctx["device"], ctx["seed"]
    fmt = memory_format(bool(ctx["channels_last"]))
    model.to(device, memory_format=fmt)
    backend = dist.get_backend() if dist.is_initialized() else None
    if backend is not None:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    epochs = int(cfg["epochs"])
    val_every = max(1, int(cfg["val_every"]))
    if world > 1:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    batch_size = int(cfg["batch_size"])
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=int(ctx["num_workers"]),
                        drop_last=len(dataset) >= 2 * world * batch_size)
    steps_per_epoch = max(len(loader), 1)
    total = epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg.get("weight_decay",
                                                                                                        0.0)))
    warmup = max(1, min(steps_per_epoch, total // 10))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    ckpt_path = out_dir / f"checkpoint_{stage}.pt"
    start_epoch = 0
    if ctx["resume"] and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"]) + 1
        if rank == 0:
            print(f"{stage}: resumed after epoch {start_epoch}", file=sys.stderr)
    amp = bool(ctx["amp"]) and device.type == "cuda"
    for epoch in range(start_epoch, epochs):
        model.train()
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        start, losses, part_sums = time.perf_counter(), [], {}
        bar = tqdm(loader, desc=f"{stage} {epoch + 1}/{epochs}", disable=rank != 0, leave=False)
        for batch in bar:
            batch = {k: v.to(device, non_blocking=True, memory_format=fmt if v.dim() == 5 else torch.preserve_format)
                     for k, v in batch.items()}
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                loss, parts = step(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            for key, value in parts.items():
                part_sums[key] = part_sums.get(key, 0.0) + value
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        record = {"stage": stage, "epoch": epoch, "train_loss": float(np.mean(losses)) if losses else None,
                  "lr": scheduler.get_last_lr()[0], "seconds": round(time.perf_counter() - start, 2),
                  "steps": len(losses), "ddp": backend,
                  **{f"train_{k}": v / max(len(losses), 1) for k, v in part_sums.items()}}
        if device.type == "cuda":  # peak so far in this process (scripts/gpu_check.py reports it)
            record["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        if rank == 0:
            if (epoch + 1) % val_every == 0 or epoch + 1 == epochs:
                record.update(validate_fn(epoch))
            log_jsonl(out_dir / "metrics.jsonl", record)
            atomic_torch_save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(), "epoch": epoch}, ckpt_path)
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}
            print(json.dumps(shown), file=sys.stderr)
        barrier(world)
    return unwrap(model)
