"""onnxruntime sessions: provider choice, thread settings, chunked batched runs.

The CUDA provider is used only when it can load. onnxruntime-gpu lists ``CUDAExecutionProvider`` as
available even on machines without a GPU and then logs a page of errors when a session asks for it, so we
first ask the CUDA driver itself whether a device exists (a ``ctypes`` call, no torch import).
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable

import numpy as np

__all__ = ["cuda_device_count", "make_session", "run_chunked", "select_providers"]


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports; 0 when no driver or no device (never raises)."""
    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(lib)
        except OSError:
            continue
        try:
            if cuda.cuInit(0) != 0:
                return 0
            count = ctypes.c_int(0)
            if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return 0
            return int(count.value)
        except AttributeError:
            return 0
    return 0


def select_providers(device: str = "auto") -> list[str]:
    """Execution providers for ``device`` in ``{'auto', 'cpu', 'cuda'}``.

    ``auto`` takes CUDA only when onnxruntime offers it *and* a CUDA device exists; ``cuda`` asks for it
    and lets :func:`make_session` report when it cannot load.
    """
    import onnxruntime as ort

    from .errors import DeviceError

    if device not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"device must be 'auto', 'cpu' or 'cuda', not {device!r}")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    has_cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and (not has_cuda_ep or cuda_device_count() == 0):
        why = "this onnxruntime has no CUDA provider" if not has_cuda_ep else "no CUDA device was found"
        raise DeviceError(f"device 'cuda' was asked for, but {why}")
    if device == "cuda" or (has_cuda_ep and cuda_device_count() > 0):
        if has_cuda_ep and hasattr(ort, "preload_dlls"):
            try:  # CUDA/cuDNN from the nvidia-* wheels, when torch has not loaded them already
                ort.preload_dlls(directory="")
            except Exception:  # noqa: BLE001 - best effort; the session creation below decides
                pass
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def make_session(model: str | bytes, device: str = "auto", threads: int | None = None, quiet: bool = False):
    """Create an ``InferenceSession`` on the best provider that loads.

    Parameters
    ----------
    model : str or bytes
        Path of the ONNX file (external data is resolved next to it) or serialized model bytes.
    device : {'auto', 'cpu', 'cuda'}
        Where to run. With ``'cuda'`` and no loadable CUDA provider a ``DeviceError`` is raised.
    threads : int, optional
        Intra-op threads; default: onnxruntime's choice (all physical cores), or ``ONNX_EXPLAIN_THREADS``.
    quiet : bool
        Log nothing, not even failing kernels (for probing runs whose failure is an expected answer).

    Returns
    -------
    onnxruntime.InferenceSession
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4 if quiet else 3  # errors only: no provider-fallback warnings on CPU
    threads = threads or int(os.environ.get("ONNX_EXPLAIN_THREADS", "0"))
    if threads:
        opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = select_providers(device)
    session = ort.InferenceSession(model, sess_options=opts, providers=providers)
    if device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        from .errors import DeviceError

        raise DeviceError("device 'cuda' was asked for, but onnxruntime's CUDA provider did not load")
    return session


def run_chunked(
    fn: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    batch_size: int,
    fixed_batch: int | None = None,
) -> np.ndarray:
    """Apply ``fn`` to ``x`` in chunks of ``batch_size`` rows and concatenate.

    With ``fixed_batch`` (a model whose batch dimension is baked in), chunks are exactly that size; the
    last one is padded by repeating its final row and the padding is dropped from the result.
    """
    n = x.shape[0]
    if n == 0:
        raise ValueError("empty batch")
    step = fixed_batch or max(1, int(batch_size))  # a baked-in batch size cannot be exceeded
    outs: list[np.ndarray] = []
    for start in range(0, n, step):
        chunk = x[start : start + step]
        real = chunk.shape[0]
        if fixed_batch and real < fixed_batch:
            pad = np.repeat(chunk[-1:], fixed_batch - real, axis=0)
            chunk = np.concatenate([chunk, pad], axis=0)
        outs.append(np.asarray(fn(chunk))[:real])
    return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)
