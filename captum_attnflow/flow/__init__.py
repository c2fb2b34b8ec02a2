"""Attention flow (Abnar & Zuidema 2020, §3): max-flow through the layered attention graph.

:mod:`~captum_attnflow.flow.api` is the functional API (:func:`attention_flow`, :func:`head_flow`);
:mod:`~captum_attnflow.flow.bounds` bounded flow (``tol=``); :mod:`~captum_attnflow.flow.cost` the
cost guard; :mod:`~captum_attnflow.flow.maxflow` the solvers (``"fast"``, ``"scipy"``,
``"networkx"``), the fast one compiled in :mod:`~captum_attnflow.flow.dinic`,
:mod:`~captum_attnflow.flow.arcs` and :mod:`~captum_attnflow.flow.storage`.
"""

from captum_attnflow.flow.api import attention_flow, flow_layers, flow_rows, head_flow
from captum_attnflow.flow.bounds import BoundedFlow, check_tol, normalised_bounds, tol_floor
from captum_attnflow.flow.cost import COST_WARNING_SECONDS, FlowCostWarning, estimate_seconds
from captum_attnflow.flow.maxflow import SOLVERS

__all__ = [
    "BoundedFlow", "COST_WARNING_SECONDS", "FlowCostWarning", "SOLVERS", "attention_flow", "check_tol",
    "estimate_seconds", "flow_layers", "flow_rows", "head_flow", "normalised_bounds", "tol_floor",
]
