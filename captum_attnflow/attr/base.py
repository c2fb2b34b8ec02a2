"""Shared machinery of the attention attribution classes.

:class:`AttentionAttribution` is the Captum :class:`~captum.attr.Attribution` subclass every
attention method derives from. It runs the model once under an
:class:`~captum_attnflow.capture.AttentionRecorder`, resolves ``position`` / ``layer`` /
``head`` against the recorded attention, and hands the per-layer graph matrices to the
subclass, which computes them with the functional API (:mod:`captum_attnflow.graph`,
:mod:`captum_attnflow.flow`). The free functions below are shared with
:mod:`captum_attnflow.compare`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Sequence

import numpy as np
import torch
from captum.attr import Attribution
from torch import Tensor, nn

from captum_attnflow.capture import AttentionRecorder
from captum_attnflow.graph import RowSumError, check_head_fusion, check_index

#: ``position`` values that trace every query position instead of one.
MULTI_POSITIONS: tuple[str, ...] = ("max", "all")

#: Attention weights above the diagonal at most this large count as "masked" when deciding
#: whether the model is causal (HF's finite "minus infinity" gives exact zeros).
CAUSAL_TOLERANCE = 1e-8


# --------------------------------------------------------------------------------------------
# Calling the forward function the way Captum does
# --------------------------------------------------------------------------------------------


def as_input_tuple(inputs) -> tuple[Tensor, ...]:
    """``inputs`` (a tensor or a tuple of tensors) as a non-empty tuple of tensors."""
    if isinstance(inputs, Tensor):
        return (inputs,)
    if isinstance(inputs, tuple) and inputs and all(isinstance(t, Tensor) for t in inputs):
        return inputs
    raise TypeError(
        f"inputs must be a tensor (token ids, inputs_embeds or pixel values) or a non-empty tuple "
        f"of tensors, the model's leading positional arguments; got {type(inputs).__name__}."
    )


def forward_call(forward_func: Callable, num_inputs: int, additional_forward_args) -> tuple[Callable, tuple]:
    """Normalise Captum's ``additional_forward_args`` into ``(call, extra_args)``.

    ``call(*inputs, *extra_args)`` runs ``forward_func`` with the user's extra arguments, so the
    pair can be handed to any Captum method (which expands tensors in ``extra_args`` along the
    batch when it needs to). ``additional_forward_args`` may be ``None``, one object, a tuple of
    extra positional arguments (Captum's convention), or a mapping of keyword arguments — the
    natural form for Hugging Face models, e.g. ``{"attention_mask": mask}``; a mapping becomes
    positional values that ``call`` binds back to their keywords.
    """
    if isinstance(additional_forward_args, Mapping):
        keys = tuple(additional_forward_args)
        for key in keys:
            if not isinstance(key, str):
                raise TypeError(f"additional_forward_args keys must be argument names (str); got {key!r}.")

        def call(*args):
            return forward_func(*args[:num_inputs], **dict(zip(keys, args[num_inputs:])))

        return call, tuple(additional_forward_args.values())
    return forward_func, positional_arguments(additional_forward_args)


def positional_arguments(additional_forward_args) -> tuple:
    """Captum's convention: ``None`` -> ``()``, a tuple as it is, anything else -> ``(it,)``."""
    if additional_forward_args is None:
        return ()
    if isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)


