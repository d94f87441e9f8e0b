"""One place that checks the options given to a method, metric, composite or command.

Options are keyword arguments of a registered function. A key the function does not take is a usage
error (:class:`UnknownOptionError`) that names the key, where it was given, the close match when there
is one, and every accepted key; it is never dropped silently.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable

from .errors import UnknownOptionError

__all__ = [
    "UnknownOptionError",
    "accepted_options",
    "check_options",
    "option_defaults",
    "route_options",
    "unknown_option",
    "validate_call",
]


def accepted_options(fn: Callable, skip: Iterable[str] = ()) -> tuple[list[str], bool]:
    """``(names, open)``: the keyword options of ``fn`` in signature order, leaving out ``skip`` (the
    positional inputs such as ``scorer, x, target``), and whether it also takes ``**kwargs``."""
    skip = set(skip)
    names, open_ = [], False
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            open_ = True
        elif p.kind is not p.VAR_POSITIONAL and p.name not in skip:
            names.append(p.name)
    return names, open_


def option_defaults(fn: Callable, skip: Iterable[str] = ()) -> dict:
    """The options of ``fn`` that have a default, with it."""
    skip = set(skip)
    return {
        k: p.default
        for k, p in inspect.signature(fn).parameters.items()
        if p.default is not p.empty and k not in skip
    }


def unknown_option(key: str, accepted: Iterable[str], where: str) -> UnknownOptionError:
    """The error for one key: ``unknown option 'sigmaa' for method 'smoothgrad' (did you mean 'sigma'?);
    accepted: ...``."""
    accepted = list(accepted)
    close = difflib.get_close_matches(key, accepted, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listing = ", ".join(accepted) if accepted else "none"
    return UnknownOptionError(f"unknown option {key!r} for {where}{hint}; accepted: {listing}")


def check_options(given: Iterable[str], accepted: Iterable[str], where: str) -> None:
    """Raise :class:`UnknownOptionError` for the first key of ``given`` not in ``accepted`` (keys in
    the order given). ``where`` names the owner: ``"method 'smoothgrad'"``, ``"composite 'epsilon_plus'"``."""
    accepted = list(accepted)
    allowed = set(accepted)
    for key in given:
        if key not in allowed:
            raise unknown_option(key, accepted, where)


def validate_call(fn: Callable, given: dict, where: str, skip: Iterable[str] = ()) -> dict:
    """Check ``given`` against the keyword options of ``fn`` (a function with ``**kwargs`` takes any key)
    and return them; for registries whose entries are plain functions (composites, rules)."""
    names, open_ = accepted_options(fn, skip)
    if not open_:
        check_options(given, names, where)
    return dict(given)


def route_options(options: dict, accepted: dict[str, Iterable[str]], what: str = "metric") -> dict[str, dict]:
    """Share one set of options among several owners (the metrics of one ``evaluate`` run).

    A key ``name.key`` goes to the owner ``name`` only; a plain key goes to every owner that takes it.
    A key that no owner takes (or that its named owner does not take) is an
    :class:`UnknownOptionError`: a mistyped option is never dropped.

    Returns
    -------
    dict
        owner -> its options.
    """
    accepted = {name: list(keys) for name, keys in accepted.items()}
    out: dict[str, dict] = {name: {} for name in accepted}
    for key, value in options.items():
        owner, dot, sub = key.partition(".")
        if dot and owner in accepted:
            check_options([sub], accepted[owner], f"{what} {owner!r}")
            out[owner][sub] = value
            continue
        takers = [name for name, keys in accepted.items() if key in keys]
        if not takers:
            every = sorted({k for keys in accepted.values() for k in keys})
            names = ", ".join(map(repr, accepted)) or "(none)"
            raise unknown_option(key, every, f"{what}s {names}" if len(accepted) != 1 else f"{what} {names}")
        for name in takers:
            out[name][key] = value
    return out
