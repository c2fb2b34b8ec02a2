"""Perturbation faithfulness (AOPC) and bootstrap intervals: pure functions on numpy arrays.

**AOPC** (area over the perturbation curve, DeYoung et al. 2020, "ERASER") ranks any per-token
score — attention, rollout, flow, a gradient or a perturbation attribution — on the same footing:
the model is run on the example with its top-``k`` % tokens (by the score) deleted and with *only*
those tokens kept, for several fractions ``k``:

* comprehensiveness ``= mean_k [ p(y | x) - p(y | x without top-k) ]`` — higher is better (the
  tokens the method ranks first are the ones the model needs);
* sufficiency ``= mean_k [ p(y | x) - p(y | only top-k) ]`` — lower is better (those tokens alone
  are enough).

The default is ERASER's protocol (DeYoung et al. 2020, "ERASER: A Benchmark to Evaluate
Rationalized NLP Models", ACL, §4 "Faithfulness"): ``k`` runs over the bins
``{1, 5, 10, 20, 50} %`` (:data:`ERASER_FRACTIONS`) and ``y`` is the class the model *predicts*
for the full input ("m(x_i)_j ... for the predicted class j"); the score is the plain mean of the
per-bin drops, as the benchmark's released scorer averages them. The fractions and the class
(``"label"``: the example's label, as this package did before) can be changed; every run records
its protocol (:func:`aopc_protocol`) in ``config.json``, ``results.json`` and the printed table,
so that numbers are compared only under the same protocol.

A token is deleted either by replacing it with a blank token id (``"blank"``: the length and the
positions of the other tokens stay the same, like blank-out) or by removing it from the sequence
(``"remove"``). Positions listed as protected (``[CLS]``, ``[SEP]``, the position read by the
classifier) are never perturbed and never counted in ``k``.
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable, Literal, Sequence

import numpy as np

Deletion = Literal["blank", "remove"]
DELETIONS: tuple[str, ...] = ("blank", "remove")

#: The ERASER bins (DeYoung et al. 2020, §4 "Faithfulness"): shares of the tokens deleted / kept.
ERASER_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.5)
DEFAULT_FRACTIONS: tuple[float, ...] = ERASER_FRACTIONS
#: The fractions this package used before it adopted the ERASER bins (``--fractions 0.1,0.2,0.3,0.4,0.5``).
EVEN_FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)

AopcTarget = Literal["predicted", "label"]
#: The class whose probability AOPC tracks: the model's prediction (ERASER) or the example's
#: label (the prediction when the example has none).
AOPC_TARGETS: tuple[str, ...] = ("predicted", "label")


def check_aopc_target(value: str) -> str:
    """Validate the AOPC class choice (one of :data:`AOPC_TARGETS`)."""
    if value not in AOPC_TARGETS:
        raise ValueError(f"unknown aopc_target {value!r}; choose one of {AOPC_TARGETS} (ERASER: 'predicted').")
    return value


def aopc_protocol(fractions: Sequence[float], target: str) -> dict[str, object]:
    """The AOPC protocol of a run, as recorded in its results.

    Returns:
        ``{"name": "ERASER" | "custom", "fractions": [...], "target": target,
        "description": one line for table headers}``; ``"ERASER"`` exactly when the fractions are
        :data:`ERASER_FRACTIONS` and the class is the predicted one.
    """
    fractions = [float(f) for f in fractions]
    eraser = tuple(fractions) == ERASER_FRACTIONS and target == "predicted"
    bins = ", ".join(f"{100 * f:g}" for f in fractions)
    name = "ERASER" if eraser else "custom"
    cls = "the predicted class" if target == "predicted" else "the label (else the predicted class)"
    source = " (DeYoung et al. 2020)" if eraser else " (not the ERASER protocol: bins 1, 5, 10, 20, 50 %, predicted class)"
    description = f"AOPC protocol {name}{source}: top {bins} % of the perturbable tokens, p of {cls}"
    return {"name": name, "fractions": fractions, "target": target, "description": description}


def check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    """Validate AOPC fractions: a non-empty sequence of numbers in ``(0, 1]``."""
    if isinstance(fractions, (str, bytes)) or not isinstance(fractions, Iterable):
        raise TypeError(f"fractions must be a sequence of numbers in (0, 1]; got {fractions!r}.")
    fractions = list(np.asarray(fractions, dtype=object).ravel()) if isinstance(fractions, np.ndarray) else list(fractions)
    if any(isinstance(f, bool) or not isinstance(f, numbers.Real) for f in fractions):
        raise TypeError(f"fractions must be numbers in (0, 1]; got {list(fractions)!r}.")
    fractions = tuple(float(f) for f in fractions)
    if not fractions:
        raise ValueError("fractions is empty; pass e.g. the ERASER bins (0.01, 0.05, 0.1, 0.2, 0.5).")
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if bad:
        raise ValueError(f"fractions must lie in (0, 1] (a share of the tokens); got {bad}.")
    return fractions


def top_k_counts(candidates: int, fractions: Sequence[float]) -> list[int]:
    """How many tokens each fraction selects: ``ceil(f · candidates)``, at least 1.

    ``candidates`` is the number of perturbable (live, unprotected) tokens; with none, every count
    is 0.
    """
    if candidates <= 0:
        return [0 for _ in fractions]
    return [min(candidates, max(1, math.ceil(f * candidates - 1e-9))) for f in fractions]


def ranking(scores: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Candidate positions ordered by decreasing score; ties go to the earlier position.

    Args:
        scores: ``(n,)`` scores of one example.
        candidates: ``(n,)`` bool, True for positions that may be perturbed.

    Returns:
        int array of the candidate positions, most important first.

    Raises:
        ValueError: a candidate's score is NaN (an attribution that was not computed).
    """
    scores = np.asarray(scores, dtype=np.float64)
    positions = np.flatnonzero(candidates)
    if np.isnan(scores[positions]).any():
        raise ValueError("scores contain NaN at perturbable positions; cannot rank tokens.")
    order = np.argsort(-scores[positions], kind="stable")
    return positions[order]


