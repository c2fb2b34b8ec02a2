"""The attention graph: head fusion, residual augmentation, masks, discarding and rollout.

Pure tensor functions, no hooks and no models. Notation follows Abnar & Zuidema (2020): an input
of ``n`` tokens, ``L`` attention layers, ``H`` heads; ``A_l[h]`` is the ``n × n`` row-stochastic
attention of head ``h`` in layer ``l`` (row = query / output position, column = key / input
position). The graph matrix of layer ``l`` is, in this order:

1. **mask** (optional ``(batch, n)`` padding mask ``m``): each head is restricted to the real keys
   and its rows renormalised, ``A_l[h][i, j] ← m_j·A_l[h][i, j] / Σ_k m_k·A_l[h][i, k]`` (a model
   that masks its padding already gives 0 there, so this changes nothing for it); rows and
   columns of padded tokens are 0 in every matrix below.
2. **head fusion** ``F_l = fuse_h A_l[h]``, elementwise mean, max or min over heads. For
   ``"max"``/``"min"`` the rows of ``F_l`` do not sum to 1 (max: ≥ 1, min: ≤ 1).
3. **discard** (rollout only, ``discard_ratio = r > 0``): in each example, among the entries
   ``F_l[i, j]`` with ``i`` and ``j`` real tokens and neither in ``protected_tokens``
   (``m`` candidates), the ``⌊r·m⌋`` smallest are set to 0 (ties: the one first in row-major
   order goes first).
4. **residual** ``Â_l = rownorm(F_l + I)``: the identity is added to the fused attention *before*
   the rows are normalised, for every fusion. For mean fusion (rows of ``F_l`` sum to 1) this is
   ``0.5·F_l + 0.5·I``; for max/min it is not ``0.5·rownorm(F_l) + 0.5·I``. ``residual=False``
   gives ``rownorm(F_l)``.

* rollout          ``R_1 = Â_1``,  ``R_l = Â_l · R_{l-1}``
* input attention  (appendix A.1) of head ``h`` at layer ``l``: ``rownorm(A_l[h] + I) · R_{l-1}``

Attention already fused with max/min (one head, e.g. recorded by
``AttentionRecorder(head_fusion="max")`` or the attribution classes) is accepted when the same
``head_fusion`` is passed: a single-head input with ``head_fusion="max"``/``"min"`` is taken as
``F_l`` itself, so its rows must sum to ≥ 1 / ≤ 1 (within :data:`ROW_SUM_TOLERANCE`) instead of 1,
and the mask only zeroes its padded entries (step 1's renormalisation needs the heads).

Every public function accepts a sequence of ``L`` tensors of shape ``(batch, heads, n, n)`` —
Hugging Face's ``output_attentions`` format — or numpy arrays, in which case it returns numpy.
The result has the input's floating dtype (float16 and bfloat16 are computed in float32; float64
stays float64). Inputs that require grad give a differentiable result.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from captum_attnflow.graph.contributions import ContributionGraph
from captum_attnflow.graph.kernel import mean_residual_block
from captum_attnflow.utils.attention import (
    ROW_SUM_TOLERANCE,
    OutputFormat,
    attention_layers,
    as_mask,
    check_attention_values,
    check_head_fusion,
    check_index,
    fuse_heads,
    restrict_to_live,
)

#: Layers are validated and fused in blocks of at most this many attention weights (a few MB), so
#: small inputs cost a handful of tensor operations in total and large ones stay layer by layer.
BLOCK_ELEMENTS = 1 << 16


def augment_residual(
    attention: torch.Tensor, *, residual: bool = True, mask: torch.Tensor | None = None, owned: bool = False
) -> torch.Tensor:
    """Mask, then ``Â = rownorm(F + I)`` (``rownorm(F)`` without the residual) on live tokens.

    Args:
        attention: ``(batch, ..., n, n)`` fused attention ``F`` (any number of middle axes).
        residual: add the identity before normalising the rows (``False``: only normalise).
        mask: ``(batch, n)`` bool, ``True`` for real tokens.
        owned: ``attention`` is a temporary of the caller's and may be modified in place.

    Returns:
        ``(batch, ..., n, n)``: padded rows and columns are exactly 0, every live row sums to 1.

    Raises:
        ValueError: when, without the residual, a live row has no weight on live keys.
    """
    n = attention.shape[-1]
    if mask is not None:
        shape = (mask.shape[0],) + (1,) * (attention.dim() - 3) + (n,)
        live = mask.reshape(shape).to(attention.dtype)  # (batch, ..., n)
        attention = attention * live.unsqueeze(-2) * live.unsqueeze(-1)
    owned = (owned or mask is not None) and not attention.requires_grad  # in place only off the autograd graph
    if residual:
        if mask is None and not owned:
            attention = attention + torch.eye(n, dtype=attention.dtype, device=attention.device)
        elif not owned:
            attention = attention + torch.diag_embed(live)
        elif mask is None:
            attention.diagonal(dim1=-2, dim2=-1).add_(1.0)  # a tensor made by the caller for this
        else:
            attention.diagonal(dim1=-2, dim2=-1).add_(live)  # ``attention`` is the masked copy
    sums = attention.sum(-1, keepdim=True)
    if not residual:
        dead = sums[..., 0] <= 0
        if mask is not None:
            dead = dead & live.bool()
        if dead.any():
            index = dead.nonzero()[0].tolist()
            raise ValueError(
                f"attention row {index[-1]} (batch {index[0]}) has no weight on any unmasked key "
                f"(after discard_ratio, if given); without the residual it cannot be normalised. "
                f"Check that the mask marks real tokens with 1, or use residual=True."
            )
    if mask is not None or not residual:
        sums = sums.clamp_min(torch.finfo(attention.dtype).tiny)  # padded rows: 0 / tiny = 0
    if owned:
        return attention.div_(sums)
    return attention / sums


def check_discard(discard_ratio: float, protected_tokens, n: int) -> list[int]:
    """Validate ``discard_ratio`` (``0 ≤ r < 1``) and ``protected_tokens``; return the token indices."""
    if isinstance(discard_ratio, bool) or not isinstance(discard_ratio, (int, float, np.integer, np.floating)):
        raise TypeError(f"discard_ratio must be a number in [0, 1); got {type(discard_ratio).__name__}.")
    if not 0 <= discard_ratio < 1:  # also refuses NaN
        raise ValueError(
            f"discard_ratio={discard_ratio} is out of range: pass a fraction 0 <= discard_ratio < 1 of "
            f"the fused attention entries to zero per layer (0 keeps them all)."
        )
    if isinstance(protected_tokens, (int, np.integer)) and not isinstance(protected_tokens, bool):
        protected_tokens = [protected_tokens]
    if not isinstance(protected_tokens, Sequence) or isinstance(protected_tokens, str):
        raise TypeError(
            f"protected_tokens must be a token index or a sequence of them (default 0, [CLS]); got "
            f"{type(protected_tokens).__name__}."
        )
    return sorted({check_index(token, n, "protected_tokens", "tokens") for token in protected_tokens})


def discard_lowest(
    fused: torch.Tensor, discard_ratio: float, protected: Sequence[int], mask: torch.Tensor | None
) -> torch.Tensor:
    """Zero the lowest ``discard_ratio`` fraction of each fused matrix (step 3 of the module docstring).

    Args:
        fused: ``(batch, c, n, n)`` fused attention of ``c`` layers.
        discard_ratio: ``0 ≤ r < 1``; per example and layer the ``⌊r·m⌋`` smallest of the ``m``
            candidate entries (rows and columns both real tokens, neither in ``protected``) are
            zeroed, ties broken by row-major position (the first goes first).
        protected: token indices whose row and column are never zeroed.
        mask: ``(batch, n)`` bool or None; padded entries are never candidates.

    Returns:
        ``(batch, c, n, n)``.
    """
    batch, _, n, _ = fused.shape
    candidate = torch.ones(n, n, dtype=torch.bool, device=fused.device)
    candidate[protected, :] = False
    candidate[:, protected] = False
    candidate = candidate.expand(batch, 1, n, n)
    if mask is not None:
        candidate = candidate & mask[:, None, :, None] & mask[:, None, None, :]
    count = candidate.flatten(1).sum(-1)  # (batch,)
    keep_count = torch.floor(count.to(torch.float64) * float(discard_ratio)).long()  # ⌊r·m⌋
    values = fused.masked_fill(~candidate, float("inf")).flatten(2)  # (batch, c, n²)
    order = values.argsort(dim=-1, stable=True)
    positions = torch.arange(n * n, device=fused.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)
    drop = rank < keep_count[:, None, None]
    return fused.masked_fill(drop.view_as(fused), 0.0)


def layer_blocks(layers: Sequence[torch.Tensor]) -> Iterator[tuple[int, torch.Tensor]]:
    """The layers in blocks of at most :data:`BLOCK_ELEMENTS` weights (at least one layer each).

    Yields:
        ``(start, block)``: ``block`` ``(batch, c, heads, n, n)`` holds layers ``start`` to
        ``start + c - 1``, stacked (a copy) or, for one layer, a view of it.
    """
    step = max(1, BLOCK_ELEMENTS // layers[0].numel())
    for start in range(0, len(layers), step):
        chunk = layers[start : start + step]
        yield start, chunk[0].unsqueeze(1) if len(chunk) == 1 else torch.stack(chunk, dim=1)


def prepare_graph(
    attentions,
    *,
    residual: bool = True,
    head_fusion: str = "mean",
    mask=None,
    renormalize: bool = False,
    discard_ratio: float = 0.0,
    protected_tokens: int | Sequence[int] = 0,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None, OutputFormat]:
    """Validate inputs and build the per-layer graph matrices ``Â_l`` (module docstring, steps 1–4).

    Layers are validated and fused in blocks of at most :data:`BLOCK_ELEMENTS` weights: all at
    once for small inputs, one at a time for large ones (heads are never stacked across layers
    beyond that).

    ``attentions`` may be a :class:`~captum_attnflow.graph.contributions.ContributionGraph`
    instead (:func:`contribution_graph_matrices`; ``layers`` is then None).

    Returns:
        ``(augmented, layers, mask, output_format)``: ``augmented`` is ``(batch, L, n, n)`` with
        ``augmented[:, l-1] = Â_l``; ``layers`` the validated attention (renormalised with
        ``renormalize=True``, not yet masked: see :func:`head_graph`), ``L`` tensors
        ``(batch, heads, n, n)``; ``mask`` a bool ``(batch, n)`` or None; ``output_format`` for
        :func:`to_output`.
    """
    if isinstance(attentions, ContributionGraph):
        return contribution_graph_matrices(
            attentions, residual=residual, head_fusion=head_fusion, mask=mask, discard_ratio=discard_ratio,
            protected_tokens=protected_tokens,
        )
    check_head_fusion(head_fusion)
    layers, output_format = attention_layers(attentions)
    batch, heads, n, _ = layers[0].shape
    mask = as_mask(mask, batch=batch, n=n, device=layers[0].device)
    protected = check_discard(discard_ratio, protected_tokens, n)
    if residual and head_fusion == "mean" and mask is None and not renormalize and discard_ratio == 0:
        augmented = mean_residual_graph(layers)  # the paper's graph in one compiled pass
        if augmented is not None:
            return augmented, layers, mask, output_format
    fused_input = head_fusion if heads == 1 and head_fusion != "mean" and not renormalize else None
    augmented = None
    grad = torch.is_grad_enabled() and any(layer.requires_grad for layer in layers)
    for start, block in layer_blocks(layers):
        chunk = layers[start : start + block.shape[1]]
        with torch.set_grad_enabled(grad):  # no autograd bookkeeping for inputs without grad
            block = check_attention_values(block, mask, renormalize=renormalize, fused=fused_input, first_layer=start)
            if renormalize:
                layers[start : start + len(chunk)] = block.unbind(1)
            fused = fuse_heads(restrict_to_live(block, mask, fused=fused_input, first_layer=start), head_fusion)
            if discard_ratio > 0:
                fused = discard_lowest(fused, discard_ratio, protected, mask)
            matrices = augment_residual(fused, residual=residual, mask=mask, owned=True)
        if len(chunk) == len(layers):
            augmented = matrices
        else:
            if augmented is None:
                augmented = matrices.new_empty(batch, len(layers), n, n)
            augmented[:, start : start + len(chunk)] = matrices
    return augmented, layers, mask, output_format


def contribution_graph_matrices(
    graph: ContributionGraph, *, residual: bool, head_fusion: str, mask, discard_ratio: float = 0.0,
    protected_tokens: int | Sequence[int] = 0,
) -> tuple[torch.Tensor, None, torch.Tensor | None, OutputFormat]:
    """``Â_l`` of a contribution graph: ``rownorm(M_l + I)`` when ``residual`` and the residual is
    not inside ``M_l``, else ``M_l`` (renormalised on live tokens); ``discard_ratio`` zeroes the
    smallest entries of ``M_l`` first, as for fused attention. See :mod:`~captum_attnflow.graph.contributions`.

    Raises:
        ValueError: ``head_fusion`` other than ``"mean"`` (the heads are summed inside the
            contributions already), or matrices that are not ``(batch, L, n, n)``, finite and >= 0.
    """
    if head_fusion != "mean":
        raise ValueError(
            f"head_fusion={head_fusion!r} fuses attention heads; a {graph.name!r} graph sums the heads inside "
            f"its contributions already. Pass head_fusion='mean' (or graph='attention')."
        )
    matrices = graph.matrices
    if not isinstance(matrices, torch.Tensor) or matrices.dim() != 4 or matrices.shape[-1] != matrices.shape[-2]:
        shape = tuple(matrices.shape) if isinstance(matrices, torch.Tensor) else type(matrices).__name__
        raise ValueError(f"ContributionGraph.matrices must be a (batch, L, n, n) tensor; got {shape}.")
    if not matrices.is_floating_point() or not bool(torch.isfinite(matrices).all()) or bool((matrices < 0).any()):
        raise ValueError("ContributionGraph.matrices must be finite, non-negative floats.")
    batch, _, n, _ = matrices.shape
    mask = as_mask(mask, batch=batch, n=n, device=matrices.device)
    protected = check_discard(discard_ratio, protected_tokens, n)
    if discard_ratio > 0:
        matrices = discard_lowest(matrices, discard_ratio, protected, mask)
    add_identity = residual and not graph.residual_included
    augmented = augment_residual(matrices, residual=add_identity, mask=mask)
    return augmented, None, mask, OutputFormat(False, matrices.dtype)


def mean_residual_graph(layers: list[torch.Tensor]) -> torch.Tensor | None:
    """The paper's graph ``Â_l = rownorm(mean_h A_l[h] + I)`` in one compiled pass, or None.

    The fast path of :func:`prepare_graph` (mean fusion, residual, no mask, renormalisation or
    discard; so of rollout and flow): :func:`~captum_attnflow.graph.kernel.mean_residual_block`, called once per block of
    :func:`layer_blocks` (all layers at once for small inputs), reads each weight once,
    rejecting negative weights and rows of any head whose sum is NaN, infinite or further than
    :data:`ROW_SUM_TOLERANCE` from 1 (the checks of :func:`check_attention_values`), where
    :func:`prepare_graph` makes four passes.

    Args:
        layers: ``L`` validated tensors ``(batch, heads, n, n)`` of one float dtype (from
            :func:`attention_layers`).

    Returns:
        ``(batch, L, n, n)``; None when the layers are not on the CPU, require grad, or fail a
        check: the caller then takes :func:`prepare_graph`, whose error names the problem.
    """
    first = layers[0]
    if first.device.type != "cpu" or any(layer.requires_grad for layer in layers):
        return None
    batch, _, n, _ = first.shape
    augmented = torch.empty(batch, len(layers), n, n, dtype=first.dtype)
    target = augmented.numpy()
    low, high = 1 - ROW_SUM_TOLERANCE, 1 + ROW_SUM_TOLERANCE
    for start, block in layer_blocks(layers):
        if not mean_residual_block(block.contiguous().numpy(), target, start, low, high):
            return None
    return augmented
