"""Recording ``torch.nn.MultiheadAttention``.

``nn.MultiheadAttention`` only materialises its weights when called with ``need_weights=True``,
and averages them over heads unless ``average_attn_weights=False``; ``nn.TransformerEncoderLayer``
calls it with ``need_weights=False`` (and, in eval mode, may skip it altogether through the fused
"fast path", which the recorder switches off with ``torch.backends.mha.set_fastpath_enabled``
while it is attached).

The recorder rewrites each call to ``need_weights=True, average_attn_weights=False``, so that
PyTorch itself computes the per-head weights (its explicit ``softmax(QKᵀ/√d + mask)`` branch), and
afterwards gives the caller the output it asked for (weights averaged, per head, or ``None``).
Its ``key_padding_mask`` (``True`` or ``-inf`` = padding) becomes the recorder's padding mask
(``True`` = real token). ``F.scaled_dot_product_attention`` interception cannot be used here:
``F.multi_head_attention_forward`` is itself a ``__torch_function__`` entry point, and a
``TorchFunctionMode`` does not see the calls made inside it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MHACall:
    """What the caller of one ``nn.MultiheadAttention`` call asked for."""

    need_weights: bool
    average_attn_weights: bool
    batched: bool


def bind_mha_arguments(module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> dict:
    """All arguments of an ``nn.MultiheadAttention`` call by name, defaults filled in."""
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def is_self_attention_call(arguments: dict) -> bool:
    """``query is key``: self-attention (``nn.TransformerEncoderLayer``), else cross-attention."""
    return arguments["query"] is arguments["key"]


def prepare_mha_call(arguments: dict) -> tuple[dict, MHACall]:
    """Rewrite the arguments of an ``nn.MultiheadAttention`` call to return per-head weights.

    Args:
        arguments: from :func:`bind_mha_arguments`.

    Returns:
        ``(kwargs, call)``: the new keyword arguments (``need_weights=True``,
        ``average_attn_weights=False``) and what the caller asked for.
    """
    call = MHACall(
        need_weights=bool(arguments["need_weights"]),
        average_attn_weights=bool(arguments["average_attn_weights"]),
        batched=arguments["query"].dim() == 3,
    )
    return {**arguments, "need_weights": True, "average_attn_weights": False}, call


def per_head_weights(output: tuple, call: MHACall) -> torch.Tensor:
    """The ``(batch, heads, L, S)`` weights of a rewritten call's ``output``."""
    weights = output[1]
    return weights if call.batched else weights.unsqueeze(0)


def restore_mha_output(output: tuple, call: MHACall) -> tuple:
    """Give the caller the ``(attn_output, attn_weights)`` it asked for from a rewritten call."""
    if not call.need_weights:
        return output[0], None
    weights = output[1]
    if call.average_attn_weights:
        weights = weights.mean(dim=-3)
    return output[0], weights


def route_gradient_to_weights(weights: torch.Tensor) -> None:
    """Make ``weights.grad`` receive the gradient of the attention that multiplied the values.

    The per-head weights ``nn.MultiheadAttention`` returns are a view, taken after the
    ``(batch·heads, L, S)`` softmax output multiplied the values; autograd never reaches the view.
    A hook on that softmax output (the view's ``_base``) copies its gradient, reshaped, into
    ``weights.grad`` (accumulating like ``retain_grad`` does).

    Args:
        weights: ``(batch, heads, L, S)`` view returned by a rewritten call.
    """
    base = weights._base
    if base is None or base.numel() != weights.numel() or not base.requires_grad:
        raise RuntimeError(
            "cannot attach gradients to nn.MultiheadAttention weights: they are not a view of the "
            "softmax output that multiplied the values (is gradient computation enabled?)."
        )
    weights.retain_grad()

    def copy_gradient(grad: torch.Tensor) -> None:
        grad = grad.reshape(weights.shape)
        weights.grad = grad if weights.grad is None else weights.grad + grad

    base.register_hook(copy_gradient)
