"""Phantom generator: labels agree with geometry (read back through kernel.dicom_io), segmentation values, layout,
determinism, the test split's tag allow-list, and the quirks the reader must survive."""

from __future__ import annotations

import ast
import hashlib
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from kernel.dicom_io import read_series
from kernel.labels import (
    ID_COL,
    LABEL_COLS,
    LOCALIZER_COLS,
    LOCATION_COLS,
    MODALITY_NAMES,
    PRESENT_COL,
    SEG_LABEL_VALUES,
    TEST_TAG_ALLOWLIST,
    TRAIN_CSV_COLS,
)
from kernel.preprocess import localizer_to_lps, world_to_voxel
from train_offline.phantoms.anatomy import LOCATION_COUNTS, sample_locations
from train_offline.phantoms.generate import generate_dataset, generate_series, load_truth, nifti_affine, write_tables

MODALITIES = ["CTA", "MRA", "MRI T2", "MRI T1post"]
# 8 targeted series covering all 13 locations and all 4 protocols (2-3 aneurysms each, with segmentations).
TARGETED = [
    ("CTA", LOCATION_COLS[0:2]),
    ("MRA", LOCATION_COLS[2:4]),
    ("MRI T2", LOCATION_COLS[4:6]),
    ("MRI T1post", LOCATION_COLS[6:8]),
    ("CTA", LOCATION_COLS[8:10]),
    ("MRA", LOCATION_COLS[10:13]),
    ("MRI T1post", [LOCATION_COLS[3], LOCATION_COLS[9]]),
    ("MRI T2", [LOCATION_COLS[12], LOCATION_COLS[7]]),
]


def _side(location: str) -> int:
    return 1 if location.startswith("Right") else -1 if location.startswith("Left") else 0


@pytest.fixture(scope="module")
def targeted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("targeted")
    results = [
        generate_series(out, i, 31, modality=m, locations=list(locs), with_segmentation=True)
        for i, (m, locs) in enumerate(TARGETED)
    ]
    return out, results


@pytest.fixture(scope="module")
def train_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train")
    generate_dataset(out, 8, seed=7, split="train", workers=1, progress=False)
    return out


def _check_localizer(series_dir: Path, rec: dict, sop: str, coords: dict, location: str, truth_a: dict) -> None:
    vol = read_series(series_dir)
    p = localizer_to_lps(vol, sop, coords["x"], coords["y"], coords.get("f", 0))
    centre = np.asarray(truth_a["centre_lps"])
    # Within one voxel of the aneurysm centre, axis by axis in the reader's own voxel grid.
    dv = world_to_voxel(vol.affine, np.array([p, centre]))
    assert np.all(np.abs(dv[0] - dv[1]) <= 1.0), f"{location}: localizer {dv[0]} vs centre {dv[1]} (voxels)"
    # On the patient side its label names: head-frame x (RAS, +x = patient right) has the label's sign.
    side = _side(location)
    if side and "Anterior Cerebral" not in location:
        head = np.linalg.inv(np.asarray(rec["head_to_lps"]))
        x_ras = (head[:3, :3] @ p + head[:3, 3])[0]
        assert np.sign(x_ras) == side, f"{location}: head-frame x {x_ras:.1f} mm on the wrong side"
        # Independent of the stored pose (rotation <= 15 deg): patient right is LPS -x for these lateral vessels.
        assert np.sign(p[0]) == -side, f"{location}: LPS x {p[0]:.1f} on the wrong side"
    if "Anterior Cerebral" in location:  # near the midline: the dome leans to its own side
        head = np.linalg.inv(np.asarray(rec["head_to_lps"]))
        assert np.sign((head[:3, :3] @ centre + head[:3, 3])[0]) == side


def test_targeted_localizers_land_on_aneurysm_centres(targeted: tuple[Path, list]) -> None:
    out, results = targeted
    seen = set()
    for r in results:
        assert r.labels[PRESENT_COL] == 1
        assert len(r.localizers) == len(r.truth["aneurysms"]) >= 2
        for row, a in zip(r.localizers, r.truth["aneurysms"], strict=True):
            assert row["location"] == a["location"] and row["SOPInstanceUID"] == a["sop_uid"]
            coords = ast.literal_eval(row["coordinates"])
            _check_localizer(out / "series" / r.series_uid, r.truth, row["SOPInstanceUID"], coords,
                             row["location"], a)
            seen.add(row["location"])
    assert seen == set(LOCATION_COLS)


