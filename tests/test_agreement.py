"""The agreement task: generator grammar and determinism, the bidirectional model, training, checkpoints."""

import torch
import pytest

from captum_attnflow.models.agreement_data import (
    CLS, END, NOUNS, PLURAL, batches_by_length, encode, generate_splits, vocabulary,
)
from captum_attnflow.models.agreement_model import (
    AgreementModel, CheckpointError, ModelConfig, load_checkpoint, save_checkpoint, shipped_checkpoint_path,
)
from captum_attnflow.studies.agreement.train import TrainingConfig, accuracy, predict, train_model

SINGULAR_NOUNS = {pair[0] for pair in NOUNS}
PLURAL_NOUNS = {pair[1] for pair in NOUNS}
TINY = ModelConfig(layers=2, heads=2, hidden=16)


@pytest.fixture(scope="module")
def splits():
    return generate_splits(7, train=1500, valid=200, test=300)


def test_generator_is_deterministic_and_splits_are_disjoint(splits):
    again = generate_splits(7, train=1500, valid=200, test=300)
    assert again == splits
    assert generate_splits(8, train=50, valid=5, test=5).train != generate_splits(7, train=50, valid=5, test=5).train
    sentences = [x.words for part in (splits.train, splits.valid, splits.test) for x in part]
    assert len(set(sentences)) == len(sentences) == 2000
    with pytest.raises(ValueError, match="test must be a positive integer"):
        generate_splits(0, test=0)


def test_grammar_label_is_head_number_and_attractors_are_opposite(splits):
    examples = splits.train
    words = set(vocabulary())
    for x in examples:
        assert 5 <= len(x.tokens) <= 30 and x.tokens[0] == CLS and x.tokens[-1] == END
        assert set(x.words) <= words
        numbers = dict(x.nouns)
        for index, number in numbers.items():  # every noun's form matches its recorded number
            assert x.words[index] in (PLURAL_NOUNS if number == PLURAL else SINGULAR_NOUNS)
        assert numbers[x.head] == x.label
        assert all(a > x.head and numbers[a] == 1 - x.label for a in x.attractors)
        later = [i for i in numbers if i > x.head and numbers[i] != x.label]
        assert list(x.attractors) == later
    labels = [x.label for x in examples]
    assert 0.4 < sum(labels) / len(labels) < 0.6
    with_attractors = sum(bool(x.attractors) for x in examples) / len(examples)
    assert 0.4 < with_attractors < 0.8
    assert len({len(x.tokens) for x in examples}) >= 20  # varied lengths
    assert any(len(x.attractors) >= 2 for x in examples)
    assert any("who" in x.words or "that" in x.words for x in examples)  # relative clauses occur


def test_batches_by_length():
    lengths = [5, 7, 5, 9, 7, 5, 5]
    for seed in (None, 3):
        batches = batches_by_length(lengths, 2, seed=seed)
        assert sorted(i for b in batches for i in b) == list(range(7))
        assert all(len({lengths[i] for i in b}) == 1 and len(b) <= 2 for b in batches)
    assert batches_by_length(lengths, 2, seed=3) == batches_by_length(lengths, 2, seed=3)
    assert batches_by_length(lengths, 2) == [[0, 2], [5, 6], [1, 4], [3]]
    with pytest.raises(ValueError, match="batch_size"):
        batches_by_length(lengths, 0)


def test_encoder_is_bidirectional():
    torch.manual_seed(0)
    model = AgreementModel(TINY, len(vocabulary())).eval()
    ids = torch.tensor([[1, 10, 11, 12, 2]])
    changed = ids.clone()
    changed[0, -2] = 40  # a token after position 0: a causal model's [CLS] would not see it
    with torch.no_grad():
        logits, attentions = model(ids, output_attentions=True)
        assert not torch.allclose(model(changed), logits)
    assert len(attentions) == 2 and attentions[0].shape == (1, 2, 5, 5)
    assert (attentions[0][0, :, 0, 1:] > 0).all()  # [CLS] attends to later tokens
    embeds = model.embed(ids)
    torch.testing.assert_close(model(inputs_embeds=embeds), logits)


def test_training_is_deterministic_and_learns(splits):
    small = generate_splits(1, train=300, valid=60, test=10)
    config = TrainingConfig(epochs=2, batch_size=32, checks_per_epoch=2, target_accuracy=None)
    first, history = train_model(small, seed=3, model_config=TINY, training=config, progress=False)
    second, _ = train_model(small, seed=3, model_config=TINY, training=config, progress=False)
    for key, value in first.state_dict().items():
        torch.testing.assert_close(value, second.state_dict()[key], rtol=0, atol=0)
    assert [h["epoch"] for h in history] == [0.5, 1.0, 1.5, 2.0]
    best = max(h["valid_accuracy"] for h in history)
    assert accuracy(first, small.valid).overall == pytest.approx(best)  # the best check is kept
    _, short = train_model(small, seed=3, model_config=TINY, progress=False,
                           training=TrainingConfig(epochs=2, batch_size=32, checks_per_epoch=2,
                                                   target_accuracy=0.0))
    assert len(short) == 1  # stops at the first check reaching the target
    result = accuracy(first, small.valid)
    correct = predict(first, small.valid) == torch.tensor([x.label for x in small.valid])
    assert result.overall == pytest.approx(correct.float().mean().item())
    has = [bool(x.attractors) for x in small.valid]
    assert result.with_attractors == pytest.approx(correct[torch.tensor(has)].float().mean().item())
    with pytest.raises(ValueError, match="epochs >= 1"):
        train_model(small, training=TrainingConfig(epochs=0), progress=False)


def test_checkpoint_roundtrip_and_errors(tmp_path):
    torch.manual_seed(0)
    model = AgreementModel(TINY, len(vocabulary())).eval()
    path = tmp_path / "model.pt"
    save_checkpoint(model, path, metadata={"data_seed": 1})
    loaded, metadata = load_checkpoint(path)
    assert metadata == {"data_seed": 1} and loaded.config == TINY
    ids = torch.tensor(encode(generate_splits(0, train=3, valid=1, test=1).train[:1]))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=2e-2, rtol=0)  # float16 storage
    with pytest.raises(CheckpointError, match="does not exist.*--retrain"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupted.*--retrain"):
        load_checkpoint(garbage)
    payload = torch.load(path, weights_only=True)
    payload["vocabulary_digest"] = "0" * 16
    torch.save(payload, tmp_path / "vocab.pt")
    with pytest.raises(CheckpointError, match="different vocabulary.*--retrain"):
        load_checkpoint(tmp_path / "vocab.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["hidden"] = 32
    torch.save(payload, tmp_path / "arch.pt")
    with pytest.raises(CheckpointError, match="architecture.*--retrain"):
        load_checkpoint(tmp_path / "arch.pt")


def test_shipped_checkpoint_is_accurate():
    model, metadata = load_checkpoint(shipped_checkpoint_path())
    assert model.config == ModelConfig()  # the paper's architecture
    test = generate_splits(metadata["data_seed"], **metadata["data_sizes"]).test
    torch.set_num_threads(1)
    result = accuracy(model, test)
    assert result.overall >= 0.95 and result.with_attractors >= 0.95  # the target; paper: 0.96
