"""GPU check: the kernel's and training's CUDA paths on a real card, measured into one markdown report.

Run through ``scripts/gpu_check.sh`` on the GPU machine (it installs the carried wheels first); ``--cpu`` runs every
section on the CPU at tiny sizes (the CI dry run, ``tests/test_gpu_check.py``). Sections, in order, each with its own
time limit inside a global budget (a section that runs out keeps what it measured and says so), one module each in
``scripts/gpu_sections/``:

  machine     card, driver, torch / CUDA / cuDNN, onnxruntime and its providers, the Python packages
  preprocess  kernel.preprocess.resample_to_spacing, backend cuda (and torch CPU) against numpy on one full-size
              400 x 512 x 512 phantom CTA: max abs difference, seconds per series; prepare_volume end to end
  models      the full config's locator + classifier (random init, exported by train_offline.export) through
              kernel.recipe.predict_volume: torch on CUDA (fp32, fp16 and bf16 autocast; --cpu: fp32 and bf16 CPU
              autocast) against onnxruntime fp32 on the CPU (kernel.ensemble.Ensemble.run); max abs difference of
              the 14 probabilities held to a tolerance per precision, locator centre shift, seconds per series
  e2e         kernel seconds per series (read, canonical, resample with torch CUDA vs numpy, ensemble on the CPU)
  train       classifier steps channels-last vs default alternating in one process (train_offline.step_bench, bf16
              autocast); phantoms generated and cached on every core; train_offline.train --config full for a few
              hundred steps, single-process and under torchrun --nproc_per_node 1 (NCCL): seconds per step, peak GPU
              memory, loss

``scripts/gpu_sections/harness.py`` holds the report, the deadlines and the section runner. Writes
``gpu_check.md`` (after every row, so a killed run still returns something), ``gpu_check.json`` (the numbers) and
``gpu_check.log`` (the tail of every command's output) under ``--out`` (default $OUT). The onnxruntime CUDA provider
is not tested: onnxruntime-gpu is too large to carry to the machine, and its image has the CPU build.

    scripts/gpu_check.sh                                  # on the GPU machine
    .venv/bin/python scripts/gpu_check.py --cpu --out /tmp/gc [--skip torchrun]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # the repository (kernel, train_offline) and gpu_sections

from gpu_sections import e2e, machine, models, preprocess, train  # noqa: E402
from gpu_sections.harness import REPO, Ctx, Report, Section, Terminated, on_sigterm, run_section  # noqa: E402

from train_offline.provenance import git_commit  # noqa: E402

SECTIONS = {"machine": machine, "preprocess": preprocess, "models": models, "e2e": e2e, "train": train}
# Seconds per section: GPU (H200, 16 cores) and the CPU dry run. The global budget cuts the later ones.
LIMITS = {
    "gpu": {"machine": 30, "preprocess": 70, "models": 110, "e2e": 60, "train": 320},
    "cpu": {"machine": 60, "preprocess": 120, "models": 180, "e2e": 120, "train": 400},
}
DEFAULT_BUDGET = {"gpu": 480, "cpu": 900}
NOTES = [
    "Not tested: onnxruntime's CUDA provider (the machine has the CPU build; onnxruntime-gpu is too large to carry), "
    "so the kernel's models run on the CPU there and torch runs them on CUDA for comparison.",
    "Weights are random-init exports of the full config: times do not depend on the values; differences between "
    "precisions are those of these weights.",
]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The check's options (``--skip`` takes section names and the train section's parts)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"sections: {', '.join(SECTIONS)}; train parts: {', '.join(train.PARTS)}")
    parser.add_argument("--cpu", action="store_true",
                        help="dry run on the CPU: every section at tiny sizes (small phantoms, tiny models through "
                             "--set, torchrun with gloo, fp32 or bf16 CPU autocast where the GPU runs fp16)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: $OUT, else runs/gpu_check)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir, removed)")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for the whole check (default {DEFAULT_BUDGET['gpu']} on the GPU, "
                             f"{DEFAULT_BUDGET['cpu']} with --cpu); sections also have their own limits")
    parser.add_argument("--skip", nargs="*", default=[], choices=[*SECTIONS, *train.PARTS], metavar="NAME",
                        help="sections or train parts to leave out")
    parser.add_argument("--train-series", type=int, default=0,
                        help="training phantoms (default 96 real-size on the GPU, 10 small with --cpu)")
    parser.add_argument("--seed", type=int, default=0, help="phantom and model seed (default 0)")
    return parser.parse_args(argv)


def _run_all(ctx: Ctx) -> bool:
    """Every section in order (skipped, or after a fatal finding, only recorded); True when SIGTERM ended it."""
    report = ctx.report
    try:
        for key, module in SECTIONS.items():
            sec = report.sections[key]
            if key in ctx.args.skip:
                sec.status = "skipped (--skip)"
            elif ctx.shared.get("fatal"):
                sec.status = f"skipped: {ctx.shared['fatal']}"
            else:
                run_section(ctx, sec, module.run)
                continue
            report.write()
    except Terminated:
        for sec in report.sections.values():
            if sec.status == "pending":
                sec.status = "skipped: terminated"
        return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; exit 0 when every section that ran is ok, 1 when one is not, 3 on SIGTERM."""
    args = parse_args(argv)
    mode = "cpu" if args.cpu else "gpu"
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "runs" / "gpu_check")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    budget = args.budget or DEFAULT_BUDGET[mode]
    header = {"title": "CPU dry run (--cpu)" if args.cpu else "(card not read yet)",
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "mode": "CPU dry run (--cpu)" if args.cpu else "GPU",
              "commit": git_commit(short=True), "budget_s": budget, "t0": t0, "argv": list(argv or sys.argv[1:])}
    report = Report(out, header)
    report.notes += NOTES
    if args.cpu:
        report.notes.append("--cpu: tiny sizes; the numbers prove the code paths, not the speed of anything.")
    for key, module in SECTIONS.items():
        report.sections[key] = Section(key, module.TITLE, LIMITS[mode][key])
    report.write()
    on_sigterm()
    try:
        terminated = _run_all(Ctx(args=args, report=report, work=work, mode=mode, t0=t0, budget_s=budget))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report.header["wall_s"] = round(time.monotonic() - t0, 1)
    report.write()
    print(f"report: {out / 'gpu_check.md'} ({time.monotonic() - t0:.0f} s)")
    bad = [s.key for s in report.sections.values() if s.status != "ok" and not s.status.startswith("skipped")]
    return 3 if terminated else 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
