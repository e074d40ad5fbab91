"""Command line of the fine stage: ``python -m train_offline.fine --config demo --fold 0 [1 2] [--resume]``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from train_offline.config import ConfigError, load_config, parse_overrides, run_fold_dirs
from train_offline.fine import __doc__ as PACKAGE_DOC
from train_offline.fine.train import train_fine, train_fines


def main(argv: Sequence[str] | None = None) -> int:
    intro, examples = PACKAGE_DOC.split("\n\n")[:2]
    parser = argparse.ArgumentParser(prog="python -m train_offline.fine", description=intro, epilog=examples,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo", help="config name in train_offline/configs or a YAML path")
    parser.add_argument("--fold", type=int, nargs="+", default=[0],
                        help="validation fold(s) (default 0); several, e.g. --fold 0 1 2, find every fold's sites "
                             "first and read each series once for all their boxes, then train fold by fold")
    parser.add_argument("--out", type=Path, help="fold folder (default <train.out_dir>/<name>/fold<K>; one fold)")
    parser.add_argument("--resume", action="store_true", help="keep a finished fine.pt / continue its checkpoint")
    parser.add_argument("--rescore", action="store_true",
                        help="validate a trained fine.pt again (validation series' sites and boxes only) and "
                             "rewrite its summary")
    parser.add_argument("--coarse", type=Path, default=None, metavar="WEIGHTS",
                        help="take the fold's locator and classifier from this exported weights folder (onnxruntime) "
                             "instead of the fold folder's locator.pt / classifier.pt")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes reading DICOM for the native boxes (default 2)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. fine.epochs=12")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, parse_overrides(args.set))
        dirs = run_fold_dirs(config, args.fold, args.out)
        if args.rescore:
            summaries = [train_fine(config, k, d, resume=args.resume, workers=args.workers, coarse=args.coarse,
                                    rescore=True) for k, d in zip(args.fold, dirs, strict=True)]
        else:
            summaries = train_fines(config, args.fold, dirs, resume=args.resume, workers=args.workers,
                                    coarse=args.coarse)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"fine failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    for fold, out, summary in zip(args.fold, dirs, summaries, strict=True):
        v = summary["validation"]
        print(f"fold {fold} fine: val score {v['score']:.4f}, AUC present {v['auc_present']:.4f} at fusion weight "
              f"{summary['fusion_weight']}, site heatmap weight {summary['site_heatmap_weight']} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
