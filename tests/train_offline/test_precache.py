"""Pre-caching: results equal the kernel's own path, reruns skip, shards partition, kills leave nothing partial."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kernel.preprocess import prepare_volume
from testkit.dicom_factory import write_series
from train_offline.cache import is_cached, load_cached
from train_offline.precache_all import list_series, main, precache_all

REPO = Path(__file__).resolve().parents[2]


def _layout(root: Path, n_good: int = 3) -> list[str]:
    uids = []
    for i in range(n_good):
        uid = f"1.2.3.{i}"
        write_series(root / "series" / uid, plane=("axial", "coronal", "sagittal")[i % 3], reverse=bool(i % 2), seed=i)
        uids.append(uid)
    bad = root / "series" / "1.2.3.bad"
    bad.mkdir(parents=True)
    (bad / "x.dcm").write_bytes(os.urandom(500))
    return uids


def test_precache_matches_kernel_path_and_reports_failures(tmp_path: Path) -> None:
    uids = _layout(tmp_path / "data")
    out = tmp_path / "cache"
    counts = precache_all(tmp_path / "data", out, workers=1, progress=False)
    assert counts == {"total": 4, "skipped": 0, "cached": 3, "failed": 1}
    for uid in uids:
        cached = load_cached(out, uid)
        direct = prepare_volume(tmp_path / "data" / "series" / uid)
        np.testing.assert_array_equal(cached.array, direct.array)
        np.testing.assert_allclose(cached.affine, direct.affine)
        assert cached.slice_lookup == direct.slice_lookup
        assert cached.frame_geometry == direct.frame_geometry
    rows = list(csv.DictReader((out / "failures.csv").open()))
    assert [r["SeriesInstanceUID"] for r in rows] == ["1.2.3.bad"] and "no readable image" in rows[0]["reason"]
    again = precache_all(tmp_path / "data", out, workers=2, progress=False)
    assert again == {"total": 4, "skipped": 4, "cached": 0, "failed": 0}


def test_shards_partition_the_series(tmp_path: Path) -> None:
    _layout(tmp_path / "data", n_good=5)
    parts = [set(list_series(tmp_path / "data", (k, 3))) for k in range(3)]
    assert set.union(*parts) == set(list_series(tmp_path / "data")) and sum(len(p) for p in parts) == 6


def test_cli_help_and_bad_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "--shard" in capsys.readouterr().out
    assert main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "c")]) == 2
    assert "no 'series' folder" in capsys.readouterr().err


def test_sigkill_and_restart_leave_no_partial_files(tmp_path: Path) -> None:
    """Kill a run at random moments, restart it; in the end every series is cached whole or listed as failed."""
    uids = _layout(tmp_path / "data", n_good=6)
    out = tmp_path / "cache"
    cmd = [sys.executable, "-m", "train_offline.precache_all", "--data", str(tmp_path / "data"), "--out", str(out),
           "--workers", "2"]
    rng = np.random.default_rng(0)
    for _ in range(3):
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(float(rng.uniform(0.3, 1.5)))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=300)
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert all(is_cached(out, u) for u in uids)
    for uid in uids:
        assert load_cached(out, uid).array.size > 0  # every file loads whole
    assert not (out / "1.2.3.bad.npy").exists() and (out / "1.2.3.bad.failed.json").exists()


def test_config_spacing_is_cached_and_checked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--config`` caches at the config's volume_spacing_mm; a cache of another spacing is refused by precache
    (no second spacing in one folder) and by training's check, with a message that names both spacings."""
    from train_offline.cache import CacheSpacingError, cache_spacing, check_cache_spacing
    from train_offline.config import load_config

    _layout(tmp_path / "data", n_good=2)
    out = tmp_path / "cache"
    assert main(["--config", "demo", "--data", str(tmp_path / "data"), "--out", str(out), "--workers", "1"]) == 0
    demo = load_config("demo")["volume_spacing_mm"]
    assert cache_spacing(out) == tuple(demo) == (1.5, 1.5, 1.5)
    assert np.allclose(load_cached(out, "1.2.3.0").spacing, demo)
    check_cache_spacing(out, demo)  # the same spacing passes
    with pytest.raises(CacheSpacingError, match=r"\[1.5, 1.5, 1.5\] mm but the config's volume_spacing_mm is "
                                                r"\[1.0, 1.0, 1.0\]"):
        check_cache_spacing(out, [1.0, 1.0, 1.0])
    capsys.readouterr()
    assert main(["--data", str(tmp_path / "data"), "--out", str(out), "--spacing", "2", "2", "2"]) == 2
    assert "already holds volumes at [1.5, 1.5, 1.5] mm" in capsys.readouterr().err
    assert main(["--config", "no-such-config", "--data", str(tmp_path / "data"), "--out", str(out)]) == 2
    assert load_cached(out, "1.2.3.0").geometry_known  # the reader's flag survives the cache
