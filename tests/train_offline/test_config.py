"""Configs: keys renamed since runs were saved are read under their old names, everywhere a config comes from."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from train_offline.config import (
    RENAMED_KEYS,
    ConfigError,
    load_config,
    load_saved_config,
    parse_overrides,
    run_fold_dirs,
    save_config,
)


def test_old_key_names_are_read_from_saved_configs_files_and_overrides(tmp_path: Path) -> None:
    config = load_config("demo")
    saved = {**config, "fine": {k: v for k, v in config["fine"].items()
                                if k not in ("site_heatmap_weight", "site_heatmap_grid", "recentre_view",
                                             "sites_per_series")}}
    saved["fine"].update(heat_weight=1.0, heat_grid=[0.0, 1.0], score_found=False, per_series=9)
    save_config(tmp_path / "config.yaml", saved)
    loaded = load_saved_config(tmp_path / "config.yaml")  # a run folder written before the renames
    assert (loaded["fine"]["site_heatmap_weight"], loaded["fine"]["site_heatmap_grid"]) == (1.0, [0.0, 1.0])
    assert loaded["fine"]["recentre_view"] is False and loaded["fine"]["sites_per_series"] == 9
    assert not {old for _, old in RENAMED_KEYS} & set(loaded["fine"])
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({"base": "demo.yaml", "fine": {"per_series": 7}}))
    (tmp_path / "demo.yaml").write_text((Path(__file__).resolve().parents[2] / "train_offline" / "configs" /
                                         "demo.yaml").read_text())
    (tmp_path / "base.yaml").write_text((Path(__file__).resolve().parents[2] / "train_offline" / "configs" /
                                         "base.yaml").read_text())
    assert load_config(tmp_path / "old.yaml")["fine"]["sites_per_series"] == 7  # a config file with the old name
    overridden = load_config("demo", parse_overrides(["fine.heat_weight=0.5"]))  # --set with the old name
    assert overridden["fine"]["site_heatmap_weight"] == 0.5 and "heat_weight" not in overridden["fine"]
    with pytest.raises(ConfigError, match="unknown key"):
        load_config("demo", parse_overrides(["fine.heat_wieght=0.5"]))  # a typo still fails loudly


def test_fold_folders_follow_the_config_or_the_single_out(tmp_path: Path) -> None:
    config = load_config("demo", {"train": {"out_dir": str(tmp_path)}})
    assert run_fold_dirs(config, [0, 2]) == [tmp_path / "demo" / "fold0", tmp_path / "demo" / "fold2"]
    assert run_fold_dirs(config, [1], tmp_path / "x") == [tmp_path / "x"]
    with pytest.raises(ConfigError, match="--out takes one --fold"):
        run_fold_dirs(config, [0, 1], tmp_path / "x")
