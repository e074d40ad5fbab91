"""Train one fold: the Circle-of-Willis locator, then the region classifier on crops around its predictions.

    python -m train_offline.train --config demo --fold 0 [--resume] [--set classifier.epochs=2 ...]
    torchrun --nproc_per_node N -m train_offline.train --config full --fold 0     # DistributedDataParallel

Writes ``<train.out_dir>/<name>/fold<K>/``: config.yaml (resolved), checkpoint_<stage>.pt (resume), locator.pt and
classifier.pt (state dicts), metrics.jsonl, summary.json (validation metrics, label priors, validation uids),
oof.csv (validation predictions), learning_curves.png and roc_curves.png. Validation mirrors the kernel: locator on
``locator_input``, ``heatmap_peak_lps``, classifier on ``crop_around`` with flip TTA, scored with the competition
metric. The index and folds CSVs are built on first use when missing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from kernel.labels import ID_COL, LABEL_COLS, MODALITY_NAMES, PRESENT_COL
from kernel.metric import column_aucs, score_arrays
from kernel.preprocess import classifier_centre, crop_around, heatmap_peak_lps, locator_input
from train_offline.config import ConfigError, drop_retired, load_config, validate
from train_offline.data import (
    LABEL_FLIP,
    ClassifierDataset,
    LocatorDataset,
    SeriesStore,
    label_priors,
    localizers_in_crop,
    records_from_index,
)
from train_offline.models import build_classifier, build_locator

__all__ = ["evaluate_predictions", "load_fold_config", "main", "predict_centres", "predict_classifier", "train_fold"]


# --- distributed ------------------------------------------------------------------------------------------------


def setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group under torchrun (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world, device


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


# --- losses -----------------------------------------------------------------------------------------------------


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


def classifier_loss(out: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
                    cfg: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """Label BCE + heatmap focal loss + vessel CE (where segmented) + modality CE."""
    pos_weight = torch.ones(len(LABEL_COLS), device=out["logits"].device)
    pos_weight[-1] = float(cfg["pos_weight_present"])
    labels = F.binary_cross_entropy_with_logits(out["logits"].float(), batch["labels"], pos_weight=pos_weight)
    heat = heatmap_focal_loss(out["heatmap"].float(), batch["heatmap"])
    seg_target = batch["seg"]
    if bool((seg_target >= 0).any()):
        seg = F.cross_entropy(out["seg"].float(), seg_target, ignore_index=-1)
    else:
        seg = out["seg"].float().sum() * 0.0  # keeps every parameter in the graph (DDP needs that)
    modality = F.cross_entropy(out["modality_logits"].float(), batch["modality"])
    total = (labels + float(cfg["heatmap_weight"]) * heat + float(cfg["seg_weight"]) * seg
             + float(cfg["modality_weight"]) * modality)
    return total, {"labels": labels.item(), "heatmap": heat.item(), "seg": seg.item(), "modality": modality.item()}


# --- inference the kernel's way -----------------------------------------------------------------------------------


@torch.no_grad()
def predict_centres(locator: nn.Module, store: SeriesStore, uids: Sequence[str], cfg: Mapping[str, Any],
                    device: torch.device, batch_size: int = 8, region_cfg: Mapping[str, Any] | None = None
                    ) -> dict[str, np.ndarray]:
    """LPS Circle-of-Willis centre per series: ``locator_input`` -> locator -> ``heatmap_peak_lps`` (as the kernel).

    With ``region_cfg`` (the classifier section) each volume read here also goes to ``store.keep_region``.
    """
    locator.eval()
    fmt = _format_of(locator)
    centres = {}
    for start in range(0, len(uids), batch_size):
        chunk = uids[start : start + batch_size]
        inputs, affines, volumes = [], [], []
        for uid in chunk:
            array, affine = store.volume(uid)
            inp, inp_affine = locator_input(array, affine, cfg["input_shape"], cfg["spacing_mm"])
            inputs.append(inp[None])
            affines.append(inp_affine)
            volumes.append((array, affine))
        heatmaps = locator(torch.from_numpy(np.stack(inputs)).to(device, memory_format=fmt)).float().cpu().numpy()
        for uid, heatmap, inp_affine, (array, affine) in zip(chunk, heatmaps, affines, volumes, strict=True):
            centres[uid] = heatmap_peak_lps(heatmap[0], inp_affine, int(cfg["output_stride"]))
            if region_cfg is not None:
                store.keep_region(uid, array, affine, centres[uid], region_cfg)
    return centres


@torch.no_grad()
def predict_classifier(classifier: nn.Module, store: SeriesStore, uids: Sequence[str],
                       centres: Mapping[str, np.ndarray], cfg: Mapping[str, Any], device: torch.device,
                       flip_tta: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(N, 14) label and (N, 4) modality probabilities: ``crop_around`` + flip TTA mapped back, as the kernel."""
    classifier.eval()
    fmt = _format_of(classifier)
    probs, modality = [], []
    for uid in uids:
        array, affine = store.region(uid)
        crop, _ = crop_around(array, affine, classifier_centre(centres[uid], cfg), cfg["input_shape"],
                              cfg["spacing_mm"])
        batch = crop[None, None]
        if flip_tta:
            batch = np.concatenate([batch, batch[..., ::-1]], axis=0)
        out = classifier(torch.from_numpy(np.ascontiguousarray(batch)).to(device, memory_format=fmt))
        p = torch.sigmoid(out["logits"].float()).cpu().numpy()
        if flip_tta:
            p[1] = p[1][LABEL_FLIP]
        probs.append(p.mean(axis=0))
        modality.append(torch.softmax(out["modality_logits"].float(), dim=1).cpu().numpy().mean(axis=0))
    return np.asarray(probs), np.asarray(modality)


