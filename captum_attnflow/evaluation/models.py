"""The model interface of the evaluation: a sequence classifier seen through five calls.

Evaluation needs more than ``model(x)``: class probabilities from token ids (blank-out,
occlusion, AOPC) and from input embeddings (gradients, Integrated Gradients), the embeddings
themselves, and the attention weights of every layer. :class:`Classifier` names these calls;
:class:`HFClassifier` implements them for any Hugging Face ``...ForSequenceClassification``-style
model (``input_ids``/``inputs_embeds``/``attention_mask`` in, ``.logits`` out; the attention is
recorded with :class:`~captum_attnflow.capture.AttentionRecorder`, so eager and SDPA both work).
Wrap another model by subclassing :class:`Classifier`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Sequence

import torch
from torch import nn

from captum_attnflow.capture import AttentionRecorder
from captum_attnflow.graph import ContributionGraph, check_graph, recorded_graph


class Classifier(ABC):
    """A sequence classifier as the evaluation uses it.

    Attributes:
        blank_id: token id that replaces a token in blank-out, occlusion and AOPC deletion (the
            paper: ``[UNK]``).
        pad_id: token id used for padding (ignored by the model through the attention mask).
        max_length: longest input the model accepts (``None``: no limit).
        padding_sides: where batches may be padded (default ``("right",)``: real tokens at their
            own positions); list ``"left"`` too only when the model counts positions from the mask.
    """

    blank_id: int
    pad_id: int
    max_length: int | None
    padding_sides: tuple[str, ...] = ("right",)

    @abstractmethod
    def probabilities(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(batch, classes)`` from ``(batch, n)`` ids and ``(batch, n)`` mask."""

    @abstractmethod
    def probabilities_from_embeddings(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Class probabilities ``(batch, classes)`` from ``(batch, n, d)`` input embeddings (differentiable)."""

    @abstractmethod
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The input embeddings ``(batch, n, d)`` that :meth:`probabilities_from_embeddings` takes."""

    @abstractmethod
    def attentions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Sequence[torch.Tensor]:
        """The attention weights: ``L`` tensors ``(batch, heads, n, n)``, first layer first."""

    @property
    @abstractmethod
    def embedding_layer(self) -> nn.Module:
        """The module producing the token embeddings (for Captum's ``Layer*`` attributions)."""

    def contribution_graphs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, graphs: Sequence[str]
    ) -> dict[str, ContributionGraph]:
        """The context-mixing graphs ``graphs`` (``"value_norm"``, ``"alti"``) of one forward pass:
        :class:`~captum_attnflow.graph.ContributionGraph` s with ``(batch, L, n, n)`` matrices.

        The built-in classifiers record them with ``AttentionRecorder(model, contributions=True)``;
        a subclass that cannot must say so (the default raises NotImplementedError).
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not build value-norm/ALTI graphs; override contribution_graphs() "
            f"(see HFClassifier) or use the attention graph (methods raw, rollout, flow)."
        )


def record_graphs(model: nn.Module, forward: Callable[[], object], mask: torch.Tensor,
                  graphs: Sequence[str]) -> dict[str, ContributionGraph]:
    """Run ``forward()`` under ``AttentionRecorder(model, contributions=True)`` and build each of
    ``graphs`` from the one recording (``mask``: the ``(batch, n)`` padding mask of that pass)."""
    for graph in graphs:
        check_graph(graph)
    with AttentionRecorder(model, contributions=True) as recorder:
        forward()
    return {graph: recorded_graph(graph, recorder.attentions, recorder.terms, mask=mask) for graph in graphs}


def last_real_token(mask: torch.Tensor) -> torch.Tensor:
    """``(batch,)`` index of each row's last real token (mask 1), for right and left padding alike."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (positions * (mask != 0)).argmax(-1)


