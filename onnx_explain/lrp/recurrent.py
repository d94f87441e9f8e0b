"""LRP for ONNX LSTM, GRU and RNN nodes (Arras et al. 2017, 2019): signal-take-all.

The gates (LSTM i, f, o; GRU z, r) are held constant, so a gated product gives all its relevance to the
signal; the signal's squashing (tanh of the candidate and of the cell state) passes relevance unchanged
(the identity rule); sums (``c_t = f⊙c_{t−1} + i⊙g``, GRU's ``(1−z)⊙h̃ + z⊙h``) split it in proportion and
linear maps share it as LRP-0 (biases absorb their part). All of this is the gradient × input of the cell
loop with those patches, so the rule is the Norm share of a surrogate of the converted module
(:class:`onnx_explain.convert.ops.recurrent.OnnxRecurrent`) whose cell step is patched; the converter
itself is not touched.
"""

from __future__ import annotations

import copy

import torch


def _identity(pre: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` in value; in the backward pass the identity rule ``R_pre = R_out`` (gradient ``out/pre``)."""
    ratio = torch.where(pre != 0, out / torch.where(pre != 0, pre, 1.0), 0.0).detach()
    return out.detach() + (pre - pre.detach()) * ratio


def _cell(self, xw, r, rb, p, h, c, acts, hidden):
    """One time step of :meth:`OnnxRecurrent._cell`, with the gates detached and identity on the signal."""
    from ..convert.ops.recurrent import activate

    if self.op == "RNN":
        pre = xw + torch.matmul(h, r.transpose(0, 1)) + (rb if rb is not None else 0)
        return _identity(pre, self._act(acts, 0, pre)), None
    if self.op == "GRU":
        xz, xr, xh = xw.split(hidden, -1)
        rz, rr, rh = r.split(hidden, 0)
        bz, br, bh = rb.split(hidden, 0) if rb is not None else (None, None, None)
        hz = torch.matmul(h, rz.transpose(0, 1))
        hrr = torch.matmul(h, rr.transpose(0, 1))
        if rb is not None:
            hz, hrr = hz + bz, hrr + br
        z = self._act(acts, 0, xz + hz).detach()
        reset = self._act(acts, 0, xr + hrr).detach()
        if self.linear_before_reset:
            hh = torch.matmul(h, rh.transpose(0, 1))
            if bh is not None:
                hh = hh + bh
            pre = xh + reset * hh
        else:
            pre = xh + torch.matmul(reset * h, rh.transpose(0, 1))
            if bh is not None:
                pre = pre + bh
        cand = _identity(pre, self._act(acts, 1, pre))
        return (1 - z) * cand + z * h, None
    gates = xw + self._recurrent_gemm(h, r)  # LSTM: i, o, f, c (DynamicQuantizeLSTM: h quantized)
    if rb is not None:
        gates = gates + rb
    gi, go, gf, gc = gates.split(hidden, -1)
    pi, po, pf = p.split(hidden, 0) if p is not None else (None, None, None)
    if pi is not None:
        gi = gi + pi * c
    i = self._act(acts, 0, gi).detach()
    if self.input_forget:
        f = 1 - i
    else:
        if pf is not None:
            gf = gf + pf * c
        f = self._act(acts, 0, gf).detach()
    c_new = f * c + i * _identity(gc, self._act(acts, 1, gc))
    if po is not None:
        go = go + po * c_new
    o = self._act(acts, 0, go).detach()
    name, alpha, beta = acts[2]
    return o * _identity(c_new, activate(name, alpha, beta, c_new)), c_new


_PATCHED: dict[type, type] = {}


def signal_take_all_surrogate(module: torch.nn.Module) -> torch.nn.Module:
    """A shallow copy of a converted LSTM/GRU/RNN module whose cell step is patched for LRP."""
    cls = type(module)
    if cls not in _PATCHED:
        _PATCHED[cls] = type(f"LRP{cls.__name__}", (cls,), {"_cell": _cell})
    surrogate = copy.copy(module)
    surrogate.__class__ = _PATCHED[cls]
    return surrogate
