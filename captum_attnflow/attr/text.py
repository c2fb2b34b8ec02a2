"""What every attribution of generated text shares: the prompt (a string or ``TextTokenInput``,
``skip_tokens``), the target (given or generated with ``gen_args``), checks of the tokenizer, and
:class:`LLMAttentionResult`, Captum's result with a readable plot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from captum.attr import Attribution, LLMAttributionResult, TextTokenInput
from captum.attr._core.llm_attr import DEFAULT_GEN_ARGS, _convert_ids_to_pretty_tokens
from torch import Tensor, nn

from captum_attnflow.utils.validation import check_loaded

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


class LLMAttentionResult(LLMAttributionResult):
    """Captum's :class:`~captum.attr.LLMAttributionResult` (every attribute and method kept) whose
    :meth:`plot_token_attr` is readable: decoded token labels, a sequential colour map for
    non-negative scores, a width cap for long prompts and the attention-sink column on its own
    scale (:func:`captum_attnflow.visualize.plot_llm_attribution`). Captum's own plot stays
    available as ``LLMAttributionResult.plot_token_attr(result)``.

    Args:
        tokenizer: the model's tokenizer (kept to decode the token labels).
        output_token_ids: the target's token ids, one per output token (to label each output
            token exactly, e.g. a lone space, which Captum's readable ``output_tokens`` leave
            empty). The other arguments are Captum's.
    """

    def __init__(self, *, tokenizer=None, output_token_ids: Sequence[int] | None = None, **captum_fields) -> None:
        super().__init__(**captum_fields)
        self.tokenizer = tokenizer
        self.output_token_ids = None if output_token_ids is None else [int(i) for i in output_token_ids]

    def plot_token_attr(self, show: bool = False, **options):
        """Draw :func:`~captum_attnflow.visualize.plot_llm_attribution` (``options`` are its
        keyword arguments: ``sink="separate" | "log" | "keep"``, ``wrap``, ``annotate``, ...).

        Returns:
            ``(figure, axes)`` — the figure and the axes of the map's first band — as Captum's
            method; with ``show=True`` the figure is a ``pyplot`` one, shown, and ``None`` is
            returned.
        """
        from captum_attnflow.visualize import plot_llm_attribution

        if show:
            import matplotlib.pyplot as plt

            plot_llm_attribution(self, figure=plt.figure(), **options)
            plt.show()
            return None
        figure = plot_llm_attribution(self, **options)
        return figure, figure.axes[0]


class LLMTextAttribution(Attribution):
    """What every attribution of generated text here shares with Captum's ``LLMAttribution``:
    the prompt (a string or ``TextTokenInput``, ``skip_tokens``), the target (a string, token
    ids, or generated with ``gen_args``) and the length checks. Subclasses implement
    ``attribute`` and return :class:`~captum.attr.LLMAttributionResult`."""

    def __init__(self, model: nn.Module, tokenizer) -> None:
        check_loaded(model)
        check_tokenizer(tokenizer, model)
        super().__init__(model)
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


def pretty_tokens(ids: Tensor, tokenizer) -> list[str]:
    """Captum's readable output tokens for ``ids`` ``(T,)``, one per id.

    Captum's own conversion raises ``IndexError`` when the last tokens split one UTF-8 character
    (e.g. ``¡`` generated as two byte-level pieces); then each id is decoded alone (a partial
    character shows as ``�``), so a result is never lost to its labels.
    """
    ids = ids.detach().cpu()
    try:
        tokens = _convert_ids_to_pretty_tokens(ids, tokenizer)
    except (IndexError, ValueError):
        tokens = []
    if len(tokens) != ids.numel():
        tokens = [tokenizer.decode([int(i)]) for i in ids.tolist()]
    return tokens
