"""Where a result came from: the repository commit that made it (written into manifests and reports)."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["REPO", "git_commit"]

REPO = Path(__file__).resolve().parent.parent


def git_commit(short: bool = False) -> str:
    """HEAD of the repository (``+dirty`` when tracked files changed), or "unknown" outside git or without git.

    ``short`` gives the abbreviated hash (reports meant for people); manifests keep the full one."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", *(["--short"] if short else []), "HEAD"],
                              capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (head + ("+dirty" if dirty else "")) if head else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
