"""The padding mask of a recorded forward pass, read from the model call's arguments.

Which argument carries the padding depends on the model:

* Hugging Face and most models: ``attention_mask`` ``(batch, n)``, 1 = real token.
* ``nn.TransformerEncoder``-style models: ``src_key_padding_mask`` / ``key_padding_mask``,
  ``True`` (or ``-inf``) = padding.
* Encoder–decoder models (see :func:`~captum_attnflow.capture.discovery.encoder_decoder_parts`):
  the mask of the part whose self-attention is recorded — Hugging Face ``attention_mask`` for the
  encoder, ``decoder_attention_mask`` for the decoder; ``nn.Transformer``
  ``src_key_padding_mask`` / ``tgt_key_padding_mask``.

Only 2-D masks are padding masks; other shapes (custom 4-D masks) are already applied inside the
attention and are not read.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch
from torch import nn

from captum_attnflow.capture.discovery import CROSS, AttentionLayer, encoder_decoder_parts

#: Argument name -> whether ``True`` marks padding (else ``True``/1 marks real tokens).
MASK_ARGUMENTS: dict[str, bool] = {"attention_mask": False, "src_key_padding_mask": True, "key_padding_mask": True}


def live_tokens_from_key_padding_mask(key_padding_mask: torch.Tensor) -> torch.Tensor:
    """``(batch, n)`` key padding mask (bool ``True`` or float ``-inf`` = padding) -> ``True`` = real token."""
    if key_padding_mask.dtype == torch.bool:
        return ~key_padding_mask
    return ~torch.isneginf(key_padding_mask)


def mask_arguments(model: nn.Module, layers: Sequence[AttentionLayer]) -> dict[str, bool]:
    """The model-call arguments that carry the padding of the recorded self-attention.

    Returns:
        ``{argument name: True if True marks padding}``, tried in order.

    Raises:
        ValueError: on an encoder–decoder model the recorded self-attention modules lie in both
            the encoder and the decoder (two different graphs).
    """
    parts = encoder_decoder_parts(model)
    if parts is None:
        return MASK_ARGUMENTS
    decoder = parts[1]
    decoder_modules = set(map(id, decoder.modules()))
    self_layers = [layer for layer in layers if layer.role != CROSS]
    in_decoder = {id(layer.module) in decoder_modules for layer in self_layers}
    if len(in_decoder) > 1:
        raise ValueError(
            f"attention_layers selects self-attention modules in both the encoder and the decoder of "
            f"{type(model).__name__} ({[layer.name for layer in self_layers]}); they form two "
            f"different attention graphs. Record the encoder's and the decoder's separately."
        )
    if isinstance(decoder, nn.TransformerDecoder):  # torch.nn.Transformer
        return {"tgt_key_padding_mask": True} if True in in_decoder else {"src_key_padding_mask": True}
    return {"decoder_attention_mask": False} if True in in_decoder else {"attention_mask": False}


def mask_from_call(model: nn.Module, args: tuple, kwargs: dict, arguments: dict[str, bool]) -> torch.Tensor | None:
    """The ``(batch, n)`` bool padding mask (``True`` = real token) among a model call's arguments.

    Args:
        model: the called module (its ``forward`` signature names positional arguments).
        args, kwargs: the call's arguments.
        arguments: from :func:`mask_arguments`.
    """
    try:
        bound = inspect.signature(model.forward).bind_partial(*args, **kwargs).arguments
    except (TypeError, ValueError):
        bound = kwargs
    for name, marks_padding in arguments.items():
        mask = bound.get(name)
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            return live_tokens_from_key_padding_mask(mask).detach() if marks_padding else mask.detach().bool()
    return None
