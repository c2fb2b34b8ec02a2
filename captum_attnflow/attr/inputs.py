"""How the attribution classes read their inputs: calling the forward function the way Captum does,
and resolving ``position`` / ``layer`` against the recorded attention. Shared with
:mod:`captum_attnflow.evaluation.compare`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from captum_attnflow.utils.attention import check_index

MULTI_POSITIONS: tuple[str, ...] = ("max", "all")

#: Attention weights above the diagonal at most this large count as "masked" when deciding
#: whether the model is causal (HF's finite "minus infinity" gives exact zeros).
CAUSAL_TOLERANCE = 1e-8


# --------------------------------------------------------------------------------------------
# Calling the forward function the way Captum does
# --------------------------------------------------------------------------------------------


def as_input_tuple(inputs) -> tuple[Tensor, ...]:
    """``inputs`` (a tensor or a tuple of tensors) as a non-empty tuple of tensors."""
    if isinstance(inputs, Tensor):
        return (inputs,)
    if isinstance(inputs, tuple) and inputs and all(isinstance(t, Tensor) for t in inputs):
        return inputs
    raise TypeError(
        f"inputs must be a tensor (token ids, inputs_embeds or pixel values) or a non-empty tuple "
        f"of tensors, the model's leading positional arguments; got {type(inputs).__name__}."
    )


def forward_call(forward_func: Callable, num_inputs: int, additional_forward_args) -> tuple[Callable, tuple]:
    """Normalise Captum's ``additional_forward_args`` into ``(call, extra_args)``.

    ``call(*inputs, *extra_args)`` runs ``forward_func`` with the user's extra arguments, so the
    pair can be handed to any Captum method (which expands tensors in ``extra_args`` along the
    batch when it needs to). ``additional_forward_args`` may be ``None``, one object, a tuple of
    extra positional arguments (Captum's convention), or a mapping of keyword arguments — the
    natural form for Hugging Face models, e.g. ``{"attention_mask": mask}``; a mapping becomes
    positional values that ``call`` binds back to their keywords.
    """
    if isinstance(additional_forward_args, Mapping):
        keys = tuple(additional_forward_args)
        for key in keys:
            if not isinstance(key, str):
                raise TypeError(f"additional_forward_args keys must be argument names (str); got {key!r}.")

        def call(*args):
            return forward_func(*args[:num_inputs], **dict(zip(keys, args[num_inputs:])))

        return call, tuple(additional_forward_args.values())
    return forward_func, positional_arguments(additional_forward_args)


def positional_arguments(additional_forward_args) -> tuple:
    """Captum's convention: ``None`` -> ``()``, a tuple as it is, anything else -> ``(it,)``."""
    if additional_forward_args is None:
        return ()
    if isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)


def output_tensor(output) -> Tensor:
    """The tensor a target is selected from: the output itself, or its ``logits`` field."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise TypeError(
        f"forward_func returned a {type(output).__name__}, which has no tensor to select a target "
        f"from. Pass a forward_func that returns the scores, e.g. "
        f"lambda ids, mask: model(ids, attention_mask=mask).logits."
    )


# --------------------------------------------------------------------------------------------
# Resolving position / layer / head
# --------------------------------------------------------------------------------------------


def is_causal(attentions: Sequence[Tensor], mask: Tensor | None) -> bool:
    """Whether every recorded attention matrix is lower-triangular on the real tokens.

    Args:
        attentions: ``L`` tensors ``(batch, heads, n, n)``.
        mask: ``(batch, n)`` bool, ``True`` for real tokens, or ``None``.
    """
    n = attentions[0].shape[-1]
    upper = torch.ones(n, n, dtype=torch.bool, device=attentions[0].device).triu(1)
    if mask is not None:
        upper = upper & mask[:, None, :, None] & mask[:, None, None, :]  # (batch, 1, n, n)
    return all(bool((layer.detach().abs() * upper).amax() <= CAUSAL_TOLERANCE) for layer in attentions)


def resolve_positions(position, attentions: Sequence[Tensor], mask: Tensor | None) -> Tensor | str:
    """The traced output position of every example, or ``"max"`` / ``"all"``.

    Args:
        position: ``None`` (default: the last real token for causal attention, else 0 — the
            ``[CLS]`` token), an int (negative counts from the end of the padded sequence), a
            sequence or 1-D tensor of one int per example, or ``"max"`` / ``"all"``.
        attentions: ``L`` tensors ``(batch, heads, n, n)``.
        mask: ``(batch, n)`` bool padding mask or ``None``.

    Returns:
        A long tensor ``(batch,)`` of positions in ``range(n)``, or the string.

    Raises:
        ValueError: a position out of range or on a padding token; TypeError: a bad type.
    """
    batch, n = attentions[0].shape[0], attentions[0].shape[-1]
    if isinstance(position, str):
        if position not in MULTI_POSITIONS:
            raise ValueError(
                f"position={position!r} is not understood; pass an int, one int per example, or "
                f"one of {MULTI_POSITIONS}."
            )
        return position
    if position is None:
        if is_causal(attentions, mask):
            last = torch.full((batch,), n - 1, dtype=torch.long)
            if mask is not None:
                last = (torch.arange(n, device=mask.device) * mask).argmax(dim=1).cpu()
            return last
        return torch.zeros(batch, dtype=torch.long)
    if isinstance(position, (int, np.integer)) and not isinstance(position, bool):
        positions = torch.full((batch,), check_index(position, n, "position", "token positions"), dtype=torch.long)
    elif isinstance(position, (Sequence, Tensor, np.ndarray)):
        values = torch.as_tensor(position).flatten().tolist()
        if len(values) != batch:
            raise ValueError(
                f"position has {len(values)} entries but the batch has {batch} examples; pass one "
                f"int per example or a single int."
            )
        positions = torch.tensor([check_index(v, n, "position", "token positions") for v in values], dtype=torch.long)
    else:
        raise TypeError(
            f"position must be None, an int, one int per example, or one of {MULTI_POSITIONS}; "
            f"got {type(position).__name__}."
        )
    if mask is not None:
        padded = (~mask.cpu()[torch.arange(batch), positions]).nonzero().flatten().tolist()
        if padded:
            raise ValueError(
                f"position points at a padding token in example(s) {padded} (mask is 0 there); "
                f"pass per-example positions of real tokens or leave position=None."
            )
    return positions


def resolve_layers(layer, num_layers: int) -> tuple[list[int], bool]:
    """``layer`` as 0-based layer indices, and whether the result has a layer axis.

    ``layer`` is an int (``-1`` = last layer, ``0`` = the first attention layer ``L1``),
    ``"all"``, or a sequence of ints (the layer axis follows its order).
    """
    if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        return [check_index(layer, num_layers, "layer", "attention layers")], False
    if layer == "all":
        return list(range(num_layers)), True
    if isinstance(layer, (Sequence, Tensor)) and not isinstance(layer, str):
        values = torch.as_tensor(layer).flatten().tolist() if isinstance(layer, Tensor) else list(layer)
        if not values:
            raise ValueError('layer is empty; pass an int, a non-empty list of ints, or "all".')
        return [check_index(v, num_layers, "layer", "attention layers") for v in values], True
    raise TypeError(f'layer must be an int, a sequence of ints or "all"; got {layer!r}.')
