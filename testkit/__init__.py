"""Factories for tests, scripts and benchmarks: DICOM series, tiny ONNX weights, test splits, hostile series.

Importable from anywhere in the repository (``from testkit.dicom_factory import write_series``); never bundled into
the Kaggle kernel.
"""
