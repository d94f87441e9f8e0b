"""Newer op versions whose meaning, for the types torch has, is the version onnx2torch converts.

The dynamo exporter writes opset 18-20, and opsets 21-24 only widened type lists (float8, int4,
bfloat16 ...). Each alias below names the onnx2torch version it reuses and, where the newer version
added an attribute, a check that refuses the node when the attribute is used. Versions this onnx
does not know are skipped, so the table can run ahead of the installed onnx.
"""

from __future__ import annotations

from ..registry import builtin, converter
from ._common import unsupported
from .tensor import schema_versions

#: op_type -> (onnx2torch version reused, newer versions with the same semantics)
TYPE_ONLY: dict[str, tuple[int, list[int]]] = {
    "Cast": (13, [19, 21, 23, 24, 25]),
    "Constant": (13, [19, 21, 23, 24, 25]),
    "ConstantOfShape": (9, [20, 21, 23, 24, 25]),
    "Equal": (13, [19]),
    "Identity": (16, [19, 21, 23, 24, 25]),
    "Shape": (15, [19, 21, 23, 24, 25]),
    "Squeeze": (21, [23, 24, 25]),
    "Transpose": (13, [21, 23, 24, 25]),
    "Unsqueeze": (13, [21, 23, 24, 25]),
    # opset 22 added bfloat16 to these
    "Acos": (7, [22]),
    "Asin": (7, [22]),
    "Atan": (7, [22]),
    "Cos": (7, [22]),
    "Sin": (7, [22]),
    "Tan": (7, [22]),
    "Dropout": (13, [22]),
    "Elu": (6, [22]),
    "Selu": (6, [22]),
    "EyeLike": (9, [22]),
    "GlobalAveragePool": (1, [22]),
    "HardSigmoid": (6, [22]),
    "HardSwish": (14, [22]),
    "InstanceNormalization": (6, [22]),
    "Round": (11, [22]),
    "Softplus": (1, [22]),
    "Softsign": (1, [22]),
}


def _alias(op_type: str, base_version: int, versions: list[int], check=None) -> None:
    base = builtin(op_type, base_version)

    def convert(node, graph):
        if check is not None:
            check(node)
        return base(node, graph)

    convert.__name__ = f"{op_type}_as_{base_version}"
    found = schema_versions(op_type, versions)
    if found:
        converter(op_type, found)(convert)


def _check_resize(node) -> None:
    a = node.attributes
    if a.get("antialias", 0):
        raise unsupported(node, "antialias=1")
    if "axes" in a:
        raise unsupported(node, "the axes attribute")
    if a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise unsupported(node, f"keep_aspect_ratio_policy={a['keep_aspect_ratio_policy']!r}")
    if a.get("coordinate_transformation_mode", "half_pixel") == "half_pixel_symmetric":
        raise unsupported(node, "coordinate_transformation_mode='half_pixel_symmetric'")


for _op, (_base, _versions) in TYPE_ONLY.items():
    _alias(_op, _base, _versions)
_alias("Resize", 13, [18, 19], _check_resize)
