"""Experiment: a second candidate source from the fine model's ball map scanned over the classifier crop.

The kernel's candidates are the classifier heatmap's peaks (6 mm cells); small domes often have none nearby. This
scans the crop instead: the crop is cut into tiles of ``TILE_CELLS`` ball-map cells a side, the ``--tiles``
strongest of them by the classifier heatmap (its strongest channel in any cell inside the tile) get one fine-model
run each (a patch centred on the tile, sampled from the native stack), the central ball cells of every run are
stitched, and the strongest ball cells (non-maximum suppression at the manifest's candidate distance) become extra
candidates. Each is then scored exactly as the kernel scores a candidate (``recipe.recentre`` + ``recipe.fine_probs``)
and fused with ``recipe.fuse``. Training-free: it needs an exported weights folder and the DICOM series.

``scan`` writes one pickle per fold (resumable; out of fold: fold K's validation series, from
``weights/oof_fine_f<K>.csv``, with fold K's models alone, as the shipped out-of-fold rows were made); ``report``
prints candidate recall per dome band and the pooled out-of-fold score of the fusion variants (weights chosen per
fold). Results and the command lines: docs/training.md, "Candidates from a ball-map scan".
"""

from __future__ import annotations

import argparse
import itertools
import pickle
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from kernel import recipe
from kernel.labels import ID_COL, LABEL_COLS, LOCATION_COLS
from kernel.manifest import ModelSpec
from kernel.preprocess import crop_affine, grid_points_lps, voxel_to_world, world_to_voxel

__all__ = ["heat_channels", "nms", "scan_peaks", "tile_centres", "union_sites"]

TILE_CELLS = 8  # central ball cells a side kept from each run (of 16 for a 32^3 patch at stride 2)


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


