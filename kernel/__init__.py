"""Kaggle-side code: DICOM series -> oriented, normalised volume -> ONNX ensemble -> one row of 14 probabilities.

Imports nothing from ``train_offline``; the arrow points one way only.
"""
