"""Experiment: a second candidate source from the fine model's sphere map scanned over the classifier crop.

The kernel's candidates are the classifier heatmap's peaks (6 mm cells); small domes often have none nearby. This
scans the crop instead: the crop is cut into tiles of ``TILE_CELLS`` sphere-map cells a side, the ``--tiles``
strongest of them by the classifier heatmap (its strongest channel in any cell inside the tile) get one fine-model
run each (a patch centred on the tile, sampled from the native stack), the central sphere cells of every run are
stitched, and the strongest cells (``recipe.greedy_nms`` at the manifest's candidate distance) become extra
candidates. Each is then scored exactly as the kernel scores a candidate (``recipe.recentre`` + ``recipe.fine_probs``)
and fused with ``recipe.fuse``. Training-free: it needs an exported weights folder and the DICOM series.

``scan`` writes one JSON Lines file per fold (resumable; out of fold: fold K's validation series, from
``weights/oof_fine_f<K>.csv``, with fold K's models alone, as the shipped out-of-fold rows were made); ``report``
prints candidate recall per dome band and the pooled out-of-fold score of the fusion variants (pairs chosen per fold,
``train_offline.fusion``). Measured result (docs/history/log.md, "candidates from a sphere-map scan"): recall of
domes under 3.5 mm rises, the score does not; not shipped.

    python -m experiments.scan scan --fold 0 1 2 && python -m experiments.scan report --tiles 32 --m 2 4 10
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kernel import recipe
from kernel.jsonl import read_jsonl_by
from kernel.labels import ID_COL, LABEL_COLS, LOCATION_COLS
from kernel.manifest import ModelSpec
from kernel.preprocess import crop_affine, grid_points_lps, voxel_to_world, world_to_voxel
from train_offline.resume import resume_jsonl
from train_offline.retune import sites_record

__all__ = ["heat_channels", "scan_peaks", "scan_series", "tile_centres", "union_sites"]

TILE_CELLS = 8  # central sphere-map cells a side kept from each run (of 16 for a 32^3 patch at stride 2)


def tile_centres(crop_shape: Sequence[int], crop_affine_: np.ndarray, crop_spacing_mm: float, tile_mm: float,
                 score: np.ndarray, stride: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """((n, 3) LPS centres, (n,) scores) of the ``n`` tiles of a ``tile_mm`` grid over the crop that hold the
    strongest cells of ``score`` ((d, h, w): the heatmap's strongest channel, cells of ``stride`` crop voxels),
    strongest first. A tile scores the best cell whose centre lies inside it (or on its border); tiles holding no cell
    are never taken."""
    step = tile_mm / crop_spacing_mm
    axes = [np.arange(step / 2 - 0.5, m - 0.5, step) for m in crop_shape]
    centres = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    cells = (np.stack(np.meshgrid(*[np.arange(m) for m in score.shape], indexing="ij"), axis=-1).reshape(-1, 3)
             + 0.5) * stride - 0.5
    flat = np.asarray(score, dtype=np.float64).reshape(-1)
    best = np.full(len(centres), -np.inf)
    for i, centre in enumerate(centres):  # a cell on a tile's border counts for both tiles
        inside = np.all(np.abs(cells - centre) <= step / 2, axis=1)
        if inside.any():
            best[i] = flat[inside].max()
    order = [i for i in np.argsort(best)[::-1] if np.isfinite(best[i])][:n]
    return voxel_to_world(crop_affine_, centres[order]), best[order]


def heat_channels(heatmap: np.ndarray, heat_affine: np.ndarray, stride: int, points: np.ndarray) -> np.ndarray:
    """(n, 13) channel logits of the heatmap cell holding each LPS point (clipped to the map): which vessel the
    classifier thinks the point is on, as ``recipe.heatmap_candidates`` keeps for its own peaks."""
    if not len(points):
        return np.zeros((0, len(LOCATION_COLS)))
    vox = world_to_voxel(heat_affine, np.asarray(points, dtype=np.float64))
    cells = np.clip(np.floor((vox + 0.5) / stride).astype(int), 0, np.array(heatmap.shape[1:]) - 1)
    return np.asarray(heatmap)[:, cells[:, 0], cells[:, 1], cells[:, 2]].T.copy()


def scan_peaks(native: Any, tiles_lps: np.ndarray, spec: ModelSpec, run: recipe.Runner,
               batch: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cells (m, 3) LPS, sphere-map logits (m,), tile index (m,)): the central ``TILE_CELLS``^3 sphere-map cells of
    one fine-model run per tile."""
    lo = (spec.input_shape[0] // spec.output_stride - TILE_CELLS) // 2
    cut = slice(lo, lo + TILE_CELLS)
    cells, logits, owner = [], [], []
    for b in range(0, len(tiles_lps), batch):
        sphere = np.asarray(run(spec, recipe.fine_patches(native, tiles_lps[b:b + batch], spec))[1], dtype=np.float64)
        for i, point in enumerate(tiles_lps[b:b + batch]):
            grid = grid_points_lps(crop_affine(native.affine, point, spec.input_shape, spec.spacing_mm),
                                   spec.input_shape, spec.output_stride)
            cells.append(grid[cut, cut, cut].reshape(-1, 3))
            logits.append(sphere[i, 0, cut, cut, cut].reshape(-1))
            owner.append(np.full(TILE_CELLS ** 3, b + i))
    if not cells:
        return np.zeros((0, 3)), np.zeros(0), np.zeros(0, dtype=int)
    return np.concatenate(cells), np.concatenate(logits), np.concatenate(owner)


def union_sites(record: dict[str, Any], n_tiles: int, m: int,
                dedupe_mm: float = 4.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points, site probs, channel logits) of the heatmap candidates (as the kernel moved and scored them) plus the
    first ``m`` scan candidates of the ``n_tiles`` scan that lie at least ``dedupe_mm`` from every one of them."""
    heat = np.asarray(record["candidates_lps"], dtype=np.float64).reshape(-1, 3)
    pts, site, chans = list(heat), list(record["site_probs"]), list(record["channel_logits"])
    scan = record["scan"][str(n_tiles)]
    added = 0
    for i, point in enumerate(np.asarray(scan["moved"], dtype=np.float64).reshape(-1, 3)):
        if added >= m:
            break
        if len(heat) and np.linalg.norm(heat - point, axis=1).min() < dedupe_mm:
            continue
        pts.append(point)
        site.append(scan["site_probs"][i])
        chans.append(scan["channel_logits"][i])
        added += 1
    return (np.asarray(pts, dtype=np.float64).reshape(-1, 3), np.asarray(site, dtype=np.float64),
            np.asarray(chans, dtype=np.float64).reshape(-1, len(LOCATION_COLS)))


# --- scan ------------------------------------------------------------------------------------------------------------


def scan_series(series_dir: Path, ensemble: Any, fold: int, tiles: Sequence[int], dense_k: int) -> dict[str, Any]:
    """One series through fold ``fold``'s models: the kernel's sites (``Ensemble.predict_volume``, as the retune
    keeps them), then the scan for each tile count in ``tiles`` (none: no scan). The classifier heatmap the tiles are
    ranked by is computed once more here (the kernel does not return it)."""
    from kernel.preprocess import normalise, normaliser, prepare_volume, reverse_z

    manifest = ensemble.manifest
    t0 = time.perf_counter()
    vol = prepare_volume(series_dir, manifest.volume_spacing_mm, max_voxels=manifest.max_voxels, keep_native=True)
    out = ensemble.predict_volume(vol.array, vol.affine, vol.modality, superior_known=vol.geometry_known,
                                  native=vol.native, fold=fold)
    record = sites_record(out, vol.modality)
    t1 = time.perf_counter()
    if not tiles:
        return {**record, "scan": {}, "seconds": {"total": t1 - t0, "scan": 0.0}}
    cls = [s for s in manifest.models("classifier") if s.fold == fold]
    fine = [s for s in manifest.models("fine") if s.fold == fold]
    spec, scheme = fine[0], manifest.scheme(vol.modality)
    array = normalise(vol.array, scheme)
    native = replace(vol.native, normalise=normaliser(scheme, vol.array))
    if out.reversed_z:
        array, native = np.ascontiguousarray(array[::-1]), reverse_z(native)
    heat = recipe.classify(array, vol.affine, out.centre_lps, cls, ensemble.run, True)
    tile_mm = TILE_CELLS * spec.output_stride * float(spec.spacing_mm[0])
    tiles_lps, tile_heat = tile_centres(cls[0].input_shape, heat.heatmap_affine, float(cls[0].spacing_mm[0]), tile_mm,
                                        heat.heatmap.max(axis=0), heat.heatmap_stride, max(tiles))
    cells, logits, owner = scan_peaks(native, tiles_lps, spec, ensemble.run)
    t_scan = time.perf_counter() - t1
    scans = {}
    for n_tiles in tiles:
        sel = np.flatnonzero(owner < n_tiles)
        top = sel[np.argsort(logits[sel])[::-1][:4000]]
        cand = top[recipe.greedy_nms(cells[top], dense_k, spec.candidate_min_distance_mm)]
        peaks = top[recipe.greedy_nms(cells[top], 40, 4.0)]
        moved, found = recipe.recentre(native, cells[cand], fine, ensemble.run)
        scans[str(n_tiles)] = {
            "points": cells[cand], "sphere": logits[cand], "moved": moved,
            "site_probs": recipe.fine_probs(native, moved, fine, ensemble.run, True, found),
            "channel_logits": heat_channels(heat.heatmap, heat.heatmap_affine, heat.heatmap_stride, moved),
            "peaks40": cells[peaks]}
    return {**record, "scan": scans, "tiles": tiles_lps, "tile_heat": tile_heat,
            "seconds": {"total": time.perf_counter() - t0, "scan": t_scan}}


def cmd_scan(args: argparse.Namespace) -> int:
    from kernel.ensemble import Ensemble
    from kernel.manifest import load_manifest

    ensemble = Ensemble(load_manifest(args.weights), providers=["CPUExecutionProvider"], threads=args.threads)
    for fold in args.fold:
        oof = args.weights / f"oof_fine_f{fold}.csv"
        if not oof.is_file():
            raise FileNotFoundError(f"{oof} is missing: the fold's validation series are read from it")
        uids = pd.read_csv(oof, usecols=[ID_COL], dtype={ID_COL: str})[ID_COL].tolist()[: args.limit or None]
        resume_jsonl(args.out / f"fold{fold}.jsonl", uids,
                     lambda uid, k=fold: scan_series(args.data / "series" / uid, ensemble, k, args.tiles,
                                                     args.dense_k), desc=f"scan fold {fold}")
    return 0


# --- report ----------------------------------------------------------------------------------------------------------


def _recall_table(folds: dict[int, dict[str, dict]], domes: dict, tiles: Sequence[int], ms: Sequence[int]) -> None:
    from train_offline.domes import DOME_BANDS, candidate_recall

    uids = [u for res in folds.values() for u in res]
    bands = [b for b, _, _ in DOME_BANDS]

    def row(name: str, pick: Callable[[dict], Any]) -> None:
        rec = candidate_recall({u: np.asarray(pick(res[u]), dtype=np.float64).reshape(-1, 3)
                                for res in folds.values() for u in res}, domes, uids, 5.0)
        print(f"| {name} | " + " | ".join(f"{rec[b]['within_radius_2mm']:.2f}" if b in rec else "" for b in
                                          [*bands, "all"]) + " |")

    print(f"candidate recall (within dome radius + 2 mm), {len(uids)} series, folds {sorted(folds)}")
    print("| candidates | " + " | ".join([*bands, "all"]) + " |\n|---|" + "---|" * (len(bands) + 1))
    row("heatmap peaks, moved (shipped)", lambda r: r["candidates_lps"])
    for n_tiles in tiles:
        for m in ms:
            row(f"{n_tiles} tiles: scan top {m}", lambda r, n=n_tiles, m=m: np.asarray(r["scan"][str(n)]["moved"])[:m])
            row(f"{n_tiles} tiles: shipped + scan top {m}", lambda r, n=n_tiles, m=m: union_sites(r, n, m)[0])
        row(f"{n_tiles} tiles: 40 sphere peaks (4 mm apart)", lambda r, n=n_tiles: r["scan"][str(n)]["peaks40"])


def _fusion_table(folds: dict[int, dict[str, dict]], train: pd.DataFrame, domes: dict, fusion_grid: Sequence[float],
                  heat_grid: Sequence[float], tiles: Sequence[int], ms: Sequence[int]) -> None:
    from kernel.metric import evaluate_predictions, roc_auc
    from train_offline.domes import DOME_BANDS, band_of
    from train_offline.fusion import SeriesSites, choose_fusion

    uids = [u for res in folds.values() for u in res]
    bands = [b for b, _, _ in DOME_BANDS]
    labels_all = train.loc[uids, LABEL_COLS].to_numpy(float)
    largest = np.array([band_of(max(d.dome_mm for d in domes[u])) if domes.get(u) else "" for u in uids])

    def variant(name: str, sites: Callable[[dict], tuple], grid_h: Sequence[float]) -> None:
        choices = []
        for res in folds.values():
            fold_uids = list(res)
            series = [SeriesSites.of(res[u]["probs"], sites(res[u])[2], sites(res[u])[1]) for u in fold_uids]
            choices.append(choose_fusion(series, train.loc[fold_uids, LABEL_COLS].to_numpy(float),
                                         train.loc[fold_uids, "Modality"].tolist(), fusion_grid, grid_h))
        probs = np.concatenate([c.probs for c in choices])
        ev = evaluate_predictions(labels_all, probs, train.loc[uids, "Modality"].tolist())
        present = labels_all[:, -1]
        by = [f"{roc_auc(present[(present == 0) | (largest == b)], probs[(present == 0) | (largest == b), -1]):.3f}"
              if ((present == 1) & (largest == b)).any() else "" for b in bands]
        pairs = ", ".join(f"({c.fusion_weight:g}, {c.site_heatmap_weight:g})" for c in choices)
        print(f"| {name} | {ev['score']:.4f} / {ev['auc_present']:.4f} | {' / '.join(by)} | {pairs} |")

    print("\npooled out of fold, (fusion weight, site heatmap weight) chosen per fold")
    print("| sites | score / AUC(present) | by dome " + " / ".join(bands) + " | pair per fold |\n|---|---|---|---|")
    shipped = lambda r: (r["candidates_lps"], r["site_probs"], r["channel_logits"])  # noqa: E731
    variant("heatmap peaks (shipped)", shipped, [0.0])
    variant("heatmap peaks, site heatmap weight chosen", shipped, heat_grid)
    for n_tiles, m in itertools.product(tiles, ms):
        variant(f"+ {n_tiles} tiles scan top {m}", lambda r, n=n_tiles, m=m: union_sites(r, n, m), [0.0])
        variant(f"+ {n_tiles} tiles scan top {m}, site heatmap weight chosen",
                lambda r, n=n_tiles, m=m: union_sites(r, n, m), heat_grid)


def cmd_report(args: argparse.Namespace) -> int:
    from train_offline.domes import load_domes

    train = pd.read_csv(args.data / "train.csv", dtype={ID_COL: str}).set_index(ID_COL)
    domes = load_domes(args.data)
    folds = {k: read_jsonl_by(args.out / f"fold{k}.jsonl", ID_COL) for k in args.fold}
    _recall_table(folds, domes, args.tiles, args.m)
    _fusion_table(folds, train, domes, [float(w) for w in args.fusion_grid], [float(h) for h in args.heatmap_grid],
                  args.tiles, args.m)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.scan", description=__doc__.split("\n\n")[0],
                                     epilog="e.g. python -m experiments.scan scan --fold 0 1 2, then "
                                            "python -m experiments.scan report --tiles 32 --m 2 4 10")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--weights", type=Path, default=Path("weights"), help="exported weights (default weights)")
    common.add_argument("--data", type=Path, default=Path("data/phantoms/real_train"),
                        help="training data root: series/, train.csv, phantom_truth.jsonl")
    common.add_argument("--out", type=Path, default=Path("runs/scan"), help="fold<K>.jsonl folder (default runs/scan)")
    common.add_argument("--fold", type=int, nargs="+", default=[0, 1, 2], help="folds (default 0 1 2)")
    common.add_argument("--tiles", type=int, nargs="+", default=[32, 64, 96],
                        help="tile counts scanned (the strongest by heatmap; default 32 64 96)")
    sub = parser.add_subparsers(dest="command", required=True)
    scan = sub.add_parser("scan", parents=[common], help="scan each fold's validation series (resumable)")
    scan.add_argument("--dense-k", type=int, default=10, help="scan candidates kept a series (default 10)")
    scan.add_argument("--limit", type=int, default=0, help="first N validation series of each fold (0: all)")
    scan.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default 2)")
    report = sub.add_parser("report", parents=[common], help="recall and pooled out-of-fold tables from the scans")
    report.add_argument("--m", type=int, nargs="+", default=[2, 4, 10], help="scan candidates added (default 2 4 10)")
    report.add_argument("--fusion-grid", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0],
                        help="fusion weights tried per fold (default 0 0.25 0.5 0.75 1)")
    report.add_argument("--heatmap-grid", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0, 2.0],
                        help="site heatmap weights tried per fold ('chosen' rows; default 0 0.25 0.5 1 2)")
    args = parser.parse_args(argv)
    try:
        return cmd_scan(args) if args.command == "scan" else cmd_report(args)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"scan failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
