"""Layer-wise Relevance Propagation on converted ONNX graphs: rules as data, composites, canonization and
strict coverage (docs/methods.md §2.5)."""

from .composites import COMPOSITES, register_composite
from .graph import Assignment, LRPCoverageError, build_lrp_graph
from .rules import RULES, Rule, parse_rule

__all__ = [
    "COMPOSITES",
    "RULES",
    "Assignment",
    "LRPCoverageError",
    "Rule",
    "build_lrp_graph",
    "parse_rule",
    "register_composite",
]
