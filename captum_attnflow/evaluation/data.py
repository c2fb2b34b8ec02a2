"""Examples for dataset-scale evaluation: normalisation, length checks and padded batches.

An evaluation runs over a *dataset*: any iterable of examples, or a
:class:`torch.utils.data.DataLoader` yielding padded batches. Every item becomes an
:class:`Example` — the token ids of one sequence without padding, an optional label, and its
0-based position in the dataset (the key under which its results are stored and resumed; the
dataset must therefore yield the same examples in the same order on every run).
"""

from __future__ import annotations

import hashlib
import warnings
from array import array
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Literal, Sequence

import torch

Truncation = Literal["warn", "error"]
TRUNCATIONS: tuple[str, ...] = ("warn", "error")

#: keys under which a dict example may carry its label (first one found wins)
LABEL_KEYS: tuple[str, ...] = ("label", "labels", "target")


@dataclass(frozen=True)
class Example:
    """One example of the dataset.

    Attributes:
        index: 0-based position in the dataset.
        input_ids: the token ids, without padding (may be empty: that is reported, not run).
        label: the class whose probability is tracked, or ``None`` (then the model's prediction).
    """

    index: int
    input_ids: tuple[int, ...]
    label: int | None = None


def _ids(value: Any, where: str) -> tuple[int, ...]:
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.dim() != 1:
            raise TypeError(
                f"{where}: input_ids must be a 1-D integer tensor; got {value.dtype} of shape {tuple(value.shape)}."
            )
        return tuple(int(v) for v in value.tolist())
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(
            f"{where}: input_ids must be a sequence of integer token ids; got {type(value).__name__} "
            f"(tokenize text first, e.g. with the model's tokenizer)."
        )
    ids = tuple(value)
    if any(isinstance(v, bool) or not hasattr(v, "__index__") for v in ids):
        raise TypeError(f"{where}: input_ids must contain integer token ids only.")
    return tuple(int(v) for v in ids)


