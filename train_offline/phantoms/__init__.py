"""Synthetic competition data: head-and-vessel phantoms written in the competition layout (issue 3)."""
