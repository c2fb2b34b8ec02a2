"""Record the attention of a hand-written transformer and explain it by rollout and flow.

The attention module below computes its softmax by hand and neither returns its weights nor
calls ``F.scaled_dot_product_attention``, so the recorder cannot read them by itself: we name
the modules with a glob pattern and give an *extractor* that reads the weights the module
keeps. (Modules that call SDPA or return ``(output, weights)`` need no extractor, and
``attention_layers=None`` finds modules whose class name contains "Attention" automatically.)

The model takes a Hugging Face-style ``attention_mask`` (1 = real token), which the recorder
picks up as ``recorder.mask`` so that rollout and flow give padding exactly 0.

Run:  python examples/custom_model.py
"""

from __future__ import annotations

import torch
from torch import nn

from captum_attnflow import attention_flow, rollout
from captum_attnflow.capture import AttentionRecorder


class HandWrittenAttention(nn.Module):
    """Multi-head self-attention by explicit math; keeps its last weights in ``self.weights``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        batch, n, dim = x.shape
        q, k, v = (t.reshape(batch, n, self.heads, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        scores = q @ k.transpose(-2, -1) / (dim // self.heads) ** 0.5
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        self.weights = scores.softmax(dim=-1)  # (batch, heads, n, n)
        return self.out((self.weights @ v).transpose(1, 2).reshape(batch, n, dim))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mixer = HandWrittenAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    """Token + position embeddings, pre-norm blocks, a classifier on the first ([CLS]) token."""

    def __init__(self, vocab: int = 20, dim: int = 32, heads: int = 4, depth: int = 4, max_len: int = 32) -> None:
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, dim), nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.classifier = nn.Linear(dim, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.tokens(input_ids) + self.positions(torch.arange(input_ids.shape[1]))
        for block in self.blocks:
            x = block(x, attention_mask.bool())
        return self.classifier(x[:, 0])


def read_weights(module: HandWrittenAttention, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
    """Extractor: ``(module, args, kwargs, output) -> (batch, heads, n, n)``."""
    return module.weights


def main() -> None:
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    input_ids = torch.randint(1, 20, (2, 8))
    attention_mask = torch.ones(2, 8, dtype=torch.long)
    attention_mask[1, 6:] = 0  # the second example has 2 padding tokens

    recorder = AttentionRecorder(model, attention_layers=["blocks.*.mixer"], extractor=read_weights)
    with torch.no_grad(), recorder:
        logits = model(input_ids, attention_mask=attention_mask)

    print("recorded layers:", recorder.layers)
    print("attention per layer:", tuple(recorder.attentions[0].shape), "| padding mask:", recorder.mask.tolist()[1])
    print("logits:", [round(v, 3) for v in logits[1].tolist()])

    rolled = rollout(recorder.attentions, mask=recorder.mask)  # (batch, L, n, n)
    flow = attention_flow(recorder.attentions, mask=recorder.mask, output_positions=0)
    torch.set_printoptions(precision=3, sci_mode=False)
    for layer in range(rolled.shape[1]):
        print(f"layer {layer + 1}: [CLS] rollout {rolled[1, layer, 0]}")
        print(f"         [CLS] flow    {flow[1, layer, 0]}")
    assert torch.all(rolled[1, :, 0, 6:] == 0) and torch.all(flow[1, :, 0, 6:] == 0)


if __name__ == "__main__":
    main()
