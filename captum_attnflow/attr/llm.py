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

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from captum.attr import Attribution, LLMAttributionResult, TextTokenInput
from captum.attr._core.llm_attr import DEFAULT_GEN_ARGS, _convert_ids_to_pretty_tokens
from torch import Tensor, nn

from captum_attnflow.attr.base import AttentionAttribution, output_tensor, resolve_layers
from captum_attnflow.attr.gradient import GradientWeightedRollout, attention_gradients
from captum_attnflow.graph import check_head_fusion, check_index
from captum_attnflow.validation import check_loaded

#: The special tokens whose ids must agree between the tokenizer and the model.
SPECIAL_TOKENS: tuple[str, ...] = ("bos", "eos", "pad")


def model_token_ids(model: nn.Module, name: str) -> set[int]:
    """The ids the model's ``config`` and ``generation_config`` give special token ``name``
    (``"bos"``, ``"eos"`` or ``"pad"``); empty when neither sets it. Lists (several eos ids)
    contribute every id."""
    ids: set[int] = set()
    for config in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        value = getattr(config, f"{name}_token_id", None)
        if value is not None:
            ids.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    return ids


def check_tokenizer(tokenizer, model: nn.Module) -> None:
    """Refuse a tokenizer that does not belong to ``model``.

    Raises:
        ValueError: the tokenizer has more tokens than the model's input embedding has rows, a
            bos/eos/pad id outside the embedding, or a bos/eos/pad id the model's ``config`` /
            ``generation_config`` define differently.
    """
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but the model's input embedding has {rows} rows: the tokenizer "
            f"does not belong to this model; pass the model's own tokenizer."
        )
    if len(tokenizer) < rows - max(VOCAB_PADDING, rows // 20):
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but the model's input embedding has {rows} rows — more than "
            f"a padded vocabulary leaves unused: the tokenizer belongs to another model, and its ids would be read "
            f"as other tokens; pass the model's own tokenizer."
        )
    _compare_with_own_tokenizer(tokenizer, model)
    for name in SPECIAL_TOKENS:
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is None:
            continue
        if not 0 <= token_id < rows:
            raise ValueError(
                f"tokenizer.{name}_token_id={token_id} is outside the model's {rows} embedding rows; pass the "
                f"model's own tokenizer."
            )
        expected = model_token_ids(model, name)
        if expected and token_id not in expected:
            raise ValueError(
                f"tokenizer.{name}_token_id={token_id} but the model's config / generation_config say "
                f"{sorted(expected)}: the tokenizer does not match the model; pass the model's own tokenizer "
                f"(or set tokenizer.{name}_token to the model's)."
            )


#: embedding rows a model may keep beyond its tokenizer (vocabularies padded to a multiple of 64/128 or
#: with reserved ids); a tokenizer short by more than this and 5 % of the rows belongs to another model
VOCAB_PADDING = 256
#: token ids compared with the model's own tokenizer
VOCAB_SAMPLE = 512


