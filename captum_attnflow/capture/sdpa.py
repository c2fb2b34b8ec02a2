"""Attention weights of ``F.scaled_dot_product_attention`` calls.

Fused attention kernels (``torch.nn.functional.scaled_dot_product_attention``, "SDPA") never
materialise the ``softmax(Q Kᵀ · scale + mask)`` matrix, so a forward hook cannot read it. Models
that use SDPA — Hugging Face with ``attn_implementation="sdpa"`` (the default in transformers
5.x), ``torch.nn.MultiheadAttention`` with ``need_weights=False`` (e.g. inside
``nn.TransformerEncoderLayer``), timm's fused ``Attention`` and most hand-written modules — all
pass through one function. :class:`SDPAInterceptor` catches that call (one
:class:`torch.overrides.TorchFunctionMode` per thread, shared by nested recorders and active only
while a recorded attention module runs)
and evaluates it with the explicit math of the SDPA reference implementation instead, so the
weights it records are exactly the weights that produced the module's output.
"""

from __future__ import annotations

import math
import threading
from typing import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from captum_attnflow.capture.training import EVAL_HINT

#: The SDPA signature, in order, for binding positional arguments.
SDPA_PARAMETERS: tuple[str, ...] = (
    "query",
    "key",
    "value",
    "attn_mask",
    "dropout_p",
    "is_causal",
    "scale",
    "enable_gqa",
)


def sdpa_attention_weights(
    query: torch.Tensor,
    key: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """The attention weights that ``F.scaled_dot_product_attention`` applies to the values.

    ``softmax(query · keyᵀ · scale + bias)`` with the same conventions as PyTorch's SDPA reference
    implementation: the causal flag masks keys after the query position (top-left aligned), a
    boolean ``attn_mask`` keeps ``True`` entries, a floating ``attn_mask`` is added to the scores,
    ``enable_gqa`` repeats each key head for ``query_heads // key_heads`` consecutive query heads.
    A row whose keys are all masked gets all-zero weights (PyTorch's math backend does the same),
    never NaN.

    Args:
        query: ``(..., query_heads, L, E)``.
        key: ``(..., key_heads, S, E)``; ``key_heads == query_heads`` unless ``enable_gqa``.
        attn_mask: ``None`` or a bool/float tensor broadcastable to ``(..., query_heads, L, S)``.
        is_causal: mask key ``j > i`` for query ``i``.
        scale: score scale; ``None`` means ``1 / sqrt(E)``.
        enable_gqa: grouped-query attention (key heads shared by groups of query heads).

    Returns:
        ``(..., query_heads, L, S)`` weights, rows summing to 1 (0 for fully masked rows), in the
        dtype of ``query`` (float16/bfloat16 scores go through the softmax in float32).
    """
    length, source = query.shape[-2], key.shape[-2]
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        key = key.repeat_interleave(query.shape[-3] // key.shape[-3], dim=-3)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = torch.matmul(query, key.transpose(-2, -1)) * scale
    if is_causal:
        causal = torch.ones(length, source, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    # Half-precision scores are normalised in float32, like the fused kernels do.
    low_precision = scores.dtype in (torch.float16, torch.bfloat16)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32 if low_precision else None).to(scores.dtype)
    fully_masked = torch.isneginf(scores).all(dim=-1, keepdim=True)
    return weights.masked_fill(fully_masked, 0.0)


def sdpa_with_weights(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``F.scaled_dot_product_attention`` by explicit math, returning the weights as well.

    Arguments as for :func:`sdpa_attention_weights`, plus ``value`` ``(..., key_heads, S, Ev)``
    and ``dropout_p`` (applied to the weights that multiply the values, as SDPA does; the
    returned weights are the ones before dropout).

    Returns:
        ``(output, weights)``: ``output`` ``(..., query_heads, L, Ev)`` equal to SDPA's result up
        to floating-point rounding; ``weights`` ``(..., query_heads, L, S)``.
    """
    weights = sdpa_attention_weights(query, key, attn_mask, is_causal, scale, enable_gqa)
    if enable_gqa and value.shape[-3] != query.shape[-3]:
        value = value.repeat_interleave(query.shape[-3] // value.shape[-3], dim=-3)
    applied = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    return torch.matmul(applied, value), weights


#: Per thread: the interceptors entered and not yet exited, and the one torch function mode that
#: serves them all (PyTorch's mode stack is per thread too).
_THREAD = threading.local()


def _thread_state():
    if not hasattr(_THREAD, "listeners"):
        _THREAD.listeners, _THREAD.mode = [], None
    return _THREAD


class _SharedSDPAMode(TorchFunctionMode):
    """The torch function mode behind every :class:`SDPAInterceptor` of a thread: evaluates each
    SDPA call once and hands the weights to every active interceptor."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        listeners = list(_thread_state().listeners)
        if func is not F.scaled_dot_product_attention or not listeners:
            return func(*args, **kwargs)
        call = dict(zip(SDPA_PARAMETERS, args))
        call.update(kwargs)
        dropout_p = call.get("dropout_p", 0.0)
        if dropout_p > 0:
            raise ValueError(
                f"{listeners[-1].where} called F.scaled_dot_product_attention with dropout_p={dropout_p} (training "
                f"mode): the weights that multiply the values are randomly dropped and rescaled, so they "
                f"form no attention graph. {EVAL_HINT}"
            )
        output, weights = sdpa_with_weights(**call)
        for listener in listeners:
            listener.on_weights(weights)
        return output


class SDPAInterceptor:
    """Evaluate every ``F.scaled_dot_product_attention`` call by :func:`sdpa_with_weights`.

    While the interceptor is entered (``with SDPAInterceptor(on_weights):``), SDPA calls return
    :func:`sdpa_with_weights`'s output and hand the ``(..., heads, L, S)`` weights to
    ``on_weights``; every other torch function runs unchanged. A call with ``dropout_p > 0`` (a
    model in training mode) is refused: the weights that would multiply the values are random,
    and the recorded softmax would not be them.

    Interceptors nest and share (nested recorders, a class called inside an open recorder): one
    :class:`~torch.overrides.TorchFunctionMode` per thread, entered with the first interceptor
    and left with the last (reference-counted), evaluates each SDPA call once and hands the same
    weights to every entered interceptor, in the order they were entered. They may be exited in
    any order. An interceptor is active in the thread that entered it only: enter and exit it in
    the same thread.

    Args:
        on_weights: called with the weights of each intercepted call.
        where: names the intercepting module in error messages.

    Raises:
        ValueError: from an intercepted call with ``dropout_p > 0``.
    """

    def __init__(self, on_weights: Callable[[torch.Tensor], None], where: str = "a recorded module") -> None:
        self.on_weights = on_weights
        self.where = where

    def __enter__(self) -> "SDPAInterceptor":
        state = _thread_state()
        if state.mode is None:
            mode = _SharedSDPAMode()
            mode.__enter__()
            state.mode = mode
        state.listeners.append(self)
        return self

    def __exit__(self, *exc_info) -> None:
        state = _thread_state()
        if self in state.listeners:
            state.listeners.remove(self)
        if not state.listeners and state.mode is not None:
            mode, state.mode = state.mode, None
            mode.__exit__(None, None, None)
