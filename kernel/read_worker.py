"""Read and preprocess each series in a worker process with a memory limit and a wall-clock limit: the parent side
(``ReadWorker``), its limits and errors, and the wire format both sides share.

On Kaggle the failures that end a whole submission are not exceptions: an out-of-memory kill, a native decoder that
segfaults, a series that hangs. So ``ReadWorker.prepare`` runs ``kernel.preprocess.prepare_volume`` in a separate
process (the models stay in the main process; the worker's loop is ``kernel.read_worker_main``) and turns each of
those into one exception for one series:

- **crash** (segfault, abort, any exit): ``WorkerCrashed``; the worker is replaced.
- **hang**: no answer within ``timeout_s`` -> the worker's process group is killed, ``WorkerTimeout``, replaced.
- **memory**: the worker sets ``RLIMIT_DATA`` on itself (an allocation past it is a ``MemoryError`` inside the worker,
  which survives it), and the parent polls the RSS of the worker's whole process tree from ``/proc``
  (``kernel.procmem``); past ``memory_mb`` the tree is killed, ``WorkerOutOfMemory``, replaced. The voxel budget the
  reader works to is also cut to what ``memory_mb`` can hold, so large series are subsampled rather than refused, and
  ``prepare_volume`` sizes the prepared volume before resampling (at most ``kernel.preprocess.MAX_OUTPUT_VOXELS``), so
  the models in the main process never get a volume that would take them past their own memory.
- errors the reader raises (``SeriesReadError``, ``ValueError``, ...) come back as the same type and message.

The worker is a plain ``python -c`` subprocess (not ``multiprocessing``): it gets the parent's ``sys.path`` (so the
single-file kernel, whose sources live in a temporary folder on ``sys.path``, works unchanged), never re-imports
``__main__``, and works from notebooks and from the gateway's gRPC threads. It talks JSON over a socket pair (no
pickles); the volume comes back through a file in ``/dev/shm`` (else the temporary folder) that the parent maps
copy-on-write and unlinks at once: no pickling, no copy beyond the worker's one write. The native stack a fine stage
samples (``keep_native``) stays in the worker: the parent's ``Volume.native`` sends the candidate points back and gets
only the patches (a few MB instead of the whole stack: 0.4 GB for a 400 x 512 x 512 CTA, which cost ~0.9 s a series
to write, map and fault in); the worker holds it until its next series. It starts on the first call
(the gateway's first call has no deadline), sees no GPU (``CUDA_VISIBLE_DEVICES=""``: resampling runs on the CPU,
decoders never touch the GPU) and exits when its parent goes away.

Limits: environment over the manifest's optional ``read_limits`` over the defaults.

| setting | manifest ``read_limits`` key | environment | default |
|---|---|---|---|
| memory of the worker's process tree | ``memory_mb`` | ``RSNA_READ_MEMORY_MB`` | 3072 |
| wall-clock per series | ``timeout_s`` | ``RSNA_READ_TIMEOUT_S`` | 120 |
| isolation on (``0``: read in-process) | ``isolated`` | ``RSNA_READ_ISOLATION`` | on |

When a worker cannot be started twice in a row, reading falls back to the main process (logged once).
"""

from __future__ import annotations

import builtins
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from kernel.procmem import tree_rss_bytes
from kernel.volume import FrameGeometry, Native, SeriesReadError, Volume

__all__ = [
    "BYTES_PER_VOXEL", "CONFIG_ENV", "DEFAULT_MEMORY_MB", "DEFAULT_TIMEOUT_S", "HOOK_ENV", "ISOLATION_ENV",
    "MEMORY_ENV", "SHM_ENV", "TIMEOUT_ENV", "ReadLimits", "ReadStats", "ReadWorker", "WorkerCrashed", "WorkerError",
    "WorkerOutOfMemory", "WorkerTimeout", "memory_voxels", "volume_from_meta", "volume_meta",
]

LOG = logging.getLogger("rsna.kernel")

