"""Step modes and stateful modules, as SpikingJelly's ``activation_based.base``.

A *step module* runs in one of two step modes: ``'s'`` (single-step: one time step ``[N, *]`` per
call) or ``'m'`` (multi-step: a whole sequence ``[T, N, *]`` per call). :class:`MemoryModule` is
flashspike's :class:`flashspike.base.MemoryModule` (memories that ``reset()`` restores) with a step
mode: its ``forward`` calls ``single_step_forward`` or ``multi_step_forward``.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import base as _core

__all__ = ["StepModule", "SingleStepModule", "MultiStepModule", "MemoryModule", "named_memories", "memories",
           "extract_memories", "load_memories"]

STEP_MODES = ("s", "m")


class StepModule:
    """A module with a step mode (``'s'`` or ``'m'``), checked when it is set."""

    def supported_step_mode(self) -> tuple:
        """The step modes this module can run in."""
        return STEP_MODES

    @property
    def step_mode(self) -> str:
        """``'s'``: one time step ``[N, *]`` per call; ``'m'``: the sequence ``[T, N, *]``."""
        return self.__dict__["_step_mode"] if "_step_mode" in self.__dict__ else self._missing_step_mode()

    @step_mode.setter
    def step_mode(self, value: str) -> None:
        supported = self.supported_step_mode()
        if value not in supported:
            raise ValueError(f"{type(self).__name__}: step_mode must be one of {supported}, got {value!r}")
        self.__dict__["_step_mode"] = value

    def _missing_step_mode(self):
        # A module that never set its step mode has none (SpikingJelly's containers): hasattr() is False.
        raise AttributeError(f"{type(self).__name__} has no step_mode")


class SingleStepModule(StepModule):
    """A step module that runs in single-step mode only."""

    def supported_step_mode(self) -> tuple:
        return ("s",)


class MultiStepModule(StepModule):
    """A step module that runs in multi-step mode only."""

    def supported_step_mode(self) -> tuple:
        return ("m",)


class MemoryModule(_core.MemoryModule, StepModule):
    """A stateful step module: ``forward`` runs ``single_step_forward`` (step mode ``'s'``, the default)
    or ``multi_step_forward`` (``'m'``), whose default runs ``single_step_forward`` once per step."""

    def __init__(self):
        super().__init__()
        self.step_mode = "s"

    def single_step_forward(self, x: torch.Tensor, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} defines no single_step_forward")

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs):
        return torch.stack([self.single_step_forward(x, *args, **kwargs) for x in x_seq])

    def forward(self, *args, **kwargs):
        if self.step_mode == "m":
            return self.multi_step_forward(*args, **kwargs)
        return self.single_step_forward(*args, **kwargs)

    def get_reset_value(self, name: str):
        """What ``reset()`` gives memory ``name``."""
        if name not in self._memories_rv:
            raise KeyError(f"{name!r} is not a memory of {type(self).__name__}; its memories are "
                           f"{list(self._memories_rv)}")
        return self._memories_rv[name]

    def extra_repr(self) -> str:
        return f"step_mode={self.step_mode}"


def named_memories(module: nn.Module, prefix: str = ""):
    """``(dotted name, value)`` of every memory of ``module`` and its submodules, depth first."""
    for name, sub in module.named_modules(prefix=prefix):
        if isinstance(sub, _core.MemoryModule):
            for memory, value in sub.named_memories():
                yield (f"{name}.{memory}" if name else memory), value


def memories(module: nn.Module):
    """The value of every memory of ``module`` and its submodules, in :func:`named_memories` order."""
    for _, value in named_memories(module):
        yield value


def extract_memories(module: nn.Module) -> list:
    """The memories of ``module`` as a list, for :func:`load_memories`."""
    return list(memories(module))


def load_memories(module: nn.Module, memory_list: list) -> None:
    """Put back memories taken by :func:`extract_memories` (same order, same count)."""
    owners = [(sub, memory) for _, sub in module.named_modules() if isinstance(sub, _core.MemoryModule)
              for memory in sub._memories_rv]
    if len(owners) != len(memory_list):
        raise ValueError(f"{type(module).__name__} has {len(owners)} memories, but {len(memory_list)} were given")
    for (sub, memory), value in zip(owners, memory_list):
        sub.__dict__[memory] = value
