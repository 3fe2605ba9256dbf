"""Backend 'torch': the reference. The equations of :mod:`flashspike.dynamics`, one step at a time,
differentiated by autograd. Runs on any device and dtype; every kernel backend is tested against it.

float16 and bfloat16 sequences are computed with a float32 state, as the kernels do, and their
outputs rounded to the input's dtype: a potential that outgrows float16's range (65504) midway would
otherwise turn into inf and NaN gradients.
"""

from __future__ import annotations

import torch

from ..dynamics import charge, reset
from ..params import NeuronParams

_SIXTEEN_BIT = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the state is computed in for inputs of ``dtype``: float32 for 16-bit ones."""
    return torch.float32 if dtype in _SIXTEEN_BIT else dtype


def decay_of(w: torch.Tensor | None, p: NeuronParams, dtype: torch.dtype):
    """PLIF's decay k = sigmoid(w) in ``dtype`` (None for every other neuron)."""
    if not p.parametric:
        return None
    if not isinstance(w, torch.Tensor):
        raise ValueError("a parametric (PLIF) neuron needs its learnable w (a tensor), got None")
    return torch.sigmoid(w.to(dtype))


def neuron_step(x: torch.Tensor, v, p: NeuronParams, decay=None):
    """One step: (X[t], V[t−1]) -> (S[t], V[t]). ``v`` may be a tensor or a Python float; ``decay``
    is PLIF's k = sigmoid(w)."""
    return _step(x, v, p, decay)[1:]


def _step(x: torch.Tensor, v, p: NeuronParams, decay=None):
    """One step: (X[t], V[t−1]) -> (H[t], S[t], V[t])."""
    if p.exponential and not isinstance(v, torch.Tensor):
        v = torch.full_like(x, v)  # EIF's charge takes exp(V): a tensor, not a Python float
    h = charge(v, x, p, decay=decay)
    return (h, *fire_and_reset(h, p))


def fire_and_reset(h: torch.Tensor, p: NeuronParams):
    """H[t] -> (S[t], V[t])."""
    spike = p.surrogate(h - p.v_threshold)
    return spike, reset(h, spike.detach() if p.detach_reset else spike, p)


class TorchBackend:
    name = "torch"

    def check_input(self, x_seq: torch.Tensor) -> None:
        """The reference runs on every device and floating dtype."""

    def multi_step(self, x_seq: torch.Tensor, v_init, p: NeuronParams, store_v_seq: bool, w=None, hs=None):
        """The backends' contract; ``hs``, a list, receives H[t] of every step (the tensors the
        autograd graph may keep, see :mod:`.rebuilt_v_seq`)."""
        wide = compute_dtype(x_seq.dtype)
        decay = decay_of(w, p, wide)
        v = v_init.to(wide) if isinstance(v_init, torch.Tensor) else v_init
        spikes, vs = [], []
        for x in x_seq:
            h, spike, v = _step(x.to(wide), v, p, decay)
            spikes.append(spike)
            vs.append(v)
            if hs is not None:
                hs.append(h)
        spike_seq = torch.stack(spikes).to(x_seq.dtype)
        v_seq = torch.stack(vs).to(x_seq.dtype) if store_v_seq else None
        return spike_seq, v.to(x_seq.dtype), v_seq


BACKEND = TorchBackend()