MEMORY_ENV = "RSNA_READ_MEMORY_MB"
TIMEOUT_ENV = "RSNA_READ_TIMEOUT_S"
ISOLATION_ENV = "RSNA_READ_ISOLATION"
HOOK_ENV = "RSNA_READ_WORKER_HOOK"  # test-only: "module:function" the worker calls at start
SHM_ENV = "RSNA_READ_SHM_DIR"  # where volumes are handed over (default /dev/shm, else the temporary folder)
DEFAULT_MEMORY_MB = 3072
DEFAULT_TIMEOUT_S = 120.0
MIN_MEMORY_MB = 512
START_TIMEOUT_S = 120.0  # imports (numpy, pydicom, torch) and a warm-up resample
# Peak bytes the worker needs per voxel of the native grid: measured 4.0-4.5 on a 400 x 512 x 512 CTA (float32
# stack + resampled output) and 8.1-8.6 with gap resampling and a reoriented copy (a second full-size array).
BYTES_PER_VOXEL = 10
_POLL_S = 0.02  # watchdog period while a request runs
_MAX_START_FAILURES = 2
CONFIG_ENV = "RSNA_READ_WORKER_CONFIG"
_PATH_ENV = "RSNA_READ_WORKER_PATH"
_BOOTSTRAP = (
    "import json, os, sys; sys.path[:] = json.loads(os.environ['RSNA_READ_WORKER_PATH']); "
    "from kernel.read_worker_main import main; main()"
)


class WorkerError(RuntimeError):
    """The read worker failed (the message says how and what was done about it)."""


class WorkerCrashed(WorkerError):
    """The worker died (a signal such as SIGSEGV, or an exit) while reading a series."""


class WorkerTimeout(WorkerError):
    """The worker gave no answer within the per-series wall-clock limit."""


class WorkerOutOfMemory(WorkerError):
    """The worker's process tree went past the memory limit."""


def memory_voxels(memory_mb: int, baseline_bytes: int) -> int:
    """Voxels of native grid a worker with ``memory_mb`` (of which ``baseline_bytes`` already used) can read."""
    return max((memory_mb * 2**20 - baseline_bytes) // BYTES_PER_VOXEL, 1)


# --- limits -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadLimits:
    """Memory (MB, the worker's whole process tree) and wall-clock (s) limits per series; ``isolated=False`` reads
    in the main process."""

    memory_mb: int = DEFAULT_MEMORY_MB
    timeout_s: float = DEFAULT_TIMEOUT_S
    isolated: bool = True

    @classmethod
    def resolve(cls, manifest: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> ReadLimits:
        """Environment over the manifest's ``read_limits`` over the defaults; an unusable value is logged and the
        default kept (a typo must not stop the kernel)."""
        environ = os.environ if environ is None else environ
        manifest = manifest if isinstance(manifest, Mapping) else {}
        values: dict[str, Any] = {}
        for key, env, parse, ok in (
            ("memory_mb", MEMORY_ENV, lambda v: int(float(v)), lambda v: v >= MIN_MEMORY_MB),
            ("timeout_s", TIMEOUT_ENV, float, lambda v: math.isfinite(v) and v > 0),
            ("isolated", ISOLATION_ENV, _parse_bool, lambda v: True),
        ):
            for source, raw in (("environment " + env, environ.get(env)), ("manifest read_limits." + key,
                                                                             manifest.get(key))):
                if raw in (None, ""):
                    continue
                try:
                    value = parse(raw)
                    if not ok(value):
                        raise ValueError("out of range")
                except (TypeError, ValueError) as exc:
                    LOG.warning("ignoring %s=%r (%s); using %s", source, raw, exc, values.get(key, getattr(cls, key)))
                    continue
                values[key] = value
                break
        return cls(**values)


def _parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("not a boolean")


@dataclass
class ReadStats:
    """What the last ``prepare`` call cost: seconds (in all; inside the worker: read, preprocess and the hand-over
    write; that write alone), the worker's own peak RSS (VmHWM, reset per request) and the sampled peak of its whole
    process tree, both in bytes; ``outcome`` is "ok", "error", "crash", "timeout", "memory" or "in_process"."""

    seconds: float = 0.0
    worker_seconds: float = 0.0
    write_seconds: float = 0.0
    worker_peak_rss: int = 0
    tree_peak_rss: int = 0
    outcome: str = ""
    max_voxels: int | None = None


# --- the parent side -----------------------------------------------------------------------------------------------


@dataclass
class _Process:
    """The live worker; held apart from ``ReadWorker`` so a finalizer can end it without keeping the reader alive."""

    proc: subprocess.Popen | None = None
    conn: Connection | None = None
    ready: bool = False
    started: float = 0.0
    baseline_rss: int = 0
    files: set[str] = field(default_factory=set)

    def kill(self) -> None:
        """Kill the worker's process group (decoder pools included) and forget it."""
        proc, conn = self.proc, self.conn
        self.proc, self.conn, self.ready = None, None, False
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.remove_files()

    def remove_files(self) -> None:
        for path in list(self.files):
            try:
                os.unlink(path)
            except OSError:
                pass
            self.files.discard(path)


def _handover_dirs() -> list[str]:
    dirs = [os.environ.get(SHM_ENV, ""), "/dev/shm", tempfile.gettempdir()]
    out = []
    for d in dirs:
        if d and d not in out and os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK):
            out.append(d)
    return out


def _signal_name(returncode: int | None) -> str:
    if returncode is None:
        return "no exit status"
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def _remote_error(kind: str, message: str) -> Exception:
    """The worker's exception as the same type where that is a builtin (or SeriesReadError), else WorkerError."""
    if kind == "SeriesReadError":
        return SeriesReadError(message)
    cls = getattr(builtins, kind, None)
    if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, OSError | UnicodeError):
        try:
            return cls(message)
        except Exception:  # noqa: BLE001 - a constructor that wants other arguments
            pass
    return WorkerError(f"{kind}: {message}")


