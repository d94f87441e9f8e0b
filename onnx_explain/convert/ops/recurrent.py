"""Recurrent ops: ONNX LSTM, GRU and RNN (opsets 7, 14, 22) as differentiable torch modules.

onnx2torch 1.5.15 has no converter for any of them. Every attribute that changes results is handled by
one explicit cell loop over time (autograd flows through it to ``X`` and to computed weights):

- ``direction`` forward / reverse / bidirectional; ``layout`` 0 (time-major) and 1 (batch-major);
- optional ``B``, ``sequence_lens``, ``initial_h``, ``initial_c`` and LSTM peepholes ``P``;
- ``sequence_lens``: each sequence runs over its own length (the reverse direction starts at its last
  valid step), ``Y`` is zero past the length and ``Y_h``/``Y_c`` hold the state of the last valid step;
- ``clip`` bounds every gate pre-activation to ``[-clip, clip]`` (as onnxruntime does);
- ``activations`` with ``activation_alpha``/``activation_beta``: the values are consumed in order, only by
  the functions that take them (onnxruntime's rule), defaults as the corresponding ONNX ops;
- GRU ``linear_before_reset``; LSTM ``input_forget`` (forget gate ``1 - i``, as onnxruntime computes it);
- any subset of the outputs ``Y``, ``Y_h``, ``Y_c``.

Gate orders are ONNX's: LSTM ``W``/``R``/``B`` rows are i, o, f, c; ``P`` is i, o, f; GRU is z, r, h.
The input and recurrent products go through two hooks (``_input_gemm``, ``_recurrent_gemm``) that
``com.microsoft.DynamicQuantizeLSTM`` (in :mod:`.quant`) replaces with its quantized GEMMs.

Also ``ReverseSequence`` (opset 10), which tf2onnx writes for Keras' backward recurrent layers (Keras LSTMs
become one ONNX ``LSTM`` node, Keras 3 GRUs a ``Loop`` over the cell: both convert).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import converter
from ._common import result, unsupported
from .tensor import schema_versions

#: activation (lower-case) -> (number of alphas it reads, number of betas, default alpha, default beta)
_ACTIVATION_ARGS = {
    "sigmoid": (0, 0, 0.0, 0.0),
    "tanh": (0, 0, 0.0, 0.0),
    "relu": (0, 0, 0.0, 0.0),
    "affine": (1, 1, 1.0, 0.0),
    "leakyrelu": (1, 0, 0.01, 0.0),
    "thresholdedrelu": (1, 0, 1.0, 0.0),
    "scaledtanh": (1, 1, 1.0, 1.0),
    "hardsigmoid": (1, 1, 0.2, 0.5),
    "elu": (1, 0, 1.0, 0.0),
    "softsign": (0, 0, 0.0, 0.0),
    "softplus": (0, 0, 0.0, 0.0),
}
_DEFAULT_ACTIVATIONS = {
    "LSTM": ("Sigmoid", "Tanh", "Tanh"),
    "GRU": ("Sigmoid", "Tanh"),
    "RNN": ("Tanh",),
}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def activate(name: str, alpha: float, beta: float, x: torch.Tensor) -> torch.Tensor:
    """The ONNX RNN activation ``name`` (lower-case) applied to ``x``."""
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "tanh":
        return torch.tanh(x)
    if name == "relu":
        return torch.relu(x)
    if name == "affine":
        return alpha * x + beta
    if name == "leakyrelu":
        return torch.where(x >= 0, x, alpha * x)
    if name == "thresholdedrelu":
        return torch.where(x > alpha, x, torch.zeros_like(x))
    if name == "scaledtanh":
        return alpha * torch.tanh(beta * x)
    if name == "hardsigmoid":
        return torch.clamp(alpha * x + beta, 0.0, 1.0)
    if name == "elu":
        return torch.where(x >= 0, x, alpha * torch.expm1(x))
    if name == "softsign":
        return x / (1 + x.abs())
    if name == "softplus":
        return F.softplus(x)
    raise ValueError(f"unknown activation {name!r}")


def parse_activations(op: str, attrs, n_dirs: int) -> list[tuple[tuple[str, float, float], ...]]:
    """Per direction, the activations as ``(name, alpha, beta)``; ValueError on unknown names or counts."""
    per_dir = len(_DEFAULT_ACTIVATIONS[op])
    names = list(attrs.get("activations", []) or [])
    if not names:
        names = list(_DEFAULT_ACTIVATIONS[op]) * n_dirs
    if len(names) != per_dir * n_dirs:
        raise ValueError(
            f"activations has {len(names)} entries, {op} with {n_dirs} direction(s) needs {per_dir * n_dirs}"
        )
    alphas = list(attrs.get("activation_alpha", []) or [])
    betas = list(attrs.get("activation_beta", []) or [])
    parsed = []
    for name in names:
        key = name.lower()
        if key not in _ACTIVATION_ARGS:
            raise ValueError(f"activation {name!r}")
        n_alpha, n_beta, alpha, beta = _ACTIVATION_ARGS[key]
        if n_alpha and alphas:
            alpha = float(alphas.pop(0))
        if n_beta and betas:
            beta = float(betas.pop(0))
        parsed.append((key, alpha, beta))
    return [tuple(parsed[d * per_dir : (d + 1) * per_dir]) for d in range(n_dirs)]


class OnnxRecurrent(nn.Module):
    """ONNX LSTM / GRU / RNN as an explicit, differentiable loop over time.

    Parameters
    ----------
    op : str
        ``'LSTM'``, ``'GRU'`` or ``'RNN'``.
    direction : str
        ``'forward'``, ``'reverse'`` or ``'bidirectional'``.
    layout : int
        0: ``X`` is ``[seq, batch, input]``; 1: ``[batch, seq, input]`` (states and outputs likewise).
    activations : list of tuples
        Per direction, ``(name, alpha, beta)`` of each activation (f, g[, h]).
    clip : float or None
        Bound on every gate pre-activation.
    linear_before_reset : bool
        GRU: apply the reset gate after the recurrent linear map.
    input_forget : bool
        LSTM: couple the forget gate to the input gate (``f = 1 - i``).
    n_outputs : int
        How many of ``Y, Y_h, Y_c`` the node declares (a single output is returned bare).
    """

    def __init__(
        self,
        op: str,
        direction: str = "forward",
        layout: int = 0,
        activations=None,
        clip: float | None = None,
        linear_before_reset: bool = False,
        input_forget: bool = False,
        n_outputs: int = 1,
    ):
        super().__init__()
        self.op = op
        self.direction = direction
        self.layout = int(layout)
        n_dirs = 2 if direction == "bidirectional" else 1
        self.activations = activations or parse_activations(op, {}, n_dirs)
        self.clip = clip
        self.linear_before_reset = bool(linear_before_reset)
        self.input_forget = bool(input_forget)
        self.n_outputs = n_outputs

    def extra_repr(self) -> str:
        return (
            f"{self.op}, direction={self.direction}, layout={self.layout}, clip={self.clip}, "
            f"activations={[a[0] for d in self.activations for a in d]}"
        )

    # --- one direction ---------------------------------------------------------------------------
    def _input_gemm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``x @ W^T`` for every time step at once (``x`` [T, B, I], ``w`` [G*H, I]); a hook for the
        quantized LSTM, which quantizes ``x`` first."""
        return torch.matmul(x, w.transpose(0, 1))

    def _recurrent_gemm(self, h: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """``h @ R^T`` of one LSTM step (``h`` [B, H], ``r`` [4*H, H]); a hook like :meth:`_input_gemm`."""
        return torch.matmul(h, r.transpose(0, 1))

    def _pre(self, v: torch.Tensor) -> torch.Tensor:
        return v if self.clip is None else torch.clamp(v, -self.clip, self.clip)

    def _act(self, acts, k: int, v: torch.Tensor) -> torch.Tensor:
        name, alpha, beta = acts[k]
        return activate(name, alpha, beta, self._pre(v))

    def _run(self, x, w, r, b, p, h, c, lens, reverse: bool, acts):
        """One direction over time-major ``x`` [T, B, I]; returns (Y [T, B, H], h, c)."""
        steps, batch = x.shape[0], x.shape[1]
        hidden = r.shape[-1]
        xw = self._input_gemm(x, w)  # [T, B, G*H]
        rb = None
        if b is not None:
            half = b.shape[0] // 2
            xw = xw + b[:half]
            rb = b[half:]
        index = mask = None
        if lens is not None:
            t = torch.arange(steps, device=x.device)[:, None]  # [T, 1]
            lens = lens.to(device=x.device, dtype=torch.long)[None, :]  # [1, B]
            mask = t < lens  # [T, B]
            if reverse:
                index = torch.where(mask, lens - 1 - t, t.expand(steps, batch))
                xw = xw.gather(0, index[:, :, None].expand_as(xw))
        elif reverse:
            xw = xw.flip(0)
        outs = []
        for step in range(steps):
            h_new, c_new = self._cell(xw[step], r, rb, p, h, c, acts, hidden)
            if mask is None:
                h, c = h_new, c_new
                outs.append(h_new)
            else:
                m = mask[step][:, None]
                h = torch.where(m, h_new, h)
                if c is not None:
                    c = torch.where(m, c_new, c)
                outs.append(torch.where(m, h_new, torch.zeros_like(h_new)))
        y = torch.stack(outs, 0) if outs else x.new_zeros(0, batch, hidden)
        if index is not None:
            y = y.gather(0, index[:, :, None].expand_as(y))
        elif reverse:
            y = y.flip(0)
        return y, h, c

    def _cell(self, xw, r, rb, p, h, c, acts, hidden):
        """One time step: ``xw`` is the input's linear map (with ``Wb``) for every gate."""
        if self.op == "RNN":
            hr = torch.matmul(h, r.transpose(0, 1))
            if rb is not None:
                hr = hr + rb
            return self._act(acts, 0, xw + hr), None
        if self.op == "GRU":
            xz, xr, xh = xw.split(hidden, -1)
            rz, rr, rh = r.split(hidden, 0)
            bz, br, bh = rb.split(hidden, 0) if rb is not None else (None, None, None)
            hz = torch.matmul(h, rz.transpose(0, 1))
            hrr = torch.matmul(h, rr.transpose(0, 1))
            if rb is not None:
                hz, hrr = hz + bz, hrr + br
            z = self._act(acts, 0, xz + hz)
            reset = self._act(acts, 0, xr + hrr)
            if self.linear_before_reset:
                hh = torch.matmul(h, rh.transpose(0, 1))
                if bh is not None:
                    hh = hh + bh
                cand = xh + reset * hh
            else:
                cand = xh + torch.matmul(reset * h, rh.transpose(0, 1))
                if bh is not None:
                    cand = cand + bh
            cand = self._act(acts, 1, cand)
            return (1 - z) * cand + z * h, None
        # LSTM: gates i, o, f, c
        gates = xw + self._recurrent_gemm(h, r)
        if rb is not None:
            gates = gates + rb
        gi, go, gf, gc = gates.split(hidden, -1)
        pi, po, pf = p.split(hidden, 0) if p is not None else (None, None, None)
        if pi is not None:
            gi = gi + pi * c
        i = self._act(acts, 0, gi)
        if self.input_forget:
            f = 1 - i
        else:
            if pf is not None:
                gf = gf + pf * c
            f = self._act(acts, 0, gf)
        c_new = f * c + i * self._act(acts, 1, gc)
        if po is not None:
            go = go + po * c_new
        o = self._act(acts, 0, go)
        name, alpha, beta = acts[2]
        return o * activate(name, alpha, beta, c_new), c_new

    # --- all directions ----------------------------------------------------------------------------
    def _forward(self, x, w, r, b, lens, h0, c0, p):
        if self.layout == 1:
            x = x.transpose(0, 1)
            h0 = None if h0 is None else h0.transpose(0, 1)
            c0 = None if c0 is None else c0.transpose(0, 1)
        batch, hidden = x.shape[1], r.shape[-1]
        dirs = [False, True] if self.direction == "bidirectional" else [self.direction == "reverse"]
        ys, hs, cs = [], [], []
        for d, reverse in enumerate(dirs):
            h = h0[d] if h0 is not None else x.new_zeros(batch, hidden)
            c = None
            if self.op == "LSTM":
                c = c0[d] if c0 is not None else x.new_zeros(batch, hidden)
            y, h, c = self._run(
                x, w[d], r[d], None if b is None else b[d], None if p is None else p[d], h, c, lens,
                reverse, self.activations[d],
            )  # fmt: skip
            ys.append(y)
            hs.append(h)
            cs.append(c)
        y = torch.stack(ys, 1)  # [T, D, B, H]
        y_h = torch.stack(hs, 0)  # [D, B, H]
        y_c = torch.stack(cs, 0) if self.op == "LSTM" else None
        if self.layout == 1:
            y = y.permute(2, 0, 1, 3)
            y_h = y_h.transpose(0, 1)
            y_c = None if y_c is None else y_c.transpose(0, 1)
        outs = (y, y_h, y_c)[: self.n_outputs]
        return outs[0] if self.n_outputs == 1 else outs


class OnnxLSTM(OnnxRecurrent):
    """ONNX LSTM (inputs X, W, R, B, sequence_lens, initial_h, initial_c, P)."""

    def forward(self, X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None):  # noqa: N803
        return self._forward(X, W, R, B, sequence_lens, initial_h, initial_c, P)


class OnnxGRU(OnnxRecurrent):
    """ONNX GRU (inputs X, W, R, B, sequence_lens, initial_h)."""

    def forward(self, X, W, R, B=None, sequence_lens=None, initial_h=None):  # noqa: N803
        return self._forward(X, W, R, B, sequence_lens, initial_h, None, None)


class OnnxRNN(OnnxRecurrent):
    """ONNX RNN (inputs X, W, R, B, sequence_lens, initial_h)."""

    def forward(self, X, W, R, B=None, sequence_lens=None, initial_h=None):  # noqa: N803
        return self._forward(X, W, R, B, sequence_lens, initial_h, None, None)


_MODULES = {"LSTM": OnnxLSTM, "GRU": OnnxGRU, "RNN": OnnxRNN}


def _recurrent(node, graph):
    op, a = node.operation_type, node.attributes
    direction = a.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise unsupported(node, f"direction={direction!r}")
    layout = a.get("layout", 0)
    if layout not in (0, 1):
        raise unsupported(node, f"layout={layout}")
    try:
        acts = parse_activations(op, a, 2 if direction == "bidirectional" else 1)
    except ValueError as exc:
        raise unsupported(node, str(exc)) from None
    clip = a.get("clip")
    module = _MODULES[op](
        op, direction, layout, acts, None if clip is None else float(clip),
        linear_before_reset=a.get("linear_before_reset", 0), input_forget=a.get("input_forget", 0),
        n_outputs=max(len(node.output_values), 1),
    )  # fmt: skip
    return result(module, node)


for _op in ("LSTM", "GRU", "RNN"):
    converter(_op, schema_versions(_op, [7, 14, 22]))(_recurrent)


class OnnxReverseSequence(nn.Module):
    """ONNX ReverseSequence: per batch element ``b``, the first ``sequence_lens[b]`` steps along
    ``time_axis`` reversed and the rest kept (tf2onnx writes it for Keras' backward recurrent layers)."""

    def __init__(self, batch_axis: int = 1, time_axis: int = 0):
        super().__init__()
        self.batch_axis = int(batch_axis)
        self.time_axis = int(time_axis)

    def forward(self, x: torch.Tensor, sequence_lens: torch.Tensor) -> torch.Tensor:
        steps = x.shape[self.time_axis]
        t = torch.arange(steps, device=x.device)[:, None]  # [T, 1]
        lens = sequence_lens.to(device=x.device, dtype=torch.long)[None, :]  # [1, B]
        index = torch.where(t < lens, lens - 1 - t, t)  # [T, B]
        if self.time_axis == 1:  # batch-major
            index = index.transpose(0, 1)
        index = index.reshape(tuple(index.shape) + (1,) * (x.dim() - 2)).expand_as(x)
        return x.gather(self.time_axis, index)

    def extra_repr(self) -> str:
        return f"batch_axis={self.batch_axis}, time_axis={self.time_axis}"


@converter("ReverseSequence", 10)
def _reverse_sequence(node, graph):
    a = node.attributes
    batch_axis, time_axis = a.get("batch_axis", 1), a.get("time_axis", 0)
    if {batch_axis, time_axis} != {0, 1}:
        raise unsupported(
            node, f"batch_axis={batch_axis}, time_axis={time_axis} (one must be 0, the other 1)"
        )
    return result(OnnxReverseSequence(batch_axis, time_axis), node)
