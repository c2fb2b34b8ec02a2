"""Rollout (``R_1 = Â_1``, ``R_l = Â_l · R_{l-1}``), raw attention and appendix A.1's per-head
input attention, on the graph of :mod:`captum_attnflow.graph.build`."""

from __future__ import annotations

from typing import Sequence

import torch

from captum_attnflow.graph.build import augment_residual, prepare_graph
from captum_attnflow.graph.kernel import rollout_products
from captum_attnflow.utils.attention import check_index, restrict_to_live, to_output

#: Up to this many tokens the rollout products run as compiled loops
#: (:func:`~captum_attnflow.graph.kernel.rollout_products`) instead of one BLAS call per layer
#: (which costs more to set up than the ``n³`` work below about ``n = 48`` on a 2-core AMD EPYC).
COMPILED_PRODUCTS_MAX_N = 32

#: ``rollout_matrices(..., inplace=True)`` writes the products into a new tensor (one ``bmm`` with
#: ``out=`` per layer, no copy) up to this many entries, and over ``augmented`` above (memory).
PRODUCTS_BUFFER_MAX_ELEMENTS = 1 << 22


def rollout_matrices(augmented: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """``(batch, L, n, n)`` of ``Â_l`` -> ``(batch, L, n, n)`` of ``R_l = Â_l · R_{l-1}``.

    ``inplace=True`` lets the products overwrite ``augmented`` (no second ``L·n²`` buffer) unless
    it requires grad: then they are stacked out of place, so that the result can be differentiated.
    Without grad, float CPU tensors of at most :data:`COMPILED_PRODUCTS_MAX_N` tokens take compiled
    loops; others one ``torch.bmm`` per layer, written straight into a new tensor (``out=``) unless
    ``inplace=True`` and ``augmented`` holds more than :data:`PRODUCTS_BUFFER_MAX_ELEMENTS` entries.
    """
    if augmented.requires_grad:
        products = [augmented[:, 0]]
        for layer in range(1, augmented.shape[1]):
            products.append(torch.matmul(augmented[:, layer], products[-1]))
        return torch.stack(products, dim=1)
    small = augmented.shape[-1] <= COMPILED_PRODUCTS_MAX_N
    if small and augmented.device.type == "cpu" and augmented.dtype in (torch.float32, torch.float64):
        out = augmented if inplace else augmented.clone()
        work = out.contiguous()  # a view (head_rollout's first layers) is copied, then written back
        rollout_products(work.numpy())
        return out if work is out else out.copy_(work)
    with torch.no_grad():  # with grad mode on, torch's matmul of these strided views is ~100x slower on CPU
        if inplace and augmented.numel() > PRODUCTS_BUFFER_MAX_ELEMENTS:
            out = augmented
            for layer in range(1, out.shape[1]):
                out[:, layer] = torch.bmm(out[:, layer], out[:, layer - 1])  # bmm: matmul's reshaping costs µs per call
            return out
        result = torch.empty_like(augmented, memory_format=torch.contiguous_format)
        result[:, 0] = augmented[:, 0]
        for layer in range(1, augmented.shape[1]):
            torch.bmm(augmented[:, layer], result[:, layer - 1], out=result[:, layer])
    return result


def rollout(
    attentions,
    *,
    residual: bool = True,
    head_fusion: str = "mean",
    mask=None,
    renormalize: bool = False,
    discard_ratio: float = 0.0,
    protected_tokens: int | Sequence[int] = 0,
):
    """Attention rollout (Abnar & Zuidema 2020, §3).

    ``R_1 = Â_1``, ``R_l = Â_l · R_{l-1}`` with ``Â_l = rownorm(fuse_h A_l[h] + I)`` (the module
    docstring states every step).

    Args:
        attentions: ``L`` tensors (or numpy arrays) of shape ``(batch, heads, n, n)``, first layer
            first — Hugging Face's ``output_attentions``. A single head with
            ``head_fusion="max"``/``"min"`` is taken as attention already fused that way.
        residual: model the residual connection, ``Â = rownorm(F + I)``; ``False`` uses
            ``rownorm(F)``.
        head_fusion: ``"mean"`` (the paper), ``"max"`` or ``"min"`` over heads.
        mask: optional ``(batch, n)`` padding mask of 0/1 or bools, 1/True for real tokens.
            Padded tokens get exactly 0 attribution and their own rows are 0.
        renormalize: divide attention rows by their sums instead of rejecting rows that do not
            sum to 1.
        discard_ratio: vit-explain's option, ``0 ≤ r < 1``: per example and layer, after head
            fusion and before the residual, zero the ``⌊r·m⌋`` smallest of the ``m`` fused
            entries whose row and column are real tokens outside ``protected_tokens`` (ties:
            first in row-major order first). ``0`` (default) keeps everything.
        protected_tokens: token index or indices whose row and column ``discard_ratio`` never
            touches. Default ``0``: the first token (``[CLS]`` of BERT and ViT).

    Returns:
        ``(batch, L, n, n)`` — ``out[b, l-1, i, j]`` is the rollout attribution of output position
        ``i`` at layer ``l`` to input token ``j``; live rows sum to 1. Same dtype and device as the
        input (numpy in, numpy out); differentiable when the input requires grad.
    """
    augmented, _, _, output_format = prepare_graph(
        attentions, residual=residual, head_fusion=head_fusion, mask=mask, renormalize=renormalize,
        discard_ratio=discard_ratio, protected_tokens=protected_tokens,
    )
    return to_output(rollout_matrices(augmented, inplace=True), output_format)


def raw_attention(attentions, *, head_fusion: str = "mean", mask=None, renormalize: bool = False):
    """Raw attention per layer, heads fused: ``(batch, L, n, n)`` of ``rownorm(F_l)``.

    Padded keys and queries are zeroed and live rows normalised (no residual).
    """
    fused, _, _, output_format = prepare_graph(
        attentions, residual=False, head_fusion=head_fusion, mask=mask, renormalize=renormalize
    )
    return to_output(fused, output_format)


def head_graph(
    layers: Sequence[torch.Tensor],
    layer: int,
    *,
    residual: bool,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """The per-head top layer of appendix A.1: ``(batch, heads, n, n)`` of ``rownorm(A_l[h] + I)``.

    ``layers`` are the validated raw ``(batch, heads, n, n)`` tensors; ``layer`` is 0-based. Each
    head's matrix is masked, given the residual and row-normalised exactly like a fused layer.
    """
    if layers is None:  # prepare_graph of a ContributionGraph
        raise ValueError("head= (appendix A.1) is defined on the attention graph only; pass head=None or graph='attention'.")
    attention = restrict_to_live(layers[layer].unsqueeze(1), mask, first_layer=layer)[:, 0]
    return augment_residual(attention, residual=residual, mask=mask)


def head_rollout(
    attentions,
    *,
    layer: int,
    head: int | None = None,
    residual: bool = True,
    head_fusion: str = "mean",
    mask=None,
    renormalize: bool = False,
):
    """Per-head "input attention" by rollout (appendix A.1).

    Every layer below ``layer`` is treated as single-head (heads fused with ``head_fusion``, with
    the residual) and rolled out; head ``h`` of ``layer`` goes on top, with the residual:
    ``rownorm(A_l[h] + I) · R_{l-1}`` (``R_0 = I``). The paper leaves the residual open; we include it on the
    top head (``residual=False`` drops it everywhere), so that ``mean_h`` of the result equals
    ordinary rollout at ``layer`` when ``head_fusion="mean"``.

    Args:
        layer: 0-based layer index (negative counts from the end).
        head: one head, or ``None`` for all heads.

    Returns:
        ``(batch, heads, n, n)`` (``heads = 1`` when ``head`` is given); live rows sum to 1.
    """
    augmented, layers, mask, output_format = prepare_graph(
        attentions, residual=residual, head_fusion=head_fusion, mask=mask, renormalize=renormalize
    )
    if layers is None:  # a ContributionGraph: head_graph says why
        head_graph(None, layer, residual=residual, mask=mask)
    num_layers, num_heads = len(layers), layers[0].shape[1]
    layer = check_index(layer, num_layers, "layer", "layers")
    top = head_graph(layers, layer, residual=residual, mask=mask)
    if head is not None:
        head = check_index(head, num_heads, "head", "heads")
        top = top[:, head : head + 1]
    if layer == 0:
        return to_output(top, output_format)
    below = rollout_matrices(augmented[:, :layer], inplace=True)[:, -1]  # (batch, n, n)
    return to_output(torch.matmul(top, below.unsqueeze(1)), output_format)
