"""Recording ``torch.nn.MultiheadAttention``.

``nn.MultiheadAttention`` only materialises its weights when called with ``need_weights=True``,
and averages them over heads unless ``average_attn_weights=False``; ``nn.TransformerEncoderLayer``
calls it with ``need_weights=False`` (and, in eval mode, may skip it altogether through the fused
"fast path", which the recorder switches off with ``torch.backends.mha.set_fastpath_enabled``
while it is attached).

The recorder rewrites each call to ``need_weights=False`` so that the module takes its
``F.scaled_dot_product_attention`` branch, which :class:`~captum_attnflow.capture.sdpa.SDPAInterceptor`
evaluates with per-head weights; afterwards the output is put back in the form the caller asked
for (weights per head or averaged, or ``None``). Its ``key_padding_mask`` (``True`` = padding)
becomes the recorder's padding mask (``True`` = real token).
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
    is_self_attention: bool
    key_padding_mask: torch.Tensor | None


def live_tokens_from_key_padding_mask(key_padding_mask: torch.Tensor) -> torch.Tensor:
    """``(batch, n)`` ``key_padding_mask`` (bool ``True`` or float ``-inf`` = padding) -> bool, ``True`` = real token."""
    if key_padding_mask.dtype == torch.bool:
        return ~key_padding_mask
    return ~torch.isneginf(key_padding_mask)


def prepare_mha_call(module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> tuple[tuple, dict, MHACall]:
    """Rewrite the arguments of an ``nn.MultiheadAttention`` call to ``need_weights=False``.

    Returns:
        ``(args, kwargs, call)``: the new arguments (all as keywords) and what the caller asked for.
    """
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    call = MHACall(
        need_weights=bool(arguments["need_weights"]),
        average_attn_weights=bool(arguments["average_attn_weights"]),
        batched=arguments["query"].dim() == 3,
        is_self_attention=arguments["query"] is arguments["key"],
        key_padding_mask=arguments["key_padding_mask"],
    )
    arguments["need_weights"] = False
    return (), arguments, call


def restore_mha_output(output: tuple, call: MHACall, weights: torch.Tensor) -> tuple:
    """Give the caller the ``(attn_output, attn_weights)`` it asked for.

    Args:
        output: ``(attn_output, None)`` from the rewritten call.
        weights: the per-head ``(batch, heads, L, S)`` weights recorded for the call.
    """
    if not call.need_weights:
        return output
    if call.average_attn_weights:
        weights = weights.mean(dim=1)
    if not call.batched:
        weights = weights.squeeze(0)
    return output[0], weights
