"""Read worker: same volume as in-process, limits from manifest/environment, and every hostile series (crash, hang,
memory) costs one fallback row while the next series still scores and the process tree stays under its limit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kernel import predict as kernel_predict
from kernel import procmem, read_worker
from kernel.budget import TimeBudget
from kernel.labels import LABEL_COLS
from kernel.preprocess import prepare_volume, reverse_z, voxel_to_world
from kernel.read_worker import HOOK_ENV, MEMORY_ENV, TIMEOUT_ENV, ReadLimits, ReadWorker
from kernel.volume import SeriesReadError
from testkit.dicom_factory import write_series
from testkit.hostile import CASES, HOOKED, TreePeak
from testkit.onnx_factory import write_random_weights

MEMORY_MB = 1024  # the worker tree's limit in these tests (default 3072)
TIMEOUT_S = 10.0  # per series (default 120): only the hang reaches it, with room for a loaded machine
TREE_LIMIT_MB = MEMORY_MB + 512  # whole process tree beyond the models: the worker's limit + the parent's share
HOOK = "testkit.hostile:install_worker_hooks"
PRIORS = [0.01 * (i + 1) for i in range(13)] + [0.43]
REASON = {"error": "SeriesReadError", "crash": "WorkerCrashed: read worker pid=", "hang": "WorkerTimeout",
          "memory": "WorkerOutOfMemory", "memory_error": "MemoryError"}
# ReadStats.outcome of each case's read: only the hang is cut by the timeout.
READ_OUTCOME = {"volume": "ok", "error": "error", "crash": "crash", "hang": "timeout", "memory": "memory",
                "memory_error": "error"}


def _same_volume(a, b) -> None:
    assert a.array.dtype == b.array.dtype == np.float32 and a.array.shape == b.array.shape
    assert np.array_equal(a.array, b.array)
    for name in ("affine", "source_affine"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    for name in ("modality", "series_uid", "slice_lookup", "source_shape", "dropped", "frame_geometry", "notes",
                 "geometry_known", "study_uid", "frame_of_reference_uid", "sop_class_uids"):
        assert getattr(a, name) == getattr(b, name), name


def test_worker_volume_is_the_in_process_volume(tmp_path: Path) -> None:
    write_series(tmp_path / "s", plane="sagittal", reverse=True, gaps=[2.0] * 6 + [3.0] + [2.0] * 5, scout=True,
                 blank=True, odd_size=True)
    worker = ReadWorker(ReadLimits(memory_mb=MEMORY_MB, timeout_s=30))
    try:
        for spacing in ((1.5, 1.5, 1.5), None):
            _same_volume(worker.prepare(tmp_path / "s", spacing, max_voxels=10**7),
                         prepare_volume(tmp_path / "s", spacing, max_voxels=10**7))
            assert worker.last.outcome == "ok" and worker.last.worker_peak_rss > 0
        # keep_native: the canonical stack at native spacing stays in the worker; its patches, sampled there, equal
        # the in-process stack's, and the resampled volume is unchanged
        remote = worker.prepare(tmp_path / "s", (1.5, 1.5, 1.5), max_voxels=10**7, keep_native=True)
        local = prepare_volume(tmp_path / "s", (1.5, 1.5, 1.5), max_voxels=10**7, keep_native=True)
        _same_volume(remote, local)
        assert remote.native.array is None and remote.native.shape == local.native.array.shape
        np.testing.assert_array_equal(remote.native.affine, local.native.affine)
        native = prepare_volume(tmp_path / "s", None, max_voxels=10**7)
        np.testing.assert_array_equal(local.native.array, native.array)
        centre = voxel_to_world(local.native.affine, (np.array(native.array.shape) - 1) / 2.0)[0]
        points = np.array([centre, centre + [3.1, -2.2, 1.7], centre + [400.0, 0.0, 0.0]])  # the last: outside
        for spacing in ((0.8, 0.6, 0.7), None):
            patches = remote.native.sample(points, (9, 8, 7), spacing)
            np.testing.assert_array_equal(patches, local.native.sample(points, (9, 8, 7), spacing))
            assert patches.shape == (3, 9, 8, 7) and patches[0].std() > 0 and not patches[2].any()
        np.testing.assert_array_equal(reverse_z(remote.native).sample(points, (9, 8, 7), (0.8, 0.6, 0.7)),
                                      reverse_z(local.native).sample(points, (9, 8, 7), (0.8, 0.6, 0.7)))
        # the worker holds one series' stack: after the next read the old one is refused, not silently resampled
        assert worker.prepare(tmp_path / "s", (1.5, 1.5, 1.5), max_voxels=10**7).native is None
        with pytest.raises(read_worker.WorkerError, match="no longer holds the native stack"):
            remote.native.sample(points, (9, 8, 7), None)
        mine = f"rsna_read_{os.getpid()}_{worker.pid}_"
        assert not [f for d in read_worker._handover_dirs() for f in os.listdir(d) if f.startswith(mine)]
        # A reader error comes back with its type and message; nothing is left in the handover folders.
        (tmp_path / "empty").mkdir()
        with pytest.raises(SeriesReadError) as remote:
            worker.prepare(tmp_path / "empty", None)
        with pytest.raises(SeriesReadError) as local:
            prepare_volume(tmp_path / "empty", None)
        assert str(remote.value) == str(local.value)
        # The prepared volume is sized before resampling: 0.05 mm would make 215 M voxels for the main process.
        with pytest.raises(SeriesReadError, match="over the 128,000,000 handed to the models"):
            worker.prepare(tmp_path / "s", (0.05, 0.05, 0.05))
        assert not list(Path("/dev/shm").glob(f"rsna_read_{os.getpid()}_*"))
        assert worker.pid in procmem.process_tree()
    finally:
        worker.close()
    assert worker.pid is None


def test_output_size_guard_is_the_same_in_process_and_isolated(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``prepare_volume`` refuses a series whose resampled volume would be too large for the models, before
    resampling: the same SeriesReadError in the main process (``RSNA_READ_ISOLATION=0``, or a worker that cannot
    start) and from the isolated worker."""
    import kernel.preprocess as preprocess

    write_series(tmp_path / "s", n_slices=6)  # 12 x 24 x 35 mm
    cases = {(0.04, 0.04, 0.04): "at 0.04x0.04x0.04 mm the volume would hold 157,500,000 voxels, over the "
                                 f"{preprocess.MAX_OUTPUT_VOXELS:,} handed to the models",
             (10.0, 10.0, 0.01): "at 10x10x0.01 mm the volume would be 3,500 voxels long, over the "
                                 f"{preprocess.MAX_OUTPUT_SIDE:,} a side handed to the models"}
    readers = {"in-process": ReadWorker(ReadLimits(memory_mb=MEMORY_MB, timeout_s=60, isolated=False)),
               "no worker": ReadWorker(ReadLimits(memory_mb=MEMORY_MB, timeout_s=60), hook="no_such_module:install"),
               "isolated": ReadWorker(ReadLimits(memory_mb=MEMORY_MB, timeout_s=60))}
    try:
        for spacing, reason in cases.items():
            with monkeypatch.context() as mp:  # in this process the guard fires before any resampling
                mp.setattr(preprocess, "resample_to_spacing", lambda *a, **k: pytest.fail("resampled"))
                with pytest.raises(SeriesReadError) as direct:
                    prepare_volume(tmp_path / "s", spacing)
            assert str(direct.value) == f"{tmp_path / 's'}: {reason}"
            for name, reader in readers.items():
                with pytest.raises(SeriesReadError) as caught:
                    reader.prepare(tmp_path / "s", spacing)
                assert str(caught.value) == str(direct.value), name
                assert reader.last.outcome == ("error" if name == "isolated" else "in_process"), name
        assert readers["no worker"].in_process and not readers["isolated"].in_process
    finally:
        for reader in readers.values():
            reader.close()