def perturbed_inputs(
    input_ids: Sequence[int],
    scores: np.ndarray,
    candidates: np.ndarray,
    fractions: Sequence[float],
    *,
    blank_id: int,
    deletion: Deletion = "blank",
) -> tuple[list[list[int]], list[list[int]]]:
    """The inputs of the comprehensiveness and sufficiency curves of one example.

    Args:
        input_ids: the example's ``n`` token ids (no padding).
        scores: ``(n,)`` importance of each token under one method.
        candidates: ``(n,)`` bool, the perturbable positions (protected ones False).
        fractions: shares ``k`` of the candidates to delete / keep (see :func:`top_k_counts`).
        blank_id: replacement token id for ``deletion="blank"``.
        deletion: ``"blank"`` (replace by ``blank_id``) or ``"remove"`` (drop the token).

    Returns:
        ``(deleted, kept)``: two lists with one token-id list per fraction — the top-``k`` tokens
        deleted, and every candidate except the top-``k`` deleted.
    """
    if deletion not in DELETIONS:
        raise ValueError(f"unknown deletion {deletion!r}; choose one of {DELETIONS}.")
    ids = list(input_ids)
    candidates = np.asarray(candidates, dtype=bool)
    if candidates.shape != (len(ids),) or np.shape(scores) != (len(ids),):
        raise ValueError(
            f"scores {np.shape(scores)} and candidates {candidates.shape} must both have shape "
            f"(n,) = ({len(ids)},), one entry per token."
        )
    order = ranking(scores, candidates)
    deleted, kept = [], []
    for k in top_k_counts(len(order), fractions):
        top = np.zeros(len(ids), dtype=bool)
        top[order[:k]] = True
        deleted.append(_delete(ids, top, blank_id, deletion))
        kept.append(_delete(ids, candidates & ~top, blank_id, deletion))
    return deleted, kept


def _delete(ids: list[int], drop: np.ndarray, blank_id: int, deletion: str) -> list[int]:
    if deletion == "remove":
        return [token for token, gone in zip(ids, drop) if not gone]
    return [blank_id if gone else token for token, gone in zip(ids, drop)]


def aopc(full_probability: float, perturbed_probabilities: Sequence[float]) -> float:
    """``mean_k [p(y | x) - p(y | x_k)]`` over the perturbed inputs ``x_k`` of one curve."""
    perturbed = np.asarray(perturbed_probabilities, dtype=np.float64)
    if perturbed.size == 0:
        return float("nan")
    return float(np.mean(full_probability - perturbed))


def bootstrap_interval(
    values: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaNs left out).

    ``resamples`` means of ``n`` values drawn with replacement (seeded, so a table is
    reproducible); the interval is their ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
    quantiles.

    Returns:
        ``(low, high)``; ``(nan, nan)`` when no value is finite, ``(v, v)`` for a single value.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence}.")
    if resamples < 1:
        raise ValueError(f"resamples must be a positive integer; got {resamples}.")
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)