def _last_token_pooling(model: nn.Module) -> bool:
    """True for decoder classifiers (GPT-2, Llama, Qwen2, Mistral, ...): a ``score`` head applied to every
    position and the last non-padding token pooled — found by transformers from ``input_ids`` only."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    return isinstance(getattr(model, "score", None), nn.Module) and isinstance(base, nn.Module) and base is not model


class HFClassifier(Classifier):
    """:class:`Classifier` for a Hugging Face sequence-classification model.

    The attention weights are recorded during the forward pass by
    :class:`~captum_attnflow.capture.AttentionRecorder`, so any attention implementation it reads
    works: eager (the weights equal ``output_attentions``) and SDPA, the transformers 5.x default
    (each SDPA call evaluated by its explicit math, equal to eager up to rounding).

    The attention mask is passed to every call. Decoder classifiers that pool the last token
    (``GPT2ForSequenceClassification``, ``LlamaForSequenceClassification``, Qwen2, Mistral, ...: a
    ``score`` head) are run as base model + ``score`` + the logits of the **last real token by
    the mask** — transformers finds that token only from ``input_ids`` and the pad id, so through
    ``inputs_embeds`` (gradients, Integrated Gradients) it pooled the last *padded* position, and
    with ``pad_token_id == eos_token_id`` it skipped a real final eos. A batch padded on the left
    (or anywhere) is moved to right padding before the model sees it — real tokens first, in
    order, so absolute positions and first-token (``[CLS]``) pooling see the unpadded example —
    and the attention is moved back: both padding sides give the unpadded example's result.

    Args:
        model: e.g. ``BertForSequenceClassification``; it is put in eval mode.
        blank_id: blank token id; default ``config.unk_token_id``.
        pad_id: padding id; default ``config.pad_token_id`` (else 0).
        max_length: default ``config.max_position_embeddings`` when the model has one.

    Raises:
        ValueError: no ``blank_id`` given and the config has no ``unk_token_id``.
    """

    def __init__(self, model: nn.Module, *, blank_id: int | None = None, pad_id: int | None = None,
                 max_length: int | None = None) -> None:
        config = getattr(model, "config", None)
        self.model = model.eval()
        blank_id = blank_id if blank_id is not None else getattr(config, "unk_token_id", None)
        if blank_id is None:
            raise ValueError(
                "blank_id is needed (the token id that blanks a token out) and the model config has "
                "no unk_token_id; pass blank_id=tokenizer.unk_token_id (or the [MASK] id)."
            )
        self.blank_id = int(blank_id)
        pad_id = pad_id if pad_id is not None else getattr(config, "pad_token_id", None)
        self.pad_id = int(pad_id) if pad_id is not None else 0
        self.max_length = max_length if max_length is not None else getattr(config, "max_position_embeddings", None)
        self._pool_last = _last_token_pooling(model)
        self.padding_sides = ("right", "left")

    def _logits(self, attention_mask: torch.Tensor, **inputs) -> torch.Tensor:
        order = right_padding_order(attention_mask)
        if order is not None:
            attention_mask = attention_mask.gather(1, order)
            inputs = {name: _take(value, order) for name, value in inputs.items()}
        inputs["attention_mask"] = attention_mask
        if not self._pool_last:
            return self.model(**inputs).logits
        hidden = getattr(self.model, self.model.base_model_prefix)(**inputs)[0]
        logits = self.model.score(hidden)
        rows = torch.arange(logits.shape[0], device=logits.device)
        return logits[rows, last_real_token(attention_mask).to(logits.device)]

    def probabilities(self, input_ids, attention_mask):
        return self._logits(attention_mask, input_ids=input_ids).softmax(-1)

    def probabilities_from_embeddings(self, inputs_embeds, attention_mask):
        return self._logits(attention_mask, inputs_embeds=inputs_embeds).softmax(-1)

    def embed(self, input_ids):
        return self.model.get_input_embeddings()(input_ids)

    def attentions(self, input_ids, attention_mask):
        order = right_padding_order(attention_mask)
        if order is not None:
            input_ids, attention_mask = input_ids.gather(1, order), attention_mask.gather(1, order)
        with AttentionRecorder(self.model) as recorder:
            self.model(input_ids=input_ids, attention_mask=attention_mask)
        return [_unpermute(a, order) for a in recorder.attentions]

    def contribution_graphs(self, input_ids, attention_mask, graphs):
        """Value-norm / ALTI graphs recorded on the right-padded batch (as :meth:`attentions`) and moved back."""
        order = right_padding_order(attention_mask)
        if order is not None:
            input_ids, attention_mask = input_ids.gather(1, order), attention_mask.gather(1, order)
        recorded = record_graphs(
            self.model, lambda: self.model(input_ids=input_ids, attention_mask=attention_mask), attention_mask, graphs
        )
        return {
            name: ContributionGraph(_unpermute(g.matrices, order), g.residual_included, g.name)
            for name, g in recorded.items()
        }

    @property
    def embedding_layer(self):
        return self.model.get_input_embeddings()


def right_padding_order(mask: torch.Tensor) -> torch.Tensor | None:
    """``(batch, n)`` positions that put each row's real tokens first (in order), padding last;
    ``None`` when the batch is already right-padded."""
    order = torch.sort((mask == 0).to(torch.int8), dim=1, stable=True).indices
    if bool((order == torch.arange(mask.shape[1], device=mask.device)).all()):
        return None
    return order


def _unpermute(matrices: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """``(..., n, n)`` matrices of a batch reordered by ``order`` (:func:`right_padding_order`) put back in
    the batch's own token order (``order=None``: unchanged)."""
    if order is None:
        return matrices
    back = order.argsort(dim=1)  # position in the right-padded row of each original position
    dims = matrices.dim()
    return _take(_take(matrices, back, dim=dims - 2), back, dim=dims - 1)


