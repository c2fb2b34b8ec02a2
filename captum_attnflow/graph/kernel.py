"""The compiled loops behind the CPU fast path of :func:`captum_attnflow.rollout` (numba).

:func:`mean_residual_block` reads every attention weight once to both check it and build the
paper's graph matrix ``Â = rownorm(mean_h A[h] + I)`` (steps 2 and 4 of
:mod:`captum_attnflow.graph`), the work the general torch path spreads over four passes (row
sums, minimum, head mean, normalisation) and a dozen tensor operations per block of layers.
:func:`rollout_products` multiplies the small matrices of short inputs, where a BLAS call per
layer costs more than the product. Each kernel compiles once per dtype and caches on disk; a
fresh process loads them on its first call.
"""

from __future__ import annotations

import numba
import numpy as np

#: Licences the kernel takes with floating point: reassociated (vectorised) sums, ``x / y`` as
#: ``x * (1 / y)``, fused multiply-adds, signless zeros. Not ``nnan``/``ninf``: a NaN or infinite
#: weight must still make its row sum fail the bounds.
FASTMATH = {"reassoc", "contract", "arcp", "nsz"}


@numba.njit(cache=True, fastmath=FASTMATH)
def mean_residual_block(block: np.ndarray, augmented: np.ndarray, first_layer: int, low: float, high: float) -> bool:
    """Check a block of layers of attention and write their graph matrices ``rownorm(mean_h A[h] + I)``.

    Args:
        block: ``(batch, c, heads, n, n)`` float32 or float64, layers ``first_layer`` to
            ``first_layer + c - 1``.
        augmented: ``(batch, L, n, n)`` of the same dtype; ``augmented[:, first_layer + k]``
            receives the graph matrix of ``block[:, k]``.
        first_layer: index on ``augmented``'s layer axis of the block's first layer.
        low, high: bounds on the sum of every row of every head.

    Returns:
        True when no weight is negative and every row of every head sums to a value in
        ``[low, high]`` (so NaN and inf fail); False otherwise, and the block's layers of
        ``augmented`` are then unspecified.
    """
    batch, layers, heads, n, _ = block.shape
    row = np.empty(n, block.dtype)  # the fused row, summed over heads
    zero = row.dtype.type(0)  # sums in the input's dtype: float32 stays float32
    negative = False
    sums_in_bounds = True
    for b in range(batch):
        for c in range(layers):
            for i in range(n):
                row[:] = zero
                h = 0
                while h + 4 <= heads:  # four heads per sweep of the row: a quarter of the loads and stores of ``row``
                    w0, w1, w2, w3 = block[b, c, h, i], block[b, c, h + 1, i], block[b, c, h + 2, i], block[b, c, h + 3, i]
                    t0 = t1 = t2 = t3 = zero
                    for j in range(n):
                        a0, a1, a2, a3 = w0[j], w1[j], w2[j], w3[j]
                        t0 += a0
                        t1 += a1
                        t2 += a2
                        t3 += a3
                        row[j] += (a0 + a1) + (a2 + a3)
                        negative |= (a0 < 0) | (a1 < 0) | (a2 < 0) | (a3 < 0)  # vectorises (a min would not)
                    for total in (t0, t1, t2, t3):
                        sums_in_bounds &= (total >= low) & (total <= high)
                    h += 4
                for h in range(h, heads):  # the remaining heads, one at a time
                    weights = block[b, c, h, i]
                    total = zero
                    for j in range(n):
                        weight = weights[j]
                        total += weight
                        row[j] += weight
                        negative |= weight < 0  # -0.0 is not negative, as for torch.amin
                    sums_in_bounds &= (total >= low) & (total <= high)
                total = zero
                for j in range(n):
                    row[j] /= heads
                    total += row[j]
                row[i] += 1
                total += 1
                out = augmented[b, first_layer + c, i]
                for j in range(n):
                    out[j] = row[j] / total
    return sums_in_bounds and not negative


@numba.njit(cache=True, fastmath=FASTMATH)
def rollout_products(augmented: np.ndarray) -> None:
    """``R_l = Â_l · R_{l-1}`` in place: C-contiguous ``(batch, L, n, n)`` of ``Â_l`` becomes the ``R_l``.

    Plain loops (row ``i`` of ``R_l`` is ``Σ_k Â_l[i, k]·R_{l-1}[k]``, vectorised over the row), for
    small ``n``, where a BLAS call costs more to set up than the product itself.
    """
    batch, layers, n, _ = augmented.shape
    row = np.empty(n, augmented.dtype)
    zero = row.dtype.type(0)
    for b in range(batch):
        for layer in range(1, layers):
            below = augmented[b, layer - 1]
            current = augmented[b, layer]
            for i in range(n):
                row[:] = zero
                for k in range(n):
                    weight = current[i, k]
                    source = below[k]
                    for j in range(n):
                        row[j] += weight * source[j]
                current[i] = row  # row i of Â_l is not read again
