"""Train folds: the Circle-of-Willis locator, then the region classifier on crops around its predictions, then (when
the config's ``fine.epochs`` > 0) the fine stage of ``train_offline.fine``. Several folds train their coarse models
one after the other, then their fine stages (``fine.train_fines``: one pass over the DICOM series cuts every fold's
native boxes).

    python -m train_offline.train --config demo --fold 0 [1 2 ...] [--resume] [--set classifier.epochs=2 ...]
    torchrun --nproc_per_node N -m train_offline.train --config full --fold 0     # DistributedDataParallel

With ``classifier.pretrain_epochs`` > 0 the classifier network is first trained on vessel segmentation alone (stage
"pretrain", on the segmented training series) and the classifier starts from those weights.
Writes ``<train.out_dir>/<name>/fold<K>/``: config.yaml (resolved), checkpoint_<stage>.pt (resume), locator.pt,
pretrain.pt (when pretraining) and classifier.pt (state dicts), metrics.jsonl, summary.json (validation metrics,
label priors, validation uids, the pretrain record), oof.csv (validation predictions), learning_curves.png and
roc_curves.png. Validation runs the torch models through ``kernel.recipe`` (``train_offline.evaluate``), the code
the kernel ships, scored with ``kernel.metric``. The index and folds CSVs are built on first use when missing. This
module is the orchestration and the CLI; the pieces live in ``losses``, ``loop``, ``evaluate``, ``data`` and
``models``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn

from kernel.jsonl import read_jsonl
from kernel.labels import ID_COL, LABEL_COLS, MODALITY_NAMES
from kernel.metric import evaluate_predictions
from train_offline.cache import check_cache_spacing
from train_offline.config import ConfigError, load_config, parse_overrides, run_fold_dirs, save_config
from train_offline.data import (
    ClassifierDataset,
    LocatorDataset,
    SeriesStore,
    label_priors,
    localizers_in_crop,
    records_from_index,
)
from train_offline.evaluate import plot_fold, predict_centres, predict_classifier
from train_offline.folds import ensure_index_and_folds
from train_offline.loop import atomic_torch_save, barrier, format_of, run_stage, setup_distributed, unwrap
from train_offline.losses import classifier_loss, locator_loss, pretrain_loss
from train_offline.models import build_classifier, build_locator, classifier_spec, locator_spec

__all__ = ["PRETRAIN_VAL_SERIES", "FoldSplit", "main", "pretrain_classifier", "train_classifier", "train_fold",
           "train_locator", "vessel_dice"]

PRETRAIN_VAL_SERIES = 40  # the pretrain stage validates on at most this many segmented validation series (cheap)


# --- vessel-segmentation pretraining -------------------------------------------------------------------------------


def vessel_dice(seg_logits: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Per-sample Dice of vessel (any of the 13 classes) against background, over the segmented cells (target >= 0).

    ``seg_logits`` [B, 14, ...], ``target`` [B, ...] with -1 where nothing is known. A sample whose truth and
    prediction hold no vessel at all has no Dice and is left out (so the list may be shorter than B).
    """
    predicted = seg_logits.argmax(dim=1) > 0
    known = target >= 0
    truth = target > 0
    out = []
    for p, t, k in zip(predicted, truth, known, strict=True):
        p, t = p & k, t & k
        size = int(p.sum()) + int(t.sum())
        if size:
            out.append(2.0 * int((p & t).sum()) / size)
    return out


@torch.no_grad()
def _mean_vessel_dice(model: nn.Module, dataset: ClassifierDataset, device: torch.device, amp: bool,
                      batch_size: int = 4) -> float | None:
    """Mean vessel Dice of ``model`` on the (unaugmented) crops of ``dataset``; None when no crop has any vessel."""
    model.eval()
    fmt = format_of(model)
    scores: list[float] = []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        crop = torch.stack([item["crop"] for item in items]).to(device, memory_format=fmt)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            seg = model(crop)["seg"]
        scores += vessel_dice(seg.float().cpu(), torch.stack([item["seg"] for item in items]))
    return float(np.mean(scores)) if scores else None


def _stage_log(out_dir: Path, stage: str) -> list[dict[str, Any]]:
    """The last metrics.jsonl record of every epoch of ``stage`` (a resumed run may have logged an epoch twice)."""
    by_epoch = {}
    for record in read_jsonl(out_dir / "metrics.jsonl", missing_ok=True):
        if record.get("stage") == stage:
            by_epoch[record["epoch"]] = record
    return [by_epoch[k] for k in sorted(by_epoch)]


