"""A tiny Vision Transformer trained in seconds on real handwritten digits, explained five ways.

scikit-learn ships 1,797 real 8×8 handwritten digits (UCI "optdigits"). A 4-layer
``ViTForImageClassification`` with 2×2 patches (16 patches + ``[CLS]``) learns them in a few
seconds on one CPU core. For some test digits the script draws, over the image:

* attention **rollout** and attention **flow** of ``[CLS]`` at the last layer
  (:class:`captum_attnflow.AttentionRollout` / :class:`captum_attnflow.AttentionFlow`, laid out
  on the 4×4 patch grid with :func:`captum_attnflow.patch_grid`);
* Captum's **IntegratedGradients** (|attribution| per pixel, black baseline) and **Occlusion**
  (2×2 windows = one patch, stride 2, black baseline) for the predicted class.

Run:  python examples/vit_digits.py --out /tmp/vit-digits     (writes vit_digits.png)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from captum_attnflow import AttentionFlow, AttentionRollout, patch_grid

PATCH = 2
SIDE = 8 // PATCH  # patches per row


def load_digits_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as ``(N, 1, 8, 8)`` floats in [0, 1] and labels; a seeded 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(digits.target)
    x_train, x_test, y_train, y_test = train_test_split(images, labels, test_size=0.2, random_state=seed, stratify=labels)
    return x_train, x_test, y_train, y_test


def train_vit(x_train: torch.Tensor, y_train: torch.Tensor, *, epochs: int = 15, seed: int = 0):
    """A 4-layer, 4-head ViT (hidden 64) on 2×2 patches, trained with AdamW; returns it in eval mode."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=8, patch_size=PATCH, num_channels=1, num_labels=10, hidden_size=64, num_hidden_layers=4,
        num_attention_heads=4, intermediate_size=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = ViTForImageClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x_train), generator=generator).split(64):
            loss = torch.nn.functional.cross_entropy(model(pixel_values=x_train[batch]).logits, y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def explain(model, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Five ``(batch, 8, 8)`` maps for ``images`` ``(batch, 1, 8, 8)``, keyed by method name.

    Patch-level maps (rollout, flow, occlusion) are repeated over the 2×2 pixels of each patch.
    """
    from captum.attr import IntegratedGradients, Occlusion

    def logits(pixels):
        return model(pixel_values=pixels).logits

    with torch.no_grad():
        predicted = logits(images).argmax(-1)
    per_patch = {
        "rollout": patch_grid(AttentionRollout(model).attribute(images), grid=(SIDE, SIDE), prefix_tokens=1),
        "flow": patch_grid(AttentionFlow(model).attribute(images), grid=(SIDE, SIDE), prefix_tokens=1),
    }
    maps = {name: grid.repeat_interleave(PATCH, -2).repeat_interleave(PATCH, -1) for name, grid in per_patch.items()}
    maps["integrated gradients"] = IntegratedGradients(logits).attribute(images, target=predicted, n_steps=32)[:, 0].abs()
    maps["occlusion"] = Occlusion(logits).attribute(
        images, target=predicted, sliding_window_shapes=(1, PATCH, PATCH), strides=(1, PATCH, PATCH), baselines=0.0
    )[:, 0]
    return {name: values.detach() for name, values in maps.items()}


def draw(
    images: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor, maps: dict[str, torch.Tensor], path: Path
) -> Path:
    """A grid: one row per digit, the digit then each map beside it (each map min–max scaled).

    The maps are drawn on their own, not blended over the digit, so every cell has a colour of the
    colour bar; the digit's outline (pixel intensity 0.5) is a thin cyan contour on each map."""
    from matplotlib.figure import Figure

    from captum_attnflow.visualize import save_figure

    columns = ["digit", *maps]
    figure = Figure(figsize=(1.8 * len(columns) + 1.0, 1.8 * len(images) + 0.4), constrained_layout=True)
    axes = figure.subplots(len(images), len(columns), squeeze=False)
    for row in range(len(images)):
        picture = images[row, 0].numpy()
        for column, name in enumerate(columns):
            axis = axes[row][column]
            if name == "digit":
                axis.imshow(picture, cmap="gray", vmin=0, vmax=1)
            else:
                values = maps[name][row].numpy()
                span = values.max() - values.min()
                scaled = (values - values.min()) / span if span > 0 else np.zeros_like(values)
                heat = axis.imshow(scaled, cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
                axis.contour(picture, levels=[0.5], colors="cyan", linewidths=0.8)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(name, fontsize=9)
        axes[row][0].set_ylabel(f"label {int(labels[row])}, pred {int(predicted[row])}", fontsize=8)
    figure.colorbar(heat, ax=axes[:, 1:].ravel().tolist(), shrink=0.4, label="score, each map min–max scaled")
    figure.supxlabel("cyan line: the digit's outline (pixel intensity 0.5)", fontsize=8)
    return save_figure(figure, path, dpi=110)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("vit-digits"), help="output directory")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs (default 15)")
    parser.add_argument("--examples", type=int, default=6, help="test digits to draw (default 6)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    x_train, x_test, y_train, y_test = load_digits_split(args.seed)
    model = train_vit(x_train, y_train, epochs=args.epochs, seed=args.seed)
    with torch.no_grad():
        accuracy = float((model(pixel_values=x_test).logits.argmax(-1) == y_test).float().mean())
    print(f"tiny ViT on sklearn digits: test accuracy {accuracy:.3f} ({len(x_test)} images)")
    images, labels = x_test[: args.examples], y_test[: args.examples]
    with torch.no_grad():
        predicted = model(pixel_values=images).logits.argmax(-1)
    args.out.mkdir(parents=True, exist_ok=True)
    path = draw(images, labels, predicted, explain(model, images), args.out / "vit_digits.png")
    print(f"wrote {path}")
    return accuracy


if __name__ == "__main__":
    main()
