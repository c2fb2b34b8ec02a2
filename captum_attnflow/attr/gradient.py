"""Gradient-weighted (class-specific) attention rollout, after Chefer, Gur & Wolf (ICCV 2021)."""

from __future__ import annotations

from typing import Sequence

import torch
from captum._utils.common import _select_targets
from torch import Tensor

from captum_attnflow.attr.base import AttentionAttribution
from captum_attnflow.attr.inputs import output_tensor
from captum_attnflow.capture.torch_mha import reshaped_base
from captum_attnflow.graph import as_attention_stack, check_head_fusion, fuse_heads, rollout_matrices


def gradient_weighted_graph(attentions, gradients, *, residual: bool = True, mask: Tensor | None = None) -> Tensor:
    """Per-head layer matrices of gradient-weighted rollout: ``I + ReLU(∇A_l[h] ⊙ A_l[h])``.

    Args:
        attentions: ``L`` tensors ``(batch, heads, n, n)``, the recorded attention.
        gradients: ``L`` tensors ``(batch, heads, n, n)``, the gradient of the target score with
            respect to each attention tensor.
        residual: add the identity (Chefer et al.'s rule ``R_l = R_{l-1} + Ā_l · R_{l-1}``);
            ``False`` uses ``ReLU(∇A ⊙ A)`` alone.
        mask: ``(batch, n)`` bool, ``True`` for real tokens; padded rows and columns become 0.

    Returns:
        ``(batch, L, heads, n, n)``. Rows are not normalised: the scale is that of the gradients.
    """
    stack, _ = as_attention_stack(attentions)
    grads, _ = as_attention_stack(gradients, name="gradients")
    if grads.shape != stack.shape:
        raise ValueError(f"gradients have shape {tuple(grads.shape)} but attentions {tuple(stack.shape)}.")
    graph = (grads * stack).clamp_min(0)
    n = stack.shape[-1]
    eye = torch.eye(n, dtype=graph.dtype, device=graph.device)
    if mask is not None:
        live = mask.to(graph.dtype)
        graph = graph * live[:, None, None, :, None] * live[:, None, None, None, :]
        eye = eye * live[:, None, None, :, None]
    return graph + eye if residual else graph


def attention_gradients(
    score: Tensor, attentions: Sequence[Tensor], *, retain_graph: bool = False
) -> list[Tensor | None]:
    """The gradient of ``score`` with respect to each recorded attention tensor itself.

    Where autograd does not reach a recorded tensor but the tensor is a plain reshape of one it
    reaches (:func:`~captum_attnflow.capture.torch_mha.reshaped_base`: ``nn.MultiheadAttention``
    returns its per-head weights as such a view, taken after the softmax output multiplied the
    values), the gradient of that tensor, reshaped. Any other view — transposed, permuted,
    sliced — gets only its own gradient: the element order of its base's gradient differs.
    Differentiating with :func:`torch.autograd.grad` instead of ``backward()`` leaves every
    parameter's ``.grad`` untouched, as Captum's gradient methods do.

    Args:
        score: scalar tensor.
        attentions: ``L`` tensors ``(batch, heads, n, n)`` that require grad.
        retain_graph: keep the graph for another call (as in :func:`torch.autograd.grad`).

    Returns:
        ``L`` gradients of the attention's shape, ``None`` where ``score`` does not depend on it.
    """
    bases = [reshaped_base(a) for a in attentions]
    bases = [b if b is not None and b.requires_grad else None for b in bases]
    extra = [b for b in bases if b is not None]
    grads = torch.autograd.grad(score, [*attentions, *extra], retain_graph=retain_graph, allow_unused=True)
    own, from_base = grads[: len(attentions)], iter(grads[len(attentions) :])
    result = []
    for attention, base, grad in zip(attentions, bases, own):
        base_grad = next(from_base) if base is not None else None
        if grad is None and base_grad is not None:
            grad = base_grad.reshape(attention.shape)
        result.append(grad)
    return result


