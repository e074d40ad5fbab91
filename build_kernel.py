"""Build the Kaggle submission: one self-contained kernel file (+ one-cell notebook), the weights dataset, wheels.

Writes
  dist/kernel/<name>.py, <name>.ipynb, kernel-metadata.json   (``kaggle kernels push -p dist/kernel``)
  dist/weights/manifest.json, *.onnx, dataset-metadata.json   (``kaggle datasets create -p dist/weights``)
  dist/wheels/*.whl, dataset-metadata.json                    (with --wheels: installed offline when an import fails)

The kernel embeds ``kernel/*.py`` (and the metric, for local scoring) as readable text. At start it writes them to a
temporary folder named after their hash and puts it first on sys.path, so tracebacks show real file names and line
numbers. Same inputs give byte-identical outputs. Run anywhere as
``python dist/kernel/<name>.py --data DIR [--weights DIR] [--solution CSV]``.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent
COMPETITION = "rsna-intracranial-aneurysm-detection"
# Wheels the kernel may need beyond Kaggle's image: import name -> pip requirement (GPU variant where it matters).
KERNEL_WHEELS: dict[str, str] = {
    "onnxruntime": "onnxruntime-gpu",
    "pylibjpeg": "pylibjpeg",
    "libjpeg": "pylibjpeg-libjpeg",
    "openjpeg": "pylibjpeg-openjpeg",
    "rle": "pylibjpeg-rle",
    "jpeg_ls": "pyjpegls",
}
# Wheel platform tags Kaggle's x86_64 image (glibc >= 2.28) installs.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")

BOOTSTRAP = '''
def _install_sources() -> str:
    """Write the embedded sources to a folder named after their hash and put it first on sys.path."""
    import hashlib
    import os
    import sys
    import tempfile

    digest = hashlib.sha256(repr(sorted(SOURCES.items())).encode()).hexdigest()[:16]
    root = os.path.join(tempfile.gettempdir(), "rsna_kernel_" + digest)
    for rel, text in SOURCES.items():
        path = os.path.join(root, *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            with open(path, encoding="utf-8") as fh:
                same = fh.read() == text
        except OSError:
            same = False
        if not same:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
    if root not in sys.path:
        sys.path.insert(0, root)
    return root


def _wheel_dirs() -> list:
    """Folders that may hold wheels: $RSNA_WHEELS_DIR, ./wheels next to this file, attached Kaggle datasets."""
    import glob
    import os

    dirs = [os.environ.get("RSNA_WHEELS_DIR", "")]
    try:
        dirs.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "wheels"))
    except NameError:  # notebook cell: no __file__
        pass
    found = glob.glob("/kaggle/input/*/*.whl") + glob.glob("/kaggle/input/*/*/*.whl")
    dirs += sorted({os.path.dirname(p) for p in found})
    return [d for d in dirs if d and glob.glob(os.path.join(d, "*.whl"))]


def _ensure_packages() -> None:
    """Install, offline from attached wheels, any package whose import fails (internet is off on Kaggle)."""
    import importlib
    import shutil
    import subprocess
    import sys

    missing = []
    for module, requirement in WHEELS.items():
        try:
            importlib.import_module(module)
        except Exception:
            if module == "onnxruntime" and shutil.which("nvidia-smi") is None:
                requirement = "onnxruntime"
            missing.append(requirement)
    dirs = _wheel_dirs()
    if not missing or not dirs:
        if missing:
            print("kernel: missing " + ", ".join(missing) + " and no wheels folder found", file=sys.stderr)
        return
    links = [arg for d in dirs for arg in ("--find-links", d)]
    for requirement in missing:
        candidates = [requirement, "onnxruntime-gpu"] if requirement == "onnxruntime" else [requirement]
        for candidate in candidates:
            cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--quiet", *links, candidate]
            if subprocess.run(cmd, check=False).returncode == 0:
                break
        else:
            print("kernel: could not install " + requirement + " from " + ", ".join(dirs), file=sys.stderr)
    importlib.invalidate_caches()


def _argv() -> list:
    import sys

    try:
        get_ipython  # noqa: F821  (defined inside notebooks: their argv belongs to the kernel process)
        return []
    except NameError:
        return sys.argv[1:]


if __name__ == "__main__":
    _install_sources()
    _ensure_packages()
    from kernel.gateway import kernel_main

    kernel_main(_argv(), prog=NAME)
'''


def kernel_sources(repo: Path = REPO) -> dict[str, str]:
    """Relative path -> text of every file the kernel embeds, sorted: kernel/*.py, nothing else (the metric is
    part of the kernel package, so the built file scores a local run on its own)."""
    files = sorted((repo / "kernel").glob("*.py"))
    sources = {f"kernel/{p.name}": p.read_text(encoding="utf-8") for p in files}
    assert "kernel/predict.py" in sources and "kernel/gateway.py" in sources, f"kernel sources missing in {repo}"
    return dict(sorted(sources.items()))


def literal(text: str) -> str:
    """A readable Python string literal for ``text``: a raw triple-quoted block when possible, else repr()."""
    if "'''" not in text and not text.endswith("\\") and "\r" not in text:
        candidate = "r'''" + text + "'''"
        if ast.literal_eval(candidate) == text:
            return candidate
    return repr(text)


def render_kernel(name: str, sources: dict[str, str]) -> str:
    """The single-file kernel: embedded sources, then the bootstrap that installs and runs them."""
    digest = hashlib.sha256(repr(sorted(sources.items())).encode()).hexdigest()
    parts = [
        "#!/usr/bin/env python3",
        f'"""RSNA Intracranial Aneurysm Detection kernel "{name}" (built by build_kernel.py, sources {digest[:16]}).',
        "",
        "Kaggle: serves the evaluation gateway on a rerun, runs the local gateway in an interactive notebook.",
        f"Elsewhere: python {name}.py --data DIR [--weights DIR] [--solution CSV]  (writes ./submission.parquet)",
        '"""',
        "",
        f"NAME = {name!r}",
        f"WHEELS = {json.dumps(KERNEL_WHEELS, indent=4)}",
        "",
        "SOURCES = {}",
    ]
    for rel, text in sources.items():
        parts.append(f"SOURCES[{rel!r}] = {literal(text)}")
    parts.append(BOOTSTRAP)
    return "\n".join(parts).rstrip("\n") + "\n"


def render_notebook(code: str) -> str:
    """One code cell holding the kernel file."""
    notebook = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": "kernel", "metadata": {}, "outputs": [],
                   "source": code.splitlines(keepends=True)}],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return json.dumps(notebook, indent=1, sort_keys=True) + "\n"


def kernel_metadata(user: str, name: str, weights_slug: str, wheels_slug: str | None) -> dict:
    datasets = [f"{user}/{weights_slug}"] + ([f"{user}/{wheels_slug}"] if wheels_slug else [])
    return {
        "id": f"{user}/{name}",
        "title": name,
        "code_file": f"{name}.ipynb",
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": True,
        "enable_tpu": False,
        "enable_internet": False,
        "dataset_sources": datasets,
        "competition_sources": [COMPETITION],
        "kernel_sources": [],
        "model_sources": [],
    }


def dataset_metadata(user: str, slug: str, title: str) -> dict:
    return {"title": title, "id": f"{user}/{slug}", "licenses": [{"name": "CC0-1.0"}]}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")


def _json(obj: dict) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def build_weights(weights_dir: Path, out_dir: Path, user: str, slug: str) -> list[str]:
    """Copy the manifest and the files it lists (checked against their sha256) into ``out_dir``."""
    sys.path.insert(0, str(REPO))
    from kernel.manifest import MANIFEST_NAME, load_manifest

    manifest = load_manifest(weights_dir, check_hashes=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    files = [MANIFEST_NAME] + sorted({m["file"] for m in manifest.data["models"]})
    for rel in files:
        shutil.copyfile(manifest.weights_dir / rel, out_dir / rel)
    _write(out_dir / "dataset-metadata.json", _json(dataset_metadata(user, slug, "RSNA aneurysm kernel weights")))
    return files


def pip_download_command(out_dir: Path, python_version: str, platforms: Sequence[str] = PLATFORMS) -> list[str]:
    """``pip download`` of the kernel's extra wheels (and their dependencies) for Kaggle's Python and platform.

    pip matches platform tags exactly, so every manylinux tag the image accepts is listed.
    """
    platform_args = [arg for tag in platforms for arg in ("--platform", tag)]
    return [
        sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--python-version", python_version,
        *platform_args, "--dest", str(out_dir), *sorted(set(KERNEL_WHEELS.values()) | {"onnxruntime"}),
    ]


def build(
    out: Path = REPO / "dist",
    *,
    name: str = "rsna-aneurysm-kernel",
    weights: Path | None = REPO / "weights",
    user: str = "your-kaggle-username",
    weights_slug: str = "rsna-aneurysm-weights",
    wheels_slug: str | None = None,
    repo: Path = REPO,
) -> dict[str, Path]:
    """Write dist/kernel (and dist/weights when ``weights`` is given); return the main paths."""
    code = render_kernel(name, kernel_sources(repo))
    kernel_dir = out / "kernel"
    if kernel_dir.exists():
        shutil.rmtree(kernel_dir)
    _write(kernel_dir / f"{name}.py", code)
    _write(kernel_dir / f"{name}.ipynb", render_notebook(code))
    _write(kernel_dir / "kernel-metadata.json", _json(kernel_metadata(user, name, weights_slug, wheels_slug)))
    paths = {"kernel": kernel_dir / f"{name}.py", "notebook": kernel_dir / f"{name}.ipynb"}
    if weights is not None:
        build_weights(weights, out / "weights", user, weights_slug)
        paths["weights"] = out / "weights"
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="output folder")
    parser.add_argument("--name", default="rsna-aneurysm-kernel", help="kernel slug and file name")
    parser.add_argument("--weights", type=Path, default=REPO / "weights", help="weights folder with manifest.json")
    parser.add_argument("--no-weights", action="store_true", help="build the kernel only (no dist/weights)")
    parser.add_argument("--user", default="your-kaggle-username", help="Kaggle user name for the metadata ids")
    parser.add_argument("--weights-slug", default="rsna-aneurysm-weights", help="weights dataset slug")
    parser.add_argument("--wheels", action="store_true", help="also download the extra wheels into dist/wheels")
    parser.add_argument("--wheels-slug", default="rsna-aneurysm-wheels", help="wheels dataset slug")
    parser.add_argument("--python-version", default="3.11", help="Kaggle image's Python, for --wheels")
    parser.add_argument("--platform", action="append", default=None,
                        help=f"wheel platform tag for --wheels, repeatable (default: {' '.join(PLATFORMS)})")
    args = parser.parse_args(argv)
    paths = build(args.out, name=args.name, weights=None if args.no_weights else args.weights, user=args.user,
                  weights_slug=args.weights_slug, wheels_slug=args.wheels_slug if args.wheels else None)
    if args.wheels:
        wheels_dir = args.out / "wheels"
        wheels_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(pip_download_command(wheels_dir, args.python_version, args.platform or PLATFORMS), check=True)
        _write(wheels_dir / "dataset-metadata.json",
               _json(dataset_metadata(args.user, args.wheels_slug, "RSNA aneurysm kernel wheels")))
        paths["wheels"] = wheels_dir
    for label, path in paths.items():
        print(f"{label}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
