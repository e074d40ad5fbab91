"""Phantom generation cost per protocol: seconds per series on one core, peak memory, projected time for a dataset.

Each protocol runs in its own child process (one worker: ``--workers 1``) that generates ``--n`` series of that
protocol with everything else drawn as in a dataset (locations, head, geometry, quirks, a segmentation for ~30%),
but written uncompressed (explicit VR little endian) unless ``--encoding drawn``. The child reports CPU and wall
seconds per series, bytes written, and its peak resident memory (``resource.getrusage``: the worker's peak).

The extra cost of the compressed transfer syntaxes is measured on the first series of each protocol: a sample of its
slices is re-encoded in memory with each syntax of ``dicom_writer.TRANSFER_SYNTAXES``, and the difference to the
uncompressed write, per pixel, is scaled to the series and weighted by the syntax's share. The projection for a
dataset weights the protocols by their share in train.csv and divides by the worker count. DICOM MB is the series
folder (uncompressed unless ``--encoding drawn``); NIfTI MB the segmentation folder, averaged over all series.

    python benchmarks/bench_phantoms.py [--size real] [--n 4] [--seed 0] [--encoding uncompressed|drawn]
        [--dataset 1200] [--cores 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHILD = """
import io, json, resource, sys, time
from pathlib import Path
import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian
from train_offline.phantoms.dicom_writer import COMPRESSED, TRANSFER_SYNTAXES
from train_offline.phantoms.generate import generate_series
out, size, modality, seed, n, encoding = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), \
    sys.argv[6]
ts = ExplicitVRLittleEndian if encoding == "uncompressed" else None
rows = []
for i in range(n):
    t0, c0 = time.perf_counter(), time.process_time()
    r = generate_series(out, i, seed, size=size, modality=modality, transfer_syntax=ts)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    files = [p for p in (Path(out) / "series" / r.series_uid).iterdir()]
    seg = Path(out) / "segmentations" / r.series_uid
    rows.append({"cpu": cpu, "wall": wall, "shape": r.truth["shape_zyx"], "three_d": r.truth["three_d"],
                 "pixel": r.truth["pixel_spacing"][0], "slice": r.truth["slice_spacing"],
                 "mb": sum(p.stat().st_size for p in files) / 1e6, "seg": r.truth["segmentation"],
                 "seg_mb": sum(p.stat().st_size for p in seg.iterdir()) / 1e6 if seg.exists() else 0.0,
                 "ts": r.truth["quirks"]["transfer_syntax"]})
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
# Codec cost: re-encode a sample of the first series' slices in memory with each transfer syntax.
first = sorted((Path(out) / "series").iterdir())[0]
sample = sorted(first.glob("*.dcm"))[:12]
extra = {}
def write_all(syntax):
    t0 = time.process_time()
    px = 0
    for f in sample:
        ds = pydicom.dcmread(f)
        if ds.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian or "PixelData" not in ds:
            continue
        arr = ds.pixel_array
        px += arr.size
        if syntax in COMPRESSED:
            try:
                ds.compress(syntax, arr, generate_instance_uid=False)
            except Exception:
                ds.compress(pydicom.uid.RLELossless, arr, generate_instance_uid=False)
        else:
            ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(io.BytesIO(), enforce_file_format=True)
    return (time.process_time() - t0) / max(px, 1), px
if encoding == "uncompressed":
    base, px = write_all(ExplicitVRLittleEndian)
    if px:
        for syntax in TRANSFER_SYNTAXES:
            extra[str(syntax)] = max(write_all(syntax)[0] - base, 0.0)  # CPU seconds per pixel
