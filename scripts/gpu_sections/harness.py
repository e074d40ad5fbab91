"""The GPU check's harness: the report (markdown + JSON, rewritten after every row), the run context with its
deadlines, commands run in their own process group within a section's time, and the section runner.

A section is a function ``run(ctx, sec)``; it adds rows with ``ctx.report.add(sec, row(...))`` and numbers to
``sec.data``. ``run_section`` gives it a wall-clock alarm (``SectionTimeout``) at its limit or the global budget,
whichever comes first, and records how it ended.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]

__all__ = ["REPO", "CmdResult", "Ctx", "Report", "Section", "SectionTimeout", "Terminated", "attempt", "child_env",
           "median", "on_sigterm", "row", "run_cmd", "run_section", "table", "timer"]


class SectionTimeout(BaseException):
    """The running section reached its time limit (BaseException: code that catches Exception must not hide it)."""


class Terminated(BaseException):
    """SIGTERM (the wrapper's ``timeout``): stop, end the commands started, keep the report."""


def _on_alarm(_signum: int, _frame: Any) -> None:
    raise SectionTimeout()


def _on_term(_signum: int, _frame: Any) -> None:
    raise Terminated()


def on_sigterm() -> None:
    """From now on SIGTERM raises ``Terminated`` in the main thread."""
    signal.signal(signal.SIGTERM, _on_term)


# --- the report ------------------------------------------------------------------------------------------------------


@dataclass
class Section:
    """One section of the report: its markdown lines, its numbers and how it ended."""

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
        """Append a markdown line to a section and rewrite the report."""
        sec.lines.append(line)
        self.write()

    def log(self, text: str) -> None:
        """Append to gpu_check.log."""
        with open(self.out / "gpu_check.log", "a") as fh:
            fh.write(text.rstrip("\n") + "\n")

    def render(self) -> str:
        """The markdown: header, one status row per section, notes, then each section's lines."""
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
        """gpu_check.md and gpu_check.json, each replaced in one step (a reader never sees half a file)."""
        as_json = json.dumps(self.as_json(), indent=1, default=_json_default)
        for name, text in (("gpu_check.md", self.render()), ("gpu_check.json", as_json)):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.out / name)

    def as_json(self) -> dict[str, Any]:
        """Header, notes and every section's status, seconds, limit and numbers."""
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
    """A markdown table's header and rule."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]


def row(*cells: Any) -> str:
    """A markdown table row: floats to 3 decimals (scientific when small or large), None as "-"."""
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
    """What every section gets: the arguments, the report, a scratch folder, the mode and the clocks."""

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
        """Seconds to the running section's deadline."""
        return self.deadline - time.monotonic()

    def global_left(self) -> float:
        """Seconds left of the whole check's budget."""
        return self.t0 + self.budget_s - time.monotonic()

    def skipped(self, name: str) -> bool:
        return name in self.args.skip

    def device(self):
        """torch's device for this mode (imported here: the harness itself needs no torch)."""
        import torch

        return torch.device("cuda" if self.gpu else "cpu")

    def sync(self) -> None:
        """Wait for the GPU's queued work (nothing on the CPU), so that timers measure it."""
        if self.gpu:
            import torch

            torch.cuda.synchronize()


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with the repository on PYTHONPATH and unbuffered output, plus ``extra``."""
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
    """``with timer() as t:`` leaves the block's seconds in ``t[0]``."""
    box: list[float] = []
    start = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - start)


def median(values: Sequence[float]) -> float | None:
    """The median, None for no values."""
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


# --- the section runner ----------------------------------------------------------------------------------------------


def run_section(ctx: Ctx, sec: Section, fn: Callable[[Ctx, Section], None]) -> None:
    """Run one section under its alarm (its limit or the global budget left) and record its status and seconds.

    A timed-out or failed section keeps the rows it wrote; SIGTERM (``Terminated``) is recorded, then re-raised.
    """
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
