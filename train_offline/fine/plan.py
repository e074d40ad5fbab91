"""The fine stage's plan for a fold: its split, supplements and sites (step 1), and the boxes it still lacks.

Several folds plan first and then share one pass over the DICOM series for every fold's boxes (``prepare_folds``,
``fine_prepare.json``): reading is most of the boxes step, so each fold pays about a third of it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kernel.labels import ID_COL
from train_offline.config import ConfigError, save_config
from train_offline.data import SeriesRecord, SeriesStore, records_from_index
from train_offline.fine.boxes import BoxJobs, box_jobs, build_boxes
from train_offline.fine.sites import compute_sites, exported_coarse
from train_offline.folds import ensure_index, ensure_index_and_folds
from train_offline.loop import setup_distributed

__all__ = ["PREPARE_FILE", "FoldPlan", "load_supplements", "plan_box_jobs", "plan_fold", "prepare_folds",
           "prepare_plans"]

PREPARE_FILE = "fine_prepare.json"


def load_supplements(cfg: Mapping[str, Any], known: set[str]) -> list[tuple[Path, Path, list[SeriesRecord]]]:
    """(data root, cache, records) of each of ``fine.supplements``: training-only series. The index is built on first
    use. A series also in the main data (``known``) or in two supplements would leak across folds: refused."""
    from train_offline.index import load_index

    out, seen = [], set(known)
    for i, item in enumerate(cfg["supplements"]):
        if not isinstance(item, Mapping) or sorted(item) != ["cache", "index", "root"] or not all(
                isinstance(v, str) for v in item.values()):
            raise ConfigError(f"fine.supplements[{i}] must be a mapping of root, cache and index paths, got {item!r}")
        root, cache, index_path = Path(item["root"]), Path(item["cache"]), Path(item["index"])
        if not index_path.is_file() and not (root / "train.csv").is_file():
            raise FileNotFoundError(f"fine.supplements[{i}]: {root / 'train.csv'} is missing (generate it, e.g. "
                                    "python -m train_offline.phantoms --dome-range 2 4.5 ...)")
        ensure_index(root, cache, index_path)
        records = records_from_index(load_index(index_path))
        shared = seen & {r.uid for r in records}
        if shared:
            raise ValueError(f"fine.supplements[{i}] ({root}) repeats {len(shared)} series of the training data or "
                             f"of an earlier supplement, e.g. {sorted(shared)[0]}")
        seen |= {r.uid for r in records}
        out.append((root, cache, records))
    return out


@dataclass
class FoldPlan:
    """One fold's series and their sites (step 1 done): what its boxes are cut for and its training reads."""

    train_uids: list[str]
    val_uids: list[str]
    main_uids: list[str]  # the main data's series with sites (the validation fold's alone for a rescore)
    records: dict[str, SeriesRecord]  # main data and supplements
    supplements: list[tuple[Path, Path, list[SeriesRecord]]]
    sites: dict[str, dict[str, Any]]
    provenance: dict[str, Any] | None
    sites_s: float

    @property
    def extra_uids(self) -> list[str]:
        return [r.uid for _, _, extra in self.supplements for r in extra]


def plan_fold(config: Mapping[str, Any], fold: int, fold_dir: Path, device: torch.device,
              coarse: Path | None = None, rescore: bool = False) -> FoldPlan:
    """A fold's split, its supplements and the sites of its series (step 1; sites already written are kept)."""
    cfg = config["fine"]
    for name in ("locator.pt", "classifier.pt") if coarse is None else ():
        if not (fold_dir / name).is_file():
            raise FileNotFoundError(f"{fold_dir / name} is missing: train the fold first (python -m "
                                    f"train_offline.train --config {config['name']} --fold {fold})")
    index, folds = ensure_index_and_folds(config, 0, 1)
    index = index.merge(folds, on=ID_COL, how="inner")
    train_uids = index.loc[index["fold"] != fold, ID_COL].tolist()
    val_uids = index.loc[index["fold"] == fold, ID_COL].tolist()
    records = {r.uid: r for r in records_from_index(index)}
    store = SeriesStore(Path(config["data"]["cache"]), Path(config["data"]["root"]), list(records.values()),
                        config["normalisation"], preload="none")
    supplements = load_supplements(cfg, set(records))
    for _, _, extra in supplements:
        records.update({r.uid: r for r in extra})
    exported, provenance = None, None
    if coarse is not None:  # the fold folder holds only this stage: its config is written here for export
        exported, provenance = exported_coarse(coarse, config, fold, val_uids)
        fold_dir.mkdir(parents=True, exist_ok=True)
        save_config(fold_dir / "config.yaml", config)
    t = time.perf_counter()
    main_uids = val_uids if rescore else train_uids + val_uids  # a rescore needs the validation series only
    sites = compute_sites(config, fold, fold_dir, store, main_uids, set(val_uids), device, exported)
    for root, cache, extra in supplements if not rescore else ():  # training series of every fold
        extra_store = SeriesStore(cache, root, extra, config["normalisation"], preload="none")
        sites = compute_sites(config, fold, fold_dir, extra_store, [r.uid for r in extra], set(), device, exported)
    return FoldPlan(train_uids, val_uids, main_uids, records, supplements if not rescore else [], sites, provenance,
                    round(time.perf_counter() - t, 1))


