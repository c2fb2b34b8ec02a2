"""The attention tensor format shared by capture, graph and attribution: validation, padding
masks, head fusion and returning results in the caller's type.

Every function takes a sequence of ``L`` tensors of shape ``(batch, heads, n, n)`` — Hugging
Face's ``output_attentions`` format — or numpy arrays; :func:`to_output` gives results back as
numpy when the caller passed numpy, in the caller's floating dtype.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, Sequence

import numpy as np
import torch

HeadFusion = Literal["mean", "max", "min"]
HEAD_FUSIONS: tuple[str, ...] = ("mean", "max", "min")

#: Why a model's ``output_attentions`` can be empty or None, and the fixes.
NO_ATTENTIONS_HINT = (
    "A Hugging Face model using SDPA attention (the transformers 5.x default) returns no attention "
    "weights (an empty tuple) even with output_attentions=True, and none at all without it: load it with "
    "attn_implementation='eager' and pass output_attentions=True, or record the attention with "
    "AttentionRecorder / use the Attribution classes (AttentionRollout, AttentionFlow, ...), which work "
    "with SDPA."
)

#: How far a row of attention may sum from 1 before it is rejected (softmax in float16/bfloat16
#: and HF's finite "minus infinity" masks stay well inside this).
ROW_SUM_TOLERANCE = 1e-2


class RowSumError(ValueError):
    """Attention rows that do not sum to 1; the message suggests ``renormalize=True``."""


class OutputFormat(NamedTuple):
    """How results go back to the caller: numpy or torch, and in which dtype."""

    numpy: bool
    dtype: torch.dtype


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def attention_layers(attentions, *, name: str = "attentions") -> tuple[list[torch.Tensor], OutputFormat]:
    """Validate ``attentions`` and return them as a list of per-layer tensors.

    Args:
        attentions: a sequence of ``L`` tensors or arrays of shape ``(batch, heads, n, n)``, or one
            tensor/array of shape ``(batch, L, heads, n, n)``.

    Returns:
        ``(layers, output_format)``: ``L`` tensors ``(batch, heads, n, n)`` of one computation
        dtype (float64 if any layer is float64, else float32), on one device; ``output_format``
        says whether the input was numpy and its dtype (the dtype results are returned in).

    Raises:
        TypeError, ValueError: with a message naming the problem.
    """
    if isinstance(attentions, (torch.Tensor, np.ndarray)):
        was_numpy = isinstance(attentions, np.ndarray)
        stack = as_float_tensor(attentions, name)
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
            raise ValueError(f"{name} is empty: no attention layers were given. {NO_ATTENTIONS_HINT}")
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
            layers.append(as_float_tensor(layer, f"{name}[{index}]"))
    else:
        raise TypeError(
            f"{name} must be a sequence of (batch, heads, n, n) tensors or arrays; got "
            f"{type(attentions).__name__}." + (f" {NO_ATTENTIONS_HINT}" if attentions is None else "")
        )
    first = layers[0]
    first_shape, first_device = first.shape, first.device
    for index, layer in enumerate(layers):
        shape = layer.shape
        if len(shape) != 4:
            hint = " (add the head axis with .unsqueeze(1))" if len(shape) == 3 else ""
            raise ValueError(
                f"{name}[{index}] must have shape (batch, heads, n, n); got shape "
                f"{tuple(shape)}{hint}."
            )
        if shape[-1] != shape[-2]:
            raise ValueError(
                f"{name}[{index}] is not square: shape {tuple(shape)}; self-attention "
                f"needs (batch, heads, n, n). Cross-attention cannot be rolled out."
            )
        if shape != first_shape:
            raise ValueError(
                f"{name}[{index}] has shape {tuple(shape)} but {name}[0] has shape "
                f"{tuple(first_shape)}; every layer needs the same (batch, heads, n, n)."
            )
        if layer.device != first_device:
            raise ValueError(f"{name}[{index}] is on {layer.device}, {name}[0] on {first.device}.")
    if first.shape[-1] == 0:
        raise ValueError(f"{name} describes an empty sequence (n = 0 tokens).")
    if first.shape[0] == 0 or first.shape[1] == 0:
        raise ValueError(f"{name} has an empty batch or head axis: shape {tuple(first.shape)}.")
    dtypes = {layer.dtype for layer in layers}
    compute = torch.float64 if torch.float64 in dtypes else torch.float32
    output = dtypes.pop() if len(dtypes) == 1 else compute
    return [layer if layer.dtype == compute else layer.to(compute) for layer in layers], OutputFormat(was_numpy, output)


def as_float_tensor(value, name: str) -> torch.Tensor:
    """``value`` (tensor or numpy array) as a floating-point tensor, or a TypeError naming ``name``."""
    if isinstance(value, np.ndarray) and not np.issubdtype(value.dtype, np.floating):
        raise TypeError(f"{name} has dtype {value.dtype}; attention must be floating point.")
    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if not tensor.is_floating_point():
        raise TypeError(f"{name} has dtype {tensor.dtype}; attention must be floating point.")
    return tensor


def as_attention_stack(attentions, *, name: str = "attentions") -> tuple[torch.Tensor, OutputFormat]:
    """Validate ``attentions`` (see :func:`attention_layers`) and stack them.

    Returns:
        ``(stack, output_format)`` with ``stack`` of shape ``(batch, L, heads, n, n)``.
    """
    layers, output_format = attention_layers(attentions, name=name)
    return torch.stack(layers, dim=1), output_format


def as_mask(mask, *, batch: int, n: int, device: torch.device) -> torch.Tensor | None:
    """Validate a padding mask: ``(batch, n)`` of 1/``True`` = real token, 0/``False`` = padding.

    Bool masks and numeric masks whose values are all exactly 0 or 1 (Hugging Face's
    ``attention_mask``) are accepted; anything else — 0.5, NaN, −1, 2, strings, objects — is a
    ValueError/TypeError naming ``mask``, never silently "real token".

    Returns:
        ``(batch, n)`` bool on ``device``, or None.
    """
    if mask is None:
        return None
    if isinstance(mask, np.ndarray) and not (np.issubdtype(mask.dtype, np.number) or mask.dtype == np.bool_):
        raise TypeError(f"mask has dtype {mask.dtype}; pass 1/True for real tokens and 0/False for padding.")
    try:
        mask = torch.as_tensor(mask, device=device)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(
            f"mask must be a (batch, n) tensor or array of 0/1 or bools (1/True = real token); "
            f"got {type(mask).__name__} that is not numeric ({error})."
        ) from None
    if mask.dim() != 2 or tuple(mask.shape) != (batch, n):
        raise ValueError(
            f"mask must have shape (batch, n) = ({batch}, {n}) with 1 for real tokens and 0 for "
            f"padding (Hugging Face's attention_mask); got shape {tuple(mask.shape)}."
        )
    if mask.dtype != torch.bool:
        if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
            bad = mask[~((mask == 0) | (mask == 1))].flatten()[:3].tolist()
            raise ValueError(
                f"mask must hold only 0 (padding) and 1 (real token) or bools; got values such as "
                f"{bad}. Pass Hugging Face's attention_mask, or (weights > 0) for a soft mask."
            )
        mask = mask.bool()
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"mask leaves no real token in batch example(s) {empty}.")
    return mask


def check_attention_values(
    block: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    renormalize: bool,
    fused: str | None = None,
    first_layer: int = 0,
) -> torch.Tensor:
    """Reject NaN/inf/negative attention and rows that do not sum to 1.

    Args:
        block: ``(batch, c, heads, n, n)``, layers ``first_layer … first_layer + c - 1``.
        mask: ``(batch, n)`` bool or None; rows of padded queries are not checked.
        renormalize: divide rows by their sums instead of checking them.
        fused: ``"max"``/``"min"`` when ``block`` is attention already fused that way (one head):
            rows must then sum to ≥ 1 / ≤ 1 instead of 1.

    Returns:
        ``block`` (divided by its row sums with ``renormalize=True``).

    Raises:
        ValueError (:class:`RowSumError` for rows off 1), naming batch, layer, head and row.
    """
    row_sums = block.sum(-1)  # (batch, c, heads, n); NaN or inf anywhere makes its row's sum non-finite
    checked = row_sums if mask is None else row_sums.masked_fill(~mask[:, None, None, :], 1.0)  # padded rows pass
    low, high = torch.aminmax(checked)
    summary = [low, high, block.amin()] + ([] if mask is None else [row_sums.sum()])
    low, high, smallest, *total = torch.stack(summary).tolist()  # one synchronisation
    low_bound = -math.inf if renormalize or fused == "min" else 1 - ROW_SUM_TOLERANCE
    high_bound = math.inf if renormalize or fused == "max" else 1 + ROW_SUM_TOLERANCE
    # NaN fails every comparison; an inf row sum fails high < inf.
    if not (smallest >= 0 and low >= low_bound and high <= high_bound and high < math.inf and all(map(math.isfinite, total))):
        good = (row_sums >= low_bound) & (row_sums <= high_bound) & torch.isfinite(row_sums)
        if mask is not None:
            good = good | ~mask[:, None, None, :]
        diagnose_attention(block, row_sums, good, first_layer=first_layer, fused=fused)
    if not renormalize:
        return block
    return divide_rows(block, row_sums.unsqueeze(-1), mask, first_layer=first_layer, cause="the row is all zero")


def restrict_to_live(
    block: torch.Tensor, mask: torch.Tensor | None, *, fused: str | None = None, first_layer: int = 0
) -> torch.Tensor:
    """Step 1 of the module docstring: zero padded keys, renormalise each head's rows over real keys.

    ``block`` is ``(batch, c, heads, n, n)`` (layers from ``first_layer``); attention already
    fused with ``fused = "max"/"min"`` is only zeroed. Without a mask ``block`` is returned as is.
    """
    if mask is None:
        return block
    block = block * mask[:, None, None, None, :].to(block.dtype)
    if fused is not None:
        return block
    return divide_rows(block, block.sum(-1, keepdim=True), mask, first_layer=first_layer, cause="the mask zeroes the whole row")


def divide_rows(
    block: torch.Tensor, sums: torch.Tensor, mask: torch.Tensor | None, *, first_layer: int, cause: str
) -> torch.Tensor:
    """``block / sums`` for ``(batch, c, heads, n, n)``; a live row summing to 0 is a ValueError."""
    dead = sums[..., 0] <= 0
    if mask is not None:
        dead = dead & mask[:, None, None, :]
    if dead.any():
        b, c, h, i = dead.nonzero()[0].tolist()
        raise ValueError(
            f"attention row {i} of batch {b}, layer {first_layer + c}, head {h} has no weight on "
            f"any unmasked key: {cause}. Check that the mask marks real tokens with 1 and that the "
            f"attention was recorded with the same mask."
        )
    return block / sums.clamp_min(torch.finfo(block.dtype).tiny)


def diagnose_attention(
    block: torch.Tensor, row_sums: torch.Tensor, good: torch.Tensor, *, first_layer: int, fused: str | None
) -> None:
    """Raise the error for the first problem of a block that failed :func:`check_attention_values`."""
    bad = (~torch.isfinite(block)).nonzero()
    if len(bad):
        b, c, h, i, j = bad[0].tolist()
        raise ValueError(
            f"attention contains NaN or inf (first at batch {b}, layer {first_layer + c}, head {h}, "
            f"row {i}, column {j}). Check the model's dtype (fp16 overflow) and its masks."
        )
    if block.amin() < 0:
        c = int((block.amin(dim=(0, 2, 3, 4)) < 0).nonzero()[0])
        raise ValueError(
            f"attention of layer {first_layer + c} contains negative weights; attention flow and "
            f"rollout need non-negative, row-stochastic matrices (softmax outputs)."
        )
    b, c, h, i = (~good).nonzero()[0].tolist()
    target = {"max": "at least 1 (max-fused heads)", "min": "at most 1 (min-fused heads)"}.get(fused, "1")
    raise RowSumError(
        f"attention row {i} of batch {b}, layer {first_layer + c}, head {h} sums to "
        f"{row_sums[b, c, h, i].item():.4g}, not {target}. Attention must be row-stochastic "
        f"(softmax over keys); pass renormalize=True to divide rows by their sums."
    )


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



def to_output(result: torch.Tensor, output_format: OutputFormat):
    """``result`` in the caller's dtype, as numpy when the caller passed numpy."""
    result = result.to(output_format.dtype)
    return result.detach().cpu().numpy() if output_format.numpy else result


def check_index(value: int, size: int, name: str, what: str) -> int:
    """Resolve a possibly negative index into ``range(size)`` or raise a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}.")
    if not -size <= value < size:
        raise ValueError(f"{name}={value} is out of range: there are {size} {what} (valid: {-size}..{size - 1}).")
    return int(value) % size
