"""The paper's agreement classifier: a bidirectional encoder of GPT-2 blocks, and its checkpoint.

Abnar & Zuidema (2020, §3) use GPT-2 blocks (pre-LayerNorm self-attention + MLP, token +
position embeddings) **without the causal mask**, 6 layers, 8 heads, hidden size 128, and a
2-way classifier on the final-layer state of the ``[CLS]`` token prepended to the input.

:class:`AgreementModel` wraps ``transformers.GPT2Model`` with ``config.is_causal = False`` (in
transformers 5.x GPT-2 is causal unless told otherwise, silently) and eager attention, so that
``output_attentions=True`` returns the softmax weights. The checkpoint is one ``torch.save``
file holding plain Python data and float16 tensors (loaded with ``weights_only=True``).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from captum_attnflow.models.agreement_data import CLS, END, MAX_WORDS, PAD, vocabulary

CHECKPOINT_FORMAT = 1
#: file name of the checkpoint shipped inside the package
#: the file name of the shipped checkpoint inside this package
SHIPPED_CHECKPOINT = "agreement_checkpoint.pt"
#: the longest generated input: [CLS] + the words + [END]
MAX_INPUT_TOKENS = MAX_WORDS + 2
#: most examples a checkpoint's data_sizes may ask to generate (train + valid + test); the
#: shipped model used 26,000, and generating 100,000 takes a few seconds
MAX_GENERATED_EXAMPLES = 100_000
HINT = "rebuild it with `captum-attnflow reproduce --retrain`"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit this code (rebuild it with ``--retrain``)."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and dropout of :class:`AgreementModel` (defaults: the paper's)."""

    layers: int = 6
    heads: int = 8
    hidden: int = 128
    max_tokens: int = 32
    resid_dropout: float = 0.4
    embd_dropout: float = 0.2
    attn_dropout: float = 0.6


def vocabulary_digest(words: list[str]) -> str:
    """A short SHA-256 digest of a vocabulary, stored in checkpoints to detect mismatches."""
    return hashlib.sha256("\n".join(words).encode()).hexdigest()[:16]


