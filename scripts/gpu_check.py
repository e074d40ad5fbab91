"""GPU check: the kernel's and training's CUDA paths on a real card, measured into one markdown report.

Run through ``scripts/gpu_check.sh`` on the GPU machine (it installs the carried wheels first); ``--cpu`` runs every
section on the CPU at tiny sizes (the CI dry run, ``tests/test_gpu_check.py``). Sections, in order, each with its own
time limit inside a global budget (a section that runs out keeps what it measured and says so):

  machine     card, driver, torch / CUDA / cuDNN, onnxruntime and its providers, the Python packages
  preprocess  kernel.preprocess.resample_to_spacing, backend cuda (and torch CPU) against numpy on one full-size
              400 x 512 x 512 phantom CTA: max abs difference, seconds per series; prepare_volume end to end
  models      the full config's locator + classifier (random init, exported by train_offline.export) through
              kernel.recipe.predict_volume: torch on CUDA (fp32, fp16 and bf16 autocast; train_offline.evaluate
              .torch_runner) against onnxruntime fp32 on the CPU (kernel.ensemble.Ensemble.run); max abs
              difference of the 14 probabilities, locator centre shift, seconds per series
  e2e         kernel seconds per series (read, canonical, resample with torch CUDA vs numpy, ensemble on the CPU)
  train       classifier steps channels-last vs default alternating in one process (bf16 autocast); phantoms
              generated and cached on every core; train_offline.train --config full for a few hundred steps,
              single-process and under torchrun --nproc_per_node 1 (NCCL): seconds per step, peak GPU memory, loss

Writes ``gpu_check.md`` (after every row, so a killed run still returns something), ``gpu_check.json`` (the numbers)
and ``gpu_check.log`` (the tail of every command's output) under ``--out`` (default $OUT). The onnxruntime CUDA
provider is not tested: onnxruntime-gpu is too large to carry to the machine, and its image has the CPU build.

    scripts/gpu_check.sh                                  # on the GPU machine
    .venv/bin/python scripts/gpu_check.py --cpu --out /tmp/gc [--skip torchrun]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SECTIONS = ("machine", "preprocess", "models", "e2e", "train")
TRAIN_PARTS = ("channels_last", "data", "single", "torchrun")
# Seconds per section: GPU (H200, 16 cores) and the CPU dry run. The global budget cuts the later ones.
LIMITS = {
    "gpu": {"machine": 30, "preprocess": 70, "models": 110, "e2e": 60, "train": 320},
    "cpu": {"machine": 60, "preprocess": 120, "models": 180, "e2e": 120, "train": 400},
}
PART_LIMITS = {"gpu": {"channels_last": 40, "data": 70, "single": 120, "torchrun": 110},
               "cpu": {"channels_last": 60, "data": 120, "single": 150, "torchrun": 150}}
DEFAULT_BUDGET = {"gpu": 480, "cpu": 900}
PACKAGES = ("numpy", "scipy", "pandas", "pyarrow", "onnx", "onnxruntime", "torch", "pydicom", "pylibjpeg", "libjpeg",
            "openjpeg", "rle", "jpeg_ls", "nibabel", "polars", "yaml", "tqdm", "matplotlib", "sklearn", "cv2")
# --cpu: models small enough for two shared cores (the same code paths as the full config).
CPU_MODEL = {
    "locator": {"input_shape": [16, 16, 16], "spacing_mm": [12.0, 12.0, 12.0], "channels": [4, 8], "batch_size": 4,
                "epochs": 2, "val_every": 2},
    "classifier": {"input_shape": [16, 16, 16], "spacing_mm": [4.0, 4.0, 4.0], "channels": [4, 8, 8, 8],
                   "batch_size": 4, "epochs": 2, "val_every": 2, "pretrain_epochs": 0},
}
CPU_TRAIN = {**CPU_MODEL, "train": {"device": "cpu", "num_workers": 0, "threads": 1}}
# GPU: the full config as it is (bf16 autocast, 8 loader workers, 128^3 crops at 0.8 mm), validated once at the end.
# The fine stage needs DICOM boxes (--no-fine here; its GPU path is the same loop); pretraining gets 2 of the epochs.
GPU_TRAIN = {"locator": {"epochs": 8, "val_every": 8},
             "classifier": {"epochs": 22, "val_every": 22, "pretrain_epochs": 2}}
RESAMPLE_RTOL = 1e-5  # numpy vs torch resampling: float rounding (tests/kernel/test_preprocess.py uses 1e-5 on [0, 1])


class SectionTimeout(BaseException):
    """The running section reached its time limit (BaseException: code that catches Exception must not hide it)."""


class Terminated(BaseException):
    """SIGTERM (the wrapper's ``timeout``): stop, end the commands started, keep the report."""


def _on_alarm(_signum: int, _frame: Any) -> None:
    raise SectionTimeout()


def _on_term(_signum: int, _frame: Any) -> None:
    raise Terminated()


# --- the report ------------------------------------------------------------------------------------------------------


@dataclass
class Section:
    key: str
    title: str
    limit_s: float
    status: str = "pending"
    seconds: float | None = None
    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


class Report:
    """Markdown + JSON under ``out``, rewritten (atomically) after every change."""

    def __init__(self, out: Path, header: dict[str, Any]):
        self.out = out
        self.header = header
        self.sections: dict[str, Section] = {}
        self.notes: list[str] = []
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.log").write_text("")

    def add(self, sec: Section, line: str = "") -> None:
        sec.lines.append(line)
        self.write()

    def log(self, text: str) -> None:
        with open(self.out / "gpu_check.log", "a") as fh:
            fh.write(text.rstrip("\n") + "\n")

    def render(self) -> str:
        h = self.header
        lines = [f"# GPU check: {h['title']}", "",
                 f"{h['date']}; mode {h['mode']}; commit {h['commit']}; budget {h['budget_s']:.0f} s; "
                 f"wall so far {time.monotonic() - h['t0']:.0f} s", "",
                 "| section | status | seconds | limit s |", "|---|---|---|---|"]
        for sec in self.sections.values():
            secs = "" if sec.seconds is None else f"{sec.seconds:.1f}"
            lines.append(f"| {sec.key} | {sec.status} | {secs} | {sec.limit_s:.0f} |")
        lines.append("")
        lines += [f"- {n}" for n in self.notes]
        for i, sec in enumerate(self.sections.values(), 1):
            lines += ["", f"## {i}. {sec.title}", "", *sec.lines, "", f"*{sec.key}: {sec.status}*"]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        for name, text in (("gpu_check.md", self.render()), ("gpu_check.json", json.dumps(self.as_json(), indent=1,
                                                                                         default=_json_default))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.out / name)

    def as_json(self) -> dict[str, Any]:
        header = {k: v for k, v in self.header.items() if k != "t0"}
        return {"header": header, "notes": self.notes,
                "sections": {k: {"status": s.status, "seconds": s.seconds, "limit_s": s.limit_s, "data": s.data}
                             for k, s in self.sections.items()}}


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def table(header: Sequence[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]


def row(*cells: Any) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float | np.floating):
        v = float(value)
        if not np.isfinite(v):
            return "nan"
        return f"{v:.2e}" if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e5) else f"{v:.3f}"
    return str(value)


