"""Findings a viewer can open (``kernel.findings``): the JSON against its schema, the markups against 3D Slicer's,
the SR read back, points on a phantom's aneurysm and its side, hostile and geometry-less series, a killed run resumed,
and the FROC numbers (``train_offline.detection``) of a hand-made case."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from kernel import explain, findings
from kernel.dicom_io import read_series
from kernel.findings_sr import LATERALITY, SITE_CODES
from kernel.labels import LABEL_COLS
from kernel.manifest import sha256_file
from kernel.predict import Predictor
from kernel.preprocess import localizer_to_lps
from testkit.dicom_factory import write_series
from testkit.hostile import random_bytes

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "kernel" / "findings.schema.json").read_text())
SLICER_SCHEMA = json.loads((REPO / "tests" / "data" / "markups-schema-v1.0.3.json").read_text())
ALL = ["json", "mrk", "sr", "png"]


def _valid(record: dict, schema: dict = SCHEMA) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in cls(schema).iter_errors(record)]
    assert not errors, errors


# --- geometry: a point <-> the nearest native image ------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{"tilt_deg": 12.0, "plane": "coronal", "reverse": True},
                                    {"multiframe": True, "modality": "MR"}], ids=["oblique", "multiframe"])
def test_nearest_image_inverts_localizer_to_lps(tmp_path: Path, kwargs: dict) -> None:
    info = write_series(tmp_path, n_slices=10, rows=30, cols=34, **kwargs)
    volume = read_series(tmp_path)
    plane = next(iter(volume.frame_geometry.values()))
    normal = np.cross(plane.row_dir, plane.col_dir)
    for k in (0, 4, 9):
        sop, frame = info["sop_uids"][k], info["frame_of_slice"][k]
        point = localizer_to_lps(volume, sop, 7.3, 21.6, frame)
        for shift in (0.0, 0.4):  # in the plane, and 0.4 mm off it (less than half a slice gap)
            ref = findings.nearest_image(volume, point + shift * normal)
            assert (ref.sop_uid, ref.frame) == (sop, frame)
            assert (ref.column, ref.row) == pytest.approx((7.3, 21.6), abs=1e-6)
            assert ref.distance_mm == pytest.approx(shift, abs=1e-6)
            assert ref.multi_frame == bool(kwargs.get("multiframe"))
    first = pydicom.dcmread(sorted(tmp_path.glob("*.dcm"))[0], stop_before_pixels=True)
    assert volume.study_uid == first.StudyInstanceUID and volume.frame_of_reference_uid == first.FrameOfReferenceUID
    assert set(volume.sop_class_uids.values()) == {first.SOPClassUID}


def test_no_geometry_no_image() -> None:
    from kernel.volume import Volume

    volume = Volume(array=np.zeros((2, 3, 4), np.float32), affine=np.eye(4), modality="CT", geometry_known=False,
                    slice_lookup={("a", 0): 0, ("b", 0): 1})
    assert findings.nearest_image(volume, [0.0, 0.0, 0.0]) is None


# --- one big-dome phantom, every format -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(str(REPO / "weights"), budget=findings.never_degrading_budget())


@pytest.fixture(scope="module")
def big_dome(tmp_path_factory: pytest.TempPathFactory, predictor: Predictor) -> dict:
    """Series 1 of the seed-11 real-size supplement with 8-10 mm domes (a left supraclinoid ICA aneurysm), through
    ``write_series`` with every format; the explain page's layout is kept by a spy."""
    from train_offline.phantoms.generate import generate_series, supplement_draw

    root = tmp_path_factory.mktemp("big_dome")
    locations, dome = supplement_draw(11, 1, (8.0, 10.0))
    result = generate_series(root, 1, 11, split="test", size="real", locations=locations, dome_mm=dome)
    drawn = []
    real_call = explain.explain_call

    def spy(*args, **kwargs):
        drawn.append(real_call(*args, **kwargs))
        return drawn[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(explain, "explain_call", spy)
        record = findings.write_series(predictor, root / "series" / result.series_uid, root / "out", formats=ALL,
                                       manifest_sha256=sha256_file(REPO / "weights" / "manifest.json"))
    return {"record": record, "folder": root / "out" / result.series_uid, "result": result,
            "series": root / "series" / result.series_uid, "drawn": drawn[0],
            "volume": read_series(root / "series" / result.series_uid)}


def test_findings_json_is_valid_and_complete(big_dome: dict) -> None:
    record, folder = big_dome["record"], big_dome["folder"]
    on_disk = json.loads((folder / "findings.json").read_text())
    assert on_disk == record
    _valid(on_disk)
    assert list(on_disk["probabilities"]) == LABEL_COLS
    assert on_disk["status"] == "ok" and on_disk["skipped"] == {}, on_disk["skipped"]
    assert set(on_disk["outputs"]) == set(ALL) and findings.is_complete(folder, ALL)
    assert on_disk["weights"]["manifest_sha256"] == sha256_file(REPO / "weights" / "manifest.json")
    assert on_disk["SeriesInstanceUID"] == big_dome["result"].series_uid
    assert on_disk["modality"]["dicom"] == "MR" and on_disk["modality"]["inferred"]["name"] in ("MRI T1post", "MRI T2")
    assert on_disk["candidates"] == len(on_disk["findings"]) > 0
    assert {f["stage"] for f in on_disk["findings"]} == {"fine"}  # the shipped weights have a fine stage


def test_a_point_lies_on_the_aneurysm_it_claims_and_on_its_side(big_dome: dict) -> None:
    record, truth = big_dome["record"], big_dome["result"].truth
    (aneurysm,) = truth["aneurysms"]
    assert aneurysm["location"].startswith("Left ")
    head_to_lps = np.asarray(truth["head_to_lps"], dtype=np.float64)
    scale = abs(np.linalg.det(head_to_lps[:3, :3])) ** (1 / 3)
    radius = aneurysm["dome_mm"] * scale / 2
    lps_to_head = np.linalg.inv(head_to_lps)
    centre = np.asarray(aneurysm["centre_lps"])
    near = [f for f in record["findings"] if f["above_threshold"]
            and np.linalg.norm(np.asarray(f["point_lps"]) - centre) <= radius + 2.0]
    assert near, f"no finding at or above 0.5 within {radius + 2:.1f} mm of the aneurysm: {record['findings']}"
    for f in near:
        assert f["location"].split()[0] == "Left", f
        head_x = (lps_to_head @ [*f["point_lps"], 1.0])[0]
        true_x = (lps_to_head @ [*centre, 1.0])[0]
        assert np.sign(head_x) == np.sign(true_x) and abs(true_x) > 5.0, "the point is on the aneurysm's side"


def test_image_coordinates_are_train_localizers_coordinates(big_dome: dict) -> None:
    """The generator's own localizer row for the aneurysm centre equals ``nearest_image`` of that centre; each
    finding's image point maps back (``localizer_to_lps``) to the finding's point projected on that image."""
    volume = big_dome["volume"]
    (localizer,) = big_dome["result"].localizers
    coords = eval_coordinates(localizer["coordinates"])
    ref = findings.nearest_image(volume, big_dome["result"].truth["aneurysms"][0]["centre_lps"])
    assert ref.sop_uid == localizer["SOPInstanceUID"]
    assert (ref.column, ref.row) == pytest.approx((coords["x"], coords["y"]), abs=0.006)
    for f in big_dome["record"]["findings"]:
        image = f["image"]
        back = localizer_to_lps(volume, image["SOPInstanceUID"], image["coordinates"]["x"], image["coordinates"]["y"],
                                image["coordinates"].get("f", 0))
        assert np.linalg.norm(back - np.asarray(f["point_lps"])) == pytest.approx(image["distance_mm"], abs=2e-3)
        assert image["SOPClassUID"] == volume.sop_class_uids[image["SOPInstanceUID"]]


def eval_coordinates(text: str) -> dict:
    import ast

    return ast.literal_eval(text) if isinstance(text, str) else dict(text)


def test_markups_are_valid_slicer_markups_of_the_findings_above_threshold(big_dome: dict) -> None:
    markups = json.loads((big_dome["folder"] / "findings.mrk.json").read_text())
    _valid(markups, SLICER_SCHEMA)
    (fiducials,) = markups["markups"]
    assert fiducials["type"] == "Fiducial" and fiducials["coordinateSystem"] == "LPS"
    above = [f for f in big_dome["record"]["findings"] if f["above_threshold"]]
    assert [p["position"] for p in fiducials["controlPoints"]] == [f["point_lps"] for f in above]
    assert [p["label"] for p in fiducials["controlPoints"]] == [f["label"] for f in above]


def _items(item: pydicom.Dataset, value_type: str) -> list[pydicom.Dataset]:
    found = [item] if item.get("ValueType") == value_type else []
    for child in item.get("ContentSequence", []):
        found += _items(child, value_type)
    return found


def test_sr_reads_back_with_the_points_frame_of_reference_and_images(big_dome: dict) -> None:
    hd = pytest.importorskip("highdicom")
    record = big_dome["record"]
    above = [f for f in record["findings"] if f["above_threshold"]]
    ds = pydicom.dcmread(big_dome["folder"] / "findings_sr.dcm")
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert ds.StudyInstanceUID == record["StudyInstanceUID"]
    points = _items(sr, "SCOORD3D")
    assert len(points) == len(above)
    for item, f in zip(points, above, strict=True):
        assert item.ReferencedFrameOfReferenceUID == record["FrameOfReferenceUID"]
        assert item.GraphicType == "POINT"
        np.testing.assert_allclose(np.asarray(item.GraphicData, dtype=float), f["point_lps"], atol=1e-3)
    images = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in _items(sr, "IMAGE")}
    assert images == {f["image"]["SOPInstanceUID"] for f in above}
    evidence = {r.ReferencedSOPInstanceUID for s in ds.CurrentRequestedProcedureEvidenceSequence
                for series in s.ReferencedSeriesSequence for r in series.ReferencedSOPSequence}
    assert images <= evidence and len(evidence) == len(big_dome["volume"].sop_class_uids)
    certainty = [float(i.MeasuredValueSequence[0].NumericValue) for i in _items(sr, "NUM")
                 if i.ConceptNameCodeSequence[0].CodeValue == "111012"]
    assert certainty == pytest.approx([100 * f["probability"] for f in above], abs=1e-3)
    sites = [i.ConceptCodeSequence[0].CodeValue for i in _items(sr, "CODE")
             if i.ConceptNameCodeSequence[0].CodeValue == "363698007"]  # Finding Site
    assert sites == [SITE_CODES[f["location"]][0][0] for f in above]
    assert "86117002" in sites  # the internal carotid artery of the left supraclinoid ICA aneurysm
    sides = [i.ConceptCodeSequence[0].CodeValue for i in _items(sr, "CODE")
             if i.ConceptNameCodeSequence[0].CodeValue == "272741003"]  # Laterality
    assert sides == [LATERALITY[SITE_CODES[f["location"]][1]][0] for f in above if SITE_CODES[f["location"]][1]]
    groups = sr.content.get_planar_roi_measurement_groups()
    np.testing.assert_allclose([np.ravel(g.roi.value) for g in groups], [f["point_lps"] for f in above], atol=1e-3)
    assert {g.roi.frame_of_reference_uid for g in groups} == {record["FrameOfReferenceUID"]}


