"""The vessel-segmentation pretraining stage: its loss keeps DDP's graph whole, its Dice, and on a tiny run that it
writes pretrain.pt, that the classifier starts from exactly those weights, that --resume skips a finished stage, and
that it trains under torchrun with two gloo ranks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from tests.train_offline.test_training import REPO, TINY, _tiny_config, _write_dataset
from train_offline import train
from train_offline.config import load_config
from train_offline.losses import pretrain_loss
from train_offline.models import build_classifier

CLS = {"input_shape": [16, 16, 16], "channels": [4, 8, 8, 8], "dropout": 0.0}


def _batch(n: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    seg = torch.randint(0, 14, (n, 4, 4, 4), generator=g)
    seg[1] = -1  # the second sample has no segmentation
    return {"crop": torch.randn(n, 1, 16, 16, 16, generator=g), "seg": seg}


def test_pretrain_loss_is_the_seg_ce_and_touches_every_parameter() -> None:
    torch.manual_seed(0)
    model = build_classifier(CLS)
    batch = _batch()
    out = model(batch["crop"])
    loss, parts = pretrain_loss(out, batch)
    expected = F.cross_entropy(out["seg"], batch["seg"], ignore_index=-1)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6) and parts["seg"] == pytest.approx(loss.item())
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None for g in grads.values())  # DDP (find_unused_parameters=False) needs every one
    for name in ("label_head.weight", "modality_head.weight", "heatmap_head.weight", "peak_scale"):
        assert torch.count_nonzero(grads[name]) == 0, name  # only the vessel CE trains
    assert torch.count_nonzero(grads["seg_head.weight"]) > 0 and torch.count_nonzero(grads["stem.0.0.weight"]) > 0
    # No segmented cell in the batch: zero loss, still a graph over every parameter.
    model.zero_grad()
    empty = {**batch, "seg": torch.full_like(batch["seg"], -1)}
    loss, _ = pretrain_loss(model(batch["crop"]), empty)
    loss.backward()
    assert loss.item() == 0.0 and all(p.grad is not None for p in model.parameters())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pretrain_loss_trains_under_ddp_where_a_seg_only_loss_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-process gloo group: DistributedDataParallel's reducer checks for unused parameters as with N ranks."""
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        def steps(loss_fn: Any) -> None:
            torch.manual_seed(0)
            model = nn.parallel.DistributedDataParallel(build_classifier(CLS))
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
            for _ in range(2):
                batch = _batch()
                loss = loss_fn(model(batch["crop"]), batch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

        steps(lambda out, batch: pretrain_loss(out, batch)[0])
        with pytest.raises(RuntimeError, match="(?i)reduction|unused"):  # the control: seg CE alone
            steps(lambda out, batch: F.cross_entropy(out["seg"], batch["seg"], ignore_index=-1))
    finally:
        dist.destroy_process_group()


def test_vessel_dice() -> None:
    target = torch.tensor([[0, 3, 3, -1], [0, 0, 0, 0], [5, 0, -1, -1], [0, 0, 0, 0]])
    predicted = torch.tensor([[0, 7, 0, 2], [0, 0, 0, 0], [0, 1, 2, 0], [1, 0, 0, 0]])  # class per cell
    logits = F.one_hot(predicted, 14).permute(0, 2, 1).float()  # [B, 14, cells]
    dice = train.vessel_dice(logits, target)
    # 1: one of two vessel cells hit, the predicted vessel on an unknown cell ignored -> 2*1/(1+2); 2: nothing
    # anywhere, left out; 3: a miss and a false vessel -> 0; 4: a false vessel, no truth -> 0.
    assert dice == pytest.approx([2 / 3, 0.0, 0.0])
    assert train.vessel_dice(F.one_hot(target.clamp(min=0), 14).permute(0, 2, 1).float(), target) == [1.0, 1.0]


# --- the stage in a tiny run ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _write_dataset(tmp_path_factory.mktemp("pretrain"))


def _config(tmp_path: Path, data: tuple[Path, Path], **classifier: Any) -> dict[str, Any]:
    root, cache = data
    overrides = {**TINY, "locator": {**TINY["locator"], "epochs": 1},
                 "classifier": {**TINY["classifier"], "epochs": 1, "pretrain_epochs": 1, **classifier},
                 "data": {**TINY["data"], "root": str(root), "cache": str(cache),
                          "index": str(tmp_path / "index.csv"), "folds_csv": str(tmp_path / "folds.csv")}}
    return load_config("base", overrides)


def test_pretrain_stage_feeds_the_classifier_and_resume_skips_it(tiny_data: tuple[Path, Path], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict[str, torch.Tensor]]] = []
    real_run_stage = train.run_stage

    def spy(stage: str, model: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
        calls.append((stage, {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}))
        return real_run_stage(stage, model, *args, **kwargs)

    monkeypatch.setattr(train, "run_stage", spy)
    out = tmp_path / "fold0"
    summary = train.train_fold(_config(tmp_path, tiny_data), 0, out)
    assert [stage for stage, _ in calls] == ["locator", "pretrain", "classifier"]
    pretrained = torch.load(out / "pretrain.pt", map_location="cpu", weights_only=True)
    at_classifier_start = calls[2][1]
    assert pretrained.keys() == at_classifier_start.keys()
    for key, value in pretrained.items():
        assert torch.equal(value, at_classifier_start[key]), key
    assert any(not torch.equal(v, calls[1][1][k]) for k, v in pretrained.items())  # the stage did train
    assert (out / "classifier.pt").is_file() and (out / "checkpoint_pretrain.pt").is_file()
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in records] == [("locator", 0), ("pretrain", 0), ("classifier", 0)]
    assert "val_vessel_dice" in records[1] and records[1]["steps"] >= 1 and "train_seg" in records[1]
    record = summary["pretrain"]
    assert record["epochs"] == 1 and record["series"] > 0 and record["val_series"] > 0
    assert record["seconds"] == pytest.approx(records[1]["seconds"], abs=0.1)
    assert record["val_vessel_dice"] == records[1]["val_vessel_dice"]
    assert json.loads((out / "summary.json").read_text())["pretrain"] == record

    # --resume with one more classifier epoch: pretrain.pt exists, so the stage is skipped and not logged again.
    calls.clear()
    before = (out / "pretrain.pt").read_bytes()
    resumed = train.train_fold(_config(tmp_path, tiny_data, epochs=2), 0, out, resume=True)
    assert [stage for stage, _ in calls] == ["classifier"]
    assert (out / "pretrain.pt").read_bytes() == before
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in records][1:] == [("pretrain", 0), ("classifier", 0), ("classifier", 1)]
    assert resumed["pretrain"] == record  # the skipped stage reports what it logged


def test_pretrain_under_torchrun_two_gloo_processes(tiny_data: tuple[Path, Path], tmp_path: Path) -> None:
    """Two ranks: both train the pretrain stage in DDP, rank 0 writes pretrain.pt, both load it for the classifier."""
    args = _tiny_config(tmp_path, tiny_data)
    out = tmp_path / "ddp" / "fold1"
    proc = subprocess.run(  # the timeout is a backstop only: two ranks on a loaded 2-core machine
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         "-m", "train_offline.train", *args[:2], "--fold", "1", "--out", str(out), *args[2:], "data.preload=regions",
         "locator.epochs=1", "classifier.epochs=1", "classifier.pretrain_epochs=2"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"], r["ddp"]) for r in records] == [
        ("locator", 0, "gloo"), ("pretrain", 0, "gloo"), ("pretrain", 1, "gloo"), ("classifier", 0, "gloo")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["pretrain"]["epochs"] == 2 and (out / "pretrain.pt").is_file()
