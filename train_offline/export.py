"""Export trained folds (or randomly initialised models) to ONNX with parity checks and write ``manifest.json``.

    python -m train_offline.export --run runs/demo [--out weights]          # every runs/demo/fold*/ (or one fold dir)
    python -m train_offline.export --random-init --config demo --out DIR    # same path, random weights
    python -m train_offline.export --run runs/demo --keep weights --out DIR # + the folds of an earlier export

Each model is exported with opset 17 (TorchScript exporter, ``dynamo=False``) and a dynamic batch axis, passes the
full ONNX checker, and must match torch through onnxruntime within ``ATOL + RTOL * |torch|`` on a batch of 2. With
``--run`` the validation fold is then re-scored through the kernel's own onnxruntime ensemble on the cached volumes,
and that score goes into the manifest. The manifest follows docs/reference/manifest.md and is validated by
kernel.manifest.
``--keep`` carries over an earlier export's models of the folds the run does not have (an ensemble trained across
sessions: the run folder of earlier folds need not survive), checked by sha256 and for the same volume settings.
A fold folder that holds only a fine stage trained on the kept export's coarse models (``train_offline.fine --coarse
WEIGHTS``: fine_summary.json records their sha256) keeps that fold's locator and classifier and replaces its fine
model.

Each fold's out-of-fold predictions travel with its models: ``oof_classifier_f<K>.csv`` (the fold's ``oof.csv``) and
``oof_fine_f<K>.csv`` (its ``fine_oof.csv``), named in the entry's ``validation.oof_file`` and kept with it, so the
pooled out-of-fold score of every shipped fold stays computable after the run folders are gone::

    python -m train_offline.metric --solution train.csv --submission weights/oof_classifier_f*.csv --only-submitted

(The kernel and ``build_kernel.py`` read only the model files; these CSVs stay out of the Kaggle dataset.)
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from kernel.labels import LABEL_COLS, MODALITY_NAMES
from kernel.manifest import MANIFEST_NAME, ModelSpec, load_manifest, sha256_file, validate_manifest
from train_offline.config import ConfigError, load_config, load_saved_config, renamed, volume_settings_mismatch
from train_offline.evaluate import score_with_onnx
from train_offline.models import (
    ExportClassifier,
    ExportFine,
    build_classifier,
    build_fine,
    build_locator,
    classifier_spec,
    fine_spec,
    locator_spec,
)
from train_offline.provenance import git_commit

__all__ = ["ATOL", "OPSET", "RTOL", "ExportError", "export_folds", "export_model", "export_random",
           "main", "oof_name", "onnx_parity"]

OPSET = 17
ATOL = 1e-4  # onnxruntime vs torch, float32, after GroupNorm: observed differences are ~1e-6
RTOL = 1e-3
REPO = Path(__file__).resolve().parent.parent


class ExportError(RuntimeError):
    """An export failed the checker, the parity test or the manifest schema."""


def onnx_parity(path: Path, model: nn.Module, input_shape: Sequence[int], input_name: str,
                output_names: Sequence[str], seed: int = 0) -> float:
    """Max |onnxruntime - torch| over all outputs on a random batch of 2; raises ExportError beyond tolerance."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    batch = rng.uniform(0.0, 1.0, (2, 1, *input_shape)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(batch))
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(list(output_names), {input_name: batch})
    worst = 0.0
    for name, ref, out in zip(output_names, expected, got, strict=True):
        ref = ref.numpy()
        if ref.shape != out.shape:
            raise ExportError(f"{path.name}: output {name} has shape {out.shape} in onnxruntime, {ref.shape} in torch")
        diff = np.abs(ref - out)
        if not np.all(diff <= ATOL + RTOL * np.abs(ref)):
            raise ExportError(f"{path.name}: output {name} differs from torch by up to {diff.max():.3g} "
                              f"(tolerance {ATOL} + {RTOL} * |torch|)")
        worst = max(worst, float(diff.max()))
    return worst


