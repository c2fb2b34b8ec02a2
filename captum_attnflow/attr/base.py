"""Shared machinery of the attention attribution classes.

:class:`AttentionAttribution` is the Captum :class:`~captum.attr.Attribution` subclass every
attention method derives from. It runs the model once under an
:class:`~captum_attnflow.capture.AttentionRecorder`, resolves ``position`` / ``layer`` /
``head`` against the recorded attention, and hands the per-layer graph matrices to the
subclass, which computes them with the functional API (:mod:`captum_attnflow.graph`,
:mod:`captum_attnflow.flow`). Reading the inputs is :mod:`captum_attnflow.attr.inputs`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import torch
from captum.attr import Attribution
from torch import Tensor, nn

from captum_attnflow.attr.inputs import as_input_tuple, positional_arguments, resolve_layers, resolve_positions
from captum_attnflow.capture import AttentionRecorder
from captum_attnflow.graph import ContributionGraph, RowSumError, check_graph, check_head_fusion, check_index, recorded_graph

# --------------------------------------------------------------------------------------------
# The base class
# --------------------------------------------------------------------------------------------


def check_graph_options(graph: str, head: int | None, head_fusion: str) -> None:
    """``graph`` is one of :data:`~captum_attnflow.graph.GRAPHS`; ``head`` and non-mean fusion only with ``"attention"``."""
    check_graph(graph)
    if graph != "attention" and head is not None:
        raise ValueError(f"head={head} (appendix A.1) is defined on the attention graph; pass head=None with graph={graph!r}.")
    if graph != "attention" and head_fusion != "mean":
        raise ValueError(
            f"head_fusion={head_fusion!r} fuses attention heads; graph={graph!r} sums the heads inside its "
            f"contributions. Pass head_fusion='mean' or graph='attention'."
        )


class FunctionModule(nn.Module):
    """A plain forward function as a module, so the recorder sees each forward pass.

    The recorder starts and ends a pass with hooks on the module it is given and reads the
    padding mask from that call's arguments by name; this module's ``forward`` *is* the user's
    function (same signature), and the attention modules are registered as children so the
    recorder can name them (``attention.0``, ``attention.1``, ...).
    """

    def __init__(self, forward_func: Callable, attention_layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.attention = nn.ModuleList(list(attention_layers))
        self.forward = forward_func


class AttentionAttribution(Attribution):
    r"""
    Base class of the attention attribution methods (raw attention, rollout, flow and
    gradient-weighted rollout). It records the model's self-attention during one forward pass
    with forward hooks (:class:`~captum_attnflow.capture.AttentionRecorder`) and turns the
    recorded ``L`` matrices ``(batch, heads, n, n)`` into one score per input token.

    Subclasses implement :meth:`graph_rows`; everything else — calling the model the way Captum
    does, padding, the default traced position, layer / head selection, output shapes and the
    errors for bad arguments — lives here so that all methods behave identically.

    Instances are context managers, ``with AttentionRollout(model) as rollout: ...``, like the
    recorder; hooks are only registered while :meth:`attribute` runs and are always removed,
    also when the forward pass raises, so the model is left unchanged either way.

    **Threads.** One instance can be shared by threads: every per-call setting travels with the
    call as an argument (``options`` of :meth:`attribute_recorded` / :meth:`graph_rows`), never as
    an attribute of the instance, and what a call leaves behind for its caller (``layer_names``,
    ``AttentionFlow.gap``) is kept per thread: each thread reads the value of its own last call.
    Recording one model is serialised between threads (see ``AttentionRecorder``).
    """

    #: Whether the method needs every head of every layer (no head fusion inside the hooks).
    needs_heads: bool = False

    def __init__(
        self,
        forward_func: Callable,
        attention_layers: Sequence[nn.Module] | Sequence[str] | None = None,
        extractor: Callable | None = None,
    ) -> None:
        r"""
        Args:

            forward_func (Callable or torch.nn.Module): The model, or any function running it.
                        It is called as ``forward_func(*inputs, *additional_forward_args)``
                        (or with keyword arguments, see :meth:`attribute`). Its output is only
                        used by the gradient-weighted method.
            attention_layers (list of torch.nn.Module or str, optional): The self-attention
                        modules to record, first layer first, or name patterns of them.
                        Default: found automatically in ``forward_func`` when it is an
                        ``nn.Module``. Required when ``forward_func`` is a plain function.
            extractor (Callable, optional): ``fn(module, args, kwargs, output) -> Tensor``
                        returning a module's attention weights ``(batch, heads, n, n)``, for
                        custom modules the recorder does not know.
                        Default: the recorder's built-in adapters.

        Raises:
            TypeError: ``forward_func`` is not a module and ``attention_layers`` is not a list
                        of modules.
            ValueError: no attention module found (checked here, before any forward pass), or
                        ``attention_layers`` names modules that are not in the model.
        """
        if not isinstance(forward_func, nn.Module) and attention_layers is None:
            raise TypeError(
                f"forward_func is a {type(forward_func).__name__}, not a torch.nn.Module, so its "
                f"attention modules cannot be discovered; pass attention_layers=[...] (the "
                f"self-attention modules, first layer first) or pass the model itself."
            )
        if not isinstance(forward_func, nn.Module) and not (
            isinstance(attention_layers, (list, tuple, nn.ModuleList))
            and all(isinstance(a, nn.Module) for a in attention_layers)
        ):
            raise TypeError(
                "with a plain forward function, attention_layers must be a list of the attention "
                "modules themselves (names need forward_func to be the nn.Module they belong to)."
            )
        super().__init__(forward_func)
        self.model = forward_func if isinstance(forward_func, nn.Module) else FunctionModule(forward_func, attention_layers)
        self.attention_layers = attention_layers
        self.extractor = extractor
        self._local = threading.local()  # what a call leaves for its own thread (see the class docstring)
        self._registered_names: list[str] = AttentionRecorder(self.model, attention_layers, extractor).registered_layers

    @property
    def layer_names(self) -> list[str]:
        """Qualified names of the attention modules; after :meth:`attribute`, of the layers recorded
        in this thread's last forward pass, in the order they ran."""
        return getattr(self._local, "layer_names", self._registered_names)

    @layer_names.setter
    def layer_names(self, names: list[str]) -> None:
        self._local.layer_names = list(names)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_local", None)  # per-thread results of calls do not travel
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def __enter__(self) -> "AttentionAttribution":
        return self

    def __exit__(self, *exc_info) -> None:
        """Nothing to release: hooks only exist while :meth:`attribute` runs (also on errors)."""

    def record(
        self,
        inputs,
        additional_forward_args,
        *,
        head_fusion: str | None,
        keep_graph: bool = False,
        contributions: bool = False,
    ) -> tuple:
        """Run the model once under the recorder.

        Returns:
            ``(attentions, mask, output)``: ``L`` tensors ``(batch, heads, n, n)`` (``heads = 1``
            when ``head_fusion`` is given), the ``(batch, n)`` bool padding mask or ``None``, and
            the model's output; with ``contributions=True`` a fourth item, the recorder's ``terms``
            (what the value-norm and ALTI graphs need, one per layer).
        """
        inputs = as_input_tuple(inputs)
        if isinstance(additional_forward_args, Mapping):
            args, kwargs = inputs, dict(additional_forward_args)
        else:
            args, kwargs = inputs + positional_arguments(additional_forward_args), {}
        recorder = AttentionRecorder(
            self.model, self.attention_layers, self.extractor, head_fusion=head_fusion, keep_graph=keep_graph,
            contributions=contributions,
        )
        with recorder, torch.set_grad_enabled(keep_graph):
            output = self.model(*args, **kwargs)
        attentions = recorder.attentions
        self.layer_names = recorder.layers
        batch = inputs[0].shape[0]
        if attentions[0].shape[0] != batch:
            raise ValueError(
                f"the model produced attention for a batch of {attentions[0].shape[0]} but inputs "
                f"has a batch of {batch}; check that inputs and additional_forward_args describe "
                f"the same examples."
            )
        try:
            mask = recorder.mask
        except ValueError as error:
            raise ValueError(
                f"the padding mask in additional_forward_args does not fit the inputs: {error} Pass "
                f"an attention_mask of shape (batch, n) with one row per example of inputs."
            ) from error
        return (attentions, mask, output, recorder.terms) if contributions else (attentions, mask, output)

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
    ) -> Tensor:
        r"""
        Args:

            inputs (Tensor or tuple[Tensor, ...]): The model's leading positional argument(s):
                        token ids ``(batch, n)``, ``inputs_embeds`` ``(batch, n, d)`` or pixel
                        values ``(batch, channels, height, width)``. Only the batch axis is
                        read; the number of tokens ``n`` is that of the recorded attention.
                        To feed ``inputs_embeds`` to a Hugging Face model (whose first argument
                        is ``input_ids``), construct the method with a function such as
                        ``lambda embeds, attention_mask: model(inputs_embeds=embeds,
                        attention_mask=attention_mask)`` and ``attention_layers``; name the
                        mask parameter ``attention_mask`` so the recorder finds the padding.
            target (int, tuple, Tensor or list, optional): Accepted for drop-in compatibility
                        with Captum and ignored: attention is class-agnostic, every class gets
                        the same attribution. Use :class:`GradientWeightedRollout` for
                        class-specific maps.
                        Default: None
            additional_forward_args (Any, optional): Extra arguments of the forward call,
                        e.g. the attention mask. A tuple (or single object) is passed
                        positionally after ``inputs``, as in Captum:
                        ``forward_func(*inputs, *additional_forward_args)``; a dict is passed
                        as keyword arguments, the natural form for Hugging Face models:
                        ``{"attention_mask": mask}``. The recorder reads the padding mask from
                        the model call; padded tokens get exactly 0.
                        Default: None
            position (int, list[int], Tensor, str or None, optional): The output (query)
                        position whose attention is traced back to the input tokens: an int
                        (negative counts from the end of the padded sequence), one int per
                        example, ``"max"`` — per input token the maximum over all real query
                        positions (the paper's SST-2 view) — or ``"all"`` for every query row.
                        Default ``None``: position 0 (``[CLS]`` of BERT-like encoders and ViT)
                        unless the recorded attention is causal (lower-triangular on the real
                        tokens in every layer: GPT-2, Llama, ...), then the last real token of
                        each example.
            layer (int, list[int] or str, optional): The attention layer the position is read
                        at, 0-based (``0`` is the first attention layer ``L1``, ``-1`` the last).
                        A list or ``"all"`` returns a layer axis; every layer is computed from
                        one forward pass and one graph, so all layers cost about as much as the
                        deepest one.
                        Default: -1
            head (int, optional): Appendix A.1 "input attention" of one head of ``layer``: the
                        layers below are fused and rolled out (flowed), the head's own matrix
                        (with the residual) goes on top. ``None`` fuses all heads.
                        Default: None
            residual (bool, optional): Model the residual connection,
                        ``Â = rownorm(A_fused + I)`` (the paper). Raw attention never adds it.
                        Default: True
            head_fusion (str, optional): ``"mean"`` (the paper), ``"max"`` or ``"min"`` over
                        heads. When ``head`` is None, heads are fused inside the forward hooks,
                        so only ``L·n²`` floats per example are kept; the result equals the
                        functional API on the model's per-head ``output_attentions``.
                        Default: "mean"
            graph (str, optional): The edges of the graph (``docs/design.md``, "Contribution
                        graphs"): ``"attention"`` — the paper's ``rownorm(mean_h A_l + I)``;
                        ``"value_norm"`` — Kobayashi et al. (2020), ``‖Σ_h α^h_ij W_O^h v^h_j‖₂``
                        row-normalised, then ``rownorm(M_l + I)``; ``"alti"`` — Ferrando et al.
                        (2022), residual (and post-norm LayerNorm) inside, no ``+ I``. The
                        non-default graphs also record the value vectors, the output projection
                        and the block input (:func:`captum_attnflow.value_norm_graph`,
                        :func:`captum_attnflow.alti_graph`); ``head`` and ``head_fusion`` other
                        than ``"mean"`` apply to ``"attention"`` only.
                        Default: "attention"

        Returns:
            *Tensor* of **attributions**:
            - **attributions** (*Tensor*): one score per token of the attention sequence,
                        ``(batch, n)``; ``(batch, len(layers), n)`` when ``layer`` is a list or
                        ``"all"``; ``position="all"`` adds a query axis before the token axis:
                        ``(batch, n, n)`` / ``(batch, len(layers), n, n)``. For ViT ``n``
                        counts the ``[CLS]`` (and any register) tokens followed by the patches
                        in row-major order; :func:`patch_grid` reshapes to the patch grid.
                        Padded tokens score exactly 0.

        Raises:
            ValueError: ``position``, ``layer`` or ``head`` out of range, a position on a
                        padding token, ``head`` when the recorded attention has a single head,
                        inputs whose batch does not match the attention or the padding mask.
            TypeError: arguments of the wrong type.
        """
        return self.attribute_with_options(
            inputs, additional_forward_args, position=position, layer=layer, head=head, residual=residual,
            head_fusion=head_fusion, graph=graph,
        )

    def attribute_with_options(
        self, inputs, additional_forward_args, *, position, layer, head, residual, head_fusion,
        graph: str = "attention", options=None,
    ) -> Tensor:
        """:meth:`attribute` with the method's own per-call settings ``options`` (passed to
        :meth:`graph_rows` as keyword arguments, e.g. rollout's ``discard_ratio``)."""
        check_graph_options(graph, head, head_fusion)
        contributions = graph != "attention"
        capture_fusion = None if head is not None or self.needs_heads or contributions else head_fusion
        if capture_fusion is not None:
            check_head_fusion(capture_fusion)
        recorded = self.record(inputs, additional_forward_args, head_fusion=capture_fusion, contributions=contributions)
        return self.attribute_recorded(
            recorded[0], recorded[1], position=position, layer=layer, head=head, residual=residual,
            head_fusion=head_fusion, graph=graph, terms=recorded[3] if contributions else None, options=options,
        )

    def graph_rows(
        self,
        attentions: list[Tensor],
        mask: Tensor | None,
        *,
        gradients: list[Tensor] | None,
        layers: list[int],
        positions: list[int] | None,
        head: int | None,
        residual: bool,
        head_fusion: str,
        **options,
    ) -> Tensor:
        """The method's matrices at ``layers``: ``(batch, len(layers), n, n)``.

        ``attentions`` is a :class:`~captum_attnflow.graph.ContributionGraph` for ``graph=``
        other than ``"attention"`` (the functional API takes either). ``attentions`` (and ``gradients``, the target's gradient with respect to them, when the
        method uses gradients) are ``L`` tensors ``(batch, heads, n, n)``; ``mask`` is
        ``(batch, n)`` bool or None. Only rows in ``positions`` (all rows when ``None``) need to
        be valid. ``options`` are the method's own per-call settings (none for most methods).
        """
        raise NotImplementedError

    def attribute_recorded(
        self,
        attentions: list[Tensor],
        mask: Tensor | None,
        *,
        gradients: list[Tensor] | None = None,
        position,
        layer,
        head: int | None,
        residual: bool,
        head_fusion: str,
        graph: str = "attention",
        terms: Sequence | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> Tensor:
        """Token scores from recorded attention; see :meth:`attribute` for the arguments.

        ``attentions`` (and ``gradients`` for gradient-weighted methods) are ``L`` tensors
        ``(batch, heads, n, n)``; ``mask`` is a ``(batch, n)`` bool padding mask or None;
        ``terms`` the recorder's ``terms`` (``contributions=True``), needed for ``graph`` other
        than ``"attention"``; ``options`` the method's own per-call settings, passed on to
        :meth:`graph_rows`.
        """
        check_head_fusion(head_fusion)
        check_graph_options(graph, head, head_fusion)
        if head is not None:
            num_heads = attentions[0].shape[1]
            if num_heads == 1 and head != 0:
                raise ValueError(
                    f"head={head} cannot be selected: the recorded attention has a single head "
                    f"(heads are fused inside the model or by the extractor). Record per-head "
                    f"attention or pass head=None."
                )
            head = check_index(head, num_heads, "head", "heads")
        layers, keep_layer_axis = resolve_layers(layer, len(attentions))
        positions = resolve_positions(position, attentions, mask)
        source = attentions
        if graph != "attention":
            if terms is None:
                raise ValueError(f"graph={graph!r} needs the recorder's terms: record with contributions=True.")
            source = recorded_graph(graph, attentions, terms, mask=mask)
        try:
            scores = self.scores(source, mask, gradients, positions, layers, head, residual, head_fusion, options)
        except RowSumError as error:  # its hint (renormalize=True) is an option of the functional API only
            raise ValueError(
                f"the recorded attention is not row-stochastic: {str(error).split(' Attention must')[0]}. "
                f"Attention recorded from the model must be its softmax weights: call model.eval() "
                f"(attention dropout in train mode changes the row sums), and make a custom extractor "
                f"return the normalised weights."
            ) from error
        return scores if keep_layer_axis else scores[:, 0]

    def scores(self, attentions, mask, gradients, positions, layers, head, residual, head_fusion, options=None) -> Tensor:
        """``(batch, len(layers), ...)`` scores for resolved positions (see :meth:`attribute_recorded`)."""
        options = dict(options or {})
        if isinstance(positions, str):
            matrices = self.graph_rows(
                attentions, mask, gradients=gradients, layers=layers, positions=None, head=head,
                residual=residual, head_fusion=head_fusion, **options,
            )
            scores = matrices if positions == "all" else matrices.amax(dim=-2)
        else:
            scores = None
            contribution = isinstance(attentions, ContributionGraph)
            device = attentions.matrices.device if contribution else attentions[0].device
            for value in positions.unique().tolist():
                rows = (positions == value).nonzero().flatten().to(device)
                if len(rows) == positions.shape[0]:  # every example: no copy (L·n² floats at 4k tokens)
                    rows = slice(None)
                sub = self.graph_rows(
                    attentions.select(rows) if contribution else [a[rows] for a in attentions],
                    None if mask is None else mask[rows],
                    gradients=None if gradients is None else [g[rows] for g in gradients],
                    layers=layers, positions=[value], head=head, residual=residual, head_fusion=head_fusion,
                    **options,
                )[:, :, value]
                if scores is None:
                    scores = sub.new_zeros((positions.shape[0],) + sub.shape[1:])
                scores[rows] = sub
        return scores
