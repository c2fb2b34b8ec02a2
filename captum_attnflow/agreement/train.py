"""Training and accuracy of the agreement classifier (deterministic given a seed, CPU).

Examples are batched by exact length (:func:`~captum_attnflow.agreement.data.batches_by_length`),
so no padding is needed. Training is AdamW with linear warm-up and decay for a fixed number of
epochs (never a wall-clock budget, which would break determinism); the epoch with the best
validation accuracy is kept. Determinism needs ``torch.manual_seed`` and one torch thread, which
:func:`train_model` sets for its own duration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from captum_attnflow.agreement.data import AgreementExample, AgreementSplits, batches_by_length, encode, vocabulary
from captum_attnflow.agreement.model import AgreementModel, ModelConfig


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings of :func:`train_model`."""

    epochs: int = 1
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05


@dataclass(frozen=True)
class Accuracy:
    """Classification accuracy overall and on the examples with / without attractors."""

    overall: float
    with_attractors: float
    without_attractors: float
    examples: int

    def as_dict(self) -> dict[str, float | int]:
        return {"overall": self.overall, "with_attractors": self.with_attractors,
                "without_attractors": self.without_attractors, "examples": self.examples}


def predict(model: AgreementModel, examples: list[AgreementExample], *, batch_size: int = 256) -> torch.Tensor:
    """Predicted labels ``(len(examples),)`` (0 singular, 1 plural), model in eval mode."""
    ids = encode(examples)
    predictions = torch.empty(len(examples), dtype=torch.long)
    model.eval()
    with torch.no_grad():
        for batch in batches_by_length([len(x) for x in ids], batch_size):
            logits = model(torch.tensor([ids[i] for i in batch]))
            predictions[batch] = logits.argmax(-1)
    return predictions


def accuracy(model: AgreementModel, examples: list[AgreementExample]) -> Accuracy:
    """:class:`Accuracy` of ``model`` on ``examples`` (NaN for an empty subgroup)."""
    if not examples:
        raise ValueError("accuracy needs at least one example.")
    correct = predict(model, examples) == torch.tensor([x.label for x in examples])
    has = torch.tensor([bool(x.attractors) for x in examples])

    def mean(values: torch.Tensor) -> float:
        return float(values.float().mean()) if values.numel() else float("nan")

    return Accuracy(mean(correct), mean(correct[has]), mean(correct[~has]), len(examples))


def train_model(
    splits: AgreementSplits,
    *,
    seed: int = 0,
    model_config: ModelConfig = ModelConfig(),
    training: TrainingConfig = TrainingConfig(),
    progress: bool = True,
) -> tuple[AgreementModel, list[dict]]:
    """Train an :class:`AgreementModel` on ``splits.train``; keep the best epoch on ``splits.valid``.

    Args:
        splits: the data (:func:`~captum_attnflow.agreement.data.generate_splits`).
        seed: seeds the initial weights, dropout and batch order.
        model_config, training: architecture and optimisation settings.
        progress: show a tqdm bar per epoch.

    Returns:
        ``(model, history)``: the model in eval mode with the weights of the best validation
        epoch, and one record per epoch ``{"epoch", "loss", "valid_accuracy"}``.

    Raises:
        ValueError: ``training.epochs`` or ``training.batch_size`` below 1.
    """
    from tqdm.auto import tqdm

    if training.epochs < 1 or training.batch_size < 1:
        raise ValueError(f"training needs epochs >= 1 and batch_size >= 1; got {training}.")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = AgreementModel(model_config, len(vocabulary()))
        ids = encode(splits.train)
        labels = torch.tensor([x.label for x in splits.train])
        lengths = [len(x) for x in ids]
        steps_per_epoch = len(batches_by_length(lengths, training.batch_size))
        total = steps_per_epoch * training.epochs
        warmup = max(1, int(training.warmup_fraction * total))
        optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / (total - warmup)))
        )
        loss_fn = nn.CrossEntropyLoss()
        history: list[dict] = []
        best_state, best_accuracy = None, -1.0
        for epoch in range(training.epochs):
            model.train()
            batches = batches_by_length(lengths, training.batch_size, seed=seed * 1000 + epoch)
            running = 0.0
            bar = tqdm(batches, desc=f"training epoch {epoch + 1}/{training.epochs}", disable=not progress, leave=False)
            for step, batch in enumerate(bar):
                logits = model(torch.tensor([ids[i] for i in batch]))
                loss = loss_fn(logits, labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                running += loss.item()
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{running / (step + 1):.3f}")
            valid = accuracy(model, splits.valid).overall
            history.append({"epoch": epoch + 1, "loss": running / len(batches), "valid_accuracy": valid})
            if valid > best_accuracy:
                best_accuracy = valid
                best_state = {key: value.clone() for key, value in model.state_dict().items()}
        model.load_state_dict(best_state)
        return model.eval(), history
    finally:
        torch.set_num_threads(threads)
