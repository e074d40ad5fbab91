"""Preview PNGs of a phantom (or competition-layout) dataset: slab MIPs with the localizer points marked.

python -m train_offline.phantoms.preview DIR [--out PNG_DIR] [--n N] [--one-per-modality] [--inset MM] [--prefix NAME]

Each PNG shows axial, coronal and sagittal maximum-intensity projections of a 20 mm slab through the first
localizer of the series (the volume centre for negatives), after ``kernel`` reading and canonical reorientation;
every localizer of the series from ``train_localizers.csv`` is marked, so the picture checks the CSV, not the truth.
Protocols with dark vessels (MRI T2 flow voids) show the single plane through the point instead of a MIP.
``--inset MM`` adds to each view a zoomed inset of MM x MM around the first localizer, drawn voxel by voxel from a
thin slab (3 mm; the plane for MRI T2), so that a small dome and its voxels can be seen.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm import tqdm  # noqa: E402

from kernel.dicom_io import read_series  # noqa: E402
from kernel.labels import ID_COL  # noqa: E402
from kernel.preprocess import localizer_to_lps, reorient_to_canonical, world_to_voxel  # noqa: E402

SLAB_MM = 10.0  # half-thickness of the projected slab
INSET_SLAB_MM = 1.5  # half-thickness of the inset's slab


def _window(array: np.ndarray, modality: str) -> tuple[float, float]:
    if modality == "CT":
        return -100.0, 700.0
    lo, hi = np.percentile(array[:, ::2, ::2], [1.0, 99.8])
    return float(lo), float(hi)


def _slab_mip(array: np.ndarray, axis: int, centre: float, spacing: float, slab_mm: float = SLAB_MM) -> np.ndarray:
    half = int(round(slab_mm / spacing))
    c = int(np.clip(round(centre), 0, array.shape[axis] - 1))
    sl = [slice(None)] * 3
    sl[axis] = slice(max(c - half, 0), c + half + 1)
    return array[tuple(sl)].max(axis=axis)


def _inset(ax: plt.Axes, img: np.ndarray, point: tuple[float, float], half: tuple[float, float], aspect: float,
           window: tuple[float, float], title: str) -> None:
    """Zoomed inset of ``img`` (rows, cols) around ``point`` (row, col) +- ``half`` pixels, opposite the point."""
    r, c = point
    n_rows, n_cols = img.shape
    r0, r1 = int(max(np.floor(r - half[0]), 0)), int(min(np.ceil(r + half[0]) + 1, n_rows))
    c0, c1 = int(max(np.floor(c - half[1]), 0)), int(min(np.ceil(c + half[1]) + 1, n_cols))
    x = 0.01 if c > n_cols / 2 else 0.54  # keep the marked point visible in the main view
    y = 0.54 if r > n_rows / 2 else 0.01  # axes fraction, from the bottom
    axin = ax.inset_axes((x, y, 0.45, 0.45))
    axin.imshow(img[r0:r1, c0:c1], cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect,
                interpolation="nearest", extent=(c0 - 0.5, c1 - 0.5, r1 - 0.5, r0 - 0.5))
    axin.plot(c, r, "o", ms=16, mfc="none", mec="red", mew=0.8)  # around the point: the dome stays visible
    axin.set_xticks([])
    axin.set_yticks([])
    for side in axin.spines.values():
        side.set_edgecolor("yellow")
    axin.set_title(title, fontsize=6, color="yellow", pad=1.5, y=0.0, va="bottom")
    ax.indicate_inset_zoom(axin, edgecolor="yellow", alpha=0.9)


def preview_series(series_dir: Path, localizers: pd.DataFrame, modality_name: str, out_png: Path,
                   slab_mm: float | None = None, inset_mm: float | None = None) -> None:
    """Write one PNG: three slab MIPs through the series' first localizer, every localizer marked.

    ``slab_mm`` is the slab half-thickness (default: 10 mm; 0, a single plane, for MRI T2). ``inset_mm``: add a
    zoomed inset of that width around the first localizer to each view (thin slab, voxels drawn as squares)."""
    if slab_mm is None:
        slab_mm = 0.0 if modality_name == "MRI T2" else SLAB_MM
    vol = read_series(series_dir)
    array, affine = reorient_to_canonical(vol.array, vol.affine)
    dz, dy, dx = np.linalg.norm(affine[:3, :3], axis=0)
    points = []
    for _, row in localizers.iterrows():
        c = ast.literal_eval(row["coordinates"])
        p = localizer_to_lps(vol, row["SOPInstanceUID"], c["x"], c["y"], int(c.get("f", 0)))
        points.append((world_to_voxel(affine, p[None])[0], row["location"]))
    centre = points[0][0] if points else (np.array(array.shape) - 1) / 2
    lo, hi = _window(array, vol.modality)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    views = [  # (projection axis, image rows axis, image cols axis, spacing rows, spacing cols, flip rows, title)
        (0, 1, 2, dy, dx, False, "axial"),
        (1, 0, 2, dz, dx, True, "coronal"),
        (2, 0, 1, dz, dy, True, "sagittal"),
    ]
    for ax, (proj, r_ax, c_ax, s_r, s_c, flip, title) in zip(axes, views, strict=True):
        img = _slab_mip(array, proj, centre[proj], [dz, dy, dx][proj], slab_mm)
        n_rows = img.shape[0]
        if flip:
            img = img[::-1]
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect=s_r / s_c, interpolation="nearest")
        for v, _ in points:
            if abs(v[proj] - centre[proj]) * [dz, dy, dx][proj] <= max(slab_mm, 0.5 * [dz, dy, dx][proj]):
                row = (n_rows - 1 - v[r_ax]) if flip else v[r_ax]
                ax.plot(v[c_ax], row, "o", ms=14, mfc="none", mec="red", mew=1.5)
        if inset_mm and points:
            thin = min(slab_mm, INSET_SLAB_MM)
            zoom = _slab_mip(array, proj, centre[proj], [dz, dy, dx][proj], thin)
            if flip:
                zoom = zoom[::-1]
            v = points[0][0]
            row = (n_rows - 1 - v[r_ax]) if flip else v[r_ax]
            _inset(ax, zoom, (row, v[c_ax]), (inset_mm / 2 / s_r, inset_mm / 2 / s_c), s_r / s_c, (lo, hi),
                   f"{inset_mm:g} mm, {'MIP ' + str(2 * thin) + ' mm' if thin else 'plane'}")
        ax.set_title(f"{title} {'MIP ' + str(2 * slab_mm) + ' mm' if slab_mm else 'plane'}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    names = ", ".join(sorted({loc for _, loc in points})) or "no aneurysm"
    fig.suptitle(f"{modality_name} {vol.array.shape} spacing {np.round(vol.spacing, 2).tolist()}\n{names}", fontsize=9)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)


def pick_series(data_dir: Path, n: int, one_per_modality: bool) -> list[tuple[str, str]]:
    """(uid, modality name) of the series to preview: positives first; with ``one_per_modality`` one per protocol."""
    table = data_dir / "train.csv"
    if table.exists():
        df = pd.read_csv(table)
        df = df.sort_values("Aneurysm Present", ascending=False, kind="stable")
        if one_per_modality:
            df = df.groupby("Modality", sort=True).head(1)
        return [(r[ID_COL], r["Modality"]) for _, r in df.head(n).iterrows()]
    uids = sorted(p.name for p in (data_dir / "series").iterdir() if p.is_dir())
    return [(u, "") for u in uids[:n]]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train_offline.phantoms.preview",
                                description="Slab-MIP PNGs of a competition-layout dataset with localizers marked.")
    p.add_argument("data_dir", help="dataset folder (train.csv, train_localizers.csv, series/)")
    p.add_argument("--out", default=None, help="PNG folder (default: DATA_DIR/preview)")
    p.add_argument("--n", type=int, default=8, help="number of series (default 8)")
    p.add_argument("--one-per-modality", action="store_true", help="one series per protocol (positives first)")
    p.add_argument("--inset", type=float, default=None, metavar="MM",
                   help="add a zoomed MM x MM inset around the first localizer to each view (e.g. 20)")
    p.add_argument("--prefix", default=None, metavar="NAME",
                   help="name the PNGs NAME_<protocol>.png (e.g. phantom_real_cta.png; with --one-per-modality)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    data_dir = Path(args.data_dir)
    out = Path(args.out) if args.out else data_dir / "preview"
    loc_file = data_dir / "train_localizers.csv"
    locs = pd.read_csv(loc_file) if loc_file.exists() else pd.DataFrame(columns=[ID_COL, "SOPInstanceUID",
                                                                                 "coordinates", "location"])
    picked = pick_series(data_dir, args.n, args.one_per_modality)
    if not picked and not loc_file.exists():
        raise SystemExit(f"{data_dir}: no series found")
    if args.prefix and not args.one_per_modality:
        raise SystemExit("--prefix names one PNG per protocol: use it with --one-per-modality")
    for uid, modality in tqdm(picked, desc="preview"):
        if args.prefix:
            name = f"{args.prefix}_{(modality or uid[-12:]).lower().replace(' ', '_')}.png"
        else:
            name = (modality.replace(" ", "_") + "_" if modality else "") + uid[-12:] + ".png"
        preview_series(data_dir / "series" / uid, locs[locs[ID_COL] == uid], modality, out / name,
                       inset_mm=args.inset)
    print(f"wrote {len(picked)} PNG(s) to {out}")


if __name__ == "__main__":
    main()
