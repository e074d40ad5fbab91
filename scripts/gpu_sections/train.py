"""Section train: classifier steps channels-last vs default (``train_offline.step_bench``, bf16 autocast on CUDA);
phantoms generated and cached on every core; ``train_offline.train --config full`` for a few hundred steps, in one
process and under ``torchrun --nproc_per_node 1`` (NCCL; gloo with ``--cpu``): seconds per step, peak GPU memory,
loss."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .artefacts import CPU_MODEL, model_config
from .harness import Ctx, Section, attempt, child_env, median, row, run_cmd, table

TITLE = "Training: train_offline.train --config full, single process and torchrun (NCCL)"
PARTS = ("channels_last", "data", "single", "torchrun")
# Seconds per part: GPU (H200, 16 cores) and the CPU dry run; the section's own limit still ends it.
PART_LIMITS = {"gpu": {"channels_last": 40, "data": 70, "single": 120, "torchrun": 110},
               "cpu": {"channels_last": 60, "data": 120, "single": 150, "torchrun": 150}}
CPU_TRAIN = {**CPU_MODEL, "train": {"device": "cpu", "num_workers": 0, "threads": 1}}
# GPU: the full config as it is (bf16 autocast, 8 loader workers, 128^3 crops at 0.8 mm), validated once at the end.
# The fine stage needs DICOM boxes (--no-fine here; its GPU path is the same loop); pretraining gets 2 of the epochs.
GPU_TRAIN = {"locator": {"epochs": 8, "val_every": 8},
             "classifier": {"epochs": 22, "val_every": 22, "pretrain_epochs": 2}}
NO_NUMBERS = (None,) * 10  # the numeric cells of a training row that did not run


def overrides_to_set(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """Nested dict -> ``a.b=value`` strings for ``train_offline.train --set`` (values as JSON, which YAML reads)."""
    out = []
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += overrides_to_set(value, name + ".")
        else:
            out.append(f"{name}={json.dumps(value)}")
    return out


def _channels_last(ctx: Ctx, sec: Section) -> None:
    """Classifier steps in both layouts, alternating step by step in this process (bf16 autocast on CUDA)."""
    import torch

    from train_offline.step_bench import time_classifier_steps

    cfg = model_config(ctx)["classifier"]
    batch_size = int(cfg["batch_size"]) if ctx.gpu else 2
    steps, warmup = (12, 2) if ctx.gpu else (2, 2)
    result = time_classifier_steps(cfg, batch_size, steps, warmup, device=ctx.device(),
                                   autocast=torch.bfloat16 if ctx.gpu else None, stop=lambda: ctx.left() < 5)
    sec.data["channels_last"] = result.as_dict()
    ratio, peak = result.ratio(), result.peak_mb
    arithmetic = "bf16 autocast on CUDA" if ctx.gpu else "fp32 on the CPU (no CUDA autocast)"
    ctx.report.add(sec, f"**Classifier step, channels-last vs default layout** ({result.shape} crop, channels "
                        f"{cfg['channels']}, batch {batch_size}, {arithmetic}, random batches on the device, "
                        f"{len(result.default_s)} timed steps per layout after {warmup} warm-up, alternating step by "
                        f"step in one process; `train_offline.step_bench.time_classifier_steps`):")
    ctx.report.add(sec)
    sec.lines += table(["layout", "median ms per step", "ms per sample", "p10 ms", "p90 ms"])
    for name, seconds in result.layouts().items():
        ms = 1000 * np.asarray(seconds)
        ctx.report.add(sec, row(name, float(np.median(ms)), float(np.median(ms)) / batch_size,
                                float(np.percentile(ms, 10)), float(np.percentile(ms, 90))))
    ctx.report.add(sec)
    ctx.report.add(sec, f"channels-last / default, paired by step: median {np.median(ratio):.2f} (range "
                        f"{ratio.min():.2f}-{ratio.max():.2f})"
                        + (f"; peak GPU memory of both models together {peak:.0f} MB" if peak else ""))
    ctx.report.add(sec)


def _data(ctx: Ctx, sec: Section) -> tuple[Path, Path] | None:
    """Training phantoms generated and pre-cached on every core; None (reported) when either fails."""
    cores = os.cpu_count() or 2
    workers = cores if ctx.gpu else 2
    n = ctx.args.train_series or (96 if ctx.gpu else 10)
    data, cache = ctx.work / "train_data", ctx.work / "train_cache"
    size = "real" if ctx.gpu else "small"
    gen = run_cmd(ctx, "phantoms_train", [sys.executable, "-m", "train_offline.phantoms", "--out", str(data), "--n",
                                          str(n), "--seed", str(ctx.args.seed), "--split", "train", "--size", size,
                                          "--workers", str(workers), "--quiet"], PART_LIMITS[ctx.mode]["data"])
    sec.data["phantoms"] = {"n": n, "size": size, "workers": workers, "seconds": gen.seconds, "rc": gen.rc}
    if gen.rc != 0:
        late = ", timed out" if gen.timed_out else ""
        ctx.report.add(sec, f"phantom generation failed (rc {gen.rc}, {gen.seconds:.0f} s{late}):\n\n```\n"
                            f"{gen.tail[-1500:]}\n```")
        return None
    pre = run_cmd(ctx, "precache", [sys.executable, "-m", "train_offline.precache_all", "--config", "full", "--data",
                                    str(data), "--out", str(cache), "--workers", str(workers)],
                  PART_LIMITS[ctx.mode]["data"])
    cached = len(list(cache.glob("*.npy")))
    sec.data["precache"] = {"seconds": pre.seconds, "rc": pre.rc, "cached": cached}
    ctx.report.add(sec, f"**Data**: {n} `--size {size}` training phantoms generated with {workers} workers in "
                        f"{gen.seconds:.1f} s, then cached by `precache_all --config full` (1 mm) with {workers} "
                        f"workers in {pre.seconds:.1f} s ({cached} cached, rc {pre.rc}"
                        f"{', timed out' if pre.timed_out else ''}); {cores} cores, one tool after the other, each on "
                        f"every core.")
    ctx.report.add(sec)
    if pre.rc != 0 or cached < 4:
        ctx.report.add(sec, f"```\n{pre.tail[-1500:]}\n```")
        return None
    return data, cache


def stage_stats(records: list[dict[str, Any]], stage: str) -> dict[str, Any] | None:
    """Epochs, steps, seconds per step (median after the first epoch), losses and peak memory of one stage."""
    rows = [r for r in records if r.get("stage") == stage]
    if not rows:
        return None
    per_step = [r["seconds"] / r["steps"] for r in rows if r.get("steps")]
    steady = per_step[1:] if len(per_step) > 1 else per_step  # the first epoch holds cuDNN's algorithm search
    losses = [r["train_loss"] for r in rows if r.get("train_loss") is not None]
    peaks = [r["gpu_peak_mb"] for r in rows if r.get("gpu_peak_mb") is not None]
    return {"epochs": len(rows), "steps": int(sum(r.get("steps", 0) for r in rows)), "s_per_step": median(steady),
            "first_epoch_s_per_step": per_step[0] if per_step else None, "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None, "loss_min": min(losses) if losses else None,
            "loss_down": bool(len(losses) > 1 and losses[-1] < losses[0]), "gpu_peak_mb": max(peaks) if peaks else None,
            "ddp": rows[-1].get("ddp")}


def _train_command(ctx: Ctx, out: Path, data: Path, cache: Path, torchrun: bool) -> list[str]:
    paths = [f"data.root={data}", f"data.cache={cache}", f"data.index={ctx.work / 'train_index.csv'}",
             f"data.folds_csv={ctx.work / 'train_folds.csv'}"]
    args = ["-m", "train_offline.train", "--config", "full", "--fold", "0", "--out", str(out), "--no-fine", "--set",
            *paths, *overrides_to_set(GPU_TRAIN if ctx.gpu else CPU_TRAIN)]
    if torchrun:  # --standalone: the rendezvous takes a free port on localhost at run time (endpoint localhost:0)
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", *args]
    return [sys.executable, *args]


def _train_run(ctx: Ctx, sec: Section, name: str, data: Path, cache: Path, torchrun: bool) -> None:
    """One training run (a few epochs per stage) and a row per stage from its metrics.jsonl."""
    from kernel.jsonl import read_jsonl

    out = ctx.work / "runs" / name / "fold0"
    env = child_env(None if ctx.gpu else {"OMP_NUM_THREADS": "1"})
    res = run_cmd(ctx, f"train_{name}", _train_command(ctx, out, data, cache, torchrun), PART_LIMITS[ctx.mode][name],
                  env=env)
    records = read_jsonl(out / "metrics.jsonl", missing_ok=True)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else None
    stages = [s for s in ("locator", "pretrain", "classifier")
              if s != "pretrain" or any(r.get("stage") == "pretrain" for r in records)]
    stats = {stage: stage_stats(records, stage) for stage in stages}
    status = ("timed out: the epochs logged before the limit" if res.timed_out else
              "ok" if res.rc == 0 else f"failed (rc {res.rc})")
    launcher = (f"torchrun --nproc_per_node 1 ({'NCCL' if ctx.gpu else 'gloo'})" if torchrun else
                "python -m (one process)")
    sec.data[name] = {"launcher": launcher, "status": status, "wall_s": res.seconds, "rc": res.rc,
                      "stages": stats, "records": records,
                      "summary": {k: summary[k] for k in ("world_size", "n_train", "n_val", "seconds")} | {
                          "score": summary["validation"].get("score")} if summary else None}
    for stage, s in stats.items():
        if s is None:
            ctx.report.add(sec, row(launcher, status, res.seconds, stage, 0, 0, *NO_NUMBERS[:6]))
            continue
        loss = "-" if s["loss_first"] is None else f"{s['loss_first']:.4f} -> {s['loss_last']:.4f}"
        ctx.report.add(sec, row(launcher, status, res.seconds, stage, s["epochs"], s["steps"], s["s_per_step"],
                                s["first_epoch_s_per_step"], s["gpu_peak_mb"], loss, "yes" if s["loss_down"] else "no",
                                s["ddp"] or "none"))
    if res.timed_out:
        sec.data.setdefault("partial", []).append(f"{name} stopped at its time limit after {res.seconds:.0f} s")
    elif res.rc != 0:
        sec.data.setdefault("failed", []).append(name)
    if res.rc not in (0, None) or not records:
        sec.data[name]["tail"] = res.tail[-3000:]


def run(ctx: Ctx, sec: Section) -> None:
    """channels_last, then data, then the single-process and the torchrun training runs (each skippable)."""
    parts_done = []
    if not ctx.skipped("channels_last"):
        attempt(ctx, sec, "channels_last", lambda: _channels_last(ctx, sec))
        parts_done.append("channels_last")
    if ctx.skipped("data"):
        ctx.report.add(sec, "(data, single and torchrun skipped)")
        return
    made = _data(ctx, sec)
    if made is None:
        raise RuntimeError("no training data: see above")
    data, cache = made
    what = ("the full config's bf16 autocast (train.amp), 8 loader workers, preload none" if ctx.gpu else
            "--cpu: tiny models, fp32 on the CPU (train.amp autocasts on CUDA only)")
    ctx.report.add(sec, f"**`train_offline.train --config full`** (`--set` "
                        f"{' '.join(overrides_to_set(GPU_TRAIN if ctx.gpu else CPU_TRAIN))} and the data paths; "
                        f"{what}). s/step = epoch seconds / steps (data loading included), median over the epochs "
                        "after the first; peak GPU memory = `torch.cuda.max_memory_allocated` in the training process "
                        "(train_offline.loop writes it to metrics.jsonl).")
    ctx.report.add(sec)
    sec.lines += table(["launcher", "status", "wall s", "stage", "epochs", "steps", "s/step", "first epoch s/step",
                        "peak GPU MB", "loss first -> last epoch", "loss down", "DDP backend"])
    for name, torchrun in (("single", False), ("torchrun", True)):
        if ctx.skipped(name):
            ctx.report.add(sec, row(name, "skipped (--skip)", *NO_NUMBERS))
            continue
        if ctx.left() < 20:
            ctx.report.add(sec, row(name, "skipped: section time spent", *NO_NUMBERS))
            continue
        attempt(ctx, sec, name, lambda n=name, t=torchrun: _train_run(ctx, sec, n, data, cache, t))
        parts_done.append(name)
    for name in ("single", "torchrun"):
        if sec.data.get(name, {}).get("tail"):
            ctx.report.add(sec, f"\n{name} output (tail):\n\n```\n{sec.data[name]['tail'][-1500:]}\n```")
    sec.data["parts_done"] = parts_done
