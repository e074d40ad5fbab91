"""Step 4 of the fine stage: the validation fold scored as the kernel scores it, and the summary's tables.

``validation_site_probs`` runs each validation candidate through ``recipe.recentre`` and ``recipe.fine_probs`` from
its native box; the tables say where the stage wins and loses: AUC(present) by largest dome, candidate recall per dome
band (phantom truth only: ``train_offline.domes``), the patch model's AUC per dome band and protocol, and what a
missed candidate costs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from kernel import recipe
from kernel.labels import MODALITY_NAMES
from kernel.manifest import ModelSpec
from kernel.metric import roc_auc
from kernel.preprocess import native_stack
from train_offline.data import SeriesRecord
from train_offline.domes import DOME_BANDS, band_of, nearest_mm
from train_offline.evaluate import torch_runner
from train_offline.fine.boxes import BoxStore
from train_offline.fine.sites import all_sites

__all__ = ["auc_by_band", "auc_by_candidate", "near_localizer", "patch_auc_by_dome", "patch_tables",
           "shift_percentiles", "validation_site_probs"]

def validation_site_probs(model: nn.Module, spec: ModelSpec, sites: Mapping[str, Mapping[str, Any]], boxes: BoxStore,
                          records: Mapping[str, SeriesRecord], uids: Sequence[str], device: torch.device,
                          kind: str = "candidate") -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(P(aneurysm), the (n, 3) LPS points scored) per validation series, through the kernel's recipe from each
    site's native box: candidates ("candidate") moved by ``recipe.recentre`` where the spec sets
    ``recentre_max_mm``, then ``recipe.fine_probs`` (the spec's views: flip TTA, the found point's logit). "truth": a
    patch centred on each localizer, unmoved."""
    run = torch_runner({spec.name: model}, device)
    probs, scored = {}, {}
    for uid in uids:
        localizers = [p for _, p in records[uid].points]
        points, kinds = all_sites(sites[uid], localizers)
        norm = boxes.normalise(uid)
        p, q = [], []
        for i in (i for i, k in enumerate(kinds) if k == kind):
            native = native_stack(*boxes.box(uid, i), norm)
            point, found = (recipe.recentre(native, points[i][None], [spec], run) if kind == "candidate"
                            else (points[i][None], None))
            p.append(recipe.fine_probs(native, point, [spec], run, flip=True, found=found)[0])
            q.append(point[0])
        probs[uid], scored[uid] = np.array(p), np.asarray(q, dtype=np.float64).reshape(-1, 3)
    return probs, scored


def shift_percentiles(sites: Mapping[str, Mapping[str, Any]], scored: Mapping[str, np.ndarray],
                       uids: Sequence[str]) -> dict[str, float]:
    """Percentiles (50, 90, max) of how far ``recipe.recentre`` moved the validation candidates (mm)."""
    shifts = np.concatenate([np.linalg.norm(np.asarray(sites[u]["candidates"], dtype=np.float64).reshape(-1, 3)
                                            - scored[u], axis=1) for u in uids] or [np.zeros(0)])
    if not len(shifts):
        return {}
    return {"p50": round(float(np.percentile(shifts, 50)), 2), "p90": round(float(np.percentile(shifts, 90)), 2),
            "max": round(float(shifts.max()), 2)}


