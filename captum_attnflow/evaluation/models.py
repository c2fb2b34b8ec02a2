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
from typing import Sequence

import torch
from torch import nn

from captum_attnflow.capture import AttentionRecorder


class Classifier(ABC):
    """A sequence classifier as the evaluation uses it.

    Attributes:
        blank_id: token id that replaces a token in blank-out, occlusion and AOPC deletion (the
            paper: ``[UNK]``).
        pad_id: token id used for padding (ignored by the model through the attention mask).
        max_length: longest input the model accepts (``None``: no limit).
    """

    blank_id: int
    pad_id: int
    max_length: int | None

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


class HFClassifier(Classifier):
    """:class:`Classifier` for a Hugging Face sequence-classification model.

    The attention weights are recorded during the forward pass by
    :class:`~captum_attnflow.capture.AttentionRecorder`, so any attention implementation it reads
    works: eager (the weights equal ``output_attentions``) and SDPA, the transformers 5.x default
    (each SDPA call evaluated by its explicit math, equal to eager up to rounding).

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

    def probabilities(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits.softmax(-1)

    def probabilities_from_embeddings(self, inputs_embeds, attention_mask):
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask).logits.softmax(-1)

    def embed(self, input_ids):
        return self.model.get_input_embeddings()(input_ids)

    def attentions(self, input_ids, attention_mask):
        with AttentionRecorder(self.model) as recorder:
            self.model(input_ids=input_ids, attention_mask=attention_mask)
        return recorder.attentions

    @property
    def embedding_layer(self):
        return self.model.get_input_embeddings()


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

    @property
    def embedding_layer(self):
        return self.model.encoder.wte
