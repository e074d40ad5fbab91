"""Steps 3-4 of the fine stage for a fold: train the patch model, validate it out of fold, choose the fusion, and
write ``fine.pt``, ``fine_summary.json`` and ``fine_oof.csv``.

The validation fold goes through ``kernel.recipe`` as the kernel runs it (``report.validation_site_probs``), and the
(fusion weight, site heatmap weight) pair with the best out-of-fold score (``train_offline.fusion.choose_fusion``)
is the one export writes into the manifest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from kernel.labels import ID_COL, LABEL_COLS, MODALITY_NAMES
from kernel.manifest import ModelSpec
from kernel.metric import roc_auc
from train_offline.config import ConfigError
from train_offline.domes import candidate_recall, load_domes
from train_offline.fine.boxes import BoxStore, build_boxes
from train_offline.fine.dataset import FineDataset, fine_loss
from train_offline.fine.plan import PREPARE_FILE, FoldPlan, plan_box_jobs, plan_fold, prepare_plans
from train_offline.fine.report import (
    auc_by_band,
    auc_by_candidate,
    near_localizer,
    patch_tables,
    shift_percentiles,
    validation_site_probs,
)
from train_offline.fusion import FusionChoice, SeriesSites, choose_fusion
from train_offline.loop import atomic_torch_save, run_stage, setup_distributed
from train_offline.models import build_fine, fine_spec

__all__ = ["Validation", "check_settings", "train_fine", "train_fines", "validate_fold"]


def train_fines(config: Mapping[str, Any], folds: Sequence[int], fold_dirs: Sequence[Path], resume: bool = False,
                workers: int = 2, coarse: Path | None = None) -> list[dict[str, Any]]:
    """The fine stage of several folds: ``prepare_folds`` (one box pass for all), then ``train_fine`` fold by fold."""
    plans: Sequence[FoldPlan | None] = (prepare_plans(config, folds, fold_dirs, workers, coarse)[1] if len(folds) > 1
                                        else [None] * len(folds))
    return [train_fine(config, fold, fold_dir, resume=resume, workers=workers, coarse=coarse, plan=plan)
            for fold, fold_dir, plan in zip(folds, fold_dirs, plans, strict=True)]


def check_settings(cfg: Mapping[str, Any], fold_dir: Path, rescore: bool) -> None:
    """Refuse settings that cannot train or would validate on what the kernel never sees."""
    if rescore and not (fold_dir / "fine.pt").is_file():
        raise FileNotFoundError(f"--rescore: {fold_dir / 'fine.pt'} is missing: train the fine stage first")
    if int(cfg["epochs"]) < 1:
        raise ConfigError("fine.epochs is 0: set fine.epochs (e.g. --set fine.epochs=12) to train a fine stage")
    reach = float(cfg.get("recentre_max_mm", 0.0)) + max((int(n) - 1) / 2.0 * float(d)
                                                         for n, d in zip(cfg["input_shape"], cfg["spacing_mm"],
                                                                         strict=True))
    if reach > float(cfg["box_mm"]) / 2.0:
        raise ConfigError(f"fine.box_mm {cfg['box_mm']} is too small: a patch moved fine.recentre_max_mm "
                          f"{cfg.get('recentre_max_mm', 0.0)} reaches {reach:.1f} mm from its site (box_mm >= "
                          f"{2 * reach:.1f}); validation would score it on zeros where the kernel sees the scan")


@dataclass
class Validation:
    """The validation fold scored once: each series' site probabilities and scored points, the fusion choice, and the
    patch-level AUC (every validation candidate as scored, positive within ``positive_radius_mm`` of a localizer)."""

    site_probs: dict[str, np.ndarray]
    scored: dict[str, np.ndarray]
    choice: FusionChoice
    patch_auc: float | None

    def coarse_probs(self, uids: Sequence[str], sites: Mapping[str, Mapping[str, Any]]) -> np.ndarray | None:
        """The classifiers' rows (what fusion weight 0 gives) when the grid holds 0, else None."""
        if (0.0, self.choice.site_heatmap_weight) not in self.choice.table:
            return None
        return np.stack([np.asarray(sites[u]["probs"], dtype=np.float64) for u in uids])

    def log_record(self) -> dict[str, Any]:
        """The metrics line of this validation in ``metrics.jsonl``."""
        c = self.choice
        coarse = c.table.get((0.0, c.site_heatmap_weight))
        return {"val_patch_auc": self.patch_auc, "val_fusion_weight": c.fusion_weight,
                "val_site_heatmap_weight": c.site_heatmap_weight, "val_score": c.metrics["score"],
                "val_auc_present": c.metrics["auc_present"], "val_score_coarse": coarse["score"] if coarse else None}


