"""The compiled pass behind the CPU fast path of :func:`captum_attnflow.rollout` (numba).

One read of every attention weight both checks it and builds the paper's graph matrix
``Â = rownorm(mean_h A[h] + I)`` (steps 2 and 4 of :mod:`captum_attnflow.graph`), the work the
general torch path spreads over four passes (row sums, minimum, head mean, normalisation) and a
dozen tensor operations per block of layers.
"""

from __future__ import annotations

import numba
import numpy as np

#: Licences the kernel takes with floating point: reassociated (vectorised) sums, ``x / y`` as
#: ``x * (1 / y)``, fused multiply-adds, signless zeros. Not ``nnan``/``ninf``: a NaN or infinite
#: weight must still make its row sum fail the bounds.
FASTMATH = {"reassoc", "contract", "arcp", "nsz"}


@numba.njit(cache=True, fastmath=FASTMATH)
def mean_residual_layer(attention: np.ndarray, augmented: np.ndarray, layer: int, low: float, high: float) -> bool:
    """Check one layer of attention and write its graph matrix ``rownorm(mean_h A[h] + I)``.

    Args:
        attention: ``(batch, heads, n, n)`` float32 or float64.
        augmented: ``(batch, L, n, n)`` of the same dtype; ``augmented[:, layer]`` receives the
            graph matrix of ``attention``.
        layer: index on ``augmented``'s layer axis.
        low, high: bounds on the sum of every row of every head.

    Returns:
        True when no weight is negative and every row of every head sums to a value in
        ``[low, high]`` (so NaN and inf fail); False otherwise, and ``augmented[:, layer]`` is
        then unspecified.
    """
    batch, heads, n, _ = attention.shape
    row = np.empty(n, attention.dtype)  # the fused row, summed over heads
    zero = row.dtype.type(0)  # sums in the input's dtype: float32 stays float32
    negative = 0
    sums_in_bounds = True
    for b in range(batch):
        for i in range(n):
            row[:] = zero
            for h in range(heads):
                weights = attention[b, h, i]
                total = zero
                for j in range(n):
                    weight = weights[j]
                    total += weight
                    row[j] += weight
                    negative += weight < 0  # a count vectorises; -0.0 is not negative, as for amin
                sums_in_bounds &= (total >= low) & (total <= high)
            total = zero
            for j in range(n):
                row[j] /= heads
                total += row[j]
            row[i] += 1
            total += 1
            out = augmented[b, layer, i]
            for j in range(n):
                out[j] = row[j] / total
    return sums_in_bounds and negative == 0
