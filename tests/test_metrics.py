"""captum_attnflow.evaluation.metrics against brute force: scipy's spearmanr, a manual blank-out loop, autograd."""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from captum_attnflow.evaluation.metrics import (
    blank_out_scores,
    input_gradient_scores,
    layer_correlations,
    reduce_gradients,
    spearman,
    summarize,
)


class TinyClassifier(torch.nn.Module):
    """Embedding -> masked mean with a position-dependent mixing -> 2 classes."""

    def __init__(self, vocab: int = 12, dim: int = 5, n: int = 7) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab, dim)
        self.position = torch.nn.Parameter(torch.randn(n, dim))
        self.out = torch.nn.Linear(dim, 2)

    def from_embeds(self, embeds, mask):
        hidden = torch.tanh(embeds + self.position[: embeds.shape[1]]) * mask[..., None]
        return torch.softmax(self.out(hidden.sum(1) ** 2), -1)

    def forward(self, ids, mask):
        return self.from_embeds(self.embed(ids), mask)


def test_spearman_matches_scipy_with_ties_and_masks():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, size=(30, 9)).astype(float)  # many ties
    b = rng.normal(size=(30, 9))
    lengths = rng.integers(3, 10, size=30)
    mask = np.arange(9)[None] < lengths[:, None]
    ours = spearman(a, b, mask)
    for row in range(30):
        m = lengths[row]
        if np.unique(a[row, :m]).size < 2:
            assert np.isnan(ours[row])
        else:
            assert ours[row] == pytest.approx(spearmanr(a[row, :m], b[row, :m]).statistic, abs=1e-12)


def test_spearman_undefined_and_bad_shapes():
    assert np.isnan(spearman(np.ones(5), np.arange(5.0)))
    assert np.isnan(spearman(np.arange(3.0), np.arange(3.0), mask=np.array([1, 0, 0])))
    assert spearman(torch.arange(4.0), torch.tensor([4.0, 3, 2, 1])) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="same shape"):
        spearman(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="does not broadcast"):
        spearman(np.ones((2, 3)), np.ones((2, 3)), mask=np.ones((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        spearman(np.array([1.0, np.nan]), np.array([1.0, 2.0]))


def test_blank_out_matches_manual_loop_with_padding():
    model = TinyClassifier()
    ids = torch.tensor([[1, 4, 5, 6, 2, 0, 0], [1, 7, 8, 9, 3, 10, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    target = torch.tensor([0, 1])
    ours = blank_out_scores(model, ids, target=target, blank_id=11, additional_forward_args=(mask,),
                            mask=mask, perturbations_per_eval=4)
    with torch.no_grad():
        base = model(ids, mask)[torch.arange(2), target]
        expected = torch.zeros(2, 7)
        for j in range(7):
            blanked = ids.clone()
            blanked[:, j] = 11
            expected[:, j] = (base - model(blanked, mask)[torch.arange(2), target]).abs()
    expected = expected * mask
    torch.testing.assert_close(ours, expected)
    assert (ours[0, 5:] == 0).all()


def test_blank_out_errors():
    model = TinyClassifier()
    mask = torch.ones(1, 3)
    with pytest.raises(TypeError, match="integer"):
        blank_out_scores(model, torch.ones(1, 3), target=0, blank_id=1, additional_forward_args=(mask,))
    with pytest.raises(ValueError, match="blank_id"):
        blank_out_scores(model, torch.ones(1, 3, dtype=torch.long), target=0, blank_id=1.5)
    with pytest.raises(ValueError, match="mask"):
        blank_out_scores(model, torch.ones(1, 3, dtype=torch.long), target=0, blank_id=1, mask=torch.ones(1, 4))


@pytest.mark.parametrize("reduction", ["abs_sum", "l2", "sum"])
def test_input_gradients_match_autograd(reduction):
    model = TinyClassifier()
    ids = torch.tensor([[1, 4, 5, 6, 2, 0, 0], [1, 7, 8, 9, 3, 10, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]])

    def score(embeds, mask):
        probs = model.from_embeds(embeds, mask)
        return probs[:, 0] - probs[:, 1]

    embeds = model.embed(ids).detach()
    ours = input_gradient_scores(score, embeds, additional_forward_args=(mask,), reduction=reduction, mask=mask)
    leaf = embeds.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(score(leaf, mask).sum(), leaf)
    manual = {"abs_sum": grad.sum(-1).abs(), "l2": grad.norm(dim=-1), "sum": grad.sum(-1)}[reduction] * mask
    torch.testing.assert_close(ours, manual)


def test_gradient_errors():
    with pytest.raises(ValueError, match="unknown gradient reduction 'max'"):
        reduce_gradients(torch.ones(1, 2, 3), "max")
    with pytest.raises(ValueError, match="batch, n, d"):
        reduce_gradients(torch.ones(2, 3))
    with pytest.raises(TypeError, match="floating"):
        input_gradient_scores(lambda x: x.sum((1, 2)), torch.ones(1, 2, 3, dtype=torch.long))


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
def test_layer_correlations_and_summary_match_brute_force():
    rng = np.random.default_rng(1)
    methods = {"raw": rng.normal(size=(20, 3, 6)), "flow": rng.normal(size=(20, 3, 6))}
    reference = rng.normal(size=(20, 6))
    reference[4] = 1.0  # constant: undefined in every layer
    table = layer_correlations(methods, reference)
    assert table["raw"].shape == (20, 3)
    for name, scores in methods.items():
        for example in range(20):
            for layer in range(3):
                expected = spearmanr(scores[example, layer], reference[example]).statistic
                np.testing.assert_allclose(table[name][example, layer], expected, atol=1e-12)
    summary = summarize(table["flow"])
    kept = np.delete(table["flow"], 4, axis=0)
    np.testing.assert_allclose(summary.mean, kept.mean(0))
    np.testing.assert_allclose(summary.std, kept.std(0))  # population std, ddof=0
    assert summary.count.tolist() == [19, 19, 19] and summary.undefined.tolist() == [1, 1, 1]
    assert summary.as_records()[0]["layer"] == 1
    with pytest.raises(ValueError, match="must have shape"):
        layer_correlations({"raw": np.ones((20, 6))}, reference)
