"""Phantom styles: independently written renderers behind one contract (``contract.StyleScan``).

``classic`` is the original renderer (``phantoms.anatomy`` + ``phantoms.render``); each other style is a module
here with a ``render_series`` function, written from the shared phantom spec without reading the others, so that a
model trained on some styles can be measured on one it never saw (leave-one-style-out).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from train_offline.phantoms.styles.contract import StyleScan

__all__ = ["ALL_STYLES", "STYLES", "check_styles", "render_with"]

STYLES = ("labelmap", "implicit", "randomised")  # the contract's renderers
ALL_STYLES = ("classic", *STYLES)


def check_styles(styles: Sequence[str] | str) -> list[str]:
    """A list of known style names from a name, a comma list or ``all``; ValueError names an unknown one."""
    names = [s.strip() for s in (styles.split(",") if isinstance(styles, str) else styles) if s.strip()]
    if names == ["all"]:
        return list(ALL_STYLES)
    unknown = [s for s in names if s not in ALL_STYLES]
    if unknown or not names:
        raise ValueError(f"unknown phantom style(s) {unknown or names}; known: {list(ALL_STYLES)} or 'all'")
    return names


def render_with(style: str, rng: np.random.Generator, modality: str, locations: list[str], size: str, *,
                dome_mm: float | None = None, with_labels: bool = False) -> StyleScan:
    """One series of a contract style (not ``classic``, which the generator renders itself)."""
    if style not in STYLES:
        raise ValueError(f"{style!r} is not a contract style; known: {list(STYLES)}")
    module: Any = importlib.import_module(f"train_offline.phantoms.styles.{style}")
    scan = module.render_series(rng, modality, list(locations), size, dome_mm=dome_mm, with_labels=with_labels)
    if not isinstance(scan, StyleScan):
        raise TypeError(f"style {style} returned {type(scan).__name__}, not a StyleScan")
    return scan