def test_csv_localizers_match_geometry(train_set: Path) -> None:
    truth = load_truth(train_set)
    locs = pd.read_csv(train_set / "train_localizers.csv")
    assert list(locs.columns) == LOCALIZER_COLS
    per_series: dict[str, int] = {}
    for _, row in locs.iterrows():
        rec = truth[row[ID_COL]]
        i = per_series.get(row[ID_COL], 0)
        per_series[row[ID_COL]] = i + 1
        a = rec["aneurysms"][i]
        assert a["location"] == row["location"]
        coords = ast.literal_eval(row["coordinates"])
        assert set(coords) <= {"x", "y", "f"} and ("f" in coords) == rec["quirks"]["multiframe"]
        _check_localizer(train_set / "series" / row[ID_COL], rec, row["SOPInstanceUID"], coords, row["location"], a)


def test_train_csv_layout(train_set: Path) -> None:
    train = pd.read_csv(train_set / "train.csv")
    assert list(train.columns) == TRAIN_CSV_COLS
    assert set(train["Modality"]) <= set(MODALITY_NAMES)
    assert (train[PRESENT_COL] == train[LOCATION_COLS].max(axis=1)).all()
    locs = pd.read_csv(train_set / "train_localizers.csv")
    # One localizer per labelled location (locations are drawn without replacement within a series).
    assert len(locs) == int(train[LOCATION_COLS].to_numpy().sum())
    for uid in train[ID_COL]:
        files = sorted((train_set / "series" / uid).glob("*.dcm"))
        assert files, uid
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        assert ds.SeriesInstanceUID == uid and files[0].name == f"{ds.SOPInstanceUID}.dcm"


def test_segmentation_parent_vessel_and_affine(targeted: tuple[Path, list]) -> None:
    out, results = targeted
    for r in results:
        uid = r.series_uid
        seg = nib.load(out / "segmentations" / uid / f"{uid}_cowseg.nii")
        img = nib.load(out / "segmentations" / uid / f"{uid}.nii")
        labels = np.asarray(seg.dataobj)
        assert set(np.unique(labels)) <= {0, *SEG_LABEL_VALUES.values()}
        vol = read_series(out / "series" / uid)
        np.testing.assert_allclose(seg.affine, nifti_affine(vol.affine), atol=1e-3)
        assert labels.shape == vol.array.shape[::-1]
        # The NIfTI image holds what the DICOM decodes to (the reader clips CT air/padding at -1024 HU).
        nii = np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0)
        inside = vol.array > vol.array.min() + 1
        np.testing.assert_allclose(nii[inside], vol.array[inside], atol=1e-3 * np.abs(vol.array).max())
        for a in r.truth["aneurysms"]:
            want = SEG_LABEL_VALUES[a["location"]]
            ras = np.asarray(a["parent_lps"]) * np.array([-1.0, -1.0, 1.0])
            ijk = np.rint((np.linalg.inv(seg.affine) @ np.r_[ras, 1.0])[:3]).astype(int)
            # The voxel at the parent point, or (at a junction with a larger vessel) the majority of its labelled
            # 3 x 3 x 3 neighbourhood, carries the location's value.
            hood = labels[tuple(slice(max(c - 1, 0), c + 2) for c in ijk)]
            values, counts = np.unique(hood[hood > 0], return_counts=True)
            majority = values[np.argmax(counts)] if len(values) else 0
            assert want in (labels[tuple(ijk)], majority), f"{a['location']}: parent voxel {labels[tuple(ijk)]}, " \
                f"neighbourhood {dict(zip(values.tolist(), counts.tolist(), strict=True))}, want {want}"


def test_same_seed_same_bytes_any_worker_count(tmp_path: Path) -> None:
    def digest(folder: Path) -> dict[str, str]:
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    generate_dataset(tmp_path / "a", 3, seed=5, workers=1, progress=False)
    generate_dataset(tmp_path / "b", 3, seed=5, workers=2, progress=False)
    generate_dataset(tmp_path / "c", 3, seed=6, workers=1, progress=False)
    a, b, c = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert len(a) > 10 and a == b
    assert set(a).isdisjoint({k for k in c if k.startswith("series/")})  # another seed, other uids


