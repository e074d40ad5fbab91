"""nnU-Net's default augmentation (docs/reference/model-stages.md) for the locator, the classifier and the fine
patch model: pure functions on numpy arrays and a ``np.random.Generator``, no torch.

Spatial transforms (rotation, scaling) happen in the sampling, so the targets move with the image by construction:
the crop's voxel -> LPS affine (``kernel.preprocess.crop_affine``) is rotated and scaled about the crop centre
(``spatial_affine``), the image is sampled through it trilinearly (``sample_grid``), and every target is computed at
the LPS positions of the same grid (``kernel.preprocess.grid_points_lps``). Intensity transforms act on the normalised
model input (``augment_intensity``). Mirroring stays where it was (the classifier's ``flip_p`` on x with its label
swap; the fine stage's mirror on x): never on y or z, whose anatomy is not symmetric.

Draws follow nnU-Net v2 (``nnUNetTrainer.get_training_transforms``): each transform is applied with its probability;
a factor range that straddles 1 is drawn below 1 half the time (``draw_factor``); rotation angles are drawn for all
three axes at once, one scale for all axes.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import affine_transform, gaussian_filter, zoom

from kernel.preprocess import crop_affine, crop_around, spacing_of, voxel_to_world
from train_offline.config import ConfigError

__all__ = [
    "AUGMENT_STREAM", "MAX_ROTATION_DEG", "Spatial", "augment_enabled", "augment_intensity", "augment_rng",
    "bias_field", "brightness", "check_augment", "contrast", "draw_factor", "draw_spatial", "gamma", "gaussian_blur",
    "gaussian_noise", "low_resolution", "rotation_matrix", "sample_grid", "spatial_affine", "spatial_crop",
    "spatial_reach_mm",
]

# Rotations beyond this start to carry a left-side vessel far across the midline while its label stays "Left".
MAX_ROTATION_DEG = 30.0
# The augmentation's generator is seeded [seed, epoch, index, AUGMENT_STREAM]: a stream of its own, so switching it
# on leaves each sample's centre jitter, gain/offset and flip (drawn from [seed, epoch, index]) as they were.
AUGMENT_STREAM = 1
_RANGES = ("scale", "noise_variance", "blur_sigma_voxels", "brightness", "contrast", "low_res_zoom", "gamma")
_PROBABILITIES = ("rotation_p", "scale_p", "noise_p", "blur_p", "blur_per_channel_p", "brightness_p", "contrast_p",
                  "low_res_p", "low_res_per_channel_p", "gamma_inverted_p", "gamma_p", "bias_field_p")


@dataclass(frozen=True)
class Spatial:
    """One draw of the spatial transform: angles (degrees) about the crop's array axes z, y, x, and one scale for all
    axes (the sampling step is multiplied by it: > 1 the crop spans more mm and the anatomy looks smaller)."""

    angles_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0


def augment_enabled(aug: Mapping[str, Any] | None) -> bool:
    """Whether an ``augment`` mapping is switched on (absent in configs saved before it existed: off)."""
    return bool(aug) and bool(aug.get("enabled", False))


def check_augment(aug: Mapping[str, Any], where: str = "augment") -> None:
    """Refuse ranges that are not [low, high], probabilities outside [0, 1] and rotations over ``MAX_ROTATION_DEG``."""
    problems = [f"{where}.{k} must be [low, high] with low <= high, got {aug[k]!r}" for k in _RANGES
                if k in aug and (len(aug[k]) != 2 or float(aug[k][0]) > float(aug[k][1]))]
    problems += [f"{where}.{k} must lie in [0, 1], got {aug[k]!r}" for k in _PROBABILITIES
                 if k in aug and not 0.0 <= float(aug[k]) <= 1.0]
    if not 0.0 <= float(aug.get("rotation_deg", 0.0)) <= MAX_ROTATION_DEG:
        problems.append(f"{where}.rotation_deg must lie in [0, {MAX_ROTATION_DEG:g}] (larger rotations carry left "
                        f"vessels across the midline under a Left label), got {aug['rotation_deg']!r}")
    if float(aug.get("scale", [1.0, 1.0])[0]) <= 0:
        problems.append(f"{where}.scale must be positive, got {aug['scale']!r}")
    if int(aug.get("low_res_order", 1)) not in (1, 3):
        problems.append(f"{where}.low_res_order must be 1 (linear) or 3 (cubic), got {aug['low_res_order']!r}")
    if problems:
        raise ConfigError("invalid augmentation settings:\n  - " + "\n  - ".join(problems))


def augment_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation's own generator for one training sample (see ``AUGMENT_STREAM``)."""
    return np.random.default_rng([int(seed), int(epoch), int(index), AUGMENT_STREAM])


