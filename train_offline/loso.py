"""Leave-one-style-out: how a recipe trained on some phantom styles does on a style it never saw.

    python -m train_offline.loso [--styles classic labelmap implicit randomised] [--config loso] [--n-train 200]
        [--n-test 100] [--size small] [--out runs/loso] [--variant NAME KEY=VALUE ...] [--set KEY=VALUE ...]
        [--fine] [--workers 2] [--bootstrap 1000] [--resume]

example (two styles at toy size, then an ablation row beside the base one):

    python -m train_offline.loso --styles classic randomised --n-train 60 --n-test 30 --out runs/loso_toy
    python -m train_offline.loso --styles classic randomised --n-train 60 --n-test 30 --out runs/loso_toy --resume \\
        --variant augment classifier.augment.enabled=true locator.augment.enabled=true

Steps, each run as the command a user would type and skipped when its output exists (and is newer than its inputs),
so an interrupted run continues with ``--resume``, across sessions:

1. data: one mixed training set over the styles (``--n-train`` per style on average: each series' style drawn by
   ``phantoms.generate.series_style``) and one test split per style (``--n-test``, the same seed for every style: the
   same labels and protocols, drawn by each renderer), then the training set pre-cached at the config's
   spacing. One set, cache, index and folds file serve every model.
2. train: for each variant (``base``: the config as it is; ``--variant NAME KEY=VALUE ...``: with those overrides),
   the model on every style (``all``) and one per held-out style (``without_<style>``), through
   ``train_offline.train --resume`` with ``data.styles``: fold 0 of the kept styles' series validates, folds 1-4
   train (``--fine`` adds the fine stage).
3. export: each model through ``train_offline.export``.
4. score: every export on every style's test split through the local gateway (``kernel.gateway --details``).
5. table: ``OUT/loso.md`` and ``OUT/loso.json`` (``train_offline.loso_report``), written after every model, so a
   partial run shows the rows it has. ``OUT/loso_steps.jsonl`` records every step's seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from kernel.labels import ID_COL
from train_offline.config import ConfigError, load_config, parse_overrides
from train_offline.loso_report import build_table, load_split, model_name, write_report

__all__ = ["BASE_VARIANT", "TEST_SEED", "TRAIN_SEED", "Loso", "Step", "loso_steps", "main", "run_loso"]

REPO = Path(__file__).resolve().parent.parent
TRAIN_SEED = 4401  # the mixed training set
TEST_SEED = 4402  # every style's test split (the same cases in each)
BASE_VARIANT = "base"
SETTINGS_FILE = "loso_settings.json"


@dataclass
class Loso:
    """One leave-one-style-out study: its data, recipe and variants, and where each piece lives under ``out``."""

    out: Path
    styles: list[str]
    config: str = "loso"
    n_train: int = 200
    n_test: int = 100
    size: str = "small"
    workers: int = 2
    fine: bool = False
    sets: list[str] = field(default_factory=list)
    variants: dict[str, list[str]] = field(default_factory=lambda: {BASE_VARIANT: []})
    bootstrap: int = 1000
    spacing: list[float] | None = None  # the cache's (the config's with --set); None: the config's own

    @property
    def train_dir(self) -> Path:
        return self.out / "data" / "train"

    @property
    def cache_dir(self) -> Path:
        return self.out / "data" / "train_cache"

    def test_dir(self, style: str) -> Path:
        return self.out / "data" / f"test_{style}"

    def run_dir(self, variant: str, model: str) -> Path:
        return self.out / "runs" / variant / model / "fold0"

    def weights_dir(self, variant: str, model: str) -> Path:
        return self.out / "weights" / variant / model

    def details(self, variant: str, model: str, style: str) -> Path:
        return self.out / "details" / variant / model / f"{style}.jsonl"

    def models(self) -> list[tuple[str, list[str]]]:
        """(model name, the styles it trains on): every style, then each one held out."""
        return [(model_name(None), list(self.styles))] + [
            (model_name(held), [s for s in self.styles if s != held]) for held in self.styles]

    def settings(self) -> dict[str, Any]:
        """What the outputs depend on (``loso_settings.json``): a resumed run must agree with it."""
        return {"styles": self.styles, "n_train": self.n_train, "n_test": self.n_test, "size": self.size,
                "train_seed": TRAIN_SEED, "test_seed": TEST_SEED, "config": self.config, "fine": self.fine,
                "set": self.sets, "variants": self.variants}


@dataclass
class Step:
    """One command; done when ``done()`` says so. ``rename``: (written, final) moved once the command succeeds, so a
    killed command leaves no output that looks finished."""

    name: str
    argv: list[str]
    done: Callable[[], bool]
    rename: tuple[Path, Path] | None = None


def fresh(outputs: Sequence[Path], inputs: Sequence[Path] = ()) -> bool:
    """Every output exists and none is older than an existing input (make's rule)."""
    if not all(p.is_file() for p in outputs):
        return False
    newest_input = max((p.stat().st_mtime for p in inputs if p.is_file()), default=0.0)
    return min(p.stat().st_mtime for p in outputs) >= newest_input


def all_cached(data_dir: Path, cache_dir: Path) -> bool:
    """Every series of ``train.csv`` is in the cache (or listed in its failures.csv)."""
    from train_offline.cache import is_cached

    if not (data_dir / "train.csv").is_file():
        return False
    uids = pd.read_csv(data_dir / "train.csv", dtype={ID_COL: str})[ID_COL]
    failed = set()
    if (cache_dir / "failures.csv").is_file():
        failed = set(pd.read_csv(cache_dir / "failures.csv", dtype={ID_COL: str}).get(ID_COL, []))
    return all(is_cached(cache_dir, u) or u in failed for u in uids)


def data_steps(study: Loso) -> list[Step]:
    """The mixed training set, each style's test split, the training set's cache."""
    py = [sys.executable, "-m"]
    train = study.train_dir
    steps = [Step("phantoms (train, every style)", [
        *py, "train_offline.phantoms", "--out", str(train), "--n", str(study.n_train * len(study.styles)), "--seed",
        str(TRAIN_SEED), "--split", "train", "--size", study.size, "--style", ",".join(study.styles), "--workers",
        str(study.workers), "--quiet"], lambda: (train / "train.csv").is_file())]
    for style in study.styles:
        test = study.test_dir(style)
        steps.append(Step(f"phantoms (test, {style})", [
            *py, "train_offline.phantoms", "--out", str(test), "--n", str(study.n_test), "--seed", str(TEST_SEED),
            "--split", "test", "--size", study.size, "--style", style, "--workers", str(study.workers), "--quiet"],
            lambda test=test: (test / "solution.csv").is_file()))
    steps.append(Step("precache (train)", [
        *py, "train_offline.precache_all", "--config", study.config, "--data", str(train), "--out",
        str(study.cache_dir), "--workers", str(study.workers),
        *(["--spacing", *map(str, study.spacing)] if study.spacing else [])],
        lambda: all_cached(train, study.cache_dir)))
    return steps


def model_steps(study: Loso, variant: str, model: str, kept: Sequence[str]) -> list[Step]:
    """Train one model (``data.styles`` = ``kept``), export it, score it on every style's test split."""
    py = [sys.executable, "-m"]
    data = study.out / "data"
    run, weights = study.run_dir(variant, model), study.weights_dir(variant, model)
    paths = [f"data.root={study.train_dir}", f"data.cache={study.cache_dir}", f"data.index={data / 'train_index.csv'}",
             f"data.folds_csv={data / 'train_folds.csv'}"]
    trained = [run / "summary.json", *([run / "fine_summary.json"] if study.fine else [])]
    manifest = weights / "manifest.json"
    steps = [
        Step(f"train {variant}/{model}", [
            *py, "train_offline.train", "--config", study.config, "--fold", "0", "--out", str(run), "--resume",
            *([] if study.fine else ["--no-fine"]), "--set", *paths, f"data.styles=[{','.join(kept)}]",
            *study.sets, *study.variants[variant]], lambda: fresh(trained)),
        Step(f"export {variant}/{model}", [*py, "train_offline.export", "--run", str(run), "--out", str(weights)],
             lambda: fresh([manifest], trained)),
    ]
    for style in study.styles:
        test, details = study.test_dir(style), study.details(variant, model, style)
        partial = details.with_suffix(".partial")
        steps.append(Step(f"score {variant}/{model} on {style}", [
            *py, "kernel.gateway", "--data", str(test), "--weights", str(weights), "--solution",
            str(test / "solution.csv"), "--details", str(partial), "--out", str(details.with_suffix(".parquet")),
            "--seed", "0", "--no-progress"], lambda d=details: fresh([d], [manifest]), rename=(partial, details)))
    return steps


def loso_steps(study: Loso) -> list[Step]:
    """Every step of the study in order: the data, then per variant and model train, export, score."""
    steps = data_steps(study)
    for variant in study.variants:
        for model, kept in study.models():
            steps += model_steps(study, variant, model, kept)
    return steps


class StepFailed(RuntimeError):
    """A step's command exited with an error."""


def run_step(step: Step, log: Path) -> None:
    """Run a step unless done; its seconds and exit status go to ``log`` (JSON Lines)."""
    if step.done():
        print(f"== {step.name}: done, skipped", flush=True)
        return
    print(f"== {step.name}: {' '.join(step.argv[2:])}", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    status = subprocess.run(step.argv, env=env).returncode
    seconds = round(time.perf_counter() - start, 1)
    with open(log, "a") as fh:
        fh.write(json.dumps({"step": step.name, "seconds": seconds, "status": status}) + "\n")
    if status != 0:
        raise StepFailed(f"step {step.name!r} failed (exit {status}); fix it and rerun with --resume")
    if step.rename is not None:
        step.rename[0].replace(step.rename[1])


def check_settings(study: Loso, resume: bool) -> None:
    """Refuse a second study in the same folder without ``--resume``, and a resume that disagrees with the first;
    then record the settings (variants: the union of every session's)."""
    path = study.out / SETTINGS_FILE
    if path.is_file():
        if not resume:
            raise ConfigError(f"{study.out} holds a loso run: add --resume to continue it, or choose another --out")
        before = json.loads(path.read_text())
        ours = study.settings()
        differs = [k for k in ours if k != "variants" and before.get(k) != ours[k]]
        differs += [f"variant {v}" for v, o in ours["variants"].items() if before["variants"].get(v, o) != o]
        if differs:
            raise ConfigError(f"{study.out} was made with other settings ({', '.join(differs)}: see {path}); "
                              "choose another --out or the same settings")
        study.variants = {**before["variants"], **study.variants}
    study.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(study.settings(), indent=1))


def report(study: Loso) -> str:
    """Build the table from the details files there are and write ``loso.md`` and ``loso.json``."""
    from train_offline.index import series_styles

    splits = {s: load_split(study.test_dir(s), s) for s in study.styles}
    details = {(v, m, s): study.details(v, m, s) for v in study.variants for m, _ in study.models()
               for s in study.styles}
    table = build_table(splits, details, list(study.variants), n_resamples=study.bootstrap)
    counts = pd.Series(series_styles(study.train_dir)).value_counts()
    header = [f"Styles {', '.join(study.styles)}; `{study.size}` phantoms; config `{study.config}`"
              + (f" with `{' '.join(study.sets)}`" if study.sets else "") + ("; with the fine stage" if study.fine
                                                                             else "; locator + classifier") + ".",
              "Series per style in the training set (fold 0 validates, the other folds train): "
              + ", ".join(f"{s} {int(counts.get(s, 0))}" for s in study.styles) + f"; test split: {study.n_test} "
              "series per style, the same labels and protocols in every style (each renderer draws its own domes).",
              "Variants: " + "; ".join(f"`{v}`" + (f" ({' '.join(o)})" if o else " (the config as it is)")
                                       for v, o in study.variants.items()) + ".",
              f"Bootstrap: {study.bootstrap} resamples of the series (seed 0), percentile 95% interval; a resample "
              "in which a column scored by the point estimate is single-class is redrawn."]
    return write_report(study.out, table, study.settings(), header)


def run_loso(study: Loso, resume: bool = False) -> str:
    """Every step (skipping what is done), the table after each model; returns the markdown."""
    check_settings(study, resume)
    log = study.out / "loso_steps.jsonl"
    for step in data_steps(study):
        run_step(step, log)
    text = ""
    for variant in study.variants:
        for model, kept in study.models():
            for step in model_steps(study, variant, model, kept):
                run_step(step, log)
            text = report(study)
    return text


def _variants(raw: Sequence[Sequence[str]] | None) -> dict[str, list[str]]:
    variants: dict[str, list[str]] = {BASE_VARIANT: []}
    for name, *pairs in raw or []:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or name in variants:
            raise ConfigError(f"--variant name {name!r}: letters, digits, _ . - and not {sorted(variants)}")
        if not pairs:
            raise ConfigError(f"--variant {name} needs KEY=VALUE overrides")
        variants[name] = list(pairs)
    return variants


def checked_spacing(config: str, sets: Sequence[str], variants: dict[str, list[str]]) -> list[float]:
    """The cache's spacing (the config's with ``sets``), after loading every variant's config, so a typo fails now,
    not after the data are made. Variants share the data: one touching ``data.*`` or the volume is refused."""
    spacing = [float(v) for v in load_config(config, parse_overrides(sets))["volume_spacing_mm"]]
    for name, overrides in variants.items():
        load_config(config, parse_overrides([*sets, *overrides]))
        shared = [o for o in overrides if o.split("=", 1)[0].startswith(("data.", "volume_spacing_mm", "max_voxels"))]
        if shared:
            raise ConfigError(f"--variant {name}: {shared} would change the shared data or cache (use --set for "
                              "every model, or another --out)")
    return spacing


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train_offline.loso", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--styles", nargs="+", default=["all"],
                        help="the phantom styles: trained on together, each held out once (default: all)")
    parser.add_argument("--config", default="loso", help="the recipe trained (config name or YAML; default loso)")
    parser.add_argument("--n-train", type=int, default=200,
                        help="training series per style, on average (each series' style is drawn; default 200)")
    parser.add_argument("--n-test", type=int, default=100, help="test series per style (default 100)")
    parser.add_argument("--size", choices=["small", "real"], default="small", help="phantom size (default small)")
    parser.add_argument("--out", type=Path, default=Path("runs/loso"), help="work folder (default runs/loso)")
    parser.add_argument("--variant", nargs="+", action="append", metavar="NAME KEY=VALUE",
                        help="a variant of the recipe (repeatable): its name, then config overrides, e.g. --variant "
                             "augment classifier.augment.enabled=true")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides for every model, e.g. classifier.epochs=4")
    parser.add_argument("--fine", action="store_true", help="train the fine stage too (default: locator + classifier)")
    parser.add_argument("--workers", type=int, default=2, help="processes for phantoms and the cache (default 2)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--resume", action="store_true", help="continue the study in --out (each step skips what "
                        "exists; each training resumes from its checkpoints)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from train_offline.phantoms.styles import check_styles

    try:
        styles = check_styles(args.styles)
        if len(styles) < 2 or len(set(styles)) != len(styles):
            raise ConfigError(f"--styles needs two or more different styles, got {styles}")
        if args.n_train < 1 or args.n_test < 2:
            raise ConfigError("--n-train must be at least 1 and --n-test at least 2")
        variants = _variants(args.variant)
        spacing = checked_spacing(args.config, args.set, variants)
        study = Loso(args.out.absolute(), styles, args.config, args.n_train, args.n_test, args.size, args.workers,
                     args.fine, list(args.set), variants, args.bootstrap, spacing)
        start = time.perf_counter()
        text = run_loso(study, resume=args.resume)
    except (ConfigError, ValueError, StepFailed) as exc:
        print(f"loso failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print("\n" + text)
    print(f"loso: {time.perf_counter() - start:.0f} s; {study.out / 'loso.md'}, {study.out / 'loso.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