class GradientWeightedRollout(AttentionAttribution):
    r"""
    Gradient-weighted, class-specific attention rollout (Chefer, Gur & Wolf, "Generic
    Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
    Transformers", ICCV 2021, self-attention rule). Each layer's heads are weighted by the
    gradient of the target score ``y_t`` with respect to their attention and fused as
    ``Ā_l = mean_h ReLU(∂y_t/∂A_l[h] ⊙ A_l[h])``; the relevance is rolled out from the identity,
    ``R_0 = I``, ``R_l = R_{l-1} + Ā_l · R_{l-1} = (I + Ā_l) · R_{l-1}``. Row ``i`` of ``R_l`` is
    the relevance of the input tokens for output position ``i`` at layer ``l``. Unlike raw
    attention, rollout and flow the result depends on ``target``.

    Rows are not normalised (the scale is that of the gradients) and include the identity's 1
    on the traced position itself; Chefer et al. drop the ``[CLS]`` column for display. With
    ``residual=False`` the identity is left out: ``R_l = Ā_l · R_{l-1}``, ``R_1 = Ā_1``.
    ``head_fusion`` (default mean, Chefer et al.'s choice) fuses the weighted heads; ``head``
    puts one weighted head ``I + ReLU(∇A_l[h] ⊙ A_l[h])`` on top of the fused layers below.

    The model runs once with the recorded attention kept in the autograd graph
    (``keep_graph=True``) and the gradients are taken with :func:`torch.autograd.grad`, so the
    model's parameters' ``.grad`` are not touched. The attention must be the tensor the model
    actually used (eager attention), not one recomputed for inspection.

    Example::

        >>> method = GradientWeightedRollout(model)       # a sequence classifier
        >>> positive = method.attribute(input_ids, target=1,
        ...                             additional_forward_args={"attention_mask": mask})
    """

    needs_heads = True

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
    ) -> Tensor:
        r"""
        Args:

            inputs (Tensor or tuple[Tensor, ...]): The model's leading positional argument(s),
                        as in :meth:`AttentionAttribution.attribute`.
            target (int, tuple, Tensor or list, optional): The output score ``y_t`` whose
                        gradient weights the heads, in Captum's format (selected from the
                        model's output tensor, or its ``logits`` field): an int class index, one
                        index per example, or ``(position, token_id)`` tuples for per-position
                        outputs such as language-model logits ``(batch, n, vocab)``.
                        Default ``None``: the output itself when it has one score per example
                        ``(batch,)``, the predicted class (argmax) of each example when it is
                        ``(batch, classes)``; other shapes need an explicit target.
            additional_forward_args, position, layer, head, residual, head_fusion: As in
                        :meth:`AttentionAttribution.attribute`.

        Returns:
            *Tensor* of **attributions**:
            - **attributions** (*Tensor*): ``(batch, n)`` relevance per token (with a layer
                        axis for a list of layers / ``"all"``, a query axis for
                        ``position="all"``). Padded tokens score exactly 0.

        Raises:
            ValueError: bad ``position``/``layer``/``head``/``target``, or attention that is
                        not connected to the output (recomputed or detached by an extractor).
        """
        check_head_fusion(head_fusion)
        attentions, mask, output = self.record(inputs, additional_forward_args, head_fusion=None, keep_graph=True)
        scores = output_tensor(output)
        if target is None and scores.dim() == 2:
            target = scores.detach().argmax(dim=1).tolist()
        elif target is None and scores.dim() != 1:
            raise ValueError(
                f"target is required: the output has shape {tuple(scores.shape)}; pass a class index "
                f"or, for per-position outputs, (position, index) tuples (one per example)."
            )
        selected = _select_targets(scores, target)
        if selected.dim() != 1:
            raise ValueError(
                f"target selects an output of shape {tuple(selected.shape)}; it must select one score "
                f"per example (batch,), e.g. target=(position, token_id) for (batch, n, vocab) outputs."
            )
        gradients = attention_gradients(selected.sum(), attentions)
        unused = [name for name, g in zip(self.layer_names, gradients) if g is None]
        if unused:
            raise ValueError(
                f"the target does not depend on the recorded attention of {unused}: the recorder "
                f"returned weights the model did not use (e.g. an extractor that recomputes or detaches "
                f"them). Record the weights that multiply the values: the built-in adapters (eager, "
                f"SDPA, nn.MultiheadAttention) do."
            )
        return self.attribute_recorded(
            [a.detach() for a in attentions], mask, gradients=gradients,
            position=position, layer=layer, head=head, residual=residual, head_fusion=head_fusion,
        )

    def graph_rows(self, attentions, mask, *, gradients, layers, positions, head, residual, head_fusion) -> Tensor:
        graph = gradient_weighted_graph(attentions, gradients, residual=residual, mask=mask)
        fused = fuse_heads(graph, head_fusion)
        chain = rollout_matrices(fused)
        if head is None:
            return chain[:, layers]
        tops = []
        for index in layers:
            top = graph[:, index, head]
            tops.append(top if index == 0 else torch.matmul(top, chain[:, index - 1]))
        return torch.stack(tops, dim=1)
