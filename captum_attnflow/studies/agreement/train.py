"""Training and accuracy of the agreement classifier (deterministic given a seed, CPU).

Examples are batched by exact length (:func:`~captum_attnflow.models.agreement_data.batches_by_length`),
so no padding is needed. Training is AdamW with a linear warm-up, then a constant learning rate.
Validation accuracy is checked a few times per epoch and training stops at the first check that
reaches ``target_accuracy`` (default 0.96, the accuracy of the paper's model: the study is meant
to explain a model of that quality, and further training saturates the probabilities that
blank-out measures), or after ``epochs`` epochs, keeping the best checked weights. Stopping is
decided by validation accuracy, never by a wall-clock budget, so it is deterministic.
Determinism also needs ``torch.manual_seed`` and one torch thread, which :func:`train_model`
sets for its own duration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from captum_attnflow.models.agreement_data import AgreementExample, AgreementSplits, batches_by_length, encode, vocabulary
from captum_attnflow.models.agreement_model import AgreementModel, ModelConfig


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings of :func:`train_model`."""

    epochs: int = 3  # at most
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05  # of the first epoch
    checks_per_epoch: int = 4
    target_accuracy: float | None = 0.96


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
        return float(values.double().mean()) if values.numel() else float("nan")  # 1920/2000 == 0.96

    return Accuracy(mean(correct), mean(correct[has]), mean(correct[~has]), len(examples))


def train_model(
    splits: AgreementSplits,
    *,
    seed: int = 0,
    model_config: ModelConfig = ModelConfig(),
    training: TrainingConfig = TrainingConfig(),
    progress: bool = True,
) -> tuple[AgreementModel, list[dict]]:
    """Train an :class:`AgreementModel` on ``splits.train``, checking accuracy on ``splits.valid``.

    Args:
        splits: the data (:func:`~captum_attnflow.models.agreement_data.generate_splits`).
        seed: seeds the initial weights, dropout and batch order.
        model_config, training: architecture and optimisation settings; training stops at the
            first validation check reaching ``training.target_accuracy`` (``None``: never early).
        progress: show a tqdm bar per epoch.

    Returns:
        ``(model, history)``: the model in eval mode with the weights of the stopping check (or of
        the best check when the target is never reached), and one record per check
        ``{"epoch" (fractional), "step", "loss" (mean since the previous check), "valid_accuracy"}``.

    Raises:
        ValueError: ``epochs``, ``batch_size`` or ``checks_per_epoch`` below 1.
    """
    from tqdm.auto import tqdm

    if min(training.epochs, training.batch_size, training.checks_per_epoch) < 1:
        raise ValueError(f"training needs epochs >= 1, batch_size >= 1 and checks_per_epoch >= 1; got {training}.")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = AgreementModel(model_config, len(vocabulary()))
        ids = encode(splits.train)
        labels = torch.tensor([x.label for x in splits.train])
        lengths = [len(x) for x in ids]
        steps_per_epoch = len(batches_by_length(lengths, training.batch_size))
        warmup = max(1, int(training.warmup_fraction * steps_per_epoch))
        optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        loss_fn = nn.CrossEntropyLoss()
        history: list[dict] = []
        best_state, best_accuracy = None, -1.0
        step, running, since_check = 0, 0.0, 0
        for epoch in range(training.epochs):
            batches = batches_by_length(lengths, training.batch_size, seed=seed * 1000 + epoch)
            per_epoch = training.checks_per_epoch
            checks = {round(len(batches) * k / per_epoch) for k in range(1, per_epoch + 1)}  # batch counts
            bar = tqdm(batches, desc=f"training epoch {epoch + 1}/{training.epochs}", disable=not progress, leave=False)
            for position, batch in enumerate(bar):
                model.train()
                loss = loss_fn(model(torch.tensor([ids[i] for i in batch])), labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                running += loss.item()
                since_check += 1
                if position + 1 not in checks:
                    continue
                valid = accuracy(model, splits.valid).overall
                history.append({"epoch": round(epoch + (position + 1) / len(batches), 3), "step": step,
                                "loss": running / since_check, "valid_accuracy": valid})
                bar.set_postfix(loss=f"{running / since_check:.3f}", valid=f"{valid:.3f}")
                running, since_check = 0.0, 0
                if valid > best_accuracy:
                    best_accuracy = valid
                    best_state = {key: value.clone() for key, value in model.state_dict().items()}
                if training.target_accuracy is not None and valid >= training.target_accuracy:
                    bar.close()
                    return model.eval(), history
        model.load_state_dict(best_state)
        return model.eval(), history
    finally:
        torch.set_num_threads(threads)
