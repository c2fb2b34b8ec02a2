"""Attention flow as a Captum attribution method."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from captum_attnflow.attr.base import AttentionAttribution
from captum_attnflow.flow import check_tol, flow_layers, head_flow
from captum_attnflow.flow.maxflow import check_threads


class AttentionFlow(AttentionAttribution):
    r"""
    Attention flow (Abnar & Zuidema 2020, §3): the attention graph is a layered DAG with nodes
    ``(l, j)`` and arcs ``(l, i) -> (l-1, j)`` of capacity ``Â_l[i, j] = 0.5·A_l[i, j] +
    0.5·I[i, j]`` (heads fused). The attribution of output position ``i`` at layer ``l`` to
    input token ``j`` is the maximum flow from ``(l, i)`` to ``(0, j)``, normalised over ``j``.
    Unlike rollout, which multiplies proportions, flow treats attention weights as capacities,
    so a token gets credit for the widest set of paths to it.

    Flow is the expensive method: one max-flow problem per input token, output position and
    layer (:func:`captum_attnflow.attention_flow`). Only the traced position is solved —
    ``position="max"``/``"all"`` solve every position; a layer list solves each listed layer.
    With ``head`` it gives the appendix A.1 per-head input attention
    (:func:`captum_attnflow.head_flow`).

    Example::

        >>> flow = AttentionFlow(model)
        >>> scores = flow.attribute(input_ids, additional_forward_args={"attention_mask": mask})
    """

    def __init__(
        self,
        forward_func: Callable,
        attention_layers: Sequence[nn.Module] | Sequence[str] | None = None,
        extractor: Callable | None = None,
        flow_solver: str = "auto",
        tol: float | None = None,
        threads: int | None = None,
    ) -> None:
        r"""
        Args:

            forward_func (Callable or torch.nn.Module): The model, or any function running it.
            attention_layers (list of torch.nn.Module or str, optional): The self-attention
                        modules (or name patterns), first layer first. Default: discovered.
            extractor (Callable, optional): ``fn(module, args, kwargs, output)`` returning a
                        module's attention ``(batch, heads, n, n)``. Default: built-in adapters.
            flow_solver (str, optional): The exact max-flow solver, ``"auto"`` (the fastest
                        available) or a name in :data:`captum_attnflow.flow.maxflow.SOLVERS`.
                        Default: "auto"
            tol (float, optional): ``None`` for exact flow, or the largest error allowed in each
                        score (bounded flow, :func:`captum_attnflow.attention_flow`). After each
                        ``attribute`` call (and after ``LLMAttentionAttribution.attribute`` with
                        this method) :attr:`gap` holds the proven bound reached (``<= tol``; 0 when
                        exact, up to rounding to the input dtype) — per thread.
                        Default: None
            threads (int, optional): threads of the max-flow solver; ``None`` chooses them
                        (:func:`captum_attnflow.flow.maxflow.default_threads`).
                        Default: None
        """
        tol = check_tol(tol)
        super().__init__(forward_func, attention_layers, extractor)
        self.flow_solver = flow_solver
        self.tol = tol
        self.threads = check_threads(threads)

    @property
    def gap(self) -> float:
        """The largest proven error of the scores of this thread's last ``attribute`` call.

        Kept per thread (``threading.local``), so threads sharing one instance each read the gap
        of their own call; a thread that has made no call reads 0.0.
        """
        return getattr(self._local, "gap", 0.0)

    @gap.setter
    def gap(self, value: float) -> None:
        self._local.gap = float(value)

    def attribute_recorded(self, attentions, mask, **kwargs) -> Tensor:
        self.gap = 0.0
        return super().attribute_recorded(attentions, mask, **kwargs)

    def graph_rows(self, attentions, mask, *, gradients, layers, positions, head, residual, head_fusion) -> Tensor:
        options = dict(residual=residual, head_fusion=head_fusion, mask=mask, output_positions=positions,
                       flow_solver=self.flow_solver, tol=self.tol, threads=self.threads)
        if head is None:
            values, error, solved, _, _ = flow_layers(attentions, layers=sorted(set(layers)), **options)
            picked = [solved.index(layer) for layer in layers]
            values, errors = values[:, picked], [error[:, picked]]
        else:
            results = [head_flow(attentions, layer=index, head=head, **options) for index in layers]
            if self.tol is not None:
                errors = [result.error for result in results]
                results = [result.values for result in results]
            else:
                errors = []
            values = torch.stack([result[:, 0] for result in results], dim=1)
        for error in errors:
            if not torch.isnan(error).all():
                self.gap = max(self.gap, float(error.nan_to_num(0.0).max()))
        return values