def test_the_png_draws_the_json_findings(big_dome: dict) -> None:
    drawn, record = big_dome["drawn"], big_dome["record"]
    assert (big_dome["folder"] / "explain.png").stat().st_size > 10_000
    candidates = [m for m in drawn.markers if m.kind == "candidate"]
    assert [m.label for m in candidates] == [f["label"] for f in record["findings"]]
    np.testing.assert_allclose([m.lps for m in candidates], [f["point_lps"] for f in record["findings"]], atol=1e-3)
    above = ", ".join(f"#{f['index']}" for f in record["findings"] if f["above_threshold"])
    assert f"  |  findings >= 0.5: {above}  |  " in drawn.headline


# --- series that give no points --------------------------------------------------------------------------------------


def test_hostile_series_gives_a_json_with_the_reason(tmp_path: Path, predictor: Predictor) -> None:
    random_bytes(tmp_path / "hostile")
    record = findings.write_series(predictor, tmp_path / "hostile", tmp_path / "out", formats=ALL)
    _valid(record)
    assert record["status"] == "fallback" and "SeriesReadError" in record["reason"]
    assert record["findings"] == [] and set(record["skipped"]) == {"mrk", "sr"}
    assert (tmp_path / "out" / "hostile" / "explain.png").is_file()
    assert findings.is_complete(tmp_path / "out" / "hostile", ALL)


