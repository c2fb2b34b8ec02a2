"""The paper's studies on shipped and real weights, offline, each a ``captum-attnflow`` command.

* :mod:`~captum_attnflow.studies.agreement` — ``reproduce``: the subject–verb agreement study
  (Tables 1–2, Figs. 2–3) on the shipped 6-layer model.
* :mod:`~captum_attnflow.studies.sentiment` — ``sentiment``: Table 3 on a fine-tuned MiniLM
  (:mod:`~captum_attnflow.studies.finetune`, movie snippets of :mod:`~captum_attnflow.studies.data`).
* :mod:`~captum_attnflow.studies.pronoun` — ``pronoun``: Fig. 4 on the SmolLM2 decoder.
* :mod:`~captum_attnflow.studies.demo` — ``demo``: the three methods on a tiny random BERT.
* shared: :mod:`~captum_attnflow.studies.methods` (the methods as Captum objects),
  :mod:`~captum_attnflow.studies.text` (tokenisation), :mod:`~captum_attnflow.studies.plots`.
"""
