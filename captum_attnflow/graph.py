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

import math
from typing import Iterator, Literal, NamedTuple, Sequence

import numpy as np
import torch

from captum_attnflow.graph_kernel import mean_residual_block, rollout_products

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

#: Layers are validated and fused in blocks of at most this many attention weights (a few MB), so
#: small inputs cost a handful of tensor operations in total and large ones stay layer by layer.
BLOCK_ELEMENTS = 1 << 16

#: Up to this many tokens the rollout products run as compiled loops
#: (:func:`~captum_attnflow.graph_kernel.rollout_products`) instead of one BLAS call per layer
#: (which costs more to set up than the ``n³`` work below about ``n = 48`` on a 2-core AMD EPYC).
COMPILED_PRODUCTS_MAX_N = 32

#: ``rollout_matrices(..., inplace=True)`` writes the products into a new tensor (one ``bmm`` with
#: ``out=`` per layer, no copy) up to this many entries, and over ``augmented`` above (memory).
PRODUCTS_BUFFER_MAX_ELEMENTS = 1 << 22


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

    Returns:
        ``(augmented, layers, mask, output_format)``: ``augmented`` is ``(batch, L, n, n)`` with
        ``augmented[:, l-1] = Â_l``; ``layers`` the validated attention (renormalised with
        ``renormalize=True``, not yet masked: see :func:`head_graph`), ``L`` tensors
        ``(batch, heads, n, n)``; ``mask`` a bool ``(batch, n)`` or None; ``output_format`` for
        :func:`to_output`.
    """
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


# --------------------------------------------------------------------------------------------
# Rollout
# --------------------------------------------------------------------------------------------


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


def mean_residual_graph(layers: list[torch.Tensor]) -> torch.Tensor | None:
    """The paper's graph ``Â_l = rownorm(mean_h A_l[h] + I)`` in one compiled pass, or None.

    The fast path of :func:`prepare_graph` (mean fusion, residual, no mask, renormalisation or
    discard; so of rollout and flow): :func:`~captum_attnflow.graph_kernel.mean_residual_block`, called once per block of
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