def near_localizer(points: np.ndarray, localizers: Sequence[np.ndarray], radius_mm: float) -> np.ndarray:
    """(n,) bool: each point (LPS mm) lies within ``radius_mm`` of a localizer: what a patch there is labelled."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if not len(localizers):
        return np.zeros(len(points), dtype=bool)
    dist = np.linalg.norm(points[:, None, :] - np.asarray(localizers, dtype=np.float64)[None], axis=-1)
    return (dist <= radius_mm).any(axis=1)


def patch_tables(truth_probs: Mapping[str, np.ndarray], site_probs: Mapping[str, np.ndarray],
                 sites: Mapping[str, Mapping[str, Any]], records: Mapping[str, SeriesRecord],
                 domes: Mapping[str, list], uids: Sequence[str], radius_mm: float) -> dict[str, Any]:
    """The summary's ``patch_auc_by_dome`` (all protocols) and ``patch_auc_by_dome_modality``: P at each aneurysm's
    localizer (band of its nearest dome) against P at the candidates farther than ``radius_mm`` from every one."""
    truth_rows: dict[str, list[tuple[str, float]]] = {}
    negative_probs: dict[str, list[float]] = {}
    for u in uids:
        modality = MODALITY_NAMES[records[u].modality]
        localizers = [np.asarray(q) for _, q in records[u].points]
        if domes.get(u):
            truth_rows.setdefault(modality, []).extend(
                (band_of(min(domes[u], key=lambda d, q=q: float(np.linalg.norm(d.centre_lps - q))).dome_mm), float(p))
                for q, p in zip(localizers, truth_probs[u], strict=True))
        far = ~near_localizer(np.asarray(sites[u]["candidates"]), localizers, radius_mm)
        negative_probs.setdefault(modality, []).extend(float(p) for p in np.asarray(site_probs[u])[far])
    return {"patch_auc_by_dome": patch_auc_by_dome([r for rows in truth_rows.values() for r in rows],
                                                   [p for probs in negative_probs.values() for p in probs]),
            "patch_auc_by_dome_modality": {m: patch_auc_by_dome(truth_rows.get(m, []), negative_probs[m])
                                           for m in sorted(negative_probs)}}


def patch_auc_by_dome(truth: Sequence[tuple[str, float]], negatives: Sequence[float]) -> dict[str, dict[str, Any]]:
    """Per dome band: the fine model's patch AUC with the patch centred on each aneurysm (``truth``: (band, P)) against
    every negative site (``negatives``: P at candidates far from every aneurysm). Candidate recall aside, this says
    whether the patch model can tell a dome of that size from the classifier's false peaks."""
    neg = np.asarray(negatives, dtype=np.float64)
    out: dict[str, dict[str, Any]] = {}
    for name, _, _ in DOME_BANDS:
        pos = np.array([p for band, p in truth if band == name], dtype=np.float64)
        if len(pos) == 0:
            continue
        labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))].astype(int)
        auc = float(roc_auc(labels, np.r_[pos, neg])) if len(neg) else None
        out[name] = {"aneurysms": int(len(pos)), "patch_auc": auc, "median_p": float(np.median(pos))}
    if out:
        out["negatives"] = {"sites": int(len(neg)), "median_p": float(np.median(neg)) if len(neg) else None}
    return out


def auc_by_band(labels_present: np.ndarray, scores: np.ndarray, uids: Sequence[str],
                domes: Mapping[str, list]) -> dict[str, float | None]:
    """AUC(Aneurysm Present) of each largest-dome band's positives against every negative."""
    negatives = labels_present == 0
    out: dict[str, float | None] = {}
    bands = np.array([band_of(max(d.dome_mm for d in domes[u])) if domes.get(u) else "" for u in uids])
    for name, _, _ in DOME_BANDS:
        keep = negatives | ((labels_present == 1) & (bands == name))
        pos = int(((labels_present == 1) & (bands == name)).sum())
        out[name] = float(roc_auc(labels_present[keep], scores[keep])) if pos and negatives.any() else None
    return out


def auc_by_candidate(labels_present: np.ndarray, scores: np.ndarray, uids: Sequence[str], domes: Mapping[str, list],
                     candidates: Mapping[str, Any], radius_mm: float) -> dict[str, dict[str, Any]]:
    """What a missed candidate costs: AUC(Aneurysm Present) of the positives with a candidate within ``radius_mm`` of
    one of their aneurysms ("found") and of the other positives ("missed"), each against every negative."""
    negatives = labels_present == 0
    kinds = []
    for label, uid in zip(labels_present, uids, strict=True):
        cands = np.asarray(candidates.get(uid, []), dtype=np.float64).reshape(-1, 3)
        if label != 1 or not domes.get(uid):
            kinds.append("")
        else:
            kinds.append("found" if any(nearest_mm(cands, d) <= radius_mm for d in domes[uid]) else "missed")
    kinds_arr = np.array(kinds)
    out: dict[str, dict[str, Any]] = {}
    for name in ("found", "missed"):
        keep = negatives | (kinds_arr == name)
        n = int((kinds_arr == name).sum())
        auc = float(roc_auc(labels_present[keep], scores[keep])) if n and negatives.any() else None
        out[name] = {"positives": n, "auc_present": auc}
    return out
