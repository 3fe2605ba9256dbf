"""This process's place among torchrun's processes, and the device it trains on: what the example
(:mod:`flashspike.examples.conv_fashion_mnist`) and the training benchmark
(:mod:`flashspike.benchmarks.train_worker`) share.

Without torchrun a process is rank 0 of 1 on the device it asks for; under torchrun (``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK`` set) each joins the process group, NCCL on CUDA (one device per process,
``cuda:LOCAL_RANK``) and Gloo on the CPU.
"""

from __future__ import annotations

import gc
import os

import torch
from torch import nn

from .distributed import broadcast_from_first

__all__ = ["Cluster", "DeviceError", "leave_process_group"]


class DeviceError(ValueError):
    """A device that cannot train here: not CPU or CUDA, CUDA missing, or an index past the last GPU.
    The message starts with the device as it was asked for."""


class Cluster:
    """This process's place among torchrun's processes (rank 0 of 1 without torchrun)."""

    def __init__(self, requested_device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        try:
            device = torch.device(requested_device)
        except RuntimeError:
            device = None
        if device is None or device.type not in ("cpu", "cuda"):
            raise DeviceError(f"{requested_device}: not a device flashspike trains on; "
                              "give cpu, cuda or cuda:INDEX")
        if self.world > 1 and device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise DeviceError(f"{requested_device}: CUDA is not available here; use cpu")
            if device.index is None:  # plain "cuda": the current device, named by its index from here on
                device = torch.device("cuda", torch.cuda.current_device())
            if device.index >= torch.cuda.device_count():
                raise DeviceError(f"{requested_device}: this machine has {torch.cuda.device_count()} "
                                  "CUDA device(s), numbered from 0")
            torch.cuda.set_device(device)
        self.device = device
        if self.world > 1:
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over all processes (in place)."""
        if self.world > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    def share_buffers(self, net: nn.Module) -> None:
        """Give every process rank 0's BatchNorm statistics: each updated them on its own last batch."""
        buffers = list(net.buffers())
        if self.world > 1 and buffers:
            broadcast_from_first(buffers)

    def close(self) -> None:
        leave_process_group()


def leave_process_group() -> None:
    """Destroy torchrun's process group, if this process joined one, after freeing finished models.

    A DDP model lingers in a reference cycle after its last use, and its reducer holds the process
    group; freed only at interpreter shutdown, Gloo's threads are torn down after Python's and the
    process aborts ("terminate called without an active exception")."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gc.collect()
        torch.distributed.destroy_process_group()
