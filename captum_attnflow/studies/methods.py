"""The three attention methods the studies compare, as Captum attribution objects."""

from __future__ import annotations

from torch import nn

#: Raw attention, rollout and flow, in the order the studies report them.
METHODS: tuple[str, ...] = ("raw", "rollout", "flow")


def attention_methods(model: nn.Module, *, flow_solver: str = "auto") -> dict:
    """``{"raw": RawAttention, "rollout": AttentionRollout, "flow": AttentionFlow}`` for ``model``.

    Args:
        model: the model whose attention modules the methods record (discovered automatically).
        flow_solver: the exact max-flow solver of :class:`~captum_attnflow.attr.AttentionFlow`.
    """
    from captum_attnflow.attr import AttentionFlow, AttentionRollout, RawAttention

    return {
        "raw": RawAttention(model),
        "rollout": AttentionRollout(model),
        "flow": AttentionFlow(model, flow_solver=flow_solver),
    }