print(json.dumps({"rows": rows, "peak_mb": peak_mb, "extra_s_per_px": extra}))
"""

SYNTAX_NAMES = {
    "1.2.840.10008.1.2.1": "explicit VR",
    "1.2.840.10008.1.2": "implicit VR",
    "1.2.840.10008.1.2.5": "RLE",
    "1.2.840.10008.1.2.4.80": "JPEG-LS",
    "1.2.840.10008.1.2.4.90": "JPEG 2000",
    "1.2.840.10008.1.2.1.99": "deflated",
}


def run_protocol(size: str, modality: str, seed: int, n: int, encoding: str) -> dict:
    """Generate ``n`` series of ``modality`` in a fresh process (one worker); returns its JSON report."""
    with tempfile.TemporaryDirectory(prefix="bench_phantoms_") as out:
        proc = subprocess.run([sys.executable, "-c", CHILD, out, size, modality, str(seed), str(n), encoding],
                              capture_output=True, text=True, cwd=REPO)
        if proc.returncode:
            raise SystemExit(f"{modality}: child failed\n{proc.stderr[-4000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def _shape_range(rows: list[dict]) -> str:
    z = [r["shape"][0] for r in rows]
    yx = [r["shape"][1] * r["shape"][2] for r in rows]
    big = rows[int(max(range(len(rows)), key=lambda i: yx[i]))]["shape"]
    return f"{min(z)}-{max(z)} x up to {big[1]}x{big[2]}"


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the markdown tables."""
    from train_offline.phantoms.dicom_writer import TRANSFER_SYNTAXES
    from train_offline.phantoms.protocols import MODALITY_SHARES, SIZES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=SIZES, default="real", help="phantom size (default real)")
    p.add_argument("--n", type=int, default=4, help="series per protocol (default 4)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--encoding", choices=["uncompressed", "drawn"], default="uncompressed",
                   help="uncompressed: every series explicit VR, codec cost measured separately (default); "
                        "drawn: the transfer syntax drawn per series as in a dataset")
    p.add_argument("--modalities", nargs="+", default=list(MODALITY_SHARES), help="protocols (default all four)")
    p.add_argument("--dataset", type=int, default=1200, help="series in the projected dataset (default 1200)")
    p.add_argument("--cores", type=int, default=2, help="workers of the projection (default 2)")
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    lines = ["| protocol | share | series | shape (z x y x) | pixel mm | slice mm | s/series CPU (mean, max) | "
             "s/series wall | + codec mix s | DICOM MB/series | + NIfTI MB/series | peak RSS MB |", "|---" * 12 + "|"]
    projected_cpu = 0.0
    shares = {m: MODALITY_SHARES[m] for m in args.modalities}
    total_share = sum(shares.values())
    codec_rows = []
    for modality in args.modalities:
        rep = run_protocol(args.size, modality, args.seed, args.n, args.encoding)
        rows = rep["rows"]
        cpu = [r["cpu"] for r in rows]
        wall = [r["wall"] for r in rows]
        mean_px = sum(r["shape"][0] * r["shape"][1] * r["shape"][2] for r in rows) / len(rows)
        extra = rep["extra_s_per_px"]
        weights = {str(k): v for k, v in TRANSFER_SYNTAXES.items()}
        codec = sum(weights[k] * v * mean_px for k, v in extra.items()) / sum(weights.values()) if extra else 0.0
        mean_cpu = sum(cpu) / len(cpu) + codec
        projected_cpu += shares[modality] / total_share * mean_cpu
        pix = sorted({round(r["pixel"], 2) for r in rows})
        sl = sorted({round(r["slice"], 2) for r in rows})
        lines.append(
            f"| {modality} | {shares[modality]:.1%} | {len(rows)} | {_shape_range(rows)} | {pix[0]}-{pix[-1]} | "
            f"{sl[0]}-{sl[-1]} | {sum(cpu) / len(cpu):.2f}, {max(cpu):.2f} | {sum(wall) / len(wall):.2f} | "
            f"{codec:.2f} | {sum(r['mb'] for r in rows) / len(rows):.0f} | "
            f"{sum(r['seg_mb'] for r in rows) / len(rows):.0f} ({sum(r['seg'] for r in rows)} with seg) | "
            f"{rep['peak_mb']:.0f} |")
        if extra:
            codec_rows.append(f"| {modality} | " + " | ".join(
                f"{extra.get(str(k), 0.0) * mean_px:.2f}" for k in TRANSFER_SYNTAXES) + " |")
    hours = projected_cpu * args.dataset / args.cores / 3600
    print(f"## Phantom generation, size {args.size}, seed {args.seed}, {args.n} series per protocol, "
          f"encoding {args.encoding}\n")
    print("\n".join(lines))
    if codec_rows:
        print("\nExtra CPU seconds per series for each transfer syntax (share in brackets), on the mean series:\n")
        print("| protocol | " + " | ".join(f"{SYNTAX_NAMES.get(str(k), str(k))} ({v:.0%})"
                                          for k, v in TRANSFER_SYNTAXES.items()) + " |")
        print("|---" * (len(TRANSFER_SYNTAXES) + 1) + "|")
        print("\n".join(codec_rows))
    print(f"\nMean CPU per series over the protocol mix (with the codec mix): {projected_cpu:.2f} s; "
          f"projected {args.dataset} series on {args.cores} cores: {hours * 60:.0f} min ({hours:.2f} h).")
    print(f"(benchmark wall time {time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
