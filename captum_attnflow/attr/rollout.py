"""Attention rollout as a Captum attribution method."""

from __future__ import annotations

import torch
from torch import Tensor

from captum_attnflow.attr.base import AttentionAttribution
from captum_attnflow.graph import head_rollout, rollout


class AttentionRollout(AttentionAttribution):
    r"""
    Attention rollout (Abnar & Zuidema 2020, §3): the attention graph is multiplied out from
    the input up, ``R_1 = Â_1``, ``R_l = Â_l · R_{l-1}``, with ``Â_l = 0.5·A_l + 0.5·I`` (heads
    fused, residual connection modelled). Row ``i`` of ``R_l`` is the attribution of output
    position ``i`` at layer ``l`` to the input tokens; it sums to 1 over the real tokens.

    With ``head`` it gives the appendix A.1 "input attention" of that head:
    ``Â_l[h] · R_{l-1}``. The math is :func:`captum_attnflow.rollout` /
    :func:`captum_attnflow.head_rollout`; this class records the attention with hooks and picks
    the rows. All layers come from one chain of ``L`` matrix products.

    Example::

        >>> with AttentionRollout(model) as method:
        ...     per_layer = method.attribute(input_ids, additional_forward_args=(mask,),
        ...                                  layer="all")   # (batch, L, n)
    """

    def graph_rows(self, attentions, mask, *, gradients, layers, positions, head, residual, head_fusion) -> Tensor:
        if head is None:
            return rollout(attentions, residual=residual, head_fusion=head_fusion, mask=mask)[:, layers]
        return torch.stack(
            [
                head_rollout(attentions, layer=index, head=head, residual=residual, head_fusion=head_fusion, mask=mask)[:, 0]
                for index in layers
            ],
            dim=1,
        )
