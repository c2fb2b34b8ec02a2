"""Explaining generated text with attention methods, the way Captum's ``LLMAttribution`` does.

:class:`LLMAttentionAttribution` wraps one of this package's attribution classes built on a
Hugging Face causal language model and returns Captum's
:class:`~captum.attr.LLMAttributionResult`: one row of input-token scores per output token,
their sum over the output tokens, and Captum's plots. The attention of the whole text is
recorded in ONE forward pass over prompt + target: because the attention is causal, the graph
below position ``p`` is the same as in a pass over the first ``p + 1`` tokens alone, so row
``t`` (the position ``len(prompt) - 1 + t`` that predicts output token ``t``) is exactly the
method's attribution on that prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from captum_attnflow.attr.base import AttentionAttribution, check_graph_options
from captum_attnflow.attr.inputs import output_tensor, resolve_layers
from captum_attnflow.attr.gradient import GradientWeightedRollout, attention_gradients
from captum_attnflow.attr.text import LLMAttentionResult, LLMTextAttribution, pretty_tokens
from captum_attnflow.graph import check_head_fusion, check_index, recorded_graph, without_sink

class LLMAttentionAttribution(LLMTextAttribution):
    r"""
    Attention attribution of generated text, mirroring Captum's
    :class:`~captum.attr.LLMAttribution`: wraps :class:`RawAttention`,
    :class:`AttentionRollout`, :class:`AttentionFlow` or :class:`GradientWeightedRollout`
    (any :class:`AttentionAttribution`) built on a Hugging Face causal LM, and explains each
    token of a target text (given, or generated from the prompt) by the prompt's tokens.

    Row ``t`` of ``token_attr`` is the method's attribution from the position that predicts
    output token ``t`` — position ``len(prompt) - 1 + t``, the last prompt token for ``t = 0`` —
    to the prompt tokens, at the method's ``layer``. It equals
    ``attr_method.attribute(prompt + target[:t], position=-1)`` restricted to the prompt's
    columns (not renormalised: for ``t > 0`` the rest of rollout's / flow's unit mass sits on
    the earlier output tokens). All rows come from ONE forward pass over
    ``prompt + target[:-1]`` (causal attention below a position does not see later tokens);
    flow solves only the ``T`` traced positions, in one call. For
    :class:`GradientWeightedRollout` the objective of row ``t`` is the log-probability of output
    token ``t`` at its position, as in Captum's ``LLMGradientAttribution``; the heads' gradients
    come from one backward pass per output token through that single forward graph.

    ``seq_attr`` is the sum of the rows over the output tokens: the attribution of the whole
    target, as in Captum, whose sequence objective is the sum of the tokens' log-probabilities
    (its ``LLMGradientAttribution`` sums the rows too). For rollout and flow, whose rows are
    shares of a unit mass, it is the total share each prompt token receives over the target.

    One prompt at a time (batch of one), like Captum's LLM classes.

    Example::

        >>> model, tokenizer = load_gguf_causal_lm()
        >>> llm_attr = LLMAttentionAttribution(AttentionRollout(model), tokenizer)
        >>> result = llm_attr.attribute("The capital of France is", target=" Paris")
        >>> result.token_attr.shape          # (len(output_tokens), len(input_tokens))
        >>> fig, ax = result.plot_token_attr()   # readable: see LLMAttentionResult
    """

    def __init__(self, attr_method: AttentionAttribution, tokenizer) -> None:
        r"""
        Args:

            attr_method (AttentionAttribution): :class:`RawAttention`,
                        :class:`AttentionRollout`, :class:`AttentionFlow` or
                        :class:`GradientWeightedRollout` constructed with the causal language
                        model itself (a Hugging Face ``PreTrainedModel`` with ``config``,
                        ``get_input_embeddings`` and, to generate, ``generate``).
            tokenizer (Tokenizer): the model's Hugging Face tokenizer.

        Raises:
            TypeError: ``attr_method`` is not an attention attribution built on such a model.
            ValueError: the tokenizer does not match the model (:func:`check_tokenizer`).
        """
        if not isinstance(attr_method, AttentionAttribution):
            raise TypeError(
                f"attr_method must be one of this package's attention attributions (RawAttention, "
                f"AttentionRollout, AttentionFlow, GradientWeightedRollout); got {type(attr_method).__name__}. "
                f"For Captum's own methods use captum.attr.LLMAttribution / LLMGradientAttribution."
            )
        model = attr_method.forward_func
        if not (isinstance(model, nn.Module) and hasattr(model, "config") and hasattr(model, "get_input_embeddings")):
            raise TypeError(
                f"attr_method must be built on the causal language model itself (a Hugging Face model with "
                f"config and get_input_embeddings), not on a {type(model).__name__}: the prompt and target are "
                f"tokenised, generated and run through that model."
            )
        super().__init__(model, tokenizer)
        self.attr_method = attr_method

    def attribute(
        self,
        inp,
        target: str | Tensor | Sequence[int] | None = None,
        gen_args: dict[str, Any] | None = None,
        skip_tokens: Sequence[int] | Sequence[str] | None = None,
        layer: int = -1,
        head: int | None = None,
        residual: bool = True,
        head_fusion: str = "mean",
        graph: str = "attention",
        drop_sink: int | None = None,
    ) -> LLMAttentionResult:
        r"""
        Args:

            inp (str or TextTokenInput): The prompt. A string is tokenised as
                        ``tokenizer(inp)`` does (special tokens included); a Captum
                        ``TextTokenInput`` is used as it is (with its own ``skip_tokens``).
            target (str, list[int] or Tensor, optional): The text to explain: a string
                        (tokenised without special tokens, as Captum does) or its token ids
                        ``(T,)`` / ``(1, T)``. ``None`` generates it from the prompt with
                        ``gen_args``.
                        Default: None
            gen_args (dict, optional): ``model.generate`` arguments when ``target`` is None,
                        e.g. ``{"max_new_tokens": 20, "do_sample": False}``; ``None`` uses
                        Captum's defaults (greedy, 25 new tokens). One sequence only.
                        Default: None
            skip_tokens (list[int] or list[str], optional): Prompt tokens (ids or token
                        strings) dropped from the input side of the result, e.g.
                        ``[tokenizer.bos_token]`` — as Captum's ``TextTokenInput(...,
                        skip_tokens=...)``; the model still reads them.
                        Default: None
            layer (int, optional): The attention layer the rows are read at (``-1``: last).
                        Default: -1
            head: As in :meth:`AttentionAttribution.attribute`.
            residual: As in :meth:`AttentionAttribution.attribute`.
            head_fusion: As in :meth:`AttentionAttribution.attribute`.
            graph: As in :meth:`AttentionAttribution.attribute`
                        (``graph="value_norm"``/``"alti"``: the contribution graphs; not with
                        :class:`GradientWeightedRollout`, whose graph is gradient-weighted attention).
            drop_sink (int, optional): a token position (``0``: the first token, the attention
                        sink of most decoders) whose column is removed from every layer's graph
                        before the method runs (:func:`~captum_attnflow.graph.without_sink`); its
                        score is then 0 for every output token. ``graph="alti", drop_sink=0``
                        with :class:`AttentionRollout` is the attention-graph method that measured
                        best on a decoder (the docs' LLM page). Not with ``head`` or
                        :class:`GradientWeightedRollout`.
                        Default: None (keep it)

        Returns:
            :class:`LLMAttentionResult` (a Captum
            :class:`~captum.attr.LLMAttributionResult` whose ``plot_token_attr`` draws
            :func:`~captum_attnflow.visualize.plot_llm_attribution`) with ``input_tokens`` (the prompt's
            tokens, ``tokenizer.convert_ids_to_tokens``, minus ``skip_tokens``),
            ``output_tokens`` (Captum's readable target tokens), ``token_attr``
            ``(len(output_tokens), len(input_tokens))``, ``seq_attr``
            ``(len(input_tokens),)`` = ``token_attr.sum(0)``, ``output_probs`` ``(T,)``: the
            model's probability of each target token given everything before it, and ``inp``.

        Raises:
            TypeError: ``inp``, ``target`` or ``gen_args`` of an unsupported type.
            ValueError: an empty prompt or target, prompt + target longer than
                        ``config.max_position_embeddings``, ``gen_args`` with a target or
                        asking for several sequences, ``layer`` not one int, bad ``head``,
                        ``head_fusion`` or ``skip_tokens``.
        """
        check_head_fusion(head_fusion)
        check_graph_options(graph, head, head_fusion)
        if graph != "attention" and isinstance(self.attr_method, GradientWeightedRollout):
            raise ValueError(f"graph={graph!r} is not defined for GradientWeightedRollout; use AttentionRollout, "
                             f"AttentionFlow or RawAttention.")
        layers, several = resolve_layers(layer, len(self.attr_method.layer_names))
        if several:
            raise ValueError(f"layer={layer!r}: token_attr has one row per output token, so pass one layer (an int).")
        inp = self.prompt_input(inp, skip_tokens)
        prompt = inp.inp_tensor.to(self.device)
        self.check_length(prompt.shape[1], "inp")
        target = self.target_tokens(prompt, target, gen_args)
        self.check_length(prompt.shape[1] + target.numel(), "inp + target")
        ids = torch.cat([prompt, target[:-1].to(self.device)[None]], dim=1)
        positions = list(range(prompt.shape[1] - 1, ids.shape[1]))
        rows, log_probs = self.rows(ids, target.to(self.device), positions, layers, head, residual, head_fusion, graph,
                                    drop_sink)
        token_attr = rows[:, : prompt.shape[1]]
        if inp.itp_mask is not None:
            token_attr = token_attr[:, inp.itp_mask[0].to(token_attr.device)]
        return LLMAttentionResult(
            seq_attr=token_attr.sum(0),
            token_attr=token_attr,
            input_tokens=inp.values,
            output_tokens=pretty_tokens(target, self.tokenizer),
            output_probs=log_probs.exp(),
            inp=inp,
            tokenizer=self.tokenizer,
            output_token_ids=target.tolist(),
        )

    def rows(
        self,
        ids: Tensor,
        target: Tensor,
        positions: list[int],
        layers: list[int],
        head: int | None,
        residual: bool,
        head_fusion: str,
        graph: str = "attention",
        drop_sink: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One forward pass over ``ids`` ``(1, n)``; the method's rows at ``positions`` ``(T, n)``
        and the log-probability of each ``target`` token ``(T,)`` at its position."""
        method = self.attr_method
        gradient = isinstance(method, GradientWeightedRollout)
        if drop_sink is not None and (gradient or head is not None):
            raise ValueError("drop_sink changes the fused graph: it cannot be combined with head= or GradientWeightedRollout.")
        contributions = graph != "attention"
        capture_fusion = None if head is not None or method.needs_heads or contributions else head_fusion
        recorded = method.record(ids, None, head_fusion=capture_fusion, keep_graph=gradient, contributions=contributions)
        attentions, mask, output = recorded[:3]
        if head is not None:
            head = check_index(head, attentions[0].shape[1], "head", "heads")
        logits = output_tensor(output)[0, positions]
        log_probs = torch.log_softmax(logits.float(), dim=-1).gather(1, target[:, None])[:, 0]
        options = dict(layers=layers, head=head, residual=residual, head_fusion=head_fusion)
        if not gradient:
            if hasattr(method, "gap"):  # AttentionFlow: the proven error of this call's rows
                method.gap = 0.0
            source = recorded_graph(graph, attentions, recorded[3], mask=mask) if contributions else attentions
            if drop_sink is not None:
                source = without_sink(source, drop_sink, mask=mask)
            matrix = method.graph_rows(source, mask, gradients=None, positions=positions, **options)
            return matrix[0, 0, positions], log_probs.detach()
        detached = [a.detach() for a in attentions]
        rows = []
        for t, position in enumerate(positions):
            gradients = attention_gradients(log_probs[t], attentions, retain_graph=t + 1 < len(positions))
            if any(g is None for g in gradients):
                raise ValueError(
                    "the target's log-probability does not depend on the recorded attention: the recorder returned "
                    "weights the model did not use; load the model with eager attention."
                )
            matrix = method.graph_rows(detached, mask, gradients=gradients, positions=[position], **options)
            rows.append(matrix[0, 0, position])
        return torch.stack(rows), log_probs.detach()