def evaluate_predictions(labels: np.ndarray, probs: np.ndarray, modalities: Sequence[str]) -> dict[str, Any]:
    """Competition score, AUC(present), per-column AUCs and per-protocol numbers; undefined columns are reported."""
    result: dict[str, Any] = {"n_series": int(len(labels))}
    defined = [j for j in range(len(LABEL_COLS)) if len(np.unique(labels[:, j])) == 2]
    cols = [LABEL_COLS[j] for j in defined]
    result["column_aucs"] = column_aucs(labels[:, defined], probs[:, defined], cols) if defined else {}
    result["undefined_columns"] = [c for c in LABEL_COLS if c not in cols]
    result["score"] = score_arrays(labels[:, defined], probs[:, defined], cols) if defined else None
    result["auc_present"] = result["column_aucs"].get(PRESENT_COL)
    per = {}
    modalities = np.asarray(modalities)
    for name in MODALITY_NAMES:
        m = modalities == name
        if m.sum() and len(np.unique(labels[m, -1])) == 2:
            per[name] = {"n": int(m.sum()), "auc_present": column_aucs(labels[m][:, -1:], probs[m][:, -1:],
                                                                       [PRESENT_COL])[PRESENT_COL]}
        elif m.sum():
            per[name] = {"n": int(m.sum()), "auc_present": None}
    result["per_modality"] = per
    return result


