"""Look at a prediction: markers land where their LPS points are, the verdict, fallback pages, ``--explain``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from kernel import explain, gateway
from kernel import predict as kernel_predict
from kernel.labels import ID_COL, LABEL_COLS, PRESENT_COL
from kernel.manifest import ModelSpec
from kernel.preprocess import voxel_to_world
from kernel.recipe import Prediction
from testkit.kaggle_stub import write_stand_in_package
from testkit.kernel_data import write_test_split
from testkit.onnx_factory import write_random_weights

PNG_SIZE = (int(explain.FIGSIZE[0] * explain.DPI), int(explain.FIGSIZE[1] * explain.DPI))  # (width, height)
BLOB_VOXEL = np.array([30.0, 41.0, 52.0])  # (z, y, x)
CLASSIFIER = ModelSpec(name="classifier_f0", role="classifier", fold=0, input_name="crop", input_shape=(24, 32, 32),
                       spacing_mm=(1.5, 1.5, 1.5), output_names=("logits", "modality_logits"),
                       centre_offset_lps_mm=(0.0, 0.0, -8.0))


def _affine() -> np.ndarray:
    """Anisotropic voxels, a small rotation about z (residual obliquity) and an arbitrary origin."""
    angle = np.deg2rad(4.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    columns = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # voxel (z, y, x) -> LPS axes (S, P, L)
    affine = np.eye(4)
    affine[:3, :3] = rot @ columns @ np.diag([1.5, 1.0, 1.2])
    affine[:3, 3] = [-60.0, -80.0, -40.0]
    return affine


def _volume() -> np.ndarray:
    """Smooth low background with one bright Gaussian blob at BLOB_VOXEL."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in (60, 80, 90)], indexing="ij"), axis=-1)
    blob = np.exp(-(((grid - BLOB_VOXEL) ** 2).sum(-1)) / (2 * 1.5**2))
    return (0.1 + 0.05 * rng.random((60, 80, 90)) + blob).astype(np.float32)


def _prediction(p_present: float, candidates: np.ndarray | None = None) -> Prediction:
    probs = np.full(len(LABEL_COLS), 0.05)
    probs[LABEL_COLS.index(PRESENT_COL)] = p_present
    centre = voxel_to_world(_affine(), (BLOB_VOXEL + [-4.0, -6.0, -9.0])[None])[0]  # the locator is a bit off
    if candidates is None:
        return Prediction(probs=probs, modality_probs=np.array([0.9, 0.05, 0.03, 0.02]), centre_lps=centre, runs=3)
    return Prediction(probs=probs, modality_probs=np.array([0.9, 0.05, 0.03, 0.02]), centre_lps=centre, runs=3,
                      candidates_lps=candidates, candidate_probs=np.array([0.81, 0.12][: len(candidates)]),
                      candidate_locations=("Left Middle Cerebral Artery", "Basilar Tip")[: len(candidates)])


def _truth(present: int, column: str = "Left Middle Cerebral Artery") -> dict:
    row = {c: 0 for c in LABEL_COLS}
    if present:
        row[column] = row[PRESENT_COL] = 1
    return row | {"Modality": "CTA"}


