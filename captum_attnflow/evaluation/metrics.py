"""Per-example faithfulness scores and their correlations (Abnar & Zuidema 2020, §4).

The paper judges an attention-based attribution by how well it ranks the input tokens like two
model-based importance scores, per example:

* **blank-out**: ``|p(target | x) - p(target | x with token j replaced by a blank)|`` for every
  token ``j`` (:func:`blank_out_scores`, Captum's ``FeatureAblation`` with one token per feature
  group and the blank token id as the baseline);
* **input gradients**: the gradient of a scalar model score (the paper: ``p(class 0) -
  p(class 1)``) with respect to the input embeddings, reduced to one number per token
  (:func:`input_gradient_scores`, Captum's ``Saliency``; :func:`reduce_gradients`).

The agreement is Spearman's rank correlation per example over all live positions
(:func:`spearman`), computed for every layer of an attention method
(:func:`layer_correlations`) and summarised over examples as mean ± population standard
deviation (:func:`summarize`).

Scores are plain tensors or arrays; nothing here knows about a particular model, so the
functions serve the paper reproduction and dataset-scale evaluation alike. Padding is handled
by a ``(batch, n)`` mask with 1/True for real tokens: padded positions get score 0 and are left
out of every correlation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

import numpy as np
import torch
from scipy.stats import rankdata

GradientReduction = Literal["abs_sum", "l2", "sum"]
#: Per-token reductions of an ``(batch, n, d)`` embedding gradient (see :func:`reduce_gradients`).
GRADIENT_REDUCTIONS: tuple[str, ...] = ("abs_sum", "l2", "sum")


def check_gradient_reduction(reduction: str, name: str = "gradient reduction") -> None:
    """Raise a ValueError naming ``name`` and the choices unless ``reduction`` is in :data:`GRADIENT_REDUCTIONS`."""
    if reduction not in GRADIENT_REDUCTIONS:
        raise ValueError(f"unknown {name} {reduction!r}; choose one of {GRADIENT_REDUCTIONS}.")


def _as_float_array(values, name: str) -> np.ndarray:
    """``values`` (tensor or array-like) as a float64 numpy array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().to(torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0:
        raise ValueError(f"{name} must have at least one axis (the token axis); got a scalar.")
    return array


def _as_live_mask(mask, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    """Broadcast an optional padding mask to ``shape`` as a bool array (True = real token)."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask).astype(bool)
    try:
        return np.broadcast_to(mask, shape)
    except ValueError:
        raise ValueError(
            f"{name} of shape {mask.shape} does not broadcast to the scores' shape {shape}; pass a "
            f"(batch, n) mask with 1 for real tokens and 0 for padding."
        ) from None


def spearman(a, b, mask=None) -> np.ndarray:
    """Spearman's rank correlation along the last axis, one value per row.

    Ties get their average rank (as ``scipy.stats.spearmanr``). With a mask, each row is
    correlated over its live positions only.

    Args:
        a: scores of shape ``(..., n)`` (tensor or array).
        b: scores of the same shape ``(..., n)``.
        mask: optional, broadcastable to ``(..., n)``; True/1 marks the positions to use.

    Returns:
        float64 array of shape ``(...)``: ρ per row. A row with fewer than two live positions, or
        whose live values are constant in ``a`` or in ``b``, has no defined correlation and gives
        NaN (as scipy does); :func:`summarize` leaves NaNs out and counts them.

    Raises:
        ValueError: when the shapes differ or the mask does not broadcast.
    """
    a = _as_float_array(a, "a")
    b = _as_float_array(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape (..., n); got {a.shape} and {b.shape}.")
    live = _as_live_mask(mask, a.shape)
    if np.isnan(a[live]).any() or np.isnan(b[live]).any():
        raise ValueError(
            "scores contain NaN at live positions; attention_flow leaves rows that were not "
            "requested as NaN — compute the rows you correlate (output_positions/layers)."
        )
    # Padded positions rank above every live one, so live ranks are exactly 1..m per row.
    rank_a = rankdata(np.where(live, a, np.inf), axis=-1)
    rank_b = rankdata(np.where(live, b, np.inf), axis=-1)
    weight = live.astype(np.float64)
    count = weight.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        centred_a = (rank_a - (rank_a * weight).sum(-1, keepdims=True) / count[..., None]) * weight
        centred_b = (rank_b - (rank_b * weight).sum(-1, keepdims=True) / count[..., None]) * weight
        numerator = (centred_a * centred_b).sum(-1)
        denominator = np.sqrt((centred_a**2).sum(-1) * (centred_b**2).sum(-1))
        rho = numerator / denominator
    # Rounding in the centred sums can leave a hair outside [-1, 1] for perfectly (anti)monotone rows.
    return np.where((count < 2) | ~(denominator > 0), np.nan, np.clip(rho, -1.0, 1.0))


def blank_out_scores(
    forward_func: Callable[..., torch.Tensor],
    input_ids: torch.Tensor,
    *,
    target,
    blank_id: int,
    additional_forward_args: Any = None,
    mask: torch.Tensor | None = None,
    perturbations_per_eval: int = 1,
) -> torch.Tensor:
    """Blank-out importance: ``|p(target | x) - p(target | x with token j := blank)|`` per token.

    Uses Captum's :class:`~captum.attr.FeatureAblation` with one feature group per token position
    (``feature_mask = arange(n)``) and ``blank_id`` as the baseline, so token ``j`` alone is
    replaced in turn. Captum returns ``f(x) - f(x_j := blank)``; the paper scores its absolute
    value.

    Args:
        forward_func: ``forward_func(input_ids, *additional_forward_args)`` returning class
            probabilities ``(batch, classes)`` (apply the softmax inside: the paper blanks on
            probabilities, not logits).
        input_ids: ``(batch, n)`` integer token ids.
        target: the class whose probability is tracked: an int, or a ``(batch,)`` tensor/list of
            ints (the paper: the correct class of each example).
        blank_id: the replacement token id (the paper: ``UNK``).
        additional_forward_args: extra arguments for ``forward_func`` (e.g. the attention mask);
            tensors whose first axis is the batch are expanded by Captum when
            ``perturbations_per_eval > 1``.
        mask: optional ``(batch, n)`` padding mask, 1 for real tokens; padded positions score 0.
        perturbations_per_eval: how many token positions Captum blanks in one forward call (the
            forward then sees ``batch * perturbations_per_eval`` rows). Larger is faster.

    Returns:
        float tensor ``(batch, n)`` of non-negative blank-out scores (dtype of the probabilities).

    Raises:
        TypeError: ``input_ids`` is not an integer tensor.
        ValueError: ``input_ids`` is not ``(batch, n)``, ``mask`` has another shape, or
            ``blank_id`` is not an int.
    """
    from captum.attr import FeatureAblation

    if not isinstance(input_ids, torch.Tensor) or input_ids.is_floating_point() or input_ids.is_complex():
        raise TypeError("input_ids must be an integer torch.Tensor of token ids with shape (batch, n).")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (batch, n); got shape {tuple(input_ids.shape)}.")
    if isinstance(blank_id, bool) or not isinstance(blank_id, (int, np.integer)):
        raise ValueError(f"blank_id must be an integer token id (e.g. the [UNK] id); got {blank_id!r}.")
    if mask is not None and tuple(mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"mask must have the shape of input_ids {tuple(input_ids.shape)}; got {tuple(mask.shape)}."
        )
    feature_mask = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
    if isinstance(target, (list, tuple, np.ndarray)):
        target = torch.as_tensor(target, device=input_ids.device)
    with torch.no_grad():
        deltas = FeatureAblation(forward_func).attribute(
            input_ids,
            baselines=int(blank_id),
            target=target,
            additional_forward_args=additional_forward_args,
            feature_mask=feature_mask,
            perturbations_per_eval=perturbations_per_eval,
        )
    scores = deltas.abs().to(torch.promote_types(deltas.dtype, torch.float32))
    if mask is not None:
        scores = scores * mask.to(scores.dtype)
    return scores


def reduce_gradients(gradients: torch.Tensor, reduction: GradientReduction = "abs_sum") -> torch.Tensor:
    """Reduce an embedding gradient ``(batch, n, d)`` to one score per token ``(batch, n)``.

    Args:
        gradients: ``(batch, n, d)`` gradient with respect to the input embeddings.
        reduction: ``"abs_sum"`` = ``|Σ_d g_d|`` (the paper's code; reproduces its Table 2),
            ``"l2"`` = ``‖g‖_2``, ``"sum"`` = ``Σ_d g_d`` (signed).

    Returns:
        ``(batch, n)`` tensor.

    Raises:
        ValueError: unknown ``reduction`` or a gradient that is not 3-D.
    """
    if gradients.dim() != 3:
        raise ValueError(f"gradients must have shape (batch, n, d); got shape {tuple(gradients.shape)}.")
    check_gradient_reduction(reduction)
    if reduction == "abs_sum":
        return gradients.sum(-1).abs()
    if reduction == "l2":
        return gradients.norm(dim=-1)
    return gradients.sum(-1)


def input_gradient_scores(
    forward_func: Callable[..., torch.Tensor],
    inputs_embeds: torch.Tensor,
    *,
    target=None,
    additional_forward_args: Any = None,
    reduction: GradientReduction = "abs_sum",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Input-gradient importance per token, via Captum's :class:`~captum.attr.Saliency`.

    The gradient of the model score with respect to ``inputs_embeds`` (signed, ``abs=False``) is
    reduced per token by :func:`reduce_gradients`.

    Args:
        forward_func: ``forward_func(inputs_embeds, *additional_forward_args)`` returning either one
            score per example ``(batch,)`` (then ``target=None``; the paper: ``p(class 0) -
            p(class 1)``) or ``(batch, classes)`` scores selected by ``target``.
        inputs_embeds: ``(batch, n, d)`` float input embeddings. For models that add position
            embeddings inside (GPT-2, BERT) the gradient equals the gradient with respect to
            token + position embedding.
        target: ``None`` for a scalar-per-example ``forward_func``, else an int or ``(batch,)``.
        additional_forward_args: extra arguments for ``forward_func`` (e.g. the attention mask).
        reduction: ``"abs_sum"`` (default, the paper), ``"l2"`` or ``"sum"``.
        mask: optional ``(batch, n)`` padding mask, 1 for real tokens; padded positions score 0.

    Returns:
        ``(batch, n)`` tensor of scores (detached).

    Raises:
        TypeError: ``inputs_embeds`` is not a floating tensor.
        ValueError: wrong shapes or an unknown ``reduction``.
    """
    from captum.attr import Saliency

    if not isinstance(inputs_embeds, torch.Tensor) or not inputs_embeds.is_floating_point():
        raise TypeError("inputs_embeds must be a floating torch.Tensor of shape (batch, n, d).")
    if inputs_embeds.dim() != 3:
        raise ValueError(f"inputs_embeds must have shape (batch, n, d); got shape {tuple(inputs_embeds.shape)}.")
    check_gradient_reduction(reduction)
    if mask is not None and tuple(mask.shape) != tuple(inputs_embeds.shape[:2]):
        raise ValueError(
            f"mask must have shape (batch, n) = {tuple(inputs_embeds.shape[:2])}; got {tuple(mask.shape)}."
        )
    if isinstance(target, (list, tuple, np.ndarray)):
        target = torch.as_tensor(target, device=inputs_embeds.device)
    gradients = Saliency(forward_func).attribute(
        inputs_embeds.detach().requires_grad_(True), target=target, abs=False, additional_forward_args=additional_forward_args
    )
    scores = reduce_gradients(gradients.detach(), reduction)
    if mask is not None:
        scores = scores * mask.to(scores.dtype)
    return scores


def layer_correlations(method_scores: Mapping[str, Any], reference, mask=None) -> dict[str, np.ndarray]:
    """Spearman ρ of every method at every layer against one reference score, per example.

    Args:
        method_scores: name -> scores of shape ``(batch, L, n)`` (e.g. the ``[CLS]`` row of raw
            attention / rollout / flow at each layer: ``rollout(...)[:, :, 0, :]``).
        reference: ``(batch, n)`` reference importance (blank-out or input-gradient scores).
        mask: optional ``(batch, n)`` padding mask, 1 for real tokens.

    Returns:
        name -> float64 array ``(batch, L)`` of ρ (NaN where undefined, see :func:`spearman`).

    Raises:
        ValueError: when a method's scores are not ``(batch, L, n)`` matching ``reference``.
    """
    reference = _as_float_array(reference, "reference")
    if reference.ndim != 2:
        raise ValueError(f"reference must have shape (batch, n); got shape {reference.shape}.")
    live = _as_live_mask(mask, reference.shape)
    out = {}
    for name, scores in method_scores.items():
        scores = _as_float_array(scores, f"method_scores[{name!r}]")
        if scores.ndim != 3 or scores.shape[0] != reference.shape[0] or scores.shape[2] != reference.shape[1]:
            raise ValueError(
                f"method_scores[{name!r}] must have shape (batch, L, n) = ({reference.shape[0]}, L, "
                f"{reference.shape[1]}) to match the reference; got {scores.shape}."
            )
        out[name] = spearman(scores, np.broadcast_to(reference[:, None], scores.shape), live[:, None, :])
    return out


@dataclass(frozen=True)
class CorrelationSummary:
    """Mean ± population standard deviation of per-example correlations, per layer.

    Attributes:
        mean: ``(L,)`` mean ρ over the examples with a defined ρ.
        std: ``(L,)`` population standard deviation (``ddof=0``, as the paper's ``numpy.std``).
        count: ``(L,)`` number of examples with a defined (non-NaN) ρ.
        undefined: ``(L,)`` number of examples left out because ρ was NaN (constant scores).
    """

    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray
    undefined: np.ndarray

    def as_records(self) -> list[dict[str, float | int]]:
        """One dict per layer: ``{"layer": l (1-based), "mean", "std", "count", "undefined"}``."""
        return [
            {"layer": index + 1, "mean": float(m), "std": float(s), "count": int(c), "undefined": int(u)}
            for index, (m, s, c, u) in enumerate(zip(self.mean, self.std, self.count, self.undefined))
        ]


def summarize(correlations) -> CorrelationSummary:
    """Summarise per-example correlations ``(examples, L)`` per layer, leaving NaNs out.

    Args:
        correlations: ``(examples, L)`` array of ρ (e.g. one value of :func:`layer_correlations`),
            or ``(examples,)`` for a single layer.

    Returns:
        :class:`CorrelationSummary` with ``(L,)`` arrays; a layer with no defined ρ has NaN mean/std.
    """
    values = _as_float_array(correlations, "correlations")
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise ValueError(f"correlations must have shape (examples, L); got shape {values.shape}.")
    finite = np.isfinite(values)
    count = finite.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, values, 0.0).sum(0) / count
        std = np.sqrt(np.where(finite, (values - mean) ** 2, 0.0).sum(0) / count)
    return CorrelationSummary(mean=mean, std=std, count=count, undefined=values.shape[0] - count)
