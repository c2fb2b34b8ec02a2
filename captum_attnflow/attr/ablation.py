"""Leave-one-out ablation of generated text by key removal: the neutral perturbation for decoders.

Blank-out (the paper's reference) replaces a token by a "blank" id. On a decoder LLM no id is
blank: Captum's default baseline, id 0, is ``<|endoftext|>`` in SmolLM2 — a document separator
that cuts the model off from everything before it, so ``FeatureAblation`` with that baseline
ranks the *latest* tokens first whatever they say. :class:`LLMKeyAblation` removes a prompt token
instead: token ``j`` is dropped as a **key in every attention layer** through a 4-D attention
mask, every other token keeps its position (explicit ``position_ids``), and nothing is put in
its place. The score of prompt token ``j`` for output token ``t`` is

    log p(target_t | prompt + target[:t]) - log p(target_t | same, token j removed as a key).

A token is never removed from its *own* query row (the residual stream carries it at its
position anyway), so no attention row is ever empty and the mask is the same for every
attention kernel: the logits of every other position equal those of a run in which the token's
attention column is zeroed and the rows renormalised (``tests/test_key_ablation.py``).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from captum_attnflow.attr.text import LLMAttentionResult, LLMTextAttribution, pretty_tokens

#: the perturbations :func:`perturbed_log_probs` applies to the selected tokens
PERTURBATIONS: tuple[str, ...] = ("remove", "replace")


def key_removal_mask(removed: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """The additive 4-D attention mask ``(B, 1, n, n)`` of a causal model with keys removed.

    Args:
        removed: ``(B, n)`` bool, True where the token is removed as a key.
        dtype: the model's float dtype (masked entries hold its most negative finite value).

    Entry ``[b, 0, i, j]`` is 0 when query ``i`` may read key ``j`` — ``j <= i`` and (``j`` not
    removed or ``j == i``) — else ``finfo(dtype).min``.
    """
    if removed.dim() != 2 or removed.dtype != torch.bool:
        raise ValueError(f"removed must be a (batch, n) bool tensor; got {removed.dtype} {tuple(removed.shape)}.")
    n = removed.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=removed.device).tril()
    eye = torch.eye(n, dtype=torch.bool, device=removed.device)
    allowed = causal[None] & (~removed[:, None, :] | eye[None])
    mask = torch.zeros(allowed.shape, dtype=dtype, device=removed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def _keeps_logits(model: nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - an unusual forward
        return False


@torch.no_grad()
def perturbed_log_probs(
    model: nn.Module,
    ids: Tensor,
    perturbed: Tensor,
    positions: Sequence[int],
    *,
    perturbation: str = "remove",
    neutral_id: int | None = None,
    batch_size: int = 16,
) -> Tensor:
    """Next-token log-probabilities of a causal LM at ``positions`` under token perturbations.

    Args:
        model: a Hugging Face causal LM (Llama/Qwen2/GPT-2 style: ``attention_mask``,
            ``position_ids``, ``.logits``).
        ids: ``(n,)`` token ids.
        perturbed: ``(B, n)`` bool: the tokens each of the ``B`` rows perturbs (an all-False row
            is the unperturbed model).
        positions: the positions whose next-token distribution is returned; they must be the
            last ``len(positions)`` positions, in order, when the model takes ``logits_to_keep``.
        perturbation: ``"remove"`` — the tokens are removed as keys in every layer
            (:func:`key_removal_mask`), positions kept; ``"replace"`` — their ids become
            ``neutral_id`` (a plain causal pass, positions kept).
        neutral_id: the replacement id for ``"replace"``.
        batch_size: rows per forward pass.

    Returns:
        ``(B, len(positions), vocab)`` float32 log-probabilities.
    """
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {perturbation!r}; choose one of {PERTURBATIONS}.")
    if perturbation == "replace" and neutral_id is None:
        raise ValueError("perturbation='replace' needs neutral_id, the token id put in place of a perturbed token.")
    device = next(model.parameters()).device
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    ids, perturbed = ids.to(device), perturbed.to(device)
    n, positions = ids.shape[0], list(positions)
    tail = positions == list(range(n - len(positions), n)) and _keeps_logits(model)
    out = []
    for start in range(0, perturbed.shape[0], batch_size):
        rows = perturbed[start : start + batch_size]
        batch = ids[None].expand(rows.shape[0], n)
        kwargs: dict[str, Any] = {"position_ids": torch.arange(n, device=device)[None].expand_as(batch), "use_cache": False}
        if perturbation == "remove":
            kwargs["attention_mask"] = key_removal_mask(rows, dtype)
        else:
            batch = batch.masked_fill(rows, int(neutral_id))
        if tail:
            kwargs["logits_to_keep"] = len(positions)
        logits = model(input_ids=batch, **kwargs).logits
        logits = logits if tail else logits[:, positions]
        out.append(torch.log_softmax(logits.float(), dim=-1))
    return torch.cat(out)


class LLMKeyAblation(LLMTextAttribution):
    r"""
    Leave-one-out ablation of a prompt for generated text, by removing each prompt token as a
    key in every attention layer (positions kept) — the neutral perturbation for decoders (see
    the module docstring). Same call shape and result as Captum's
    ``LLMAttribution(FeatureAblation(model), tokenizer)``: ``token_attr[t, j]`` is the drop of the
    log-probability of output token ``t`` when prompt token ``j`` is removed, and ``seq_attr`` is
    the drop of the whole target's log-probability (the row sum). One forward pass per prompt
    token, ``batch_size`` at a time; the target is teacher-forced (one pass explains every
    output token).

    Example::

        >>> model, tokenizer = load_gguf_causal_lm()
        >>> result = LLMKeyAblation(model, tokenizer).attribute("The capital of France is", target=" Paris")
        >>> fig, ax = result.plot_token_attr()
    """

    def __init__(self, model: nn.Module, tokenizer, *, batch_size: int = 16) -> None:
        r"""
        Args:

            model (nn.Module): a Hugging Face causal LM whose forward takes a 4-D additive
                        ``attention_mask`` and ``position_ids`` (Llama, Qwen2, Mistral, GPT-2,
                        ... in transformers 5; eager or SDPA attention).
            tokenizer (Tokenizer): the model's tokenizer.
            batch_size (int, optional): perturbed copies per forward pass. Default: 16
        """
        if not (isinstance(model, nn.Module) and hasattr(model, "config") and hasattr(model, "get_input_embeddings")):
            raise TypeError(f"model must be a Hugging Face causal language model; got {type(model).__name__}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
        super().__init__(model, tokenizer)
        self.batch_size = batch_size

    def attribute(
        self,
        inp,
        target: str | Tensor | Sequence[int] | None = None,
        gen_args: dict[str, Any] | None = None,
        skip_tokens: Sequence[int] | Sequence[str] | None = None,
    ) -> LLMAttentionResult:
        r"""
        Args:

            inp (str or TextTokenInput): the prompt (as :meth:`LLMAttentionAttribution.attribute`).
            target (str, list[int] or Tensor, optional): the text to explain, or ``None`` to
                        generate it with ``gen_args``. Default: None
            gen_args (dict, optional): ``model.generate`` arguments when ``target`` is None
                        (``None``: Captum's greedy defaults). Default: None
            skip_tokens (list[int] or list[str], optional): prompt tokens left out of the result
                        (and never removed). Default: None

        Returns:
            :class:`~captum_attnflow.LLMAttentionResult` (a Captum :class:`~captum.attr.LLMAttributionResult`): ``token_attr``
            ``(len(output_tokens), len(input_tokens))`` in nats, ``seq_attr`` its column sums,
            ``output_probs`` the unperturbed probability of each target token.
        """
        inp = self.prompt_input(inp, skip_tokens)
        prompt = inp.inp_tensor[0].to(self.device)
        self.check_length(prompt.shape[0], "inp")
        target = self.target_tokens(prompt[None], target, gen_args).to(self.device)
        self.check_length(prompt.shape[0] + target.numel(), "inp + target")
        ids = torch.cat([prompt, target[:-1]])
        positions = list(range(prompt.shape[0] - 1, ids.shape[0]))
        columns = torch.arange(prompt.shape[0], device=self.device)
        if inp.itp_mask is not None:
            columns = columns[inp.itp_mask[0].to(self.device)]
        perturbed = torch.zeros(columns.numel() + 1, ids.shape[0], dtype=torch.bool, device=self.device)
        perturbed[torch.arange(1, columns.numel() + 1, device=self.device), columns] = True
        log_probs = perturbed_log_probs(self.model, ids, perturbed, positions, batch_size=self.batch_size)
        picked = log_probs.gather(2, target[None, :, None].expand(log_probs.shape[0], -1, 1))[..., 0]
        token_attr = (picked[0][None] - picked[1:]).T  # (T, features)
        return LLMAttentionResult(
            seq_attr=token_attr.sum(0),
            token_attr=token_attr,
            input_tokens=inp.values,
            output_tokens=pretty_tokens(target, self.tokenizer),
            output_probs=picked[0].exp(),
            inp=inp,
            tokenizer=self.tokenizer,
            output_token_ids=target.tolist(),
        )
