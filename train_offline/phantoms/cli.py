"""Command line: write a phantom dataset in the competition layout.

python -m train_offline.phantoms --out DIR --n N --seed S [--split train|test] [--size small|full|real] [--workers W]
    [--style classic|labelmap|implicit|randomised|a,b|all]
"""

from __future__ import annotations

import argparse
import time

from train_offline.phantoms.generate import SPLITS, generate_dataset
from train_offline.phantoms.protocols import SIZES
from train_offline.phantoms.styles import check_styles


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train_offline.phantoms",
        description="Generate synthetic RSNA aneurysm data (DICOM series, CSVs, segmentations) from a seed.",
    )
    p.add_argument("--out", required=True, help="output folder (train.csv / test.csv, series/, ...)")
    p.add_argument("--n", type=int, default=20, help="number of series (default 20)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed; series i uses (seed, i) (default 0)")
    p.add_argument("--split", choices=SPLITS, default="train",
                   help="train: train.csv + localizers + segmentations; test: test.csv + solution.csv, tags stripped")
    p.add_argument("--size", choices=SIZES, default="small",
                   help="small: ~100-160 px at 1.2-2.5 mm, 24-120 slices (tests, quick training); full: 512 px, "
                        "hundreds of slices; real: real voxel sizes at lower cost (CTA/TOF <= 0.7 mm in-plane and "
                        "<= 0.9 mm slices, 3D MR ~1 mm, 2D MR 4-6 mm slices with 0.45-0.9 mm pixels; ~1-2 s a "
                        "series) (default small)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2; output does not depend on it)")
    p.add_argument("--dome-range", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                   help="a training supplement: every series positive, each sac a sphere of a diameter drawn "
                        "uniformly in LOW-HIGH mm (e.g. 2 4 for small domes); use its own --seed")
    p.add_argument("--no-segmentations", action="store_true",
                   help="write no segmentation NIfTIs (they are ~40%% of a real-size train set's bytes)")
    p.add_argument("--style", default="classic",
                   help="renderer: classic (the original), labelmap, implicit, randomised, a comma list of them "
                        "(each series drawn from the list) or all (default classic); styles other than classic "
                        "support --size small and real")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        styles = check_styles(args.style)
    except ValueError as exc:
        parser.error(str(exc))
    t0 = time.perf_counter()
    results = generate_dataset(args.out, args.n, args.seed, split=args.split, size=args.size,
                               workers=args.workers, progress=not args.quiet,
                               dome_range=tuple(args.dome_range) if args.dome_range else None,
                               segmentations=not args.no_segmentations, styles=styles)
    positive = sum(r.labels["Aneurysm Present"] for r in results)
    print(f"wrote {len(results)} {args.split} series ({positive} positive) to {args.out} "
          f"in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
