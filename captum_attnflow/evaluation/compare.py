"""Attention methods side by side with Captum's perturbation and gradient baselines.

:func:`compare_attributions` runs, on the same token-id inputs and the same target, the
attention methods of this package (raw attention, rollout, flow, gradient-weighted rollout)
and Captum's ``FeatureAblation`` / ``Occlusion`` (blank-out with a baseline token id),
``Saliency`` / ``InputXGradient`` (on the input embeddings) and ``LayerIntegratedGradients``
(on the embedding layer). Every method's result is reduced to one score per token, so the
returned tensors are aligned ``(batch, n)`` and can be correlated
(:func:`captum_attnflow.evaluation.metrics.spearman`), tabulated (:func:`format_table`) or plotted
(:mod:`captum_attnflow.visualize`).

Embedding-space attributions ``(batch, n, d)`` are reduced per token by
:func:`captum_attnflow.evaluation.metrics.reduce_gradients`: the L2 norm over the embedding dimension by
default (``gradient_reduction="l2"``), or ``"sum"`` (signed; with Integrated Gradients the
scores then add up to the output difference) or ``"abs_sum"`` ``|Σ_d g_d|`` (the paper's).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from captum.attr import FeatureAblation, InputXGradient, LayerIntegratedGradients, Occlusion, Saliency
from torch import Tensor, nn

from captum_attnflow.attr import AttentionFlow, AttentionRollout, GradientWeightedRollout, RawAttention
from captum_attnflow.attr.inputs import forward_call, output_tensor, resolve_positions
from captum_attnflow.evaluation.metrics import check_gradient_reduction, reduce_gradients

#: Attention methods (computed from one recorded forward pass, gradient rollout from its own).
ATTENTION_METHODS = {
    "raw": RawAttention,
    "rollout": AttentionRollout,
    "flow": AttentionFlow,
    "gradient_rollout": GradientWeightedRollout,
}
#: Captum baselines.
CAPTUM_METHODS: tuple[str, ...] = ("ablation", "occlusion", "saliency", "input_x_gradient", "layer_integrated_gradients")
#: What :func:`compare_attributions` runs by default.
DEFAULT_METHODS: tuple[str, ...] = (
    "raw", "rollout", "flow", "gradient_rollout", "ablation", "saliency", "input_x_gradient", "layer_integrated_gradients",
)


def default_target(scores: Tensor, positions: Tensor | str) -> list:
    """The predicted class of every example, in Captum's target format.

    Args:
        scores: the model's output, ``(batch, classes)`` or per position ``(batch, n, vocab)``.
        positions: ``(batch,)`` traced positions (used for per-position outputs).

    Returns:
        ``[class, ...]`` for ``(batch, classes)``, ``[(position, token), ...]`` for per-position
        outputs (the predicted token at each example's traced position).
    """
    if scores.dim() == 2:
        return scores.argmax(dim=1).tolist()
    if scores.dim() == 3:
        if isinstance(positions, str):
            raise ValueError(
                f"position={positions!r} gives no single output position to explain; pass target="
                f"[(position, token_id), ...] or an int position."
            )
        rows = torch.arange(scores.shape[0])
        tokens = scores[rows, positions.to(scores.device)].argmax(dim=-1)
        return [(int(p), int(t)) for p, t in zip(positions.tolist(), tokens.tolist())]
    raise ValueError(f"cannot choose a default target for an output of shape {tuple(scores.shape)}; pass target.")


def _hooked_output(layer: nn.Module, forward: Callable, args: tuple) -> Tensor:
    """Run ``forward(*args)`` and return what ``layer`` output during the run."""
    seen: list[Tensor] = []
    handle = layer.register_forward_hook(lambda module, inputs, output: seen.append(output))
    try:
        with torch.no_grad():
            forward(*args)
    finally:
        handle.remove()
    if len(seen) != 1 or not isinstance(seen[0], Tensor):
        raise ValueError(
            f"embedding_layer ran {len(seen)} times (or returned a non-tensor) in one forward pass; "
            f"pass the module that outputs the token embeddings (batch, n, d) exactly once."
        )
    return seen[0].detach()


def _embedding_forward(layer: nn.Module, forward: Callable, input_ids: Tensor) -> Callable:
    """``f(embeddings, *extra)``: the model on ``input_ids`` with ``layer``'s output replaced."""

    def run(embeddings: Tensor, *extra):
        handle = layer.register_forward_hook(lambda module, inputs, output: embeddings)
        try:
            return forward(input_ids, *extra)
        finally:
            handle.remove()

    return run


def captum_token_scores(
    name: str,
    forward: Callable,
    input_ids: Tensor,
    extra: tuple,
    target,
    *,
    baseline_token_id: int | None,
    embedding_layer: nn.Module | None,
    gradient_reduction: str,
    n_steps: int,
    occlusion_window: int,
) -> Tensor:
    """One Captum baseline of :data:`CAPTUM_METHODS`, reduced to ``(batch, n)``.

    ``forward(input_ids, *extra)`` returns the scores ``target`` selects from; the other
    arguments are those of :func:`compare_attributions`.
    """
    if name == "ablation":
        with torch.no_grad():
            return FeatureAblation(forward).attribute(
                input_ids, baselines=int(baseline_token_id), target=target, additional_forward_args=extra
            )
    if name == "occlusion":
        with torch.no_grad():
            return Occlusion(forward).attribute(
                input_ids, sliding_window_shapes=(occlusion_window,), baselines=int(baseline_token_id),
                target=target, additional_forward_args=extra,
            )
    if name == "layer_integrated_gradients":
        attributions = LayerIntegratedGradients(forward, embedding_layer).attribute(
            input_ids, baselines=torch.full_like(input_ids, int(baseline_token_id)), target=target,
            additional_forward_args=extra, n_steps=n_steps,
        )
        return reduce_gradients(attributions.detach(), gradient_reduction)
    embeddings = _hooked_output(embedding_layer, forward, (input_ids, *extra)).requires_grad_()
    embedded = _embedding_forward(embedding_layer, forward, input_ids)
    if name == "saliency":
        attributions = Saliency(embedded).attribute(embeddings, target=target, abs=False, additional_forward_args=extra)
    elif name == "input_x_gradient":
        attributions = InputXGradient(embedded).attribute(embeddings, target=target, additional_forward_args=extra)
    else:
        raise ValueError(f"unknown Captum method {name!r}; choose one of {CAPTUM_METHODS}.")
    return reduce_gradients(attributions.detach(), gradient_reduction)


def compare_attributions(
    model: nn.Module,
    input_ids: Tensor,
    *,
    additional_forward_args=None,
    target=None,
    methods: Sequence[str] = DEFAULT_METHODS,
    position=None,
    layer: int = -1,
    residual: bool = True,
    head_fusion: str = "mean",
    baseline_token_id: int | None = None,
    embedding_layer: nn.Module | None = None,
    gradient_reduction: str = "l2",
    probabilities: bool = True,
    n_steps: int = 20,
    occlusion_window: int = 3,
    forward_func: Callable | None = None,
    attention_layers=None,
    extractor: Callable | None = None,
    flow_solver: str = "auto",
) -> dict[str, Tensor]:
    r"""Run attention methods and Captum baselines on the same inputs; one score per token each.

    Args:
        model: the model; its attention modules are recorded (or ``attention_layers``) and it is
            called as ``model(input_ids, *additional_forward_args)`` unless ``forward_func`` is
            given.
        input_ids: ``(batch, n)`` integer token ids.
        additional_forward_args: extra forward arguments as in
            :meth:`~captum_attnflow.attr.AttentionAttribution.attribute`: a tuple (positional)
            or a dict (keywords, e.g. ``{"attention_mask": mask}``).
        target: the output explained by the Captum methods and gradient-weighted rollout, in
            Captum's format. Default: the predicted class of each example for
            ``(batch, classes)`` outputs; for per-position outputs ``(batch, n, vocab)`` (language
            models) the predicted token at each example's traced position,
            ``[(position, token), ...]``.
        methods: names from :data:`ATTENTION_METHODS` (``"raw"``, ``"rollout"``, ``"flow"``,
            ``"gradient_rollout"``) and :data:`CAPTUM_METHODS`: ``"ablation"`` (FeatureAblation,
            each token alone replaced by ``baseline_token_id``), ``"occlusion"`` (Occlusion,
            windows of ``occlusion_window`` tokens, stride 1), ``"saliency"`` (gradient w.r.t.
            the embedding output), ``"input_x_gradient"`` (gradient × embedding),
            ``"layer_integrated_gradients"`` (on ``embedding_layer``, baseline: every token
            ``baseline_token_id``, ``n_steps`` steps).
        position: the traced output position of the attention methods (see ``attribute``);
            default ``[CLS]`` (0) for encoders, the last real token for causal models.
            ``"max"`` is allowed when ``target`` is given or the output is ``(batch, classes)``.
        layer: the attention layer of the attention methods (0-based, default the last).
        residual: as in ``attribute``.
        head_fusion: as in ``attribute``.
        baseline_token_id: the blank token for ablation, occlusion and the Integrated Gradients
            baseline. Default: ``model.config.pad_token_id`` when the model has one.
        embedding_layer: the module whose output are the token embeddings ``(batch, n, d)``.
            Default: ``model.get_input_embeddings()`` (Hugging Face); for models adding position
            embeddings after it (BERT, GPT-2) the gradient equals the gradient w.r.t. token +
            position embedding.
        gradient_reduction: ``"l2"`` (default), ``"sum"`` or ``"abs_sum"`` over the embedding
            dimension, for saliency, input × gradient and integrated gradients.
        probabilities: Captum methods explain ``softmax`` of the output over its last axis
            (the paper's blank-out uses probabilities); ``False`` uses the raw output.
        n_steps: Integrated Gradients steps.
        occlusion_window: tokens per occlusion window.
        forward_func: a function ``f(input_ids, *additional_forward_args)`` to call instead of
            ``model`` (its output, or its ``logits`` field, must be a tensor).
        attention_layers: passed to the attention methods (see the recorder).
        extractor: passed to the attention methods (see the recorder).
        flow_solver: the max-flow solver of :class:`~captum_attnflow.attr.AttentionFlow`.

    Returns:
        ``{name: Tensor (batch, n)}`` in the order of ``methods``, every tensor detached, float,
        on ``input_ids``'s device; padded tokens score 0. Attention scores are non-negative;
        ablation / occlusion are Captum's signed ``f(x) - f(x with the token blanked)`` (take
        ``abs()`` for the paper's blank-out score); gradient scores follow
        ``gradient_reduction``.

    Raises:
        ValueError: unknown method or reduction, ``input_ids`` not ``(batch, n)``, no
            ``baseline_token_id`` / ``embedding_layer`` found when a method needs one, or the
            errors of the attention methods (position, layer, mask).
        TypeError: ``input_ids`` not an integer tensor.
    """
    if not isinstance(input_ids, Tensor) or input_ids.is_floating_point() or input_ids.is_complex():
        raise TypeError("input_ids must be an integer torch.Tensor of token ids with shape (batch, n).")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (batch, n); got shape {tuple(input_ids.shape)}.")
    unknown = [name for name in methods if name not in ATTENTION_METHODS and name not in CAPTUM_METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown methods {unknown}; choose from {tuple(ATTENTION_METHODS) + CAPTUM_METHODS}.")
    check_gradient_reduction(gradient_reduction, "gradient_reduction")
    if {"ablation", "occlusion", "layer_integrated_gradients"} & set(methods) and baseline_token_id is None:
        baseline_token_id = getattr(getattr(model, "config", None), "pad_token_id", None)
        if baseline_token_id is None:
            raise ValueError(
                "baseline_token_id is needed for ablation / occlusion / integrated gradients and the model "
                "has no config.pad_token_id; pass e.g. the [UNK], [MASK] or [PAD] id."
            )
    if {"saliency", "input_x_gradient", "layer_integrated_gradients"} & set(methods) and embedding_layer is None:
        if not hasattr(model, "get_input_embeddings"):
            raise ValueError(
                "embedding_layer is needed for saliency / input_x_gradient / layer_integrated_gradients; "
                "pass the module that outputs the token embeddings (batch, n, d)."
            )
        embedding_layer = model.get_input_embeddings()

    forward = model if forward_func is None else forward_func
    call, extra = forward_call(forward, 1, additional_forward_args)

    def scores_of(*args) -> Tensor:
        output = output_tensor(call(*args))
        return output.softmax(dim=-1) if probabilities else output

    recorder = RawAttention(forward, attention_layers=attention_layers, extractor=extractor)
    with torch.no_grad():
        attentions, mask, output = recorder.record(input_ids, additional_forward_args, head_fusion=head_fusion)
    positions = resolve_positions(position, attentions, mask)
    if target is None:
        target = default_target(output_tensor(output), positions)
    live = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.to(input_ids.device)
    if tuple(live.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"the recorded attention covers {tuple(live.shape)} (batch, n) tokens but input_ids has shape "
            f"{tuple(input_ids.shape)}; compare_attributions needs one attention position per input id."
        )

    results: dict[str, Tensor] = {}
    for name in methods:
        options = dict(position=positions, layer=layer, head=None, residual=residual, head_fusion=head_fusion)
        if name == "gradient_rollout":
            method = GradientWeightedRollout(forward, attention_layers=attention_layers, extractor=extractor)
            scores = method.attribute(input_ids, target=target, additional_forward_args=additional_forward_args, **options)
        elif name in ATTENTION_METHODS:
            kwargs = {"flow_solver": flow_solver} if name == "flow" else {}
            method = ATTENTION_METHODS[name](forward, attention_layers=attention_layers, extractor=extractor, **kwargs)
            scores = method.attribute_recorded(attentions, mask, **options)
        else:
            scores = captum_token_scores(
                name, scores_of, input_ids, extra, target, baseline_token_id=baseline_token_id,
                embedding_layer=embedding_layer, gradient_reduction=gradient_reduction, n_steps=n_steps,
                occlusion_window=occlusion_window,
            )
        scores = scores.detach().to(input_ids.device)
        if not scores.is_floating_point():
            scores = scores.float()
        results[name] = scores * live.to(scores.dtype)
    return results


def format_table(
    scores: Mapping[str, Tensor],
    tokens: Sequence[str] | None = None,
    *,
    example: int = 0,
    mask: Tensor | None = None,
    digits: int = 3,
) -> str:
    """A plain-text table of one example: one row per token, one column per method.

    Args:
        scores: ``{name: (batch, n)}``, e.g. from :func:`compare_attributions`.
        tokens: the example's ``n`` token strings (default: the positions ``0..n-1``).
        example: which example of the batch.
        mask: optional ``(batch, n)`` padding mask; padded tokens are left out.
        digits: significant digits per value.

    Returns:
        The table as a string (no trailing newline).
    """
    if not scores:
        raise ValueError("scores is empty; pass {name: (batch, n) tensor}.")
    shapes = {name: tuple(value.shape) for name, value in scores.items()}
    first = next(iter(shapes.values()))
    if len(first) != 2 or any(shape != first for shape in shapes.values()):
        raise ValueError(f"every score must have the same shape (batch, n); got {shapes}.")
    batch, n = first
    if not -batch <= example < batch:
        raise ValueError(f"example={example} is out of range for a batch of {batch}.")
    if tokens is None:
        tokens = [str(index) for index in range(n)]
    if len(tokens) != n:
        raise ValueError(f"tokens has {len(tokens)} entries but the scores have n = {n} tokens.")
    keep = range(n) if mask is None else mask[example].nonzero().flatten().tolist()
    cells = {name: [f"{float(value[example, j]):.{digits}g}" for j in keep] for name, value in scores.items()}
    widths = {name: max(len(name), *(len(cell) for cell in column)) for name, column in cells.items()}
    token_width = max(len("token"), *(len(tokens[j]) for j in keep))
    lines = ["  ".join([f"{'token':<{token_width}}"] + [f"{name:>{widths[name]}}" for name in cells])]
    for row, j in enumerate(keep):
        lines.append("  ".join([f"{tokens[j]:<{token_width}}"] + [f"{cells[name][row]:>{widths[name]}}" for name in cells]))
    return "\n".join(lines)
