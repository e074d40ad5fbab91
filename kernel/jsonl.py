"""JSON Lines files: one JSON object a line (ground truth, details, metrics, sites). The one reader of the kit."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["iter_jsonl", "read_jsonl", "read_jsonl_by"]


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The records of a JSON Lines file in file order; blank lines are skipped, a malformed line raises
    ``ValueError`` naming the file and line number."""
    with open(path) as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not a JSON line ({exc.msg})") from exc


def read_jsonl(path: str | os.PathLike[str], missing_ok: bool = False) -> list[dict[str, Any]]:
    """Every record of a JSON Lines file; ``missing_ok`` returns [] for a file that does not exist."""
    if missing_ok and not Path(path).is_file():
        return []
    return list(iter_jsonl(path))


def read_jsonl_by(path: str | os.PathLike[str], key: str, missing_ok: bool = False) -> dict[str, dict[str, Any]]:
    """Records keyed by ``str(record[key])``; a later line with the same key replaces an earlier one (an appended
    file written across resumed runs keeps each key's newest record)."""
    return {str(record[key]): record for record in read_jsonl(path, missing_ok)}
