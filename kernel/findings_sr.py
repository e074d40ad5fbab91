"""The findings as a DICOM Comprehensive 3D SR: a TID 1500 measurement report a PACS viewer can show with the series.

One TID 1410 group per finding at or above the threshold (``findings.json``'s ``above_threshold``):

- its point as SCOORD3D (graphic type POINT) in the source series' FrameOfReferenceUID, LPS mm;
- finding type SCT 85659009 "Aneurysm", finding category SCT 49755003 "Morphologically abnormal structure";
- finding site: the vessel of the location label (``SITE_CODES``; left/right as SCT 7771000 / 24028007 laterality);
- measurements: DCM 111012 "Certainty of Finding" = P(aneurysm at the point) in %, and DCM 111011 "Certainty of
  Feature" = P(the finding site), each referencing the nearest source image (SOP Instance, frame number for a
  multi-frame file);
- algorithm identification: the kit version, with the weights' manifest sha256, the stage and the threshold as
  parameters; the tracking identifier's text names the finding and its competition location label.

Every kept image of the source series is listed as evidence (Current Requested Procedure Evidence Sequence). The
patient and study attributes are copied from one source file's header where it has them. highdicom is imported here
only, so the Kaggle kernel (which bundles this file) never needs it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["LATERALITY", "SITE_CODES", "sr_bytes"]

# Location label -> (SNOMED CT anatomic site, laterality "L"/"R"/None, topographical modifier). Both ICA labels map to
# the internal carotid artery (the infra/supraclinoid split has no SNOMED code among DICOM's; the tracking identifier
# and findings.json keep the label); "Basilar Tip" is the basilar artery, distal; "Other Posterior Circulation" a
# cerebral artery, posterior.
SITE_CODES: dict[str, tuple[tuple[str, str], str | None, tuple[str, str] | None]] = {
    "Left Infraclinoid Internal Carotid Artery": (("86117002", "Internal carotid artery"), "L", None),
    "Right Infraclinoid Internal Carotid Artery": (("86117002", "Internal carotid artery"), "R", None),
    "Left Supraclinoid Internal Carotid Artery": (("86117002", "Internal carotid artery"), "L", None),
    "Right Supraclinoid Internal Carotid Artery": (("86117002", "Internal carotid artery"), "R", None),
    "Left Middle Cerebral Artery": (("17232002", "Middle cerebral artery"), "L", None),
    "Right Middle Cerebral Artery": (("17232002", "Middle cerebral artery"), "R", None),
    "Anterior Communicating Artery": (("8012006", "Anterior communicating artery"), None, None),
    "Left Anterior Cerebral Artery": (("60176003", "Anterior cerebral artery"), "L", None),
    "Right Anterior Cerebral Artery": (("60176003", "Anterior cerebral artery"), "R", None),
    "Left Posterior Communicating Artery": (("43119007", "Posterior communicating artery"), "L", None),
    "Right Posterior Communicating Artery": (("43119007", "Posterior communicating artery"), "R", None),
    "Basilar Tip": (("59011009", "Basilar artery"), None, ("46053002", "Distal")),
    "Other Posterior Circulation": (("88556005", "Cerebral artery"), None, ("255551008", "Posterior")),
}
LATERALITY = {"L": ("7771000", "Left"), "R": ("24028007", "Right")}
# Patient and study attributes an SR copies from its first evidence item (empty when the source does not have them).
_COPIED = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
           "StudyTime", "ReferringPhysicianName")


def _sct(value: tuple[str, str]):
    from pydicom.sr.coding import Code

    return Code(value[0], "SCT", value[1])


def _source_header(series_dir: Path, sop_uids: set[str]):
    """Patient/study attributes of the first file of the series that is one of its kept images (None if none)."""
    import pydicom

    for path in sorted(Path(series_dir).rglob("*")):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID", *_COPIED])
        except Exception:  # noqa: BLE001 - any unreadable file: try the next
            continue
        if str(ds.get("SOPInstanceUID", "")) in sop_uids:
            return ds
    return None


def _evidence(record: Mapping[str, Any], instances: Mapping[str, str], series_dir: Path) -> list:
    """One minimal dataset per kept source image (the SR lists them as evidence); the first carries the patient and
    study attributes."""
    from pydicom.dataset import Dataset

    header = _source_header(series_dir, set(instances))
    evidence = []
    for sop, sop_class in sorted(instances.items()):
        ds = Dataset()
        ds.StudyInstanceUID = record["StudyInstanceUID"]
        ds.SeriesInstanceUID = record["SeriesInstanceUID"]
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop
        evidence.append(ds)
    for keyword in _COPIED:
        setattr(evidence[0], keyword, header.get(keyword, "") if header is not None else "")
    return evidence


def _group(finding: Mapping[str, Any], record: Mapping[str, Any], instances: Mapping[str, str]):
    """The TID 1410 group of one finding."""
    import highdicom as hd
    import numpy as np
    from pydicom.sr.codedict import codes

    site, side, modifier = SITE_CODES[finding["location"]]
    image = finding["image"]
    source = hd.sr.SourceImageForMeasurement(
        referenced_sop_class_uid=instances[image["SOPInstanceUID"]],
        referenced_sop_instance_uid=image["SOPInstanceUID"],
        referenced_frame_numbers=[image["frame_number"]] if image["frame_number"] else None)
    measurements = [
        hd.sr.Measurement(name=codes.DCM.CertaintyOfFinding, value=round(100.0 * finding["probability"], 4),
                          unit=codes.UCUM.Percent, referenced_images=[source]),
        hd.sr.Measurement(name=codes.DCM.CertaintyOfFeature, value=round(100.0 * finding["location_probability"], 4),
                          unit=codes.UCUM.Percent, referenced_images=[source]),
    ]
    algorithm = hd.sr.AlgorithmIdentification(
        name="rsna-aneurysm-kit", version=record["kit"]["version"],
        parameters=[f"weights manifest sha256 {record['weights']['manifest_sha256']}", f"stage {finding['stage']}",
                    f"threshold {record['threshold']:g}"])
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=f"finding {finding['index']}: {finding['location']}"),
        referenced_region=hd.sr.ImageRegion3D(
            graphic_type=hd.sr.GraphicTypeValues3D.POINT,
            graphic_data=np.asarray([finding["point_lps"]], dtype=np.float64),
            frame_of_reference_uid=record["FrameOfReferenceUID"]),
        finding_type=codes.SCT.Aneurysm, finding_category=codes.SCT.MorphologicallyAbnormalStructure,
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(anatomic_location=_sct(site),
                                         laterality=_sct(LATERALITY[side]) if side else None,
                                         topographical_modifier=_sct(modifier) if modifier else None)],
        measurements=measurements)


def sr_bytes(record: Mapping[str, Any], instances: Mapping[str, str], series_dir: str | Path) -> bytes:
    """The SR file of a ``findings.json`` record (status "ok"). ``instances``: SOPInstanceUID -> SOPClassUID of the
    series' kept images (``Volume.sop_class_uids``); ``series_dir``: where one source header is read from."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if not record.get("FrameOfReferenceUID") or not record.get("StudyInstanceUID"):
        raise ValueError("an SR needs the source series' FrameOfReferenceUID and StudyInstanceUID")
    if not instances:
        raise ValueError("no SOP Class UIDs of the source images: an SR cannot reference them")
    kept = [f for f in record["findings"] if f["above_threshold"]]
    if not kept:
        raise ValueError(f"no finding at or above the threshold {record['threshold']:g} (a TID 1500 report needs at "
                         "least one measurement group)")
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name="rsna-aneurysm-kit",
                                                       model_name=record["kit"]["version"])
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    dicom = (record.get("modality") or {}).get("dicom")
    procedures = [codes.cid100.CTUnspecifiedBodyRegion if dicom == "CT" else codes.cid100.MRIUnspecifiedBodyRegion]
    inferred = ((record.get("modality") or {}).get("inferred") or {}).get("name")
    if inferred in ("CTA", "MRA"):
        procedures.append(codes.cid100.Angiography)
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=procedures,
                                     imaging_measurements=[_group(f, record, instances) for f in kept])
    sr = hd.sr.Comprehensive3DSR(
        evidence=_evidence(record, instances, Path(series_dir)), content=report[0], series_instance_uid=hd.UID(),
        series_number=9001, sop_instance_uid=hd.UID(), instance_number=1, manufacturer="rsna-aneurysm-kit",
        series_description="aneurysm findings (research use)", is_complete=True)
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
