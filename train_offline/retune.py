"""Choose an exported ensemble's fusion settings again, out of fold, without its run folders.

For each fine fold of a weights folder, its validation series (listed in the fold's ``oof_fine_f<K>.csv``) are read
from DICOM and run through the kernel's own ``Ensemble.predict_volume`` with that fold's models alone; each series'
sites (the classifiers' probabilities, every candidate's heatmap-cell logits and fine probability: what
``kernel.recipe.fuse`` needs) are kept in ``--work/fold<K>.jsonl`` (resumable). Then the pair (fusion weight, site
heatmap weight) with the best out-of-fold score over every fold's series pooled (``--per-fold``: each fold's own best;
``train_offline.fusion.choose_fusion``) is written into each fine entry (``fusion_weight``, ``site_heatmap_weight``,
``validation`` scores, the previous values kept under ``validation.before_retune``) and each fold's out-of-fold CSV is
rewritten with the fused rows. The models are untouched (same files, same sha256).

One pair for all folds is the default because the kernel fuses the whole ensemble at one pair (the mean of the
folds'), and the site heatmap weight scales each fold's rows differently: per-fold pairs that each win on their own
fold can lose pooled.

    python -m train_offline.retune --weights weights --data data/phantoms/real_train --work runs/retune
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kernel.labels import ID_COL, LABEL_COLS
from train_offline.fusion import FusionChoice, SeriesSites, choose_fusion
from train_offline.resume import resume_jsonl

__all__ = ["FoldSites", "fold_sites", "main", "series_sites", "sites_record"]

DEFAULT_HEATMAP_GRID = [0.0, 0.25, 0.5, 1.0, 2.0]


def series_sites(series_dir: Path, ensemble: Any, fold: int) -> dict[str, Any]:
    """One series through fold ``fold``'s models as the kernel runs them (read in this process): the record
    ``recipe.fuse`` needs to fuse it at any pair, plus the candidates and the modality as read."""
    from kernel.preprocess import prepare_volume

    manifest = ensemble.manifest
    volume = prepare_volume(series_dir, manifest.volume_spacing_mm, max_voxels=manifest.max_voxels,
                            keep_native=True)
    out = ensemble.predict_volume(volume.array, volume.affine, volume.modality, superior_known=volume.geometry_known,
                                  native=volume.native, fold=fold)
    return sites_record(out, volume.modality)


def sites_record(out: Any, modality: str) -> dict[str, Any]:
    """What a series' ``recipe.Prediction`` holds for fusing it again: the classifiers' probabilities, each
    candidate's heatmap-cell logits and fine probability (and its point), the kernel's fused row, the modality."""
    return {"probs": out.coarse_probs, "channel_logits": out.candidate_channel_logits,
            "site_probs": out.candidate_probs, "candidates_lps": out.candidates_lps, "modality": modality,
            "fused_probs": out.probs}


def fold_sites(weights: Path, data: Path, fold: int, work: Path, ensemble: Any) -> dict[str, dict[str, Any]]:
    """Fold ``fold``'s validation series (from its ``oof_fine_f<K>.csv``) through its own models: {uid: record},
    kept in ``work/fold<K>.jsonl`` (a rerun reads what is there)."""
    oof = weights / f"oof_fine_f{fold}.csv"
    if not oof.is_file():
        raise FileNotFoundError(f"{oof} is missing: the fold's validation series are read from it")
    uids = pd.read_csv(oof, usecols=[ID_COL], dtype={ID_COL: str})[ID_COL].tolist()
    done = resume_jsonl(work / f"fold{fold}.jsonl", uids,
                        lambda uid: series_sites(data / "series" / uid, ensemble, fold), desc=f"sites fold {fold}")
    return {u: done[u] for u in uids}


@dataclass
class FoldSites:
    """One fine fold's validation series: their sites, labels and protocols, in the out-of-fold file's order."""

    spec: Any  # kernel.manifest.ModelSpec of the fold's fine model
    uids: list[str]
    sites: list[SeriesSites]
    labels: np.ndarray
    modalities: list[str]


def _load_folds(args: argparse.Namespace, manifest: Any) -> list[FoldSites]:
    from kernel.ensemble import Ensemble

    ensemble = Ensemble(manifest, providers=["CPUExecutionProvider"], threads=args.threads)
    train = pd.read_csv(args.data / "train.csv", dtype={ID_COL: str}).set_index(ID_COL)
    folds = []
    for spec in manifest.models("fine"):
        records = fold_sites(args.weights, args.data, spec.fold, args.work, ensemble)
        uids = list(records)
        sites = [SeriesSites.of(r["probs"], r["channel_logits"], r["site_probs"]) for r in records.values()]
        folds.append(FoldSites(spec, uids, sites, train.loc[uids, LABEL_COLS].to_numpy(np.float64),
                               train.loc[uids, "Modality"].tolist()))
    return folds


def _choose(folds: Sequence[FoldSites], fusion_grid: Sequence[float], heatmap_grid: Sequence[float],
            per_fold: bool) -> tuple[list[FusionChoice], list[dict[float, float]]]:
    """Each fold's choice: its own best pair (``per_fold``), or the pair that is best on every fold pooled; and the
    best score per site heatmap weight the choice was made on (the fold's, or the pooled series')."""
    if per_fold:
        choices = [choose_fusion(f.sites, f.labels, f.modalities, fusion_grid, heatmap_grid) for f in folds]
        return choices, [c.best_score_by_heatmap_weight() for c in choices]
    pooled = choose_fusion([s for f in folds for s in f.sites], np.concatenate([f.labels for f in folds]),
                           [m for f in folds for m in f.modalities], fusion_grid, heatmap_grid)
    by_weight = ", ".join(f"{h:g}: {v:.4f}" for h, v in pooled.best_score_by_heatmap_weight().items())
    print(f"pooled ({sum(len(f.uids) for f in folds)} series): chosen fusion weight {pooled.fusion_weight:g}, site "
          f"heatmap weight {pooled.site_heatmap_weight:g}: score {pooled.metrics['score']:.4f} / AUC(present) "
          f"{pooled.metrics['auc_present']:.4f}; best pooled score by site heatmap weight {by_weight}")
    choices = [choose_fusion(f.sites, f.labels, f.modalities, [pooled.fusion_weight], [pooled.site_heatmap_weight])
               for f in folds]
    return choices, [pooled.best_score_by_heatmap_weight()] * len(folds)


def _write_choice(raw: dict[str, Any], weights: Path, fold: FoldSites, choice: FusionChoice,
                  by_heatmap_weight: Mapping[float, float], per_fold: bool) -> None:
    """The fold's fine entry (in the raw manifest) and its out-of-fold CSV rewritten with the choice."""
    spec = fold.spec
    entry = next(m for m in raw["models"] if m["name"] == spec.name)
    entry.pop("heat_weight", None)  # the setting's old name
    entry["fusion_weight"] = choice.fusion_weight
    if choice.site_heatmap_weight:
        entry["site_heatmap_weight"] = choice.site_heatmap_weight
    else:
        entry.pop("site_heatmap_weight", None)
    validation = entry.setdefault("validation", {})
    validation.setdefault("before_retune", {
        "fusion_weight": spec.fusion_weight, "site_heatmap_weight": spec.site_heatmap_weight,
        "score": spec.validation.get("score"), "auc_present": spec.validation.get("auc_present")})
    validation.update(score=choice.metrics["score"], auc_present=choice.metrics["auc_present"],
                      n_series=len(fold.uids),
                      retune={"chosen_on": "fold" if per_fold else "pooled folds",
                              "best_score_by_site_heatmap_weight": {
                                  str(h): s for h, s in by_heatmap_weight.items()}})
    oof = pd.DataFrame(choice.probs, columns=LABEL_COLS)
    oof.insert(0, ID_COL, fold.uids)
    oof.to_csv(weights / f"oof_fine_f{spec.fold}.csv", index=False)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train_offline.retune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=Path("weights"),
                        help="exported weights folder, rewritten in place (default weights)")
    parser.add_argument("--data", type=Path, default=Path("data/phantoms/real_train"),
                        help="the training data the folds were validated on: series/ and train.csv")
    parser.add_argument("--work", type=Path, default=Path("runs/retune"),
                        help="per-series sites, fold<K>.jsonl (resumable; default runs/retune)")
    parser.add_argument("--heatmap-grid", type=float, nargs="+", default=DEFAULT_HEATMAP_GRID,
                        help="site heatmap weights tried (default 0 0.25 0.5 1 2)")
    parser.add_argument("--fusion-grid", type=float, nargs="+", default=None,
                        help="fusion weights tried (default: the fine stage's training fusion_grid)")
    parser.add_argument("--per-fold", action="store_true",
                        help="each fold its own pair on its own series (as training chooses), instead of one pair "
                             "for the ensemble on every fold's series pooled (default)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default 2)")
    parser.add_argument("--dry-run", action="store_true", help="print the choices, write nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        from kernel.manifest import load_manifest

        manifest = load_manifest(args.weights)
        fines = manifest.models("fine")
        if not fines:
            raise ValueError(f"{args.weights} has no fine models: nothing to fuse")
        folds = _load_folds(args, manifest)
        grid = args.fusion_grid or _training_fusion_grid(fines[0].config)
        choices, by_heat = _choose(folds, grid, args.heatmap_grid, args.per_fold)
        raw = json.loads((args.weights / "manifest.json").read_text())
        for fold, choice, fold_by_heat in zip(folds, choices, by_heat, strict=True):
            spec = fold.spec
            print(f"fold {spec.fold}: {len(fold.uids)} series; before: fusion weight {spec.fusion_weight:g}, site "
                  f"heatmap weight {spec.site_heatmap_weight:g}, score {spec.validation.get('score', float('nan')):.4f}"
                  f"; now: fusion weight {choice.fusion_weight:g}, site heatmap weight "
                  f"{choice.site_heatmap_weight:g}, score {choice.metrics['score']:.4f} / AUC(present) "
                  f"{choice.metrics['auc_present']:.4f}")
            if not args.dry_run:
                _write_choice(raw, args.weights, fold, choice, fold_by_heat, args.per_fold)
        if not args.dry_run:
            (args.weights / "manifest.json").write_text(json.dumps(raw, indent=2) + "\n")
            load_manifest(args.weights)  # still valid
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"retune failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


def _training_fusion_grid(config: Mapping[str, Any] | None) -> list[float]:
    """The fusion grid the fine stage was trained with (its config travels in the manifest entry)."""
    return list((config or {}).get("fine", {}).get("fusion_grid", [0.0, 0.25, 0.5, 0.75, 1.0]))


if __name__ == "__main__":
    raise SystemExit(main())
