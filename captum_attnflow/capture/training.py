"""Refusing attention recorded with dropout active (a model in training mode).

In training mode, attention dropout zeroes random weights and rescales the others by
``1 / (1 - p)`` before they multiply the values. There is then no attention graph to record:
eager modules return the dropped weights (rows summing to anything between 0.3 and 1.7), while
``F.scaled_dot_product_attention`` would expose the softmax *before* dropout although the output
used the dropped weights. The recorder treats both alike: a recorded module in training mode whose
dropout is active is refused, with a message naming ``model.eval()``. A module in training mode
without active dropout is recorded: its attention is the eval-mode attention.

Dropout is active in a recorded module when, in training mode,

* the module or one of its submodules is an ``nn.Dropout``-family module with ``p > 0``
  (Hugging Face BERT/GPT-2/ViT/DistilBERT, timm, most hand-written modules), or
* the module or one of its submodules has a numeric attribute whose name contains ``dropout``
  that is ``> 0`` (``nn.MultiheadAttention.dropout``, Hugging Face ``attention_dropout``, T5's
  ``dropout``), or
* (checked at the call) it calls ``F.scaled_dot_product_attention`` with ``dropout_p > 0``.

A module that applies ``F.dropout`` with a literal probability in eager code is not detected;
its weights' rows then do not sum to 1 and rollout/flow reject them.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from captum_attnflow.capture.discovery import AttentionLayer

#: The fix every refusal names.
EVAL_HINT = "Call model.eval() before recording (dropout makes the attention random)."


def active_dropout(module: nn.Module) -> str | None:
    """Where ``module`` applies dropout right now, or None (see the module docstring).

    Returns:
        A short description such as ``"dropout: Dropout(p=0.1)"`` or ``"attention_dropout=0.1"``.
    """
    for name, sub in module.named_modules():
        if not sub.training:
            continue
        where = f"{name}: " if name else ""
        if isinstance(sub, nn.modules.dropout._DropoutNd) and sub.p > 0:
            return f"{where}{type(sub).__name__}(p={sub.p})"
        for attribute, value in vars(sub).items():
            if (
                "dropout" in attribute.lower()
                and isinstance(value, (int, float))
                and not isinstance(value, bool)
                and value > 0
            ):
                return f"{where}{attribute}={value}"
    return None


def check_no_dropout(layers: Sequence[AttentionLayer]) -> None:
    """Refuse recorded modules whose dropout is active (see the module docstring).

    Raises:
        ValueError: naming the first such module, where its dropout is, and ``model.eval()``.
    """
    for layer in layers:
        dropout = active_dropout(layer.module)
        if dropout is not None:
            raise ValueError(
                f"attention layer {layer.name or '<model>'!r} ({type(layer.module).__name__}) is in "
                f"training mode with dropout active ({dropout}): the weights that multiply the values "
                f"are randomly dropped and rescaled, so they form no attention graph. {EVAL_HINT}"
            )
