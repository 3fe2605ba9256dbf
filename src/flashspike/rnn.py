"""Spiking recurrent layers: LSTM, GRU and vanilla RNN cells whose gates are spikes.

A gate is a surrogate function of its pre-activation: Heaviside forward and the surrogate's
derivative backward (or the smooth function itself with ``spiking=False``). Sequences are
``[T, N, input_size]``; outputs ``[T, N, hidden_size × directions]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import surrogate

__all__ = ["SpikingRNNCellBase", "SpikingRNNBase", "SpikingLSTMCell", "SpikingLSTM", "SpikingGRUCell",
           "SpikingGRU", "SpikingVanillaRNNCell", "SpikingVanillaRNN"]


def _default_surrogate() -> nn.Module:
    # SpikingJelly's default gate is Erf (alpha=2).
    return surrogate.Erf()


def _check_same_mode(first: nn.Module, second: nn.Module | None) -> None:
    if second is not None and first.spiking != second.spiking:
        raise ValueError("surrogate_function1 and surrogate_function2 must both be spiking or both not "
                         f"(got spiking={first.spiking} and spiking={second.spiking})")


class SpikingRNNCellBase(nn.Module):
    """One step of a spiking recurrent cell: ``linear_ih`` on the input, ``linear_hh`` on the state."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias

    def reset_parameters(self) -> None:
        """Every parameter uniform in [−1/√hidden_size, 1/√hidden_size], as ``nn.LSTM``."""
        bound = math.sqrt(1 / self.hidden_size)
        for param in self.parameters():
            nn.init.uniform_(param, -bound, bound)

    def weight_ih(self) -> torch.Tensor:
        return self.linear_ih.weight

    def weight_hh(self) -> torch.Tensor:
        return self.linear_hh.weight

    def bias_ih(self) -> torch.Tensor:
        return self.linear_ih.bias

    def bias_hh(self) -> torch.Tensor:
        return self.linear_hh.bias

    def _zeros(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.hidden_size)

    def _gate_linears(self, input_size: int, hidden_size: int, gates: int, bias: bool) -> None:
        self.linear_ih = nn.Linear(input_size, gates * hidden_size, bias=bias)
        self.linear_hh = nn.Linear(hidden_size, gates * hidden_size, bias=bias)
        self.reset_parameters()


class SpikingLSTMCell(SpikingRNNCellBase):
    """Spiking LSTM cell: i, f, o = sg1(·), g = sg2(·) (sg1 if None); c' = f·c + i·g, h' = o·c'.

    ``forward(x [N, input_size], hc=None) -> (h, c)``, each ``[N, hidden_size]``; ``hc`` is ``(h, c)``
    or None for zeros. ``surrogate_function1=None`` is ``surrogate.Erf()``.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, surrogate_function1=None,
                 surrogate_function2=None):
        super().__init__(input_size, hidden_size, bias)
        self._gate_linears(input_size, hidden_size, 4, bias)
        self.surrogate_function1 = surrogate_function1 if surrogate_function1 is not None else _default_surrogate()
        self.surrogate_function2 = surrogate_function2
        _check_same_mode(self.surrogate_function1, surrogate_function2)

    def forward(self, x: torch.Tensor, hc=None):
        h, c = (self._zeros(x), self._zeros(x)) if hc is None else hc
        pre = self.linear_ih(x) + self.linear_hh(h)
        if self.surrogate_function2 is None:
            i, f, g, o = torch.split(self.surrogate_function1(pre), self.hidden_size, dim=1)
        else:
            i, f, g, o = torch.split(pre, self.hidden_size, dim=1)
            i, f, o = self.surrogate_function1(i), self.surrogate_function1(f), self.surrogate_function1(o)
            g = self.surrogate_function2(g)
        c = c * f + i * g
        return c * o, c


class SpikingGRUCell(SpikingRNNCellBase):
    """Spiking GRU cell: r, z = sg1(·), n = sg2(x_n + r·h_n) (sg1 if None); h' = (1 − z)·n + z·h.

    ``forward(x [N, input_size], h=None) -> h``. ``surrogate_function1=None`` is ``surrogate.Erf()``.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, surrogate_function1=None,
                 surrogate_function2=None):
        super().__init__(input_size, hidden_size, bias)
        self._gate_linears(input_size, hidden_size, 3, bias)
        self.surrogate_function1 = surrogate_function1 if surrogate_function1 is not None else _default_surrogate()
        self.surrogate_function2 = surrogate_function2
        _check_same_mode(self.surrogate_function1, surrogate_function2)

    def forward(self, x: torch.Tensor, h=None) -> torch.Tensor:
        if h is None:
            h = self._zeros(x)
        x_r, x_z, x_n = torch.split(self.linear_ih(x), self.hidden_size, dim=1)
        h_r, h_z, h_n = torch.split(self.linear_hh(h), self.hidden_size, dim=1)
        r = self.surrogate_function1(x_r + h_r)
        z = self.surrogate_function1(x_z + h_z)
        gate_n = self.surrogate_function1 if self.surrogate_function2 is None else self.surrogate_function2
        n = gate_n(x_n + r * h_n)
        return (1.0 - z) * n + z * h


