"""Gradient averaging over processes, in a form a CUDA graph can hold.

DistributedDataParallel starts its all-reduces from autograd hooks that keep state on the host (which
buckets are ready, whether this iteration syncs), so a captured training step cannot contain them.
:class:`GradientAverager` does the same arithmetic as plain device work that replays unchanged: after
the backward, the gradients of each dtype are packed into one flat tensor, scaled by 1 / world (DDP
scales before it sums, too) and all-reduced in one collective, then copied back; before the forward,
rank 0's buffers are broadcast the same way. NCCL collectives are captured into CUDA graphs like any
other kernel; Gloo serves the CPU, where the same steps run eagerly.

The neurons' state (membrane potentials) is a plain attribute, not a buffer, so it is never sent.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GradientAverager", "broadcast_from_first"]


def _by_dtype(tensors):
    """The tensors in groups of one dtype and device, in order: each group travels as one flat tensor."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    return list(groups.values())


def _unpack(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    """Copy the consecutive pieces of ``flat`` back into ``tensors`` (any layout: copy_ keeps theirs)."""
    pieces = [piece.view(t.shape) for piece, t in zip(flat.split([t.numel() for t in tensors]), tensors)]
    torch._foreach_copy_(tensors, pieces)


def broadcast_from_first(tensors, group=None) -> None:
    """Every process takes the values of ``tensors`` that the first process of ``group`` (None: all of
    them) holds: one collective per dtype."""
    source = 0 if group is None else torch.distributed.get_global_rank(group, 0)
    for same_dtype in _by_dtype(tensors):
        flat = torch.cat([t.reshape(-1) for t in same_dtype])
        torch.distributed.broadcast(flat, source, group=group)
        _unpack(flat, same_dtype)


class GradientAverager:
    """Averages a model's gradients over the processes of ``process_group`` and shares rank 0's buffers.

    Built when every process has built its model: the parameters and buffers are broadcast from the
    group's rank 0 then, so that the processes start from equal weights (as DDP's constructor does).
    """

    def __init__(self, model: nn.Module, process_group=None, broadcast_buffers: bool = True):
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("distributed=True needs torch.distributed's default process group: call "
                               "torch.distributed.init_process_group() first (torchrun sets up its environment)")
        if not isinstance(broadcast_buffers, bool):
            raise TypeError(f"broadcast_buffers must be True or False, got {broadcast_buffers!r}")
        self.group = process_group
        self.world = dist.get_world_size(process_group)
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.buffers = list(model.buffers()) if broadcast_buffers else []
        with torch.no_grad():
            broadcast_from_first([p.detach() for p in model.parameters()] + list(model.buffers()), process_group)

    def share_buffers(self) -> None:
        """Every process takes rank 0's buffers (BatchNorm's running statistics)."""
        if self.buffers and self.world > 1:
            broadcast_from_first(self.buffers, self.group)

    def average_gradients(self) -> None:
        """Each gradient becomes its mean over the processes. A parameter that got no gradient here
        counts as a zero gradient (it may have one on another process)."""
        missing = [p for p in self.parameters if p.grad is None]
        for p in missing:
            p.grad = torch.zeros_like(p)
        for group in _by_dtype([p.grad for p in self.parameters]):
            flat = torch.cat([g.reshape(-1) for g in group])
            flat.mul_(1.0 / self.world)
            torch.distributed.all_reduce(flat, group=self.group)
            _unpack(flat, group)
