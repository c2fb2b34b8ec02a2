"""``captum-attnflow reproduce``: the paper's subject–verb agreement study (§4.1: Tables 1–2,
Figs. 2–3) on the shipped model of :mod:`captum_attnflow.models.agreement_model` —
:mod:`~.study` (the protocol), :mod:`~.train`, :mod:`~.tables`, :mod:`~.figures`,
:mod:`~.explorer` and the command :mod:`~.reproduce`."""
