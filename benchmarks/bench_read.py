"""Read + resample benchmark: our reader side by side with pydicom, SimpleITK and MONAI on the same files.

    python benchmarks/bench_read.py [--data DIR] [--repeats 3] [--slices 400]

Writes (once, into --data) a 400-slice 512 x 512 uncompressed CT series, its RLE and JPEG 2000 versions and a
175-frame Enhanced MR file, then prints a markdown table of median wall times (files in the page cache) and the peak
RSS growth (each cell runs in a fresh process) relative to the decoded float32 volume. Not a test: numbers depend on
the machine and its load.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kernel.dicom_io import read_series  # noqa: E402
from kernel.preprocess import prepare_volume  # noqa: E402
from testkit.dicom_factory import smooth_field, write_series  # noqa: E402


def textured_field(lps: np.ndarray) -> np.ndarray:
    """Smooth anatomy-like values plus deterministic texture, so compressed sizes and decode times are realistic."""
    x, y, z = lps[..., 0], lps[..., 1], lps[..., 2]
    texture = np.sin(x * 12.9898 + y * 78.233 + z * 37.719) * 43758.5453
    return smooth_field(lps) + 25.0 * (texture - np.floor(texture) - 0.5)


def make_data(root: Path, n_slices: int) -> dict[str, Path]:
    """Write the benchmark series if they are not there yet."""
    from pydicom.uid import JPEG2000Lossless, RLELossless

    specs = {
        "CT uncompressed": {},
        "CT RLE": {"transfer_syntax": RLELossless},
        "CT JPEG 2000": {"transfer_syntax": JPEG2000Lossless},
    }
    out = {}
    for name, extra in specs.items():
        folder = root / name.replace(" ", "_")
        if not folder.exists() or not any(folder.iterdir()):
            print(f"writing {name} ...", file=sys.stderr)
            write_series(folder, n_slices=n_slices, rows=512, cols=512, slice_spacing=0.625,
                         pixel_spacing=(0.45, 0.45), field=textured_field, **extra)
        out[name] = folder
    folder = root / "MR_multiframe"
    if not folder.exists() or not any(folder.iterdir()):
        print("writing MR multi-frame ...", file=sys.stderr)
        write_series(folder, n_slices=175, rows=512, cols=512, slice_spacing=0.8, pixel_spacing=(0.4, 0.4),
                     modality="MR", multiframe=True, field=textured_field)
    out["MR 175-frame"] = folder
    return out


def pydicom_loop(folder: Path) -> np.ndarray:
    """The plain approach: dcmread + pixel_array per file, sorted along the normal."""
    import pydicom

    slices = []
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
        arr = ds.pixel_array.astype(np.float32) * slope + intercept
        if arr.ndim == 3:
            return arr
        iop = np.array(ds.ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        slices.append((float(np.dot(normal, np.array(ds.ImagePositionPatient, dtype=float))), arr))
    slices.sort(key=lambda s: s[0])
    return np.stack([s[1] for s in slices])


def simpleitk_read(folder: Path, resample: bool) -> np.ndarray:
    import SimpleITK as sitk

    files = sorted(str(p) for p in folder.glob("*.dcm"))
    if len(files) == 1:
        image = sitk.ReadImage(files[0], sitk.sitkFloat32)
    else:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        reader.SetOutputPixelType(sitk.sitkFloat32)
        image = reader.Execute()
    if resample:
        old = np.array(image.GetSpacing())
        size = [int(np.floor(n * s)) for n, s in zip(image.GetSize(), old, strict=True)]
        image = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (1.0, 1.0, 1.0),
                              image.GetDirection(), 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(image)


def monai_read(folder: Path, resample: bool) -> np.ndarray:
    from monai.transforms import LoadImage, Spacing

    image = LoadImage(image_only=True, ensure_channel_first=True, reader="PydicomReader")(str(folder))
    if resample:
        image = Spacing(pixdim=(1.0, 1.0, 1.0), mode="bilinear")(image)
    return np.asarray(image)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_cell(method: str, folder: Path, repeats: int) -> dict:
    """Time one method on one series in this (fresh) process: median seconds and peak RSS growth."""
    fn = METHODS[method]
    baseline = _rss_kib("VmRSS")
    result = fn(folder)  # warm-up (also the peak-memory run)
    peak = _rss_kib("VmHWM") - baseline
    volume_bytes = int(np.asarray(result).nbytes)
    del result
    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        fn(folder)
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "peak_kib": peak, "volume_bytes": volume_bytes}


METHODS: dict[str, Callable[[Path], object]] = {
    "ours: read": lambda f: read_series(f).array,
    "ours: read + 1 mm": lambda f: prepare_volume(f, (1.0, 1.0, 1.0)).array,
    "pydicom loop: read": pydicom_loop,
    "SimpleITK: read": lambda f: simpleitk_read(f, False),
    "SimpleITK: read + 1 mm": lambda f: simpleitk_read(f, True),
    "MONAI LoadImage + Spacing": lambda f: monai_read(f, True),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "bench_read", help="where the series live")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell (median reported)")
    parser.add_argument("--slices", type=int, default=400, help="slices of the CT series")
    parser.add_argument("--skip-slow", action="store_true", help="skip SimpleITK/MONAI/pydicom on compressed data")
    parser.add_argument("--cell", nargs=2, metavar=("METHOD", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cell:
        print(json.dumps(run_cell(args.cell[0], Path(args.cell[1]), args.repeats)))
        return 0
    series = make_data(args.data, args.slices)
    print("| series | method | median s | peak RSS growth / decoded volume |\n|---|---|---|---|")
    for name, folder in series.items():
        volume_bytes = read_series(folder).array.nbytes
        for method in METHODS:
            if args.skip_slow and not method.startswith("ours") and name != "CT uncompressed":
                continue
            cmd = [sys.executable, __file__, "--cell", method, str(folder), "--repeats", str(args.repeats)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                why = (proc.stderr.strip().splitlines() or ["?"])[-1][:70]
                print(f"| {name} | {method} | failed: {why} | |", flush=True)
                continue
            cell = json.loads(proc.stdout.strip().splitlines()[-1])
            ratio = cell["peak_kib"] * 1024 / volume_bytes
            print(f"| {name} | {method} | {cell['seconds']:.3f} | {ratio:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
