"""Memory of processes from Linux ``/proc``: one process's RSS and peak RSS (VmHWM, resettable), a process tree, and
its summed RSS. The read worker's watchdog and the memory tests measure with these."""

from __future__ import annotations

import os

__all__ = ["peak_rss_bytes", "process_tree", "reset_peak_rss", "rss_bytes", "tree_rss_bytes"]

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of one process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid or os.getpid()}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _children_of(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                kids.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
    return kids


def _children_by_scan(pid: int) -> list[int]:
    kids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    stat = fh.read()
                if int(stat[stat.rindex(b")") + 2 :].split()[1]) == pid:
                    kids.append(int(name))
            except (OSError, ValueError, IndexError):
                continue
    return kids


_HAS_CHILDREN_FILE = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def process_tree(pid: int | None = None) -> list[int]:
    """``pid`` (default: this process) and all its descendants, from /proc."""
    children = _children_of if _HAS_CHILDREN_FILE else _children_by_scan
    out, todo = [], [pid or os.getpid()]
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.append(p)
        todo.extend(children(p))
    return out


def tree_rss_bytes(pid: int | None = None) -> int:
    """Summed RSS of a process and its descendants (pages shared between them are counted in each: an upper bound)."""
    return sum(rss_bytes(p) for p in process_tree(pid))


def peak_rss_bytes(pid: int | None = None) -> int:
    """Peak RSS (VmHWM) of one process since it started or since ``reset_peak_rss``."""
    try:
        with open(f"/proc/{pid or os.getpid()}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def reset_peak_rss(pid: int | None = None) -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False where that is not allowed."""
    try:
        with open(f"/proc/{pid or os.getpid()}/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False
