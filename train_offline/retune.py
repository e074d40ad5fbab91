"""Choose an exported ensemble's fusion settings again, out of fold, without its run folders.

For each fine fold of a weights folder: its validation series (the fold's ``oof_fine_f<K>.csv``) go through the
kernel's recipe with that fold's own locator, classifier and fine model, read from DICOM as the kernel reads them
(``train_offline.scan.scan_series`` without a scan). Then the pair (fusion weight, heat weight) with the best
out-of-fold score over every fold's series pooled (``--per-fold``: each fold's own best) is written into each fine
entry (``fusion_weight``, ``heat_weight``, ``validation`` scores, the previous values kept under
``validation.before_retune``) and each fold's out-of-fold CSV is rewritten with the fused rows. The models are
untouched (same files, same sha256). Ties keep the smaller heat weight, then the smaller fusion weight.

One pair for all folds is the default because the kernel fuses the whole ensemble at one pair (the mean of the
folds'), and the heat weight scales each fold's rows differently: per-fold pairs that each win on their own fold can
lose pooled (docs/training.md, run Q).

    python -m train_offline.retune --weights weights --data data/phantoms/real_train --work runs/retune

The per-series sites are kept in ``--work`` (``fold<K>.pkl``, resumable; ``train_offline.scan`` pickles hold the same
records and can be passed as ``--work``).
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from kernel import recipe
from kernel.labels import ID_COL, LABEL_COLS
from kernel.metric import evaluate_predictions
from train_offline.fine import best_pair

__all__ = ["choose_weights", "fold_sites"]


def fold_sites(weights: Path, data: Path, fold: int, work: Path, threads: int = 2) -> dict[str, dict[str, Any]]:
    """Fold ``fold``'s validation series through its own exported models: {uid: kernel sites}, cached in ``work``."""
    from kernel.ensemble import Ensemble
    from kernel.manifest import load_manifest
    from train_offline.scan import scan_series

    oof = weights / f"oof_fine_f{fold}.csv"
    if not oof.is_file():
        raise FileNotFoundError(f"{oof} is missing: the fold's validation series are read from it")
    uids = pd.read_csv(oof, usecols=[ID_COL])[ID_COL].tolist()
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"fold{fold}.pkl"
    done = pickle.loads(path.read_bytes()) if path.is_file() else {}
    todo = [u for u in uids if u not in done]
    if todo:
        manifest = load_manifest(weights)
        ensemble = Ensemble(manifest, providers=["CPUExecutionProvider"], threads=threads)
        for n, uid in enumerate(tqdm(todo, desc=f"sites fold {fold}", mininterval=10)):
            done[uid] = scan_series(data / "series" / uid, manifest, ensemble.run, fold, (), 0)
            if n % 20 == 19 or n == len(todo) - 1:
                path.write_bytes(pickle.dumps(done))
    return {u: done[u] for u in uids}