def nms(points: np.ndarray, scores: np.ndarray, k: int, min_mm: float) -> np.ndarray:
    """Indices of at most ``k`` points, strongest first, each at least ``min_mm`` from those taken."""
    taken: list[int] = []
    for i in np.argsort(scores)[::-1]:
        if len(taken) >= k:
            break
        if all(np.linalg.norm(points[i] - points[j]) >= min_mm for j in taken):
            taken.append(int(i))
    return np.asarray(taken, dtype=int)


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
    """(cells (m, 3) LPS, ball logits (m,), tile index (m,)): the central ``TILE_CELLS``^3 ball-map cells of one
    fine-model run per tile."""
    lo = (spec.input_shape[0] // spec.output_stride - TILE_CELLS) // 2
    cut = slice(lo, lo + TILE_CELLS)
    cells, logits, owner = [], [], []
    for b in range(0, len(tiles_lps), batch):
        ball = np.asarray(run(spec, recipe.fine_patches(native, tiles_lps[b:b + batch], spec))[1], dtype=np.float64)
        for i, point in enumerate(tiles_lps[b:b + batch]):
            grid = grid_points_lps(crop_affine(native.affine, point, spec.input_shape, spec.spacing_mm),
                                   spec.input_shape, spec.output_stride)
            cells.append(grid[cut, cut, cut].reshape(-1, 3))
            logits.append(ball[i, 0, cut, cut, cut].reshape(-1))
            owner.append(np.full(TILE_CELLS ** 3, b + i))
    if not cells:
        return np.zeros((0, 3)), np.zeros(0), np.zeros(0, dtype=int)
    return np.concatenate(cells), np.concatenate(logits), np.concatenate(owner)


def union_sites(record: dict[str, Any], n_tiles: int, m: int,
                dedupe_mm: float = 4.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points, site probs, channel logits) of the heatmap candidates (as the kernel moved and scored them) plus the
    first ``m`` scan candidates of the ``n_tiles`` scan that lie at least ``dedupe_mm`` from every one of them."""
    pts, site, chans = list(record["moved"]), list(record["site"]), list(record["chans"])
    scan = record["scan"][n_tiles]
    heat = np.asarray(record["moved"], dtype=np.float64).reshape(-1, 3)
    added = 0
    for i, point in enumerate(scan["moved"]):
        if added >= m:
            break
        if len(heat) and np.linalg.norm(heat - point, axis=1).min() < dedupe_mm:
            continue
        pts.append(point)
        site.append(scan["site"][i])
        chans.append(scan["chans"][i])
        added += 1
    return (np.asarray(pts, dtype=np.float64).reshape(-1, 3), np.asarray(site, dtype=np.float64),
            np.asarray(chans, dtype=np.float64).reshape(-1, len(LOCATION_COLS)))


# --- scan ------------------------------------------------------------------------------------------------------------


def scan_series(series_dir: Path, manifest: Any, run: recipe.Runner, fold: int, tiles: Sequence[int],
                dense_k: int) -> dict[str, Any]:
    """One series through fold ``fold``'s models: the kernel's candidates and sites (``probs``, ``moved``, ``site``,
    ``chans``: what ``recipe.fuse`` needs), then the scan for each tile count in ``tiles`` (none: no scan)."""
    from kernel.preprocess import normalise, normaliser, prepare_volume, reverse_z

    pick = lambda role: [s for s in manifest.models(role) if s.fold == fold]  # noqa: E731
    loc, cls, fine = pick("locator"), pick("classifier"), pick("fine")
    if not (loc and cls and fine):
        raise ValueError(f"fold {fold} needs a locator, a classifier and a fine model in the manifest")
    spec = fine[0]
    t0 = time.perf_counter()
    vol = prepare_volume(series_dir, manifest.volume_spacing_mm, max_voxels=manifest.max_voxels, keep_native=True)
    scheme = manifest.scheme(vol.modality)
    native = replace(vol.native, normalise=normaliser(scheme, vol.array))
    array, centre, reversed_z = recipe.locate_upright(normalise(vol.array, scheme), vol.affine, loc, run,
                                                      vol.geometry_known)
    if reversed_z:
        native = reverse_z(native)
    out = recipe.classify(array, vol.affine, centre, cls, run, True)
    if out.heatmap is None:
        raise ValueError("the classifier returns no heatmap")
    points, chans = recipe.heatmap_candidates(out.heatmap, out.heatmap_affine, out.heatmap_stride, spec.candidates,
                                              spec.candidate_min_distance_mm)
    moved, found = recipe.recentre(native, points, fine, run)
    site = recipe.fine_probs(native, moved, fine, run, True, found)
    t1 = time.perf_counter()
    record = {"probs": out.probs, "modality": vol.modality, "candidates": points, "moved": moved, "chans": chans,
              "site": site}
    if not tiles:
        return {**record, "scan": {}, "seconds": {"total": t1 - t0, "scan": 0.0}}
    crop_spacing = float(cls[0].spacing_mm[0])
    tile_mm = TILE_CELLS * spec.output_stride * float(spec.spacing_mm[0])
    tiles_lps, tile_heat = tile_centres(cls[0].input_shape, out.heatmap_affine, crop_spacing, tile_mm,
                                        out.heatmap.max(axis=0), out.heatmap_stride, max(tiles))
    cells, logits, owner = scan_peaks(native, tiles_lps, spec, run)
    t_scan = time.perf_counter() - t1
    scans = {}
    for n_tiles in tiles:
        sel = np.flatnonzero(owner < n_tiles)
        top = sel[np.argsort(logits[sel])[::-1][:4000]]
        cand = top[nms(cells[top], logits[top], dense_k, spec.candidate_min_distance_mm)]
        peaks = top[nms(cells[top], logits[top], 40, 4.0)]
        s_moved, s_found = recipe.recentre(native, cells[cand], fine, run)
        scans[n_tiles] = {"points": cells[cand], "ball": logits[cand], "moved": s_moved,
                          "site": recipe.fine_probs(native, s_moved, fine, run, True, s_found),
                          "chans": heat_channels(out.heatmap, out.heatmap_affine, out.heatmap_stride, s_moved),
                          "peaks40": cells[peaks]}
    return {**record, "scan": scans, "tiles": tiles_lps, "tile_heat": tile_heat,
            "seconds": {"total": time.perf_counter() - t0, "scan": t_scan}}


def cmd_scan(args: argparse.Namespace) -> int:
    from kernel.ensemble import Ensemble
    from kernel.manifest import load_manifest

    manifest = load_manifest(args.weights)
    ensemble = Ensemble(manifest, providers=["CPUExecutionProvider"], threads=args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for fold in args.fold:
        oof = args.weights / f"oof_fine_f{fold}.csv"
        if not oof.is_file():
            raise FileNotFoundError(f"{oof} is missing: the fold's validation series are read from it")
        uids = pd.read_csv(oof, usecols=[ID_COL])[ID_COL].tolist()[: args.limit or None]
        path = args.out / f"fold{fold}.pkl"
        done = pickle.loads(path.read_bytes()) if path.is_file() else {}
        todo = [u for u in uids if u not in done]
        for n, uid in enumerate(tqdm(todo, desc=f"scan fold {fold}", mininterval=10)):
            done[uid] = scan_series(args.data / "series" / uid, manifest, ensemble.run, fold, args.tiles,
                                    args.dense_k)
            if n % 20 == 19 or n == len(todo) - 1:
                path.write_bytes(pickle.dumps(done))
    return 0


# --- report ----------------------------------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    from kernel.metric import evaluate_predictions, roc_auc
    from train_offline.domes import DOME_BANDS, band_of, candidate_recall, load_domes
    from train_offline.fine import best_pair

    train = pd.read_csv(args.data / "train.csv").set_index(ID_COL)
    domes = load_domes(args.data)
    folds = {k: pickle.loads((args.out / f"fold{k}.pkl").read_bytes()) for k in args.fold}
    uids = [u for res in folds.values() for u in res]
    bands = [b for b, _, _ in DOME_BANDS]

    def recall_row(name: str, pick) -> None:
        rec = candidate_recall({u: pick(res[u]) for res in folds.values() for u in res}, domes, uids, 5.0)
        print(f"| {name} | " + " | ".join(f"{rec[b]['within_radius_2mm']:.2f}" if b in rec else "" for b in
                                          [*bands, "all"]) + " |")

    print(f"candidate recall (within dome radius + 2 mm), {len(uids)} series, folds {args.fold}")
    print("| candidates | " + " | ".join([*bands, "all"]) + " |\n|---|" + "---|" * (len(bands) + 1))
    recall_row("heatmap peaks, as found", lambda r: r["candidates"])
    recall_row("heatmap peaks, moved (shipped)", lambda r: r["moved"])
    for n_tiles in args.tiles:
        for m in args.m:
            recall_row(f"{n_tiles} tiles: scan top {m}", lambda r, n=n_tiles, m=m: r["scan"][n]["moved"][:m])
            recall_row(f"{n_tiles} tiles: shipped + scan top {m}", lambda r, n=n_tiles, m=m: union_sites(r, n, m)[0])
        recall_row(f"{n_tiles} tiles: 40 ball peaks (4 mm apart)", lambda r, n=n_tiles: r["scan"][n]["peaks40"])

    # candidate-level: a site within 5 mm of an aneurysm centre is positive
    def near(uid: str, points: np.ndarray) -> np.ndarray:
        centres = np.array([d.centre_lps for d in domes.get(uid, [])]).reshape(-1, 3)
        if not len(centres) or not len(points):
            return np.zeros(len(points), dtype=bool)
        return (np.linalg.norm(np.asarray(points)[:, None] - centres[None], axis=-1) <= 5.0).any(axis=1)

    for n_tiles in args.tiles:
        for m in args.m:
            hy = np.concatenate([near(u, r["moved"]) for res in folds.values() for u, r in res.items()])
            hp = np.concatenate([r["site"] for res in folds.values() for r in res.values()])
            sy = np.concatenate([near(u, r["scan"][n_tiles]["moved"][:m]) for res in folds.values()
                                 for u, r in res.items()])
            sp = np.concatenate([r["scan"][n_tiles]["site"][:m] for res in folds.values() for r in res.values()])
            print(f"site AUC (a site within 5 mm of an aneurysm): heatmap peaks {roc_auc(hy.astype(int), hp):.3f} "
                  f"({int(hy.sum())} of {len(hy)}); {n_tiles} tiles scan top {m} {roc_auc(sy.astype(int), sp):.3f} "
                  f"({int(sy.sum())} of {len(sy)})")

    grid = [float(w) for w in args.fusion_grid]
    labels_all = np.concatenate([train.loc[list(res), LABEL_COLS].to_numpy(float) for res in folds.values()])
    modalities = [m for res in folds.values() for m in train.loc[list(res), "Modality"]]
    largest = np.array([band_of(max(d.dome_mm for d in domes[u])) if domes.get(u) else "" for u in uids])

    def variant(name: str, sites, heat_grid: Sequence[float]) -> None:
        chosen, rows = [], []
        for res in folds.values():
            fold_uids = list(res)
            y = train.loc[fold_uids, LABEL_COLS].to_numpy(float)
            mods = train.loc[fold_uids, "Modality"].tolist()
            per_pair = {}
            fold_sites = {u: sites(res[u]) for u in fold_uids}
            for h, w in itertools.product(heat_grid, grid):
                probs = np.stack([recipe.fuse(res[u]["probs"], fold_sites[u][2], fold_sites[u][1], w, h)
                                  for u in fold_uids])
                per_pair[(w, h)] = (evaluate_predictions(y, probs, mods)["score"], probs)
            best = best_pair({pair: score for pair, (score, _) in per_pair.items()})
            chosen.append(best)
            rows.append(per_pair[best][1])
        probs = np.concatenate(rows)
        ev = evaluate_predictions(labels_all, probs, modalities)
        present = labels_all[:, -1]
        by = []
        for band in bands:
            keep = (present == 0) | (largest == band)
            by.append(f"{roc_auc(present[keep].astype(int), probs[keep, -1]):.3f}"
                      if ((present == 1) & (largest == band)).any() else "")
        pairs = ", ".join(f"({w:g}, {h:g})" for w, h in chosen)
        print(f"| {name} | {ev['score']:.4f} / {ev['auc_present']:.4f} | {' / '.join(by)} | {pairs} |")

    heat = [float(h) for h in args.heat_grid]
    print("\npooled out of fold, (fusion weight, heat weight) chosen per fold")
    print("| sites | score / AUC(present) | by dome " + " / ".join(bands) + " | (weight, heat) per fold |\n"
          "|---|---|---|---|")
    shipped = lambda r: (r["moved"], r["site"], r["chans"])  # noqa: E731
    variant("heatmap peaks (shipped)", shipped, [0.0])
    variant("heatmap peaks, heat weight chosen", shipped, heat)
    for n_tiles, m in itertools.product(args.tiles, args.m):
        variant(f"+ {n_tiles} tiles scan top {m}", lambda r, n=n_tiles, m=m: union_sites(r, n, m), [0.0])
        variant(f"+ {n_tiles} tiles scan top {m}, heat weight chosen",
                lambda r, n=n_tiles, m=m: union_sites(r, n, m), heat)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train_offline.scan", description=__doc__.split("\n\n")[0],
                                     epilog="e.g. python -m train_offline.scan scan --fold 0 1 2, then "
                                            "python -m train_offline.scan report --tiles 32 --m 2 4 10")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--weights", type=Path, default=Path("weights"), help="exported weights (default weights)")
    common.add_argument("--data", type=Path, default=Path("data/phantoms/real_train"),
                        help="training data root: series/, train.csv, phantom_truth.jsonl")
    common.add_argument("--out", type=Path, default=Path("runs/scan"), help="pickles folder (default runs/scan)")
    common.add_argument("--fold", type=int, nargs="+", default=[0, 1, 2], help="folds (default 0 1 2)")
    common.add_argument("--tiles", type=int, nargs="+", default=[32, 64, 96],
                        help="tile counts scanned (the strongest by heatmap; default 32 64 96)")
    sub = parser.add_subparsers(dest="command", required=True)
    scan = sub.add_parser("scan", parents=[common], help="scan each fold's validation series (resumable)")
    scan.add_argument("--dense-k", type=int, default=10, help="scan candidates kept a series (default 10)")
    scan.add_argument("--limit", type=int, default=0, help="first N validation series of each fold (0: all)")
    scan.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default 2)")
    report = sub.add_parser("report", parents=[common], help="recall and pooled out-of-fold tables from the pickles")
    report.add_argument("--m", type=int, nargs="+", default=[2, 4, 10], help="scan candidates added (default 2 4 10)")
    report.add_argument("--fusion-grid", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0],
                        help="fusion weights tried per fold (default 0 0.25 0.5 0.75 1)")
    report.add_argument("--heat-grid", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0, 2.0],
                        help="site heat weights tried per fold ('heat weight chosen' rows; default 0 0.25 0.5 1 2)")
    args = parser.parse_args(argv)
    try:
        return cmd_scan(args) if args.command == "scan" else cmd_report(args)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"scan failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
