"""The verb-number-agreement task of Abnar & Zuidema (2020, §3–4): data, model, training."""