class AgreementModel(nn.Module):
    """GPT-2 blocks without causal masking + a linear classifier on the final ``[CLS]`` state.

    Args:
        config: :class:`ModelConfig`.
        vocab_size: number of token ids.

    Attributes:
        encoder: ``transformers.GPT2Model`` (bidirectional, eager attention).
        classifier: ``nn.Linear(hidden, 2)``; class 0 = singular verb, class 1 = plural verb.
    """

    def __init__(self, config: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        vocab = vocabulary()
        gpt2_config = GPT2Config(
            vocab_size=vocab_size, n_positions=config.max_tokens, n_embd=config.hidden,
            n_layer=config.layers, n_head=config.heads, resid_pdrop=config.resid_dropout,
            embd_pdrop=config.embd_dropout, attn_pdrop=config.attn_dropout,
            bos_token_id=vocab.index(CLS), eos_token_id=vocab.index(END), pad_token_id=vocab.index(PAD),
            attn_implementation="eager",
        )
        gpt2_config.is_causal = False  # the paper's encoder is bidirectional
        self.config = config
        self.encoder = GPT2Model(gpt2_config)
        self.classifier = nn.Linear(config.hidden, 2)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``(batch, n, hidden)`` of ``input_ids`` ``(batch, n)`` (positions are
        added inside the encoder, so gradients w.r.t. these equal those w.r.t. token + position)."""
        return self.encoder.wte(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool = False,
    ):
        """Class logits ``(batch, 2)`` from ``input_ids`` ``(batch, n)`` or ``inputs_embeds``
        ``(batch, n, hidden)``; with ``output_attentions=True`` returns ``(logits, attentions)``
        where ``attentions`` are ``L`` tensors ``(batch, heads, n, n)``.

        ``attention_mask`` ``(batch, n)`` marks real tokens with 1 (padding is on the right, so
        ``[CLS]`` stays at position 0).
        """
        out = self.encoder(
            input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
            output_attentions=output_attentions, use_cache=False,
        )
        logits = self.classifier(out.last_hidden_state[:, 0])
        return (logits, out.attentions) if output_attentions else logits


def save_checkpoint(model: AgreementModel, path: str | Path, *, metadata: dict) -> None:
    """Write ``model`` (weights as float16) with its config, vocabulary and ``metadata``.

    ``metadata`` must hold plain Python values (numbers, strings, lists, dicts): it records the
    seeds, data sizes and measured accuracies.
    """
    words = vocabulary()
    state = {key: value.detach().to(torch.float16) for key, value in model.state_dict().items()}
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "config": asdict(model.config),
            "vocabulary": words,
            "vocabulary_digest": vocabulary_digest(words),
            "state_dict": state,
            "metadata": metadata,
        },
        path,
    )


def shipped_checkpoint_path() -> Path:
    """Path of the checkpoint shipped inside the package (it may not exist in a source tree)."""
    return Path(str(resources.files("captum_attnflow.models") / SHIPPED_CHECKPOINT))


def _positive_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


def check_model_config(config: object, path: Path) -> ModelConfig:
    """The :class:`ModelConfig` stored in a checkpoint, validated before any model is built.

    Raises:
        CheckpointError: missing or unknown fields, non-positive sizes, ``hidden`` not divisible
            by ``heads``, ``max_tokens`` shorter than the longest generated input, or a dropout
            outside ``[0, 1)``.
    """
    where = f"checkpoint {path}"
    if not isinstance(config, dict):
        raise CheckpointError(f"{where} has no model config; {HINT}.")
    fields = set(ModelConfig.__dataclass_fields__)
    if set(config) - fields:
        raise CheckpointError(f"{where} has unknown config fields {sorted(set(config) - fields)}; {HINT}.")
    config = ModelConfig(**config)
    sizes = {"layers": config.layers, "heads": config.heads, "hidden": config.hidden, "max_tokens": config.max_tokens}
    bad = {name: value for name, value in sizes.items() if not _positive_int(value)}
    if bad:
        raise CheckpointError(f"{where} has non-positive or non-integer sizes {bad}; {HINT}.")
    if config.hidden % config.heads:
        raise CheckpointError(f"{where}: hidden {config.hidden} is not divisible by heads {config.heads}; {HINT}.")
    if config.max_tokens < MAX_INPUT_TOKENS:
        raise CheckpointError(
            f"{where}: max_tokens {config.max_tokens} is shorter than the longest generated input "
            f"({MAX_INPUT_TOKENS} tokens); {HINT}."
        )
    for name in ("resid_dropout", "embd_dropout", "attn_dropout"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise CheckpointError(f"{where}: {name} {value!r} is not a probability in [0, 1); {HINT}.")
    return config


def check_metadata(metadata: object, path: str | Path) -> dict:
    """The metadata of a checkpoint, checked for what the commands read from it.

    ``data_seed`` must be a non-negative integer and ``data_sizes`` exactly
    ``{"train", "valid", "test"}`` positive integers adding up to at most
    :data:`MAX_GENERATED_EXAMPLES` (the data is regenerated from them, so a huge size would hang).

    Raises:
        CheckpointError: a missing or malformed entry, named in one line with the fix.
    """
    where = f"checkpoint {path}"
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{where} has no metadata dictionary; {HINT}.")
    seed = metadata.get("data_seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise CheckpointError(f"{where}: metadata data_seed {seed!r} is not a non-negative integer; {HINT}.")
    sizes = metadata.get("data_sizes")
    if not isinstance(sizes, dict) or set(sizes) != {"train", "valid", "test"}:
        raise CheckpointError(
            f"{where}: metadata data_sizes {sizes!r} must be {{'train': N, 'valid': N, 'test': N}}; {HINT}."
        )
    bad = {name: value for name, value in sizes.items() if not _positive_int(value)}
    if bad:
        raise CheckpointError(f"{where}: metadata data_sizes {bad} are not positive integers; {HINT}.")
    if sum(sizes.values()) > MAX_GENERATED_EXAMPLES:
        raise CheckpointError(
            f"{where}: metadata data_sizes {sizes} add up to {sum(sizes.values())} examples, more than the "
            f"{MAX_GENERATED_EXAMPLES} this code generates; {HINT}."
        )
    return metadata


def load_checkpoint(path: str | Path) -> tuple[AgreementModel, dict]:
    """Load a checkpoint written by :func:`save_checkpoint` into a float32 model in eval mode.

    Returns:
        ``(model, metadata)``.

    Raises:
        CheckpointError: the file is missing, unreadable or corrupted, was written by another
            format version, or its vocabulary / architecture (:func:`check_model_config`) /
            weights (names and shapes) do not match this code. One line, suggesting
            ``captum-attnflow reproduce --retrain``. The commands, which regenerate the data from
            the metadata, also check it with :func:`check_metadata`.
    """
    hint = HINT
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; {hint}.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated/garbled files
        raise CheckpointError(f"checkpoint {path} is corrupted or not a checkpoint ({error.__class__.__name__}); {hint}.") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"checkpoint {path} has format {found!r}, expected {CHECKPOINT_FORMAT}; {hint}.")
    words = vocabulary()
    if payload.get("vocabulary_digest") != vocabulary_digest(words) or payload.get("vocabulary") != words:
        raise CheckpointError(
            f"checkpoint {path} was trained on a different vocabulary than this version's generator; {hint}."
        )
    metadata = payload.get("metadata", {})
    if not isinstance(metadata, dict):
        raise CheckpointError(f"checkpoint {path} has metadata of type {type(metadata).__name__}, not a dict; {hint}.")
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} holds no state_dict of tensors; {hint}.")
    try:
        config = check_model_config(payload.get("config"), path)
        model = AgreementModel(config, len(words))
        model.load_state_dict({key: value.float() for key, value in state.items()})
    except (TypeError, ValueError, RuntimeError) as error:
        if isinstance(error, CheckpointError):
            raise
        detail = " ".join(str(error).split())
        detail = detail if len(detail) <= 240 else detail[:240] + "..."
        raise CheckpointError(f"checkpoint {path} does not match the model architecture ({detail}); {hint}.") from None
    return model.eval(), metadata
