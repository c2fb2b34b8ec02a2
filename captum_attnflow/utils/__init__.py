"""Helpers below everything else: the attention tensor format (:mod:`~.attention`), files, locks
and hashes (:mod:`~.files`), argument checks (:mod:`~.validation`, :mod:`~.arguments`) and
generated Markdown tables (:mod:`~.results_md`)."""