def test_dome_range_supplement_is_positive_with_drawn_small_domes_and_segmentations_are_optional(
        tmp_path: Path) -> None:
    """``dome_range``: every series positive, every sac of a series one patient diameter inside the range (drawn per
    series); ``segmentations=False`` writes none and leaves the series' bytes as they are."""
    def digest(folder: Path) -> dict[str, str]:
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    with_segs = generate_dataset(tmp_path / "a", 8, seed=11, workers=1, progress=False, dome_range=(2.0, 3.0))
    generate_dataset(tmp_path / "b", 8, seed=11, workers=1, progress=False, dome_range=(2.0, 3.0),
                     segmentations=False)
    assert all(r.labels[PRESENT_COL] == 1 for r in with_segs)
    domes = []
    for rec in load_truth(tmp_path / "a").values():
        scale = abs(np.linalg.det(np.asarray(rec["head_to_lps"])[:3, :3])) ** (1 / 3)  # truth domes: head frame
        patient = {round(a["dome_mm"] * scale, 2) for a in rec["aneurysms"]}
        assert len(patient) == 1 and 2.0 - 0.01 <= patient.pop() <= 3.0 + 0.01
        assert not any(a["bleb"] for a in rec["aneurysms"])
        domes.append(rec["aneurysms"][0]["dome_mm"])
    assert np.ptp(domes) > 0.2  # drawn per series, not one size
    a, b = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert any(k.startswith("segmentations/") for k in a) and not any(k.startswith("segmentations/") for k in b)
    assert {k: v for k, v in a.items() if k.startswith("series/")} == {k: v for k, v in b.items()
                                                                        if k.startswith("series/")}
    with pytest.raises(ValueError, match="dome range"):
        generate_dataset(tmp_path / "c", 2, seed=11, progress=False, dome_range=(3.0, 2.0))


def test_test_split_has_only_allowlisted_tags(tmp_path: Path) -> None:
    results = generate_dataset(tmp_path, 4, seed=3, split="test", workers=1, progress=False)
    generate_series(tmp_path, 99, 3, split="test", modality="MRA", locations=["Basilar Tip"],
                    quirks_override={"multiframe": True, "transfer_syntax": JPEG2000Lossless})
    assert not (tmp_path / "train.csv").exists() and not (tmp_path / "segmentations").exists()
    assert list(pd.read_csv(tmp_path / "test.csv").columns) == [ID_COL]
    sol = pd.read_csv(tmp_path / "solution.csv")
    assert list(sol.columns) == [ID_COL, *LABEL_COLS] and len(sol) == len(results)
    files = list((tmp_path / "series").rglob("*.dcm"))
    assert len(files) > 20
    for f in files:
        ds = pydicom.dcmread(f)
        extra = {e.keyword for e in ds} - TEST_TAG_ALLOWLIST
        assert not extra, f"{f.name}: tags beyond the allow-list: {sorted(extra)}"
        assert ds.file_meta.TransferSyntaxUID and ds.Modality in ("CT", "MR")
    for r in results:  # still readable
        assert read_series(tmp_path / "series" / r.series_uid).array.shape[0] == r.truth["shape_zyx"][0]


def test_label_statistics_follow_the_competition() -> None:
    rng = np.random.default_rng(0)
    draws = [sample_locations(rng) for _ in range(20000)]
    positive = [d for d in draws if d]
    assert abs(len(positive) / len(draws) - 0.43) < 0.015
    assert abs(np.mean([len(d) > 1 for d in positive]) - 0.13) < 0.015
    assert max(len(d) for d in positive) <= 5 and all(len(set(d)) == len(d) for d in positive)
    counts = pd.Series([loc for d in positive for loc in d]).value_counts()
    expected = pd.Series(LOCATION_COUNTS) / sum(LOCATION_COUNTS.values())
    observed = counts / counts.sum()
    assert np.all(np.abs(observed[expected.index] - expected) < 0.2 * expected + 0.004)


