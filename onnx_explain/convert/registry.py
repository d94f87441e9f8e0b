"""Our additions to onnx2torch's converter registry.

onnx2torch looks converters up by ``(domain, op_type, since_version)`` in one dict. Everything this
package adds goes through :func:`converter`; it refuses duplicates loudly, like onnx2torch's own
``add_converter``. The single documented exception is ``override=True``: it *replaces* a built-in
converter that is wrong (CumSum, Clip, Reshape, LayerNormalization, BatchNormalization ...). Every
override is listed in :data:`OVERRIDDEN` so ``onnx-explain info`` and the tests can show it.

Registration happens once, when :mod:`onnx_explain.convert.ops` is imported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription

#: onnx2torch's registry as it was before this package touched it.
_BUILTIN = dict(_CONVERTER_REGISTRY)
#: (domain, op_type, version) of every converter this package added.
ADDED: set[tuple[str, str, int]] = set()
#: (domain, op_type, version) of every built-in converter this package replaced.
OVERRIDDEN: set[tuple[str, str, int]] = set()


def converter(
    op_type: str,
    versions: int | Iterable[int],
    domain: str = "",
    override: bool = False,
) -> Callable:
    """Register a converter function for ``op_type`` at each of ``versions``.

    Parameters
    ----------
    op_type : str
        ONNX op type.
    versions : int or iterable of int
        The ``since_version`` values of the op's schemas this converter handles.
    domain : str
        ONNX domain (``''`` for the default domain, ``'ai.onnx.ml'`` ...).
    override : bool
        Replace a built-in onnx2torch converter. Without it an existing key raises ``ValueError``.
    """
    versions = [versions] if isinstance(versions, int) else list(versions)

    def deco(fn: Callable) -> Callable:
        for version in versions:
            key = OperationDescription(domain=domain, operation_type=op_type, version=version)
            exists = key in _CONVERTER_REGISTRY
            ours = (domain, op_type, version) in ADDED or (domain, op_type, version) in OVERRIDDEN
            if ours:
                raise ValueError(f"onnx-explain registers a converter for {key} twice")
            if exists and not override:
                raise ValueError(f"{key} already has a converter in onnx2torch; pass override=True")
            if override and not exists:
                raise ValueError(f"override=True for {key}, which onnx2torch does not have")
            _CONVERTER_REGISTRY[key] = fn
            (OVERRIDDEN if override else ADDED).add((domain, op_type, version))
        return fn

    return deco


def builtin(op_type: str, version: int, domain: str = "") -> Callable:
    """onnx2torch's converter for exactly this key (KeyError if there is none)."""
    return _BUILTIN[OperationDescription(domain=domain, operation_type=op_type, version=version)]
