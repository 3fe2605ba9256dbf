"""The state protocol of flashspike's stateful layers and encoders: plain attributes with initial values."""

from __future__ import annotations

import torch
from torch import nn


class Stateful(nn.Module):
    """A module whose state is the attributes named in ``_initial_state`` (name -> initial value).

    ``reset()`` puts each back to its initial value and ``detach()`` detaches each tensor, so
    :func:`flashspike.functional.reset_net` and :func:`~flashspike.functional.detach_net` reach them.
    The state is not in ``state_dict()``.
    """

    _initial_state: dict = {}

    def reset(self) -> None:
        for name, value in self._initial_state.items():
            setattr(self, name, value)

    def detach(self) -> None:
        for name in self._initial_state:
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.detach())
