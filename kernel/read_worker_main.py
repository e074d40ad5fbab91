"""The read worker process's side: its start-up (limits, warm-up, parent watch) and its loop, which answers each
request from ``kernel.read_worker.ReadWorker`` with a prepared volume (``kernel.preprocess.prepare_volume``) or
patches of the native stack it holds, handed over through a file. Started as ``python -c`` by ``ReadWorker``; the
wire format lives in ``kernel.read_worker``."""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from kernel.procmem import peak_rss_bytes, reset_peak_rss, rss_bytes
from kernel.read_worker import CONFIG_ENV, WorkerError, memory_voxels, volume_meta

__all__ = ["main"]

LOG = logging.getLogger("rsna.kernel")


def _limit_data(memory_mb: int) -> None:
    """RLIMIT_DATA (private writable memory) at the limit: an allocation past it fails inside the worker."""
    limit = memory_mb * 2**20
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    except (ValueError, OSError) as exc:
        LOG.warning("read worker: RLIMIT_DATA not set (%s); the parent's RSS watchdog still applies", exc)


def _watch_parent(parent: int) -> None:
    """Exit when the parent process goes away (this worker is in its own session: no signal reaches it)."""
    while True:
        if os.getppid() != parent:
            os._exit(3)
        time.sleep(0.5)


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _write_volume(array: np.ndarray, name: str, dirs: Sequence[str]) -> str:
    """Write the array to the first handover folder with room for it (a full /dev/shm falls through)."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    errors = []
    for d in dirs:
        path = os.path.join(d, name)
        try:
            with open(path, "xb") as fh:
                fh.write(memoryview(array).cast("B"))
            return path
        except OSError as exc:
            errors.append(f"{d}: {exc.strerror or exc}")
            try:
                os.unlink(path)
            except OSError:
                pass
    raise OSError(f"cannot hand the volume over ({'; '.join(errors) or 'no folder'})")


_HELD: dict[str, Any] = {}  # worker side: {"token": request number, "native": Native} of the last keep_native series


def _serve_sample(request: Mapping[str, Any]) -> dict[str, Any]:
    """Patches of the held native stack around the requested points, handed over like a volume."""
    start = time.perf_counter()
    reply: dict[str, Any] = {}
    try:
        if _HELD.get("token") != request.get("token"):
            raise WorkerError(f"no native stack held for request {request.get('token')}")
        spacing = request.get("spacing")
        patches = _HELD["native"].sample(np.asarray(request["points"], dtype=np.float64), request["shape"],
                                         None if spacing is None else tuple(spacing))
        reply.update(ok=True, file=_write_volume(patches, request["name"], request["dirs"]),
                     shape=list(patches.shape))
    except Exception as exc:  # noqa: BLE001 - back to the parent as type + message
        reply.update(ok=False, type=type(exc).__name__, message=" ".join(str(exc).split())[:2000])
    reply.update(seconds=time.perf_counter() - start)
    return reply


def _serve(request: Mapping[str, Any], memory_mb: int, baseline: int) -> dict[str, Any]:
    """One series read and prepared (``prepare_volume``) within the memory left, handed over like a volume."""
    from kernel.preprocess import prepare_volume

    _HELD.clear()  # the last series' native stack goes before this one is read
    _trim()
    reset_peak_rss()
    start = time.perf_counter()
    max_voxels = request.get("max_voxels")
    cap = memory_voxels(memory_mb, baseline)
    max_voxels = cap if max_voxels is None else min(int(max_voxels), cap)
    reply: dict[str, Any] = {"max_voxels": max_voxels}
    try:
        spacing = request.get("spacing")
        volume = prepare_volume(request["series_dir"], None if spacing is None else tuple(spacing),
                                max_voxels=max_voxels, keep_native=bool(request.get("native")))
        written = time.perf_counter()
        reply.update(ok=True, file=_write_volume(volume.array, request["name"], request["dirs"]),
                     shape=list(volume.array.shape), volume=volume_meta(volume))
        if volume.native is not None:
            _HELD.update(token=request.get("token"), native=volume.native)
            reply.update(native_shape=list(volume.native.shape), native_affine=volume.native.affine.tolist(),
                         token=request.get("token"))
        reply.update(write_seconds=time.perf_counter() - written)
        del volume
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent as type + message
        reply.update(ok=False, type=type(exc).__name__, message=" ".join(str(exc).split())[:2000])
    reply.update(seconds=time.perf_counter() - start, peak_rss=peak_rss_bytes())
    return reply


def _warm_up() -> None:
    """Import what a first series needs (torch included) and run one tiny resample, so series 1 is not slow."""
    import kernel.preprocess as preprocess

    try:
        preprocess.resample_to_spacing(np.zeros((4, 4, 4), np.float32), np.eye(4), (2.0, 2.0, 2.0))
    except Exception as exc:  # noqa: BLE001 - a broken torch falls back inside resample; never fatal here
        LOG.warning("read worker warm-up: %s", exc)


def main() -> None:
    """Entry point of the worker process (started by ``ReadWorker``)."""
    config = json.loads(os.environ.pop(CONFIG_ENV))
    conn = Connection(int(config["fd"]))
    memory_mb = int(config["memory_mb"])
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        hook = str(config.get("hook") or "")
        if hook:
            import importlib

            module, _, func = hook.partition(":")
            getattr(importlib.import_module(module), func)()
        _warm_up()
        _trim()
        # What is alive now (modules, torch, pydicom) lives as long as the worker: kept out of the collections the
        # worker runs per series, each of which would otherwise traverse it all for nothing (~100 ms on 2 cores).
        gc.freeze()
        baseline = rss_bytes()
        _limit_data(memory_mb)
        threading.Thread(target=_watch_parent, args=(int(config["parent"]),), daemon=True).start()
        conn.send_bytes(json.dumps({"op": "ready", "pid": os.getpid(), "rss": baseline}).encode())
    except BaseException as exc:  # noqa: BLE001 - say why, then exit
        try:
            conn.send_bytes(json.dumps({"op": "failed", "error": f"{type(exc).__name__}: {exc}"}).encode())
        finally:
            os._exit(1)
    while True:
        try:
            request = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            break
        op = request.get("op")
        if op not in ("prepare", "sample"):
            break
        conn.send_bytes(b'{"op": "ack"}')
        if op == "sample":
            conn.send_bytes(json.dumps(_serve_sample(request)).encode())
            continue
        conn.send_bytes(json.dumps(_serve(request, memory_mb, baseline)).encode())
        _trim()  # after the reply: the parent does not wait for it
    os._exit(0)


if __name__ == "__main__":  # pragma: no cover - started through read_worker._BOOTSTRAP, never as a script
    sys.exit("kernel.read_worker_main is started by ReadWorker, not run directly")