def export_model(model: nn.Module, path: Path, input_shape: Sequence[int], input_name: str,
                 output_names: Sequence[str]) -> float:
    """ONNX export (opset 17, dynamic batch, dynamo=False) + full checker + parity; returns the parity error."""
    model = model.eval().cpu()
    dummy = torch.zeros(2, 1, *input_shape)  # batch 2: GroupNorm needs >1 value per group at the tiniest scale
    axes = {name: {0: "batch"} for name in (input_name, *output_names)}
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(model, (dummy,), buffer, input_names=[input_name], output_names=list(output_names),
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto, full_check=True)
    outputs = [o.name for o in proto.graph.output]
    if outputs != list(output_names):
        raise ExportError(f"{path.name}: graph outputs {outputs}, expected exactly {list(output_names)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return onnx_parity(path, model, input_shape, input_name, output_names)


def _portable_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config as stored in the manifest (JSON round trip: plain types only)."""
    return json.loads(json.dumps(config))


def _entries(fold: int, locator: nn.Module, classifier: nn.Module, config: Mapping[str, Any], out: Path,
             validation: Mapping[str, Any], commit: str) -> list[ModelSpec]:
    """Export one fold's two models into ``out``; their manifest entries (contract from ``models.*_spec``)."""
    loc_spec = locator_spec(config["locator"], fold)
    cls_spec = classifier_spec(config["classifier"], fold)
    loc_err = export_model(locator, out / f"{loc_spec.name}.onnx", loc_spec.input_shape, loc_spec.input_name,
                           loc_spec.output_names)
    cls_err = export_model(ExportClassifier(classifier), out / f"{cls_spec.name}.onnx", cls_spec.input_shape,
                           cls_spec.input_name, cls_spec.output_names)
    common = {"config": _portable_config(config), "git_commit": commit, "opset": OPSET}
    centre_error = validation.get("centre_error_mm_median")
    return [
        replace(loc_spec, file=f"{loc_spec.name}.onnx", sha256=sha256_file(out / f"{loc_spec.name}.onnx"),
                validation={"centre_error_mm_median": None if centre_error is None else float(centre_error)},
                parity_max_abs=loc_err, **common),
        replace(cls_spec, file=f"{cls_spec.name}.onnx", sha256=sha256_file(out / f"{cls_spec.name}.onnx"),
                validation={**{k: validation.get(k) for k in ("score", "auc_present", "n_series", "score_onnx",
                                                             "auc_present_onnx")},
                            "label_priors": validation.get("label_priors")},
                parity_max_abs=cls_err, **common),
    ]


def build_manifest(config: Mapping[str, Any], models: Sequence[ModelSpec], priors: Sequence[float]) -> dict[str, Any]:
    """Manifest dict per docs/reference/manifest.md; validated by kernel.manifest."""
    manifest = {
        "format_version": 1,
        "label_cols": list(LABEL_COLS),
        "modality_names": list(MODALITY_NAMES),
        "label_priors": [float(p) for p in priors],
        "volume_spacing_mm": [float(s) for s in config["volume_spacing_mm"]],
        "normalisation": dict(config["normalisation"]),
        "max_voxels": int(config["max_voxels"]),
        "opset": OPSET,
        "parity_tolerance": {"atol": ATOL, "rtol": RTOL},
        "models": [spec.to_dict() for spec in models],
    }
    validate_manifest(manifest)
    return manifest


def write_manifest(out: Path, manifest: Mapping[str, Any]) -> Path:
    path = out / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def export_random(config_name: str, out: Path, folds: int = 1, seed: int = 0) -> Path:
    """Randomly initialised locator + classifier per fold through the same export path (for kernel tests)."""
    config = load_config(config_name)
    out.mkdir(parents=True, exist_ok=True)
    models = []
    commit = git_commit()
    for fold in range(folds):
        torch.manual_seed(seed + fold)
        locator, classifier = build_locator(config["locator"]), build_classifier(config["classifier"])
        validation = {"score": 0.5, "auc_present": 0.5, "centre_error_mm_median": None}
        models += _entries(fold, locator, classifier, {**config, "random_init": True}, out, validation, commit)
    priors = [0.03] * (len(LABEL_COLS) - 1) + [0.43]
    return write_manifest(out, build_manifest(config, models, priors))


def _is_fold(path: Path) -> bool:
    return (path / "summary.json").is_file() or (path / "fine_summary.json").is_file()


def fold_dirs(run: Path) -> list[Path]:
    """A fold directory (holds summary.json, or only fine_summary.json: a fine stage on exported coarse models) or a
    run directory with fold*/ children that do."""
    if _is_fold(run):
        return [run]
    found = sorted(p for p in run.glob("fold*") if re.fullmatch(r"fold\d+", p.name) and _is_fold(p))
    if not found:
        raise ExportError(f"{run}: no summary.json here or in fold*/ (train a fold first)")
    return found


def fine_only(fold_dir: Path) -> bool:
    """Whether a fold folder holds a fine stage alone (``train_offline.fine --coarse``), not a trained fold."""
    return not (fold_dir / "summary.json").is_file()


def _no_coarse(fold_dir: Path) -> ExportError:
    return ExportError(f"{fold_dir}: a fine stage without its fold's locator and classifier; export it with --keep "
                       f"the weights folder it was trained on (train_offline.fine --coarse)")


def _fine_on_kept(fold_dir: Path, kept: list[ModelSpec], keep: Path) -> list[ModelSpec]:
    """The kept models without the fold's fine model that a fine-only fold folder replaces; refused unless ``keep``
    holds the very locator and classifier its sites came from."""
    summary = json.loads((fold_dir / "fine_summary.json").read_text())
    fold, provenance = int(summary["fold"]), summary.get("coarse")
    if not provenance:
        raise _no_coarse(fold_dir)
    for role in ("locator", "classifier"):
        match = [s for s in kept if s.fold == fold and s.role == role]
        if len(match) != 1 or match[0].sha256 != provenance[role]["sha256"]:
            raise ExportError(f"{fold_dir}: its sites came from {role} {provenance[role]['name']} (sha256 "
                              f"{provenance[role]['sha256'][:12]}...), which --keep {keep} does not hold for fold "
                              f"{fold}")
    return [s for s in kept if not (s.fold == fold and s.role == "fine")]


def oof_name(role: str, fold: int) -> str:
    """File name of a fold's out-of-fold predictions in a weights folder."""
    return f"oof_{role}_f{fold}.csv"


def _with_oof(spec: ModelSpec, source: Path, out: Path) -> ModelSpec:
    """Copy a fold's out-of-fold CSV next to its model and name it in the entry (unchanged when there is none)."""
    if not source.is_file():
        return spec
    name = oof_name(spec.role, spec.fold)
    shutil.copyfile(source, out / name)
    return replace(spec, validation={**spec.validation, "oof_file": name})


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _fine_entry(fold_dir: Path, config: Mapping[str, Any], out: Path, commit: str) -> ModelSpec:
    """Export a fold's fine model (``train_offline.fine``) with the fusion weight its out-of-fold score chose."""
    summary = json.loads((fold_dir / "fine_summary.json").read_text())
    cfg = renamed({"fine": summary["config"]})["fine"]  # summaries written before a rename keep the old key names
    model = build_fine(cfg)
    model.load_state_dict(_load_state(fold_dir / "fine.pt"))
    heat = summary.get("site_heatmap_weight", summary.get("heat_weight", 0.0))
    spec = fine_spec(cfg, int(summary["fold"]), fusion_weight=float(summary["fusion_weight"]),
                     site_heatmap_weight=float(heat))
    err = export_model(ExportFine(model), out / f"{spec.name}.onnx", spec.input_shape, spec.input_name,
                       spec.output_names)
    validation = {"score": summary["validation"]["score"], "auc_present": summary["validation"]["auc_present"],
                  "score_coarse": summary["scores_by_weight"].get("0.0", {}).get("score"),
                  "n_series": summary["n_val"]}
    return replace(spec, file=f"{spec.name}.onnx", sha256=sha256_file(out / f"{spec.name}.onnx"),
                   validation=validation, parity_max_abs=err, config=_portable_config({**config, "fine": cfg}),
                   git_commit=commit, opset=OPSET)


def export_folds(run: Path, out: Path, rescore: bool = True, keep: Path | None = None) -> Path:
    """Export every trained fold under ``run`` (plus, with ``keep``, an earlier export's other folds) into ``out`` and
    write the manifest (priors: mean over folds)."""
    dirs = fold_dirs(run)
    out.mkdir(parents=True, exist_ok=True)
    models: list[ModelSpec] = []
    priors: list[list[float]] = []
    trained, fines = [d for d in dirs if not fine_only(d)], [d for d in dirs if fine_only(d)]
    if fines and keep is None:
        raise _no_coarse(fines[0])
    if keep is not None:  # before the run's folds are written: ``keep`` may be ``out``
        run_folds = {int(json.loads((d / "summary.json").read_text())["fold"]) for d in trained}
        models, priors = kept_models(keep, run_folds, load_saved_config(dirs[0] / "config.yaml"))
        for fold_dir in fines:
            models = _fine_on_kept(fold_dir, models, keep)
        for spec in models:
            for name in (spec.file, spec.validation.get("oof_file")):
                if name and (keep / name).is_file() and (keep / name).resolve() != (out / name).resolve():
                    shutil.copy2(keep / name, out / name)
    config = None
    commit = git_commit()
    for fold_dir in fines:
        fine_config = load_saved_config(fold_dir / "config.yaml")
        config = config or fine_config
        models.append(_with_oof(_fine_entry(fold_dir, fine_config, out, commit), fold_dir / "fine_oof.csv", out))
    for fold_dir in trained:
        summary = json.loads((fold_dir / "summary.json").read_text())
        config = load_saved_config(fold_dir / "config.yaml")
        locator, classifier = build_locator(config["locator"]), build_classifier(config["classifier"])
        locator.load_state_dict(_load_state(fold_dir / "locator.pt"))
        classifier.load_state_dict(_load_state(fold_dir / "classifier.pt"))
        validation = {**summary["validation"], "label_priors": [float(p) for p in summary["label_priors"]]}
        entries = _entries(int(summary["fold"]), locator, classifier, config, out, validation, commit)
        if rescore:
            with tempfile.TemporaryDirectory() as tmp:
                fold_manifest = build_manifest(config, entries, summary["label_priors"])
                for entry in entries:
                    (Path(tmp) / entry.file).symlink_to((out / entry.file).resolve())
                write_manifest(Path(tmp), fold_manifest)
                onnx_scores = score_with_onnx(Path(tmp), config, summary["val_uids"])
            entries[1] = replace(entries[1], validation={**entries[1].validation, "score_onnx": onnx_scores["score"],
                                                         "auc_present_onnx": onnx_scores["auc_present"]})
            print(f"fold {summary['fold']}: torch score {validation.get('score'):.4f}, "
                  f"onnxruntime score {onnx_scores['score']:.4f}", file=sys.stderr)
        entries[1] = _with_oof(entries[1], fold_dir / "oof.csv", out)
        if (fold_dir / "fine.pt").is_file() and (fold_dir / "fine_summary.json").is_file():
            entries.append(_with_oof(_fine_entry(fold_dir, config, out, commit), fold_dir / "fine_oof.csv", out))
        models += entries
        priors.append(summary["label_priors"])
    assert config is not None
    return write_manifest(out, build_manifest(config, models, np.mean(priors, axis=0).tolist()))


def kept_models(keep: Path, run_folds: set[int],
                config: Mapping[str, Any]) -> tuple[list[ModelSpec], list[list[float]]]:
    """An earlier export's models of the folds not in ``run_folds``, and each kept fold's training priors (recorded
    with its classifier; an export without them records one fold's priors as the manifest's)."""
    manifest = load_manifest(keep)
    mismatch = volume_settings_mismatch(manifest.data, config)
    if mismatch:
        raise ExportError(f"--keep {keep}: {mismatch}: the folds of one ensemble share the volume settings")
    specs = [ModelSpec.parse(i, m)[0] for i, m in enumerate(manifest.data["models"])]
    kept = [s for s in specs if s is not None and s.fold not in run_folds]
    priors = []
    for spec in kept:
        if spec.role == "classifier":
            recorded = spec.validation.get("label_priors")
            priors.append(list(recorded) if recorded is not None else manifest.label_priors)
    if not priors:
        raise ExportError(f"--keep {keep}: every fold it holds is in the run; nothing to keep")
    return kept, priors


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train_offline.export", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="a trained fold dir, or a run dir with fold*/ subdirs")
    source.add_argument("--random-init", action="store_true", help="export randomly initialised models")
    parser.add_argument("--config", default="demo", help="config for --random-init (default: demo)")
    parser.add_argument("--folds", type=int, default=1, help="number of random folds for --random-init (default: 1)")
    parser.add_argument("--out", type=Path, default=REPO / "weights", help="output folder (default: weights/)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="an earlier export (weights folder): its models of folds the run lacks are kept")
    parser.add_argument("--no-rescore", action="store_true", help="skip re-scoring the validation fold via onnxruntime")
    args = parser.parse_args(argv)
    try:
        if args.random_init:
            path = export_random(args.config, args.out, folds=args.folds)
        else:
            path = export_folds(args.run, args.out, rescore=not args.no_rescore, keep=args.keep)
    except (ExportError, ConfigError, FileNotFoundError, ValueError) as exc:  # ManifestError is a ValueError
        print(f"export failed: {exc}", file=sys.stderr)
        return 2
    manifest = json.loads(path.read_text())
    total = sum((path.parent / m["file"]).stat().st_size for m in manifest["models"])
    print(f"wrote {path} ({len(manifest['models'])} models, {total / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