class SpikingVanillaRNNCell(SpikingRNNCellBase):
    """Spiking vanilla RNN cell: h' = sg(W_ih·x + W_hh·h). ``surrogate_function=None`` is ``surrogate.Erf()``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, surrogate_function=None):
        super().__init__(input_size, hidden_size, bias)
        self._gate_linears(input_size, hidden_size, 1, bias)
        self.surrogate_function = surrogate_function if surrogate_function is not None else _default_surrogate()

    def forward(self, x: torch.Tensor, h=None) -> torch.Tensor:
        if h is None:
            h = self._zeros(x)
        return self.surrogate_function(self.linear_ih(x) + self.linear_hh(h))


class SpikingRNNBase(nn.Module):
    """A stack of ``num_layers`` cells run over ``[T, N, input_size]``, optionally in both directions.

    ``forward(x, states=None) -> (y, states)``: ``y`` is ``[T, N, hidden_size·D]`` (D = 2 when
    bidirectional), states are ``[num_layers·D, N, hidden_size]`` (a tuple ``(h, c)`` for the LSTM):
    the forward cells' first, then the reverse cells'. Between layers, ``dropout_p`` drops units of
    the lower layer's output in training (with ``invariant_dropout_mask``, one mask for all steps).
    """

    def __init__(self, input_size, hidden_size, num_layers, bias=True, dropout_p=0, invariant_dropout_mask=False,
                 bidirectional=False, *args, **kwargs):
        super().__init__()
        if not 0 <= dropout_p < 1:
            raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}")
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.dropout_p = dropout_p
        self.invariant_dropout_mask = invariant_dropout_mask
        self.bidirectional = bidirectional
        if bidirectional:
            self.cells, self.cells_reverse = self.create_cells(*args, **kwargs)
        else:
            self.cells = self.create_cells(*args, **kwargs)

    def create_cells(self, *args, **kwargs):
        """The cells of each layer, in an nn.Sequential (two for the two directions)."""
        directions = 2 if self.bidirectional else 1

        def stack():
            sizes = [self.input_size] + [self.hidden_size * directions] * (self.num_layers - 1)
            return nn.Sequential(*[self.base_cell()(n, self.hidden_size, self.bias, *args, **kwargs) for n in sizes])

        return (stack(), stack()) if self.bidirectional else stack()

    @staticmethod
    def base_cell():
        raise NotImplementedError

    @staticmethod
    def states_num() -> int:
        raise NotImplementedError

    def _initial_states(self, states, x: torch.Tensor) -> list[torch.Tensor]:
        count = self.num_layers * (2 if self.bidirectional else 1)
        want = (count, x.shape[1], self.hidden_size)
        if states is None:
            return [x.new_zeros(want) for _ in range(self.states_num())]
        given = list(states) if isinstance(states, (tuple, list)) else [states]
        if len(given) != self.states_num() or any(not isinstance(s, torch.Tensor) or s.shape != want for s in given):
            raise ValueError(f"{type(self).__name__} expects states as {self.states_num()} tensor(s) of shape "
                             f"{list(want)} ([num_layers * directions, N, hidden_size])")
        return given

    def forward(self, x: torch.Tensor, states=None):
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            raise ValueError(f"{type(self).__name__} expects x of shape [T, N, input_size], got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        T, N = x.shape[:2]
        init = self._initial_states(states, x)
        final = [[None] * init[0].shape[0] for _ in init]
        directions = [(self.cells, False)] + ([(self.cells_reverse, True)] if self.bidirectional else [])
        width = self.hidden_size * len(directions)
        masks = None
        if self.training and self.dropout_p > 0 and self.invariant_dropout_mask:
            masks = F.dropout(x.new_ones(self.num_layers - 1, N, width), self.dropout_p, training=True)
        y = x
        for layer in range(self.num_layers):
            if layer > 0 and self.training and self.dropout_p > 0:
                y = y * masks[layer - 1] if masks is not None else F.dropout(y, self.dropout_p, training=True)
            outputs = []
            for d, (cells, reverse) in enumerate(directions):
                index = layer + d * self.num_layers
                state = init[0][index] if self.states_num() == 1 else tuple(s[index] for s in init)
                seq = []
                for t in (range(T - 1, -1, -1) if reverse else range(T)):
                    state = cells[layer](y[t], state)
                    seq.append(state if self.states_num() == 1 else state[0])
                if reverse:
                    seq.reverse()
                outputs.append(torch.stack(seq) if seq else x.new_zeros(0, N, self.hidden_size))
                for k in range(self.states_num()):
                    final[k][index] = state if self.states_num() == 1 else state[k]
            y = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]
        states_out = [torch.stack(s) for s in final]
        return y, (states_out[0] if self.states_num() == 1 else tuple(states_out))


class SpikingLSTM(SpikingRNNBase):
    """A stack of :class:`SpikingLSTMCell`; states ``(h, c)``."""

    def __init__(self, input_size, hidden_size, num_layers, bias=True, dropout_p=0, invariant_dropout_mask=False,
                 bidirectional=False, surrogate_function1=None, surrogate_function2=None):
        super().__init__(input_size, hidden_size, num_layers, bias, dropout_p, invariant_dropout_mask, bidirectional,
                         surrogate_function1, surrogate_function2)

    @staticmethod
    def base_cell():
        return SpikingLSTMCell

    @staticmethod
    def states_num() -> int:
        return 2


class SpikingGRU(SpikingRNNBase):
    """A stack of :class:`SpikingGRUCell`; state ``h``."""

    def __init__(self, input_size, hidden_size, num_layers, bias=True, dropout_p=0, invariant_dropout_mask=False,
                 bidirectional=False, surrogate_function1=None, surrogate_function2=None):
        super().__init__(input_size, hidden_size, num_layers, bias, dropout_p, invariant_dropout_mask, bidirectional,
                         surrogate_function1, surrogate_function2)

    @staticmethod
    def base_cell():
        return SpikingGRUCell

    @staticmethod
    def states_num() -> int:
        return 1


class SpikingVanillaRNN(SpikingRNNBase):
    """A stack of :class:`SpikingVanillaRNNCell`; state ``h``."""

    def __init__(self, input_size, hidden_size, num_layers, bias=True, dropout_p=0, invariant_dropout_mask=False,
                 bidirectional=False, surrogate_function=None):
        super().__init__(input_size, hidden_size, num_layers, bias, dropout_p, invariant_dropout_mask, bidirectional,
                         surrogate_function)

    @staticmethod
    def base_cell():
        return SpikingVanillaRNNCell

    @staticmethod
    def states_num() -> int:
        return 1