def draw_factor(rng: np.random.Generator, low: float, high: float) -> float:
    """A factor from [low, high]; when the range straddles 1, below 1 half the time (nnU-Net's ``BGContrast``), so
    that 0.7-1.5 does not mostly brighten."""
    low, high = float(low), float(high)
    if low < 1.0 < high:
        return float(rng.uniform(low, 1.0)) if rng.random() < 0.5 else float(rng.uniform(1.0, high))
    return float(rng.uniform(low, high))


# --- spatial -------------------------------------------------------------------------------------------------------


def draw_spatial(rng: np.random.Generator, aug: Mapping[str, Any]) -> Spatial | None:
    """Rotation (all three axes, each up to +-``rotation_deg``) with ``rotation_p``, scaling with ``scale_p``; None
    when neither is drawn (the sample is then cut exactly as without augmentation)."""
    angles, scale = (0.0, 0.0, 0.0), 1.0
    rotate = rng.random() < float(aug["rotation_p"])
    if rotate:
        limit = float(aug["rotation_deg"])
        az, ay, ax = (float(a) for a in rng.uniform(-limit, limit, 3))
        angles = (az, ay, ax)
    rescale = rng.random() < float(aug["scale_p"])
    if rescale:
        scale = float(rng.uniform(*[float(s) for s in aug["scale"]]))
    return Spatial(angles, scale) if rotate or rescale else None


def rotation_matrix(angles_deg: Sequence[float]) -> np.ndarray:
    """3 x 3 rotation in (z, y, x) coordinates: about z, then y, then x (angles in degrees)."""
    az, ay, ax = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    about_z = np.array([[1, 0, 0], [0, np.cos(az), -np.sin(az)], [0, np.sin(az), np.cos(az)]])
    about_y = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    about_x = np.array([[np.cos(ax), -np.sin(ax), 0], [np.sin(ax), np.cos(ax), 0], [0, 0, 1]])
    return about_x @ about_y @ about_z


def spatial_affine(grid_affine: np.ndarray, shape_zyx: Sequence[int], spatial: Spatial) -> np.ndarray:
    """A crop's voxel -> LPS affine rotated and scaled about the crop centre (rotation in mm, in the crop's own axes),
    so a voxel of the transformed crop shows the anatomy at ``voxel_to_world(result, voxel)``."""
    grid_affine = np.asarray(grid_affine, dtype=np.float64)
    spacing = spacing_of(grid_affine)
    directions = grid_affine[:3, :3] / spacing
    middle = (np.asarray(shape_zyx, dtype=np.float64) - 1.0) / 2.0
    centre_lps = voxel_to_world(grid_affine, middle[None])[0]
    linear = directions @ rotation_matrix(spatial.angles_deg) @ np.diag(spacing * float(spatial.scale))
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = centre_lps - linear @ middle
    return out


def spatial_reach_mm(shape_zyx: Sequence[int], spacing_zyx_mm: Sequence[float],
                     aug: Mapping[str, Any] | None) -> np.ndarray:
    """Per crop axis, how far (mm) from the crop centre a sample can lie under any spatial draw of ``aug``: what a
    kept region (``data.SeriesStore.keep_region``) or a cached box must hold. Half the crop's extent without them."""
    half = np.asarray(shape_zyx, dtype=np.float64) * np.asarray(spacing_zyx_mm, dtype=np.float64) / 2.0
    if not augment_enabled(aug):
        return half
    limit = float(aug["rotation_deg"]) if float(aug["rotation_p"]) > 0 else 0.0
    scale = max(1.0, float(aug["scale"][1])) if float(aug["scale_p"]) > 0 else 1.0
    corners = half * np.array(list(itertools.product((-1.0, 1.0), repeat=3)))
    angles = np.linspace(-limit, limit, 13) if limit > 0 else np.zeros(1)
    reach = half.copy()
    for triple in itertools.product(angles, repeat=3):  # the extremes lie at the corners; 13^3 angle draws
        reach = np.maximum(reach, np.abs(corners @ rotation_matrix(triple).T).max(axis=0))
    return reach * scale