def test_stripped_multiframe_gives_no_points(tmp_path: Path, predictor: Predictor) -> None:
    write_series(tmp_path / "mf", n_slices=24, rows=48, cols=48, multiframe=True, modality="MR", allowlist_only=True)
    record = findings.write_series(predictor, tmp_path / "mf", tmp_path / "out", formats=["json", "mrk", "png"])
    _valid(record)
    assert record["status"] == "not_placed" and record["geometry_known"] is False
    assert "position/orientation" in record["reason"] and record["findings"] == []
    assert "mrk" in record["skipped"] and record["outputs"]["png"] == "explain.png"


# --- many series: a killed run resumes --------------------------------------------------------------------------------


def _tiny_series(root: Path, n: int) -> None:
    for i in range(n):
        info = write_series(root / f"tmp{i}", n_slices=20, rows=40, cols=44, modality="CT", seed=i,
                            allowlist_only=True)
        (root / f"tmp{i}").rename(root / info["series_uid"])


def test_a_killed_run_resumes_without_rewriting_finished_series(tmp_path: Path) -> None:
    _tiny_series(tmp_path / "series", 3)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "kernel.findings", str(tmp_path / "series"), "--out", str(out), "--formats",
           "json,mrk", "--no-progress", "--weights", str(REPO / "weights")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*/findings.json")) and time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before it was killed"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = {p.parent.name: {f.name: f.stat().st_mtime_ns for f in p.parent.iterdir()}
            for p in out.glob("*/findings.json")}
    assert 1 <= len(done) < 3
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    for uid, mtimes in done.items():
        now = {f.name: f.stat().st_mtime_ns for f in (out / uid).iterdir()}
        assert now == mtimes, "a finished series was rewritten"
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(folders) == 3 and all(findings.is_complete(p, ["json", "mrk"]) for p in folders)
    assert not [p for p in out.rglob(".*") if ".tmp-" in p.name], "temporary files left behind"
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0] == ",".join(findings.SUMMARY_COLUMNS) and len(summary) == 4