class ReadWorker:
    """``prepare(series_dir, spacing, max_voxels=...)``: ``prepare_volume`` in a worker process under ``limits``.

    Never leaves a worker behind: killed and replaced after a crash, hang or memory overrun, ended by ``close``, by
    garbage collection and at exit. ``last`` holds the cost of the last call.
    """

    def __init__(self, limits: ReadLimits | None = None, *, hook: str | None = None) -> None:
        self.limits = limits or ReadLimits.resolve()
        self.hook = hook
        self.last = ReadStats()
        self.restarts = 0
        self.in_process = not self.limits.isolated
        self._state = _Process()
        self._lock = threading.Lock()
        self._seq = 0
        self._native_token: int | None = None  # request number of the series whose native stack the worker holds
        self._start_failures = 0
        self._finalizer = weakref.finalize(self, _Process.kill, self._state)

    @property
    def pid(self) -> int | None:
        """Process id of the live worker (None before the first call and after ``close``)."""
        return self._state.proc.pid if self._state.proc is not None else None

    def close(self) -> None:
        """End the worker now (a later ``prepare`` starts a new one)."""
        with self._lock:
            state = self._state
            if state.conn is not None and state.proc is not None and state.proc.poll() is None:
                try:
                    state.conn.send_bytes(b'{"op": "exit"}')
                    state.proc.wait(timeout=2)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            state.kill()

    def prepare(
        self,
        series_dir: str | os.PathLike[str],
        spacing_zyx_mm: Sequence[float] | None = (1.0, 1.0, 1.0),
        *,
        max_voxels: int | None = None,
        keep_native: bool = False,
    ) -> Volume:
        """Read + reorient + resample one series folder (``kernel.preprocess.prepare_volume``) under the limits.

        With ``keep_native`` the Volume's ``native`` samples the canonical stack at native spacing, which stays in the
        worker until the next ``prepare`` (``sample_native``). Raises what the reader raises (same type and message),
        or ``WorkerCrashed`` / ``WorkerTimeout`` / ``WorkerOutOfMemory`` after replacing the worker.
        """
        with self._lock:
            if not self.in_process:
                try:
                    self._ensure_ready()
                except WorkerError as exc:
                    self._start_failures += 1
                    self._state.kill()
                    if self._start_failures >= _MAX_START_FAILURES:
                        LOG.error("read worker could not be started %d times (%s): reading in the main process",
                                  self._start_failures, exc)
                        self.in_process = True
                    else:
                        return self._prepare_retry(series_dir, spacing_zyx_mm, max_voxels, keep_native)
            if self.in_process:
                return self._prepare_here(series_dir, spacing_zyx_mm, max_voxels, keep_native)
            self._start_failures = 0
            return self._request(series_dir, spacing_zyx_mm, max_voxels, keep_native)

    # -- internals --

    def _prepare_retry(self, series_dir, spacing_zyx_mm, max_voxels, keep_native=False) -> Volume:
        try:
            self._ensure_ready()
        except WorkerError as exc:
            self._state.kill()
            LOG.error("read worker could not be started twice (%s): reading in the main process", exc)
            self.in_process = True
            return self._prepare_here(series_dir, spacing_zyx_mm, max_voxels, keep_native)
        self._start_failures = 0
        return self._request(series_dir, spacing_zyx_mm, max_voxels, keep_native)

    def _prepare_here(self, series_dir, spacing_zyx_mm, max_voxels, keep_native=False) -> Volume:
        from kernel.preprocess import prepare_volume

        start = time.perf_counter()
        try:
            return prepare_volume(series_dir, spacing_zyx_mm, max_voxels=max_voxels, keep_native=keep_native)
        finally:
            self.last = ReadStats(seconds=time.perf_counter() - start, outcome="in_process", max_voxels=max_voxels)

    def _spawn(self) -> None:
        """Start a worker (returns at once; ``_ensure_ready`` waits for it)."""
        self._state.kill()
        parent_sock, child_sock = socket.socketpair()
        config = {"fd": child_sock.fileno(), "memory_mb": self.limits.memory_mb, "parent": os.getpid(),
                  "hook": self.hook or os.environ.get(HOOK_ENV, "")}
        env = dict(os.environ)
        env.update({CONFIG_ENV: json.dumps(config), _PATH_ENV: json.dumps(list(sys.path)),
                    "CUDA_VISIBLE_DEVICES": ""})
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP], env=env, pass_fds=(child_sock.fileno(),), close_fds=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
            )
        except OSError as exc:
            parent_sock.close()
            raise WorkerCrashed(f"read worker could not be started ({exc})") from exc
        finally:
            child_sock.close()
        self._state.proc, self._state.conn = proc, Connection(parent_sock.detach())
        self._state.ready, self._state.started = False, time.perf_counter()

    def _ensure_ready(self) -> None:
        state = self._state
        if state.proc is None or state.proc.poll() is not None:
            if state.proc is not None:
                LOG.warning("read worker pid=%d gone (%s): starting another", state.proc.pid,
                            _signal_name(state.proc.returncode))
                self.restarts += 1
            self._spawn()
        if state.ready:
            return
        assert state.conn is not None and state.proc is not None
        deadline = state.started + START_TIMEOUT_S
        while not state.conn.poll(max(min(deadline - time.perf_counter(), 1.0), 0.0)):
            if state.proc.poll() is not None:
                break
            if time.perf_counter() > deadline:
                raise WorkerTimeout(f"read worker not ready after {START_TIMEOUT_S:.0f} s")
        try:
            hello = json.loads(state.conn.recv_bytes())
        except (EOFError, OSError, ValueError) as exc:
            state.proc.poll()
            raise WorkerCrashed(f"read worker failed to start ({_signal_name(state.proc.returncode)})") from exc
        if hello.get("op") != "ready":
            raise WorkerCrashed(f"read worker failed to start: {hello.get('error', hello)}")
        state.ready, state.baseline_rss = True, int(hello.get("rss", 0))
        LOG.info("read worker pid=%d ready in %.1f s (RSS %.0f MB; limits %d MB, %.0f s per series)", state.proc.pid,
                 time.perf_counter() - state.started, state.baseline_rss / 2**20, self.limits.memory_mb,
                 self.limits.timeout_s)

    def _request(self, series_dir, spacing_zyx_mm, max_voxels, keep_native=False) -> Volume:
        label = os.path.basename(os.path.normpath(os.fspath(series_dir)))
        stats = ReadStats()
        start = time.perf_counter()
        try:
            for attempt in range(2):
                state = self._state
                assert state.conn is not None and state.proc is not None
                self._seq += 1
                name = f"rsna_read_{os.getpid()}_{state.proc.pid}_{self._seq}.f32"
                dirs = _handover_dirs()
                state.files.update(os.path.join(d, name) for d in dirs)
                self._native_token = None
                request = {"op": "prepare", "series_dir": os.fspath(series_dir), "max_voxels": max_voxels,
                           "spacing": None if spacing_zyx_mm is None else [float(s) for s in spacing_zyx_mm],
                           "name": name, "dirs": dirs, "native": bool(keep_native), "token": self._seq}
                start = time.perf_counter()
                try:
                    state.conn.send_bytes(json.dumps(request).encode())
                except OSError:
                    pass  # a dead worker: no acknowledgement below
                if self._wait(start, stats, label, ack=True) is not None:
                    reply = self._wait(start, stats, label)
                    break
                # Gone before it took the request (killed between calls): not this series' doing, so one retry.
                LOG.warning("read worker pid=%d was gone before it took %s (%s): retrying on a new one",
                            state.proc.pid, label, _signal_name(state.proc.poll()))
                state.kill()
                self.restarts += 1
                if attempt == 0:
                    self._ensure_ready()
            else:
                stats.outcome = "crash"
                raise WorkerCrashed(f"read workers died twice before taking {label}")
        finally:
            stats.seconds = time.perf_counter() - start
            self.last = stats
        state = self._state
        stats.worker_peak_rss = int(reply.get("peak_rss", 0))
        stats.worker_seconds = float(reply.get("seconds", 0.0))
        stats.write_seconds = float(reply.get("write_seconds", 0.0))
        stats.tree_peak_rss = max(stats.tree_peak_rss, stats.worker_peak_rss)
        stats.max_voxels = reply.get("max_voxels")
        if not reply.get("ok"):
            state.remove_files()
            stats.outcome = "error"
            raise _remote_error(str(reply.get("type", "Exception")), str(reply.get("message", "")))
        stats.outcome = "ok"
        try:
            return self._volume(reply)
        finally:
            state.remove_files()

    def sample_native(self, token: int, points_lps: np.ndarray, shape_zyx: Sequence[int],
                      spacing_zyx_mm: Sequence[float] | None) -> np.ndarray:
        """(n, z, y, x) patches of the native stack the worker holds for request ``token`` (``preprocess
        .sample_patches`` there), under the same limits; ``WorkerError`` when that stack is no longer held."""
        points = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
        with self._lock:
            state = self._state
            if (token != self._native_token or state.conn is None or state.proc is None
                    or state.proc.poll() is not None):
                raise WorkerError(f"the read worker no longer holds the native stack of request {token} "
                                  "(a later series was read, or the worker was replaced)")
            self._seq += 1
            name = f"rsna_read_{os.getpid()}_{state.proc.pid}_{self._seq}.f32"
            dirs = _handover_dirs()
            state.files.update(os.path.join(d, name) for d in dirs)
            request = {"op": "sample", "token": token, "points": points.tolist(),
                       "shape": [int(n) for n in shape_zyx], "name": name, "dirs": dirs,
                       "spacing": None if spacing_zyx_mm is None else [float(v) for v in spacing_zyx_mm]}
            stats, start, label = ReadStats(), time.perf_counter(), f"{len(points)} native patches"
            try:
                try:
                    state.conn.send_bytes(json.dumps(request).encode())
                except OSError:
                    pass
                if self._wait(start, stats, label, ack=True) is None:
                    state.kill()
                    self.restarts += 1
                    raise WorkerCrashed(f"read worker gone before it took {label}")
                reply = self._wait(start, stats, label)
                if not reply.get("ok"):
                    raise _remote_error(str(reply.get("type", "Exception")), str(reply.get("message", "")))
                return np.array(self._mapped(str(reply["file"]), reply["shape"]))
            finally:
                self.last.tree_peak_rss = max(self.last.tree_peak_rss, stats.tree_peak_rss)
                self._state.remove_files()

    def _wait(self, start: float, stats: ReadStats, label: str, ack: bool = False) -> dict | None:
        """The worker's next message, watching its wall-clock time and the RSS of its process tree meanwhile.

        ``ack``: the acknowledgement of a request; ``None`` when the worker is gone before it (nothing was started).
        """
        state = self._state
        assert state.conn is not None and state.proc is not None
        pid, limit = state.proc.pid, self.limits.memory_mb * 2**20
        while True:
            if state.conn.poll(_POLL_S):
                try:
                    message = json.loads(state.conn.recv_bytes())
                    if not ack or message.get("op") == "ack":
                        return message
                    raise ValueError(f"expected an acknowledgement, got {message}")
                except (EOFError, OSError, ValueError):
                    try:
                        state.proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        pass
                    if ack:
                        return None
                    return self._fail("crash", stats, WorkerCrashed(
                        f"read worker pid={pid} died with {_signal_name(state.proc.poll())} after "
                        f"{time.perf_counter() - start:.1f} s on {label}; replaced"))
            if state.proc.poll() is not None:
                if ack:
                    return None
                return self._fail("crash", stats, WorkerCrashed(
                    f"read worker pid={pid} died with {_signal_name(state.proc.returncode)} after "
                    f"{time.perf_counter() - start:.1f} s on {label}; replaced"))
            rss = tree_rss_bytes(pid)
            stats.tree_peak_rss = max(stats.tree_peak_rss, rss)
            if rss > limit:
                return self._fail("memory", stats, WorkerOutOfMemory(
                    f"read worker tree reached {rss / 2**20:,.0f} MB, over the {self.limits.memory_mb} MB limit, "
                    f"after {time.perf_counter() - start:.1f} s on {label}; killed and replaced"))
            if time.perf_counter() - start > self.limits.timeout_s:
                return self._fail("timeout", stats, WorkerTimeout(
                    f"read worker gave no answer in {self.limits.timeout_s:g} s on {label}; killed and replaced"))

    def _fail(self, outcome: str, stats: ReadStats, exc: WorkerError) -> dict:
        stats.outcome = outcome
        self._native_token = None
        self._state.kill()
        self.restarts += 1
        LOG.warning("%s", exc)
        try:
            self._spawn()  # the replacement starts while the caller answers with its fallback row
        except WorkerError as spawn_exc:
            LOG.error("%s", spawn_exc)
        raise exc

    def _mapped(self, path: str, shape_list: Sequence[int]) -> np.ndarray:
        shape = tuple(int(n) for n in shape_list)
        if path not in self._state.files or os.path.getsize(path) != 4 * math.prod(shape):
            raise WorkerError(f"read worker handed over an unexpected file {path}")
        mapped = np.memmap(path, dtype=np.float32, mode="c", shape=shape)  # copy-on-write: no read, no copy
        os.unlink(path)
        self._state.files.discard(path)
        return mapped.view(np.ndarray)

    def _volume(self, reply: dict) -> Volume:
        volume = volume_from_meta(self._mapped(str(reply["file"]), reply["shape"]), reply["volume"])
        if reply.get("native_shape") is not None:
            token = int(reply["token"])
            self._native_token = token
            ref = weakref.ref(self)  # a Volume kept after the reader is gone must not keep its worker alive

            def sample(points_lps: np.ndarray, shape_zyx: Sequence[int],
                       spacing_zyx_mm: Sequence[float] | None) -> np.ndarray:
                reader = ref()
                if reader is None:
                    raise WorkerError("the read worker that held this native stack is closed")
                return reader.sample_native(token, points_lps, shape_zyx, spacing_zyx_mm)

            shape = tuple(int(n) for n in reply["native_shape"])
            volume = replace(volume, native=Native(shape, np.asarray(reply["native_affine"], dtype=np.float64),
                                                   sample))  # type: ignore[arg-type]
        return volume