def plan_box_jobs(config: Mapping[str, Any], fold_dir: Path, plan: FoldPlan, jobs: BoxJobs | None = None) -> BoxJobs:
    """The boxes a planned fold still lacks, its main series and its supplements', added to ``jobs``."""
    jobs = box_jobs(Path(config["data"]["root"]), fold_dir, {u: plan.sites[u] for u in plan.main_uids
                                                             if u in plan.sites}, plan.records, jobs)
    for root, _, extra in plan.supplements:
        jobs = box_jobs(root, fold_dir, {r.uid: plan.sites[r.uid] for r in extra}, plan.records, jobs)
    return jobs


def _with_earlier(fresh: dict[str, Any], earlier: dict[str, Any] | None) -> dict[str, Any]:
    """A shared pass's record with an earlier (killed, then resumed) pass of the same folds added: times and counts."""
    if not earlier or earlier.get("folds") != fresh["folds"]:
        return fresh
    return {**fresh, "boxes_s": round(earlier["boxes_s"] + fresh["boxes_s"], 1),
            "series_read": earlier["series_read"] + fresh["series_read"],
            "boxes_written": earlier["boxes_written"] + fresh["boxes_written"],
            "sites_s": {k: round(earlier["sites_s"].get(k, 0.0) + v, 1) for k, v in fresh["sites_s"].items()}}


def prepare_plans(config: Mapping[str, Any], folds: Sequence[int], fold_dirs: Sequence[Path], workers: int,
             coarse: Path | None) -> tuple[dict[str, Any], list[FoldPlan]]:
    """``prepare_folds``, also returning each fold's plan (``train_fines`` hands them on, not planning twice)."""
    _, _, device = setup_distributed(config["train"]["device"])
    torch.set_num_threads(int(config["train"]["threads"]))
    jobs: BoxJobs = {}
    plans = []
    for fold, fold_dir in zip(folds, fold_dirs, strict=True):
        plans.append(plan_fold(config, fold, fold_dir, device, coarse))
        jobs = plan_box_jobs(config, fold_dir, plans[-1], jobs)
    t = time.perf_counter()
    n_read = build_boxes(jobs, float(config["fine"]["box_mm"]), workers)
    fresh = {"folds": [int(f) for f in folds],
             "sites_s": {str(f): p.sites_s for f, p in zip(folds, plans, strict=True)},
             "boxes_s": round(time.perf_counter() - t, 1), "series_read": n_read,
             "boxes_written": sum(len(v) for v in jobs.values())}
    records = []
    for fold_dir in fold_dirs:
        path = Path(fold_dir) / PREPARE_FILE
        records.append(_with_earlier(fresh, json.loads(path.read_text()) if path.is_file() else None))
        path.write_text(json.dumps(records[-1], indent=1))
    return records[-1], plans


def prepare_folds(config: Mapping[str, Any], folds: Sequence[int], fold_dirs: Sequence[Path], workers: int = 2,
                  coarse: Path | None = None) -> dict[str, Any]:
    """Steps 1 and 2 for several folds at once: each fold's sites, then one pass over the series that cuts every
    fold's boxes (a series is read and decoded once, not once per fold: most of the boxes step's time). Writes
    ``fine_prepare.json`` into each fold folder (the shared pass's time, added up over resumed runs) and returns it;
    ``train_fine`` then finds its sites and boxes done and quotes it in its summary."""
    return prepare_plans(config, folds, fold_dirs, workers, coarse)[0]