# --- the detection metric ---------------------------------------------------------------------------------------------


def _froc_case(root: Path) -> None:
    """Three series by hand. A (CTA): aneurysms a1 at the origin (dome 4 mm: hits within 4 mm) and a2 at x=50 (dome
    8: 6 mm); findings a1 p.9 at 1 mm, a FP p.8, a2 p.05 at 3 mm, a second hit on a1 p.3 (neither TP nor FP).
    B (MRA, negative): FPs p.7 and p.5. C (MRA): a3 (dome 2: 3 mm) hit p.6 at 2.5 mm, a FP p.1."""
    truth = [("A", "CTA", [([0, 0, 0], 4.0), ([50, 0, 0], 8.0)]), ("B", "MRA", []), ("C", "MRA", [([0, 0, 0], 2.0)])]
    found = {"A": [([1, 0, 0], 0.9), ([100, 0, 0], 0.8), ([53, 0, 0], 0.05), ([0, 2, 0], 0.3)],
             "B": [([0, 0, 0], 0.7), ([10, 10, 10], 0.5)], "C": [([0, 0, 2.5], 0.6), ([30, 0, 0], 0.1)]}
    root.mkdir()
    with open(root / "phantom_truth.jsonl", "w") as fh:
        for uid, modality, domes in truth:
            fh.write(json.dumps({"SeriesInstanceUID": uid, "modality": modality, "head_to_lps": np.eye(4).tolist(),
                                 "aneurysms": [{"location": "Basilar Tip", "centre_lps": c, "dome_mm": d}
                                               for c, d in domes]}) + "\n")
    for uid, points in found.items():
        (root / "findings" / uid).mkdir(parents=True)
        record = {"series_folder": uid, "findings": [{"point_lps": p, "probability": s} for p, s in points]}
        (root / "findings" / uid / "findings.json").write_text(json.dumps(record))


