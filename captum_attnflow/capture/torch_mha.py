"""Recording ``torch.nn.MultiheadAttention``.

``nn.MultiheadAttention`` only materialises its weights when called with ``need_weights=True``,
and averages them over heads unless ``average_attn_weights=False``; ``nn.TransformerEncoderLayer``
calls it with ``need_weights=False`` (and, in eval mode, may skip it altogether through the fused
"fast path", which the recorder switches off with ``torch.backends.mha.set_fastpath_enabled``
while it is attached: :class:`FastPathOff`, reference-counted over every attached recorder).

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
import threading
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


class FastPathOff:
    """The process-wide MHA fast-path switch, held off while any recorder is attached.

    ``torch.backends.mha.set_fastpath_enabled`` is one global switch, but recorders may be
    attached concurrently (several threads) or nested. The first :meth:`acquire` saves the switch
    and turns it off; the last :meth:`release` restores the saved value; a lock makes the count
    exact across threads. Each holder must release exactly once per acquire.
    """

    _lock = threading.Lock()
    _holders = 0
    _saved: bool | None = None

    @classmethod
    def acquire(cls) -> None:
        """Turn the fast path off (saving the switch if this is the first holder)."""
        with cls._lock:
            if cls._holders == 0:
                cls._saved = torch.backends.mha.get_fastpath_enabled()
                torch.backends.mha.set_fastpath_enabled(False)
            cls._holders += 1

    @classmethod
    def release(cls) -> None:
        """Drop one hold; the last one restores the switch as it was before the first acquire."""
        with cls._lock:
            if cls._holders == 0:
                raise RuntimeError("FastPathOff.release() without a matching acquire().")
            cls._holders -= 1
            if cls._holders == 0:
                torch.backends.mha.set_fastpath_enabled(cls._saved)
                cls._saved = None


def reshaped_base(weights: torch.Tensor) -> torch.Tensor | None:
    """The tensor ``weights`` is a plain reshape of (``weights._base``), or None.

    A plain reshape reads the same contiguous memory in the same order, so the base's gradient
    reshaped is the view's gradient. A transposed or permuted view, a slice, or a view of a
    non-contiguous base is not one.

    Args:
        weights: any tensor, e.g. ``(batch, heads, L, S)`` weights.
    """
    base = weights._base
    if base is None or base.numel() != weights.numel():
        return None
    if not (base.is_contiguous() and weights.is_contiguous() and weights.storage_offset() == base.storage_offset()):
        return None
    return base


def route_gradient_to_weights(weights: torch.Tensor) -> None:
    """Make ``weights.grad`` receive the gradient of the attention that multiplied the values.

    The per-head weights ``nn.MultiheadAttention`` returns are a view, taken after the
    ``(batch·heads, L, S)`` softmax output multiplied the values; autograd never reaches the view.
    A hook on that softmax output (the view's ``_base``) copies its gradient, reshaped, into
    ``weights.grad`` (accumulating like ``retain_grad`` does).

    Args:
        weights: ``(batch, heads, L, S)`` view returned by a rewritten call.
    """
    base = reshaped_base(weights)
    if base is None or not base.requires_grad:
        raise RuntimeError(
            "cannot attach gradients to nn.MultiheadAttention weights: they are not a reshaped view "
            "of the softmax output that multiplied the values (is gradient computation enabled?)."
        )
    weights.retain_grad()

    def copy_gradient(grad: torch.Tensor) -> None:
        grad = grad.reshape(weights.shape)
        weights.grad = grad if weights.grad is None else weights.grad + grad

    base.register_hook(copy_gradient)