def sample_grid(array: np.ndarray, affine: np.ndarray, grid_affine: np.ndarray, shape_zyx: Sequence[int],
                fill: float = 0.0, edge: bool = False) -> np.ndarray:
    """Trilinear samples of ``array`` (voxel -> LPS ``affine``) at the voxels of a grid (``grid_affine``, any
    rotation). Outside the array: ``fill`` (as ``crop_around``), or with ``edge`` the nearest edge value (for a cached
    box smaller than the reach of a rotated patch)."""
    shape = tuple(int(n) for n in shape_zyx)
    to_source = np.linalg.solve(np.asarray(affine, dtype=np.float64), np.asarray(grid_affine, dtype=np.float64))
    corners = np.array(list(itertools.product(*[(0.0, n - 1.0) for n in shape])))
    source = corners @ to_source[:3, :3].T + to_source[:3, 3]
    size = np.asarray(array.shape)
    # only the part of the array the samples can touch (no copy of a whole volume)
    lo = np.clip(np.floor(source.min(axis=0)), 0, size - 1).astype(int)
    hi = np.maximum(np.clip(np.ceil(source.max(axis=0)) + 1, 0, size).astype(int), lo + 1)
    part = np.asarray(array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float32)
    return affine_transform(part, to_source[:3, :3], offset=to_source[:3, 3] - lo, output_shape=shape,
                            output=np.float32, order=1, mode="nearest" if edge else "constant", cval=float(fill))