def pretrain_classifier(classifier: nn.Module, store: SeriesStore, train_uids: Sequence[str],
                        val_uids: Sequence[str], centres: Mapping[str, np.ndarray], cfg: Mapping[str, Any],
                        out_dir: Path, ctx: Mapping[str, Any]) -> dict[str, Any]:
    """Stage "pretrain": train ``classifier`` on vessel segmentation only, then leave it holding those weights.

    Why: the classifier's encoder and light decoder + seg head are a vessel-segmentation network already; learning
    the vessels first, on the training series that have a segmentation, gives the classifier a start that knows
    where arteries run. Same crops (around the locator's centres) and augmentation as the classifier, loss
    ``pretrain_loss``, ``cfg["pretrain_epochs"]`` epochs at ``cfg["pretrain_lr"]``. Validated by the mean vessel Dice
    on at most ``PRETRAIN_VAL_SERIES`` segmented validation series. Writes ``pretrain.pt``; with ``ctx["resume"]``
    an existing ``pretrain.pt`` is loaded and the stage skipped. Returns the summary record (read from
    metrics.jsonl on rank 0, so a skipped stage reports what it logged; "seconds" sums the epochs' training time).
    """
    rank, world, device = ctx["rank"], ctx["world"], ctx["device"]
    seg_train = [u for u in train_uids if store.records[u].seg_file]
    seg_val = [u for u in val_uids if store.records[u].seg_file][:PRETRAIN_VAL_SERIES]
    epochs = int(cfg["pretrain_epochs"])
    path = out_dir / "pretrain.pt"
    val_set = ClassifierDataset(store, seg_val, centres, cfg, train=False)

    def step(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        return pretrain_loss(model(batch["crop"]), batch)

    def validate(_epoch: int) -> dict[str, Any]:
        return {"val_vessel_dice": _mean_vessel_dice(classifier, val_set, device, bool(ctx["amp"]))}

    if ctx["resume"] and path.is_file():
        if rank == 0:
            print("pretrain: pretrain.pt exists, stage skipped (--resume)", file=sys.stderr)
    else:
        if not seg_train:
            raise ValueError("classifier.pretrain_epochs > 0 but no training series has a segmentation")
        dataset = ClassifierDataset(store, seg_train, centres, cfg, train=True, seed=int(ctx["seed"]))
        stage_cfg = {**cfg, "epochs": epochs, "lr": float(cfg["pretrain_lr"])}
        run_stage("pretrain", classifier, dataset, stage_cfg, step, validate, out_dir, ctx)
        if rank == 0:
            atomic_torch_save(classifier.state_dict(), path)
        barrier(world)
    classifier.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    log = _stage_log(out_dir, "pretrain") if rank == 0 else []
    dice = [r["val_vessel_dice"] for r in log if "val_vessel_dice" in r]
    return {"epochs": epochs, "series": len(seg_train), "val_series": len(seg_val),
            "seconds": round(sum(float(r["seconds"]) for r in log), 1) if log else None,
            "val_vessel_dice": dice[-1] if dice else None}


# --- the fold -------------------------------------------------------------------------------------------------------


@dataclass
class FoldSplit:
    """One fold's series: the training and validation uids, their records and the store of their volumes."""

    train_uids: list[str]
    val_uids: list[str]
    by_uid: dict[str, Any]  # uid -> data.SeriesRecord
    store: SeriesStore


def _split(config: Mapping[str, Any], fold: int, rank: int, world: int) -> FoldSplit:
    """The index and folds (built on first use) and this fold's split of them."""
    index, folds = ensure_index_and_folds(config, rank, world)
    index = index.merge(folds, on=ID_COL, how="inner")
    records = records_from_index(index)
    store = SeriesStore(Path(config["data"]["cache"]), Path(config["data"]["root"]), records,
                        config["normalisation"], preload=config["data"]["preload"])
    in_fold = index["fold"] == fold
    return FoldSplit(index.loc[~in_fold, ID_COL].tolist(), index.loc[in_fold, ID_COL].tolist(),
                     {r.uid: r for r in records}, store)


def train_locator(config: Mapping[str, Any], fold: int, split: FoldSplit, out_dir: Path,
                  ctx: Mapping[str, Any]) -> tuple[nn.Module, Any, np.ndarray]:
    """Stage "locator" (or ``locator.pt`` loaded with ``--resume``): (model, spec, validation centre errors in mm,
    computed on rank 0)."""
    rank, world, device = ctx["rank"], ctx["world"], ctx["device"]
    loc_cfg = config["locator"]
    locator, loc_spec = build_locator(loc_cfg), locator_spec(loc_cfg, fold)
    val_with_centre = [u for u in split.val_uids if split.by_uid[u].centre_lps is not None]

    def centre_errors(model: nn.Module) -> np.ndarray:
        centres = predict_centres(unwrap(model), loc_spec, split.store.volume, val_with_centre, device)
        return np.array([np.linalg.norm(centres[u] - split.by_uid[u].centre_lps) for u in val_with_centre])

    def locator_step(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        return locator_loss(model(batch["volume"]), batch["target"]), {}

    def locator_validate(_epoch: int) -> dict[str, Any]:
        errors = centre_errors(locator)
        return {"centre_error_mm_median": float(np.median(errors)) if len(errors) else None,
                "centre_error_mm_p90": float(np.percentile(errors, 90)) if len(errors) else None}

    if ctx["resume"] and (out_dir / "locator.pt").is_file():
        locator.load_state_dict(torch.load(out_dir / "locator.pt", map_location="cpu", weights_only=True))
        locator.to(device)
    else:
        dataset = LocatorDataset(split.store, split.train_uids, loc_cfg, train=True, seed=int(ctx["seed"]))
        if len(dataset) == 0:
            raise ValueError("no training series has a Circle-of-Willis centre (segmentations): cannot train a locator")
        locator = run_stage("locator", locator, dataset, loc_cfg, locator_step, locator_validate, out_dir, ctx)
        if rank == 0:
            atomic_torch_save(locator.state_dict(), out_dir / "locator.pt")
        barrier(world)
        locator.load_state_dict(torch.load(out_dir / "locator.pt", map_location="cpu", weights_only=True))
    return locator, loc_spec, centre_errors(locator) if rank == 0 else np.array([])


def train_fold(config: Mapping[str, Any], fold: int, out_dir: Path, resume: bool = False) -> dict[str, Any] | None:
    """Train the locator and the classifier of one fold; returns the summary on rank 0 (None elsewhere)."""
    n_folds = int(config["data"]["n_folds"])
    if not 0 <= fold < n_folds:
        raise ConfigError(f"--fold must be in 0..{n_folds - 1}, got {fold}")
    check_cache_spacing(Path(config["data"]["cache"]), config["volume_spacing_mm"])
    rank, world, device = setup_distributed(config["train"]["device"])
    torch.set_num_threads(int(config["train"]["threads"]))
    seed = int(config["seed"]) + 1000 * fold
    torch.manual_seed(seed)
    np.random.seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        save_config(out_dir / "config.yaml", config)
        if not resume:
            (out_dir / "metrics.jsonl").unlink(missing_ok=True)
    split = _split(config, fold, rank, world)
    ctx = {"rank": rank, "world": world, "device": device, "seed": seed, "resume": resume,
           "amp": config["train"]["amp"], "num_workers": config["train"]["num_workers"],
           "channels_last": config["train"]["channels_last"]}
    started = time.perf_counter()
    locator, loc_spec, errors = train_locator(config, fold, split, out_dir, ctx)
    classified = train_classifier(config, fold, split, locator, loc_spec, out_dir, ctx)
    if classified is None:  # not rank 0
        return None
    summary = _write_fold(config, fold, split, classified, errors, out_dir, world)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    plot_fold(out_dir, classified["labels"], classified["probs"])
    barrier(world)
    return summary


def train_classifier(config: Mapping[str, Any], fold: int, split: FoldSplit, locator: nn.Module, loc_spec: Any,
                     out_dir: Path, ctx: Mapping[str, Any]) -> dict[str, Any] | None:
    """Stage "classifier" (after the optional "pretrain") on crops around the locator's centres; on rank 0 its last
    validation (probabilities, modality probabilities, metrics), the centres and crop coverage (None elsewhere)."""
    rank, world, device = ctx["rank"], ctx["world"], ctx["device"]
    train_uids, val_uids, by_uid, store = split.train_uids, split.val_uids, split.by_uid, split.store
    cls_cfg = config["classifier"]
    centres = predict_centres(locator, loc_spec, store.volume, train_uids + val_uids, device,
                              each=lambda uid, array, affine, centre: store.keep_region(uid, array, affine, centre,
                                                                                        cls_cfg))
    coverage = localizers_in_crop([by_uid[u] for u in val_uids], centres, cls_cfg)
    if rank == 0:
        print(f"localizers inside the validation crops: {coverage['all']:.1%}", flush=True)
    classifier, cls_spec = build_classifier(cls_cfg), classifier_spec(cls_cfg, fold)
    val_labels = np.stack([by_uid[u].labels for u in val_uids])
    val_modalities = [MODALITY_NAMES[by_uid[u].modality] for u in val_uids]
    best: dict[str, Any] = {}

    def classifier_step(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        return classifier_loss(model(batch["crop"]), batch, cls_cfg)

    def classifier_validate(_epoch: int) -> dict[str, Any]:
        probs, modality = predict_classifier(classifier, cls_spec, store.region, val_uids, centres, device)
        metrics = evaluate_predictions(val_labels, probs, val_modalities)
        best.update(probs=probs, modality=modality, metrics=metrics)
        mod_acc = float(np.mean(np.argmax(modality, 1) == [by_uid[u].modality for u in val_uids]))
        return {"val_score": metrics["score"], "val_auc_present": metrics["auc_present"], "modality_acc": mod_acc}

    # Optional stage before it: the same network on vessel segmentation (classifier.pretrain_epochs, 0 = off).
    pretrain = None
    if int(cls_cfg["pretrain_epochs"]) > 0:
        pretrain = pretrain_classifier(classifier, store, train_uids, val_uids, centres, cls_cfg, out_dir, ctx)
    dataset = ClassifierDataset(store, train_uids, centres, cls_cfg, train=True, seed=int(ctx["seed"]))
    classifier = run_stage("classifier", classifier, dataset, cls_cfg, classifier_step, classifier_validate, out_dir,
                           ctx)
    if rank != 0:
        barrier(world)
        return None
    atomic_torch_save(classifier.state_dict(), out_dir / "classifier.pt")
    if "metrics" not in best:  # resumed after the last epoch: validate once
        classifier_validate(int(cls_cfg["epochs"]) - 1)
    return {**best, "labels": val_labels, "modalities": val_modalities, "centres": centres, "coverage": coverage,
            "pretrain": pretrain}


def _write_fold(config: Mapping[str, Any], fold: int, split: FoldSplit, classified: Mapping[str, Any],
                errors: np.ndarray, out_dir: Path, world: int) -> dict[str, Any]:
    """``oof.csv`` (the validation fold's rows, protocols, predicted modality, centres) and the summary record."""
    val_uids, centres = split.val_uids, classified["centres"]
    oof = pd.DataFrame(classified["probs"], columns=LABEL_COLS)
    oof.insert(0, ID_COL, val_uids)
    oof["Modality"] = classified["modalities"]
    oof["predicted_modality"] = [MODALITY_NAMES[i] for i in np.argmax(classified["modality"], 1)]
    oof["centre_lps"] = [json.dumps(np.round(centres[u], 2).tolist()) for u in val_uids]
    oof.to_csv(out_dir / "oof.csv", index=False)
    return {
        "fold": fold, "config_name": config["name"], "world_size": world,
        "n_train": len(split.train_uids), "n_val": len(val_uids),
        "validation": {**classified["metrics"],
                       "centre_error_mm_median": float(np.median(errors)) if len(errors) else None,
                       "modality_accuracy": float(np.mean(oof["predicted_modality"] == oof["Modality"])),
                       "localizers_in_crop": classified["coverage"]},
        "pretrain": classified["pretrain"],
        "label_priors": label_priors([split.by_uid[u] for u in split.train_uids]),
        "val_uids": val_uids,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train_offline.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="demo", help="config name in train_offline/configs or a YAML path")
    parser.add_argument("--fold", type=int, nargs="+", default=[0],
                        help="validation fold(s), trained one after the other (default 0), e.g. --fold 0 1 2")
    parser.add_argument("--out", type=Path, help="fold output dir (default <train.out_dir>/<name>/fold<K>; one fold)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in the output dir")
    parser.add_argument("--no-fine", action="store_true",
                        help="skip the fine stage (train_offline.fine) even when the config's fine.epochs > 0")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. classifier.epochs=2")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, parse_overrides(args.set))
        outs = run_fold_dirs(config, args.fold, args.out)
        for fold, out in zip(args.fold, outs, strict=True):
            summary = train_fold(config, fold, out, resume=args.resume)
            if summary is not None:
                v = summary["validation"]
                print(f"fold {fold}: val score {v['score']}, AUC present {v['auc_present']}, "
                      f"centre error median {v['centre_error_mm_median']} mm -> {out}", flush=True)
        if int(config["fine"]["epochs"]) > 0 and not args.no_fine:
            if dist.is_initialized():  # the fine stage is one process: run it after torchrun
                if dist.get_rank() == 0:
                    print(f"fine stage: run python -m train_offline.fine --config {args.config} --fold "
                          f"{' '.join(map(str, args.fold))}", file=sys.stderr)
                return 0
            import gc

            from train_offline.fine.train import train_fines

            gc.collect()  # the folds' preloaded volumes (held in closures' reference cycles) before the boxes
            # every fold's coarse models first, then one box pass for all the folds' sites (each series read once)
            for fold, fine in zip(args.fold, train_fines(config, args.fold, outs, resume=args.resume), strict=True):
                f = fine["validation"]
                print(f"fold {fold} fine: val score {f['score']:.4f}, AUC present {f['auc_present']:.4f} at fusion "
                      f"weight {fine['fusion_weight']}", flush=True)
    except (ConfigError, FileNotFoundError, ValueError) as exc:  # CacheSpacingError is a ValueError
        print(f"train failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
