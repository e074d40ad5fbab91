"""Training configuration: YAML files with inheritance (``base: other.yaml``), checked against a schema of defaults.

Every key must exist in ``DEFAULTS`` (a typo fails loudly with the list of known keys); values keep the defaults'
types; paths are relative (to the repository root or the working directory), never absolute, so a config runs
unchanged on a laptop, a GPU box or Kaggle. The resolved config is saved beside every checkpoint and exported into
the manifest.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CONFIG_DIR", "DEFAULTS", "RENAMED_KEYS", "RETIRED_KEYS", "ConfigError", "drop_retired", "load_config",
    "load_saved_config", "merge", "parse_overrides", "renamed", "resolve_config_path", "run_fold_dirs", "validate",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# nnU-Net's default augmentation (train_offline/augment.py), one copy per stage (locator, classifier, fine): rotation
# and scaling in the sampling (the targets move with the image), then intensity transforms. Off by default.
AUGMENT: dict[str, Any] = {
    "enabled": False,  # off: trains exactly as before; --set <stage>.augment.enabled=true: on
    "rotation_deg": 30.0,  # +- this about each axis, all three drawn together (at most 30: left stays left)
    "rotation_p": 0.2,  # probability of a rotation
    "scale": [0.7, 1.4],  # sampling step x this, one factor for all axes (> 1: more in view, anatomy smaller)
    "scale_p": 0.2,  # probability of a scaling
    "noise_variance": [0.0, 0.1],  # additive Gaussian noise, variance drawn from this (normalised intensities)
    "noise_p": 0.1,  # probability of noise
    "blur_sigma_voxels": [0.5, 1.0],  # Gaussian blur, sigma drawn per axis (input voxels)
    "blur_p": 0.2,  # probability of a blur, then
    "blur_per_channel_p": 0.5,  # per channel (one channel: blurred in 0.2 x 0.5 of the samples)
    "brightness": [0.75, 1.25],  # multiplicative brightness (ranges around 1 are drawn below 1 half the time)
    "brightness_p": 0.15,  # probability of a brightness change
    "contrast": [0.75, 1.25],  # contrast about the mean (kept), clipped to the original range
    "contrast_p": 0.15,  # probability of a contrast change
    "low_res_zoom": [0.5, 1.0],  # simulated low resolution: nearest down to this fraction a side, then back up
    "low_res_order": 1,  # upsampling of the low resolution: 1 linear (nnU-Net v2), 3 cubic (v1)
    "low_res_p": 0.25,  # probability of a low resolution, then
    "low_res_per_channel_p": 0.5,  # per channel (nnU-Net v2)
    "gamma": [0.7, 1.5],  # gamma of the image rescaled to [0, 1], mean and std kept (both gamma transforms)
    "gamma_inverted_p": 0.1,  # probability of a gamma of the inverted image
    "gamma_p": 0.3,  # probability of a gamma
    "bias_field_strength": 0.3,  # ours: smooth multiplicative field exp(s f), |f| <= 1, s drawn up to this
    "bias_field_p": 0.1,  # probability of a bias field
}

DEFAULTS: dict[str, Any] = {
    "name": "base",
    "seed": 0,
    "data": {
        "root": "data/phantoms/train",  # competition layout: train.csv, train_localizers.csv, series/, segmentations/
        "cache": "data/phantoms/train_cache",  # precache_all output at volume_spacing_mm
        "index": "data/phantoms/train_index.csv",  # written by train_offline.index (built on first use)
        "folds_csv": "data/phantoms/train_folds.csv",  # written by train_offline.folds (built on first use)
        # volumes: whole normalised volumes in memory (small data); regions: only the classifier's region around each
        # locator centre (plus the jitter margin), so memory follows the crop, not the head; none: read the cache
        "preload": "volumes",
        "n_folds": 5,
        "limit": 0,  # use only the first N series (0: all); for smoke tests
        # train and validate on the series of these phantom styles only (the index's style column; [] = every
        # series): one mixed phantom set, cache and folds file serve every leave-one-style-out model
        # (python -m train_offline.loso), e.g. --set data.styles=[classic,labelmap,implicit]
        "styles": [],
    },
    "volume_spacing_mm": [1.0, 1.0, 1.0],  # canonical volume spacing: what precache stores and the kernel builds
    "normalisation": {"CT": "ct_angio", "MR": "mr_percentile"},
    "max_voxels": 400_000_000,
    "locator": {
        "input_shape": [32, 32, 32],
        "spacing_mm": [6.0, 6.0, 6.0],
        "output_stride": 2,
        "channels": [8, 16, 32],
        "sigma_mm": 8.0,  # Gaussian target around the Circle-of-Willis centre
        "epochs": 10,
        "val_every": 1,  # validate every K epochs (and always after the last)
        "batch_size": 8,
        "lr": 0.003,
        "shift_mm": 15.0,  # random shift of the whole head inside the input (augmentation)
        # nnU-Net's default augmentation (train_offline/augment.py): rotation and scaling in the sampling (the target
        # moves with the image), then intensity transforms; on top of shift_mm
        "augment": AUGMENT,
    },
    "classifier": {
        "input_shape": [64, 64, 64],
        "spacing_mm": [1.5, 1.5, 1.5],
        "channels": [12, 24, 48, 96],
        "dropout": 0.1,
        "epochs": 10,
        "val_every": 1,  # validate every K epochs (and always after the last); validation is inference, not free
        "batch_size": 4,
        "lr": 0.002,
        "weight_decay": 0.0001,
        "centre_offset_lps_mm": [0.0, 0.0, 0.0],  # crop centre = locator centre + this (LPS mm; x stays 0 for flips)
        "jitter_mm": 6.0,  # random crop-centre shift during training
        "flip_p": 0.5,  # left/right flip probability (labels swapped)
        "intensity_jitter": 0.1,  # random gain/offset on the normalised crop
        "heatmap_sigma_mm": 4.0,
        "heatmap_weight": 1.0,
        "seg_weight": 0.5,
        "modality_weight": 0.2,
        "pos_weight_present": 1.0,
        # Optional stage before the classifier: the same network (encoder, light decoder, seg head) trained on vessel
        # segmentation only, on the training series that have a segmentation, then fine-tuned as the classifier.
        # 0 = off. For an ablation at equal total compute, take these epochs from ``epochs`` (e.g. 10 + 30 against
        # 40); nothing is accounted automatically. A pretrain epoch sees only the segmented series, so it is shorter.
        "pretrain_epochs": 0,
        "pretrain_lr": 0.003,
        # nnU-Net's default augmentation (train_offline/augment.py): rotation and scaling in the sampling (heatmap and
        # seg targets move with the image), then intensity transforms; on top of jitter_mm, intensity_jitter, flip_p
        "augment": AUGMENT,
    },
    # Fine stage (train_offline.fine): a patch model at a fine spacing around candidate sites (the classifier's
    # location-heatmap peaks), patches sampled from the native stack as in the kernel. 0 epochs = no fine stage.
    "fine": {
        "epochs": 0,
        "input_shape": [32, 32, 32],
        "spacing_mm": [0.6, 0.6, 0.6],  # 19 mm patch; a 3 mm dome is 5 voxels across
        "channels": [16, 32, 64, 96],
        "dropout": 0.1,
        "candidates": 8,  # heatmap peaks per series the fine model sees (kernel and training)
        "candidate_min_distance_mm": 8.0,  # non-maximum suppression between candidates
        "positive_radius_mm": 6.0,  # a patch is positive when an aneurysm localizer lies this close to its centre
        "sphere_radius_mm": 3.0,  # auxiliary target: a ball of this radius at each localizer
        "sphere_weight": 1.0,
        "box_mm": 30.0,  # cached native box around each site (patch + jitter must fit)
        "recentre_max_mm": 3.0,  # candidates move up to this far towards the sphere map's maximum (0: off)
        # A candidate's score is the mean of its views (kernel and validation): the moved patch, with flip_tta its
        # mirror, with recentre_view the recentring run's own logit at the found point (a view that costs no run).
        "flip_tta": False,  # also score each moved patch mirrored on x
        "recentre_view": True,  # also count the recentring run's logit at the found point (needs recentre_max_mm > 0)
        "truth_jitter_mm": 4.0,  # training patches around a localizer are shifted up to this (candidates are off)
        "truth_repeats": 1,  # each localizer is drawn this many times per series and epoch (own jitter each)
        "candidate_jitter_mm": 1.5,
        "random_sites": 4,  # extra negatives per series: random bright (vessel) voxels inside the classifier crop
        "sites_per_series": 6,  # training sites drawn per series and epoch (every localizer, then candidates/random)
        "negatives": "candidates",  # candidates: hard negatives (the classifier's peaks) + random; random: only those
        "batch_size": 32,
        "lr": 0.002,
        "weight_decay": 0.0001,
        "val_every": 2,
        "intensity_jitter": 0.15,  # gain/offset, plus gamma and Gaussian noise of this order (renderer variety)
        "blur_voxels": 0.0,  # half the training patches blurred, sigma up to this per axis (fine voxels; 0: off)
        "fusion_weight": 0.5,  # default; train_offline.fine chooses it by out-of-fold score from fusion_grid
        "fusion_grid": [0.0, 0.25, 0.5, 0.75, 1.0],
        # before fusion each site's logit gains this x its heatmap cell's strongest channel logit (the patch model
        # and the classifier's heatmap judge a site together); chosen with fusion_weight by out-of-fold score
        "site_heatmap_weight": 0.0,
        "site_heatmap_grid": [0.0, 0.25, 0.5, 1.0, 2.0],
        # training-only series added to every fold's fine-stage training, never validated: a list of {root, cache,
        # index} (e.g. a small-dome supplement from ``train_offline.phantoms --dome-range 2 4.5``; the index is built
        # on first use like data.index)
        "supplements": [],
        # nnU-Net's default augmentation (train_offline/augment.py): rotation and scaling in the sampling (sphere
        # target moves with the patch), intensity transforms and a mirror on x; when on it replaces the flips on
        # every axis, transpose, gain/offset, gamma, noise and blur_voxels above (centre jitters stay)
        "augment": {
            **AUGMENT,
            "mirror_x_p": 0.5,  # patient left/right mirror of patch and sphere target (never y or z)
        },
    },
    "train": {
        "out_dir": "runs",  # runs/<name>/fold<K>
        "device": "auto",  # auto | cpu | cuda
        "amp": False,  # bf16/fp16 autocast on CUDA
        "num_workers": 0,
        "threads": 2,  # torch intra-op threads on CPU
        "channels_last": False,  # channels-last 3D layout while training (faster oneDNN convolutions on the CPU)
    },
}


# Keys that configs saved by earlier versions may hold and that nothing reads any more: dropped when such a saved
# config is loaded (``drop_retired``), refused in new config files like any unknown key.
RETIRED_KEYS = (("locator", "scale_jitter"), ("train", "log_every"))
# Keys renamed since: (section, old name) -> new name. Saved configs and config files are read under either name.
RENAMED_KEYS = {("fine", "heat_weight"): "site_heatmap_weight", ("fine", "heat_grid"): "site_heatmap_grid",
                ("fine", "score_found"): "recentre_view", ("fine", "per_series"): "sites_per_series"}


def renamed(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a config with ``RENAMED_KEYS`` under their new names (a new name already there wins)."""
    out = copy.deepcopy(dict(config))
    for (section, old), new in RENAMED_KEYS.items():
        if isinstance(out.get(section), dict) and old in out[section]:
            value = out[section].pop(old)
            out[section].setdefault(new, value)
    return out


