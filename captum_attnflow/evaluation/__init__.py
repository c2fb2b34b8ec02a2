"""Faithfulness evaluation of explanation methods at dataset scale.

:func:`evaluate` scores raw attention, rollout, flow and any Captum attribution on every example
of a dataset against blank-out and input gradients (Spearman's ρ, per layer for attention
methods) and by AOPC comprehensiveness / sufficiency, on one machine or any
``concurrent.futures.Executor`` (a local process pool, a Dask cluster), streaming per-example
results to disk so that an interrupted run resumes.
"""

from captum_attnflow.evaluation.methods import METHODS, AttentionMethod, CaptumMethod, FlowMethod
from captum_attnflow.evaluation.models import Classifier, HFClassifier
from captum_attnflow.evaluation.results import ResultTable, read_examples
from captum_attnflow.evaluation.executors import SerialExecutor, process_pool
from captum_attnflow.evaluation.runner import Evaluation, evaluate

__all__ = [
    "METHODS", "AttentionMethod", "CaptumMethod", "Classifier", "Evaluation", "FlowMethod",
    "HFClassifier", "ResultTable", "SerialExecutor", "evaluate", "process_pool", "read_examples",
]