# --- context: mode, deadlines, commands ------------------------------------------------------------------------------


@dataclass
class Ctx:
    args: argparse.Namespace
    report: Report
    work: Path
    mode: str  # "gpu" or "cpu"
    t0: float
    budget_s: float
    deadline: float = 0.0  # the running section's
    shared: dict[str, Any] = field(default_factory=dict)  # artefacts one section leaves for the next

    @property
    def gpu(self) -> bool:
        return self.mode == "gpu"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def global_left(self) -> float:
        return self.t0 + self.budget_s - time.monotonic()

    def skipped(self, name: str) -> bool:
        return name in self.args.skip

    def device(self):
        import torch

        return torch.device("cuda" if self.gpu else "cpu")

    def sync(self) -> None:
        if self.gpu:
            import torch

            torch.cuda.synchronize()


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


@dataclass
class CmdResult:
    rc: int | None
    seconds: float
    timed_out: bool
    tail: str


def _tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace")[-200_000:]
    parts = [p for p in re.split(r"[\r\n]+", text) if p.strip()]
    return "\n".join(parts[-lines:])


def _kill_group(proc: subprocess.Popen) -> None:
    """End the command and everything it started (its own process group: ``process_group=0``)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_cmd(ctx: Ctx, name: str, cmd: Sequence[str], limit_s: float, env: dict[str, str] | None = None) -> CmdResult:
    """Run a command from the repository root within ``limit_s`` and the section's deadline; log its tail."""
    timeout = max(1.0, min(limit_s, ctx.left() - 1.0))  # ends before the section's alarm: the section goes on
    log_path = ctx.work / f"{name}.log"
    start = time.monotonic()
    rc, timed_out = None, False
    with open(log_path, "w") as fh:
        # Its own process group (not a new session): killpg ends it with every worker it started.
        proc = subprocess.Popen(list(cmd), cwd=REPO, env=env or child_env(), stdout=fh, stderr=subprocess.STDOUT,
                                process_group=0)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
        except BaseException:
            _kill_group(proc)
            ctx.report.log(f"== {name}: interrupted after {time.monotonic() - start:.1f} s\n{_tail(log_path)}")
            raise
    seconds = time.monotonic() - start
    tail = _tail(log_path)
    state = f"timed out after {seconds:.0f} s (limit {timeout:.0f} s)" if timed_out else f"rc {rc}, {seconds:.1f} s"
    ctx.report.log(f"== {name}: {state}\n$ {' '.join(cmd)}\n{tail}\n")
    return CmdResult(rc, seconds, timed_out, tail)


@contextlib.contextmanager
def timer() -> Iterator[list[float]]:
    box: list[float] = []
    start = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - start)


def median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


def attempt(ctx: Ctx, sec: Section, name: str, fn: Callable[[], Any]) -> Any:
    """Run one part of a section; a failure is written into the report and the section goes on with the next part.

    The time limit (SectionTimeout) and SIGTERM are BaseExceptions and still end the section.
    """
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - reported, then the next part runs
        sec.data.setdefault("failed", []).append(name)
        ctx.report.log(f"== {sec.key}/{name} failed\n{traceback.format_exc()}")
        ctx.report.add(sec, f"\n**{name} failed**: `{type(exc).__name__}: {' '.join(str(exc).split())[:300]}`\n\n"
                            f"```\n{traceback.format_exc()[-1500:]}\n```\n")
        return None


def overrides_to_set(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """Nested dict -> ``a.b=value`` strings for ``train_offline.train --set`` (values as JSON, which YAML reads)."""
    out = []
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += overrides_to_set(value, name + ".")
        else:
            out.append(f"{name}={json.dumps(value)}")
    return out


def model_config(ctx: Ctx) -> dict[str, Any]:
    """The full config (``--cpu``: with tiny models) as train_offline.config resolves it."""
    from train_offline.config import load_config

    return load_config("full", None if ctx.gpu else CPU_MODEL)


# --- section: machine ------------------------------------------------------------------------------------------------


def _version(name: str) -> str:
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - a missing or broken package is a finding, not an error
        return f"missing ({type(exc).__name__})"
    return str(getattr(module, "__version__", "present"))


def nvidia_smi() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30, check=True)
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "not available"


def _nccl_version() -> str | None:
    try:
        import torch.cuda.nccl as nccl

        version = nccl.version()
        return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    except Exception:  # noqa: BLE001 - not every build has NCCL
        return None


