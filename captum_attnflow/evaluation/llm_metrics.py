"""The per-output-token metrics of ``llm-faithfulness``: pure functions of numbers.

A method gives each output token ``t`` one score per prompt token. Its **ranking** orders the
prompt tokens by decreasing score (ties: the earlier token first — a stable sort).

* **Deletion AOPC** (Samek et al. 2017; ERASER's comprehensiveness in log-probability): for
  ``k = 1..K`` the top-``k`` prompt tokens are perturbed together and the drop
  ``log p(target) - log p(target | top-k perturbed)`` is recorded; the AOPC is the mean drop over
  ``k`` (nats; higher: the method found what the prediction rests on).
* **Insertion AOPC**: every prompt token is perturbed except the top ``k``; the gain
  ``log p(target | only top-k kept) - log p(target | all perturbed)``, averaged over ``k``
  (higher is better).
* **Reciprocal rank** of the evidence (the subject noun's tokens): ``1 / (1 + r)`` with ``r``
  the rank (0-based) of the evidence token ranked highest; top-1 is ``r == 0``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def ranking(scores: Sequence[float]) -> np.ndarray:
    """Prompt-token indices by decreasing score; ties keep the earlier token first."""
    scores = np.asarray(scores, dtype=np.float64)
    if np.isnan(scores).any():
        raise ValueError("scores hold NaN; a ranking needs finite scores.")
    return np.argsort(-scores, kind="stable")


def top_k_sets(scores: Sequence[float], max_k: int) -> list[frozenset[int]]:
    """The sets of the top ``k`` tokens for ``k = 1 .. min(max_k, n)``."""
    order = ranking(scores)
    return [frozenset(int(i) for i in order[:k]) for k in range(1, min(max_k, order.size) + 1)]


def deletion_curve(full: float, perturbed: Sequence[float]) -> np.ndarray:
    """Drops ``full - perturbed[k-1]`` for ``k = 1..K``."""
    return float(full) - np.asarray(perturbed, dtype=np.float64)


def insertion_curve(kept: Sequence[float], empty: float) -> np.ndarray:
    """Gains ``kept[k-1] - empty`` for ``k = 1..K``."""
    return np.asarray(kept, dtype=np.float64) - float(empty)


def aopc(curve: Sequence[float]) -> float:
    """The area over the perturbation curve: the mean of the curve over ``k = 1..K``."""
    curve = np.asarray(curve, dtype=np.float64)
    if curve.size == 0:
        raise ValueError("an AOPC needs at least one k.")
    return float(curve.mean())


def reciprocal_rank(scores: Sequence[float], evidence: Sequence[int]) -> float:
    """``1 / (1 + r)``, ``r`` the 0-based rank of the best-ranked evidence token."""
    if len(evidence) == 0:
        raise ValueError("evidence is empty: pass the prompt-token indices of the evidence.")
    order = ranking(scores)
    position = {int(token): rank for rank, token in enumerate(order)}
    return 1.0 / (1 + min(position[int(e)] for e in evidence))


def random_scores(n: int, seed: int, *keys: int) -> np.ndarray:
    """A seeded random score per prompt token (the "random" reference), one stream per ``keys``."""
    return np.random.default_rng([seed, *keys]).random(n)
