"""Firing statistics of every spiking neuron of a network, recorded by forward hooks.

``Monitor(net)`` finds the neurons (instances of :class:`flashspike.neuron.BaseNode`); ``enable()``
attaches one forward hook to each, ``disable()`` removes them, so a disabled monitor costs nothing.
The counts live in the monitor, not on the neurons. With ``record_v=True`` it also keeps each neuron
module's membrane potentials (see :meth:`Monitor.get_v`).

Under ``torch.compile`` the hooks record nothing: they return at once when
``torch.compiler.is_compiling()``, so a compiled graph carries no monitor work and no graph break.
Reading a statistic when nothing was recorded is an error that says so. To monitor a compiled net,
run the uncompiled module (``compiled._orig_mod``) on a few batches.
"""

from __future__ import annotations

import torch
from torch import nn

from .neuron import BaseNode

__all__ = ["Monitor"]


class _Counts:
    """One neuron module's running totals."""

    def __init__(self):
        self.spikes = 0          # spikes seen
        self.elements = 0        # outputs seen (steps × samples × neurons)
        self.neurons = None      # neurons per sample
        self.fired = None        # per neuron: fired at least once


class Monitor:
    """Records, for every neuron module of ``net``, how often it fires and which neurons never do.

    Args:
        net: the network.
        device: where the torch backend keeps its counts (None: the device of each neuron's output).
        backend: 'numpy' (statistics as Python floats) or 'torch' (statistics as tensors, no device
            synchronization while recording).
        record_v: also keep the potentials after every call (a flashspike addition; memory grows with
            every call until ``reset()``).
    """

    def __init__(self, net: nn.Module, device=None, backend: str = "numpy", *, record_v: bool = False):
        if backend not in ("numpy", "torch"):
            raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")
        self.net = net
        self.backend = backend
        self.device = None if device is None else torch.device(device)
        self.record_v = bool(record_v)
        self.module_dict = {name: m for name, m in net.named_modules() if isinstance(m, BaseNode)}
        self.handle = {}
        self.reset()

    @property
    def enabled(self) -> bool:
        return bool(self.handle)

    def enable(self) -> None:
        """Start recording (from zero): one forward hook per neuron module."""
        self.disable()
        for name, module in self.module_dict.items():
            self.handle[name] = module.register_forward_hook(self._hook_for(name))
        self.reset()

    def disable(self) -> None:
        """Stop recording and remove the hooks; the totals so far stay readable."""
        for h in self.handle.values():
            h.remove()
        self.handle = {}

    def reset(self) -> None:
        """Zero the totals and forget the recorded potentials."""
        self._counts = {name: _Counts() for name in self.module_dict}
        self._potentials = {name: [] for name in self.module_dict}

    def _hook_for(self, name: str):
        multi_step = type(self.module_dict[name]).__name__.startswith("MultiStep")

        def hook(module, args, output):
            if torch.compiler.is_compiling():
                return  # see the module docstring
            with torch.no_grad():
                self._record(self._counts[name], output.flatten(0, 1) if multi_step else output)
                if self.record_v:
                    self._potentials[name].append(self._potential_of(module, multi_step))
        return hook

    def _potential_of(self, module: nn.Module, multi_step: bool) -> torch.Tensor:
        # Only a kept v_seq: one computed on reading (without store_v_seq) would cost each call's hook.
        v_seq = module.v_seq if multi_step and getattr(module, "store_v_seq", False) else None
        v = v_seq if isinstance(v_seq, torch.Tensor) else module.v.unsqueeze(0)
        v = v.detach().clone()
        return v if self.device is None else v.to(self.device)

    def get_v(self, module_name: str) -> list[torch.Tensor]:
        """The potentials of neuron module ``module_name``, one tensor per recorded call (``record_v=True``):
        ``[T, N, *]`` (every step) for a multi-step node with ``store_v_seq=True``, else ``[1, N, *]``, the
        potential after the call (every step for single-step nodes run in a loop)."""
        if not self.record_v:
            raise ValueError("potentials are recorded only by Monitor(..., record_v=True)")
        if module_name not in self._potentials:
            raise ValueError(f"Invalid module_name {module_name!r}: the monitored neurons are {list(self._potentials)}")
        return list(self._potentials[module_name])

    def _record(self, counts: _Counts, spikes: torch.Tensor) -> None:
        # spikes: [samples (T*N for multi-step nodes), *neuron shape]
        if self.device is not None:
            spikes = spikes.to(self.device)
        if spikes.dtype in (torch.float16, torch.bfloat16):
            spikes = spikes.float()  # counts in 16 bits would stop at 2048 (float16) or 256 (bfloat16)
        if counts.neurons is None:
            counts.neurons = spikes[0].numel()
        counts.spikes = counts.spikes + spikes.sum()
        counts.elements += spikes.numel()
        fired = spikes.sum(dim=0) > 0
        counts.fired = fired if counts.fired is None else counts.fired | fired

    def _selected(self, all: bool, module_name: str | None) -> list[_Counts]:
        if all:
            chosen = list(self._counts.values())
        elif module_name not in self._counts:
            raise ValueError(f"Invalid module_name {module_name!r}: the monitored neurons are {list(self._counts)}")
        else:
            chosen = [self._counts[module_name]]
        if not any(c.elements for c in chosen):
            raise ValueError("the monitor has recorded nothing: call enable() before running the net "
                             "(calls under torch.compile are not recorded)")
        return chosen

    def _result(self, value):
        if self.backend == "numpy":
            return value.item() if isinstance(value, torch.Tensor) else float(value)
        return value if isinstance(value, torch.Tensor) else torch.tensor(float(value))

    def get_avg_firing_rate(self, all: bool = True, module_name: str | None = None):
        """The mean firing rate: spikes / outputs, over every neuron module (``all``) or one
        (``module_name``, as in ``net.named_modules()``)."""
        chosen = self._selected(all, module_name)
        spikes = sum(c.spikes for c in chosen)
        return self._result(spikes / sum(c.elements for c in chosen))

    def get_nonfire_ratio(self, all: bool = True, module_name: str | None = None):
        """The share of neurons that have not fired once since ``enable()`` / ``reset()``."""
        chosen = [c for c in self._selected(all, module_name) if c.elements]
        silent = sum(torch.logical_not(c.fired).sum() for c in chosen)
        return self._result(silent / sum(c.neurons for c in chosen))
