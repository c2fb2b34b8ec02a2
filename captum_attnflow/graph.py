"""The attention graph: head fusion, residual augmentation, masks and rollout.

Pure tensor functions, no hooks and no models. Notation follows Abnar & Zuidema (2020) and
``DESIGN.md``: an input of ``n`` tokens, ``L`` attention layers, ``H`` heads; ``A_l[h]`` is the
``n × n`` row-stochastic attention of head ``h`` in layer ``l`` (row = query / output position,
column = key / input position).

* head fusion      ``A_l = fuse_h A_l[h]``  (mean, max or min over heads)
* residual         ``Â_l = rownorm(A_l + I)``  (= ``0.5·A_l + 0.5·I`` for row-stochastic ``A_l``)
* rollout          ``R_1 = Â_1``,  ``R_l = Â_l · R_{l-1}``
* input attention  (appendix A.1) of head ``h`` at layer ``l``: ``Â_l[h] · R_{l-1}``

Every public function accepts a sequence of ``L`` tensors of shape ``(batch, heads, n, n)`` —
Hugging Face's ``output_attentions`` format — or numpy arrays, in which case it returns numpy.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch

HeadFusion = Literal["mean", "max", "min"]
HEAD_FUSIONS: tuple[str, ...] = ("mean", "max", "min")

#: How far a row of attention may sum from 1 before it is rejected (softmax in float16/bfloat16
#: and HF's finite "minus infinity" masks stay well inside this).
ROW_SUM_TOLERANCE = 1e-2


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def attention_layers(attentions, *, name: str = "attentions") -> tuple[list[torch.Tensor], bool]:
    """Validate ``attentions`` and return them as a list of per-layer tensors (no copy).

    Args:
        attentions: a sequence of ``L`` tensors or arrays of shape ``(batch, heads, n, n)``, or one
            tensor/array of shape ``(batch, L, heads, n, n)``.

    Returns:
        ``(layers, was_numpy)``: ``L`` tensors ``(batch, heads, n, n)`` of one floating dtype
        (float64 if any layer is float64, else float32), on one device.

    Raises:
        TypeError, ValueError: with a message naming the problem.
    """
    if isinstance(attentions, (torch.Tensor, np.ndarray)):
        was_numpy = isinstance(attentions, np.ndarray)
        stack = torch.as_tensor(attentions)
        if stack.dim() != 5:
            raise ValueError(
                f"{name} given as one array must have shape (batch, layers, heads, n, n); got "
                f"shape {tuple(stack.shape)}. Pass a list of per-layer (batch, heads, n, n) "
                f"tensors instead (Hugging Face's output_attentions format)."
            )
        if stack.shape[1] == 0:
            raise ValueError(f"{name} is empty: no attention layers were given.")
        layers = list(stack.unbind(1))
    elif isinstance(attentions, Sequence) and not isinstance(attentions, (str, bytes)):
        if len(attentions) == 0:
            raise ValueError(f"{name} is empty: no attention layers were given.")
        was_numpy = False
        layers = []
        for index, layer in enumerate(attentions):
            if isinstance(layer, np.ndarray):
                was_numpy = True
            elif not isinstance(layer, torch.Tensor):
                raise TypeError(
                    f"{name}[{index}] is a {type(layer).__name__}; expected a torch.Tensor or "
                    f"numpy array of shape (batch, heads, n, n)."
                )
            layers.append(torch.as_tensor(layer))
    else:
        raise TypeError(
            f"{name} must be a sequence of (batch, heads, n, n) tensors or arrays; got "
            f"{type(attentions).__name__}."
        )
    first = layers[0]
    for index, layer in enumerate(layers):
        if layer.dim() != 4:
            hint = " (add the head axis with .unsqueeze(1))" if layer.dim() == 3 else ""
            raise ValueError(
                f"{name}[{index}] must have shape (batch, heads, n, n); got shape "
                f"{tuple(layer.shape)}{hint}."
            )
        if layer.shape[-1] != layer.shape[-2]:
            raise ValueError(
                f"{name}[{index}] is not square: shape {tuple(layer.shape)}; self-attention "
                f"needs (batch, heads, n, n). Cross-attention cannot be rolled out."
            )
        if layer.shape != first.shape:
            raise ValueError(
                f"{name}[{index}] has shape {tuple(layer.shape)} but {name}[0] has shape "
                f"{tuple(first.shape)}; every layer needs the same (batch, heads, n, n)."
            )
        if layer.device != first.device:
            raise ValueError(f"{name}[{index}] is on {layer.device}, {name}[0] on {first.device}.")
    if first.shape[-1] == 0:
        raise ValueError(f"{name} describes an empty sequence (n = 0 tokens).")
    if first.shape[0] == 0 or first.shape[1] == 0:
        raise ValueError(f"{name} has an empty batch or head axis: shape {tuple(first.shape)}.")
    dtype = torch.float64 if any(layer.dtype == torch.float64 for layer in layers) else torch.float32
    return [layer.to(dtype) for layer in layers], was_numpy


def as_attention_stack(attentions, *, name: str = "attentions") -> tuple[torch.Tensor, bool]:
    """Validate ``attentions`` (see :func:`attention_layers`) and stack them.

    Returns:
        ``(stack, was_numpy)`` with ``stack`` of shape ``(batch, L, heads, n, n)``.
    """
    layers, was_numpy = attention_layers(attentions, name=name)
    return torch.stack(layers, dim=1), was_numpy


def as_mask(mask, *, batch: int, n: int, device: torch.device) -> torch.Tensor | None:
    """Validate a padding mask: ``(batch, n)``, truthy/1 = real token, falsy/0 = padding."""
    if mask is None:
        return None
    mask = torch.as_tensor(mask, device=device)
    if mask.dim() != 2 or tuple(mask.shape) != (batch, n):
        raise ValueError(
            f"mask must have shape (batch, n) = ({batch}, {n}) with 1 for real tokens and 0 for "
            f"padding (Hugging Face's attention_mask); got shape {tuple(mask.shape)}."
        )
    mask = mask.bool()
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"mask leaves no real token in batch example(s) {empty}.")
    return mask


def check_attention_values(
    attention: torch.Tensor, mask: torch.Tensor | None, *, renormalize: bool, layer: int = 0
) -> torch.Tensor:
    """Reject NaN/inf/negative attention and rows that do not sum to 1.

    ``attention`` is one layer, ``(batch, heads, n, n)``; ``layer`` only names it in messages.
    Rows of padded queries are not checked. With ``renormalize=True`` rows are divided by their
    sums instead of being checked.
    """
    row_sums = attention.sum(-1)  # (batch, heads, n); a NaN or inf anywhere makes its row's sum non-finite
    finite_sums = torch.isfinite(row_sums)
    if not finite_sums.all():
        bad = (~torch.isfinite(attention)).nonzero()
        if len(bad):
            b, h, i, j = bad[0].tolist()
            raise ValueError(
                f"attention contains NaN or inf (first at batch {b}, layer {layer}, head {h}, row {i}, "
                f"column {j}). Check the model's dtype (fp16 overflow) and its masks."
            )
    if attention.amin() < 0:
        raise ValueError(
            f"attention of layer {layer} contains negative weights; attention flow and rollout need "
            f"non-negative, row-stochastic matrices (softmax outputs)."
        )
    live = torch.ones_like(finite_sums) if mask is None else mask[:, None, :].expand_as(row_sums)
    if renormalize:
        zero = ((row_sums <= 0) | ~finite_sums) & live
        if zero.any():
            b, h, i = zero.nonzero()[0].tolist()
            raise ValueError(f"attention row {i} of batch {b}, layer {layer}, head {h} is all zero or overflows; cannot renormalize.")
        return attention / row_sums.clamp_min(torch.finfo(attention.dtype).tiny).unsqueeze(-1)
    off = ~((row_sums - 1).abs() <= ROW_SUM_TOLERANCE) & live  # also catches sums that overflow
    if off.any():
        b, h, i = off.nonzero()[0].tolist()
        raise ValueError(
            f"attention row {i} of batch {b}, layer {layer}, head {h} sums to "
            f"{row_sums[b, h, i].item():.4g}, not 1. Attention must be row-stochastic "
            f"(softmax over keys); pass renormalize=True to divide rows by their sums."
        )
    return attention


# --------------------------------------------------------------------------------------------
# The pieces of the graph
# --------------------------------------------------------------------------------------------


def check_head_fusion(head_fusion: str) -> None:
    """Raise a ValueError naming the choices unless ``head_fusion`` is one of :data:`HEAD_FUSIONS`."""
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"unknown head_fusion {head_fusion!r}; choose one of {HEAD_FUSIONS}.")


def fuse_heads(attention: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """Fuse the head axis: ``(..., heads, n, n) -> (..., n, n)`` by mean, max or min."""
    check_head_fusion(head_fusion)
    if head_fusion == "mean":
        return attention.mean(dim=-3)
    if head_fusion == "max":
        return attention.amax(dim=-3)
    return attention.amin(dim=-3)


def augment_residual(attention: torch.Tensor, *, residual: bool = True, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Apply padding mask and residual connection: ``Â = rownorm(A + I)`` on live tokens.

    Args:
        attention: ``(batch, ..., n, n)`` fused attention (any number of middle axes).
        residual: add the identity before renormalising (``False``: only mask and renormalise).
        mask: ``(batch, n)`` bool, ``True`` for real tokens.

    Returns:
        ``(batch, ..., n, n)``: padded rows and columns are exactly 0, every live row sums to 1.

    Raises:
        ValueError: when a live row has no attention left on live keys (nothing to renormalise).
    """
    if mask is not None:
        shape = (mask.shape[0],) + (1,) * (attention.dim() - 3) + (mask.shape[1],)
        key_mask = mask.reshape(shape).unsqueeze(-2).to(attention.dtype)  # (batch,...,1,n)
        query_mask = mask.reshape(shape).unsqueeze(-1).to(attention.dtype)  # (batch,...,n,1)
        attention = attention * key_mask * query_mask
    sums = attention.sum(-1, keepdim=True)
    live_rows = torch.ones_like(sums, dtype=torch.bool) if mask is None else query_mask.bool()
    dead = (sums <= 0) & live_rows
    if dead.any():
        index = dead.nonzero()[0].tolist()
        raise ValueError(
            f"attention row {index[-2]} (batch {index[0]}) has no weight on any unmasked key: the "
            f"mask zeroes the whole row. Check that the mask marks real tokens with 1 and that "
            f"the attention was recorded with the same mask."
        )
    if residual:
        eye = torch.eye(attention.shape[-1], dtype=attention.dtype, device=attention.device)
        if mask is not None:
            eye = eye * query_mask
        attention = attention / sums.clamp_min(torch.finfo(attention.dtype).tiny) + eye
        sums = attention.sum(-1, keepdim=True)
    return attention / sums.clamp_min(torch.finfo(attention.dtype).tiny)


