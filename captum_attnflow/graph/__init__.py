"""The attention graph: head fusion, residual, masks, discarding (:mod:`~captum_attnflow.graph.build`),
rollout (:mod:`~captum_attnflow.graph.rollout`) and the value-norm and ALTI contribution graphs
(:mod:`~captum_attnflow.graph.contributions`) — pure tensor functions, no hooks, no models.

The math is stated once, in :mod:`captum_attnflow.graph.build`'s docstring.
"""

from captum_attnflow.graph.build import (
    BLOCK_ELEMENTS,
    augment_residual,
    check_discard,
    contribution_graph_matrices,
    discard_lowest,
    layer_blocks,
    mean_residual_graph,
    prepare_graph,
)
from captum_attnflow.graph.contributions import (
    GRAPHS,
    ContributionGraph,
    alti_graph,
    alti_matrix,
    check_graph,
    recorded_graph,
    value_norm_graph,
    value_norm_matrix,
)
from captum_attnflow.graph.sink import without_sink
from captum_attnflow.graph.propagate import (
    COMPILED_PRODUCTS_MAX_N,
    PRODUCTS_BUFFER_MAX_ELEMENTS,
    head_graph,
)
from captum_attnflow.graph.propagate import head_rollout, raw_attention, rollout, rollout_matrices
from captum_attnflow.utils.attention import (
    HEAD_FUSIONS,
    NO_ATTENTIONS_HINT,
    ROW_SUM_TOLERANCE,
    OutputFormat,
    RowSumError,
    as_attention_stack,
    as_mask,
    attention_layers,
    check_head_fusion,
    check_index,
    fuse_heads,
    to_output,
)

__all__ = [
    "BLOCK_ELEMENTS", "COMPILED_PRODUCTS_MAX_N", "PRODUCTS_BUFFER_MAX_ELEMENTS", "HEAD_FUSIONS", "NO_ATTENTIONS_HINT", "ROW_SUM_TOLERANCE", "OutputFormat", "RowSumError",
    "GRAPHS", "ContributionGraph", "without_sink", "alti_graph", "alti_matrix", "check_graph", "recorded_graph",
    "value_norm_graph", "value_norm_matrix", "contribution_graph_matrices",
    "as_attention_stack", "as_mask", "attention_layers", "augment_residual", "check_discard", "check_head_fusion",
    "check_index", "discard_lowest", "fuse_heads", "head_graph", "head_rollout", "layer_blocks",
    "mean_residual_graph", "prepare_graph", "raw_attention", "rollout", "rollout_matrices", "to_output",
]
