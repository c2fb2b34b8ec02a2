"""Rollout, flow and gradient-weighted rollout on a Vision Transformer, drawn over the image.

A tiny randomly initialised Hugging Face ViT (offline; swap in any ``ViTForImageClassification``
you have locally) explains a synthetic image. ViT attention runs over ``[CLS]`` followed by the
patches in row-major order, so the ``(batch, 1 + h·w)`` token scores are laid out on the patch
grid with :func:`captum_attnflow.patch_grid` (``prefix_tokens=1``; add register/distillation
tokens for DeiT-style models) and drawn over the image. Writes one PNG per method to --out.

Run:  python examples/vit_image.py --out /tmp/attnflow-vit
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from captum_attnflow import AttentionFlow, AttentionRollout, GradientWeightedRollout, patch_grid
from captum_attnflow.visualize import patch_overlay, save_figure


def synthetic_image(size: int) -> torch.Tensor:
    """A ``(3, size, size)`` image in [0, 1]: a red disc and a blue square on grey."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    image = torch.full((3, size, size), 0.5)
    disc = (xs - 0.3) ** 2 + (ys - 0.35) ** 2 < 0.04
    square = (xs > 0.55) & (xs < 0.85) & (ys > 0.55) & (ys < 0.85)
    image[:, disc] = torch.tensor([0.9, 0.1, 0.1])[:, None]
    image[:, square] = torch.tensor([0.1, 0.2, 0.9])[:, None]
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("attnflow-vit"), help="output directory")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=args.image_size, patch_size=args.patch_size, num_channels=3, num_labels=2, hidden_size=32,
        num_hidden_layers=args.layers, num_attention_heads=4, intermediate_size=64,
    )
    model = ViTForImageClassification(config).eval()
    image = synthetic_image(args.image_size)
    pixels = image[None]  # (1, 3, H, W): the model's first positional argument
    side = args.image_size // args.patch_size

    # discard_ratio (vit-explain's option): per layer, zero the lowest 90% of the head-fused attention
    # entries before the residual — never the [CLS] row/column (protected_tokens=0) — which keeps
    # only the strongest paths and usually gives a sharper map.
    methods = {
        "rollout": (AttentionRollout(model), {}),
        "rollout_discard_0.9": (AttentionRollout(model), {"discard_ratio": 0.9, "protected_tokens": 0}),
        "flow": (AttentionFlow(model), {}),
        "gradient_rollout": (GradientWeightedRollout(model), {}),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (method, options) in methods.items():
        scores = method.attribute(pixels, target=0, **options)  # (1, 1 + side·side); target only matters for gradient_rollout
        grid = patch_grid(scores, grid=(side, side), prefix_tokens=1)[0]  # (side, side)
        path = save_figure(patch_overlay(image, grid, title=f"{name}, [CLS] at the last layer"), args.out / f"{name}.png")
        top = int(grid.flatten().argmax())
        print(f"{name:>16}: {scores.shape[1]} tokens, most attributed patch (row {top // side}, col {top % side}) -> {path}")


if __name__ == "__main__":
    main()
