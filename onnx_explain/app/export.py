"""Export a PyTorch model (a factory ``package.module:fn`` or ``file.py:fn``, a TorchScript file or a
``torch.export`` program), a Keras model or a pickled scikit-learn estimator to ONNX, then verify the file:
onnxruntime against the source model, and the conversion back to torch with its parity check."""

from __future__ import annotations

import importlib
import importlib.util
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ..errors import ExportError, OnnxExplainError
from .io import atomic_write_bytes


def load_torch_source(spec: str):
    """A torch module from ``package.module:factory``, ``path/file.py:factory``, a TorchScript file
    (``.pt``/``.pth``/``.torchscript``) or a ``torch.export`` file (``.pt2``)."""
    import torch

    if ":" in spec and not Path(spec).exists():
        target, _, attr = spec.rpartition(":")
        try:
            if target.endswith(".py"):
                if not Path(target).is_file():
                    raise ExportError(f"{target}: file not found")
                mod_spec = importlib.util.spec_from_file_location(Path(target).stem, target)
                module = importlib.util.module_from_spec(mod_spec)
                mod_spec.loader.exec_module(module)
            else:
                module = importlib.import_module(target)
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"{spec}: cannot import {target}: {exc}") from None
        if not hasattr(module, attr):
            raise ExportError(f"{spec}: {target} has no attribute {attr!r}")
        obj = getattr(module, attr)
        model = obj() if callable(obj) and not isinstance(obj, torch.nn.Module) else obj
        if not isinstance(model, torch.nn.Module):
            raise ExportError(f"{spec}: the factory returned {type(model).__name__}, not a torch.nn.Module")
        return model.eval()
    path = Path(spec)
    if not path.is_file():
        raise ExportError(
            f"{spec}: file not found (give a file, or package.module:factory / file.py:factory)"
        )
    try:
        if path.suffix == ".pt2":
            return torch.export.load(str(path)).module()
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # noqa: BLE001
        raise ExportError(
            f"{spec}: not a TorchScript or torch.export file ({str(exc).splitlines()[0]})"
        ) from None


def _save_and_verify(proto_bytes: bytes, out: Path, reference, x: np.ndarray, rtol: float) -> dict:
    """Write atomically, then check onnxruntime against ``reference(x)`` and the torch conversion."""
    from ..model import load

    tmp = Path(tempfile.mkdtemp()) / out.name
    tmp.write_bytes(proto_bytes)
    try:
        model = load(tmp)
        got = model.predict(x)
        want = np.asarray(reference(x))
        scale = float(np.abs(want).max()) if want.size else 0.0
        err = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
        if not err <= rtol * scale or not np.isfinite(err):
            raise ExportError(
                f"{out}: onnxruntime differs from the source model by {err:.3g}, "
                f"{err / scale if scale else float('inf'):.3g} of the output's scale {scale:.3g} "
                f"(allowed: {rtol:g}); not written"
            )
        model.torch_module(probe=x)
    except OnnxExplainError as exc:
        raise ExportError(f"{out}: the exported file does not verify: {exc}") from None
    finally:
        os.unlink(tmp)
        os.rmdir(tmp.parent)
    atomic_write_bytes(out, proto_bytes)
    return {"path": str(out), "max_abs_ort_vs_source": err, "max_rel_ort_vs_source": err / scale if scale else 0.0,
            "parity": model.parity.to_dict(), "batch": len(x)}  # fmt: skip


