"""Stateful modules: memories that ``reset()`` restores and that never enter ``state_dict``.

A *memory* is an attribute registered with :meth:`MemoryModule.register_memory`: a neuron's membrane
potential, an adaptive threshold, anything a module carries from one call to the next. Its value is a
plain instance attribute (read and written as fast as any attribute, never a buffer), so it is not
saved by ``state_dict()`` and not broadcast by DDP. The value given at registration is what
``reset()`` puts back (:func:`flashspike.functional.reset_net` resets a whole network).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules import module as _module_globals

__all__ = ["MemoryModule", "check_floating", "called_plainly", "takes_fused_call", "ForOneCall", "autocast_dtype"]

_CALL_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


class ForOneCall:
    """A context that holds ``value`` in ``module.__dict__[name]`` (a plain attribute, which a module reads
    on its hot path without nn.Module's look-ups) for the calls made inside it, and takes it away after,
    however they end: how a caller tells a module something about one call (a BatchNorm's output that
    only a neuron reads, a tensor a neuron adds its spikes to)."""

    __slots__ = ("module", "name", "value")

    def __init__(self, module: nn.Module, name: str, value):
        self.module, self.name, self.value = module, name, value

    def __enter__(self):
        self.module.__dict__[self.name] = self.value

    def __exit__(self, *exc_info):
        self.module.__dict__.pop(self.name, None)


def called_plainly(module: nn.Module) -> bool:
    """Whether calling ``module`` runs its forward alone: no hook of its own or of every module sees its
    input or output (a hook would read what a fused call leaves unwritten, or gives in another form)."""
    return not any(getattr(module, name) for name in _CALL_HOOKS) and not any(
        getattr(_module_globals, "_global" + name) for name in _CALL_HOOKS + ("_forward_hooks_always_called",))


def takes_fused_call(neuron: nn.Module) -> bool:
    """Whether a call of ``neuron`` now reads its input and writes its output only through its kernels'
    path: a flashspike multi-step neuron that says so (``fires_from_unwritten_input``), called plainly,
    outside compiled code. A caller may then hand it what a fused call needs (an input not written yet,
    a tensor to add its spikes to)."""
    return (not torch.compiler.is_compiling() and getattr(neuron, "fires_from_unwritten_input", _never)()
            and called_plainly(neuron))


def _never() -> bool:
    return False


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast would run a convolution or linear layer on ``x`` in, or None outside autocast."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def check_floating(x, what: str) -> None:
    """Refuse an input that is no floating-point tensor, naming it (``what``) and what it must be."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{what} must be a floating-point tensor (float16, bfloat16, float32 or float64), got {x.dtype}; "
            "convert it first, e.g. x.float()"
        )


class MemoryModule(nn.Module):
    """Base class of modules that keep state between calls (SpikingJelly's ``base.MemoryModule`` API).

    Tensor memories follow the module through ``.to()``, ``.cuda()``, ``.half()`` and the like;
    ``copy.deepcopy`` and pickling copy them detached from any autograd graph.
    """

    def __init__(self):
        super().__init__()
        # name -> the value reset() restores. The current values live in self.__dict__.
        self._memories_rv: dict = {}

    def register_memory(self, name: str, value) -> None:
        """Make ``name`` a memory whose value is ``value`` now and after every ``reset()``."""
        if name in self._memories_rv or name in self.__dict__ or any(
                name in d for d in (self._parameters, self._buffers, self._modules)):
            raise ValueError(f"{type(self).__name__} already has an attribute {name!r}; pick another memory name")
        self.__dict__[name] = value
        self.set_reset_value(name, value)

    def set_reset_value(self, name: str, value) -> None:
        """What ``reset()`` gives memory ``name`` from now on (a copy of ``value``)."""
        self._memories_rv[name] = copy.deepcopy(value)

    def reset(self) -> None:
        """Return every memory to its reset value."""
        state = self.__dict__
        for name, value in self._memories_rv.items():
            state[name] = copy.deepcopy(value) if isinstance(value, torch.Tensor) else value

    def memories(self):
        """The current value of each memory."""
        for name in self._memories_rv:
            yield self.__dict__[name]

    def named_memories(self):
        """(name, current value) of each memory."""
        for name in self._memories_rv:
            yield name, self.__dict__[name]

    def detach(self) -> None:
        """Cut every tensor memory from the autograd graph, keeping its value (truncated BPTT: the next
        call's gradient stops here)."""
        state = self.__dict__
        for name in self._memories_rv:
            value = state[name]
            if isinstance(value, torch.Tensor):
                state[name] = value.detach()

    def _apply(self, fn, *args, **kwargs):
        # .to(), .cuda(), .half(), ... reach parameters and buffers through _apply; memories are plain
        # attributes, so they are moved here (a float memory stays a float).
        state = self.__dict__
        for name in self._memories_rv:
            if isinstance(state[name], torch.Tensor):
                state[name] = fn(state[name])
        for name, value in self._memories_rv.items():
            if isinstance(value, torch.Tensor):
                self._memories_rv[name] = fn(value)
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):
        # What copy.deepcopy and pickle copy. A memory made by a forward pass under autograd is not a
        # graph leaf, and torch refuses to deep-copy those: the copy gets the same values, detached.
        state = super().__getstate__()
        for name in self._memories_rv:
            if isinstance(state[name], torch.Tensor):
                state[name] = state[name].detach()
        return state
