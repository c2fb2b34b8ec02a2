"""Attention rollout as a Captum attribution method."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from captum_attnflow.attr.base import AttentionAttribution
from captum_attnflow.graph import head_rollout, rollout


class AttentionRollout(AttentionAttribution):
    r"""
    Attention rollout (Abnar & Zuidema 2020, §3): the attention graph is multiplied out from
    the input up, ``R_1 = Â_1``, ``R_l = Â_l · R_{l-1}``, with ``Â_l = rownorm(A_l + I)`` (heads
    fused, residual connection modelled). Row ``i`` of ``R_l`` is the attribution of output
    position ``i`` at layer ``l`` to the input tokens; it sums to 1 over the real tokens.

    With ``head`` it gives the appendix A.1 "input attention" of that head:
    ``rownorm(A_l[h] + I) · R_{l-1}``. The math is :func:`captum_attnflow.rollout` /
    :func:`captum_attnflow.head_rollout`; this class records the attention with hooks and picks
    the rows. All layers come from one chain of ``L`` matrix products.

    Example::

        >>> with AttentionRollout(model) as method:
        ...     per_layer = method.attribute(input_ids, additional_forward_args=(mask,),
        ...                                  layer="all")   # (batch, L, n)
    """

    def attribute(
        self,
        inputs,
        target=None,
        additional_forward_args=None,
        position=None,
        layer=-1,
        head: int | None = None,
        residual: bool = True,
        head_fusion: str = "mean",
        graph: str = "attention",
        discard_ratio: float = 0.0,
        protected_tokens: int | Sequence[int] = 0,
    ) -> Tensor:
        r"""
        Same arguments and result as :meth:`AttentionAttribution.attribute`, plus:

        Args:

            discard_ratio (float, optional): vit-explain's option, ``0 <= r < 1``: per example
                        and layer, after head fusion and before the residual, zero the lowest
                        fraction ``r`` of the fused attention entries (rows and columns of real
                        tokens outside ``protected_tokens``), see :func:`captum_attnflow.rollout`.
                        Not combined with ``head``.
                        Default: 0.0
            protected_tokens (int or list[int], optional): tokens whose row and column are
                        never discarded.
                        Default: 0 (the first token, ``[CLS]``)

        Both travel with the call (never stored on the instance), so threads sharing one
        instance can pass different values.
        """
        if discard_ratio and head is not None:
            raise ValueError("discard_ratio applies to the fused graph; pass head=None to use it, or discard_ratio=0.")
        return self.attribute_with_options(
            inputs, additional_forward_args, position=position, layer=layer, head=head, residual=residual,
            head_fusion=head_fusion, graph=graph,
            options=dict(discard_ratio=discard_ratio, protected_tokens=protected_tokens),
        )

    def graph_rows(self, attentions, mask, *, gradients, layers, positions, head, residual, head_fusion,
                   discard_ratio: float = 0.0, protected_tokens: int | Sequence[int] = 0) -> Tensor:
        if head is None:
            return rollout(
                attentions, residual=residual, head_fusion=head_fusion, mask=mask,
                discard_ratio=discard_ratio, protected_tokens=protected_tokens,
            )[:, layers]
        return torch.stack(
            [
                head_rollout(attentions, layer=index, head=head, residual=residual, head_fusion=head_fusion, mask=mask)[:, 0]
                for index in layers
            ],
            dim=1,
        )