def _inside_capsules(point: np.ndarray, a: np.ndarray, b: np.ndarray, ra: np.ndarray, rb: np.ndarray) -> bool:
    """Whether an LPS point lies in one of the tapered capsules (a, b, radii), by its own segment geometry."""
    ab = b - a
    t = np.clip(np.einsum("ij,ij->i", point - a, ab) / np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-12), 0.0, 1.0)
    dist = np.linalg.norm(a + t[:, None] * ab - point, axis=1)
    return bool(np.any(dist <= ra + t * (rb - ra) + 1e-6))


def test_truth_records_each_mimic_inside_a_drawn_vessel(train_set: Path) -> None:
    """Loops and infundibula (the hard mimics of negatives and positives alike) are recorded where they are drawn:
    each centre lies inside a drawn artery, one record per mimic the variants name."""
    from train_offline.phantoms.anatomy import KIND_ARTERY, build_anatomy

    n_mimics = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        anatomy = build_anatomy(rng, sample_locations(rng))
        kinds = [m["kind"] for m in anatomy.mimics]
        assert kinds.count("loop") == len(anatomy.variants.get("loops", []))
        assert kinds.count("infundibulum") == len(anatomy.variants.get("infundibula", []))
        artery = anatomy.cap_kind == KIND_ARTERY
        for m in anatomy.mimics:
            assert _inside_capsules(np.asarray(m["centre_lps"]), anatomy.cap_a[artery], anatomy.cap_b[artery],
                                    anatomy.cap_ra[artery], anatomy.cap_rb[artery]), m
        n_mimics += len(anatomy.mimics)
    assert n_mimics >= 20
    for rec in load_truth(train_set).values():  # and written to phantom_truth.jsonl
        names = rec["variants"].get("loops", []) + rec["variants"].get("infundibula", [])
        assert sorted(m["vessel"] for m in rec["mimics"]) == sorted(names)
        assert all(len(m["centre_lps"]) == 3 for m in rec["mimics"])


def test_quirks_survive_the_reader(tmp_path: Path) -> None:
    # Enhanced multi-frame MR with per-frame rescale, JPEG 2000: the read volume is smooth across frames.
    r = generate_series(tmp_path, 0, 9, modality="MRA", locations=[],
                        quirks_override={"multiframe": True, "per_frame_rescale": True, "mr_rescale": True,
                                         "transfer_syntax": JPEG2000Lossless})
    files = list((tmp_path / "series" / r.series_uid).glob("*.dcm"))
    assert len(files) == 1 and int(pydicom.dcmread(files[0]).NumberOfFrames) == r.truth["shape_zyx"][0]
    vol = read_series(tmp_path / "series" / r.series_uid)
    np.testing.assert_allclose(vol.affine, np.asarray(r.truth["affine"]), atol=1e-4)
    centre = vol.array[:, 30:-30, 30:-30]
    med = np.median(centre.reshape(len(centre), -1), axis=1)
    assert np.max(np.abs(np.diff(np.log(med[10:-10])))) < 0.08, "per-frame rescale not undone"

    # Signed CT, MONOCHROME1, padding outside the field of view, scout + blank + odd-size extras: all dropped.
    r = generate_series(tmp_path, 1, 9, modality="CTA", locations=["Right Middle Cerebral Artery"],
                        transfer_syntax=ExplicitVRLittleEndian,
                        quirks_override={"ct_signed": True, "monochrome1": True, "scout": True, "blank": True,
                                         "odd_size": True, "shuffled_instance": True})
    vol = read_series(tmp_path / "series" / r.series_uid)
    assert tuple(vol.array.shape) == tuple(r.truth["shape_zyx"]) and len(vol.dropped) == 3
    np.testing.assert_allclose(vol.affine, np.asarray(r.truth["affine"]), atol=1e-4)
    a = r.truth["aneurysms"][0]
    z, y, x = np.rint(world_to_voxel(vol.affine, np.array([a["centre_lps"]]))[0]).astype(int)
    brain = vol.array[z - 2:z + 3, y - 12:y + 13, x - 12:x + 13]
    assert 0 < np.median(brain) < 120, "MONOCHROME1 / signed CT decoded to the wrong HU"
    if a["dome_mm"] >= 4.0:
        assert vol.array[z, y, x] > 150, "aneurysm not bright in CTA"


