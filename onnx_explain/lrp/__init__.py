"""Layer-wise Relevance Propagation on converted ONNX graphs: rules as data, op roles registered per op
type, composites (CNN presets, AttnLRP, CP-LRP), canonization and strict coverage (docs/methods.md §2.5)."""

from .composites import COMPOSITES, ROLE_RULES, register_composite
from .graph import Assignment, LRPCoverageError, build_lrp_graph
from .roles import LRP_ROLES, Role, register_lrp_role
from .rules import RULES, RelevanceRule, Rule, parse_rule, register_rule

__all__ = [
    "COMPOSITES",
    "LRP_ROLES",
    "ROLE_RULES",
    "RULES",
    "Assignment",
    "LRPCoverageError",
    "RelevanceRule",
    "Role",
    "Rule",
    "build_lrp_graph",
    "parse_rule",
    "register_composite",
    "register_lrp_role",
    "register_rule",
]
