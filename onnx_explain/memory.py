"""The memory budget of a gradient method: how many rows one forward+backward pass may hold.

A SmoothGrad at ``batch_size=64`` on an 800x608 page needs tens of GB; the kernel then kills the process
without a word. Here the memory one row costs is *measured* on the converted graph — the tensors autograd
saves for the backward pass of a 1-row and a 2-row forward (their difference is what a row adds; weights
are shared and cancel) — and the rows per pass are capped so that they fit the budget: a fraction of the
memory available (RAM, or the GPU's free memory) or ``max_memory``. A job that cannot fit one row is
refused with one line before anything runs. Capping ``batch_size`` never changes a result (docs/methods.md
§1.2: no result depends on the batch).
"""

from __future__ import annotations

import re

import torch

from .errors import MemoryBudgetError, OptionError

__all__ = ["available_bytes", "budget_bytes", "fit_rows", "parse_size", "row_bytes"]

#: the share of the available memory a job may plan to use when no max_memory is given
DEFAULT_FRACTION = 0.5
#: the backward pass holds gradients beside the saved activations: planned as this many times them
BACKWARD_FACTOR = 2.0
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(value) -> int | None:
    """Bytes from ``'8G'``, ``'512M'``, ``'1.5g'``, ``'2000000'`` or a number (None stays None).

    Raises
    ------
    OptionError
        Not a positive size.
    """
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        n = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)i?[bB]?\s*", str(value))
        if not m:
            raise OptionError(f"max_memory must be a size like 8G, 512M or a number of bytes, not {value!r}")
        n = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if n <= 0:
        raise OptionError(f"max_memory must be positive, not {value!r}")
    return int(n)


def available_bytes(device: str = "cpu") -> int:
    """Memory a job can still take: the GPU's free memory, else MemAvailable (Linux) or the total RAM."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def budget_bytes(max_memory=None, device: str = "cpu") -> int:
    """``max_memory`` in bytes, else :data:`DEFAULT_FRACTION` of :func:`available_bytes`."""
    given = parse_size(max_memory)
    return given if given is not None else int(DEFAULT_FRACTION * available_bytes(device))


def _saved_bytes(module, x: torch.Tensor, companions: dict) -> int:
    seen: dict = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            try:
                key = (t.untyped_storage().data_ptr(), t.device.type)
                seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
            except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, functional)
                pass
        return t

    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(xg, companions) if companions else module(xg)
    return sum(seen.values()) + out.numel() * out.element_size() + xg.numel() * xg.element_size()


def row_bytes(module, x: torch.Tensor, companions: dict | None = None) -> int:
    """Bytes one more row adds to a forward+backward of ``module`` at ``x``'s row shape (measured: the
    saved tensors of a 2-row pass minus a 1-row pass, times :data:`BACKWARD_FACTOR`)."""
    companions = companions or {}
    x1, x2 = x[:1], torch.cat([x[:1], x[:1]])
    c1 = {k: v[:1] for k, v in companions.items()}
    c2 = {k: torch.cat([v[:1], v[:1]]) for k, v in companions.items()}
    one, two = _saved_bytes(module, x1, c1), _saved_bytes(module, x2, c2)
    return int(BACKWARD_FACTOR * max(two - one, 1))


def fit_rows(per_row: int, batch_size: int, budget: int) -> tuple[int, str | None]:
    """``(rows per pass, note)``: ``batch_size`` capped to what ``budget`` holds at ``per_row`` bytes.

    Raises
    ------
    MemoryBudgetError
        Not even one row fits.
    """
    fits = budget // max(per_row, 1)
    if fits < 1:
        raise MemoryBudgetError(
            f"one row of this input needs about {_size(per_row)} for a forward and backward pass, more "
            f"than the memory budget of {_size(budget)} (max_memory / --max-memory; default half of "
            "the memory available): use a smaller input or a machine with more memory"
        )
    if fits >= batch_size:
        return batch_size, None
    return int(fits), (
        f"batch_size {batch_size} lowered to {int(fits)} rows per pass to fit the memory budget of "
        f"{_size(budget)} (about {_size(per_row)} per row)"
    )


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} bytes"
