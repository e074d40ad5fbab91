"""Resumable per-series work: records appended one JSON line at a time, so a killed run continues where it stopped.

Sites of the fine stage, the retune's kernel sites and the experiments' scans all go through ``resume_jsonl``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from kernel.jsonl import read_jsonl_by
from kernel.labels import ID_COL

__all__ = ["jsonable", "resume_jsonl"]


def jsonable(value: Any) -> Any:
    """``value`` with numpy arrays and scalars turned into lists and Python numbers (JSON-ready), recursively."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def resume_jsonl(path: str | os.PathLike[str], uids: Sequence[str], compute: Callable[[str], Mapping[str, Any]],
                 *, desc: str = "series", key: str = ID_COL, progress: bool = True) -> dict[str, dict[str, Any]]:
    """{uid: record} for every uid: records already in ``path`` (a JSON Lines file keyed by ``key``) are read back,
    the others computed in order by ``compute(uid)`` and appended, one flushed line each. A line cut short by a kill
    is dropped and recomputed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = _read_complete(path, key)
    todo = [u for u in uids if u not in done]
    if todo:
        with open(path, "a") as fh:
            for uid in tqdm(todo, desc=desc, mininterval=10, disable=not progress):
                record = {key: uid, **jsonable(compute(uid))}
                fh.write(json.dumps(record) + "\n")
                fh.flush()
                done[uid] = record
    return done


def _read_complete(path: Path, key: str) -> dict[str, dict[str, Any]]:
    """The records of ``path`` ({} without the file); a last line without its newline (the writer was killed) is cut
    from the file so the next append starts on a line of its own."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as fh:
            fh.truncate(cut)
    return read_jsonl_by(path, key)
