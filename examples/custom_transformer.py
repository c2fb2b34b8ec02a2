"""Attention rollout and flow on a hand-written ``nn.TransformerEncoder`` classifier.

No Hugging Face here: a [CLS]-token classifier built from ``torch.nn.TransformerEncoder`` is
trained for a few seconds on a toy task (is token 7 in the sequence?), then explained. The
recorder finds the ``nn.MultiheadAttention`` modules by itself and reads the padding from
the model's ``attention_mask`` argument. Shows:

* the per-layer [CLS] rollout and flow of a padded batch (padding scores 0),
* gradient-weighted rollout for each class (class-specific, Chefer et al. 2021),
* the same methods through a plain forward *function*, naming the attention modules.

Run:  python examples/custom_transformer.py [--steps 150]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from captum_attnflow import AttentionFlow, AttentionRollout, GradientWeightedRollout

VOCAB, CLS, PAD, KEY = 12, 1, 0, 7


class Classifier(nn.Module):
    """[CLS] + tokens -> TransformerEncoder -> linear head on the [CLS] state."""

    def __init__(self, dim: int = 32, heads: int = 4, layers: int = 3, max_len: int = 16) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, dim)
        self.positions = nn.Embedding(max_len, dim)
        block = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.tokens(input_ids) + self.positions(positions)
        hidden = self.encoder(hidden, src_key_padding_mask=attention_mask == 0)
        return self.head(hidden[:, 0])


def toy_batch(size: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random sequences with right padding; label 1 when token KEY occurs."""
    ids = torch.randint(2, VOCAB, (size, length), generator=generator)
    lengths = torch.randint(3, length + 1, (size,), generator=generator)
    mask = (torch.arange(length) < lengths[:, None]).long()
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, PAD))
    ids[:, 0] = CLS
    labels = ((ids[:, 1:] == KEY) & mask[:, 1:].bool()).any(dim=1).long()
    return ids, mask, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps (default 150)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    model = Classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(args.steps):
        ids, mask, labels = toy_batch(64, 10, generator)
        loss = nn.functional.cross_entropy(model(ids, mask), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    ids, mask, labels = toy_batch(256, 10, generator)
    with torch.no_grad():
        accuracy = (model(ids, mask).argmax(1) == labels).float().mean().item()
    print(f"trained {args.steps} steps, accuracy {accuracy:.2f}")

    ids = torch.tensor([[CLS, 3, KEY, 5, 9, 4], [CLS, 8, 2, 6, PAD, PAD]])
    mask = (ids != PAD).long()
    forward_args = (mask,)
    rollout = AttentionRollout(model)
    print("recorded attention modules:", rollout.layer_names)
    per_layer = rollout.attribute(ids, additional_forward_args=forward_args, layer="all")
    flow = AttentionFlow(model).attribute(ids, additional_forward_args=forward_args)
    for b in range(2):
        print(f"\nexample {b}: tokens {ids[b].tolist()}")
        for layer, row in enumerate(per_layer[b]):
            print(f"  rollout L{layer + 1}: " + " ".join(f"{v:.2f}" for v in row.tolist()))
        print("  flow    L3: " + " ".join(f"{v:.2f}" for v in flow[b].tolist()))
    gradient = GradientWeightedRollout(model)
    for target in (0, 1):
        scores = gradient.attribute(ids, target=target, additional_forward_args=forward_args)
        for b in range(2):
            print(f"gradient-weighted rollout, example {b}, class {target}: " + " ".join(f"{v:.3g}" for v in scores[b].tolist()))

    def forward(input_ids, attention_mask):
        return model(input_ids, attention_mask)

    modules = [layer.self_attn for layer in model.encoder.layers]
    same = AttentionRollout(forward, attention_layers=modules).attribute(ids, additional_forward_args=forward_args, layer="all")
    print("\nplain forward function + attention_layers gives the same rollout:", torch.allclose(same, per_layer))


if __name__ == "__main__":
    main()
