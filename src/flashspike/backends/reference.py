"""Backend 'torch': the reference. The equations of :mod:`flashspike.dynamics`, one step at a time,
differentiated by autograd. Runs on any device and dtype; every kernel backend is tested against it."""

from __future__ import annotations

import torch

from ..dynamics import charge, reset
from ..params import NeuronParams


def neuron_step(x: torch.Tensor, v, p: NeuronParams):
    """One step: (X[t], V[t−1]) -> (S[t], V[t]). ``v`` may be a tensor or a Python float."""
    h = charge(v, x, p)
    spike = p.surrogate(h - p.v_threshold)
    v_next = reset(h, spike.detach() if p.detach_reset else spike, p)
    return spike, v_next


class TorchBackend:
    name = "torch"

    def check_input(self, x_seq: torch.Tensor) -> None:
        """The reference runs on every device and floating dtype."""

    def multi_step(self, x_seq: torch.Tensor, v_init, p: NeuronParams, store_v_seq: bool):
        v = v_init
        spikes, vs = [], []
        for x in x_seq:
            spike, v = neuron_step(x, v, p)
            spikes.append(spike)
            vs.append(v)
        v_seq = torch.stack(vs) if store_v_seq else None
        return torch.stack(spikes), v, v_seq


BACKEND = TorchBackend()
