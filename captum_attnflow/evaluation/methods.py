"""Explanation methods as the evaluation runs them: per-token scores for a padded batch.

Every method gives, for each example, a float array ``(layers, n)``: one row per layer for the
attention methods (raw attention, rollout and flow of the traced query at layers ``1..L``) and a
single row for the other attributions (:class:`CaptumMethod`, any ``captum.attr`` class).
Attention flow is the solver-bound one, so it is not computed with the batch but as one task
per example that needs only a small numpy graph (:func:`flow_task`): shipped to an executor, or
run in the worker that evaluates the whole batch (see :mod:`captum_attnflow.evaluation.pipeline`).

Built-in names (:data:`METHODS`): ``raw``, ``rollout``, ``flow`` on the paper's attention graph
and on the context-mixing graphs of :mod:`captum_attnflow.graph.contributions` (``raw_value_norm``,
``rollout_value_norm``, ``flow_value_norm``, ``raw_alti``, ``rollout_alti``, ``flow_alti``: the
``graph=`` options of the attribution classes), ``saliency`` (gradient L2 norm), ``ixg``
(InputXGradient), ``ig`` (IntegratedGradients, 32 steps, zero baseline), ``occlusion`` and
``ablation`` (FeatureAblation). Gradient methods work on the input embeddings; perturbation
methods replace token ids with the classifier's blank id, one token per feature.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Sequence, Union

import numpy as np
import torch

from captum_attnflow.evaluation.data import live_slice
from captum_attnflow.evaluation.models import Classifier
from captum_attnflow.flow import attention_flow
from captum_attnflow.graph import GRAPHS, ContributionGraph, check_graph, check_index, raw_attention, rollout
from captum_attnflow.evaluation.metrics import GradientReduction, check_gradient_reduction, reduce_gradients

Position = Union[int, Literal["max"]]


def resolve_position(position: Position, length: int) -> int | None:
    """The query position of an example of ``length`` tokens (negative counts from its end).

    ``"max"`` (the paper's SST-2 protocol: per token, the maximum over all query positions)
    returns ``None``.
    """
    if position == "max":
        return None
    return check_index(position, length, "position", "tokens in the example")


def query_scores(matrices: np.ndarray, position: Position) -> np.ndarray:
    """Per-token scores ``(L, n)`` from one example's per-layer matrices ``(L, n, n)`` (no padding).

    Row ``position`` of each layer, or for ``position="max"`` the maximum over all query rows.
    """
    index = resolve_position(position, matrices.shape[-1])
    return matrices.max(axis=-2) if index is None else matrices[:, index, :]


@dataclass
class Batch:
    """One padded batch, as every method sees it.

    Attributes:
        input_ids: ``(batch, n)`` token ids, padded on ``side``.
        mask: ``(batch, n)`` 1 for real tokens, 0 for padding.
        targets: ``(batch,)`` class whose probability is explained.
        lengths: number of real tokens per example.
        attentions: ``L`` tensors ``(batch, heads, n, n)`` of the model on this batch.
        side: ``"right"`` or ``"left"``: where the padding is.
        contributions: the value-norm / ALTI graphs the methods need, by ``graph=`` name
            (:meth:`~captum_attnflow.evaluation.models.Classifier.contribution_graphs`).
    """

    input_ids: torch.Tensor
    mask: torch.Tensor
    targets: torch.Tensor
    lengths: list[int]
    attentions: tuple[torch.Tensor, ...] = field(repr=False)
    side: str = "right"
    contributions: dict[str, ContributionGraph] = field(default_factory=dict, repr=False)

    def live(self, b: int) -> slice:
        """The positions of example ``b``'s real tokens."""
        return live_slice(self.lengths[b], self.input_ids.shape[1], self.side)

    def graph(self, name: str) -> tuple[torch.Tensor, ...] | ContributionGraph:
        """What rollout and flow take for ``graph=name``: the attentions, or the recorded contribution graph."""
        if name == "attention":
            return self.attentions
        if name not in self.contributions:
            raise ValueError(f"the batch has no {name!r} graph; the pipeline records the graphs its methods name.")
        return self.contributions[name]

    def fused(self, head_fusion: str, graph: str = "attention") -> np.ndarray:
        """``(batch, L, n, n)`` float64 head-fused matrices of ``graph`` (the attention, or the
        contributions), padded rows/columns 0, live rows sum to 1."""
        fused = raw_attention(self.graph(graph), head_fusion=head_fusion, mask=self.mask)
        return fused.detach().to(torch.float64).numpy()


def graph_of(method: "EvaluationMethod") -> str:
    """The ``graph=`` a method runs on (``"attention"`` for methods without one)."""
    return getattr(method, "graph", "attention")


def method_name(kind: str, graph: str) -> str:
    """``kind`` on the attention graph, ``kind_graph`` on another (``rollout_alti``)."""
    return kind if graph == "attention" else f"{kind}_{graph}"


class EvaluationMethod:
    """Base of the evaluation's methods.

    Attributes:
        name: the method's name in results.
        per_layer: True when scores have one row per attention layer (layers ``1..L``).
    """

    name: str
    per_layer: bool = False


class BatchMethod(EvaluationMethod, ABC):
    """A method computed in the main process on a whole padded batch."""

    @abstractmethod
    def scores(
        self, batch: Batch, classifier, *, position: Position, head_fusion: str, residual: bool
    ) -> list[np.ndarray]:
        """Per-example float64 scores ``(layers, n_b)`` (padding stripped) for the whole batch."""


class AttentionMethod(BatchMethod):
    """Raw attention (``kind="raw"``) or attention rollout (``kind="rollout"``) of the traced query.

    :func:`captum_attnflow.raw_attention` / :func:`captum_attnflow.rollout` on the batch's
    ``graph`` (``"attention"``: the recorded attention; ``"value_norm"``, ``"alti"``: the
    contribution graph of the same pass) with its padding mask; raw attention ignores
    ``residual``. Named ``kind`` on the attention graph, else ``kind_graph`` (``rollout_alti``).
    """

    per_layer = True

    def __init__(self, kind: Literal["raw", "rollout"], graph: str = "attention") -> None:
        if kind not in ("raw", "rollout"):
            raise ValueError(f"AttentionMethod kind must be 'raw' or 'rollout'; got {kind!r}.")
        self.kind, self.graph = kind, check_graph(graph)
        self.name = method_name(kind, graph)

    def scores(self, batch, classifier, *, position, head_fusion, residual):
        graph = batch.graph(self.graph)
        if self.kind == "rollout":
            matrices = rollout(graph, residual=residual, head_fusion=head_fusion, mask=batch.mask)
        else:
            matrices = raw_attention(graph, head_fusion=head_fusion, mask=batch.mask)
        matrices = matrices.detach().to(torch.float64).numpy()
        lives = [batch.live(b) for b in range(len(batch.lengths))]
        return [query_scores(matrices[b, :, live, live], position) for b, live in enumerate(lives)]


def flow_task(graph: np.ndarray, position: Position, residual: bool, solver: str) -> tuple[str, Any]:
    """Attention flow of one example: the unit of work shipped to an executor.

    Args:
        graph: ``(L, n, n)`` float64 head-fused attention of one example, padding removed.
        position: traced query position, or ``"max"`` (every position, then the max per token).
        residual, solver: as :func:`captum_attnflow.attention_flow` (``solver`` = its ``method``).

    Returns:
        ``("ok", scores (L, n))`` or ``("error", message)``: a failure of the example itself is
        returned, not raised, so that an exception from the future always means lost work (a
        dead worker), never a bad example.
    """
    try:
        index = resolve_position(position, graph.shape[-1])
        flows = attention_flow(graph[None, :, None], residual=residual, output_positions=index, flow_solver=solver)
        return "ok", query_scores(flows[0], position)
    except Exception as error:  # noqa: BLE001 - reported per example by the runner
        return "error", f"{type(error).__name__}: {error}"


class FlowMethod(EvaluationMethod):
    """Attention flow of the traced query at every layer, solved by :func:`flow_task` in an executor.

    Args:
        solver: max-flow solver name passed to :func:`captum_attnflow.attention_flow` (``"auto"``:
            the fastest exact one).
        graph: ``"attention"`` (the paper's, named ``flow``), ``"value_norm"`` or ``"alti"``
            (named ``flow_value_norm``, ``flow_alti``).
    """

    per_layer = True

    def __init__(self, solver: str = "auto", graph: str = "attention") -> None:
        self.solver, self.graph = solver, check_graph(graph)
        self.name = method_name("flow", graph)

    def graphs(self, batch: Batch, head_fusion: str) -> list[np.ndarray]:
        """One ``(L, n_b, n_b)`` float64 graph per example, padding removed (what workers receive)."""
        fused = batch.fused(head_fusion, self.graph)
        lives = [batch.live(b) for b in range(len(batch.lengths))]
        return [np.ascontiguousarray(fused[b, :, live, live]) for b, live in enumerate(lives)]

    def task_residual(self, batch: Batch, residual: bool) -> bool:
        """The ``residual`` of :func:`flow_task`: off when the graph holds its residual already (ALTI)."""
        graph = batch.graph(self.graph)
        return residual and not (isinstance(graph, ContributionGraph) and graph.residual_included)


class CaptumMethod(BatchMethod):
    """Any Captum attribution, reduced to one score per token.

    How the attribution is built depends on its kind:

    * ``Layer*`` attributions (e.g. ``LayerIntegratedGradients``) are given the classifier's
      embedding layer and attribute the token ids: output ``(batch, n, d)``.
    * Perturbation attributions (``Occlusion``, ``FeatureAblation``, ``ShapleyValueSampling``,
      ``Lime``, ...) perturb token ids, one token per feature, replacing it with the blank id:
      output ``(batch, n)``.
    * Every other (gradient) attribution (``Saliency``, ``InputXGradient``,
      ``IntegratedGradients``, ...) attributes the input embeddings: output ``(batch, n, d)``.

    The forward function returns class probabilities; ``target`` is each example's target class.
    Token scores are ``reduce_gradients(attribution, reduction)`` (a ``(batch, n)`` output is
    treated as ``d = 1``: ``abs_sum``/``l2`` give ``|a|``, ``sum`` keeps the sign).

    Reduce a plain *gradient* (``Saliency``) with ``"l2"``: in a model whose embeddings reach
    the output only through LayerNorms (BERT, pre-LN GPT-2 blocks) adding a constant to every
    embedding dimension changes nothing, so ``Σ_d g_d`` is exactly 0 and ``"abs_sum"`` ranks
    rounding noise. Attributions that multiply by the input (``InputXGradient``,
    ``IntegratedGradients``) are not affected; the built-in names use ``l2`` for ``saliency``
    and ``abs_sum`` for the others.

    Args:
        name: the name in results.
        attribution: a ``captum.attr`` Attribution class.
        reduction: ``"abs_sum"`` (default), ``"l2"`` or ``"sum"``.
        attribute_kwargs: extra keyword arguments of ``attribute`` (e.g. ``n_steps`` for IG).
    """

    def __init__(self, name: str, attribution: type, *, reduction: GradientReduction = "abs_sum",
                 attribute_kwargs: dict[str, Any] | None = None) -> None:
        from captum.attr import Attribution

        if not (isinstance(attribution, type) and issubclass(attribution, Attribution)):
            raise TypeError(
                f"attribution must be a captum.attr Attribution class (e.g. Saliency); got {attribution!r}."
            )
        check_gradient_reduction(reduction, "reduction")
        self.name = name
        self.attribution = attribution
        self.reduction = reduction
        self.attribute_kwargs = dict(attribute_kwargs or {})

    def _attribute(self, batch: Batch, classifier) -> torch.Tensor:
        from captum.attr import LayerAttribution, Occlusion, PerturbationAttribution

        common = dict(target=batch.targets, additional_forward_args=(batch.mask,))
        if issubclass(self.attribution, LayerAttribution):
            method = self.attribution(classifier.probabilities, classifier.embedding_layer)
            return method.attribute(batch.input_ids, **common, **self.attribute_kwargs)
        if issubclass(self.attribution, PerturbationAttribution):
            method = self.attribution(classifier.probabilities)
            options: dict[str, Any] = {"baselines": int(classifier.blank_id)}
            if issubclass(self.attribution, Occlusion):
                options["sliding_window_shapes"] = (1,)
            else:
                options["feature_mask"] = torch.arange(batch.input_ids.shape[1]).unsqueeze(0)
            with torch.no_grad():
                return method.attribute(batch.input_ids, **common, **{**options, **self.attribute_kwargs})
        method = self.attribution(classifier.probabilities_from_embeddings)
        embeddings = classifier.embed(batch.input_ids).detach().requires_grad_()
        return method.attribute(embeddings, **common, **self.attribute_kwargs)

    def scores(self, batch, classifier, *, position, head_fusion, residual):
        attribution = self._attribute(batch, classifier).detach()
        if attribution.dim() == 2:
            attribution = attribution.unsqueeze(-1)
        if attribution.shape[:2] != batch.input_ids.shape:
            raise ValueError(
                f"{self.name}: the attribution has shape {tuple(attribution.shape)}; expected "
                f"(batch, n[, d]) = {tuple(batch.input_ids.shape)} — one value per token."
            )
        tokens = reduce_gradients(attribution.to(torch.float64), self.reduction).numpy()
        return [tokens[b, None, batch.live(b)] for b in range(len(batch.lengths))]


def _captum(name: str, class_name: str, reduction: GradientReduction, **kwargs) -> Callable[[], CaptumMethod]:
    def build() -> CaptumMethod:
        import captum.attr

        return CaptumMethod(name, getattr(captum.attr, class_name), reduction=reduction, attribute_kwargs=kwargs)

    return build


def _graph_method(kind: str, graph: str) -> Callable[[], EvaluationMethod]:
    if kind == "flow":
        return functools.partial(FlowMethod, graph=graph)
    return functools.partial(AttentionMethod, kind, graph)


#: built-in method name -> factory
METHODS: dict[str, Callable[[], EvaluationMethod]] = {
    **{method_name(kind, graph): _graph_method(kind, graph) for graph in GRAPHS for kind in ("raw", "rollout", "flow")},
    "saliency": _captum("saliency", "Saliency", "l2", abs=False),
    "ixg": _captum("ixg", "InputXGradient", "abs_sum"),
    "ig": _captum("ig", "IntegratedGradients", "abs_sum", n_steps=32),
    "occlusion": _captum("occlusion", "Occlusion", "abs_sum"),
    "ablation": _captum("ablation", "FeatureAblation", "abs_sum"),
}


def resolve_methods(
    methods: str | Iterable[str | EvaluationMethod], *, flow_solver: str = "auto"
) -> list[EvaluationMethod]:
    """Turn names (a list, or one comma-separated string) and method objects into methods.

    Raises:
        ValueError: an unknown name (the valid ones are listed), a duplicate, or no method.
    """
    if isinstance(methods, str):
        methods = [part.strip() for part in methods.split(",") if part.strip()]
    resolved: list[EvaluationMethod] = []
    for method in methods:
        if isinstance(method, str):
            if method not in METHODS:
                raise ValueError(
                    f"unknown method {method!r}; valid methods: {', '.join(METHODS)} (or pass a CaptumMethod)."
                )
            method = METHODS[method]()
            if isinstance(method, FlowMethod):
                method.solver = flow_solver
        elif not isinstance(method, EvaluationMethod):
            raise TypeError(
                f"methods must be names or EvaluationMethod objects (e.g. CaptumMethod); got {type(method).__name__}."
            )
        resolved.append(method)
    if not resolved:
        raise ValueError(f"no method given; choose from {', '.join(METHODS)}.")
    names = [m.name for m in resolved]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"method names must be unique; {duplicates} appear more than once.")
    return resolved


def check_graph_methods(methods: Sequence[EvaluationMethod], classifier: Classifier, head_fusion: str) -> None:
    """Refuse, before any model pass, value-norm / ALTI methods that cannot run: a classifier without
    :meth:`~Classifier.contribution_graphs`, or a head fusion other than the mean (the heads are
    summed inside the contributions)."""
    named = [m.name for m in methods if graph_of(m) != "attention"]
    if not named:
        return
    if type(classifier).contribution_graphs is Classifier.contribution_graphs:
        raise ValueError(
            f"{', '.join(named)} need value-norm/ALTI graphs, which {type(classifier).__name__} does not build: "
            f"override contribution_graphs() (see HFClassifier) or use raw, rollout, flow."
        )
    if head_fusion != "mean":
        raise ValueError(
            f"{', '.join(named)} sum the heads inside their contributions; head_fusion={head_fusion!r} applies to "
            f"the attention graph only. Use head_fusion='mean' or the methods raw, rollout, flow."
        )