def prepare_graph(
    attentions,
    *,
    residual: bool = True,
    head_fusion: str = "mean",
    mask=None,
    renormalize: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None, bool]:
    """Validate inputs and build the per-layer graph matrices, one layer at a time.

    Memory stays at the input plus the ``(batch, L, n, n)`` result: heads are fused layer by
    layer, never stacked.

    Returns:
        ``(augmented, layers, mask, was_numpy)``: ``augmented`` is ``(batch, L, n, n)`` with
        ``augmented[:, l-1] = Â_l`` (fused, masked, residual, row-normalised); ``layers`` the
        validated raw attention, ``L`` tensors ``(batch, heads, n, n)``; ``mask`` a bool
        ``(batch, n)`` or None.
    """
    check_head_fusion(head_fusion)
    layers, was_numpy = attention_layers(attentions)
    batch, _, n, _ = layers[0].shape
    mask = as_mask(mask, batch=batch, n=n, device=layers[0].device)
    augmented = torch.empty(batch, len(layers), n, n, dtype=layers[0].dtype, device=layers[0].device)
    for index, attention in enumerate(layers):
        layers[index] = check_attention_values(attention, mask, renormalize=renormalize, layer=index)
        augmented[:, index] = augment_residual(fuse_heads(layers[index], head_fusion), residual=residual, mask=mask)
    return augmented, layers, mask, was_numpy