def test_froc_numbers_of_a_hand_made_case(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from train_offline import detection

    _froc_case(tmp_path / "case")
    assert detection.main(["--findings", str(tmp_path / "case" / "findings"), "--truth", str(tmp_path / "case")]) == 0
    out = capsys.readouterr().out
    # False positives .8 .7 .5 .1 over 3 series. 0.5/series allows 1: p > .7 finds a1 only (1/3); 1/series allows 3:
    # p > .1 finds a1 and a3 (2/3); 2/series allows all: every aneurysm (3/3), hits at 1, 3 and 2.5 mm (median 2.5).
    assert "| all | 3 | 3 | 0.333 | 0.667 | 1.000 | 2.5 |" in out
    assert "| < 3.5 mm | 3 | 1 | 0.000 | 1.000 | 1.000 | 2.5 |" in out  # a3
    assert "| 3.5-4.5 mm | 3 | 1 | 1.000 | 1.000 | 1.000 | 1.0 |" in out  # a1
    assert "| >= 6 mm | 3 | 1 | 0.000 | 0.000 | 1.000 | 3.0 |" in out  # a2
    # CTA alone: 1 series, FP .8: 0.5/series allows none (p > .8: a1 of a1, a2); 1/series allows it (both).
    assert "| CTA | 1 | 2 | 0.500 | 1.000 | 1.000 | 2.0 |" in out
    # MRA: 2 series, FPs .7 .5 .1: 0.5/series allows 1 (p > .5: a3 at .6).
    assert "| MRA | 2 | 1 | 1.000 | 1.000 | 1.000 | 2.5 |" in out
    assert "1.33 false positives per series" in out


def test_an_aneurysm_no_finding_hits_is_never_found(tmp_path: Path) -> None:
    from train_offline.detection import Aneurysm, SeriesTruth, froc_point, series_scores

    truth = SeriesTruth("X", "CTA", [Aneurysm(np.zeros(3), 3.0, "< 3.5 mm")])
    score, distance, fp = series_scores(np.array([[10.0, 0, 0]]), np.array([0.9]), truth)
    threshold = froc_point(fp, 1, 2.0)  # every candidate
    assert threshold == 0.0 and not (score >= threshold).any() and np.isinf(distance).all()
    assert fp.tolist() == [0.9]


def test_competition_truth_places_localizers_on_the_aneurysms(tmp_path: Path) -> None:
    """train_localizers.csv placed through the series' headers lands within half a slice gap of the phantom's
    centre (a localizer is the centre's projection on the nearest slice)."""
    from train_offline.detection import truth_from_competition, truth_from_phantoms
    from train_offline.phantoms.generate import generate_dataset

    results = generate_dataset(tmp_path, 3, seed=5, split="train", size="small", progress=False,
                               dome_range=(4.0, 6.0))
    uids = [r.series_uid for r in results]
    phantom = truth_from_phantoms(tmp_path)
    (tmp_path / "phantom_truth.jsonl").unlink()
    placed = truth_from_competition(tmp_path, uids, 5.0)
    for r in results:
        gap = float(r.truth["slice_spacing"])
        assert len(placed[r.series_uid].aneurysms) == len(phantom[r.series_uid].aneurysms) > 0
        for got, want in zip(placed[r.series_uid].aneurysms, phantom[r.series_uid].aneurysms, strict=True):
            assert np.linalg.norm(got.centre_lps - want.centre_lps) <= gap / 2 + 0.02
            assert got.hit_radius_mm == 5.0 and got.band == "unknown size"
        assert placed[r.series_uid].protocol == r.modality
