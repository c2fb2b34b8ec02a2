"""Vision transformers: token scores back onto the patch grid."""

from __future__ import annotations

import math

from torch import Tensor


def patch_grid(attributions: Tensor, grid: tuple[int, int] | None = None, prefix_tokens: int = 1) -> Tensor:
    """Reshape ViT token scores onto the patch grid.

    ViT attention runs over ``prefix_tokens`` special tokens (``[CLS]``, distillation or
    register tokens) followed by the ``h·w`` patches in row-major order. The prefix tokens are
    dropped and the patch scores laid out as the image.

    Args:
        attributions: ``(..., n)`` token scores, e.g. ``(batch, n)`` or ``(batch, L, n)`` from
            :meth:`AttentionRollout.attribute`, with ``n = prefix_tokens + h·w``.
        grid: ``(h, w)`` patches per column and row. Default: a square grid, which needs
            ``n - prefix_tokens`` to be a perfect square.
        prefix_tokens: the number of leading non-patch tokens (1 for ViT's ``[CLS]``; 2 for
            DeiT's ``[CLS]`` + distillation token; ``1 + registers`` with register tokens).

    Returns:
        ``(..., h, w)`` patch scores.

    Raises:
        ValueError: when the patch count does not match ``grid`` or is not a square.
    """
    if isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int) or prefix_tokens < 0:
        raise ValueError(f"prefix_tokens must be a non-negative int; got {prefix_tokens!r}.")
    n = attributions.shape[-1]
    patches = n - prefix_tokens
    if grid is None:
        side = math.isqrt(max(patches, 0))
        if patches <= 0 or side * side != patches:
            raise ValueError(
                f"{n} tokens minus prefix_tokens={prefix_tokens} leaves {patches} patches, not a "
                f"square grid; pass grid=(h, w) and the right prefix_tokens."
            )
        grid = (side, side)
    h, w = grid
    if h * w != patches:
        raise ValueError(
            f"grid={tuple(grid)} has {h * w} patches but the scores have {n} tokens - "
            f"prefix_tokens={prefix_tokens} = {patches}; check grid and prefix_tokens."
        )
    return attributions[..., prefix_tokens:].reshape(*attributions.shape[:-1], h, w)
