"""Choosing the fine stage's fusion settings out of fold: one search over (fusion weight, site heatmap weight).

Training's validation (``train_offline.fine``), ``train_offline.retune`` and the experiments all choose the same
way: every series' sites are fused with ``kernel.recipe.fuse`` at each pair of the two grids, each pair is scored with
the competition metric, and the best score wins; ties keep the smaller site heatmap weight, then the smaller fusion
weight (the simpler model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kernel import recipe
from kernel.labels import LOCATION_COLS
from kernel.metric import evaluate_predictions

__all__ = ["FusionChoice", "SeriesSites", "best_pair", "choose_fusion", "fuse_all"]

Pair = tuple[float, float]  # (fusion weight, site heatmap weight)


@dataclass(frozen=True)
class SeriesSites:
    """What ``recipe.fuse`` needs of one series: the classifiers' (14,) probabilities, each candidate's (13,) heatmap
    cell logits and its (unfused) fine probability."""

    probs: np.ndarray
    channel_logits: np.ndarray
    site_probs: np.ndarray

    @staticmethod
    def of(probs: Any, channel_logits: Any, site_probs: Any) -> SeriesSites:
        site = np.asarray(site_probs, dtype=np.float64).reshape(-1)
        return SeriesSites(np.asarray(probs, dtype=np.float64),
                           np.asarray(channel_logits, dtype=np.float64).reshape(len(site), len(LOCATION_COLS)), site)


@dataclass(frozen=True)
class FusionChoice:
    """The chosen pair, its metrics and fused rows, and every pair's metrics (for the summary's tables)."""

    fusion_weight: float
    site_heatmap_weight: float
    metrics: dict[str, Any]
    probs: np.ndarray  # (n, 14) fused at the chosen pair, in the series' order
    table: dict[Pair, dict[str, Any]]  # every pair tried -> its metrics

    def best_score_by_heatmap_weight(self) -> dict[float, float]:
        """For each site heatmap weight tried, the best score over the fusion weights (how much the setting buys)."""
        out: dict[float, float] = {}
        for (_, h), metrics in self.table.items():
            out[h] = max(out.get(h, -np.inf), float(metrics["score"]))
        return out

    def scores_at_heatmap_weight(self, heatmap_weight: float) -> dict[float, dict[str, Any]]:
        """Fusion weight -> metrics at one site heatmap weight (summaries show the chosen one)."""
        return {w: m for (w, h), m in self.table.items() if h == heatmap_weight}


def best_pair(scores: Mapping[Pair, float]) -> Pair:
    """The (fusion weight, site heatmap weight) with the best score; ties keep the smaller heatmap weight, then the
    smaller fusion weight."""
    if not scores:
        raise ValueError("no (fusion weight, site heatmap weight) pair to choose from: empty grid")
    return min(scores, key=lambda pair: (-scores[pair], pair[1], pair[0]))


def fuse_all(sites: Sequence[SeriesSites], fusion_weight: float, site_heatmap_weight: float) -> np.ndarray:
    """(n, 14) every series fused at one pair, as the kernel fuses it."""
    return np.stack([recipe.fuse(s.probs, s.channel_logits, s.site_probs, float(fusion_weight),
                                 float(site_heatmap_weight)) for s in sites])


def choose_fusion(sites: Sequence[SeriesSites], labels: np.ndarray, modalities: Sequence[str],
                  fusion_grid: Sequence[float], heatmap_grid: Sequence[float]) -> FusionChoice:
    """Score every pair of the two grids on these series (``labels`` (n, 14) and ``modalities`` in their order) and
    return the best (``best_pair``)."""
    table: dict[Pair, dict[str, Any]] = {}
    rows: dict[Pair, np.ndarray] = {}
    for h in heatmap_grid:
        for w in fusion_grid:
            pair = (float(w), float(h))
            rows[pair] = fuse_all(sites, *pair)
            table[pair] = evaluate_predictions(labels, rows[pair], modalities)
    w, h = best_pair({pair: float(m["score"]) for pair, m in table.items()})
    return FusionChoice(w, h, table[(w, h)], rows[(w, h)], table)