def output_tensor(output) -> Tensor:
    """The tensor a target is selected from: the output itself, or its ``logits`` field."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise TypeError(
        f"forward_func returned a {type(output).__name__}, which has no tensor to select a target "
        f"from. Pass a forward_func that returns the scores, e.g. "
        f"lambda ids, mask: model(ids, attention_mask=mask).logits."
    )


# --------------------------------------------------------------------------------------------
# Resolving position / layer / head
# --------------------------------------------------------------------------------------------


def is_causal(attentions: Sequence[Tensor], mask: Tensor | None) -> bool:
    """Whether every recorded attention matrix is lower-triangular on the real tokens.

    Args:
        attentions: ``L`` tensors ``(batch, heads, n, n)``.
        mask: ``(batch, n)`` bool, ``True`` for real tokens, or ``None``.
    """
    n = attentions[0].shape[-1]
    upper = torch.ones(n, n, dtype=torch.bool, device=attentions[0].device).triu(1)
    if mask is not None:
        upper = upper & mask[:, None, :, None] & mask[:, None, None, :]  # (batch, 1, n, n)
    return all(bool((layer.detach().abs() * upper).amax() <= CAUSAL_TOLERANCE) for layer in attentions)


def resolve_positions(position, attentions: Sequence[Tensor], mask: Tensor | None) -> Tensor | str:
    """The traced output position of every example, or ``"max"`` / ``"all"``.

    Args:
        position: ``None`` (default: the last real token for causal attention, else 0 — the
            ``[CLS]`` token), an int (negative counts from the end of the padded sequence), a
            sequence or 1-D tensor of one int per example, or ``"max"`` / ``"all"``.
        attentions: ``L`` tensors ``(batch, heads, n, n)``.
        mask: ``(batch, n)`` bool padding mask or ``None``.

    Returns:
        A long tensor ``(batch,)`` of positions in ``range(n)``, or the string.

    Raises:
        ValueError: a position out of range or on a padding token; TypeError: a bad type.
    """
    batch, n = attentions[0].shape[0], attentions[0].shape[-1]
    if isinstance(position, str):
        if position not in MULTI_POSITIONS:
            raise ValueError(
                f"position={position!r} is not understood; pass an int, one int per example, or "
                f"one of {MULTI_POSITIONS}."
            )
        return position
    if position is None:
        if is_causal(attentions, mask):
            last = torch.full((batch,), n - 1, dtype=torch.long)
            if mask is not None:
                last = (torch.arange(n, device=mask.device) * mask).argmax(dim=1).cpu()
            return last
        return torch.zeros(batch, dtype=torch.long)
    if isinstance(position, (int, np.integer)) and not isinstance(position, bool):
        positions = torch.full((batch,), check_index(position, n, "position", "token positions"), dtype=torch.long)
    elif isinstance(position, (Sequence, Tensor, np.ndarray)):
        values = torch.as_tensor(position).flatten().tolist()
        if len(values) != batch:
            raise ValueError(
                f"position has {len(values)} entries but the batch has {batch} examples; pass one "
                f"int per example or a single int."
            )
        positions = torch.tensor([check_index(v, n, "position", "token positions") for v in values], dtype=torch.long)
    else:
        raise TypeError(
            f"position must be None, an int, one int per example, or one of {MULTI_POSITIONS}; "
            f"got {type(position).__name__}."
        )
    if mask is not None:
        padded = (~mask.cpu()[torch.arange(batch), positions]).nonzero().flatten().tolist()
        if padded:
            raise ValueError(
                f"position points at a padding token in example(s) {padded} (mask is 0 there); "
                f"pass per-example positions of real tokens or leave position=None."
            )
    return positions


def resolve_layers(layer, num_layers: int) -> tuple[list[int], bool]:
    """``layer`` as 0-based layer indices, and whether the result has a layer axis.

    ``layer`` is an int (``-1`` = last layer, ``0`` = the first attention layer ``L1``),
    ``"all"``, or a sequence of ints (the layer axis follows its order).
    """
    if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        return [check_index(layer, num_layers, "layer", "attention layers")], False
    if layer == "all":
        return list(range(num_layers)), True
    if isinstance(layer, (Sequence, Tensor)) and not isinstance(layer, str):
        values = torch.as_tensor(layer).flatten().tolist() if isinstance(layer, Tensor) else list(layer)
        if not values:
            raise ValueError('layer is empty; pass an int, a non-empty list of ints, or "all".')
        return [check_index(v, num_layers, "layer", "attention layers") for v in values], True
    raise TypeError(f'layer must be an int, a sequence of ints or "all"; got {layer!r}.')


# --------------------------------------------------------------------------------------------
# The base class
# --------------------------------------------------------------------------------------------


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
        #: Qualified names of the attention modules; after :meth:`attribute`, of the layers
        #: recorded in that forward pass, in the order they ran.
        self.layer_names: list[str] = AttentionRecorder(self.model, attention_layers, extractor).registered_layers

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
    ) -> tuple[list[Tensor], Tensor | None, Any]:
        """Run the model once under the recorder.

        Returns:
            ``(attentions, mask, output)``: ``L`` tensors ``(batch, heads, n, n)`` (``heads = 1``
            when ``head_fusion`` is given), the ``(batch, n)`` bool padding mask or ``None``, and
            the model's output.
        """
        inputs = as_input_tuple(inputs)
        if isinstance(additional_forward_args, Mapping):
            args, kwargs = inputs, dict(additional_forward_args)
        else:
            args, kwargs = inputs + positional_arguments(additional_forward_args), {}
        recorder = AttentionRecorder(
            self.model, self.attention_layers, self.extractor, head_fusion=head_fusion, keep_graph=keep_graph
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
        return attentions, mask, output

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
        capture_fusion = None if head is not None or self.needs_heads else head_fusion
        if capture_fusion is not None:
            check_head_fusion(capture_fusion)
        attentions, mask, _ = self.record(inputs, additional_forward_args, head_fusion=capture_fusion)
        return self.attribute_recorded(
            attentions, mask, position=position, layer=layer, head=head, residual=residual, head_fusion=head_fusion
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
    ) -> Tensor:
        """The method's matrices at ``layers``: ``(batch, len(layers), n, n)``.

        ``attentions`` (and ``gradients``, the target's gradient with respect to them, when the
        method uses gradients) are ``L`` tensors ``(batch, heads, n, n)``; ``mask`` is
        ``(batch, n)`` bool or None. Only rows in ``positions`` (all rows when ``None``) need to
        be valid.
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
    ) -> Tensor:
        """Token scores from recorded attention; see :meth:`attribute` for the arguments.

        ``attentions`` (and ``gradients`` for gradient-weighted methods) are ``L`` tensors
        ``(batch, heads, n, n)``; ``mask`` is a ``(batch, n)`` bool padding mask or None.
        """
        check_head_fusion(head_fusion)
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
        try:
            scores = self.scores(attentions, mask, gradients, positions, layers, head, residual, head_fusion)
        except RowSumError as error:  # its hint (renormalize=True) is an option of the functional API only
            raise ValueError(
                f"the recorded attention is not row-stochastic: {str(error).split(' Attention must')[0]}. "
                f"Attention recorded from the model must be its softmax weights: call model.eval() "
                f"(attention dropout in train mode changes the row sums), and make a custom extractor "
                f"return the normalised weights."
            ) from error
        return scores if keep_layer_axis else scores[:, 0]

    def scores(self, attentions, mask, gradients, positions, layers, head, residual, head_fusion) -> Tensor:
        """``(batch, len(layers), ...)`` scores for resolved positions (see :meth:`attribute_recorded`)."""
        if isinstance(positions, str):
            matrices = self.graph_rows(
                attentions, mask, gradients=gradients, layers=layers, positions=None, head=head,
                residual=residual, head_fusion=head_fusion,
            )
            scores = matrices if positions == "all" else matrices.amax(dim=-2)
        else:
            scores = None
            for value in positions.unique().tolist():
                rows = (positions == value).nonzero().flatten().to(attentions[0].device)
                if len(rows) == positions.shape[0]:  # every example: no copy (L·n² floats at 4k tokens)
                    rows = slice(None)
                sub = self.graph_rows(
                    [a[rows] for a in attentions],
                    None if mask is None else mask[rows],
                    gradients=None if gradients is None else [g[rows] for g in gradients],
                    layers=layers, positions=[value], head=head, residual=residual, head_fusion=head_fusion,
                )[:, :, value]
                if scores is None:
                    scores = sub.new_zeros((positions.shape[0],) + sub.shape[1:])
                scores[rows] = sub
        return scores