def _png_size(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 10_000
    with Image.open(path) as image:
        return image.size


def test_a_candidate_at_the_blob_lands_on_the_blob_in_every_projection() -> None:
    affine = _affine()
    blob_lps = voxel_to_world(affine, BLOB_VOXEL[None])[0]
    elsewhere = voxel_to_world(affine, np.array([[20.0, 30.0, 40.0]]))[0]
    exp = explain.layout_explanation(_volume(), affine, _prediction(0.9, np.stack([blob_lps, elsewhere])),
                                     [CLASSIFIER], _truth(1))
    first = next(m for m in exp.markers if m.kind == "candidate")
    assert first.label == "1: 0.81 L MCA"
    np.testing.assert_allclose(first.voxel_zyx, BLOB_VOXEL, atol=1e-6)
    for view in explain.VIEWS:
        image = exp.images[view]
        peak = np.unravel_index(int(np.argmax(image)), image.shape)  # the blob's MIP pixel, found by numpy
        assert tuple(int(round(v)) for v in first.pixels[view]) == tuple(int(v) for v in peak), view
        assert first.in_slab[view]
    assert exp.verdict == "HIT" and exp.truth_columns == ["Left Middle Cerebral Artery", PRESENT_COL]


def test_display_orientation_and_crop_box() -> None:
    """Axial: anterior up, patient left right; coronal/sagittal: superior up; the crop box has the spec's size."""
    affine = _affine()
    exp = explain.layout_explanation(_volume(), affine, _prediction(0.2), [CLASSIFIER, CLASSIFIER], None)
    centre = exp.markers[0]
    (z0, z1), (y0, _), (x0, _) = exp.region
    z, y, x = centre.voxel_zyx
    assert centre.pixels["axial"] == pytest.approx((y - y0, x - x0))
    assert centre.pixels["coronal"] == pytest.approx((z1 - z0 - 1 - (z - z0), x - x0))
    assert centre.pixels["sagittal"] == pytest.approx((z1 - z0 - 1 - (z - z0), y - y0))
    assert exp.images["axial"].shape == (exp.region[1][1] - y0, exp.region[2][1] - x0)
    assert len(exp.boxes) == 1, "folds sharing a crop draw one box"
    box = exp.boxes[0]
    assert box.size_mm == pytest.approx((36.0, 48.0, 48.0))
    r0, c0, r1, c1 = box.rects["axial"]
    assert (r1 - r0, c1 - c0) == pytest.approx((48.0 / 1.0, 48.0 / 1.2))
    r0, _, r1, _ = box.rects["coronal"]
    assert r1 - r0 == pytest.approx(36.0 / 1.5)
    # The crop centre is 8 mm inferior of the located centre: lower on the coronal panel (rows grow downwards).
    assert (r0 + r1) / 2 - centre.pixels["coronal"][0] == pytest.approx(8.0 / 1.5)
    assert exp.verdict is None and exp.truth_columns == []


def test_truth_sites_are_drawn_where_they_are() -> None:
    affine = _affine()
    site = voxel_to_world(affine, BLOB_VOXEL[None])[0]
    truth = _truth(1) | {"sites": [{"centre_lps": list(site), "location": "Left Middle Cerebral Artery"}]}
    exp = explain.layout_explanation(_volume(), affine, _prediction(0.3), [CLASSIFIER], truth)
    marker = next(m for m in exp.markers if m.kind == "truth")
    assert marker.label == "T1: L MCA"
    image = exp.images["axial"]
    assert tuple(int(round(v)) for v in marker.pixels["axial"]) == np.unravel_index(int(np.argmax(image)),
                                                                                    image.shape)
    assert exp.verdict == "MISS"


@pytest.mark.parametrize(("p_present", "present", "expected"), [
    (0.9, 1, "HIT"), (0.3, 1, "MISS"), (0.1, 0, "TRUE NEGATIVE"), (0.5, 0, "FALSE POSITIVE"),
])
def test_verdict_at_one_half(p_present: float, present: int, expected: str) -> None:
    assert explain.verdict(p_present, _truth(present)) == expected
    assert explain.verdict(p_present, None) is None


@pytest.mark.parametrize(("p_present", "present", "expected"), [(0.9, 1, "HIT"), (0.2, 1, "MISS")])
def test_render_writes_the_png_with_the_verdict(p_present: float, present: int, expected: str,
                                                tmp_path: Path) -> None:
    affine = _affine()
    blob_lps = voxel_to_world(affine, BLOB_VOXEL[None])[0]
    out = tmp_path / "sub" / "series.png"
    exp = explain.render_explanation(_volume(), affine, _prediction(p_present, blob_lps[None]), [CLASSIFIER],
                                     _truth(present), "1.2.3", out)
    assert exp.path == out and _png_size(out) == PNG_SIZE
    assert exp.verdict == expected and exp.headline.startswith(f"1.2.3  |  {expected}: P(present) {p_present:.2f}")
    assert "1 candidates" in exp.headline


def test_the_png_shows_the_blob_and_the_markers_where_the_layout_puts_them(tmp_path: Path) -> None:
    """Read the PNG back: in each MIP panel the blob is bright where its candidate is drawn, a red circle surrounds
    it, the truth site's green diamond is there too, and a far corner of the panel holds neither colour."""
    affine = _affine()
    blob_lps = voxel_to_world(affine, BLOB_VOXEL[None])[0]
    truth = _truth(1) | {"sites": [{"centre_lps": list(blob_lps), "location": "Left Middle Cerebral Artery"}]}
    out = tmp_path / "drawn.png"
    exp = explain.render_explanation(_volume(), affine, _prediction(0.9, blob_lps[None]), [CLASSIFIER], truth,
                                     "1.2.3", out)
    with Image.open(out) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int32)
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 110) & (rgb[..., 2] < 110)
    green = (rgb[..., 1] > 200) & (rgb[..., 0] < 150) & (rgb[..., 2] < 120)
    candidate = next(m for m in exp.markers if m.kind == "candidate")
    for view in explain.VIEWS:
        x, y = (int(round(v)) for v in exp.png_pixel(view, *candidate.pixels[view]))
        assert rgb[y, x].min() > 150, f"{view}: the blob under the hollow marker is not bright ({rgb[y, x]})"
        ring = red[y - 9:y + 10, x - 9:x + 10]
        assert ring.any() and not ring[7:12, 7:12].any(), f"{view}: no hollow red circle around the candidate"
        assert green[y - 12:y + 13, x - 12:x + 13].any(), f"{view}: no green diamond at the truth site"
        left, top, _, _ = exp.panels[view]
        corner = (slice(int(top) + 2, int(top) + 12), slice(int(left) + 30, int(left) + 40))
        assert not red[corner].any() and not green[corner].any()