# --- checkpoints and logs -----------------------------------------------------------------------------------------


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _log(path: Path, record: Mapping[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def load_fold_config(fold_dir: Path) -> dict[str, Any]:
    """The resolved config saved beside a fold's weights (validated again)."""
    config = drop_retired(yaml.safe_load((Path(fold_dir) / "config.yaml").read_text()))
    validate(config, absolute_ok=True)
    return config


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def memory_format(channels_last: bool) -> torch.memory_format:
    """Channels-last 3D layout for convolutions (config ``train.channels_last``), else the default layout.

    oneDNN's CPU convolutions then skip their layout copies: the demo classifier's step takes 0.71x the time on 2
    cores (benchmarks/bench_train_step.py); the arithmetic is the same.
    """
    return torch.channels_last_3d if channels_last else torch.contiguous_format


def _format_of(model: nn.Module) -> torch.memory_format:
    """The layout a model's 5-D weights are in, so inputs can match it."""
    return memory_format(any(p.dim() == 5 and not p.is_contiguous() and p.is_contiguous(
        memory_format=torch.channels_last_3d) for p in model.parameters()))


def run_stage(stage: str, model: nn.Module, dataset: Any, cfg: Mapping[str, Any], step: Callable[[dict], tuple],
              validate_fn: Callable[[int], dict[str, Any]], out_dir: Path, ctx: Mapping[str, Any]) -> nn.Module:
    """Epoch loop with AdamW + cosine schedule, DDP sharding, per-epoch checkpoint and resume, metrics log."""
    rank, world, device, seed = ctx["rank"], ctx["world"], ctx["device"], ctx["seed"]
    fmt = memory_format(bool(ctx["channels_last"]))
    model.to(device, memory_format=fmt)
    if world > 1:
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
        _unwrap(model).load_state_dict(state["model"])
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
                  **{f"train_{k}": v / max(len(losses), 1) for k, v in part_sums.items()}}
        if rank == 0:
            if (epoch + 1) % val_every == 0 or epoch + 1 == epochs:
                record.update(validate_fn(epoch))
            _log(out_dir / "metrics.jsonl", record)
            _atomic_torch_save({"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(), "epoch": epoch}, ckpt_path)
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}
            print(json.dumps(shown), file=sys.stderr)
        _barrier(world)
    return _unwrap(model)


# --- the fold -------------------------------------------------------------------------------------------------------


def _ensure_index_and_folds(config: Mapping[str, Any], rank: int, world: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    from train_offline.folds import fold_report, make_folds
    from train_offline.index import build_index, load_index

    data = config["data"]
    index_path, folds_path = Path(data["index"]), Path(data["folds_csv"])
    if rank == 0 and not index_path.is_file():
        index = build_index(Path(data["root"]), Path(data["cache"]))
        index_path.parent.mkdir(parents=True, exist_ok=True)
        index.to_csv(index_path, index=False)
    _barrier(world)
    index = load_index(index_path)
    if rank == 0 and not folds_path.is_file():
        folds = make_folds(index, int(data["n_folds"]), int(config["seed"]))
        _, gaps = fold_report(index, folds)
        for gap in gaps:
            print(f"warning: {gap}", file=sys.stderr)
        folds.to_csv(folds_path, index=False)
    _barrier(world)
    folds = pd.read_csv(folds_path, dtype={ID_COL: str})
    if int(data["limit"]) > 0:
        index = index.iloc[: int(data["limit"])]
    return index, folds


def train_fold(config: Mapping[str, Any], fold: int, out_dir: Path, resume: bool = False) -> dict[str, Any] | None:
    """Train the locator and the classifier of one fold; returns the summary on rank 0 (None elsewhere)."""
    n_folds = int(config["data"]["n_folds"])
    if not 0 <= fold < n_folds:
        raise ConfigError(f"--fold must be in 0..{n_folds - 1}, got {fold}")
    rank, world, device = setup_distributed(config["train"]["device"])
    torch.set_num_threads(int(config["train"]["threads"]))
    seed = int(config["seed"]) + 1000 * fold
    torch.manual_seed(seed)
    np.random.seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (out_dir / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False))
        if not resume:
            (out_dir / "metrics.jsonl").unlink(missing_ok=True)
    index, folds = _ensure_index_and_folds(config, rank, world)
    index = index.merge(folds, on=ID_COL, how="inner")
    train_uids = index.loc[index["fold"] != fold, ID_COL].tolist()
    val_uids = index.loc[index["fold"] == fold, ID_COL].tolist()
    records = records_from_index(index)
    store = SeriesStore(Path(config["data"]["cache"]), Path(config["data"]["root"]), records,
                        config["normalisation"], preload=config["data"]["preload"])
    by_uid = {r.uid: r for r in records}
    ctx = {"rank": rank, "world": world, "device": device, "seed": seed, "resume": resume,
           "amp": config["train"]["amp"], "num_workers": config["train"]["num_workers"],
           "channels_last": config["train"]["channels_last"]}
    started = time.perf_counter()

    # Stage 1: locator.
    loc_cfg = config["locator"]
    locator = build_locator(loc_cfg)
    val_with_centre = [u for u in val_uids if by_uid[u].centre_lps is not None]

    def centre_errors(model: nn.Module) -> np.ndarray:
        centres = predict_centres(_unwrap(model), store, val_with_centre, loc_cfg, device)
        return np.array([np.linalg.norm(centres[u] - by_uid[u].centre_lps) for u in val_with_centre])

    def locator_step(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        return locator_loss(model(batch["volume"]), batch["target"]), {}

    def locator_validate(_epoch: int) -> dict[str, Any]:
        errors = centre_errors(locator)
        return {"centre_error_mm_median": float(np.median(errors)) if len(errors) else None,
                "centre_error_mm_p90": float(np.percentile(errors, 90)) if len(errors) else None}

    if resume and (out_dir / "locator.pt").is_file():
        locator.load_state_dict(torch.load(out_dir / "locator.pt", map_location="cpu", weights_only=True))
        locator.to(device)
    else:
        dataset = LocatorDataset(store, train_uids, loc_cfg, train=True, seed=seed)
        if len(dataset) == 0:
            raise ValueError("no training series has a Circle-of-Willis centre (segmentations): cannot train a locator")
        locator = run_stage("locator", locator, dataset, loc_cfg, locator_step, locator_validate, out_dir, ctx)
        if rank == 0:
            _atomic_torch_save(locator.state_dict(), out_dir / "locator.pt")
        _barrier(world)
        locator.load_state_dict(torch.load(out_dir / "locator.pt", map_location="cpu", weights_only=True))
    errors = centre_errors(locator) if rank == 0 else np.array([])

    # Stage 2: classifier on crops around the locator's predictions.
    cls_cfg = config["classifier"]
    centres = predict_centres(locator, store, train_uids + val_uids, loc_cfg, device, region_cfg=cls_cfg)
    coverage = localizers_in_crop([by_uid[u] for u in val_uids], centres, cls_cfg)
    if rank == 0:
        print(f"localizers inside the validation crops: {coverage['all']:.1%}", flush=True)
    classifier = build_classifier(cls_cfg)
    val_labels = np.stack([by_uid[u].labels for u in val_uids])
    val_modalities = [MODALITY_NAMES[by_uid[u].modality] for u in val_uids]
    best: dict[str, Any] = {}

    def classifier_step(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        return classifier_loss(model(batch["crop"]), batch, cls_cfg)

    def classifier_validate(_epoch: int) -> dict[str, Any]:
        probs, modality = predict_classifier(classifier, store, val_uids, centres, cls_cfg, device)
        metrics = evaluate_predictions(val_labels, probs, val_modalities)
        best.update(probs=probs, modality=modality, metrics=metrics)
        mod_acc = float(np.mean(np.argmax(modality, 1) == [by_uid[u].modality for u in val_uids]))
        return {"val_score": metrics["score"], "val_auc_present": metrics["auc_present"], "modality_acc": mod_acc}

    dataset = ClassifierDataset(store, train_uids, centres, cls_cfg, train=True, seed=seed)
    classifier = run_stage("classifier", classifier, dataset, cls_cfg, classifier_step, classifier_validate, out_dir,
                           ctx)
    if rank != 0:
        _barrier(world)
        return None
    _atomic_torch_save(classifier.state_dict(), out_dir / "classifier.pt")
    if "metrics" not in best:  # resumed after the last epoch: validate once
        classifier_validate(int(cls_cfg["epochs"]) - 1)
    metrics = best["metrics"]
    oof = pd.DataFrame(best["probs"], columns=LABEL_COLS)
    oof.insert(0, ID_COL, val_uids)
    oof["Modality"] = val_modalities
    oof["predicted_modality"] = [MODALITY_NAMES[i] for i in np.argmax(best["modality"], 1)]
    oof["centre_lps"] = [json.dumps(np.round(centres[u], 2).tolist()) for u in val_uids]
    oof.to_csv(out_dir / "oof.csv", index=False)
    summary = {
        "fold": fold, "config_name": config["name"], "world_size": world,
        "n_train": len(train_uids), "n_val": len(val_uids),
        "validation": {**metrics, "centre_error_mm_median": float(np.median(errors)) if len(errors) else None,
                       "modality_accuracy": float(np.mean(oof["predicted_modality"] == oof["Modality"])),
                       "localizers_in_crop": coverage},
        "label_priors": label_priors([by_uid[u] for u in train_uids]),
        "val_uids": val_uids, "seconds": round(time.perf_counter() - started, 1),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    _plot_fold(out_dir, val_labels, best["probs"])
    _barrier(world)
    return summary


def _plot_fold(out_dir: Path, labels: np.ndarray, probs: np.ndarray) -> None:
    """learning_curves.png (loss, validation score, centre error) and roc_curves.png (one panel per label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
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


def _parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``a.b=value`` pairs (YAML values) -> nested dict."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set takes key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train_offline.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="demo", help="config name in train_offline/configs or a YAML path")
    parser.add_argument("--fold", type=int, default=0, help="validation fold (default 0)")
    parser.add_argument("--out", type=Path, help="fold output dir (default <train.out_dir>/<name>/fold<K>)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in the output dir")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. classifier.epochs=2")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, _parse_overrides(args.set))
        out = args.out or Path(config["train"]["out_dir"]) / config["name"] / f"fold{args.fold}"
        summary = train_fold(config, args.fold, out, resume=args.resume)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"train failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if summary is not None:
        v = summary["validation"]
        print(f"fold {args.fold}: val score {v['score']}, AUC present {v['auc_present']}, "
              f"centre error median {v['centre_error_mm_median']} mm -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
