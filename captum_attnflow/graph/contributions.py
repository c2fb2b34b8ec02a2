r"""Context-mixing graphs beyond attention weights: value-norm (Kobayashi et al. 2020) and ALTI
(Ferrando et al. 2022) — pure tensor functions whose result rollout and flow take in place of
the attention.

Notation for layer ``l`` (batch axis omitted): ``α^h_ij`` the attention of head ``h`` (row ``i``
= receiving token, column ``j`` = source), ``v^h_j`` ``(dh,)`` the value vector of head ``h`` at
token ``j`` (grouped-query heads repeated), ``W_O`` ``(d, H·dh)`` the output projection
(``nn.Linear`` layout) and ``W_O^h = W_O[:, h·dh:(h+1)·dh]``, ``x_j`` ``(d,)`` the block input
(pre-norm models: the residual stream entering the block, before its norm). Then

* ``u^h_j = W_O^h v^h_j`` — what token ``j`` would send through head ``h``;
* ``f^h_ij = α^h_ij u^h_j`` — what it sends to ``i``; the block writes ``Σ_j Σ_h f^h_ij + b_O``
  onto the residual ``x_i``.

**value-norm**: ``w_ij = ‖Σ_h f^h_ij‖₂``, computed from the per-token Gram matrix
``G_j[h, g] = ⟨u^h_j, u^g_j⟩`` as ``w_ij² = Σ_{h,g} α^h_ij α^g_ij G_j[h, g]`` (``O(n²H² + nH²d)``
instead of ``O(n²d)``). The output bias belongs to no token and is left out (as in the paper).
With ``residuals`` (Kobayashi et al. 2021-style, functional API only) the diagonal becomes
``‖Σ_h f^h_ii + x_i‖₂``: the residual weighed by its norm, inside the graph.

**ALTI**: ``T_i(x_j) = Σ_h f^h_ij + [i = j]·x_i`` and ``y_i = Σ_j T_i(x_j)``; for a post-norm
block (BERT) the LayerNorm ``LN(z) = γ ⊙ (z − μ(z)) / σ(z) + β`` of the real sum
``z_i = y_i + b_O`` is split linearly over the terms, ``T_i(x_j) ← γ ⊙ (T_i(x_j) − μ(T_i(x_j))) /
σ(z_i)`` (the variance taken from the sum). The biases (``b_O``, ``β``, and ``b_O``'s part of the
LayerNorm) belong to no token and are not in ``y_i``. ``c_ij = max(0, ‖y_i‖₁ − ‖y_i − T_i(x_j)‖₁)``.

Both graphs are returned row-normalised, ``M_l = rownorm(W_l)``, as a :class:`ContributionGraph`
(live rows sum to 1; a live row with no weight at all keeps its own token, ``M_ii = 1``; padded
rows and columns and, for causal attention, entries above the diagonal are 0). Rollout and flow
then use, per layer, ``Â_l = rownorm(M_l + I) = ½·M_l + ½·I`` (value-norm: the paper's residual
augmentation applied to the normalised contributions — for attention ``M_l = mean_h A_l`` and
this is exactly the paper's graph) or ``Â_l = M_l`` (ALTI, and value-norm with ``residuals``:
the residual is already inside, no ``+ I``).

Padding: keys outside ``mask`` are zeroed in ``α`` (a model that masks its padding has 0 there
already); ``α`` is not renormalised, so the decomposition stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from captum_attnflow.utils.attention import as_mask

#: The ``graph=`` values of the attribution classes: the paper's attention graph, value-norm, ALTI.
GRAPHS: tuple[str, ...] = ("attention", "value_norm", "alti")

#: ALTI's ``(rows, n, n, d)`` term tensor is built in row blocks of at most this many elements.
ALTI_BLOCK_ELEMENTS = 1 << 24


def check_graph(graph: str) -> str:
    """``graph`` if it is one of :data:`GRAPHS`, else ValueError naming the choices."""
    if not isinstance(graph, str) or graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}; choose one of {GRAPHS}.")
    return graph


@dataclass(frozen=True)
class ContributionGraph:
    """Per-layer contribution matrices that :func:`~captum_attnflow.rollout`,
    :func:`~captum_attnflow.raw_attention` and :func:`~captum_attnflow.attention_flow` take in
    place of the attention (``head_fusion`` must stay ``"mean"``; ``head=`` is not defined).

    Attributes:
        matrices: ``(batch, L, n, n)``, ``matrices[:, l, i, j] = M_l[i, j] ≥ 0``, live rows sum to 1.
        residual_included: the residual is inside ``M_l`` (ALTI): rollout and flow use ``M_l`` as
            it is; otherwise ``residual=True`` gives ``rownorm(M_l + I)``.
        name: ``"value_norm"``, ``"alti"`` or a user's name.
    """

    matrices: Tensor
    residual_included: bool
    name: str = "contributions"

    def select(self, rows) -> "ContributionGraph":
        """The graph of the examples ``rows`` (an index or slice on the batch axis)."""
        return ContributionGraph(self.matrices[rows], self.residual_included, self.name)


def _layers(items, name: str, count: int | None = None) -> list:
    items = list(items)
    if count is not None and len(items) != count:
        raise ValueError(f"{name} has {len(items)} layers but attentions has {count}; pass one per layer.")
    return items


def sends(values: Tensor, out_proj: Tensor) -> Tensor:
    """``u^h_j = W_O^h v^h_j``: ``values`` ``(batch, H, n, dh)``, ``out_proj`` ``(d, H·dh)`` -> ``(batch, H, n, d)``."""
    batch, heads, n, dh = values.shape
    if out_proj.dim() != 2 or out_proj.shape[1] != heads * dh:
        raise ValueError(f"out_proj has shape {tuple(out_proj.shape)}; expected (d, heads*head_dim) = (d, {heads * dh}).")
    return torch.einsum("bhjk,dhk->bhjd", values, out_proj.reshape(out_proj.shape[0], heads, dh).to(values.dtype))


def _prepare(attention: Tensor, values: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Checks one layer's shapes; zeroes ``α`` of padded keys and queries and the values of padded
    tokens (by selection: a fully masked row may hold NaN). Returns ``(α, values, live)``."""
    if attention.dim() != 4 or attention.shape[-1] != attention.shape[-2]:
        raise ValueError(f"attention has shape {tuple(attention.shape)}; expected (batch, heads, n, n).")
    if values.dim() != 4 or values.shape[:3] != attention.shape[:3]:
        raise ValueError(f"values have shape {tuple(values.shape)}; expected (batch, heads, n, head_dim) = "
                         f"{tuple(attention.shape[:3])} + (head_dim,) (grouped-query heads repeated).")
    batch, _, n, _ = attention.shape
    live = torch.ones(batch, n, dtype=torch.bool, device=attention.device) if mask is None else mask
    pairs = live[:, None, :, None] & live[:, None, None, :]
    return attention.masked_fill(~pairs, 0.0), values.masked_fill(~live[:, None, :, None], 0.0), live


