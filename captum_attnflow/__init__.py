"""captum-attnflow: attention rollout and attention flow (Abnar & Zuidema, ACL 2020) for Captum."""

from captum_attnflow.attr import (
    AttentionFlow,
    AttentionRollout,
    GradientWeightedRollout,
    LLMAttentionAttribution,
    LLMAttentionResult,
    LLMKeyAblation,
    RawAttention,
    patch_grid,
)
from captum_attnflow.capture import AttentionRecorder
from captum_attnflow.flow import BoundedFlow, FlowCostWarning, attention_flow, head_flow
from captum_attnflow.graph import ContributionGraph, alti_graph, head_rollout, raw_attention, rollout, value_norm_graph

__version__ = "0.1.0"

__all__ = [
    "AttentionFlow",
    "AttentionRecorder",
    "AttentionRollout",
    "BoundedFlow",
    "ContributionGraph",
    "FlowCostWarning",
    "GradientWeightedRollout",
    "LLMAttentionAttribution",
    "LLMAttentionResult",
    "LLMKeyAblation",
    "RawAttention",
    "patch_grid",
    "alti_graph",
    "attention_flow",
    "head_flow",
    "head_rollout",
    "raw_attention",
    "rollout",
    "value_norm_graph",
    "__version__",
]
