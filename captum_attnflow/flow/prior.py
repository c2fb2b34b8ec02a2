"""The causal positional prior of rollout and flow, and dividing it out.

On a causal decoder, rollout and flow rank the prompt's tokens by position whatever the model
does: even *uniform* causal attention (``U[i, j] = 1/(i+1)`` for ``j ≤ i``, no information at all)
rolls out over 30 layers to 99.4–99.7 % on position 0, strictly decreasing with position. The
*prior* of a method is that method on uniform causal attention with the same number of layers
and tokens; the *corrected* attribution of output position ``i`` is

    ``c_i[j] = r_i[j] / p_i[j]``,  renormalised over ``j`` (``Σ_j c_i[j] = 1``),

where ``r_i`` is the method's row on the model's graph and ``p_i`` its row on the uniform one
(``p_i[j] > 0`` for every ``j ≤ i``). It reads "how much more than position alone would give".
Whether it helps is measured, not assumed: ``captum-attnflow llm-faithfulness`` has rows with
and without it (the docs' LLM page gives the numbers).
"""

from __future__ import annotations

from typing import Literal

import torch

from captum_attnflow.flow.api import attention_flow
from captum_attnflow.graph import rollout

PriorMethod = Literal["rollout", "flow"]
PRIOR_METHODS: tuple[str, ...] = ("rollout", "flow")


def uniform_causal_attention(n: int, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(n, n)`` uniform causal attention: row ``i`` puts ``1/(i+1)`` on keys ``0..i``."""
    if n < 1:
        raise ValueError(f"n={n} must be at least 1 token.")
    lower = torch.tril(torch.ones(n, n, dtype=dtype))
    return lower / lower.sum(-1, keepdim=True)


def positional_prior(method: PriorMethod, n: int, num_layers: int, positions: list[int]) -> torch.Tensor:
    """Rows ``(len(positions), n)`` of ``method`` (rollout or flow, the paper's graph
    ``rownorm(U + I)``) on ``num_layers`` layers of uniform causal attention over ``n`` tokens,
    at the last layer, float64."""
    if method not in PRIOR_METHODS:
        raise ValueError(f"unknown prior method {method!r}; choose one of {PRIOR_METHODS}.")
    if num_layers < 1:
        raise ValueError(f"num_layers={num_layers} must be at least 1.")
    uniform = [uniform_causal_attention(n)[None, None]] * num_layers
    if method == "rollout":
        return rollout(uniform)[0, -1, positions]
    return attention_flow(uniform, output_positions=positions, layers=num_layers - 1)[0, -1, positions]


def divide_prior(rows: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """``rows / prior`` renormalised per row: ``(..., n)`` each. Entries where the prior is 0
    (keys after the query on a causal model) give 0."""
    if rows.shape != prior.shape:
        raise ValueError(f"rows have shape {tuple(rows.shape)} but the prior {tuple(prior.shape)}.")
    prior = prior.to(rows.device, torch.float64)
    ratio = torch.where(prior > 0, rows.to(torch.float64) / prior.clamp_min(torch.finfo(torch.float64).tiny),
                        torch.zeros((), dtype=torch.float64))
    total = ratio.sum(-1, keepdim=True)
    return (ratio / total.clamp_min(torch.finfo(torch.float64).tiny)).to(rows.dtype)
