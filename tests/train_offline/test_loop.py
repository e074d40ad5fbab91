"""train_offline.loop: a torchrun launch with one process still trains in DistributedDataParallel (gloo on CPU)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from train_offline.loop import run_stage, setup_distributed


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, n: int = 8):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5])

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


def _stage(tmp_path: Path, rank: int, world: int, device: torch.device) -> tuple[nn.Module, list[dict]]:
    cfg = {"epochs": 2, "val_every": 1, "batch_size": 4, "lr": 0.05}
    ctx = {"rank": rank, "world": world, "device": device, "seed": 0, "resume": False, "amp": True, "num_workers": 0,
           "channels_last": False}

    def step(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        return ((model(batch["x"])[:, 0] - batch["y"]) ** 2).mean(), {}

    model = run_stage("toy", nn.Linear(3, 1), _Pairs(), cfg, step, lambda _epoch: {}, tmp_path, ctx)
    return model, [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_with_one_process_uses_ddp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"TORCHELASTIC_RUN_ID": "test", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    rank, world, device = setup_distributed("cpu")
    try:
        assert dist.is_initialized() and dist.get_backend() == "gloo" and (rank, world) == (0, 1)
        model, records = _stage(tmp_path, rank, world, device)
    finally:
        dist.destroy_process_group()
    assert isinstance(model, nn.Linear)  # unwrapped from DistributedDataParallel
    assert [r["ddp"] for r in records] == ["gloo", "gloo"] and [r["steps"] for r in records] == [2, 2]
    assert "gpu_peak_mb" not in records[0]  # CUDA only


def test_plain_process_has_no_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(key, raising=False)
    rank, world, device = setup_distributed("cpu")
    assert not dist.is_initialized() and (rank, world, device.type) == (0, 1, "cpu")
    _, records = _stage(tmp_path, rank, world, device)
    assert records[-1]["ddp"] is None and records[-1]["steps"] == 2 and records[-1]["train_loss"] < records[0][
        "train_loss"]