def _take(tensor: torch.Tensor, order: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``tensor`` with dimension ``dim`` reordered per batch row by ``order`` ``(batch, n)`` (differentiable)."""
    shape = [order.shape[0]] + [1] * (tensor.dim() - 1)
    shape[dim] = order.shape[1]
    index = order.to(tensor.device).reshape(shape).expand(*tensor.shape[:dim], order.shape[1], *tensor.shape[dim + 1:])
    return tensor.gather(dim, index)


class AgreementClassifier(Classifier):
    """:class:`Classifier` for the built-in verb-agreement model
    (:class:`captum_attnflow.models.agreement_model.AgreementModel`).

    Args:
        model: the agreement model (``model(ids, mask)`` -> logits ``(batch, 2)``;
            ``output_attentions=True`` -> ``(logits, attentions)``); put in eval mode.
        blank_id: the ``[UNK]`` id (the paper's blank).
        pad_id: the ``[PAD]`` id.
    """

    def __init__(self, model: nn.Module, *, blank_id: int, pad_id: int) -> None:
        self.model = model.eval()
        self.blank_id = int(blank_id)
        self.pad_id = int(pad_id)
        self.max_length = model.config.max_tokens

    def probabilities(self, input_ids, attention_mask):
        return self.model(input_ids, attention_mask).softmax(-1)

    def probabilities_from_embeddings(self, inputs_embeds, attention_mask):
        return self.model(attention_mask=attention_mask, inputs_embeds=inputs_embeds).softmax(-1)

    def embed(self, input_ids):
        return self.model.embed(input_ids)

    def attentions(self, input_ids, attention_mask):
        return self.model(input_ids, attention_mask, output_attentions=True)[1]

    def contribution_graphs(self, input_ids, attention_mask, graphs):
        """Value-norm / ALTI graphs of the model's GPT-2 blocks, recorded by hooks."""
        return record_graphs(self.model, lambda: self.model(input_ids, attention_mask), attention_mask, graphs)

    @property
    def embedding_layer(self):
        return self.model.encoder.wte