def _label(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{where}: the label must be one class index; got shape {tuple(value.shape)}.")
        value = value.item()
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{where}: the label must be an integer class index; got {value!r}.")
    return int(value)


def as_example(item: Any, index: int) -> Example:
    """Normalise one dataset item into an :class:`Example`.

    Accepted forms: a dict with ``"input_ids"`` and optionally ``"label"``/``"labels"``/``"target"``
    (``"attention_mask"`` strips padding); a pair ``(input_ids, label)``; or the token ids alone
    (a 1-D integer tensor or a list of ints).
    """
    where = f"example {index}"
    if isinstance(item, Example):
        return Example(index, item.input_ids, item.label)
    if isinstance(item, dict):
        if "input_ids" not in item:
            raise ValueError(f"{where}: a dict example needs an 'input_ids' entry; got keys {sorted(item)}.")
        ids = _ids(item["input_ids"], where)
        if item.get("attention_mask") is not None:
            mask = [bool(m) for m in torch.as_tensor(item["attention_mask"]).flatten().tolist()]
            if len(mask) != len(ids):
                raise ValueError(f"{where}: attention_mask has {len(mask)} entries for {len(ids)} input_ids.")
            ids = tuple(token for token, live in zip(ids, mask) if live)
        label = next((item[key] for key in LABEL_KEYS if key in item), None)
        return Example(index, ids, _label(label, where))
    if isinstance(item, tuple) and len(item) == 2:
        return Example(index, _ids(item[0], where), _label(item[1], where))
    return Example(index, _ids(item, where), None)


def _unbatch(batch: Any, start: int) -> list[Example]:
    """Split one DataLoader batch — a dict of ``(batch, n)`` tensors or ``(ids, labels)`` — into examples."""
    if isinstance(batch, dict):
        ids = batch["input_ids"] if "input_ids" in batch else None
        mask = batch.get("attention_mask")
        label_key = next((key for key in LABEL_KEYS if key in batch), None)
        labels = batch[label_key] if label_key else None
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        ids, labels, mask = batch[0], batch[1], None
    else:
        ids, labels, mask = batch, None, None
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        raise TypeError(
            "a DataLoader must yield batches of token ids: a (batch, n) tensor, a pair (ids, labels) "
            "or a dict with 'input_ids' (and optionally 'attention_mask', 'labels'); got "
            f"{type(batch).__name__}."
        )
    examples = []
    for row in range(ids.shape[0]):
        item = {"input_ids": ids[row]}
        if mask is not None:
            item["attention_mask"] = mask[row]
        if labels is not None:
            item["label"] = labels[row]
        examples.append(as_example(item, start + row))
    return examples


def iterate_examples(data: Iterable[Any]) -> Iterator[Example]:
    """Yield :class:`Example` objects from an iterable of examples or a ``DataLoader`` of batches."""
    if isinstance(data, torch.utils.data.DataLoader):
        start = 0
        for batch in data:
            examples = _unbatch(batch, start)
            start += len(examples)
            yield from examples
        return
    if isinstance(data, (str, bytes, torch.Tensor)) or not isinstance(data, Iterable):
        raise TypeError(
            f"data must be an iterable of examples or a torch DataLoader; got {type(data).__name__}. "
            f"For one batch tensor of token ids, pass list(batch)."
        )
    for index, item in enumerate(data):
        yield as_example(item, index)


def dataset_identity(data: Iterable[Any]) -> tuple[Iterable[Any], str, int]:
    """The content hash and size of a dataset, from one pass over its examples.

    A one-shot iterator (a generator, ``iter(list)``) cannot be read twice, so it is first turned
    into a list; lists, datasets and ``DataLoader`` objects are read once here and again by the run
    (a ``DataLoader`` must therefore yield the same batches each time: no shuffling).

    Returns:
        ``(data, sha256, count)``: ``data`` to iterate for the run; the hex SHA-256 over every
        example's index, label and token ids; the number of examples.

    Raises:
        TypeError, ValueError: a malformed example (see :func:`as_example`).
    """
    if isinstance(data, Iterator):
        data = list(data)
    digest = hashlib.sha256()
    count = 0
    for example in iterate_examples(data):
        digest.update(f"{example.index}|{example.label}|{len(example.input_ids)}\n".encode())
        digest.update(array("q", example.input_ids).tobytes())
        count += 1
    return data, digest.hexdigest(), count


def fit_length(example: Example, max_length: int | None, truncation: Truncation) -> tuple[Example, bool]:
    """Check an example against the model's maximum length.

    Returns:
        ``(example, truncated)``: with ``truncation="warn"`` a too-long example is cut to its first
        ``max_length`` tokens and a warning is issued.

    Raises:
        ValueError: the example is empty, or too long with ``truncation="error"``.
    """
    if truncation not in TRUNCATIONS:
        raise ValueError(f"unknown truncation {truncation!r}; choose one of {TRUNCATIONS}.")
    if not example.input_ids:
        raise ValueError(f"example {example.index} is empty (no tokens); nothing to attribute.")
    if max_length is None or len(example.input_ids) <= max_length:
        return example, False
    message = (
        f"example {example.index} has {len(example.input_ids)} tokens, more than the model's "
        f"maximum length {max_length}"
    )
    if truncation == "error":
        raise ValueError(f"{message}; shorten it or pass truncation='warn' (--truncation warn) to cut it.")
    warnings.warn(f"{message}; truncated to the first {max_length} tokens.", stacklevel=2)
    return Example(example.index, example.input_ids[:max_length], example.label), True


PaddingSide = Literal["right", "left"]
PADDING_SIDES: tuple[str, ...] = ("right", "left")


def check_padding_side(side: str) -> str:
    """Validate a padding side (one of :data:`PADDING_SIDES`)."""
    if side not in PADDING_SIDES:
        raise ValueError(f"unknown padding_side {side!r}; choose one of {PADDING_SIDES}.")
    return side


def live_slice(length: int, width: int, side: str = "right") -> slice:
    """The positions of an example's ``length`` real tokens in a row padded to ``width`` on ``side``."""
    return slice(0, length) if side == "right" else slice(width - length, width)


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token-id sequences into ``(batch, n_max)`` ids and a ``(batch, n_max)`` mask.

    The mask is 1 for real tokens and 0 for padding (Hugging Face's ``attention_mask``). Right
    padding (the default) keeps every real token at its own position, so absolute position
    embeddings match the unpadded example; with ``side="left"`` the classifier must count
    positions from the mask (:class:`~captum_attnflow.evaluation.models.HFClassifier` does).
    """
    if not sequences:
        raise ValueError("pad_batch needs at least one sequence.")
    check_padding_side(side)
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        live = live_slice(len(sequence), width, side)
        ids[row, live] = torch.as_tensor(list(sequence), dtype=torch.long)
        mask[row, live] = 1
    return ids, mask