def section_machine(ctx: Ctx, sec: Section) -> None:
    import onnxruntime as ort
    import torch

    rep = ctx.report
    info: dict[str, Any] = {"nvidia-smi (name, memory, driver, max SM clock, power limit)": nvidia_smi(),
                            "torch": torch.__version__, "torch CUDA": torch.version.cuda,
                            "cuDNN": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                            "CUDA available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update({"device": props.name, "compute capability": f"{props.major}.{props.minor}",
                     "GPU memory GiB": round(props.total_memory / 2**30, 1),
                     "multiprocessors": props.multi_processor_count,
                     "TF32 (cudnn / matmul)": f"{torch.backends.cudnn.allow_tf32} / "
                                              f"{torch.backends.cuda.matmul.allow_tf32}",
                     "NCCL": _nccl_version()})
    info.update({"onnxruntime providers": ", ".join(ort.get_available_providers()),
                 "python": platform.python_version(), "platform": platform.platform(), "CPU cores": os.cpu_count(),
                 "memory GiB": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                 "wheels (gpu_check.sh)": os.environ.get("GPU_CHECK_WHEELS", "not run through gpu_check.sh")})
    info.update({f"package {name}": _version(name) for name in PACKAGES})
    sec.data.update(info)
    ctx.shared["card"] = info.get("device") or ("CPU dry run (--cpu)" if not ctx.gpu else "no CUDA device")
    ctx.report.header["title"] = ctx.shared["card"]
    sec.lines += table(["item", "value"])
    for key, value in info.items():
        sec.lines.append(row(key, value))
    rep.write()
    if ctx.gpu and not torch.cuda.is_available():
        ctx.shared["fatal"] = "torch sees no CUDA device"
        raise RuntimeError("torch sees no CUDA device: the GPU sections cannot run (use --cpu for the dry run)")


# --- section: preprocess ---------------------------------------------------------------------------------------------


def _phantom_cta(ctx: Ctx) -> Path:
    """One phantom CTA series, uncompressed: full size 400 x 512 x 512 on the GPU machine, small with --cpu."""
    if "cta_folder" in ctx.shared:
        return ctx.shared["cta_folder"]
    from pydicom.uid import ExplicitVRLittleEndian

    from train_offline.phantoms.generate import generate_series

    out = ctx.work / "cta"
    with timer() as t:
        result = generate_series(out, 0, ctx.args.seed, size="full" if ctx.gpu else "small", modality="CTA",
                                 n_slices=400 if ctx.gpu else None, transfer_syntax=ExplicitVRLittleEndian,
                                 with_segmentation=False)
    ctx.shared["cta_folder"] = out / "series" / result.series_uid
    ctx.shared["cta_generate_s"] = t[0]
    return ctx.shared["cta_folder"]


def section_preprocess(ctx: Ctx, sec: Section) -> None:
    import torch

    from kernel.dicom_io import read_series
    from kernel.preprocess import prepare_volume, reorient_to_canonical, resample_to_spacing, spacing_of

    rep = ctx.report
    spacing = tuple(model_config(ctx)["volume_spacing_mm"])
    folder = _phantom_cta(ctx)
    with timer() as t_read:
        volume = read_series(folder)
    array, affine = reorient_to_canonical(volume.array, volume.affine)
    native = tuple(int(n) for n in array.shape)
    scale = 400 * 512 * 512 / float(np.prod(native))
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
    sec.lines += table(["backend", "device", "runs", "first call s", "median s", "per 400 x 512 x 512 s",
                        "output shape", "max abs diff vs numpy", "max diff / max abs", "within 1e-5"])
    backends = [("numpy", "CPU (1 thread)", 2 if ctx.gpu else 3), ("torch", f"CPU ({torch.get_num_threads()} threads)",
                                                                     3)]
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
                            "rel_diff": rel, "shape": list(out.shape)}
        rep.add(sec, row(f"`{backend}`", device, len(times), times[0], median(timed), median(timed) * scale,
                         "x".join(map(str, out.shape)), diff, rel, "yes" if rel <= RESAMPLE_RTOL else "NO"))
        if backend == ("cuda" if ctx.gpu else "torch"):
            ctx.shared["cta_canonical"] = (out, out_affine, volume.modality)
        del out
    sec.data["resample"] = results
    rep.add(sec)
    # The kernel's whole read + canonical + resample (prepare_volume) with each backend.
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
                 f"{results[fast]['max_abs_diff']:.2e} HU on values up to {float(np.abs(ref).max()):.0f}.")


# --- section: models -------------------------------------------------------------------------------------------------


def write_random_fold(config: dict[str, Any], fold_dir: Path, seed: int = 0) -> tuple[Any, Any]:
    """A trained-fold folder (config.yaml, state dicts, summary.json) holding randomly initialised models."""
    import torch
    import yaml

    from train_offline.models import build_classifier, build_locator

    torch.manual_seed(seed)
    locator, classifier = build_locator(config["locator"]), build_classifier(config["classifier"])
    fold_dir.mkdir(parents=True, exist_ok=True)
    (fold_dir / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False))
    torch.save(locator.state_dict(), fold_dir / "locator.pt")
    torch.save(classifier.state_dict(), fold_dir / "classifier.pt")
    summary = {"fold": 0, "validation": {"score": 0.5, "auc_present": 0.5, "centre_error_mm_median": None},
               "label_priors": [0.03] * 13 + [0.43]}
    (fold_dir / "summary.json").write_text(json.dumps(summary))
    return locator, classifier


def ensure_weights(ctx: Ctx) -> tuple[Path, Any, Any]:
    """ONNX weights of the full config's models through train_offline.export (random init), and the torch modules."""
    if "weights" in ctx.shared:
        return ctx.shared["weights"], *ctx.shared["torch_models"]
    from train_offline.export import export_folds

    fold_dir = ctx.work / "random_run" / "fold0"
    locator, classifier = write_random_fold(model_config(ctx), fold_dir, seed=ctx.args.seed)
    weights = ctx.work / "weights"
    with timer() as t:
        export_folds(fold_dir, weights, rescore=False)
    ctx.shared.update(weights=weights, torch_models=(locator, classifier), export_s=t[0])
    return weights, locator, classifier