def _compare_with_own_tokenizer(tokenizer, model: nn.Module) -> None:
    """Refuse ``tokenizer`` when the model was loaded from a local folder whose own tokenizer
    spells a sample of the ids differently (same special ids, another vocabulary)."""
    from pathlib import Path

    config = getattr(model, "config", None)
    folder = getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    if not folder or not Path(str(folder)).is_dir():
        return
    folder = Path(str(folder))
    mine = getattr(tokenizer, "name_or_path", None)
    if mine and Path(str(mine)).is_dir() and Path(str(mine)).resolve() == folder.resolve():
        return
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json",
                                                       "tokenizer.model")):
        return
    try:
        from transformers import AutoTokenizer

        own = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception:  # noqa: BLE001 - no usable tokenizer there: nothing to compare with
        return
    count = min(len(own), len(tokenizer))
    step = max(1, count // VOCAB_SAMPLE)
    ids = list(range(0, count, step))
    theirs, expected = tokenizer.convert_ids_to_tokens(ids), own.convert_ids_to_tokens(ids)
    differing = [(i, a, b) for i, a, b in zip(ids, theirs, expected) if a != b]
    if differing or len(own) != len(tokenizer):
        example = (f"id {differing[0][0]} is {differing[0][1]!r} in it but {differing[0][2]!r} in the model's"
                   if differing else f"{len(tokenizer)} tokens against the model's {len(own)}")
        raise ValueError(
            f"the tokenizer's vocabulary is not the one of the model loaded from {folder} ({example}); its ids "
            f"would be read as other tokens; pass the model's own tokenizer (AutoTokenizer.from_pretrained of that folder)."
        )


#: gen_args the attribution sets itself or that change what generate returns
RESERVED_GEN_ARGS: tuple[str, ...] = ("return_dict_in_generate", "input_ids", "inputs", "attention_mask",
                                      "inputs_embeds", "streamer")


def check_gen_args(gen_args) -> dict[str, Any]:
    """``gen_args`` (``None``: Captum's greedy defaults) as a dict for ``model.generate``.

    Raises:
        TypeError: not a mapping. ValueError: several returned sequences, or sampling with
            several beams — a result holds one target.
    """
    if gen_args is None:
        return dict(DEFAULT_GEN_ARGS)
    if not isinstance(gen_args, Mapping):
        raise TypeError(f"gen_args must be a dict of model.generate arguments; got {type(gen_args).__name__}.")
    reserved = [key for key in RESERVED_GEN_ARGS if key in gen_args]
    if reserved:
        raise ValueError(
            f"gen_args sets {reserved}: the attribution passes the prompt itself and reads the generated token ids "
            f"from generate()'s plain output; remove {', '.join(reserved)}."
        )
    if gen_args.get("num_return_sequences", 1) != 1:
        raise ValueError(
            f"gen_args has num_return_sequences={gen_args['num_return_sequences']}; one result explains one "
            f"target, so generate one sequence (call attribute once per target string instead)."
        )
    if gen_args.get("do_sample", False) and gen_args.get("num_beams", 1) != 1:
        raise ValueError(
            f"gen_args samples with num_beams={gen_args['num_beams']}; beam sampling is not supported: use "
            f"do_sample=False (greedy or beam search) or num_beams=1."
        )
    return dict(gen_args)


def target_ids(target, tokenizer, rows: int) -> Tensor:
    """The target's token ids as a non-empty 1-D long tensor.

    Args:
        target: a string (tokenised without special tokens, as Captum does) or token ids: a list,
            a 1-D tensor or a ``(1, T)`` tensor.
        tokenizer: the model's tokenizer.
        rows: the number of input embedding rows (valid ids are ``0 .. rows - 1``).

    Raises:
        TypeError: another type or non-integer ids. ValueError: empty, a batch of several
            targets, or ids out of range.
    """
    if isinstance(target, str):
        ids = torch.tensor(tokenizer.encode(target, add_special_tokens=False), dtype=torch.long)
        if ids.numel() == 0:
            raise ValueError(f"target {target!r} tokenises to nothing; pass a non-empty target text or token ids.")
        return ids
    if not isinstance(target, (Tensor, Sequence)):
        raise TypeError(f"target must be a string, a list of token ids or a tensor of them; got {type(target).__name__}.")
    ids = torch.as_tensor(target)
    if ids.numel() == 0:
        raise ValueError("target is empty; pass at least one token id (or a string, or None to generate).")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dtype.is_complex:
        raise TypeError(f"target token ids must be integers; got dtype {ids.dtype}.")
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1:
        raise ValueError(
            f"target has shape {tuple(ids.shape)}; pass the token ids of one target, (T,) or (1, T) — one prompt "
            f"and one target at a time."
        )
    if int(ids.min()) < 0 or int(ids.max()) >= rows:
        raise ValueError(f"target has token ids outside the model's vocabulary 0..{rows - 1}: {ids.tolist()}.")
    return ids.long()


class LLMAttentionAttribution(Attribution):
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
        >>> fig, ax = result.plot_token_attr()
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
        check_loaded(model)
        check_tokenizer(tokenizer, model)
        super().__init__(model)
        self.attr_method = attr_method
        self.model: nn.Module = model
        self.tokenizer = tokenizer
        self.device: torch.device = next(model.parameters()).device

    def prompt_input(self, inp, skip_tokens) -> TextTokenInput:
        """``inp`` as a Captum ``TextTokenInput`` (a string is tokenised with ``skip_tokens``)."""
        if skip_tokens is not None and (isinstance(skip_tokens, (str, bytes)) or not isinstance(skip_tokens, Sequence)):
            raise TypeError(
                f"skip_tokens must be a list of token strings or token ids, not a {type(skip_tokens).__name__}"
                + (f"; for one token pass [{skip_tokens!r}]." if isinstance(skip_tokens, str) else ".")
            )
        if skip_tokens is not None and any(isinstance(t, bool) or not isinstance(t, (str, int)) for t in skip_tokens):
            raise TypeError(f"skip_tokens must hold token strings or integer token ids; got {list(skip_tokens)!r}.")
        if isinstance(inp, str):
            if skip_tokens is not None:
                rows = self.model.get_input_embeddings().num_embeddings
                outside = [t for t in skip_tokens if isinstance(t, int) and not 0 <= t < rows]
                if outside:
                    raise ValueError(f"skip_tokens has token ids outside the model's vocabulary 0..{rows - 1}: {outside}.")
                vocab = self.tokenizer.get_vocab()
                unknown = [t for t in skip_tokens if isinstance(t, str) and t not in vocab]
                if unknown:
                    raise ValueError(f"skip_tokens has tokens the tokenizer does not know: {unknown}; pass "
                                     f"token strings of its vocabulary (e.g. tokenizer.bos_token) or token ids.")
            inp = TextTokenInput(inp, self.tokenizer, skip_tokens=skip_tokens)
        elif isinstance(inp, TextTokenInput):
            if skip_tokens is not None:
                raise ValueError("skip_tokens is given twice: inp is a TextTokenInput, which carries its own "
                                 "skip_tokens; pass them to TextTokenInput(..., skip_tokens=...) only.")
        else:
            raise TypeError(
                f"inp must be a prompt string or a captum.attr.TextTokenInput (one prompt); got "
                f"{type(inp).__name__}. Other interpretable inputs (TextTemplateInput, ImageMaskInput) have "
                f"features that are not the prompt's tokens, which attention attributes to."
            )
        if inp.inp_tensor.shape[0] != 1 or inp.inp_tensor.shape[1] == 0:
            raise ValueError(f"inp tokenises to {tuple(inp.inp_tensor.shape)} token ids; pass one non-empty prompt.")
        if inp.n_itp_features == 0:
            raise ValueError("skip_tokens removes every prompt token; nothing would be left to attribute to.")
        return inp

    def check_length(self, tokens: int, what: str) -> None:
        """Raise ``ValueError`` naming ``what`` when ``tokens`` exceed ``max_position_embeddings``."""
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and tokens > limit:
            raise ValueError(
                f"{what} has {tokens} tokens, more than the model's maximum of {limit} "
                f"(config.max_position_embeddings); shorten the prompt or the target."
            )

    def target_tokens(self, prompt: Tensor, target, gen_args) -> Tensor:
        """The target's ids ``(T,)``: ``target`` tokenised, or generated from ``prompt`` ``(1, P)``."""
        rows = self.model.get_input_embeddings().num_embeddings
        if target is not None:
            if gen_args is not None:
                raise ValueError("gen_args is only used to generate a target; pass gen_args=None with a target.")
            return target_ids(target, self.tokenizer, rows)
        gen_args = check_gen_args(gen_args)
        if not callable(getattr(self.model, "generate", None)):
            raise ValueError(f"target is None but the {type(self.model).__name__} has no generate(); pass the target.")
        self.check_length(prompt.shape[1] + 1, "inp (plus one generated token)")
        with torch.no_grad():
            out = self.model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **gen_args)
        generated = out[0, prompt.shape[1]:].cpu()
        if generated.numel() == 0:
            raise ValueError(f"generation with gen_args={gen_args} produced no token; allow max_new_tokens >= 1.")
        return generated

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
    ) -> LLMAttributionResult:
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
            head, residual, head_fusion: As in :meth:`AttentionAttribution.attribute`.

        Returns:
            :class:`~captum.attr.LLMAttributionResult` with ``input_tokens`` (the prompt's
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
        rows, log_probs = self.rows(ids, target.to(self.device), positions, layers, head, residual, head_fusion)
        token_attr = rows[:, : prompt.shape[1]]
        if inp.itp_mask is not None:
            token_attr = token_attr[:, inp.itp_mask[0].to(token_attr.device)]
        return LLMAttributionResult(
            seq_attr=token_attr.sum(0),
            token_attr=token_attr,
            input_tokens=inp.values,
            output_tokens=_convert_ids_to_pretty_tokens(target, self.tokenizer),
            output_probs=log_probs.exp(),
            inp=inp,
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
    ) -> tuple[Tensor, Tensor]:
        """One forward pass over ``ids`` ``(1, n)``; the method's rows at ``positions`` ``(T, n)``
        and the log-probability of each ``target`` token ``(T,)`` at its position."""
        method = self.attr_method
        gradient = isinstance(method, GradientWeightedRollout)
        capture_fusion = None if head is not None or method.needs_heads else head_fusion
        attentions, mask, output = method.record(ids, None, head_fusion=capture_fusion, keep_graph=gradient)
        if head is not None:
            head = check_index(head, attentions[0].shape[1], "head", "heads")
        logits = output_tensor(output)[0, positions]
        log_probs = torch.log_softmax(logits.float(), dim=-1).gather(1, target[:, None])[:, 0]
        options = dict(layers=layers, head=head, residual=residual, head_fusion=head_fusion)
        if not gradient:
            if hasattr(method, "gap"):  # AttentionFlow: the proven error of this call's rows
                method.gap = 0.0
            matrix = method.graph_rows(attentions, mask, gradients=None, positions=positions, **options)
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