def _normalise_rows(matrix: Tensor, live: Tensor) -> Tensor:
    """``rownorm`` on live rows; a live row without weight gets 1 on its diagonal; padded rows stay 0."""
    sums = matrix.sum(-1, keepdim=True)
    empty = (sums[..., 0] <= 0) & live
    matrix = matrix / sums.clamp_min(torch.finfo(matrix.dtype).tiny)
    return matrix + torch.diag_embed(empty.to(matrix.dtype))


def value_norm_matrix(attention: Tensor, values: Tensor, out_proj: Tensor, *, residual: Tensor | None = None,
                      mask: Tensor | None = None) -> Tensor:
    """One layer's ``w_ij = ‖Σ_h α^h_ij W_O^h v^h_j‖₂`` (module docstring), not normalised.

    Args:
        attention: ``(batch, H, n, n)``. values: ``(batch, H, n, dh)``. out_proj: ``(d, H·dh)``.
        residual: ``(batch, n, d)`` block input; when given the diagonal is ``‖Σ_h f^h_ii + x_i‖₂``.
        mask: ``(batch, n)`` bool or None.

    Returns:
        ``(batch, n, n)``.
    """
    alpha, values, live = _prepare(attention, values, mask)
    u = sends(values, out_proj)  # (batch, H, n, d)
    gram = torch.einsum("bhjd,bgjd->bjhg", u, u)  # G_j, (batch, n, H, H)
    squared = torch.einsum("bhij,bjhg,bgij->bij", alpha, gram, alpha)
    if residual is not None:
        x = residual.to(u.dtype).masked_fill(~live[..., None], 0.0)
        own = (torch.einsum("bhi,bhid->bid", alpha.diagonal(dim1=-2, dim2=-1), u) + x).square().sum(-1)
        squared = squared - torch.diag_embed(squared.diagonal(dim1=-2, dim2=-1)) + torch.diag_embed(own)
    return squared.clamp_min(0).sqrt()