def export_torch(source: str, out, input_shape, exporter: str = "dynamo", dynamic_batch: bool = True,
                 opset: int | None = None, rtol: float = 1e-4) -> dict:  # fmt: skip
    """Export and verify; returns a report. Nothing is written when export or verification fails."""
    import onnx
    import torch

    from ..convert.prepare import cap_ir_version

    model = load_torch_source(source)
    shape = tuple(int(v) for v in input_shape)
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    out = Path(out)
    tmp = Path(tempfile.mkdtemp()) / "model.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if exporter == "legacy":
                torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=opset or 17, input_names=["input"],
                                  output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None)  # fmt: skip
            elif exporter == "dynamo":
                dyn = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
                kw = {"opset_version": opset} if opset else {}
                torch.onnx.export(model, (example,), str(tmp), dynamo=True, input_names=["input"], output_names=["output"],
                                  dynamic_shapes=dyn, external_data=False, verbose=False, **kw)  # fmt: skip
            else:
                raise ExportError(f"exporter must be 'dynamo' or 'legacy', not {exporter!r}")
        proto = onnx.load(str(tmp))
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ExportError(
            f"{source}: torch.onnx.export ({exporter}) failed: {str(exc).splitlines()[0][:300]}"
        ) from None
    finally:
        if tmp.exists():
            os.unlink(tmp)
        os.rmdir(tmp.parent)
    cap_ir_version(proto)
    batch = 2 if dynamic_batch else shape[0]
    x = np.random.default_rng(1).standard_normal((batch, *shape[1:])).astype(np.float32)

    def reference(arr):
        with torch.no_grad():
            return model(torch.from_numpy(arr)).numpy()

    report = _save_and_verify(proto.SerializeToString(), out, reference, x, rtol)
    report.update({"source": source, "exporter": exporter, "dynamic_batch": dynamic_batch, "opset": opset})
    return report


def export_sklearn(pickle_path: str, out, rtol: float = 1e-4) -> dict:
    """A pickled scikit-learn classifier → ONNX with a probability tensor (no ZipMap); needs skl2onnx."""
    import pickle

    try:
        from skl2onnx import to_onnx
    except ImportError:
        raise ExportError(
            "exporting scikit-learn models needs the 'sklearn' extra: pip install 'onnx-explain[sklearn]'"
        ) from None
    from ..convert.prepare import cap_ir_version

    try:
        with open(pickle_path, "rb") as f:
            est = pickle.load(f)  # noqa: S301 - the user's own file, as scikit-learn documents
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"{pickle_path}: cannot unpickle: {exc}") from None
    n = getattr(est, "n_features_in_", None)
    if n is None:
        raise ExportError(f"{pickle_path}: {type(est).__name__} is not a fitted scikit-learn estimator")
    x = np.random.default_rng(1).standard_normal((4, n)).astype(np.float32)
    try:
        proto = to_onnx(
            est, x[:1], options={id(est): {"zipmap": False}} if hasattr(est, "predict_proba") else None
        )
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"{pickle_path}: skl2onnx failed: {str(exc).splitlines()[0]}") from None
    cap_ir_version(proto)
    reference = (
        est.predict_proba if hasattr(est, "predict_proba") else (lambda a: est.predict(a).reshape(len(a), -1))
    )
    report = _save_and_verify(proto.SerializeToString(), Path(out), reference, x, rtol)
    report.update({"source": pickle_path, "exporter": "skl2onnx"})
    return report


def export_keras(model_path: str, out, rtol: float = 1e-4) -> dict:
    """A Keras model (``.keras``/``.h5`` or a SavedModel folder) → ONNX; needs tensorflow and tf2onnx."""
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError:
        raise ExportError(
            "exporting Keras models needs the 'keras' extra: pip install 'onnx-explain[keras]'"
        ) from None
    from ..convert.prepare import cap_ir_version

    try:
        model = tf.keras.models.load_model(model_path)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"{model_path}: cannot load the Keras model: {str(exc).splitlines()[0]}") from None
    shape = [d if d is not None else 2 for d in model.inputs[0].shape]
    spec = (tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_function(tf.function(lambda t: model(t, training=False), input_signature=spec),
                                             input_signature=spec, opset=17)  # fmt: skip
    cap_ir_version(proto)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    report = _save_and_verify(
        proto.SerializeToString(), Path(out), lambda a: model(a, training=False).numpy(), x, rtol
    )
    report.update({"source": model_path, "exporter": "tf2onnx"})
    return report