def spatial_crop(array: np.ndarray, affine: np.ndarray, centre_lps: Sequence[float], shape_zyx: Sequence[int],
                 spacing_zyx_mm: Sequence[float] | None, spatial: Spatial | None, fill: float = 0.0,
                 edge: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``crop_around`` (same arguments) with a spatial draw applied about its centre: (crop, its voxel -> LPS affine).
    Without a draw it is ``crop_around`` itself, bit for bit."""
    if spatial is None:
        return crop_around(array, affine, centre_lps, shape_zyx, spacing_zyx_mm, fill=fill)
    grid = spatial_affine(crop_affine(affine, centre_lps, shape_zyx, spacing_zyx_mm), shape_zyx, spatial)
    return sample_grid(array, affine, grid, shape_zyx, fill=fill, edge=edge), grid


# --- intensity -----------------------------------------------------------------------------------------------------


def gaussian_noise(image: np.ndarray, variance: float, rng: np.random.Generator) -> np.ndarray:
    """Additive zero-mean Gaussian noise of the given variance."""
    return image + rng.normal(0.0, np.sqrt(max(float(variance), 0.0)), image.shape).astype(np.float32)


def gaussian_blur(image: np.ndarray, sigma_zyx_voxels: Sequence[float]) -> np.ndarray:
    """Gaussian blur, sigma per axis in voxels (a softer reconstruction kernel or thicker slices)."""
    return gaussian_filter(image, [float(s) for s in sigma_zyx_voxels], mode="nearest", truncate=3.0)


def brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """Multiplicative brightness."""
    return image * np.float32(factor)


def contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Contrast about the mean (kept), clipped to the original range (nnU-Net's ``preserve_range``)."""
    mean, lo, hi = image.mean(), image.min(), image.max()
    return np.clip((image - mean) * np.float32(factor) + mean, lo, hi)


def low_resolution(image: np.ndarray, zoom_factor: float, order: int = 1) -> np.ndarray:
    """Simulated low resolution: nearest-neighbour down to ``zoom_factor`` of the size (0.5: half the voxels a side),
    then back up to the same shape, linear (``order`` 1) or cubic (3)."""
    shape = np.asarray(image.shape)
    small_shape = np.maximum(np.round(shape * float(zoom_factor)).astype(int), 1)
    if np.array_equal(small_shape, shape):
        return image
    picks = [np.minimum(((np.arange(m) + 0.5) * n / m).astype(int), n - 1) for m, n in zip(small_shape, shape,
                                                                                          strict=True)]
    small = image[np.ix_(*picks)]
    if int(order) == 1:
        out = _resize_linear(small, image.shape)
    else:
        out = zoom(small, shape / small_shape, order=int(order), mode="nearest", grid_mode=True)
    assert out.shape == image.shape, f"low_resolution changed the shape {image.shape} -> {out.shape}"
    return out.astype(np.float32, copy=False)


def _resize_linear(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Linear resize on the half-pixel grid, edges clamped, one axis at a time (``scipy.ndimage.zoom`` order 1 with
    ``grid_mode``, to float rounding, at a tenth of its time)."""
    out = image
    for axis, n in enumerate(shape):
        m = out.shape[axis]
        if m == n:
            continue
        source = np.clip((np.arange(n) + 0.5) * (m / n) - 0.5, 0, m - 1)
        lo = np.floor(source).astype(np.intp)
        weight = (source - lo).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        below, above = np.take(out, lo, axis=axis), np.take(out, np.minimum(lo + 1, m - 1), axis=axis)
        out = below + (above - below) * weight
    return out


def gamma(image: np.ndarray, gamma_value: float, invert: bool = False) -> np.ndarray:
    """Gamma on the image rescaled to [0, 1] (on the inverted image with ``invert``), then mean and standard
    deviation set back to the original's (nnU-Net's ``retain_stats``)."""
    mean, std = float(image.mean()), float(image.std())
    x = -image if invert else image
    lo, span = float(x.min()), float(x.max() - x.min()) + 1e-7
    x = np.power((x - lo) / span, float(gamma_value)) * span + lo
    x = -x if invert else x
    x = (x - x.mean()) / (x.std() + 1e-8) * std + mean
    return x.astype(np.float32, copy=False)


def bias_field(image: np.ndarray, strength: float, rng: np.random.Generator, nodes: int = 4) -> np.ndarray:
    """A smooth multiplicative field exp(strength * f) (an MR coil's shading; strength 0.3 is about +-35%): f holds
    ``nodes``^3 Gaussian values spread by Gaussian bumps one node apart (a tensor product, one axis at a time),
    scaled to a peak of 1."""
    smooth = rng.normal(size=(nodes,) * 3)
    centres = (np.arange(nodes) + 0.5) / nodes
    for axis, n in enumerate(image.shape):
        bumps = np.exp(-0.5 * (((np.arange(n) + 0.5) / n)[:, None] - centres[None]) ** 2 * nodes**2)
        smooth = np.moveaxis(np.tensordot(bumps / bumps.sum(axis=1, keepdims=True), smooth, axes=(1, axis)), 0, axis)
    smooth = smooth / max(float(np.abs(smooth).max()), 1e-6)
    return (image * np.exp(float(strength) * smooth)).astype(np.float32)


def augment_intensity(image: np.ndarray, rng: np.random.Generator, aug: Mapping[str, Any]) -> np.ndarray:
    """Every intensity transform of ``aug`` with its probability, in nnU-Net's order (bias field first: it shades the
    signal before the scanner's noise): bias field, noise, blur, brightness, contrast, low resolution, inverted
    gamma, gamma."""
    x = np.asarray(image, dtype=np.float32)
    if rng.random() < float(aug["bias_field_p"]):
        x = bias_field(x, rng.uniform(0.0, float(aug["bias_field_strength"])), rng)
    if rng.random() < float(aug["noise_p"]):
        x = gaussian_noise(x, rng.uniform(*[float(v) for v in aug["noise_variance"]]), rng)
    if rng.random() < float(aug["blur_p"]) and rng.random() < float(aug["blur_per_channel_p"]):
        x = gaussian_blur(x, rng.uniform(*[float(v) for v in aug["blur_sigma_voxels"]], 3))
    if rng.random() < float(aug["brightness_p"]):
        x = brightness(x, draw_factor(rng, *aug["brightness"]))
    if rng.random() < float(aug["contrast_p"]):
        x = contrast(x, draw_factor(rng, *aug["contrast"]))
    if rng.random() < float(aug["low_res_p"]) and rng.random() < float(aug["low_res_per_channel_p"]):
        x = low_resolution(x, rng.uniform(*[float(v) for v in aug["low_res_zoom"]]), int(aug["low_res_order"]))
    if rng.random() < float(aug["gamma_inverted_p"]):
        x = gamma(x, draw_factor(rng, *aug["gamma"]), invert=True)
    if rng.random() < float(aug["gamma_p"]):
        x = gamma(x, draw_factor(rng, *aug["gamma"]))
    return np.ascontiguousarray(x, dtype=np.float32)
