"""Section preprocess: ``kernel.preprocess.resample_to_spacing`` with backend cuda (and torch on the CPU) against
numpy on one phantom CTA (400 x 512 x 512 on the GPU machine): max difference, seconds per series; then
``prepare_volume`` (read + canonical + resample) end to end with each backend."""

from __future__ import annotations

from typing import Any

import numpy as np

from .artefacts import model_config, phantom_cta
from .harness import Ctx, Section, median, row, table, timer

TITLE = "Preprocessing: torch CUDA against numpy (kernel.preprocess.resample_to_spacing)"
RESAMPLE_RTOL = 1e-5  # numpy vs torch resampling: float rounding (tests/kernel/test_preprocess.py uses 1e-5 on [0, 1])
FULL_VOXELS = 400 * 512 * 512


def _resample_rows(ctx: Ctx, sec: Section, array: np.ndarray, affine: np.ndarray, spacing: tuple[float, ...],
                   scale: float, modality: str) -> dict[str, dict[str, Any]]:
    """One row per backend, numpy first (the reference); the fast backend's output is kept for the models section."""
    import torch

    from kernel.preprocess import resample_to_spacing

    sec.lines += table(["backend", "device", "runs", "first call s", "median s", "per 400 x 512 x 512 s",
                        "output shape", "max abs diff vs numpy", "max diff / max abs", "within 1e-5"])
    backends = [("numpy", "CPU (1 thread)", 2 if ctx.gpu else 3),
                ("torch", f"CPU ({torch.get_num_threads()} threads)", 3)]
    if ctx.gpu:
        backends.append(("cuda", torch.cuda.get_device_name(0), 6))
    ref = None
    results = {}
    for backend, device, reps in backends:
        times, out, out_affine = [], None, None
        for _ in range(reps):
            with timer() as t:
                out, out_affine = resample_to_spacing(array, affine, spacing, backend=backend)
            times.append(t[0])
            if ctx.left() < 5:
                break
        ref = out if ref is None else ref
        diff = float(np.abs(out - ref).max())
        rel = diff / max(float(np.abs(ref).max()), 1e-12)
        timed = times[1:] if len(times) > 1 else times
        results[backend] = {"first_s": times[0], "median_s": median(timed), "runs": len(times), "max_abs_diff": diff,
                            "rel_diff": rel, "shape": list(out.shape), "max_abs": float(np.abs(ref).max())}
        ctx.report.add(sec, row(f"`{backend}`", device, len(times), times[0], median(timed), median(timed) * scale,
                                "x".join(map(str, out.shape)), diff, rel, "yes" if rel <= RESAMPLE_RTOL else "NO"))
        if backend == ("cuda" if ctx.gpu else "torch"):
            ctx.shared["cta_canonical"] = (out, out_affine, modality)
        del out
    return results


def run(ctx: Ctx, sec: Section) -> None:
    """Resampling per backend against numpy, then prepare_volume per backend, then one summary line."""
    from kernel.dicom_io import read_series
    from kernel.preprocess import prepare_volume, reorient_to_canonical, spacing_of

    rep = ctx.report
    spacing = tuple(model_config(ctx)["volume_spacing_mm"])
    folder = phantom_cta(ctx)
    with timer() as t_read:
        volume = read_series(folder)
    array, affine = reorient_to_canonical(volume.array, volume.affine)
    native = tuple(int(n) for n in array.shape)
    scale = FULL_VOXELS / float(np.prod(native))
    sec.data.update(series=str(folder.name), canonical_shape=native, native_spacing=spacing_of(affine).round(3),
                    target_spacing=spacing, generate_s=ctx.shared.get("cta_generate_s"), read_s=t_read[0])
    rep.add(sec, f"Phantom CTA (`generate_series(size={'full' if ctx.gpu else 'small'!r}, modality='CTA')`, "
                 f"uncompressed), canonical {native[0]} x {native[1]} x {native[2]} at "
                 f"{', '.join(f'{s:.3f}' for s in spacing_of(affine))} mm -> {spacing} mm "
                 f"(the full config's volume spacing); generated in {ctx.shared.get('cta_generate_s', 0):.1f} s, "
                 f"read in {t_read[0]:.2f} s. `resample_to_spacing(backend=...)`, the same canonical array each "
                 f"time; seconds include the host-device copies.")
    if not ctx.gpu:
        rep.add(sec, f"(--cpu: a small phantom; the 'per 400 x 512 x 512' column scales by voxel count, x{scale:.0f})")
    rep.add(sec)
    results = sec.data["resample"] = _resample_rows(ctx, sec, array, affine, spacing, scale, volume.modality)
    rep.add(sec)
    sec.lines += table(["prepare_volume backend", "s (read + canonical + resample)", "per 400 x 512 x 512 s"])
    fast = "cuda" if ctx.gpu else "torch"
    sec.data["prepare_volume_s"] = {}
    for backend in ("numpy", fast):
        with timer() as t:
            prepare_volume(folder, spacing, backend=backend)
        sec.data["prepare_volume_s"][backend] = t[0]
        rep.add(sec, row(f"`{backend}`", t[0], t[0] * scale))
    rep.add(sec)
    best, slow = results[fast]["median_s"], results["numpy"]["median_s"]
    label = "CUDA" if ctx.gpu else "torch CPU (no CUDA: --cpu)"
    rep.add(sec, f"**Per 400 x 512 x 512 CTA**: resampling {best * scale:.3f} s with {label} against "
                 f"{slow * scale:.3f} s numpy ({slow / max(best, 1e-9):.1f}x); max abs difference "
                 f"{results[fast]['max_abs_diff']:.2e} HU on values up to {results['numpy']['max_abs']:.0f}.")