def _eval_volumes(ctx: Ctx, sec: Section) -> list[tuple[str, np.ndarray, np.ndarray, str, bool]]:
    """(label, canonical array, affine, DICOM modality, geometry known) at the manifest's volume spacing."""
    from kernel.preprocess import prepare_volume

    spacing = tuple(model_config(ctx)["volume_spacing_mm"])
    volumes = []
    if "cta_canonical" in ctx.shared:
        array, affine, modality = ctx.shared["cta_canonical"]
        volumes.append(("phantom CTA " + "x".join(map(str, array.shape)), array, affine, modality, True))
    else:
        v = prepare_volume(_phantom_cta(ctx), spacing)
        volumes.append(("phantom CTA " + "x".join(map(str, v.array.shape)), v.array, v.affine, v.modality, True))
    n = 3 if ctx.gpu else 1
    out = ctx.work / "eval"
    res = run_cmd(ctx, "phantoms_eval", [sys.executable, "-m", "train_offline.phantoms", "--out", str(out), "--n",
                                         str(n), "--seed", str(ctx.args.seed + 11), "--split", "train", "--size",
                                         "real" if ctx.gpu else "small", "--workers", str(n), "--quiet"], 60)
    if res.rc == 0:
        truth = [json.loads(x) for x in (out / "phantom_truth.jsonl").read_text().splitlines()]
        for t in truth:
            v = prepare_volume(out / "series" / t["SeriesInstanceUID"], spacing)
            volumes.append((f"phantom {t['modality']} " + "x".join(map(str, v.array.shape)), v.array, v.affine,
                            v.modality, v.geometry_known))
    else:
        ctx.report.add(sec, f"(extra phantoms failed: rc {res.rc}; only the CTA is compared)")
    return volumes


def _timed(run: Callable, box: list[float], sync: Callable[[], None]) -> Callable:
    def wrapped(spec, batch):
        start = time.perf_counter()
        out = run(spec, batch)
        sync()
        box.append(time.perf_counter() - start)
        return out

    return wrapped


def section_models(ctx: Ctx, sec: Section) -> None:
    import torch

    from kernel import recipe
    from kernel.ensemble import CPU, Ensemble
    from kernel.manifest import load_manifest
    from kernel.preprocess import normalise
    from train_offline.evaluate import torch_runner

    rep = ctx.report
    weights, locator, classifier = ensure_weights(ctx)
    manifest = load_manifest(weights)
    locs, clss = manifest.models("locator"), manifest.models("classifier")
    parity = {m.name: m.parity_max_abs for m in (*locs, *clss)}
    sec.data.update(export_s=ctx.shared["export_s"], parity_max_abs=parity,
                    models={m.name: {"input_shape": m.input_shape, "spacing_mm": m.spacing_mm} for m in (*locs, *clss)})
    rep.add(sec, f"Weights: the full config's models{'' if ctx.gpu else ' (--cpu: tiny widths and inputs)'}, random "
                 f"init, exported by `train_offline.export.export_folds` in {ctx.shared['export_s']:.1f} s "
                 f"(export parity torch CPU vs onnxruntime: "
                 f"{', '.join(f'{k} {v:.1e}' for k, v in parity.items())}). "
                 f"Locator {locs[0].input_shape} at {locs[0].spacing_mm} mm, classifier {clss[0].input_shape} at "
                 f"{clss[0].spacing_mm} mm with flip TTA (batch 2). Each series: "
                 f"`kernel.recipe.predict_volume` on the normalised canonical volume, run = `Ensemble.run` "
                 f"(onnxruntime {CPU}, fp32) or `torch_runner` (torch on {'CUDA' if ctx.gpu else 'the CPU'}).")
    volumes = _eval_volumes(ctx, sec)
    inputs = [(label, normalise(a, manifest.scheme(m)), aff, gk) for label, a, aff, m, gk in volumes]
    rep.add(sec, "Series: " + "; ".join(label for label, *_ in inputs) + ".")
    rep.add(sec)
    sec.lines += table(["runner", "precision", "series", "median s per series (recipe)", "median model s",
                        "max abs diff of the 14 probabilities vs onnxruntime", "max centre shift mm"])
    ensemble = Ensemble(manifest, providers=[CPU])
    reference: list[Any] = []
    rows = {}

    def measure(name: str, precision: str, run: Callable, context: Callable[[], Any], sync: Callable) -> None:
        model_box: list[float] = []
        timed_run = _timed(run, model_box, sync)
        with context():  # warm-up: sessions, cuDNN algorithm choice
            recipe.predict_volume(inputs[0][1], inputs[0][2], locs, clss, timed_run, recipe.Plan(),
                                  superior_known=inputs[0][3])
        totals, models, preds = [], [], []
        for _, array, affine, known in inputs:
            model_box.clear()
            with context(), timer() as t:
                preds.append(recipe.predict_volume(array, affine, locs, clss, timed_run, recipe.Plan(),
                                                   superior_known=known))
            totals.append(t[0])
            models.append(sum(model_box))
        if not reference:
            reference.extend(preds)
        diff = max(float(np.abs(p.probs - r.probs).max()) for p, r in zip(preds, reference, strict=True))
        shift = max(float(np.linalg.norm(p.centre_lps - r.centre_lps)) for p, r in zip(preds, reference, strict=True))
        rows[f"{name} {precision}"] = {"median_s": median(totals), "median_model_s": median(models),
                                       "max_abs_diff": diff, "max_centre_shift_mm": shift,
                                       "probs": [p.probs.round(6).tolist() for p in preds]}
        sec.data["runs"] = rows
        rep.add(sec, row(name, precision, len(preds), median(totals), median(models), diff, shift))

    measure("onnxruntime CPU", "fp32", ensemble.run, contextlib.nullcontext, lambda: None)
    device = ctx.device()
    modules = {locs[0].name: locator.to(device).eval(), clss[0].name: classifier.to(device).eval()}
    run = torch_runner(modules, device)
    sync = ctx.sync
    modes = [("fp32", None), ("fp16 autocast", torch.float16), ("bf16 autocast", torch.bfloat16)]
    for precision, dtype in modes:
        if ctx.left() < 10:
            rep.add(sec, row(f"torch {device.type}", precision, 0, None, None, None, None) + " (section time spent)")
            continue
        if ctx.gpu and dtype is not None:
            def context(dtype=dtype):
                return torch.autocast(device_type="cuda", dtype=dtype)
            label = precision
        else:
            context = contextlib.nullcontext
            label = precision if dtype is None else f"{precision} off: fp32 (no CUDA)"
        tf32 = " (TF32 convolutions)" if ctx.gpu and dtype is None and torch.backends.cudnn.allow_tf32 else ""
        attempt(ctx, sec, f"torch {precision}",
                lambda label=label, tf32=tf32, context=context: measure(f"torch {'CUDA' if ctx.gpu else 'CPU'}",
                                                                       label + tf32, run, context, sync))
    rep.add(sec)
    rep.add(sec, "onnxruntime's CUDA provider is not measured here: the machine has the CPU build of onnxruntime and "
                 "onnxruntime-gpu is too large to carry (see docs/kernel.md, GPU check).")


