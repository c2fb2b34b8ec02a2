"""``captum-attnflow demo``: raw attention, rollout and flow on a tiny random BERT (offline, seconds).

Builds a randomly initialised BERT (hidden size 32, 4 heads, --layers layers), feeds it --tokens
random token ids and prints, for every layer, how much position 0 ([CLS]) attends to each input
token under raw attention, attention rollout and attention flow (Abnar & Zuidema 2020). Nothing
is downloaded and nothing is written; use it to check an installation or to see the three
methods side by side.

Example:
  captum-attnflow demo --layers 6 --tokens 12 --seed 1
"""

from __future__ import annotations

import argparse

from captum_attnflow.utils.arguments import bounded_int, fail

HELP = "raw attention, rollout and flow on a tiny random BERT (offline, seconds; checks an install)"
#: largest demo model: BERT's default position embeddings, and a depth that still runs in seconds
MAX_TOKENS, MAX_LAYERS = 512, 48


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", type=bounded_int(1, MAX_LAYERS), default=4,
                        help=f"number of layers, 1..{MAX_LAYERS} (default 4)")
    parser.add_argument("--tokens", type=bounded_int(1, MAX_TOKENS), default=8,
                        help=f"sequence length, 1..{MAX_TOKENS} (default 8)")
    parser.add_argument("--seed", type=bounded_int(0, 2**63 - 1), default=0, help="random seed (default 0)")


def run(args: argparse.Namespace) -> int:
    import torch

    from captum_attnflow.flow import attention_flow
    from captum_attnflow.graph import raw_attention, rollout

    try:
        from transformers import BertConfig, BertModel
    except ImportError:  # pragma: no cover - depends on the environment
        return fail("demo", "the demo needs transformers: pip install 'captum-attnflow[transformers]'")
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
