"""Raw attention as a Captum attribution method."""

from __future__ import annotations

import torch
from torch import Tensor

from captum_attnflow.attr.base import AttentionAttribution
from captum_attnflow.graph import raw_attention


class RawAttention(AttentionAttribution):
    r"""
    Raw attention (Abnar & Zuidema 2020, §2): the attribution of output position ``i`` at
    layer ``l`` to input token ``j`` is ``A_l[i, j]``, the attention weight of that layer
    alone, heads fused (mean by default). It ignores every layer below ``l`` and the residual
    connections, which is why it stops ranking input tokens well beyond the first layer — the
    baseline that rollout and flow improve on.

    With ``head`` the matrix of that single head is used instead of the fused one.
    Padded tokens are masked out and every row is renormalised over the real tokens.

    Example::

        >>> raw = RawAttention(model)                    # a Hugging Face BERT, eager or SDPA
        >>> scores = raw.attribute(input_ids, additional_forward_args={"attention_mask": mask},
        ...                        layer=0)              # (batch, n): [CLS] row of layer 1
    """

    def graph_rows(self, attentions, mask, *, gradients, layers, positions, head, residual, head_fusion) -> Tensor:
        if head is None:
            return raw_attention(attentions, head_fusion=head_fusion, mask=mask)[:, layers]
        return torch.stack(
            [raw_attention([attentions[index][:, head : head + 1]], mask=mask)[:, 0] for index in layers], dim=1
        )