# --- section: e2e ----------------------------------------------------------------------------------------------------


def _factory_ct(folder: Path, gpu: bool, seed: int) -> Path:
    from testkit.dicom_factory import write_series

    if gpu:  # as benchmarks/bench_kernel.py: uncompressed CT 400 x 512 x 512, 0.45 mm pixels, 0.625 mm slices
        write_series(folder, n_slices=400, rows=512, cols=512, slice_spacing=0.625, pixel_spacing=(0.45, 0.45),
                     origin=(-115.0, -115.0, -125.0), modality="CT", seed=seed)
    else:
        write_series(folder, n_slices=24, rows=96, cols=96, slice_spacing=2.0, pixel_spacing=(1.5, 1.5),
                     origin=(-72.0, -72.0, -24.0), modality="CT", seed=seed)
    return folder


def section_e2e(ctx: Ctx, sec: Section) -> None:
    from kernel.ensemble import CPU, Ensemble
    from kernel.manifest import load_manifest
    from kernel.preprocess import prepare_volume
    from kernel.recipe import Plan
    from testkit.dicom_factory import write_series

    rep = ctx.report
    weights, _, _ = ensure_weights(ctx)
    manifest = load_manifest(weights)
    series = [("phantom CTA", _phantom_cta(ctx))]
    with timer() as t_write:
        for i in range(2 if ctx.gpu else 1):
            series.append(("factory CT", _factory_ct(ctx.work / "e2e" / f"ct{i}", ctx.gpu, seed=i)))
        warm = ctx.work / "e2e" / "warm"
        write_series(warm, n_slices=32 if ctx.gpu else 8, rows=512 if ctx.gpu else 64, cols=512 if ctx.gpu else 64,
                     modality="CT", seed=99)
    ensemble = Ensemble(manifest, providers=[CPU])
    fast = "cuda" if ctx.gpu else "torch"
    rep.add(sec, f"Weights from the models section (onnxruntime {', '.join(ensemble.active_providers)}, "
                 f"{ensemble.runs(Plan())} model runs per series). Per series: `prepare_volume(series, "
                 f"{list(manifest.volume_spacing_mm)} mm, backend=...)` then `Ensemble.predict_volume` (normalise, "
                 f"locate, classify with flips): the two calls `kernel.predict.Predictor.predict` makes. Series "
                 f"files written in {t_write[0]:.1f} s and in the page cache; one warm-up call first.")
    rep.add(sec)
    sec.lines += table(["path", "resampling", "series", "median s per series", "read + preprocess s", "models s",
                        "max s"])
    sec.data["rows"] = {}

    def one(folder: Path, backend: str) -> tuple[float, float]:
        start = time.perf_counter()
        volume = prepare_volume(folder, manifest.volume_spacing_mm, max_voxels=manifest.max_voxels, backend=backend)
        read = time.perf_counter() - start
        ensemble.predict_volume(volume.array, volume.affine, volume.modality, Plan(),
                                superior_known=volume.geometry_known)
        return time.perf_counter() - start, read

    for backend in (fast, "numpy"):
        one(warm, backend)
        totals, reads = [], []
        for _, folder in series:
            total, read = one(folder, backend)
            totals.append(total)
            reads.append(read)
        models = [a - b for a, b in zip(totals, reads, strict=True)]
        sec.data["rows"][f"direct {backend}"] = {"totals": totals, "reads": reads}
        rep.add(sec, row("prepare_volume + Ensemble.predict_volume", f"`{backend}`", len(totals), median(totals),
                         median(reads), median(models), max(totals)))
    try:
        importlib.import_module("polars")
    except ImportError:
        rep.add(sec, row("kernel.predict.Predictor", "auto", 0, None, None, None, None)
                + " skipped: polars is not installed (its 54 MB wheel is not carried); the rows above are its calls")
        return
    from kernel.budget import TimeBudget
    from kernel.predict import Predictor

    old = os.environ.get("RSNA_READ_ISOLATION")
    os.environ["RSNA_READ_ISOLATION"] = "0"  # read in this process, where torch sees the GPU
    try:
        predictor = Predictor(str(weights), budget=TimeBudget(limit_s=1e9, margin_s=0), providers=[CPU])
        predictor.predict(str(warm))
        totals, reads, models, levels = [], [], [], []
        for _, folder in series:
            with timer() as t:
                _, record = predictor.predict(str(folder))
            totals.append(t[0])
            reads.append(record.read_s or float("nan"))
            models.append(record.model_s or float("nan"))
            levels.append(record.level if record.level == "full" else f"{record.level}: {record.reason}")
    finally:
        if old is None:
            os.environ.pop("RSNA_READ_ISOLATION", None)
        else:
            os.environ["RSNA_READ_ISOLATION"] = old
    sec.data["rows"]["Predictor"] = {"totals": totals, "reads": reads, "models": models, "levels": levels}
    rep.add(sec, row("kernel.predict.Predictor (RSNA_READ_ISOLATION=0)", "auto", len(totals), median(totals),
                     median(reads), median(models), max(totals)) + ("" if set(levels) == {"full"} else
                                                                    f" levels: {levels}"))