def test_cli_help_and_preview(tmp_path: Path) -> None:
    env_py = sys.executable
    out = subprocess.run([env_py, "-m", "train_offline.phantoms", "--help"], capture_output=True, text=True,
                         check=True)
    assert "--split" in out.stdout and "--size" in out.stdout
    results = [
        generate_series(tmp_path / "data", 0, 4, modality="CTA", locations=["Basilar Tip"]),
        generate_series(tmp_path / "data", 1, 4, modality="MRA", locations=["Anterior Communicating Artery"],
                        quirks_override={"multiframe": True}),
    ]
    write_tables(tmp_path / "data", results, "train")
    subprocess.run([env_py, "-m", "train_offline.phantoms.preview", str(tmp_path / "data"), "--out",
                    str(tmp_path / "png")], check=True, capture_output=True)
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) == 2 and all(p.stat().st_size > 5000 for p in pngs)


# sha256 of what the classic generator wrote for 4 small train series of seed 3 (2026-12-08, before the renderer's
# functions were split and the styles were added); every draw of every phantom depends on the draw order these pin.
CLASSIC_TABLES_SHA256 = {
    "train.csv": "eae4cb96eb770297d776fa4851c7d1cece3890a62704a3231c12739cff6f0102",
    "train_localizers.csv": "3b312434f7e8b1153039bad83e1855dbb84e4c3396d50f9ec147f43ba6ca7c33",
    "phantom_truth.jsonl": "2711bc4e233334b475b3264ee56a4734236a4a1d2235ef0e2d306ef6f8ed4664",
}


def test_the_classic_style_writes_what_it_always_wrote(tmp_path: Path) -> None:
    """The classic renderer stays byte-identical: labels, localizers and the truth (geometry, aneurysm centres and
    sizes, quirks, variants) of a fixed seed equal their recorded hashes. (The pixel bytes were checked equal too, on
    2,607 files of every size; they are not pinned here, where floating-point rounding may differ between CPUs.)"""
    import hashlib

    generate_dataset(tmp_path, 4, seed=3, split="train", size="small", workers=1, progress=False)
    found = {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in CLASSIC_TABLES_SHA256}
    assert found == CLASSIC_TABLES_SHA256


@pytest.mark.parametrize("style", ["labelmap", "implicit", "randomised"])
def test_every_style_writes_a_readable_series_with_localizers_on_its_aneurysms(style: str, tmp_path: Path) -> None:
    """Each independently written style goes through the same writer: the kernel reads its files, each localizer
    (nearest native slice, pixel column/row) maps back within one voxel of the aneurysm centre on the named side,
    the segmentation lies on the reader's grid with competition values, and the truth records the style."""
    lateral = ["Left Middle Cerebral Artery", "Right Supraclinoid Internal Carotid Artery"]
    for i, modality in enumerate(["CTA", "MRA", "MRI T1post"]):  # axial, slab (multi-frame at times), any plane
        r = generate_series(tmp_path, i, 41, modality=modality, locations=lateral, with_segmentation=True,
                            style=style)
        assert r.truth["style"] == style and r.modality == modality and r.labels[PRESENT_COL] == 1
        assert [row["location"] for row in r.localizers] == lateral
        series = tmp_path / "series" / r.series_uid
        vol = read_series(series)
        for row, a in zip(r.localizers, r.truth["aneurysms"], strict=True):
            coords = ast.literal_eval(row["coordinates"])
            p = localizer_to_lps(vol, row["SOPInstanceUID"], coords["x"], coords["y"], coords.get("f", 0))
            dv = world_to_voxel(vol.affine, np.array([p, a["centre_lps"]]))
            assert np.all(np.abs(dv[0] - dv[1]) <= 1.0), f"{style} {modality} {row['location']}: {dv}"
            assert np.sign(p[0]) == -_side(row["location"]), f"{style} {modality} {row['location']}: LPS x {p[0]}"
        seg = nib.load(tmp_path / "segmentations" / r.series_uid / f"{r.series_uid}_cowseg.nii")
        np.testing.assert_allclose(seg.affine, nifti_affine(vol.affine), atol=1e-3)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, *SEG_LABEL_VALUES.values()}
