"""What the figures share: colour maps, input conversion and saving (:func:`save_figure`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

#: Colour maps: sequential for non-negative scores, diverging (centred on 0) for signed ones.
SEQUENTIAL_CMAP = "viridis"
DIVERGING_CMAP = "RdBu_r"
#: File suffixes :func:`save_figure` writes.
FIGURE_FORMATS: tuple[str, ...] = (".png", ".svg", ".pdf")


def _as_numpy(values, name: str) -> np.ndarray:
    """``values`` as a finite float64 array (NaN/inf rejected with a message naming ``name``)."""
    if isinstance(values, Tensor):
        values = values.detach().cpu().to(torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or inf; compute every row you plot (attention_flow leaves unrequested rows NaN).")
    return array


def _live_indices(mask, example: int, n: int) -> list[int]:
    """Positions of the real tokens of ``example`` (all ``n`` without a mask)."""
    if mask is None:
        return list(range(n))
    row = np.asarray(mask[example].detach().cpu() if isinstance(mask, Tensor) else mask[example]).astype(bool)
    if row.shape != (n,):
        raise ValueError(f"mask rows must have n = {n} entries; got shape {row.shape}.")
    return np.flatnonzero(row).tolist()


def _scaled(values: np.ndarray) -> np.ndarray:
    """Divide by the maximum absolute value (all-zero stays zero)."""
    top = np.abs(values).max() if values.size else 0.0
    return values / top if top > 0 else values


def save_figure(figure: Figure, path: str | Path, *, dpi: int = 150) -> Path:
    """Save ``figure`` as PNG, SVG or PDF (chosen by the suffix of ``path``).

    Returns:
        The path written.

    Raises:
        ValueError: an unsupported suffix.
    """
    path = Path(path)
    if path.suffix.lower() not in FIGURE_FORMATS:
        raise ValueError(f"cannot save {path.name!r}: use one of the suffixes {FIGURE_FORMATS}.")
    figure.savefig(path, dpi=dpi)
    return path


def _text_colour(rgba) -> str:
    """Black or white text on a cell of colour ``rgba`` (by its luminance)."""
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
