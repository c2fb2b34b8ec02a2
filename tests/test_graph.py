"""Rollout, raw attention, head fusion, residual and masks against straightforward loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from captum_attnflow import attention_flow, head_rollout, raw_attention, rollout
from captum_attnflow.graph import propagate as graph_propagate
from captum_attnflow.graph import (
    COMPILED_PRODUCTS_MAX_N,
    RowSumError,
    attention_layers,
    augment_residual,
    fuse_heads,
    mean_residual_graph,
    prepare_graph,
    rollout_matrices,
)


def random_attention(batch=2, layers=3, heads=4, n=7, *, seed=0, dtype=torch.float64, causal=False):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(layers, batch, heads, n, n, generator=generator, dtype=dtype) * 2
    if causal:
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return list(torch.softmax(scores, dim=-1).unbind(0))


def masked_attention(attentions, mask):
    """Attention as a model computes it with a key-padding mask (softmax over live keys only)."""
    key_mask = torch.as_tensor(mask, dtype=torch.bool)[:, None, None, :]
    return [torch.softmax(torch.log(a).masked_fill(~key_mask, float("-inf")), dim=-1) for a in attentions]


def loop_rollout(attentions, residual=True, fusion="mean", mask=None, discard_ratio=0.0, protected=(0,)):
    """Reference: one example, one layer, one row at a time, numpy.

    Per head the row is restricted to the real keys and renormalised, the heads are fused, the
    lowest ``discard_ratio`` of the candidate entries are zeroed, then ``rownorm(F + I)``.
    """
    attentions = [np.asarray(a, dtype=np.float64) for a in attentions]
    batch, heads, n, _ = attentions[0].shape
    out = np.zeros((batch, len(attentions), n, n))
    for b in range(batch):
        live = np.ones(n, bool) if mask is None else np.asarray(mask[b], bool)
        current = np.eye(n)
        for layer, attention in enumerate(attentions):
            restricted = np.zeros((heads, n, n))
            for h in range(heads):
                for i in range(n):
                    if live[i]:
                        row = np.where(live, attention[b, h, i], 0.0)
                        restricted[h, i] = row / row.sum()
            fused = {"mean": np.mean, "max": np.max, "min": np.min}[fusion](restricted, axis=0)
            if discard_ratio:
                fused = loop_discard(fused, discard_ratio, protected, live)
            matrix = np.zeros((n, n))
            for i in range(n):
                if not live[i]:
                    continue
                row = fused[i] + (np.eye(n)[i] if residual else 0.0)
                matrix[i] = row / row.sum()
            current = matrix @ current
            out[b, layer] = current
    return out


def loop_discard(fused, ratio, protected, live):
    """Zero the floor(ratio·m) smallest candidate entries (row-major order breaks ties)."""
    n = fused.shape[0]
    candidates = [
        (fused[i, j], i * n + j)
        for i in range(n)
        for j in range(n)
        if live[i] and live[j] and i not in protected and j not in protected
    ]
    count = int(np.floor(len(candidates) * ratio))
    out = fused.copy()
    for _, flat in sorted(candidates)[:count]:  # (value, row-major index): ties by position
        out[flat // n, flat % n] = 0.0
    return out


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("residual", [True, False])
def test_rollout_matches_loop(fusion, residual):
    attentions = random_attention()
    expected = loop_rollout(attentions, residual=residual, fusion=fusion)
    got = rollout(attentions, residual=residual, head_fusion=fusion)
    assert got.shape == (2, 3, 7, 7)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(got.sum(-1).numpy(), 1.0, atol=1e-12)


def test_rollout_with_padding_matches_loop_and_unpadded_example():
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    attentions = masked_attention(random_attention(seed=1), mask)
    got = rollout(attentions, mask=mask)
    np.testing.assert_allclose(got.numpy(), loop_rollout(attentions, mask=mask.numpy()), atol=1e-12)
    assert (got[0, :, :, 5:] == 0).all() and (got[0, :, 5:, :] == 0).all()
    np.testing.assert_allclose(got[0, :, :5].sum(-1).numpy(), 1.0, atol=1e-12)
    alone = rollout([a[:1, :, :5, :5] for a in attentions])
    np.testing.assert_allclose(got[0, :, :5, :5].numpy(), alone[0].numpy(), atol=1e-12)


def test_mask_renormalises_attention_that_still_leaks_onto_padding():
    attentions = random_attention(batch=1)  # unmasked softmax: padded keys carry weight
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    got = rollout(attentions, mask=mask)
    np.testing.assert_allclose(got.numpy(), loop_rollout(attentions, mask=mask.numpy()), atol=1e-12)


def test_causal_rollout_stays_lower_triangular():
    got = rollout(random_attention(causal=True))
    assert torch.equal(got.triu(1), torch.zeros_like(got))
    np.testing.assert_allclose(got.sum(-1).numpy(), 1.0, atol=1e-12)


def test_float32_float64_and_numpy_round_trip():
    attentions = random_attention(dtype=torch.float32)
    out32 = rollout(attentions)
    assert out32.dtype == torch.float32
    out64 = rollout([a.double() for a in attentions])
    np.testing.assert_allclose(out32.numpy(), out64.numpy(), atol=1e-6)
    out_np = rollout([a.numpy() for a in attentions])
    assert isinstance(out_np, np.ndarray)
    np.testing.assert_allclose(out_np, out32.numpy(), atol=1e-7)
    stacked = rollout(torch.stack(attentions, dim=1))
    np.testing.assert_allclose(stacked.numpy(), out32.numpy())


def test_raw_attention_is_fused_masked_and_row_normalised():
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1] * 7])
    attentions = random_attention(seed=3)
    got = raw_attention(attentions, mask=mask)
    expected = loop_rollout(attentions[:1], residual=False, mask=mask.numpy())[:, 0]
    np.testing.assert_allclose(got[:, 0].numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(got[1].numpy(), torch.stack(attentions, 1)[1].mean(1).numpy(), atol=1e-12)


def test_fuse_heads_and_residual_primitives():
    attention = random_attention(batch=1, layers=1)[0]
    assert torch.equal(fuse_heads(attention, "max"), attention.max(dim=1).values)
    augmented = augment_residual(fuse_heads(attention))
    expected = 0.5 * attention.mean(1) + 0.5 * torch.eye(7, dtype=attention.dtype)
    torch.testing.assert_close(augmented, expected)


def test_head_rollout_is_head_on_top_of_fused_rollout_below():
    attentions = random_attention(seed=4)
    stack = torch.stack(attentions, 1)
    eye = torch.eye(7, dtype=torch.float64)
    below = rollout(attentions)[:, 1]
    for head in range(4):
        top = 0.5 * stack[:, 2, head] + 0.5 * eye
        got = head_rollout(attentions, layer=2, head=head)
        torch.testing.assert_close(got[:, 0], top @ below)
    all_heads = head_rollout(attentions, layer=-1)
    assert all_heads.shape == (2, 4, 7, 7)
    torch.testing.assert_close(all_heads.mean(1), rollout(attentions)[:, 2])  # mean of heads = rollout
    first = head_rollout(attentions, layer=0, head=1)
    torch.testing.assert_close(first[:, 0], 0.5 * stack[:, 0, 1] + 0.5 * eye)


# ----------------------------------------------------------------------------- error paths


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: [], "empty"),
        (lambda: "abc", "sequence"),
        (lambda: [torch.rand(2, 3, 4, 5)], "not square"),
        (lambda: [torch.rand(3, 4, 4)], "unsqueeze"),
        (lambda: [torch.softmax(torch.rand(1, 2, 4, 4), -1), torch.softmax(torch.rand(1, 2, 5, 5), -1)], "same"),
        (lambda: [torch.full((1, 1, 3, 3), float("nan"))], "NaN"),
        (lambda: [torch.tensor([[[[1.5, -0.5], [0.5, 0.5]]]])], "negative"),
        (lambda: [torch.rand(1, 2, 4, 4) * 3], "renormalize=True"),
        (lambda: [torch.zeros(1, 2, 0, 0)], "empty"),
        (lambda: [[1, 2]], "torch.Tensor"),
    ],
)
def test_bad_attention_is_rejected_with_a_clear_message(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        rollout(make())


def test_renormalize_accepts_unnormalised_rows():
    attention = torch.rand(1, 2, 4, 4, dtype=torch.float64) * 3
    got = rollout([attention], renormalize=True)
    expected = rollout([attention / attention.sum(-1, keepdim=True)])
    torch.testing.assert_close(got, expected)


def test_bad_options_and_masks():
    attentions = random_attention()
    with pytest.raises(ValueError, match="head_fusion"):
        rollout(attentions, head_fusion="median")
    with pytest.raises(ValueError, match=r"mask must have shape \(batch, n\)"):
        rollout(attentions, mask=torch.ones(3, 7))
    with pytest.raises(ValueError, match="no real token"):
        rollout(attentions, mask=torch.tensor([[1] * 7, [0] * 7]))
    with pytest.raises(ValueError, match="layer=5 is out of range"):
        head_rollout(attentions, layer=5)
    with pytest.raises(ValueError, match="head=-5 is out of range"):
        head_rollout(attentions, layer=1, head=-5)
    with pytest.raises(TypeError, match="layer must be an integer"):
        head_rollout(attentions, layer=1.0)


def test_mask_that_zeroes_a_live_row_is_an_error():
    attention = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    attention[0, 0, :, 2] = 1.0  # every query attends only to token 2 ...
    with pytest.raises(ValueError, match="zeroes the whole row"):
        rollout([attention], mask=torch.tensor([[1, 1, 0]]))  # ... which the mask removes


# ----------------------------------------------------------------------------- fusion, grad, dtypes, masks, discard


@pytest.mark.parametrize("fusion", ["max", "min"])
def test_max_min_residual_is_rownorm_of_fused_plus_identity(fusion):
    attentions = random_attention(batch=1, layers=1, heads=3, n=5, seed=7)
    fused = {"max": np.max, "min": np.min}[fusion](attentions[0].numpy()[0], axis=0)
    expected = (fused + np.eye(5)) / (fused + np.eye(5)).sum(-1, keepdims=True)
    np.testing.assert_allclose(rollout(attentions, head_fusion=fusion)[0, 0].numpy(), expected, atol=1e-12)
    # ... not 0.5·rownorm(F) + 0.5·I, which differs for max/min
    old = 0.5 * fused / fused.sum(-1, keepdims=True) + 0.5 * np.eye(5)
    assert np.abs(expected - old).max() > 1e-3


@pytest.mark.parametrize("fusion", ["max", "min"])
def test_single_head_max_min_input_is_taken_as_already_fused(fusion):
    attentions = random_attention(seed=8)
    mask = torch.tensor([[1] * 7, [1, 1, 1, 1, 1, 0, 0]])
    attentions = masked_attention(attentions, mask)
    prefused = [fuse_heads(a, fusion).unsqueeze(1) for a in attentions]
    for function in (rollout, raw_attention):
        torch.testing.assert_close(
            function(prefused, head_fusion=fusion, mask=mask), function(attentions, head_fusion=fusion, mask=mask),
            atol=1e-12, rtol=0,
        )
    with pytest.raises(ValueError, match="not at least 1"):  # max-fused rows must sum to >= 1
        rollout([p * 0.5 for p in prefused], head_fusion="max")


def test_rollout_is_differentiable():
    attentions = [a[:1, :2, :4, :4].clone() for a in random_attention(seed=9)]
    attentions = [(a / a.sum(-1, keepdim=True)).requires_grad_() for a in attentions]
    for fusion in ("mean", "max"):
        assert torch.autograd.gradcheck(lambda *layers: rollout(list(layers), head_fusion=fusion), attentions)
    mask = torch.tensor([[1, 1, 1, 0]])
    assert torch.autograd.gradcheck(lambda *layers: rollout(list(layers), mask=mask, discard_ratio=0.3), attentions)
    plain = rollout([a.detach() for a in attentions])
    assert not plain.requires_grad  # the no-grad path (in place, layer by layer) gives the same values
    torch.testing.assert_close(plain, rollout(attentions).detach())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_in_gives_the_same_dtype_out(dtype):
    attentions = [a.to(dtype) for a in random_attention(seed=10)]
    mask = torch.tensor([[1] * 7, [1, 1, 1, 1, 1, 0, 0]])
    reference = rollout([a.double() for a in attentions], mask=mask)
    got = rollout(attentions, mask=mask)
    assert got.dtype == dtype and raw_attention(attentions).dtype == dtype
    torch.testing.assert_close(got.double(), reference, atol=1e-2, rtol=0)
    assert rollout([a.float().numpy().astype(np.float16) for a in attentions]).dtype == np.float16


@pytest.mark.parametrize(
    "mask, error, match",
    [
        ([[1, 1, 0.5, 1, 1, 1, 1]] * 2, ValueError, "only 0"),
        ([[1, 1, float("nan"), 1, 1, 1, 1]] * 2, ValueError, "only 0"),
        ([[1, -1, 1, 1, 1, 1, 1]] * 2, ValueError, "only 0"),
        ([[2, 1, 1, 1, 1, 1, 1]] * 2, ValueError, "only 0"),
        ([["a"] * 7] * 2, TypeError, "mask"),
        (np.array([[object()] * 7] * 2), TypeError, "mask"),
    ],
)
def test_masks_with_values_other_than_0_and_1_are_refused(mask, error, match):
    attentions = random_attention()
    for function in (rollout, raw_attention, attention_flow):
        with pytest.raises(error, match=match):
            function(attentions, mask=mask)


def test_bool_and_integer_masks_agree():
    attentions = masked_attention(random_attention(seed=11), [[1] * 7, [1] * 5 + [0] * 2])
    as_int = rollout(attentions, mask=torch.tensor([[1] * 7, [1] * 5 + [0] * 2]))
    as_bool = rollout(attentions, mask=np.array([[True] * 7, [True] * 5 + [False] * 2]))
    torch.testing.assert_close(as_int, as_bool)


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_discard_ratio_matches_brute_force(ratio, fusion):
    mask = np.array([[1] * 7, [1, 1, 1, 1, 1, 0, 0]])
    attentions = masked_attention(random_attention(seed=12), mask)
    got = rollout(attentions, head_fusion=fusion, mask=mask, discard_ratio=ratio)
    np.testing.assert_allclose(got.numpy(), loop_rollout(attentions, fusion=fusion, mask=mask, discard_ratio=ratio), atol=1e-12)
    protected = rollout(attentions, mask=mask, discard_ratio=ratio, protected_tokens=[0, 3])
    np.testing.assert_allclose(
        protected.numpy(), loop_rollout(attentions, mask=mask, discard_ratio=ratio, protected=(0, 3)), atol=1e-12
    )
    assert not np.allclose(got.numpy(), rollout(attentions, head_fusion=fusion, mask=mask).numpy())


def test_discard_ratio_ties_go_in_row_major_order():
    attention = torch.full((1, 1, 3, 3), 1 / 3, dtype=torch.float64)  # every entry ties
    fused = rollout([attention], discard_ratio=0.5, residual=False)[0, 0]  # 4 candidates, 2 discarded
    kept = (fused > 0).numpy()
    # candidates (1,1), (1,2), (2,1), (2,2): the first two in row-major order go; row/column 0 stay
    np.testing.assert_array_equal(kept, [[1, 1, 1], [1, 0, 0], [1, 1, 1]])


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"discard_ratio": 1.0}, ValueError, "0 <= discard_ratio < 1"),
        ({"discard_ratio": -0.1}, ValueError, "0 <= discard_ratio < 1"),
        ({"discard_ratio": float("nan")}, ValueError, "0 <= discard_ratio < 1"),
        ({"discard_ratio": "0.5"}, TypeError, "discard_ratio must be a number"),
        ({"discard_ratio": 0.5, "protected_tokens": 9}, ValueError, "protected_tokens=9 is out of range"),
        ({"discard_ratio": 0.5, "protected_tokens": "0"}, TypeError, "protected_tokens"),
    ],
)
def test_discard_ratio_and_protected_tokens_are_validated(options, error, match):
    with pytest.raises(error, match=match):
        rollout(random_attention(), **options)


# ---------------------------------------------------- the compiled fast path of prepare_graph (rollout, flow)


def general_graph(attentions):
    """``Â_l`` by the general torch path of :func:`prepare_graph`, which the fast path must equal
    (inputs that require grad keep prepare_graph off its fast path; the arithmetic is the same)."""
    return prepare_graph([a.detach().clone().requires_grad_() for a in attentions])[0].detach()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_graph_equals_the_general_path(dtype):
    attentions = random_attention(batch=2, layers=3, heads=5, n=9, seed=13, dtype=dtype)
    fast = mean_residual_graph(attention_layers(attentions)[0])
    assert fast is not None and fast.dtype == dtype  # the fast path ran, in the input's dtype
    tolerance = 1e-6 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(fast, general_graph(attentions), atol=tolerance, rtol=0)
    np.testing.assert_allclose(rollout(attentions).numpy(), loop_rollout(attentions), atol=tolerance)
    stacked = torch.stack(attentions, dim=1)  # batch 2: its unbound layers are not contiguous
    torch.testing.assert_close(rollout(stacked), rollout(attentions), atol=0, rtol=0)
    as_numpy = rollout([a.numpy() for a in attentions])
    assert isinstance(as_numpy, np.ndarray)
    np.testing.assert_array_equal(as_numpy, rollout(attentions).numpy())


def small_float32_attention():
    """Float32 attention: batch 2, 3 layers, 6 heads (the kernel takes heads 0-3 together, 4 and 5 alone), n = 6."""
    return random_attention(batch=2, layers=3, heads=6, n=6, seed=14, dtype=torch.float32)


def put(attentions, layer, index, value):
    attentions[layer][index] = value
    return attentions


def move_weight(attentions, layer, row, value):
    """Set the last weight of ``row`` (``(batch, head, i)``) of ``layer`` to ``value``; its old weight goes to key 0.

    The row sum stays 1 (to float32 rounding): only the value itself can make the row fail.
    """
    weights = attentions[layer][row]
    weights[0] += weights[-1]
    weights[-1] = value
    return attentions


def scale_rows(attentions, layer, rows, factors):
    """Multiply row ``rows[k]`` (an index ``(batch, head, i)``) of ``layer`` by ``factors[k]``."""
    for row, factor in zip(rows, factors):
        attentions[layer][row] *= factor
    return attentions


@pytest.mark.parametrize(
    "spoil, error, match",
    [
        (lambda a: put(a, 2, (1, 3, 5, 4), float("nan")), ValueError, "NaN or inf .*batch 1, layer 2, head 3, row 5, column 4"),
        (lambda a: put(a, 1, (0, 0, 0, 0), float("inf")), ValueError, "NaN or inf"),
        (lambda a: put(a, 1, (1, 2, 3, 1), -float("inf")), ValueError, "NaN or inf"),
        (lambda a: put(a, 0, (1, 5, 0, 2), float("nan")), ValueError, "NaN or inf .*batch 1, layer 0, head 5, row 0, column 2"),
        (lambda a: move_weight(a, 1, (0, 4, 2), -1e-30), ValueError, "layer 1 contains negative weights"),
        (lambda a: scale_rows(a, 2, [(0, 5, 1)], [0.98]), RowSumError, "row 1 of batch 0, layer 2, head 5 sums to 0.98"),
        (lambda a: move_weight(a, 2, (1, 3, 5), -1e-30), ValueError, "layer 2 contains negative weights"),
        (lambda a: scale_rows(a, 1, [(1, 3, 5)], [1.5]), RowSumError, "row 5 of batch 1, layer 1, head 3 sums to 1.5"),
        # two heads off by ∓30 % in the same row: their mean still sums to 1, each head must not
        (lambda a: scale_rows(a, 0, [(0, 0, 2), (0, 1, 2)], [0.7, 1.3]), RowSumError, "row 2 of batch 0, layer 0, head 0"),
    ],
)
def test_fast_graph_runs_every_check(spoil, error, match):
    attentions = spoil(small_float32_attention())
    assert mean_residual_graph(attention_layers(attentions)[0]) is None  # the kernel refuses ...
    with pytest.raises(error, match=match):  # ... and the general path names the problem
        rollout(attentions)


def test_fast_graph_accepts_what_the_general_path_accepts():
    attentions = move_weight(small_float32_attention(), 0, (0, 1, 4), -0.0)  # not negative (as for torch.amin)
    scale_rows(attentions, 1, [(1, 0, 3), (1, 2, 3)], [1.009, 0.991])  # inside ROW_SUM_TOLERANCE
    fast = mean_residual_graph(attention_layers(attentions)[0])
    assert fast is not None
    torch.testing.assert_close(fast, general_graph(attentions), atol=1e-6, rtol=0)


def test_fast_graph_leaves_grad_to_the_general_path():
    attentions = [a.requires_grad_() for a in random_attention(seed=15)]
    assert mean_residual_graph(attentions) is None
    assert rollout(attentions).requires_grad


@pytest.mark.parametrize("n", [COMPILED_PRODUCTS_MAX_N, COMPILED_PRODUCTS_MAX_N + 1])  # compiled loops, bmm
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("buffer_max", [graph_propagate.PRODUCTS_BUFFER_MAX_ELEMENTS, 0])  # bmm into a new tensor / in place
def test_rollout_products_match_a_matmul_loop(n, dtype, buffer_max, monkeypatch):
    monkeypatch.setattr(graph_propagate, "PRODUCTS_BUFFER_MAX_ELEMENTS", buffer_max)
    generator = torch.Generator().manual_seed(16)
    augmented = torch.softmax(torch.randn(3, 4, n, n, generator=generator, dtype=dtype), dim=-1)
    expected = [augmented[:, 0]]
    for layer in range(1, 4):
        expected.append(augmented[:, layer] @ expected[-1])
    expected = torch.stack(expected, dim=1)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(rollout_matrices(augmented), expected, atol=tolerance, rtol=0)
    torch.testing.assert_close(rollout_matrices(augmented[:, :3].clone(), inplace=True), expected[:, :3], atol=tolerance, rtol=0)
    original = augmented.clone()
    torch.testing.assert_close(rollout_matrices(augmented), expected, atol=tolerance, rtol=0)
    assert torch.equal(augmented, original)  # inplace=False leaves the input alone
    sliced = augmented[:, :3]  # batch 3: not contiguous, as head_rollout passes it
    torch.testing.assert_close(rollout_matrices(sliced, inplace=True), expected[:, :3], atol=tolerance, rtol=0)