def _series_sites(sites: Mapping[str, Mapping[str, Any]], site_probs: Mapping[str, np.ndarray],
                  uids: Sequence[str]) -> list[SeriesSites]:
    return [SeriesSites.of(sites[u]["probs"], sites[u]["channels"], site_probs[u]) for u in uids]


def validate_fold(model: nn.Module, spec: ModelSpec, plan: FoldPlan, boxes: BoxStore, cfg: Mapping[str, Any],
                  device: torch.device) -> Validation:
    """Score the validation fold through the recipe and choose the fusion pair on it."""
    val_uids, records, sites = plan.val_uids, plan.records, plan.sites
    site_probs, scored = validation_site_probs(model, spec, sites, boxes, records, val_uids, device)
    labels = np.stack([records[u].labels for u in val_uids])
    modalities = [MODALITY_NAMES[records[u].modality] for u in val_uids]
    choice = choose_fusion(_series_sites(sites, site_probs, val_uids), labels, modalities,
                           [float(w) for w in cfg["fusion_grid"]],
                           [float(h) for h in cfg.get("site_heatmap_grid", [0.0])])
    y = np.concatenate([near_localizer(scored[u], [q for _, q in records[u].points], float(cfg["positive_radius_mm"]))
                        for u in val_uids])
    p = np.concatenate([np.asarray(site_probs[u], dtype=np.float64) for u in val_uids])
    patch_auc = float(roc_auc(y.astype(int), p)) if 0 < y.sum() < len(y) else None
    return Validation(site_probs, scored, choice, patch_auc)


