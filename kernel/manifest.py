"""Read and validate ``weights/manifest.json``: the settings that travel with the ONNX weights.

The kernel hard-codes none of them: label order, priors (the fallback row), spacing, normalisation schemes, the voxel
budget and every model's input contract come from here. Schema: docs/reference/manifest.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel.labels import LABEL_COLS, MODALITY_NAMES

__all__ = [
    "KAGGLE_INPUT", "MANIFEST_NAME", "WEIGHTS_ENV", "Manifest", "ManifestError", "ModelSpec", "find_weights_dir",
    "load_manifest", "sha256_file", "validate_manifest",
]

MANIFEST_NAME = "manifest.json"
WEIGHTS_ENV = "RSNA_WEIGHTS_DIR"
KAGGLE_INPUT = Path("/kaggle/input")
FORMAT_VERSION = 1
_ROLES = ("locator", "classifier", "fine")
_REQUIRED_ROLES = ("locator", "classifier")
_SKIP_DIRS = {"series", "segmentations", "kaggle_evaluation", "__pycache__"}
_REPO_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


class ManifestError(ValueError):
    """The manifest is missing, malformed, or does not match the weight files. The message lists every problem."""


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (weights can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive_list(value: Any, n: int, integer: bool) -> bool:
    kind = int if integer else int | float
    return (
        isinstance(value, list) and len(value) == n
        and all(isinstance(v, kind) and not isinstance(v, bool) and v > 0 for v in value)
    )


@dataclass(frozen=True)
class ModelSpec:
    """One model entry of the manifest: its file and its input/output contract (docs/reference/manifest.md).

    Export writes it (``to_dict``), the manifest validates it (``parse``), the recipe reads its fields. Locators map a
    whole-volume input to one heatmap at ``output_stride``; classifiers map a crop centred at the locator's centre +
    ``centre_offset_lps_mm`` to (logits, modality_logits[, heatmap]), with left/right flip TTA when ``flip_tta``; the
    optional third output is the 13-channel location heatmap at ``output_stride`` that candidates are read from. Fine
    models (optional) map a patch sampled from the native stack around each of ``candidates`` candidate sites (peaks
    of the classifiers' heatmap at least ``candidate_min_distance_mm`` apart) to one logit, P(aneurysm at the site);
    ``fusion_weight`` is their weight against the classifiers' in logit space (``kernel.recipe.fuse``). A fine model
    may also return its sphere map (logits per cell at ``output_stride``); with ``recentre_max_mm`` > 0 each
    candidate is first moved to the map's maximum within that distance (``kernel.recipe.recentre``); with
    ``recentre_view`` the logit of that move's patch (unflipped, at the found point) is one more view of the candidate's
    score, next to the moved patch (and its mirror with ``flip_tta``). ``site_heatmap_weight`` adds that many times the
    candidate's heatmap cell logit (its strongest channel) to each site's logit before fusion: where the classifier
    saw a vessel site, the patch model's answer counts more.
    """

    name: str
    role: str  # "locator" or "classifier"
    fold: int
    input_name: str
    input_shape: tuple[int, int, int]  # (z, y, x)
    spacing_mm: tuple[float, float, float]  # (z, y, x)
    output_names: tuple[str, ...]  # locator: (heatmap,); classifier: (logits, modality_logits)
    output_stride: int = 1  # locator / classifier heatmap cell = output_stride input voxels
    flip_tta: bool = True  # classifier: also run the left/right mirrored crop, labels swapped back
    centre_offset_lps_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)  # classifier crop centre - locator centre
    candidates: int = 0  # fine: candidate sites per series
    candidate_min_distance_mm: float = 0.0  # fine: non-maximum suppression radius between candidates
    fusion_weight: float = 0.0  # fine: weight of the fine logit against the classifiers' (0..1)
    recentre_max_mm: float = 0.0  # fine: move each candidate up to this far to its sphere-map maximum (0: off)
    recentre_view: bool = False  # fine (moving): the move's own patch, at the found point, also scores the candidate
    site_heatmap_weight: float = 0.0  # fine: site logit + this x its heatmap cell's strongest channel logit
    file: str = ""  # ONNX file name inside the weights folder
    sha256: str = ""
    validation: dict[str, Any] = field(default_factory=dict)  # scores recorded at export
    config: dict[str, Any] | None = None  # the training config (provenance; the kernel reads none of it)
    git_commit: str = ""
    opset: int | None = None
    parity_max_abs: float | None = None

    @property
    def recentres(self) -> bool:
        """A fine model that moves the candidates before they are scored: it returns its sphere map and sets a
        distance (``kernel.recipe.recentre``; the manifest refuses a distance without the map)."""
        return self.recentre_max_mm > 0 and len(self.output_names) > 1

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON object for this model (locators keep the single ``output_name`` key)."""
        out: dict[str, Any] = {
            "name": self.name, "role": self.role, "file": self.file, "sha256": self.sha256,
            "input_name": self.input_name, "input_shape": [int(v) for v in self.input_shape],
            "spacing_mm": [float(v) for v in self.spacing_mm],
        }
        if self.role == "locator":
            out.update(output_name=self.output_names[0], output_stride=int(self.output_stride))
        elif self.role == "classifier":
            out.update(output_names=list(self.output_names), flip_tta=bool(self.flip_tta),
                       centre_offset_lps_mm=[float(v) for v in self.centre_offset_lps_mm])
            if len(self.output_names) > 2:
                out.update(output_stride=int(self.output_stride))
        else:
            out.update(output_names=list(self.output_names), flip_tta=bool(self.flip_tta),
                       candidates=int(self.candidates),
                       candidate_min_distance_mm=float(self.candidate_min_distance_mm),
                       fusion_weight=float(self.fusion_weight))
            if self.site_heatmap_weight:  # entries from before the setting keep their shape
                out.update(site_heatmap_weight=float(self.site_heatmap_weight))
            if len(self.output_names) > 1:
                out.update(output_stride=int(self.output_stride), recentre_max_mm=float(self.recentre_max_mm),
                           recentre_view=bool(self.recentre_view))
        out.update(validation=dict(self.validation), parity_max_abs=self.parity_max_abs, fold=int(self.fold),
                   config=self.config, git_commit=self.git_commit, opset=self.opset)
        return out

    @staticmethod
    def parse(i: int, model: Any) -> tuple[ModelSpec | None, list[str]]:
        """(spec, []) for a valid ``models[i]`` object, else (None, every problem found). Keys renamed since
        (``RENAMED_KEYS``) are read under their old names too."""
        where = f"models[{i}]"
        if not isinstance(model, dict):
            return None, [f"{where} must be an object"]
        model = current_keys(model)
        problems = _common_problems(where, model)
        role = model.get("role")
        where = f"{where} ({model.get('name', '?')})"
        problems += _ROLE_CHECKS.get(role, lambda _w, _m: [])(where, model)
        if role in ("classifier", "fine") and not isinstance(model.get("flip_tta", True), bool):
            problems.append(f"{where}.flip_tta must be true or false")
        if not isinstance(model.get("validation", {}), dict):
            problems.append(f"{where}.validation must be an object")
        if problems:
            return None, problems
        return _spec_from(model), []


# Manifest keys renamed since weights were first exported: old name -> current name (both are read).
RENAMED_KEYS = {"heat_weight": "site_heatmap_weight", "score_found": "recentre_view"}


def current_keys(model: dict[str, Any]) -> dict[str, Any]:
    """A model entry with renamed keys under their current names (a current key wins over its old name)."""
    out = dict(model)
    for old, new in RENAMED_KEYS.items():
        if old in out:
            value = out.pop(old)
            out.setdefault(new, value)
    return out


def _stride_ok(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _common_problems(where: str, model: dict[str, Any]) -> list[str]:
    """Problems of the keys every role has: names, file, checksum, fold, input."""
    problems = []
    for key in ("name", "file", "role"):
        if not isinstance(model.get(key), str) or not model.get(key):
            problems.append(f"{where}.{key} must be a non-empty string")
    role = model.get("role")
    where = f"{where} ({model.get('name', '?')})"
    if role not in _ROLES:
        problems.append(f"{where}.role must be one of {_ROLES}, got {role!r}")
    if isinstance(model.get("file"), str) and (os.path.isabs(model["file"]) or ".." in Path(model["file"]).parts):
        problems.append(f"{where}.file must be a plain name inside the weights folder, got {model['file']!r}")
    sha = model.get("sha256")
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        problems.append(f"{where}.sha256 must be 64 lower-case hex digits")
    if not isinstance(model.get("fold"), int) or isinstance(model.get("fold"), bool):
        problems.append(f"{where}.fold must be an integer")
    if not isinstance(model.get("input_name"), str):
        problems.append(f"{where}.input_name must be a string")
    if not _positive_list(model.get("input_shape"), 3, integer=True):
        problems.append(f"{where}.input_shape must be 3 positive integers (z, y, x), got "
                        f"{model.get('input_shape')!r}")
    if not _positive_list(model.get("spacing_mm"), 3, integer=False):
        problems.append(f"{where}.spacing_mm must be 3 positive numbers (z, y, x), got {model.get('spacing_mm')!r}")
    return problems


def _locator_problems(where: str, model: dict[str, Any]) -> list[str]:
    problems = []
    if not isinstance(model.get("output_name"), str):
        problems.append(f"{where}.output_name must be a string")
    stride = model.get("output_stride")
    if not _stride_ok(stride):
        problems.append(f"{where}.output_stride must be a positive integer")
    elif _positive_list(model.get("input_shape"), 3, integer=True) and any(s % stride for s in model["input_shape"]):
        problems.append(f"{where}.input_shape {model['input_shape']} is not divisible by output_stride {stride}")
    return problems


def _classifier_problems(where: str, model: dict[str, Any]) -> list[str]:
    problems = []
    names = model.get("output_names")
    if not (isinstance(names, list) and len(names) in (2, 3) and all(isinstance(n, str) for n in names)):
        problems.append(f"{where}.output_names must be [logits, modality_logits] or [logits, "
                        f"modality_logits, heatmap] names")
    elif len(names) == 3 and not _stride_ok(model.get("output_stride")):
        problems.append(f"{where}.output_stride must be a positive integer with a heatmap output")
    offset = model.get("centre_offset_lps_mm", [0.0, 0.0, 0.0])
    if not (isinstance(offset, list) and len(offset) == 3 and all(_is_number(v) for v in offset)):
        problems.append(f"{where}.centre_offset_lps_mm must be 3 numbers (LPS mm), got {offset!r}")
    return problems


def _fine_problems(where: str, model: dict[str, Any]) -> list[str]:
    problems = []
    names = model.get("output_names")
    with_map = isinstance(names, list) and len(names) == 2
    if not (isinstance(names, list) and len(names) in (1, 2) and all(isinstance(n, str) for n in names)):
        problems.append(f"{where}.output_names must be [logit] or [logit, sphere map] names")
    elif with_map and not _stride_ok(model.get("output_stride")):
        problems.append(f"{where}.output_stride must be a positive integer with a sphere-map output")
    recentre = model.get("recentre_max_mm", 0.0)
    if not (_is_number(recentre) and recentre >= 0):
        problems.append(f"{where}.recentre_max_mm must be a number >= 0")
    elif recentre > 0 and not with_map:
        problems.append(f"{where}.recentre_max_mm > 0 needs the sphere-map output (output_names [logit, map])")
    view = model.get("recentre_view", False)
    if not isinstance(view, bool):
        problems.append(f"{where}.recentre_view must be true or false")
    elif view and not (_is_number(recentre) and recentre > 0):
        problems.append(f"{where}.recentre_view needs a move (recentre_max_mm > 0): it scores the move's patch")
    k = model.get("candidates")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        problems.append(f"{where}.candidates must be a positive integer")
    if not (_is_number(model.get("candidate_min_distance_mm")) and model["candidate_min_distance_mm"] >= 0):
        problems.append(f"{where}.candidate_min_distance_mm must be a number >= 0")
    if not (_is_number(model.get("fusion_weight")) and 0.0 <= model["fusion_weight"] <= 1.0):
        problems.append(f"{where}.fusion_weight must be a number in [0, 1]")
    heat = model.get("site_heatmap_weight", 0.0)
    if not (_is_number(heat) and heat >= 0.0):
        problems.append(f"{where}.site_heatmap_weight must be a number >= 0")
    return problems


_ROLE_CHECKS = {"locator": _locator_problems, "classifier": _classifier_problems, "fine": _fine_problems}


def _spec_from(model: dict[str, Any]) -> ModelSpec:
    """The ModelSpec of a model entry that passed the checks."""
    locator = model["role"] == "locator"
    z, y, x = (int(v) for v in model["input_shape"])
    dz, dy, dx = (float(v) for v in model["spacing_mm"])
    off_l, off_p, off_s = (float(v) for v in model.get("centre_offset_lps_mm", (0.0, 0.0, 0.0)))
    return ModelSpec(
        name=model["name"], role=model["role"], fold=int(model["fold"]), input_name=model["input_name"],
        input_shape=(z, y, x), spacing_mm=(dz, dy, dx),
        output_names=(model["output_name"],) if locator else tuple(model["output_names"]),
        output_stride=int(model.get("output_stride", 1)),
        flip_tta=bool(model.get("flip_tta", True)), centre_offset_lps_mm=(off_l, off_p, off_s),
        candidates=int(model.get("candidates", 0)),
        candidate_min_distance_mm=float(model.get("candidate_min_distance_mm", 0.0)),
        fusion_weight=float(model.get("fusion_weight", 0.0)),
        site_heatmap_weight=float(model.get("site_heatmap_weight", 0.0)),
        recentre_max_mm=float(model.get("recentre_max_mm", 0.0)),
        recentre_view=bool(model.get("recentre_view", False)),
        file=model["file"], sha256=model["sha256"], validation=dict(model.get("validation", {})),
        config=model.get("config"), git_commit=str(model.get("git_commit", "")), opset=model.get("opset"),
        parity_max_abs=model.get("parity_max_abs"),
    )


def validate_manifest(manifest: dict[str, Any]) -> None:
    """Raise ManifestError listing every schema problem of a manifest dict (the export code calls this too)."""
    if not isinstance(manifest, dict):
        raise ManifestError(f"manifest must be a JSON object, got {type(manifest).__name__}")
    problems = []
    if manifest.get("format_version") != FORMAT_VERSION:
        problems.append(f"format_version must be {FORMAT_VERSION}, got {manifest.get('format_version')!r}")
    if manifest.get("label_cols") != LABEL_COLS:
        problems.append("label_cols must equal kernel.labels.LABEL_COLS (same 14 names, same order)")
    if manifest.get("modality_names") != MODALITY_NAMES:
        problems.append(f"modality_names must equal {MODALITY_NAMES}")
    priors = manifest.get("label_priors")
    if not (isinstance(priors, list) and len(priors) == len(LABEL_COLS)
            and all(_is_number(p) and 0.0 <= p <= 1.0 for p in priors)):
        problems.append(f"label_priors must be {len(LABEL_COLS)} numbers in [0, 1]")
    if not _positive_list(manifest.get("volume_spacing_mm"), 3, integer=False):
        problems.append("volume_spacing_mm must be 3 positive numbers (z, y, x)")
    norm = manifest.get("normalisation")
    if not (isinstance(norm, dict) and all(isinstance(norm.get(m), str) for m in ("CT", "MR"))):
        problems.append("normalisation must map 'CT' and 'MR' to scheme names")
    max_voxels = manifest.get("max_voxels")
    if max_voxels is not None and (not isinstance(max_voxels, int) or isinstance(max_voxels, bool) or max_voxels < 1):
        problems.append("max_voxels must be a positive integer or absent")
    models = manifest.get("models")
    if not isinstance(models, list):
        problems.append("models must be a list")
        models = []
    for i, model in enumerate(models):
        problems.extend(ModelSpec.parse(i, model)[1])
    names = [m.get("name") for m in models if isinstance(m, dict)]
    duplicates = sorted({n for n in names if names.count(n) > 1 and isinstance(n, str)})
    if duplicates:
        problems.append(f"model names must be unique; repeated: {duplicates}")
    roles = [m.get("role") for m in models if isinstance(m, dict)]
    for role in _REQUIRED_ROLES:
        if role not in roles:
            problems.append(f"models must include at least one {role}")
    if problems:
        raise ManifestError("invalid manifest:\n  - " + "\n  - ".join(problems))


def _kaggle_candidates(root: Path, max_depth: int = 4) -> list[Path]:
    """Folders under /kaggle/input that hold a manifest (datasets mount one to a few levels deep).

    A bounded walk that never enters ``series``/``segmentations`` (the competition mount: a million DICOM files).
    """
    found, level = [], [root] if root.is_dir() else []
    for _ in range(max_depth + 1):
        below = []
        for folder in level:
            if (folder / MANIFEST_NAME).is_file():
                found.append(folder)
            try:
                below.extend(sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in _SKIP_DIRS))
            except OSError:
                continue
        level = below
    return found


def find_weights_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where the weights live: ``explicit``, else $RSNA_WEIGHTS_DIR, else a /kaggle/input dataset with a manifest,
    else ``<repo>/weights``. Raises ManifestError when the chosen folder has no manifest."""
    if explicit is not None:
        chosen, why = Path(explicit), "the given weights folder"
    elif os.environ.get(WEIGHTS_ENV):
        chosen, why = Path(os.environ[WEIGHTS_ENV]), f"${WEIGHTS_ENV}"
    else:
        candidates = _kaggle_candidates(KAGGLE_INPUT)
        if len(candidates) > 1:
            raise ManifestError(
                f"several weights datasets under {KAGGLE_INPUT}: {[str(c) for c in candidates]}; "
                f"set ${WEIGHTS_ENV} to choose one"
            )
        chosen, why = (candidates[0], "the Kaggle dataset") if candidates else (_REPO_WEIGHTS, "the repository default")
    if not (chosen / MANIFEST_NAME).is_file():
        raise ManifestError(f"no {MANIFEST_NAME} in {chosen} ({why}); set ${WEIGHTS_ENV} or pass --weights")
    return chosen


@dataclass(frozen=True)
class Manifest:
    """A validated manifest and the folder its model files live in."""

    data: dict[str, Any]
    weights_dir: Path

    @property
    def label_priors(self) -> list[float]:
        return [float(p) for p in self.data["label_priors"]]

    @property
    def volume_spacing_mm(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.data["volume_spacing_mm"])  # type: ignore[return-value]

    @property
    def max_voxels(self) -> int | None:
        return self.data.get("max_voxels")

    def scheme(self, dicom_modality: str) -> str:
        """Normalisation scheme for a DICOM Modality ("CT"/"MR"); anything else is treated as MR (no HU scale)."""
        return self.data["normalisation"]["CT" if dicom_modality == "CT" else "MR"]

    def models(self, role: str) -> list[ModelSpec]:
        """Model entries of one role, in fold order."""
        specs = [ModelSpec.parse(i, m)[0] for i, m in enumerate(self.data["models"]) if m["role"] == role]
        return sorted((s for s in specs if s is not None), key=lambda s: (s.fold, s.name))

    def model_path(self, model: ModelSpec) -> Path:
        return self.weights_dir / model.file

    def validation_score(self) -> float | None:
        """Mean classifier validation score recorded at export (None when absent): tells trained from random weights."""
        scores = [m.validation.get("score") for m in self.models("classifier")]
        scores = [float(s) for s in scores if _is_number(s)]
        return sum(scores) / len(scores) if scores else None


def load_manifest(weights_dir: str | os.PathLike[str] | None = None, *, check_hashes: bool = True) -> Manifest:
    """Find, parse and validate the manifest; with ``check_hashes`` also check every model file's sha256."""
    folder = find_weights_dir(weights_dir)
    path = folder / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot parse {path}: {exc}") from exc
    validate_manifest(data)
    problems = []
    for model in data["models"]:
        file = folder / model["file"]
        if not file.is_file():
            problems.append(f"{model['name']}: file {file} is missing")
        elif check_hashes and sha256_file(file) != model["sha256"]:
            problems.append(f"{model['name']}: sha256 of {file} does not match the manifest (stale or corrupt file)")
    if problems:
        raise ManifestError(f"weights in {folder} do not match {MANIFEST_NAME}:\n  - " + "\n  - ".join(problems))
    return Manifest(data=data, weights_dir=folder)
