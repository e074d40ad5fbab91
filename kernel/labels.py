"""Competition constants: label order, left/right pairs, segmentation values, the test-time tag allow-list.

Torch-free and dependency-free so every part of the project (kernel, training, tests) can import it.
"""

from __future__ import annotations

ID_COL = "SeriesInstanceUID"

LOCATION_COLS: list[str] = [
    "Left Infraclinoid Internal Carotid Artery",
    "Right Infraclinoid Internal Carotid Artery",
    "Left Supraclinoid Internal Carotid Artery",
    "Right Supraclinoid Internal Carotid Artery",
    "Left Middle Cerebral Artery",
    "Right Middle Cerebral Artery",
    "Anterior Communicating Artery",
    "Left Anterior Cerebral Artery",
    "Right Anterior Cerebral Artery",
    "Left Posterior Communicating Artery",
    "Right Posterior Communicating Artery",
    "Basilar Tip",
    "Other Posterior Circulation",
]
PRESENT_COL = "Aneurysm Present"
LABEL_COLS: list[str] = [*LOCATION_COLS, PRESENT_COL]

# Weight of each column in the competition metric (13 for "Aneurysm Present", 1 per location).
LABEL_WEIGHTS: list[float] = [1.0] * len(LOCATION_COLS) + [13.0]

# train.csv columns as downloaded.
TRAIN_CSV_COLS: list[str] = [ID_COL, "PatientAge", "PatientSex", "Modality", *LABEL_COLS]
LOCALIZER_COLS: list[str] = [ID_COL, "SOPInstanceUID", "coordinates", "location"]

# Competition modality names (train.csv) and the DICOM Modality each maps to (all the test DICOM says).
MODALITY_NAMES: list[str] = ["CTA", "MRA", "MRI T2", "MRI T1post"]
DICOM_MODALITY: dict[str, str] = {"CTA": "CT", "MRA": "MR", "MRI T2": "MR", "MRI T1post": "MR"}

# Pairs of (left, right) label names: a patient-left/right flip swaps them.
LR_PAIRS: list[tuple[str, str]] = [
    ("Left Infraclinoid Internal Carotid Artery", "Right Infraclinoid Internal Carotid Artery"),
    ("Left Supraclinoid Internal Carotid Artery", "Right Supraclinoid Internal Carotid Artery"),
    ("Left Middle Cerebral Artery", "Right Middle Cerebral Artery"),
    ("Left Anterior Cerebral Artery", "Right Anterior Cerebral Artery"),
    ("Left Posterior Communicating Artery", "Right Posterior Communicating Artery"),
]


def flip_permutation(cols: list[str] = LABEL_COLS) -> list[int]:
    """Index permutation that maps predictions of a left/right-flipped input back to the patient's labels.

    ``flipped_probs[flip_permutation()]`` gives probabilities in the original order; the permutation is its own inverse.
    """
    swap = {a: b for a, b in LR_PAIRS} | {b: a for a, b in LR_PAIRS}
    return [cols.index(swap.get(name, name)) for name in cols]


# Vessel label map values in segmentations/<uid>/<uid>_cowseg.nii (the reverse of LOCATION_COLS order).
SEG_LABEL_VALUES: dict[str, int] = {
    "Other Posterior Circulation": 1,
    "Basilar Tip": 2,
    "Right Posterior Communicating Artery": 3,
    "Left Posterior Communicating Artery": 4,
    "Right Infraclinoid Internal Carotid Artery": 5,
    "Left Infraclinoid Internal Carotid Artery": 6,
    "Right Supraclinoid Internal Carotid Artery": 7,
    "Left Supraclinoid Internal Carotid Artery": 8,
    "Right Middle Cerebral Artery": 9,
    "Left Middle Cerebral Artery": 10,
    "Right Anterior Cerebral Artery": 11,
    "Left Anterior Cerebral Artery": 12,
    "Anterior Communicating Artery": 13,
}

# Tags present in the hidden test DICOMs (besides PixelData and SeriesInstanceUID). Code must rely on nothing else.
TEST_TAG_ALLOWLIST: frozenset[str] = frozenset(
    {
        "BitsAllocated", "BitsStored", "Columns", "FrameOfReferenceUID", "HighBit", "ImageOrientationPatient",
        "ImagePositionPatient", "InstanceNumber", "Modality", "PatientID", "PhotometricInterpretation",
        "PixelRepresentation", "PixelSpacing", "PlanarConfiguration", "RescaleIntercept", "RescaleSlope",
        "RescaleType", "Rows", "SOPClassUID", "SOPInstanceUID", "SamplesPerPixel", "SliceThickness",
        "SpacingBetweenSlices", "StudyInstanceUID", "TransferSyntaxUID", "PixelData", "SeriesInstanceUID",
    }
)

assert len(LABEL_COLS) == 14 and len(set(LABEL_COLS)) == 14, "LABEL_COLS must hold 14 distinct names"
assert sorted(SEG_LABEL_VALUES) == sorted(LOCATION_COLS), "every location needs one segmentation value"
assert sorted(flip_permutation()) == list(range(14)), "flip permutation must be a permutation"