def alti_matrix(attention: Tensor, values: Tensor, out_proj: Tensor, residual: Tensor, *,
                out_bias: Tensor | None = None, post_norm=None, mask: Tensor | None = None) -> Tensor:
    """One layer's ALTI contributions ``c_ij = max(0, ‖y_i‖₁ − ‖y_i − T_i(x_j)‖₁)`` (module docstring), not normalised.

    Args:
        attention: as in :func:`value_norm_matrix`.
        values: as in :func:`value_norm_matrix`.
        out_proj: as in :func:`value_norm_matrix`.
        mask: as in :func:`value_norm_matrix`.
        residual: ``(batch, n, d)`` block input ``x``.
        out_bias: ``(d,)`` output bias ``b_O``; only enters the post-norm variance.
        post_norm: ``(γ, β, eps)`` of the LayerNorm after the residual sum (post-norm blocks), or None.

    Returns:
        ``(batch, n, n)``. Row blocks keep the ``(rows, n, n, d)`` term tensor under
        :data:`ALTI_BLOCK_ELEMENTS` elements.
    """
    alpha, values, live = _prepare(attention, values, mask)
    u = sends(values, out_proj)
    batch, _, n, d = u.shape
    if tuple(residual.shape) != (batch, n, d):
        raise ValueError(f"residual has shape {tuple(residual.shape)}; expected (batch, n, d) = ({batch}, {n}, {d}).")
    x = residual.to(u.dtype).masked_fill(~live[..., None], 0.0)
    scale = gamma = None
    if post_norm is not None:
        gamma, _, eps = post_norm
        z = torch.einsum("bhij,bhjd->bid", alpha, u) + x
        if out_bias is not None:
            z = z + out_bias.to(u.dtype)
        scale = 1.0 / torch.sqrt(z.var(-1, unbiased=False) + eps)  # 1 / σ(z_i), (batch, n)
    result = u.new_zeros(batch, n, n)
    step = max(1, ALTI_BLOCK_ELEMENTS // max(1, batch * n * d))
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        terms = torch.einsum("bhij,bhjd->bijd", alpha[:, :, rows], u)  # (batch, r, n, d)
        own = torch.arange(rows.start, rows.stop, device=u.device)
        terms[:, own - start, own] += x[:, rows]
        if scale is not None:
            terms = (terms - terms.mean(-1, keepdim=True)) * scale[:, rows, None, None]
            if gamma is not None:
                terms = terms * gamma.to(u.dtype)
        y = terms.sum(2)  # (batch, r, d)
        distance = (y[:, :, None] - terms).abs().sum(-1)
        result[:, rows] = (y.abs().sum(-1)[..., None] - distance).clamp_min(0)
    return result.masked_fill(~(live[:, :, None] & live[:, None, :]), 0.0)


def _graph(per_layer: list[Tensor], mask: Tensor | None, residual_included: bool, name: str) -> ContributionGraph:
    stacked = torch.stack(per_layer, dim=1)  # (batch, L, n, n)
    batch, _, n, _ = stacked.shape
    live = torch.ones(batch, n, dtype=torch.bool, device=stacked.device) if mask is None else mask
    return ContributionGraph(_normalise_rows(stacked, live[:, None].expand(-1, stacked.shape[1], -1)), residual_included, name)


def value_norm_graph(attentions: Sequence[Tensor], values: Sequence[Tensor], out_proj: Sequence[Tensor], *,
                     mask=None, residuals: Sequence[Tensor] | None = None) -> ContributionGraph:
    """Value-norm graph (Kobayashi et al., EMNLP 2020): ``M_l = rownorm(‖Σ_h α^h_ij W_O^h v^h_j‖₂)``.

    Args:
        attentions: ``L`` tensors ``(batch, H, n, n)`` (per head).
        values: ``L`` tensors ``(batch, H, n, dh)`` (grouped-query heads repeated).
        out_proj: ``L`` output projection weights ``(d, H·dh)`` (``nn.Linear`` layout).
        mask: ``(batch, n)`` padding mask (1/True = real token) or None.
        residuals: ``L`` block inputs ``(batch, n, d)`` for the norm-weighted residual (the
            diagonal becomes ``‖Σ_h f^h_ii + x_i‖₂`` and rollout/flow add no ``+ I``); None
            (default) for the paper's ``rownorm(M + I)`` augmentation.

    Returns:
        :class:`ContributionGraph` with ``matrices`` ``(batch, L, n, n)``.
    """
    attentions = _layers(attentions, "attentions")
    values, out_proj = _layers(values, "values", len(attentions)), _layers(out_proj, "out_proj", len(attentions))
    residuals = None if residuals is None else _layers(residuals, "residuals", len(attentions))
    batch, _, n, _ = attentions[0].shape
    mask = as_mask(mask, batch=batch, n=n, device=attentions[0].device)
    per_layer = [
        value_norm_matrix(a, v, w, residual=None if residuals is None else residuals[index], mask=mask)
        for index, (a, v, w) in enumerate(zip(attentions, values, out_proj))
    ]
    return _graph(per_layer, mask, residuals is not None, "value_norm")


def alti_graph(attentions: Sequence[Tensor], values: Sequence[Tensor], out_proj: Sequence[Tensor],
               residuals: Sequence[Tensor], *, out_bias: Sequence[Tensor | None] | None = None,
               post_norms: Sequence | None = None, mask=None) -> ContributionGraph:
    """ALTI graph (Ferrando, Gállego & Costa-jussà, EMNLP 2022): ``M_l = rownorm(c)`` with the residual inside.

    Args:
        attentions: as in :func:`value_norm_graph`.
        values: as in :func:`value_norm_graph`.
        out_proj: as in :func:`value_norm_graph`.
        residuals: ``L`` block inputs ``x`` ``(batch, n, d)`` (pre-norm: the residual stream
            entering the block, before its norm; post-norm: the block's input).
        out_bias: ``L`` output biases ``(d,)`` (or None entries); only used for the post-norm variance.
        post_norms: ``L`` entries, each None (pre-norm) or ``(γ, β, eps)`` of the LayerNorm applied
            to ``x + attention output`` (post-norm, BERT: ``attention.output.LayerNorm``).
        mask: as in :func:`value_norm_graph`.

    Returns:
        :class:`ContributionGraph` with ``residual_included=True``.
    """
    attentions = _layers(attentions, "attentions")
    count = len(attentions)
    values, out_proj = _layers(values, "values", count), _layers(out_proj, "out_proj", count)
    residuals = _layers(residuals, "residuals", count)
    out_bias = [None] * count if out_bias is None else _layers(out_bias, "out_bias", count)
    post_norms = [None] * count if post_norms is None else _layers(post_norms, "post_norms", count)
    batch, _, n, _ = attentions[0].shape
    mask = as_mask(mask, batch=batch, n=n, device=attentions[0].device)
    per_layer = [
        alti_matrix(a, v, w, x, out_bias=b, post_norm=p, mask=mask)
        for a, v, w, x, b, p in zip(attentions, values, out_proj, residuals, out_bias, post_norms)
    ]
    return _graph(per_layer, mask, True, "alti")


def recorded_graph(graph: str, attentions: Sequence[Tensor], terms: Sequence, *, mask=None) -> ContributionGraph:
    """The ``graph`` (``"value_norm"`` or ``"alti"``) of a recorded pass.

    Args:
        attentions: ``L`` recorded tensors ``(batch, H, n, n)`` (per head).
        terms: ``L`` :class:`~captum_attnflow.capture.terms.LayerTerms` (``AttentionRecorder(...,
            contributions=True).terms``).

    Raises:
        ValueError: ``graph`` unknown or ``"attention"`` (nothing to build), or ALTI on a layer
            whose block input is unknown (the message names the module and the extractor key).
    """
    check_graph(graph)
    if graph == "attention":
        raise ValueError("graph='attention' is the recorded attention itself; pass the attentions to rollout/flow.")
    values = [t.values for t in terms]
    out_proj = [t.out_weight for t in terms]
    if graph == "value_norm":
        return value_norm_graph(attentions, values, out_proj, mask=mask)
    missing = [t for t in terms if t.residual is None]
    if missing:
        raise ValueError(
            f"graph='alti' needs each block's input (the residual stream): {missing[0].where}: {missing[0].missing}. "
            f"Pass an extractor that returns a dict with 'residual' (batch, n, d) (and 'post_norm' for a "
            f"post-norm block) besides 'weights', 'values' and 'out_proj'."
        )
    return alti_graph(attentions, values, out_proj, [t.residual for t in terms], out_bias=[t.out_bias for t in terms],
                      post_norms=[t.post_norm for t in terms], mask=mask)
