"""Section machine: card, driver, torch / CUDA / cuDNN / NCCL, onnxruntime and its providers, the Python packages."""

from __future__ import annotations

import importlib
import os
import platform
import subprocess
from typing import Any

from .harness import Ctx, Section, row, table

TITLE = "Machine"
PACKAGES = ("numpy", "scipy", "pandas", "pyarrow", "onnx", "onnxruntime", "torch", "pydicom", "pylibjpeg", "libjpeg",
            "openjpeg", "rle", "jpeg_ls", "nibabel", "polars", "yaml", "tqdm", "matplotlib", "sklearn", "cv2")


def _version(name: str) -> str:
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - a missing or broken package is a finding, not an error
        return f"missing ({type(exc).__name__})"
    return str(getattr(module, "__version__", "present"))


def nvidia_smi() -> str:
    """name, memory, driver, max SM clock and power limit of the first card, or "not available"."""
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


def _cuda_info() -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(0)
    return {"device": props.name, "compute capability": f"{props.major}.{props.minor}",
            "GPU memory GiB": round(props.total_memory / 2**30, 1), "multiprocessors": props.multi_processor_count,
            "TF32 (cudnn / matmul)": f"{torch.backends.cudnn.allow_tf32} / {torch.backends.cuda.matmul.allow_tf32}",
            "NCCL": _nccl_version()}


def run(ctx: Ctx, sec: Section) -> None:
    """One table of what the machine is; on the GPU machine without CUDA the later sections are skipped."""
    import onnxruntime as ort
    import torch

    info: dict[str, Any] = {"nvidia-smi (name, memory, driver, max SM clock, power limit)": nvidia_smi(),
                            "torch": torch.__version__, "torch CUDA": torch.version.cuda,
                            "cuDNN": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                            "CUDA available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info.update(_cuda_info())
    info.update({"onnxruntime providers": ", ".join(ort.get_available_providers()),
                 "python": platform.python_version(), "platform": platform.platform(), "CPU cores": os.cpu_count(),
                 "memory GiB": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                 "wheels (gpu_check.sh)": os.environ.get("GPU_CHECK_WHEELS", "not run through gpu_check.sh")})
    info.update({f"package {name}": _version(name) for name in PACKAGES})
    sec.data.update(info)
    ctx.shared["card"] = info.get("device") or ("CPU dry run (--cpu)" if not ctx.gpu else "no CUDA device")
    ctx.report.header["title"] = ctx.shared["card"]
    sec.lines += table(["item", "value"])
    sec.lines += [row(key, value) for key, value in info.items()]
    ctx.report.write()
    if ctx.gpu and not torch.cuda.is_available():
        ctx.shared["fatal"] = "torch sees no CUDA device"
        raise RuntimeError("torch sees no CUDA device: the GPU sections cannot run (use --cpu for the dry run)")