# --- volume <-> JSON: the wire format both sides share ----------------------------------------------------------------


def volume_meta(volume: Volume) -> dict[str, Any]:
    """Everything in a Volume except the array, as JSON-able values (floats round-trip exactly)."""
    return {
        "affine": volume.affine.tolist(),
        "source_affine": None if volume.source_affine is None else volume.source_affine.tolist(),
        "source_shape": list(volume.source_shape),
        "modality": volume.modality,
        "series_uid": volume.series_uid,
        "slice_lookup": [[sop, frame, index] for (sop, frame), index in volume.slice_lookup.items()],
        "dropped": [list(d) for d in volume.dropped],
        "frame_geometry": [[sop, frame, list(g.position), list(g.row_dir), list(g.col_dir), list(g.pixel_spacing)]
                           for (sop, frame), g in volume.frame_geometry.items()],
        "notes": list(volume.notes),
        "geometry_known": volume.geometry_known,
        "study_uid": volume.study_uid,
        "frame_of_reference_uid": volume.frame_of_reference_uid,
        "sop_class_uids": dict(volume.sop_class_uids),
    }


def volume_from_meta(array: np.ndarray, meta: Mapping[str, Any]) -> Volume:
    """The Volume that ``volume_meta`` described, around the array handed over."""

    def t(v: Sequence[float]) -> tuple[float, ...]:
        return tuple(float(x) for x in v)

    return Volume(
        array=array,
        affine=np.asarray(meta["affine"], dtype=np.float64),
        modality=str(meta["modality"]),
        series_uid=str(meta["series_uid"]),
        slice_lookup={(str(s), int(f)): int(i) for s, f, i in meta["slice_lookup"]},
        source_affine=None if meta["source_affine"] is None else np.asarray(meta["source_affine"], dtype=np.float64),
        source_shape=tuple(int(n) for n in meta["source_shape"]),  # type: ignore[arg-type]
        dropped=[(str(a), str(b)) for a, b in meta["dropped"]],
        frame_geometry={(str(s), int(f)): FrameGeometry(t(p), t(r), t(c), t(ps))  # type: ignore[arg-type]
                        for s, f, p, r, c, ps in meta["frame_geometry"]},
        notes=[str(n) for n in meta["notes"]],
        geometry_known=bool(meta["geometry_known"]),
        study_uid=str(meta.get("study_uid", "")),
        frame_of_reference_uid=str(meta.get("frame_of_reference_uid", "")),
        sop_class_uids={str(k): str(v) for k, v in meta.get("sop_class_uids", {}).items()},
    )
