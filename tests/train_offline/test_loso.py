"""Leave-one-style-out: the index's style column and the ``data.styles`` filter, the bootstrap interval, the table
from hand-made details files, the steps' skip rules and settings checks, and (slow) the command end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from kernel.labels import ID_COL, LABEL_COLS, PRESENT_COL
from kernel.metric import score, two_class_columns
from testkit.training_data import write_training_set
from train_offline import index as index_mod
from train_offline.config import ConfigError, load_config
from train_offline.folds import ensure_index_and_folds
from train_offline.loso import Loso, check_settings, checked_spacing, fresh, loso_steps
from train_offline.loso_report import bootstrap_indices, bootstrap_scores, build_table, load_split, loso_markdown

REPO = Path(__file__).resolve().parents[2]
PRESENT = LABEL_COLS.index(PRESENT_COL)
STYLE_OF = {0: None, 1: "randomised", 2: "labelmap"}  # series i: STYLE_OF[i % 3] (None: no key, i.e. classic)
TINY = {
    "name": "tiny", "data": {"n_folds": 3}, "volume_spacing_mm": [4.0] * 3,
    "locator": {"input_shape": [16, 16, 16], "spacing_mm": [8.0] * 3, "output_stride": 2, "channels": [4, 8],
                "epochs": 1, "batch_size": 4, "sigma_mm": 12.0},
    "classifier": {"input_shape": [32, 32, 32], "spacing_mm": [4.0] * 3, "channels": [4, 8, 8, 8], "epochs": 1,
                   "batch_size": 4, "heatmap_sigma_mm": 8.0, "jitter_mm": 4.0},
    "train": {"device": "cpu", "threads": 1},
}


def _write_truth(data: Path, uids: list[str], skip: set[str] = frozenset()) -> None:
    """A phantom_truth.jsonl giving series i the style STYLE_OF[i % 3] (the classic ones without a style key)."""
    with open(data / "phantom_truth.jsonl", "w") as fh:
        for i, uid in enumerate(uids):
            if uid not in skip:
                style = STYLE_OF[i % 3]
                fh.write(json.dumps({ID_COL: uid, "modality": "CTA", **({"style": style} if style else {})}) + "\n")


@pytest.fixture(scope="module")
def styled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    data, cache = write_training_set(tmp_path_factory.mktemp("styled"), n=15)
    uids = pd.read_csv(data / "train.csv", dtype={ID_COL: str})[ID_COL].tolist()
    _write_truth(data, uids)
    return data, cache, uids


# --- index and filter ----------------------------------------------------------------------------------------------


def test_index_style_column(tmp_path: Path) -> None:
    data, cache = write_training_set(tmp_path, n=6)
    uids = pd.read_csv(data / "train.csv", dtype={ID_COL: str})[ID_COL].tolist()
    no_truth = index_mod.build_index(data, cache, progress=False)
    assert no_truth["style"].tolist() == ["unknown"] * 6  # competition data: no phantom_truth.jsonl
    _write_truth(data, uids, skip={uids[5]})
    index = index_mod.build_index(data, cache, progress=False)
    assert index["style"].tolist() == ["classic", "randomised", "labelmap", "classic", "randomised", "unknown"]
    index.to_csv(tmp_path / "index.csv", index=False)
    assert index_mod.load_index(tmp_path / "index.csv")["style"].tolist() == index["style"].tolist()


def _config(tmp_path: Path, data: Path, cache: Path, styles: list[str]) -> dict:
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return load_config(tmp_path / "tiny.yaml", {"data": {
        "root": str(data), "cache": str(cache), "index": str(tmp_path / "index.csv"),
        "folds_csv": str(tmp_path / "folds.csv"), "styles": styles}})


def test_styles_filter_training_sees_only_those(styled: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    from train_offline.train import train_fold

    data, cache, uids = styled
    kept = {u for i, u in enumerate(uids) if i % 3 in (0, 1)}  # classic + randomised
    config = _config(tmp_path, data, cache, ["classic", "randomised"])
    summary = train_fold(config, 0, tmp_path / "run")
    assert summary is not None and summary["n_train"] + summary["n_val"] == len(kept) == 10
    assert set(summary["val_uids"]) <= kept
    assert set(pd.read_csv(tmp_path / "run" / "oof.csv", dtype={ID_COL: str})[ID_COL]) <= kept
    # the folds come from the whole index: one folds file serves every subset of styles
    folds = pd.read_csv(tmp_path / "folds.csv", dtype={ID_COL: str})
    assert set(folds[ID_COL]) == set(uids)
    index, _ = ensure_index_and_folds(config, 0, 1)
    assert set(index[ID_COL]) == kept
    everything, _ = ensure_index_and_folds({**config, "data": {**config["data"], "styles": []}}, 0, 1)
    assert len(everything) == 15
    with pytest.raises(ValueError, match=r"no series of style\(s\) \['implicit'\]"):
        ensure_index_and_folds({**config, "data": {**config["data"], "styles": ["implicit"]}}, 0, 1)
    old = pd.read_csv(tmp_path / "index.csv").drop(columns="style")
    old.to_csv(tmp_path / "index.csv", index=False)
    with pytest.raises(ValueError, match="built before"):
        ensure_index_and_folds(config, 0, 1)


# --- bootstrap -----------------------------------------------------------------------------------------------------


def _labels(n: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, len(LABEL_COLS)))
    labels[:, PRESENT] = rng.random(n) < 0.5
    for i in np.flatnonzero(labels[:, PRESENT]):
        labels[i, rng.integers(0, PRESENT)] = 1
    return labels


def test_bootstrap_perfect_ranker_and_random_scores() -> None:
    labels = _labels()
    perfect = bootstrap_scores(labels, labels * 0.8 + 0.1, labels * 0.8 + 0.1, n_resamples=300, seed=1)
    for metric in ("score", "auc_present"):
        assert perfect[metric]["in"] == {"point": 1.0, "ci": [1.0, 1.0]}
        assert perfect[metric]["gap"] == {"point": 0.0, "ci": [0.0, 0.0]}
    noise = np.random.default_rng(2).random(labels.shape)
    random = bootstrap_scores(labels, noise, n_resamples=300, seed=1)
    for metric in ("score", "auc_present"):
        low, high = random[metric]["in"]["ci"]
        assert low < 0.5 < high and "gap" not in random[metric]
    assert random == bootstrap_scores(labels, noise, n_resamples=300, seed=1)  # seeded


def test_bootstrap_redraws_single_class_resamples() -> None:
    labels = np.zeros((20, len(LABEL_COLS)))
    labels[:10, PRESENT] = 1
    labels[3, 0] = 1  # one positive: every kept resample must draw series 3
    draws, short = bootstrap_indices(labels, 200, seed=0)
    assert short == 0 and all(3 in d for d in draws)
    assert all(0 < labels[d, PRESENT].sum() < 20 for d in draws)


# --- the table from hand-made details -------------------------------------------------------------------------------

# six series: (protocol, dome mm or None, dome centre LPS, location)
CASES = [("CTA", 4.0, [0, 0, 0], "Left Middle Cerebral Artery"), ("CTA", None, None, None),
         ("MRA", 7.0, [10, 0, 0], "Basilar Tip"), ("MRA", None, None, None),
         ("MRI T2", 3.0, [0, 10, 0], "Anterior Communicating Artery"), ("MRI T2", None, None, None)]


def _write_split(root: Path) -> Path:
    root.mkdir(parents=True)
    rows, truth = [], []
    for i, (protocol, dome, centre, location) in enumerate(CASES):
        labels = dict.fromkeys(LABEL_COLS, 0)
        if dome:
            labels[location] = labels[PRESENT_COL] = 1
        rows.append({ID_COL: f"s{i}", **labels})
        truth.append({ID_COL: f"s{i}", "modality": protocol, "head_to_lps": np.eye(4).tolist(),
                      "aneurysms": [{"location": location, "centre_lps": centre, "dome_mm": dome}] if dome else []})
    pd.DataFrame(rows).to_csv(root / "solution.csv", index=False)
    (root / "phantom_truth.jsonl").write_text("".join(json.dumps(t) + "\n" for t in truth))
    return root


def _write_details(path: Path, present: list[float], locations: list[float] | None, modality: list[str | None],
                   candidates: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    solution = pd.read_csv(path.parent.parent / "split" / "solution.csv")
    lines = []
    for i in range(len(CASES)):
        probs = ([float(v) * 0.9 + 0.05 for v in solution.loc[i, LABEL_COLS[:PRESENT]]] if locations is None
                 else [0.5] * PRESENT) + [present[i]]
        record = {ID_COL: f"s{i}", "probs": probs}
        if modality[i] is None:
            record["fallback"] = True
        else:
            record.update(modality=modality[i], candidates_lps=candidates[i])
        lines.append(json.dumps(record) + "\n")
    path.write_text("".join(lines))
    return path


def test_table_from_hand_made_details(tmp_path: Path) -> None:
    split = load_split(_write_split(tmp_path / "split"), "classic")
    a = _write_details(tmp_path / "d" / "in.jsonl", [0.9, 0.1, 0.8, 0.2, 0.7, 0.3], None,
                       ["CTA", "CTA", "MRA", "CTA", "MRI T2", "MRI T2"],
                       [[[1, 0, 0]], [], [[10, 6, 0]], [], [[0, 10, 3.4]], []])
    b = _write_details(tmp_path / "d" / "out.jsonl", [0.4, 0.6, 0.8, 0.2, 0.3, 0.5], [],
                       ["MRA", None, "MRA", "MRA", "MRI T1post", "MRI T2"],
                       [[[50, 50, 50]], [], [[10, 0, 5]], [], [], []])
    table = build_table({"classic": split}, {("base", "all", "classic"): a, ("base", "without_classic", "classic"): b,
                                             ("base", "without_x", "classic"): tmp_path / "absent.jsonl"},
                        ["base"], n_resamples=50)
    (row,) = table["rows"]
    # out: present AUC 5/9 (pairs 0.4>0.2, 0.8>all three, 0.3>0.2), three location columns at 0.5, weights 13 + 3
    out_score = (13 * 5 / 9 + 3 * 0.5) / 16
    assert row["score"]["in"]["point"] == 1.0 and row["score"]["out"]["point"] == pytest.approx(out_score, abs=1e-4)
    assert row["score"]["gap"]["point"] == pytest.approx(1 - out_score, abs=1e-4)
    assert row["auc_present"]["gap"]["point"] == pytest.approx(4 / 9, abs=1e-4)
    recall_in = {k: v["recall"] for k, v in row["in"]["candidate_recall"].items()}
    recall_out = {k: v["recall"] for k, v in row["out"]["candidate_recall"].items()}
    # 4 mm dome: 1 mm off (radius + 2 = 4); 7 mm: 6 mm off in, 5 mm off out (5.5); 3 mm: 3.4 mm off in (3.5)
    assert recall_in == {"< 3.5 mm": 1.0, "3.5-4.5 mm": 1.0, ">= 6 mm": 0.0, "all": pytest.approx(2 / 3, abs=1e-4)}
    assert recall_out == {"< 3.5 mm": 0.0, "3.5-4.5 mm": 0.0, ">= 6 mm": 1.0, "all": pytest.approx(1 / 3, abs=1e-4)}
    acc_in = {k: v["accuracy"] for k, v in row["in"]["modality_accuracy"].items()}
    acc_out = {k: v["accuracy"] for k, v in row["out"]["modality_accuracy"].items()}
    assert acc_in == {"CTA": 1.0, "MRA": 0.5, "MRI T2": 1.0, "all": pytest.approx(5 / 6, abs=1e-4)}
    assert acc_out == {"CTA": 0.0, "MRA": 1.0, "MRI T2": 0.5, "all": 0.5}  # the fallback counts as wrong
    assert row["out"]["fallbacks"] == 1 and row["in"]["fallbacks"] == 0
    by_protocol = {k: v["auc_present"] for k, v in row["out"]["auc_present_by_protocol"].items()}
    assert by_protocol == {"CTA": 0.0, "MRA": 1.0, "MRI T2": 0.0}
    assert row["out"]["auc_present_by_dome"]["< 3.5 mm"] == {"positives": 1, "auc_present": pytest.approx(1 / 3,
                                                                                                          abs=1e-4)}
    assert table["matrix"]["base"] == {"all": {"classic": 1.0}, "without_classic": {"classic": round(out_score, 4)}}
    text = loso_markdown(table)
    assert "| base | classic | 6 (3) | 1.000 [1.000, 1.000] |" in text
    assert "| base | classic | 1.00 / 0.00 (2) | 0.50 / 1.00 (2) | 1.00 / 0.50 (2) | - | 0.83 / 0.50 (6) | 0 / 1 |" \
        in text


# --- steps, skips and settings ---------------------------------------------------------------------------------------


def test_steps_skip_what_exists_and_settings_are_checked(tmp_path: Path) -> None:
    study = Loso(tmp_path / "loso", ["classic", "randomised"], variants={"base": [], "aug": ["locator.lr=0.1"]})
    steps = loso_steps(study)
    names = [s.name for s in steps]
    assert names[:4] == ["phantoms (train, every style)", "phantoms (test, classic)", "phantoms (test, randomised)",
                         "precache (train)"]
    assert names.count("train base/all") == 1 and "train aug/without_randomised" in names
    assert len(steps) == 4 + 2 * 3 * (2 + 2)  # data; per variant and model: train, export, one score per style
    train = next(s for s in steps if s.name == "train aug/without_randomised")
    assert "data.styles=[classic]" in train.argv and train.argv[-1] == "locator.lr=0.1" and "--resume" in train.argv
    # make's rule: an export older than its training is done again
    run, manifest = study.run_dir("base", "all"), study.weights_dir("base", "all") / "manifest.json"
    export = next(s for s in steps if s.name == "export base/all")
    assert not export.done()
    run.mkdir(parents=True)
    manifest.parent.mkdir(parents=True)
    manifest.write_text("{}")
    (run / "summary.json").write_text("{}")
    assert fresh([run / "summary.json"]) and not export.done()
    os.utime(manifest, (manifest.stat().st_mtime + 10,) * 2)
    assert export.done()
    check_settings(study, resume=False)
    with pytest.raises(ConfigError, match="--resume"):
        check_settings(study, resume=False)
    with pytest.raises(ConfigError, match="n_test"):
        check_settings(Loso(study.out, study.styles, n_test=5), resume=True)
    with pytest.raises(ConfigError, match="variant aug"):
        check_settings(Loso(study.out, study.styles, variants={"base": [], "aug": ["locator.lr=0.2"]}), resume=True)
    later = Loso(study.out, study.styles, variants={"base": [], "pre": ["classifier.pretrain_epochs=1"]})
    check_settings(later, resume=True)
    assert list(later.variants) == ["base", "aug", "pre"]
    assert checked_spacing("smoke", ["volume_spacing_mm=[4.0,4.0,4.0]"], {"base": []}) == [4.0, 4.0, 4.0]
    with pytest.raises(ConfigError, match="shared data"):
        checked_spacing("loso", [], {"x": ["data.n_folds=3"]})
    with pytest.raises(ConfigError, match="unknown key"):
        checked_spacing("loso", [], {"x": ["classifier.epoch=3"]})


# --- end to end ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_loso_end_to_end_toy(tmp_path: Path) -> None:
    """Two styles, a few small phantoms each, the smoke recipe at one epoch: every step, the table, a resume that
    skips everything; the table's in-style score equals the metric on the details it was built from."""
    out = tmp_path / "loso"
    argv = [sys.executable, "-m", "train_offline.loso", "--styles", "classic", "randomised", "--n-train", "10",
            "--n-test", "8", "--config", "smoke", "--out", str(out), "--bootstrap", "100", "--set",
            "classifier.pretrain_epochs=0", "locator.epochs=1", "classifier.epochs=1"]
    first = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads((out / "loso.json").read_text())
    assert [(r["variant"], r["held_out"]) for r in result["rows"]] == [("base", "classic"), ("base", "randomised")]
    assert set(result["matrix"]["base"]) == {"all", "without_classic", "without_randomised"}
    for row in result["rows"]:
        split = out / "data" / f"test_{row['held_out']}"
        solution = pd.read_csv(split / "solution.csv", dtype={ID_COL: str})
        details = pd.read_json(out / "details" / "base" / "all" / f"{row['held_out']}.jsonl", lines=True,
                               dtype={ID_COL: str})
        submission = pd.DataFrame(details["probs"].tolist(), columns=LABEL_COLS).assign(**{ID_COL: details[ID_COL]})
        columns = two_class_columns(solution[LABEL_COLS].to_numpy())
        assert row["score"]["in"]["point"] == pytest.approx(score(solution, submission, columns), abs=1e-4)
        assert row["series"] == 8 and {"in", "out", "gap"} <= set(row["auc_present"])
    assert "| base | randomised |" in (out / "loso.md").read_text()
    steps_before = (out / "loso_steps.jsonl").read_text()
    again = subprocess.run([*argv, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "loso_steps.jsonl").read_text() == steps_before  # every step skipped
    assert again.stdout.count("done, skipped") == 4 + 3 * 4
