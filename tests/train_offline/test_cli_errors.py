"""Every training-side CLI rejects bad input with one clear message and exit code 2, never a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.fixture()
def typo_config(tmp_path: Path) -> Path:
    for cfg in (REPO / "train_offline" / "configs").glob("*.yaml"):
        shutil.copy(cfg, tmp_path / cfg.name)
    path = tmp_path / "typo.yaml"
    path.write_text("base: demo.yaml\nclassifier: {epochz: 3}\n")
    return path


@pytest.mark.parametrize(
    "args, message",
    [
        (["train_offline.train", "--config", "no_such_config", "--fold", "0"], "not found; known configs"),
        (["train_offline.train", "--config", "demo", "--fold", "9"], "--fold must be in 0..4"),
        (["train_offline.export", "--run", "/nonexistent/run"], "no summary.json"),
        (["train_offline.precache_all", "--data", "/nonexistent/data", "--out", "/tmp/unused"], "no 'series' folder"),
        (["train_offline.precache_all", "--data", ".", "--out", "/tmp/unused", "--shard", "3/2"], "0 <= K < N"),
    ],
)
def test_cli_rejects_bad_input(args: list[str], message: str) -> None:
    proc = _run(*args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr


def test_train_rejects_unknown_config_key(typo_config: Path) -> None:
    proc = _run("train_offline.train", "--config", str(typo_config), "--fold", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "unknown key classifier.epochz" in proc.stderr


def test_train_refuses_a_cache_at_another_spacing(tmp_path: Path) -> None:
    """A 2 mm cache with the 1.5 mm demo config: refused before anything is read or written, naming both spacings."""
    cache = tmp_path / "cache2mm"
    cache.mkdir()
    (cache / "1.2.3.json").write_text('{"cache_spacing": [2.0, 2.0, 2.0], "spacing": [2.0, 2.0, 2.0]}')
    out = tmp_path / "run"
    proc = _run("train_offline.train", "--config", "demo", "--fold", "0", "--out", str(out),
                "--set", f"data.cache={cache}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "holds volumes at [2.0, 2.0, 2.0] mm but the config's volume_spacing_mm is [1.5, 1.5, 1.5]" in proc.stderr
    assert not out.exists()