def test_limits_environment_over_manifest_over_defaults(caplog: pytest.LogCaptureFixture) -> None:
    assert ReadLimits.resolve({}, {}) == ReadLimits(3072, 120.0, True)
    manifest = {"memory_mb": 2048, "timeout_s": 30, "isolated": False}
    assert ReadLimits.resolve(manifest, {}) == ReadLimits(2048, 30.0, False)
    env = {MEMORY_ENV: "1500", TIMEOUT_ENV: "9.5", "RSNA_READ_ISOLATION": "1"}
    assert ReadLimits.resolve(manifest, env) == ReadLimits(1500, 9.5, True)
    with caplog.at_level("WARNING", logger="rsna.kernel"):  # a typo is logged and ignored, never fatal
        assert ReadLimits.resolve({"memory_mb": 100}, {TIMEOUT_ENV: "soon"}) == ReadLimits()
    assert sum("ignoring" in r.getMessage() for r in caplog.records) == 2


def test_proc_measurements_see_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(64 << 20); time.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while procmem.rss_bytes(child.pid) < 64 << 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.pid in procmem.process_tree()
        assert procmem.tree_rss_bytes() >= procmem.rss_bytes() + (64 << 20)
        assert procmem.peak_rss_bytes(child.pid) >= 64 << 20
    finally:
        child.kill()
        child.wait()
    if procmem.reset_peak_rss():
        assert procmem.peak_rss_bytes() <= procmem.rss_bytes() + (8 << 20)


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_worker_is_replaced(tmp_path: Path) -> None:
    write_series(tmp_path / "s", n_slices=6)
    worker = ReadWorker(ReadLimits(memory_mb=MEMORY_MB, timeout_s=30))
    try:
        worker.prepare(tmp_path / "s", None)
        first = worker.pid
        os.kill(first, signal.SIGKILL)  # killed between calls (the OOM killer, an operator) ...
        worker.prepare(tmp_path / "s", None)  # ... just now: it never acknowledges the request, which is retried
        second = worker.pid
        assert second != first and worker.restarts == 1 and worker.last.outcome == "ok"
        os.kill(second, signal.SIGKILL)  # ... a while ago: found dead before the request is sent
        time.sleep(0.5)
        worker.prepare(tmp_path / "s", None)
        assert worker.pid not in (first, second) and worker.restarts == 2 and worker.last.outcome == "ok"
    finally:
        worker.close()