def test_no_candidates_are_said_so(tmp_path: Path) -> None:
    exp = explain.render_explanation(_volume(), _affine(), _prediction(0.7), [CLASSIFIER], None, "u",
                                     tmp_path / "u.png")
    assert [m.kind for m in exp.markers] == ["centre"]
    assert "no candidates" in exp.headline and "no truth given" in exp.headline
    assert _png_size(tmp_path / "u.png") == PNG_SIZE


def test_fallback_page(tmp_path: Path) -> None:
    priors = [0.02] * 13 + [0.43]
    exp = explain.render_fallback("9.9", "SeriesReadError: nothing readable", tmp_path / "9.9.png", priors,
                                  _truth(1))
    assert _png_size(tmp_path / "9.9.png") == PNG_SIZE
    assert exp.fallback_reason == "SeriesReadError: nothing readable" and exp.verdict == "MISS"
    assert exp.headline.endswith("FALLBACK")


# --- through the gateway ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_weights(tmp_path_factory.mktemp("weights"), folds=2, seed=5)


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three synthetic series plus one unreadable one (every file garbage): it gets the fallback row."""
    out = write_test_split(tmp_path_factory.mktemp("split"), n=3, seed=2, prefer_phantoms=False)
    broken = out / "series" / "9.8.7"
    broken.mkdir()
    (broken / "a.dcm").write_bytes(b"not a dicom file")
    test = pl.read_csv(out / "test.csv").with_columns(pl.col(ID_COL).cast(pl.Utf8))
    pl.concat([test, pl.DataFrame({ID_COL: ["9.8.7"]})]).write_csv(out / "test.csv")
    solution = pl.read_csv(out / "solution.csv").with_columns(pl.col(ID_COL).cast(pl.Utf8))
    extra = pl.DataFrame({ID_COL: ["9.8.7"], **{c: [0] for c in LABEL_COLS}, "Modality": ["CTA"]})
    pl.concat([solution, extra.cast(solution.schema)]).write_csv(out / "solution.csv")
    return out


@pytest.fixture()
def fresh_predictor(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RSNA_WEIGHTS_DIR", "unset")  # main overwrites it; monkeypatch restores the original
    yield
    kernel_predict.reset_predictor(None)


def test_gateway_explain_writes_one_png_per_series(weights: Path, split: Path, tmp_path: Path,
                                                   fresh_predictor: None, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "explain"
    code = gateway.main(["--data", str(split), "--weights", str(weights), "--explain", str(out),
                         "--out", str(tmp_path / "submission.parquet"), "--no-progress", "--seed", "0"])
    assert code == 0
    uids = pl.read_csv(split / "test.csv")[ID_COL].cast(pl.Utf8).to_list()
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{uid}.png" for uid in uids)
    assert all(_png_size(out / f"{uid}.png") == PNG_SIZE for uid in uids)
    printed = capsys.readouterr().out
    assert f"explain: wrote {len(uids)} PNGs" in printed and "failed" not in printed
    assert "fallback rows: 1 of 4" in printed
    assert kernel_predict.get_predictor().last is None, "the explainer drops the volume after drawing"


def test_gateway_without_explain_keeps_nothing(weights: Path, split: Path, tmp_path: Path,
                                               fresh_predictor: None) -> None:
    assert gateway.main(["--data", str(split), "--weights", str(weights), "--out", str(tmp_path / "s.parquet"),
                         "--no-progress"]) == 0
    predictor = kernel_predict.get_predictor()
    assert predictor.keep_last is False and predictor.last is None
    assert not any(tmp_path.glob("**/*.png"))


def test_explain_call_uses_the_kept_volume_or_the_fallback_reason(weights: Path, split: Path,
                                                                  tmp_path: Path) -> None:
    predictor = kernel_predict.Predictor(str(weights))
    try:
        predictor.keep_last = True
        truth = gateway.read_truth(split / "solution.csv", split)
        good = next(p for p in sorted((split / "series").iterdir()) if p.name != "9.8.7")
        frame, record = predictor.predict(str(good))
        assert record.level != "fallback" and predictor.last is not None
        prediction = predictor.last[2]
        exp = explain.explain_call(predictor, good.name, frame.row(0), truth[good.name], tmp_path)
        assert exp.path == tmp_path / f"{good.name}.png" and exp.fallback_reason is None
        assert exp.verdict is not None and exp.images and len(exp.boxes) == 1  # two folds, one crop
        np.testing.assert_allclose(exp.markers[0].lps, prediction.centre_lps)
        assert sum(m.kind == "candidate" for m in exp.markers) == len(prediction.candidates_lps)
        frame, record = predictor.predict(str(split / "series" / "9.8.7"))
        assert record.level == "fallback" and predictor.last is None
        exp = explain.explain_call(predictor, "9.8.7", frame.row(0), truth["9.8.7"], tmp_path)
        assert exp.fallback_reason == record.reason and exp.verdict == "TRUE NEGATIVE"
        assert _png_size(tmp_path / "9.8.7.png") == PNG_SIZE
    finally:
        if predictor.reader is not None:
            predictor.reader.close()


def test_matplotlib_is_not_imported_at_module_level() -> None:
    from tests.test_architecture import module_level_imports

    names = module_level_imports(Path(explain.__file__))
    assert not [n for n in names if n.split(".")[0] in ("matplotlib", "PIL")], names


def test_explain_with_the_real_package_path(weights: Path, split: Path, tmp_path: Path, fresh_predictor: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``--kaggle-evaluation`` offers no hook: the predict it is given explains each call."""
    package = tmp_path / "download" / "kaggle_evaluation"
    write_stand_in_package(package)
    monkeypatch.chdir(tmp_path)
    for name in ("kaggle_evaluation", "kaggle_evaluation.rsna_inference_server"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    out = tmp_path / "explain"
    assert gateway.main(["--data", str(split), "--weights", str(weights), "--kaggle-evaluation", str(package),
                         "--explain", str(out)]) == 0
    uids = pl.read_csv(split / "test.csv")[ID_COL].cast(pl.Utf8).to_list()
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{uid}.png" for uid in uids)


def test_gateway_details_line_per_series_with_explain(weights: Path, split: Path, tmp_path: Path,
                                                      fresh_predictor: None) -> None:
    import json

    details = tmp_path / "details.jsonl"
    assert gateway.main(["--data", str(split), "--weights", str(weights), "--details", str(details), "--explain",
                         str(tmp_path / "png"), "--out", str(tmp_path / "s.parquet"), "--no-progress"]) == 0
    lines = [json.loads(x) for x in details.read_text().splitlines()]
    submission = pl.read_parquet(tmp_path / "s.parquet")
    assert sorted(r[ID_COL] for r in lines) == sorted(submission[ID_COL].to_list())
    by_uid = {r[ID_COL]: r for r in lines}
    for row in submission.iter_rows(named=True):
        record = by_uid[row[ID_COL]]
        assert record["probs"] == pytest.approx([row[c] for c in LABEL_COLS])
        if row[ID_COL] == "9.8.7":
            assert record.get("fallback") is True
        else:  # random weights without a fine model: the row is the classifiers' own
            assert record["coarse_probs"] == pytest.approx(record["probs"], abs=1e-6)
            assert len(record["centre_lps"]) == 3 and record["modality"]
    assert len(list((tmp_path / "png").glob("*.png"))) == len(lines)
