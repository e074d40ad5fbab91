"""On-disk cache of canonical volumes: ``<uid>.npy`` (float32) + ``<uid>.json`` (geometry and provenance).

Writes are atomic (temporary file in the same folder, fsync, rename) and the JSON is written last, so a series
counts as cached only when both files are complete: a killed run never leaves a half-written entry behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from kernel.volume import FrameGeometry, Volume

__all__ = [
    "CacheSpacingError", "atomic_write_bytes", "cache_spacing", "check_cache_spacing", "clean_stale_temp", "is_cached",
    "load_cached", "save_cached", "volume_metadata",
]

CACHE_FORMAT = 1


def _temp_prefix(path: Path) -> str:
    # The writer's PID is in the name, so a later run can tell a dead writer's leftovers from a live one's file.
    return f".{path.name}.pid{os.getpid()}."


def clean_stale_temp(out_dir: str | os.PathLike[str]) -> int:
    """Delete temporary files left by writers that no longer run (e.g. after SIGKILL). Returns how many."""
    removed = 0
    for tmp in Path(out_dir).glob(".*.pid*.tmp"):
        try:
            pid = int(tmp.name.rsplit(".pid", 1)[1].split(".", 1)[0])
        except (IndexError, ValueError):
            continue
        try:
            os.kill(pid, 0)
            continue  # writer still alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


@contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A file handle whose content replaces ``path`` only once it is complete and synced (else it is deleted)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one."""
    with _atomic_file(path) as fh:
        fh.write(data)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with _atomic_file(path) as fh:
        np.save(fh, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)


def volume_metadata(volume: Volume, **extra: object) -> dict:
    """JSON-serialisable geometry and provenance of a volume (everything but the voxels)."""
    return {
        "format": CACHE_FORMAT,
        "series_uid": volume.series_uid,
        "modality": volume.modality,
        "shape": list(volume.array.shape),
        "spacing": list(volume.spacing),
        "affine": np.asarray(volume.affine).tolist(),
        "source_affine": np.asarray(volume.source_affine).tolist(),
        "source_shape": list(volume.source_shape),
        "source_spacing": np.linalg.norm(np.asarray(volume.source_affine)[:3, :3], axis=0).tolist(),
        "slice_lookup": [[sop, frame, idx] for (sop, frame), idx in sorted(volume.slice_lookup.items())],
        "frame_geometry": [
            [sop, frame, list(g.position), list(g.row_dir), list(g.col_dir), list(g.pixel_spacing)]
            for (sop, frame), g in sorted(volume.frame_geometry.items())
        ],
        "dropped": [list(d) for d in volume.dropped],
        "notes": list(volume.notes),
        "geometry_known": bool(volume.geometry_known),
        **extra,
    }


def save_cached(volume: Volume, out_dir: str | os.PathLike[str], uid: str | None = None, **extra: object) -> Path:
    """Store a volume as ``<uid>.npy`` + ``<uid>.json`` (atomic; the JSON marks completion). Returns the JSON path."""
    out = Path(out_dir)
    uid = uid or volume.series_uid
    assert uid and "/" not in uid, f"invalid series uid {uid!r}"
    _atomic_save_npy(out / f"{uid}.npy", volume.array)
    meta = volume_metadata(volume, **extra)
    json_path = out / f"{uid}.json"
    atomic_write_bytes(json_path, json.dumps(meta, indent=1).encode())
    return json_path


def is_cached(out_dir: str | os.PathLike[str], uid: str) -> bool:
    """True when both files of a complete cache entry exist."""
    out = Path(out_dir)
    return (out / f"{uid}.json").is_file() and (out / f"{uid}.npy").is_file()


def load_cached(out_dir: str | os.PathLike[str], uid: str, *, mmap: bool = False) -> Volume:
    """Read a cached volume back (no pickle). ``mmap=True`` maps the voxels instead of reading them."""
    out = Path(out_dir)
    meta = json.loads((out / f"{uid}.json").read_text())
    array = np.load(out / f"{uid}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
    if list(array.shape) != meta["shape"]:
        raise ValueError(f"cache entry {uid}: array shape {array.shape} != recorded {meta['shape']}")
    return Volume(
        array=array,
        affine=np.asarray(meta["affine"], dtype=np.float64),
        modality=meta["modality"],
        series_uid=meta["series_uid"],
        slice_lookup={(sop, int(frame)): int(idx) for sop, frame, idx in meta["slice_lookup"]},
        source_affine=np.asarray(meta["source_affine"], dtype=np.float64),
        source_shape=tuple(meta["source_shape"]),
        dropped=[tuple(d) for d in meta["dropped"]],
        frame_geometry={
            (sop, int(frame)): FrameGeometry(tuple(pos), tuple(row), tuple(col), tuple(sp))
            for sop, frame, pos, row, col, sp in meta["frame_geometry"]
        },
        notes=list(meta.get("notes", [])),
        geometry_known=bool(meta.get("geometry_known", True)),
    )


class CacheSpacingError(ValueError):
    """A cache was written at another spacing than the config trains at."""


def cache_spacing(out_dir: str | os.PathLike[str], sample: int = 5) -> tuple[float, float, float] | None:
    """The spacing a cache folder was written at (``cache_spacing`` of its entries; None when it holds none).

    Raises CacheSpacingError when the sampled entries disagree (two runs at different spacings in one folder).
    """
    entries = sorted(p for p in Path(out_dir).glob("*.json") if not p.name.endswith(".failed.json"))
    found = set()
    for path in entries[:sample] + entries[-sample:]:
        meta = json.loads(path.read_text())
        value = meta.get("cache_spacing", meta.get("spacing"))
        found.add(tuple(round(float(v), 6) for v in value))
    if len(found) > 1:
        raise CacheSpacingError(f"cache {out_dir} mixes spacings {sorted(found)}: re-cache into an empty folder")
    return next(iter(found)) if found else None


def check_cache_spacing(out_dir: str | os.PathLike[str], spacing_zyx_mm: Sequence[float]) -> None:
    """Refuse a cache written at another spacing than ``spacing_zyx_mm`` (the config's ``volume_spacing_mm``).

    Training on it would feed the models volumes they will never see in the kernel, which resamples to the spacing
    in the manifest; nothing else would notice.
    """
    stored = cache_spacing(out_dir)
    wanted = tuple(round(float(v), 6) for v in spacing_zyx_mm)
    if stored is not None and stored != wanted:
        raise CacheSpacingError(
            f"cache {out_dir} holds volumes at {list(stored)} mm but the config's volume_spacing_mm is {list(wanted)}: "
            f"re-cache with `python -m train_offline.precache_all --config <config> --data ... --out ...` "
            f"or point data.cache at a cache of that spacing")