def choose_weights(records: Mapping[str, Mapping[str, Any]], labels: np.ndarray, modalities: Sequence[str],
                   fusion_grid: Sequence[float], heat_grid: Sequence[float]
                   ) -> tuple[float, float, dict[str, Any], np.ndarray, dict[str, float]]:
    """(fusion weight, heat weight, metrics, (n, 14) fused rows, best score per heat weight) of the pair with the best
    score on these series (``records`` in ``labels``' order); ties keep the earlier heat weight, then fusion weight."""
    uids = list(records)
    table: dict[tuple[float, float], tuple[dict[str, Any], np.ndarray]] = {}
    for h in heat_grid:
        for w in fusion_grid:
            probs = np.stack([recipe.fuse(records[u]["probs"], records[u]["chans"], records[u]["site"], float(w),
                                          float(h)) for u in uids])
            table[(float(w), float(h))] = (evaluate_predictions(labels, probs, modalities), probs)
    if not table:
        raise ValueError("empty fusion or heat grid")
    w, h = best_pair({pair: metrics["score"] for pair, (metrics, _) in table.items()})
    by_heat = {str(float(hh)): max(m["score"] for (_, h2), (m, _) in table.items() if h2 == float(hh))
               for hh in heat_grid}
    return w, h, table[(w, h)][0], table[(w, h)][1], by_heat


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train_offline.retune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=Path("weights"),
                        help="exported weights folder, rewritten in place (default weights)")
    parser.add_argument("--data", type=Path, default=Path("data/phantoms/real_train"),
                        help="the training data the folds were validated on: series/ and train.csv")
    parser.add_argument("--work", type=Path, default=Path("runs/retune"), help="site pickles (default runs/retune)")
    parser.add_argument("--heat-grid", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0, 2.0],
                        help="heat weights tried (default 0 0.25 0.5 1 2)")
    parser.add_argument("--fusion-grid", type=float, nargs="+", default=None,
                        help="fusion weights tried (default: each fold's training fusion_grid)")
    parser.add_argument("--per-fold", action="store_true",
                        help="each fold its own pair on its own series (as training chooses), instead of one pair "
                             "for the ensemble on every fold's series pooled (default)")
    parser.add_argument("--dry-run", action="store_true", help="print the choices, write nothing")
    args = parser.parse_args(argv)
    try:
        from kernel.manifest import load_manifest

        manifest = load_manifest(args.weights)
        fines = manifest.models("fine")
        if not fines:
            raise ValueError(f"{args.weights} has no fine models: nothing to fuse")
        train = pd.read_csv(args.data / "train.csv").set_index(ID_COL)
        raw = json.loads((args.weights / "manifest.json").read_text())
        folds = {}
        for spec in fines:
            records = fold_sites(args.weights, args.data, spec.fold, args.work)
            uids = list(records)
            folds[spec.name] = (records, train.loc[uids, LABEL_COLS].to_numpy(np.float64),
                                train.loc[uids, "Modality"].tolist())
        grid = args.fusion_grid or (fines[0].config or {}).get("fine", {}).get("fusion_grid",
                                                                              [0.0, 0.25, 0.5, 0.75, 1.0])
        if not args.per_fold:  # one pair for the ensemble, chosen on every fold's series pooled
            pooled = {u: r for records, _, _ in folds.values() for u, r in records.items()}
            labels = np.concatenate([y for _, y, _ in folds.values()])
            modalities = [m for _, _, mods in folds.values() for m in mods]
            w, h, metrics, _, by_heat = choose_weights(pooled, labels, modalities, grid, args.heat_grid)
            print(f"pooled ({len(pooled)} series): chosen weight {w}, heat {h}: score {metrics['score']:.4f} / "
                  f"AUC(present) {metrics['auc_present']:.4f}; best pooled score by heat weight "
                  + ", ".join(f"{k}: {v:.4f}" for k, v in by_heat.items()))
        for spec in fines:
            records, labels, modalities = folds[spec.name]
            uids = list(records)
            if args.per_fold:
                w, h, metrics, probs, by_heat = choose_weights(records, labels, modalities, grid, args.heat_grid)
            else:
                _, _, metrics, probs, _ = choose_weights(records, labels, modalities, [w], [h])
            before = {"fusion_weight": spec.fusion_weight, "heat_weight": spec.heat_weight,
                      "score": spec.validation.get("score"), "auc_present": spec.validation.get("auc_present")}
            print(f"fold {spec.fold}: {len(uids)} series; before: weight {spec.fusion_weight}, heat "
                  f"{spec.heat_weight}, score {before['score']:.4f}; now: weight {w}, heat {h}, score "
                  f"{metrics['score']:.4f} / AUC(present) {metrics['auc_present']:.4f}")
            if args.dry_run:
                continue
            entry = next(m for m in raw["models"] if m["name"] == spec.name)
            entry["fusion_weight"] = w
            if h:
                entry["heat_weight"] = h
            else:
                entry.pop("heat_weight", None)
            validation = entry.setdefault("validation", {})
            validation.setdefault("before_retune", before)
            validation.update(score=metrics["score"], auc_present=metrics["auc_present"], n_series=len(uids),
                              retune={"chosen_on": "fold" if args.per_fold else "pooled folds",
                                      "best_score_by_heat_weight": by_heat})
            oof = pd.DataFrame(probs, columns=LABEL_COLS)
            oof.insert(0, ID_COL, uids)
            oof.to_csv(args.weights / f"oof_fine_f{spec.fold}.csv", index=False)
        if not args.dry_run:
            (args.weights / "manifest.json").write_text(json.dumps(raw, indent=2) + "\n")
            load_manifest(args.weights)  # still valid
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"retune failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
