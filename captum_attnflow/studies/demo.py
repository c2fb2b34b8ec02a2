"""``captum-attnflow demo``: raw attention, rollout and flow on a tiny random BERT (offline)."""

from __future__ import annotations

import argparse
import sys

HELP = "rollout and flow on a tiny random BERT (offline, seconds)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", type=int, default=4, help="number of layers (default 4)")
    parser.add_argument("--tokens", type=int, default=8, help="sequence length (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def run(args: argparse.Namespace) -> int:
    import torch

    from captum_attnflow.flow import attention_flow
    from captum_attnflow.graph import raw_attention, rollout

    try:
        from transformers import BertConfig, BertModel
    except ImportError:  # pragma: no cover - depends on the environment
        print("the demo needs transformers: pip install 'captum-attnflow[transformers]'", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=args.layers, num_attention_heads=4,
        intermediate_size=64, attn_implementation="eager",
    )
    model = BertModel(config).eval()
    input_ids = torch.randint(5, 100, (1, args.tokens))
    with torch.no_grad():
        attentions = model(input_ids, output_attentions=True).attentions
    methods = {
        "raw": raw_attention(attentions),
        "rollout": rollout(attentions),
        "flow": attention_flow(attentions, output_positions=0),
    }
    print(f"tiny random BERT: {args.layers} layers, 4 heads, {args.tokens} tokens; "
          f"attribution of position 0 ([CLS]) to each input token")
    for layer in range(args.layers):
        print(f"\nlayer {layer + 1}")
        for name, values in methods.items():
            row = " ".join(f"{v:.3f}" for v in values[0, layer, 0].tolist())
            print(f"  {name:8s} {row}")
    return 0