def test_a_worker_that_cannot_start_falls_back_to_the_main_process(tmp_path: Path) -> None:
    write_series(tmp_path / "s", n_slices=6)
    worker = ReadWorker(ReadLimits(memory_mb=MEMORY_MB, timeout_s=30), hook="no_such_module:install")
    volume = worker.prepare(tmp_path / "s", None)
    assert worker.in_process and volume.array.shape == (6, 24, 28)
    worker.close()


def test_the_worker_ends_with_its_parent(tmp_path: Path) -> None:
    """A parent killed without any cleanup leaves no worker behind."""
    write_series(tmp_path / "s", n_slices=4)
    code = ("import os, sys; from kernel.read_worker import ReadWorker, ReadLimits; w = ReadWorker(ReadLimits()); "
            f"w.prepare({str(tmp_path / 's')!r}, None); print(w.pid, flush=True); os._exit(0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    pid = int(out.stdout.split()[-1])
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), f"worker {pid} outlived its parent"


# --- hostile series end to end, through Predictor ------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory):
    weights = write_random_weights(tmp_path_factory.mktemp("weights"), folds=1, seed=5, priors=PRIORS)
    with pytest.MonkeyPatch.context() as mp:  # limits and the test-only decoder hooks through the environment
        mp.setenv(MEMORY_ENV, str(MEMORY_MB))
        mp.setenv(TIMEOUT_ENV, str(TIMEOUT_S))
        mp.setenv(HOOK_ENV, HOOK)
        predictor = kernel_predict.Predictor(str(weights), budget=TimeBudget(limit_s=1e6, n_series=100, margin_s=0))
        assert predictor.reader.limits == ReadLimits(MEMORY_MB, TIMEOUT_S, True)
        yield predictor
        predictor.reader.close()


@pytest.fixture(scope="module")
def good_series(tmp_path_factory: pytest.TempPathFactory, predictor) -> tuple[Path, np.ndarray]:
    folder = tmp_path_factory.mktemp("good") / "1.2.3.9"
    write_series(folder, n_slices=30, rows=40, cols=44, allowlist_only=True)
    frame, record = predictor.predict(str(folder))
    assert record.level == "full", record
    return folder, np.array(frame.row(0))


def _row(frame: pl.DataFrame) -> np.ndarray:
    assert isinstance(frame, pl.DataFrame) and frame.height == 1 and frame.columns == LABEL_COLS
    values = np.array(frame.row(0), dtype=np.float64)
    assert np.all(np.isfinite(values)) and np.all((values >= 0) & (values <= 1))
    return values


# thousands_of_slices (3,000 files to write, ~10 s) is covered at the reader in test_hostile.py.
@pytest.mark.parametrize("case", sorted(set(CASES) - {"thousands_of_slices"}))
def test_hostile_series_cost_one_row(case: str, predictor, good_series, tmp_path: Path,
                                     caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / f"uid_{case}"
    outcome = HOOKED.get(case) or CASES[case](folder)
    if case in HOOKED:
        CASES[case](folder)
    with caplog.at_level("WARNING", logger="rsna.kernel"), TreePeak() as peak:
        frame, record = predictor.predict(str(folder))
        peak.add_child_peak(max(predictor.reader.last.tree_peak_rss, predictor.reader.last.worker_peak_rss))
    values = _row(frame)
    read = predictor.reader.last
    assert read.outcome == READ_OUTCOME[outcome], (read, record)  # the hang is cut by the timeout, nothing else
    if outcome == "volume":
        assert record.level == "full", record
    else:
        assert record.level == "fallback" and REASON[outcome] in (record.reason or ""), record
        np.testing.assert_allclose(values, PRIORS)
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fallback uid=")]
        assert lines == [f"fallback uid=uid_{case} reason={record.reason}"], lines
    assert peak.growth < TREE_LIMIT_MB * 2**20, f"process tree peak {peak.growth / 2**20:.0f} MB beyond the models"
    # The next series is predicted normally (by a replacement worker after a crash, hang or kill).
    folder, expected = good_series
    frame, record = predictor.predict(str(folder))
    assert record.level == "full", record
    np.testing.assert_array_equal(_row(frame), expected)