def _train_or_load(model: nn.Module, dataset: FineDataset, cfg: Mapping[str, Any], fold_dir: Path,
                   ctx: dict[str, Any], validate: Any, load: bool) -> nn.Module:
    """The trained patch model: ``fine.pt`` loaded (resume / rescore) or trained now and saved."""
    if load and (fold_dir / "fine.pt").is_file():
        model.load_state_dict(torch.load(fold_dir / "fine.pt", map_location="cpu", weights_only=True))
        return model.to(ctx["device"])

    def step(net: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        return fine_loss(net(batch["patch"]), batch, cfg)

    model = run_stage("fine", model, dataset, cfg, step, validate, fold_dir, ctx)
    atomic_torch_save(model.state_dict(), fold_dir / "fine.pt")
    return model


def train_fine(config: Mapping[str, Any], fold: int, fold_dir: Path, resume: bool = False,
               workers: int = 2, coarse: Path | None = None, rescore: bool = False,
               plan: FoldPlan | None = None) -> dict[str, Any]:
    """Every step of the fine stage for one fold; returns the fine summary. ``coarse``: an exported weights folder
    whose fold ``fold`` locator and classifier give the sites (instead of the fold folder's checkpoints).
    ``rescore``: validate the trained ``fine.pt`` again (sites and boxes of the validation series only; the earlier
    summary's times and training counts kept) and rewrite the summary and out-of-fold file. ``plan``: the fold's plan
    from a shared pass (``train_fines``; its sites time is in ``fine_prepare.json``)."""
    cfg = config["fine"]
    check_settings(cfg, fold_dir, rescore)
    _, _, device = setup_distributed(config["train"]["device"])
    torch.set_num_threads(int(config["train"]["threads"]))
    seed = int(config["seed"]) + 1000 * fold + 17
    torch.manual_seed(seed)
    started = time.perf_counter()
    times: dict[str, Any] = {"sites_s": 0.0}
    if plan is None:
        plan = plan_fold(config, fold, fold_dir, device, coarse, rescore)
        times["sites_s"] = plan.sites_s
    t = time.perf_counter()
    build_boxes(plan_box_jobs(config, fold_dir, plan), float(cfg["box_mm"]), workers)
    times["boxes_s"] = round(time.perf_counter() - t, 1)
    if (fold_dir / PREPARE_FILE).is_file() and not rescore:  # sites and boxes made with other folds: their time
        times["prepared"] = json.loads((fold_dir / PREPARE_FILE).read_text())

    boxes = BoxStore(fold_dir, Path(config["data"]["cache"]), config["normalisation"],
                     {r.uid: cache for _, cache, extra in plan.supplements for r in extra})
    model, spec = build_fine(cfg), fine_spec(cfg, fold)
    last: list[Validation] = []

    def validate(_epoch: int) -> dict[str, Any]:
        last[:] = [validate_fold(model, spec, plan, boxes, cfg, device)]
        return last[0].log_record()

    ctx = {"rank": 0, "world": 1, "device": device, "seed": seed, "resume": resume, "amp": config["train"]["amp"],
           "num_workers": config["train"]["num_workers"], "channels_last": False}
    dataset = FineDataset(plan.sites, plan.records, boxes, plan.train_uids + plan.extra_uids, cfg, seed=seed)
    t = time.perf_counter()
    model = _train_or_load(model, dataset, cfg, fold_dir, ctx, validate, load=resume or rescore)
    times["train_s"] = round(time.perf_counter() - t, 1)
    if not last:  # loaded, or resumed after the last epoch: validate once
        validate(int(cfg["epochs"]) - 1)
    truth_probs, _ = validation_site_probs(model, spec, plan.sites, boxes, plan.records, plan.val_uids, device,
                                           kind="truth")
    summary = fine_summary(fold, cfg, plan, len(dataset.uids), last[0], truth_probs, config["data"]["root"])
    summary["seconds"] = {**times, "total_s": round(time.perf_counter() - started, 1)}
    if rescore:
        _keep_training_record(summary, fold_dir)
    (fold_dir / "fine_summary.json").write_text(json.dumps(summary, indent=1))
    oof = pd.DataFrame(last[0].choice.probs, columns=LABEL_COLS)
    oof.insert(0, ID_COL, plan.val_uids)
    oof.to_csv(fold_dir / "fine_oof.csv", index=False)
    return summary


def fine_summary(fold: int, cfg: Mapping[str, Any], plan: FoldPlan, n_train: int, val: Validation,
                 truth_probs: Mapping[str, np.ndarray], data_root: str) -> dict[str, Any]:
    """``fine_summary.json``: the choice, its scores, and the tables of ``report`` on the validation fold."""
    val_uids, sites, records, choice = plan.val_uids, plan.sites, plan.records, val.choice
    domes = load_domes(data_root)
    labels_present = np.array([records[u].labels[-1] for u in val_uids])
    coarse = val.coarse_probs(val_uids, sites)
    fused = choice.probs
    radius = float(cfg["positive_radius_mm"])
    scored_sites = {u: {**sites[u], "candidates": val.scored[u].tolist()} for u in val_uids}
    return {
        "fold": fold, "fusion_weight": choice.fusion_weight, "site_heatmap_weight": choice.site_heatmap_weight,
        "config": json.loads(json.dumps(cfg)), "n_train_series": n_train,
        "n_supplement_series": len(plan.extra_uids), "supplements": [str(root) for root, _, _ in plan.supplements],
        "n_val": len(val_uids),
        "scores_by_weight": {str(w): {"score": m["score"], "auc_present": m["auc_present"]}
                             for w, m in choice.scores_at_heatmap_weight(choice.site_heatmap_weight).items()},
        "scores_by_site_heatmap_weight": {str(h): s for h, s in choice.best_score_by_heatmap_weight().items()},
        "validation": choice.metrics,
        "auc_present_by_dome": auc_by_band(labels_present, fused[:, -1], val_uids, domes),
        "auc_present_by_dome_coarse": None if coarse is None else auc_by_band(
            labels_present, coarse[:, -1], val_uids, domes),
        "candidate_recall": candidate_recall({u: sites[u]["candidates"] for u in val_uids}, domes, val_uids, radius),
        "candidate_recall_scored": candidate_recall(val.scored, domes, val_uids, radius),
        "recentre_shift_mm": shift_percentiles(sites, val.scored, val_uids),
        "auc_present_by_candidate": {
            stage: auc_by_candidate(labels_present, p[:, -1], val_uids, domes, val.scored, radius)
            for stage, p in (("fused", fused), ("coarse", coarse)) if p is not None},
        **patch_tables(truth_probs, val.site_probs, scored_sites, records, domes, val_uids, radius),
        "candidates_per_series": float(np.mean([len(sites[u]["candidates"]) for u in val_uids])),
        "coarse": plan.provenance,
    }


def _keep_training_record(summary: dict[str, Any], fold_dir: Path) -> None:
    """A rescore keeps what the training saw and how long it took; its own time goes beside them."""
    earlier = fold_dir / "fine_summary.json"
    summary["rescore_seconds"] = summary["seconds"]["total_s"]
    trained = json.loads(earlier.read_text()) if earlier.is_file() else {}
    summary["seconds"] = trained.get("seconds", summary["seconds"])
    # the training's counts (summaries from before supplements had none); unknown without its summary
    summary.update({"n_train_series": trained.get("n_train_series"),
                    "n_supplement_series": trained.get("n_supplement_series", 0 if trained else None),
                    "supplements": trained.get("supplements", [] if trained else None)})