# --- section: train --------------------------------------------------------------------------------------------------


def _channels_last(ctx: Ctx, sec: Section) -> None:
    """Classifier steps in both layouts, alternating step by step in this process (bf16 autocast on CUDA)."""
    import torch

    from train_offline.step_bench import random_batch
    from train_offline.loop import memory_format
    from train_offline.losses import classifier_loss
    from train_offline.models import build_classifier

    rep = ctx.report
    cfg = model_config(ctx)["classifier"]
    device = ctx.device()
    batch_size = int(cfg["batch_size"]) if ctx.gpu else 2
    steps, warmup = (12, 2) if ctx.gpu else (2, 1)
    shape = [int(s) for s in cfg["input_shape"]]
    runs = {}
    for channels_last in (False, True):
        torch.manual_seed(0)
        fmt = memory_format(channels_last)
        model = build_classifier(cfg).to(device, memory_format=fmt).train()
        runs[channels_last] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4), fmt, [])
    if ctx.gpu:
        torch.cuda.reset_peak_memory_stats()
    amp = ctx.gpu
    for step in range(steps + warmup):
        batch = {k: v.to(device) for k, v in random_batch(shape, batch_size, step).items()}
        for model, optimizer, fmt, times in runs.values():
            inputs = {k: v.contiguous(memory_format=fmt) if v.dim() == 5 else v for k, v in batch.items()}
            ctx.sync()
            start = time.perf_counter()
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                loss, _ = classifier_loss(model(inputs["crop"]), inputs, cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ctx.sync()
            if step >= warmup:
                times.append(time.perf_counter() - start)
        if ctx.left() < 5:
            break
    peak = torch.cuda.max_memory_allocated() / 2**20 if ctx.gpu else None
    default, last = (np.asarray(runs[k][3]) for k in (False, True))
    ratio = last / default[: len(last)]
    sec.data["channels_last"] = {"default_s": default.tolist(), "channels_last_s": last.tolist(),
                                 "ratio_median": float(np.median(ratio)), "peak_mb_both": peak,
                                 "batch": batch_size, "shape": shape}
    rep.add(sec, f"**Classifier step, channels-last vs default layout** ({shape} crop, channels {cfg['channels']}, "
                 f"batch {batch_size}, {'bf16 autocast on CUDA' if amp else 'fp32 on the CPU (no CUDA)'}, random "
                 f"batches on the device, {len(default)} timed steps per layout after {warmup} warm-up, alternating "
                 f"step by step in one process; `train_offline.loop.memory_format`, `losses.classifier_loss`):")
    rep.add(sec)
    sec.lines += table(["layout", "median ms per step", "ms per sample", "p10 ms", "p90 ms"])
    for name, t in (("default (contiguous)", default), ("channels-last 3D", last)):
        rep.add(sec, row(name, 1000 * float(np.median(t)), 1000 * float(np.median(t)) / batch_size,
                         1000 * float(np.percentile(t, 10)), 1000 * float(np.percentile(t, 90))))
    rep.add(sec)
    rep.add(sec, f"channels-last / default, paired by step: median {np.median(ratio):.2f} (range {ratio.min():.2f}-"
                 f"{ratio.max():.2f})" + (f"; peak GPU memory of both models together {peak:.0f} MB" if peak else ""))
    rep.add(sec)
    for model, optimizer, _, _ in runs.values():
        del model, optimizer
    runs.clear()
    if ctx.gpu:
        torch.cuda.empty_cache()


def _data(ctx: Ctx, sec: Section) -> tuple[Path, Path] | None:
    rep = ctx.report
    cores = os.cpu_count() or 2
    workers = cores if ctx.gpu else 2
    n = ctx.args.train_series or (96 if ctx.gpu else 10)
    data, cache = ctx.work / "train_data", ctx.work / "train_cache"
    size = "real" if ctx.gpu else "small"
    gen = run_cmd(ctx, "phantoms_train", [sys.executable, "-m", "train_offline.phantoms", "--out", str(data), "--n",
                                          str(n), "--seed", str(ctx.args.seed), "--split", "train", "--size", size,
                                          "--workers", str(workers), "--quiet"], PART_LIMITS[ctx.mode]["data"])
    sec.data["phantoms"] = {"n": n, "size": size, "workers": workers, "seconds": gen.seconds, "rc": gen.rc}
    if gen.rc != 0:
        late = ", timed out" if gen.timed_out else ""
        rep.add(sec, f"phantom generation failed (rc {gen.rc}, {gen.seconds:.0f} s{late}):\n\n```\n"
                     f"{gen.tail[-1500:]}\n```")
        return None
    pre = run_cmd(ctx, "precache", [sys.executable, "-m", "train_offline.precache_all", "--config", "full", "--data",
                                    str(data), "--out", str(cache), "--workers", str(workers)],
                  PART_LIMITS[ctx.mode]["data"])
    cached = len(list(cache.glob("*.npy")))
    sec.data["precache"] = {"seconds": pre.seconds, "rc": pre.rc, "cached": cached}
    rep.add(sec, f"**Data**: {n} `--size {size}` training phantoms generated with {workers} workers in "
                 f"{gen.seconds:.1f} s, then cached by `precache_all --config full` (1 mm) with {workers} workers in "
                 f"{pre.seconds:.1f} s ({cached} cached, rc {pre.rc}{', timed out' if pre.timed_out else ''}); "
                 f"{cores} cores, one tool after the other, each on every core.")
    rep.add(sec)
    if pre.rc != 0 or cached < 4:
        rep.add(sec, f"```\n{pre.tail[-1500:]}\n```")
        return None
    return data, cache


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def stage_stats(records: list[dict[str, Any]], stage: str) -> dict[str, Any] | None:
    rows = [r for r in records if r.get("stage") == stage]
    if not rows:
        return None
    per_step = [r["seconds"] / r["steps"] for r in rows if r.get("steps")]
    steady = per_step[1:] if len(per_step) > 1 else per_step  # the first epoch holds cuDNN's algorithm search
    losses = [r["train_loss"] for r in rows if r.get("train_loss") is not None]
    peaks = [r["gpu_peak_mb"] for r in rows if r.get("gpu_peak_mb") is not None]
    return {"epochs": len(rows), "steps": int(sum(r.get("steps", 0) for r in rows)), "s_per_step": median(steady),
            "first_epoch_s_per_step": per_step[0] if per_step else None, "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None, "loss_min": min(losses) if losses else None,
            "loss_down": bool(len(losses) > 1 and losses[-1] < losses[0]), "gpu_peak_mb": max(peaks) if peaks else None,
            "ddp": rows[-1].get("ddp")}


def _train_run(ctx: Ctx, sec: Section, name: str, data: Path, cache: Path, torchrun: bool) -> None:
    rep = ctx.report
    out = ctx.work / "runs" / name / "fold0"
    overrides = {**(GPU_TRAIN if ctx.gpu else CPU_TRAIN)}
    paths = [f"data.root={data}", f"data.cache={cache}", f"data.index={ctx.work / 'train_index.csv'}",
             f"data.folds_csv={ctx.work / 'train_folds.csv'}"]
    args = ["-m", "train_offline.train", "--config", "full", "--fold", "0", "--out", str(out), "--no-fine", "--set",
            *paths,
            *overrides_to_set(overrides)]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", *args]
    else:
        cmd = [sys.executable, *args]
    env = child_env(None if ctx.gpu else {"OMP_NUM_THREADS": "1"})
    res = run_cmd(ctx, f"train_{name}", cmd, PART_LIMITS[ctx.mode][name], env=env)
    records = read_metrics(out / "metrics.jsonl")
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else None
    stages = [s for s in ("locator", "pretrain", "classifier")
              if s != "pretrain" or any(r.get("stage") == "pretrain" for r in records)]
    stats = {stage: stage_stats(records, stage) for stage in stages}
    status = ("timed out: the epochs logged before the limit" if res.timed_out else
              "ok" if res.rc == 0 else f"failed (rc {res.rc})")
    launcher = ("torchrun --nproc_per_node 1 (" + ("NCCL" if ctx.gpu else "gloo") + ")") if torchrun else \
        "python -m (one process)"
    sec.data[name] = {"launcher": launcher, "status": status, "wall_s": res.seconds, "rc": res.rc,
                      "stages": stats, "records": records,
                      "summary": {k: summary[k] for k in ("world_size", "n_train", "n_val", "seconds")} | {
                          "score": summary["validation"].get("score")} if summary else None}
    for stage, s in stats.items():
        if s is None:
            rep.add(sec, row(launcher, status, res.seconds, stage, 0, 0, None, None, None, None, None, None))
            continue
        loss = "-" if s["loss_first"] is None else f"{s['loss_first']:.4f} -> {s['loss_last']:.4f}"
        rep.add(sec, row(launcher, status, res.seconds, stage, s["epochs"], s["steps"], s["s_per_step"],
                         s["first_epoch_s_per_step"], s["gpu_peak_mb"], loss, "yes" if s["loss_down"] else "no",
                         s["ddp"] or "none"))
    if res.timed_out:
        sec.data.setdefault("partial", []).append(f"{name} stopped at its time limit after {res.seconds:.0f} s")
    elif res.rc != 0:
        sec.data.setdefault("failed", []).append(name)
    if res.rc not in (0, None) or not records:
        sec.data[name]["tail"] = res.tail[-3000:]


def section_train(ctx: Ctx, sec: Section) -> None:
    rep = ctx.report
    parts_done = []
    if not ctx.skipped("channels_last"):
        attempt(ctx, sec, "channels_last", lambda: _channels_last(ctx, sec))
        parts_done.append("channels_last")
    if ctx.skipped("data"):
        rep.add(sec, "(data, single and torchrun skipped)")
        return
    made = _data(ctx, sec)
    if made is None:
        raise RuntimeError("no training data: see above")
    data, cache = made
    overrides = GPU_TRAIN if ctx.gpu else CPU_TRAIN
    what = ("the full config's bf16 autocast (train.amp), 8 loader workers, preload none" if ctx.gpu else
            "--cpu: tiny models, fp32 on the CPU (train.amp autocasts on CUDA only)")
    rep.add(sec, f"**`train_offline.train --config full`** (`--set` {' '.join(overrides_to_set(overrides))} and the "
                 f"data paths; {what}). s/step = epoch seconds / steps (data loading included), median over the "
                 "epochs after the first; peak GPU memory = `torch.cuda.max_memory_allocated` in the training "
                 "process (train_offline.loop writes it to metrics.jsonl).")
    rep.add(sec)
    sec.lines += table(["launcher", "status", "wall s", "stage", "epochs", "steps", "s/step", "first epoch s/step",
                        "peak GPU MB", "loss first -> last epoch", "loss down", "DDP backend"])
    for name, torchrun in (("single", False), ("torchrun", True)):
        if ctx.skipped(name):
            rep.add(sec, row(name, "skipped (--skip)", None, None, None, None, None, None, None, None, None, None))
            continue
        if ctx.left() < 20:
            rep.add(sec, row(name, "skipped: section time spent", None, None, None, None, None, None, None, None,
                             None, None))
            continue
        attempt(ctx, sec, name, lambda name=name, torchrun=torchrun: _train_run(ctx, sec, name, data, cache,
                                                                                torchrun))
        parts_done.append(name)
    for name in ("single", "torchrun"):
        if sec.data.get(name, {}).get("tail"):
            rep.add(sec, f"\n{name} output (tail):\n\n```\n{sec.data[name]['tail'][-1500:]}\n```")
    sec.data["parts_done"] = parts_done


# --- main ------------------------------------------------------------------------------------------------------------


RUNNERS: dict[str, tuple[str, Callable[[Ctx, Section], None]]] = {
    "machine": ("Machine", section_machine),
    "preprocess": ("Preprocessing: torch CUDA against numpy (kernel.preprocess.resample_to_spacing)",
                   section_preprocess),
    "models": ("Locator + classifier: torch CUDA autocast against onnxruntime CPU fp32 (kernel.recipe)",
               section_models),
    "e2e": ("Kernel end to end per series with torch-CUDA preprocessing", section_e2e),
    "train": ("Training: train_offline.train --config full, single process and torchrun (NCCL)", section_train),
}


def run_section(ctx: Ctx, sec: Section, fn: Callable[[Ctx, Section], None]) -> None:
    left = ctx.global_left() - 3
    if left < 5:
        sec.status = "skipped: global budget spent"
        ctx.report.write()
        return
    ctx.deadline = time.monotonic() + min(sec.limit_s, left)
    sec.status = "running"
    ctx.report.write()
    start = time.monotonic()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(ctx.left(), 1.0))
    try:
        fn(ctx, sec)
        failed, partial = sec.data.get("failed"), sec.data.get("partial")
        sec.status = (f"partly failed: {', '.join(failed)}" if failed else
                      f"ok, partial: {', '.join(partial)}" if partial else "ok")
    except SectionTimeout:
        sec.status = f"timed out after {time.monotonic() - start:.0f} s: partial results"
    except Terminated:
        sec.status = f"terminated (SIGTERM) after {time.monotonic() - start:.0f} s: partial results"
        raise
    except Exception as exc:  # noqa: BLE001 - one section's failure is reported, the next still runs
        sec.status = f"failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        sec.lines += ["", "```", traceback.format_exc()[-3000:], "```"]
        ctx.report.log(f"== section {sec.key} failed\n{traceback.format_exc()}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        sec.seconds = time.monotonic() - start
        ctx.report.write()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or "unknown (no git)"
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="sections: " + ", ".join(SECTIONS) + "; train parts: " +
                                     ", ".join(TRAIN_PARTS))
    parser.add_argument("--cpu", action="store_true",
                        help="dry run on the CPU: every section at tiny sizes (small phantoms, tiny models through "
                             "--set, torchrun with gloo, fp32 where autocast needs CUDA)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: $OUT, else runs/gpu_check)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir, removed)")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for the whole check (default {DEFAULT_BUDGET['gpu']} on the GPU, "
                             f"{DEFAULT_BUDGET['cpu']} with --cpu); sections also have their own limits")
    parser.add_argument("--skip", nargs="*", default=[], choices=[*SECTIONS, *TRAIN_PARTS], metavar="NAME",
                        help="sections or train parts to leave out")
    parser.add_argument("--train-series", type=int, default=0,
                        help="training phantoms (default 96 real-size on the GPU, 10 small with --cpu)")
    parser.add_argument("--seed", type=int, default=0, help="phantom and model seed (default 0)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "cpu" if args.cpu else "gpu"
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "runs" / "gpu_check")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    budget = args.budget or DEFAULT_BUDGET[mode]
    header = {"title": "CPU dry run (--cpu)" if args.cpu else "(card not read yet)",
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "mode": "CPU dry run (--cpu)" if args.cpu else "GPU",
              "commit": git_commit(), "budget_s": budget, "t0": t0, "argv": list(argv or sys.argv[1:])}
    report = Report(out, header)
    report.notes += [
        "Not tested: onnxruntime's CUDA provider (the machine has the CPU build; onnxruntime-gpu is too large to "
        "carry), so the kernel's models run on the CPU there and torch runs them on CUDA for comparison.",
        "Weights are random-init exports of the full config: times do not depend on the values; differences between "
        "precisions are those of these weights.",
    ]
    if args.cpu:
        report.notes.append("--cpu: tiny sizes; the numbers prove the code paths, not the speed of anything.")
    ctx = Ctx(args=args, report=report, work=work, mode=mode, t0=t0, budget_s=budget)
    for key in SECTIONS:
        title, _ = RUNNERS[key]
        report.sections[key] = Section(key, title, LIMITS[mode][key])
    report.write()
    signal.signal(signal.SIGTERM, _on_term)
    terminated = False
    try:
        for key in SECTIONS:
            sec = report.sections[key]
            if key in args.skip:
                sec.status = "skipped (--skip)"
                report.write()
                continue
            if ctx.shared.get("fatal"):
                sec.status = f"skipped: {ctx.shared['fatal']}"
                report.write()
                continue
            run_section(ctx, sec, RUNNERS[key][1])
    except Terminated:
        terminated = True
        for sec in report.sections.values():
            if sec.status == "pending":
                sec.status = "skipped: terminated"
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report.header["wall_s"] = round(time.monotonic() - t0, 1)
    report.write()
    print(f"report: {out / 'gpu_check.md'} ({time.monotonic() - t0:.0f} s)")
    bad = [s.key for s in report.sections.values() if s.status not in ("ok",) and not s.status.startswith("skipped")]
    return 3 if terminated else 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
