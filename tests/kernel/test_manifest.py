"""The typed model entry: the shipped manifest's entries parse into ModelSpecs and write back unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kernel.manifest import ModelSpec, load_manifest

REPO = Path(__file__).resolve().parents[2]


def test_shipped_entries_round_trip_through_model_spec() -> None:
    raw = json.loads((REPO / "weights" / "manifest.json").read_text())
    for i, entry in enumerate(raw["models"]):
        spec, problems = ModelSpec.parse(i, entry)
        assert problems == [] and spec is not None
        assert spec.to_dict() == entry, entry["name"]
    manifest = load_manifest(REPO / "weights")
    locators, classifiers = manifest.models("locator"), manifest.models("classifier")
    assert locators and [s.fold for s in locators] == [s.fold for s in classifiers]  # one of each per fold
    assert len({s.fold for s in classifiers}) == len(classifiers)
    for locator in locators:
        assert locator.output_names == ("heatmap",)
        assert locator.output_stride == entry_value(raw, "locator", "output_stride")
    for classifier in classifiers:
        assert classifier.centre_offset_lps_mm == tuple(entry_value(raw, "classifier", "centre_offset_lps_mm"))
        assert classifier.input_shape == tuple(entry_value(raw, "classifier", "input_shape")) and classifier.flip_tta


def test_shipped_folds_carry_their_out_of_fold_scores() -> None:
    """Each trained fold's classifier (and fine model) records its own validation fold's score, so the manifest
    says what every member of the ensemble scored out of fold."""
    manifest = load_manifest(REPO / "weights")
    for spec in [*manifest.models("classifier"), *manifest.models("fine")]:
        if (spec.config or {}).get("random_init"):
            continue
        score, auc, n = (spec.validation.get(k) for k in ("score", "auc_present", "n_series"))
        assert 0.5 < score <= 1.0 and 0.5 < auc <= 1.0 and n > 0, (spec.name, spec.validation)


def entry_value(raw: dict, role: str, key: str):
    return next(m[key] for m in raw["models"] if m["role"] == role)


@pytest.mark.parametrize("field, value, message", [
    ("input_shape", [32, 32], "input_shape must be 3 positive integers"),
    ("output_stride", 3, "not divisible by output_stride 3"),
    ("sha256", "ABC", "sha256 must be 64 lower-case hex digits"),
    ("file", "../x.onnx", "plain name inside the weights folder"),
    ("role", "segmenter", "role must be one of"),
])
def test_bad_locator_fields_are_named(field: str, value: object, message: str) -> None:
    raw = json.loads((REPO / "weights" / "manifest.json").read_text())
    entry = dict(next(m for m in raw["models"] if m["role"] == "locator"), **{field: value})
    spec, problems = ModelSpec.parse(0, entry)
    assert spec is None and any(message in p for p in problems), problems


def _fine_entry(**fields: object) -> dict:
    raw = json.loads((REPO / "weights" / "manifest.json").read_text())
    entry = dict(next(m for m in raw["models"] if m["role"] == "fine"), **fields)
    return {k: v for k, v in entry.items() if v is not None}


@pytest.mark.parametrize("fields, message", [
    ({"output_names": ["logit"], "recentre_max_mm": 5.0, "output_stride": 2}, "needs the sphere-map output"),
    ({"output_names": ["logit", "sphere"], "output_stride": None}, "output_stride must be a positive integer"),
    ({"output_names": ["logit", "sphere"], "output_stride": 2, "recentre_max_mm": -1.0}, "recentre_max_mm must be"),
    ({"output_names": ["logit", "sphere", "x"]}, "output_names must be [logit] or [logit, sphere map]"),
    ({"output_names": ["logit", "sphere"], "output_stride": 2, "recentre_view": 1},
     "recentre_view must be true or false"),
    ({"output_names": ["logit", "sphere"], "output_stride": 2, "recentre_max_mm": 0.0, "recentre_view": True},
     "recentre_view needs a move"),
    ({"site_heatmap_weight": -0.5}, "site_heatmap_weight must be a number >= 0"),
    ({"site_heatmap_weight": "0.5"}, "site_heatmap_weight must be a number >= 0"),
])
def test_bad_fine_fields_are_named(fields: dict, message: str) -> None:
    spec, problems = ModelSpec.parse(0, _fine_entry(**fields))
    assert spec is None and any(message in p for p in problems), problems


def test_a_recentring_fine_entry_round_trips() -> None:
    entry = _fine_entry(output_names=["logit", "sphere"], output_stride=2, recentre_max_mm=5.0, recentre_view=True)
    spec, problems = ModelSpec.parse(0, entry)
    assert problems == [] and spec is not None
    assert spec.recentre_max_mm == 5.0 and spec.output_stride == 2 and spec.recentre_view and spec.to_dict() == entry
    plain, _ = ModelSpec.parse(0, _fine_entry(output_names=["logit"], output_stride=None, recentre_max_mm=None,
                                              recentre_view=None, site_heatmap_weight=None))
    assert plain is not None and plain.recentre_max_mm == 0.0  # an entry from before the move: scored where found
    assert not plain.recentre_view
    assert plain.site_heatmap_weight == 0.0 and "site_heatmap_weight" not in plain.to_dict()  # before the setting: off
    heated, _ = ModelSpec.parse(0, _fine_entry(site_heatmap_weight=0.5))
    assert heated is not None and heated.site_heatmap_weight == 0.5 and heated.to_dict()["site_heatmap_weight"] == 0.5


def test_entries_exported_before_the_renames_read_their_old_keys() -> None:
    """Manifests written before ``heat_weight`` -> ``site_heatmap_weight`` and ``score_found`` -> ``recentre_view``
    load with the same settings; a current key wins over its old name; export writes the current names."""
    entry = _fine_entry(output_names=["logit", "sphere"], output_stride=2, recentre_max_mm=3.0, recentre_view=None,
                        site_heatmap_weight=None)
    entry.update(heat_weight=1.0, score_found=True)
    spec, problems = ModelSpec.parse(0, entry)
    assert problems == [] and spec is not None and spec.site_heatmap_weight == 1.0 and spec.recentre_view
    written = spec.to_dict()
    assert written["site_heatmap_weight"] == 1.0 and written["recentre_view"] is True
    assert "heat_weight" not in written and "score_found" not in written
    both, _ = ModelSpec.parse(0, {**entry, "site_heatmap_weight": 0.25})
    assert both is not None and both.site_heatmap_weight == 0.25
    bad, problems = ModelSpec.parse(0, {**entry, "heat_weight": -1.0})
    assert bad is None and any("site_heatmap_weight must be a number >= 0" in p for p in problems)