def drop_retired(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a saved config without the ``RETIRED_KEYS`` (so runs trained before their removal still load) and
    with renamed keys under their new names."""
    out = renamed(config)
    for section, key in RETIRED_KEYS:
        if isinstance(out.get(section), dict):
            out[section].pop(key, None)
    return out


class ConfigError(ValueError):
    """A config file is missing, malformed, or holds an unknown key or an absolute path."""


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in ``override`` replaces the base value."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check(value: Any, default: Any, where: str, problems: list[str], absolute_ok: bool = False) -> None:
    if isinstance(default, dict):
        if not isinstance(value, dict):
            problems.append(f"{where} must be a mapping, got {type(value).__name__}")
            return
        for key in value:
            if key not in default:
                problems.append(f"unknown key {where}.{key}; known keys of {where}: {sorted(default)}")
            else:
                _check(value[key], default[key], f"{where}.{key}", problems, absolute_ok)
    elif isinstance(default, bool):
        if not isinstance(value, bool):
            problems.append(f"{where} must be true or false, got {value!r}")
    elif isinstance(default, int | float):
        if isinstance(value, bool) or not isinstance(value, int | float) or (
            isinstance(default, int) and not isinstance(value, int)
        ):
            problems.append(f"{where} must be a {type(default).__name__}, got {value!r}")
    elif isinstance(default, list):
        if not isinstance(value, list) or (default and len(value) != len(default) and where.endswith(
            ("shape", "spacing_mm"))):
            problems.append(f"{where} must be a list like {default}, got {value!r}")
    elif isinstance(default, str):
        if not isinstance(value, str):
            problems.append(f"{where} must be a string, got {value!r}")
        elif not absolute_ok and where.startswith(("root.data.", "root.train.out_dir")) and Path(value).is_absolute():
            problems.append(f"{where} must be a relative path (configs hold no absolute paths), got {value!r}")


def validate(config: Mapping[str, Any], absolute_ok: bool = False) -> None:
    """Raise ConfigError listing every unknown key, wrong type or (unless ``absolute_ok``) absolute path."""
    problems: list[str] = []
    _check(dict(config), DEFAULTS, "root", problems, absolute_ok)
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(p.replace("root.", "") for p in problems))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A config name (``demo``), file name (``demo.yaml``) or path -> existing file."""
    candidates = [Path(name_or_path), CONFIG_DIR / str(name_or_path), CONFIG_DIR / f"{name_or_path}.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config {str(name_or_path)!r} not found; known configs: {known}")


def _load_raw(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config inheritance loop: {' -> '.join(str(p) for p in (*seen, path))}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a YAML mapping")
    data = renamed(data)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or Path(base).is_absolute():
        raise ConfigError(f"{path}: base must be a relative file name, got {base!r}")
    parent = _load_raw(path.parent / base, (*seen, path))
    return merge(parent, data)


def save_config(path: str | Path, config: Mapping[str, Any]) -> None:
    """Write a resolved config beside a checkpoint (``config.yaml``; ``load_saved_config`` reads it back)."""
    Path(path).write_text(yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False))


def volume_settings_mismatch(manifest_data: Mapping[str, Any], config: Mapping[str, Any]) -> str | None:
    """Why an export's volume settings differ from ``config``'s (None when they agree): its models would see other
    inputs than the config's cached volumes."""
    for key, ours in (("volume_spacing_mm", [float(v) for v in config["volume_spacing_mm"]]),
                      ("normalisation", dict(config["normalisation"]))):
        if manifest_data[key] != ours:
            return f"its {key} {manifest_data[key]} differs from the config's {ours}"
    return None


def load_saved_config(path: str | Path) -> dict[str, Any]:
    """A resolved config saved beside a checkpoint (``config.yaml``), without retired keys, validated again."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read saved config {path}: {exc}") from exc
    config = drop_retired(config)
    validate(config, absolute_ok=True)
    return config


def load_config(name_or_path: str | Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Load a config (following ``base:`` links), validate it, apply ``overrides``, fill defaults.

    Files must hold relative paths only; command-line ``overrides`` may point anywhere (a scratch disk, a test dir).
    """
    path = resolve_config_path(name_or_path)
    raw = _load_raw(path, ())
    validate(raw)
    if overrides:
        raw = merge(raw, renamed(overrides))
        validate(raw, absolute_ok=True)
    return merge(DEFAULTS, raw)


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``a.b=value`` pairs (YAML values) -> nested dict."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set takes key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def run_fold_dirs(config: Mapping[str, Any], folds: Sequence[int], out: Path | None = None) -> list[Path]:
    """Each fold's folder, ``<train.out_dir>/<name>/fold<K>`` (or ``out`` for a single fold: the CLIs' ``--out``)."""
    if out is not None and len(folds) != 1:
        raise ConfigError("--out takes one --fold")
    return [out or Path(config["train"]["out_dir"]) / config["name"] / f"fold{k}" for k in folds]
