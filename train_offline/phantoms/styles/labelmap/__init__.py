"""The ``labelmap`` phantom style (placeholder docstring, completed below)."""

from __future__ import annotations

from .pipeline import render_series

__all__ = ["render_series"]
