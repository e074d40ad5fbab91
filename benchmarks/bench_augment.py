"""What does nnU-Net's default augmentation cost on the CPU, per training sample, in each stage?

A 48 x 64 x 64 classifier crop at 1.5 mm (with its heatmap and seg targets), a 32^3 locator input at 6 mm (with its
target) and a 32^3 fine patch at 0.6 mm sampled from a 30 mm native box (with its sphere target). Rows: the sample
without augmentation (what training does today), the sample with rotation + scaling done in the sampling (the
targets computed at the same grid), then each intensity transform alone on the sample's image, every transform at
once (probability 1), and the mean cost at the default probabilities. Medians over ``--repeats`` draws, in ms.

    python benchmarks/bench_augment.py [--repeats 25]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernel.preprocess import normaliser  # noqa: E402
from kernel.recipe import locator_base  # noqa: E402
from testkit.training_data import canonical_affine  # noqa: E402
from train_offline.augment import (  # noqa: E402
    Spatial,
    augment_intensity,
    bias_field,
    brightness,
    contrast,
    draw_factor,
    draw_spatial,
    gamma,
    gaussian_blur,
    gaussian_noise,
    low_resolution,
)
from train_offline.config import DEFAULTS  # noqa: E402
from train_offline.data import SeriesRecord, classifier_sample, locator_sample  # noqa: E402
from train_offline.fine.dataset import site_sample  # noqa: E402

AUG = DEFAULTS["classifier"]["augment"]


def median_ms(fn: Callable[[np.random.Generator], object], repeats: int) -> float:
    """Median wall time of ``fn(rng)`` over ``repeats`` calls, each with its own generator (one warm-up call)."""
    fn(np.random.default_rng(0))
    times = []
    for seed in range(repeats):
        rng = np.random.default_rng(seed + 1)
        start = time.perf_counter()
        fn(rng)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def random_spatial(rng: np.random.Generator) -> Spatial:
    """A rotation and a scaling both drawn (the spatial row's cost: the transform always applied)."""
    limit = float(AUG["rotation_deg"])
    az, ay, ax = (float(a) for a in rng.uniform(-limit, limit, 3))
    return Spatial((az, ay, ax), float(rng.uniform(*AUG["scale"])))


def stages() -> dict[str, Callable[[Spatial | None], np.ndarray]]:
    """Per stage: a function building one sample's image and targets (``None``: no spatial draw)."""
    rng = np.random.default_rng(0)
    volume = rng.normal(0.3, 0.1, (120, 160, 160)).astype(np.float32)  # a 1.5 mm head, normalised
    affine = canonical_affine(1.5, volume.shape)
    seg = (rng.random(volume.shape) < 0.02).astype(np.uint8) * 7
    points = [(i, rng.uniform(-30, 30, 3)) for i in range(4)]
    record = SeriesRecord("u", np.zeros(14, np.float32), 0, points, np.zeros(3), "")
    cls_cfg = {**DEFAULTS["classifier"], "input_shape": [48, 64, 64], "spacing_mm": [1.5] * 3,
               "heatmap_sigma_mm": 4.5}
    loc_cfg = {**DEFAULTS["locator"], "input_shape": [32, 32, 32], "spacing_mm": [6.0] * 3}
    base = locator_base(volume, affine, loc_cfg["spacing_mm"])
    box = rng.normal(40, 60, (67, 67, 67)).astype(np.float32)  # a 30 mm native box at 0.45 mm, HU
    box_affine = canonical_affine(0.45, box.shape)
    norm = normaliser("ct_angio", box)
    fine_cfg = {**DEFAULTS["fine"], "input_shape": [32, 32, 32], "spacing_mm": [0.6] * 3}
    return {
        "classifier 48x64x64": lambda s: classifier_sample(volume, affine, np.zeros(3), cls_cfg, record,
                                                           (seg, affine), s)["crop"],
        "locator 32^3": lambda s: locator_sample(base, loc_cfg, np.zeros(3), np.zeros(3), s)[0],
        "fine 32^3": lambda s: site_sample((box, box_affine), norm, np.zeros(3), [np.ones(3)], fine_cfg, s)["patch"],
    }


INTENSITY: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "Gaussian noise": lambda x, r: gaussian_noise(x, r.uniform(*AUG["noise_variance"]), r),
    "Gaussian blur": lambda x, r: gaussian_blur(x, r.uniform(*AUG["blur_sigma_voxels"], 3)),
    "brightness": lambda x, r: brightness(x, draw_factor(r, *AUG["brightness"])),
    "contrast": lambda x, r: contrast(x, draw_factor(r, *AUG["contrast"])),
    "low resolution (linear)": lambda x, r: low_resolution(x, r.uniform(0.5, 0.99), 1),
    "low resolution (cubic)": lambda x, r: low_resolution(x, r.uniform(0.5, 0.99), 3),
    "gamma, inverted": lambda x, r: gamma(x, draw_factor(r, *AUG["gamma"]), invert=True),
    "gamma": lambda x, r: gamma(x, draw_factor(r, *AUG["gamma"])),
    "bias field": lambda x, r: bias_field(x, r.uniform(0, AUG["bias_field_strength"]), r),
}


def table(built: dict[str, Callable[[Spatial | None], np.ndarray]], repeats: int) -> list[tuple[str, list[float]]]:
    """(row, ms per stage) for every row of the table."""
    every = copy.deepcopy(AUG)
    every.update({k: 1.0 for k in every if k.endswith("_p")})
    rows: list[tuple[str, list[float]]] = [
        ("sample, no augmentation (today)", [median_ms(lambda r, b=b: b(None), repeats) for b in built.values()]),
        ("sample with rotation + scaling", [median_ms(lambda r, b=b: b(random_spatial(r)), repeats)
                                            for b in built.values()]),
    ]
    images = {name: build(None) for name, build in built.items()}
    for name, transform in INTENSITY.items():
        rows.append((name, [median_ms(lambda r, x=x, t=transform: t(x, r), repeats) for x in images.values()]))
    rows.append(("every intensity transform (p = 1)",
                 [median_ms(lambda r, x=x: augment_intensity(x, r, every), repeats) for x in images.values()]))

    def defaults(rng: np.random.Generator, build: Callable[[Spatial | None], np.ndarray]) -> np.ndarray:
        return augment_intensity(build(draw_spatial(rng, AUG)), rng, AUG)

    rows.append(("sample + augmentation at the default p (mean)",
                 [mean_ms(lambda r, b=b: defaults(r, b), 4 * repeats) for b in built.values()]))
    return rows


def mean_ms(fn: Callable[[np.random.Generator], object], repeats: int) -> float:
    """Mean wall time (the cost per sample when each transform is drawn with its probability)."""
    fn(np.random.default_rng(0))
    start = time.perf_counter()
    for seed in range(repeats):
        fn(np.random.default_rng(seed + 1))
    return 1000.0 * (time.perf_counter() - start) / repeats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=25)
    args = parser.parse_args()
    built = stages()
    names = list(built)
    print("| transform | " + " | ".join(f"{n} ms" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for row, values in table(built, args.repeats):
        print(f"| {row} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