def to_output(result: torch.Tensor, was_numpy: bool):
    """Return numpy when the caller passed numpy, else the tensor."""
    return result.detach().cpu().numpy() if was_numpy else result


def check_index(value: int, size: int, name: str, what: str) -> int:
    """Resolve a possibly negative index into ``range(size)`` or raise a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}.")
    if not -size <= value < size:
        raise ValueError(f"{name}={value} is out of range: there are {size} {what} (valid: {-size}..{size - 1}).")
    return int(value) % size


# --------------------------------------------------------------------------------------------
# Rollout
# --------------------------------------------------------------------------------------------


def rollout_matrices(augmented: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """``(batch, L, n, n)`` of ``Â_l`` -> ``(batch, L, n, n)`` of ``R_l = Â_l · R_{l-1}``.

    ``inplace=True`` overwrites ``augmented`` (no second ``L·n²`` buffer).
    """
    out = augmented if inplace else augmented.clone()
    for layer in range(1, out.shape[1]):
        out[:, layer] = torch.matmul(out[:, layer], out[:, layer - 1])
    return out


def rollout(
    attentions,
    *,
    residual: bool = True,
    head_fusion: str = "mean",
    mask=None,
    renormalize: bool = False,
):
    """Attention rollout (Abnar & Zuidema 2020, §3).

    ``R_1 = Â_1``, ``R_l = Â_l · R_{l-1}`` with ``Â_l = rownorm(fuse_h A_l[h] + I)``.

    Args:
        attentions: ``L`` tensors (or numpy arrays) of shape ``(batch, heads, n, n)``, first layer
            first — Hugging Face's ``output_attentions``.
        residual: model the residual connection (``Â = 0.5·A + 0.5·I``); ``False`` uses ``A``.
        head_fusion: ``"mean"`` (the paper), ``"max"`` or ``"min"`` over heads.
        mask: optional ``(batch, n)`` padding mask, 1/True for real tokens. Padded tokens get
            exactly 0 attribution and their own rows are 0.
        renormalize: divide attention rows by their sums instead of rejecting rows that do not
            sum to 1.

    Returns:
        ``(batch, L, n, n)`` — ``out[b, l-1, i, j]`` is the rollout attribution of output position
        ``i`` at layer ``l`` to input token ``j``; live rows sum to 1. Same dtype and device as the
        input (numpy in, numpy out).
    """
    augmented, _, _, was_numpy = prepare_graph(
        attentions, residual=residual, head_fusion=head_fusion, mask=mask, renormalize=renormalize
    )
    return to_output(rollout_matrices(augmented, inplace=True), was_numpy)


def raw_attention(attentions, *, head_fusion: str = "mean", mask=None, renormalize: bool = False):
    """Raw attention per layer, heads fused: ``(batch, L, n, n)``.

    Padded keys and queries are zeroed and live rows renormalised (no residual).
    """
    fused, _, _, was_numpy = prepare_graph(
        attentions, residual=False, head_fusion=head_fusion, mask=mask, renormalize=renormalize
    )
    return to_output(fused, was_numpy)


def head_graph(
    layers: Sequence[torch.Tensor],
    layer: int,
    *,
    residual: bool,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """The per-head top layer of appendix A.1: ``(batch, heads, n, n)`` of ``Â_l[h]``.

    ``layers`` are the validated raw ``(batch, heads, n, n)`` tensors; ``layer`` is 0-based. Each
    head's matrix is masked, given the residual and row-normalised exactly like a fused layer.
    """
    return augment_residual(layers[layer], residual=residual, mask=mask)


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
    ``Â_l[h] · R_{l-1}`` (``R_0 = I``). The paper leaves the residual open; we include it on the
    top head (``residual=False`` drops it everywhere), so that ``mean_h`` of the result equals
    ordinary rollout at ``layer`` when ``head_fusion="mean"``.

    Args:
        layer: 0-based layer index (negative counts from the end).
        head: one head, or ``None`` for all heads.

    Returns:
        ``(batch, heads, n, n)`` (``heads = 1`` when ``head`` is given); live rows sum to 1.
    """
    augmented, layers, mask, was_numpy = prepare_graph(
        attentions, residual=residual, head_fusion=head_fusion, mask=mask, renormalize=renormalize
    )
    num_layers, num_heads = len(layers), layers[0].shape[1]
    layer = check_index(layer, num_layers, "layer", "layers")
    top = head_graph(layers, layer, residual=residual, mask=mask)
    if head is not None:
        head = check_index(head, num_heads, "head", "heads")
        top = top[:, head : head + 1]
    if layer == 0:
        return to_output(top, was_numpy)
    below = rollout_matrices(augmented[:, :layer], inplace=True)[:, -1]  # (batch, n, n)
    return to_output(torch.matmul(top, below.unsqueeze(1)), was_numpy)
