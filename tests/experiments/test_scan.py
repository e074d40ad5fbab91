"""The sphere-map scan experiment (experiments.scan): tile choice, site union, and one real series end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from experiments import scan
from kernel.labels import LOCATION_COLS
from kernel.preprocess import voxel_to_world


def test_tile_centres_ranked_by_the_strongest_heatmap_cell_inside() -> None:
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    score = np.full((12, 16, 16), -5.0)
    score[2, 3, 4] = 4.0  # crop voxels 9.5, 13.5, 17.5 (stride 4)
    score[10, 12, 1] = 2.0
    tiles, best = scan.tile_centres((48, 64, 64), affine, 1.5, 9.6, score, 4, 3)
    assert best.tolist() == [4.0, 2.0, -5.0]
    hot = voxel_to_world(affine, np.array([[9.5, 13.5, 17.5], [41.5, 49.5, 5.5]]))
    # the first two tiles hold the two hot cells: within half a tile (4.8 mm) on every axis
    assert np.all(np.abs(tiles[:2] - hot) <= 4.8 + 1e-9)
    # a 6.4-voxel grid from 2.7: 7 x 10 x 10 tiles, each holding heatmap cells
    assert len(scan.tile_centres((48, 64, 64), affine, 1.5, 9.6, score, 4, 10_000)[0]) == 7 * 10 * 10


def test_heat_channels_reads_the_cell_holding_each_point() -> None:
    heat = np.zeros((len(LOCATION_COLS), 4, 4, 4))
    heat[5, 1, 2, 3] = 7.0
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    point = voxel_to_world(affine, np.array([[1 * 4 + 1.0, 2 * 4 + 2.0, 3 * 4 + 0.5]]))
    chans = scan.heat_channels(heat, affine, 4, np.vstack([point, [[999.0, 999.0, 999.0]]]))
    assert chans.shape == (2, len(LOCATION_COLS)) and chans[0, 5] == 7.0 and chans[0].sum() == 7.0
    assert chans[1].sum() == 0.0  # clipped to the map's corner cell


def test_union_sites_adds_scan_candidates_away_from_the_heatmap_peaks() -> None:
    chans = np.zeros((1, len(LOCATION_COLS)))
    record = {"candidates_lps": [[0.0, 0, 0]], "site_probs": [0.2], "channel_logits": chans.tolist(),
              "scan": {"32": {"moved": [[1.0, 0, 0], [10, 0, 0], [20, 0, 0]], "site_probs": [0.9, 0.4, 0.3],
                              "channel_logits": np.ones((3, len(LOCATION_COLS))).tolist()}}}
    points, site, ch = scan.union_sites(record, 32, 1)
    assert points.tolist() == [[0, 0, 0], [10, 0, 0]] and site.tolist() == [0.2, 0.4]  # 1 mm away: a duplicate
    assert ch.shape == (2, len(LOCATION_COLS))
    assert len(scan.union_sites(record, 32, 5)[0]) == 3
    assert len(scan.union_sites(record, 32, 0)[0]) == 1


def test_scan_series_on_a_real_size_phantom(tmp_path: Path) -> None:
    """One `real` series with large domes through the shipped fold 0: the kernel's sites as the retune keeps them,
    the scan runs the requested tiles, its candidates are scored in [0, 1], and the 40 sphere peaks reach the dome."""
    from kernel.ensemble import Ensemble
    from kernel.manifest import load_manifest
    from train_offline.domes import load_domes
    from train_offline.phantoms.generate import generate_dataset

    manifest = load_manifest("weights")  # the shipped weights: they must load
    assert manifest.models("fine"), "the shipped weights have a fine stage"
    generate_dataset(tmp_path, 1, seed=3, size="real", progress=False, dome_range=(7.0, 9.0), segmentations=False)
    uid = next((tmp_path / "series").iterdir()).name
    ensemble = Ensemble(manifest, providers=["CPUExecutionProvider"], threads=2)
    out = scan.scan_series(tmp_path / "series" / uid, ensemble, 0, [8, 96], 10)
    assert len(out["tiles"]) == 96 and np.all(np.diff(out["tile_heat"]) <= 0)
    for n_tiles in (8, 96):
        found = out["scan"][str(n_tiles)]
        assert 0 < len(found["moved"]) <= 10 and np.all((found["site_probs"] >= 0) & (found["site_probs"] <= 1))
        assert found["channel_logits"].shape == (len(found["moved"]), len(LOCATION_COLS))
    domes = load_domes(tmp_path)[uid]
    peaks = out["scan"]["96"]["peaks40"]
    nearest = min(np.linalg.norm(peaks - d.centre_lps, axis=1).min() for d in domes)
    assert nearest <= 5.0, f"no sphere peak within 5 mm of an aneurysm (nearest {nearest:.1f} mm)"


def test_cli_help_and_missing_oof(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        scan.main(["--help"])
    assert exc.value.code == 0 and "sphere map" in capsys.readouterr().out
    assert scan.main(["scan", "--weights", "weights", "--fold", "7", "--out", str(tmp_path / "o")]) == 2
    assert "oof_fine_f7.csv is missing" in capsys.readouterr().err
