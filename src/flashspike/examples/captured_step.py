"""The example's ``-cuda_graph``: one whole training step captured as a CUDA graph and replayed.

Why: at b=128, T=4 a step is about a millisecond of GPU work spread over a few hundred kernel
launches from Python; a replay issues all of them with one call, so the host stops being the limit.

What capture needs, and where this file provides it:
- Fixed addresses. The graph reads the batch from two static buffers (refreshed with ``copy_``) and
  leaves the loss and the rates in tensors of its own pool, overwritten by the next replay. The step it
  records must zero the gradients in place (``set_to_none=False``) and run autocast without its weight
  cache, so that every tensor it touches outlives the capture.
- Nothing created lazily inside the capture. A few eager steps on a side stream come first: they
  compile the neuron kernels, let cuDNN choose its algorithms, and create the momentum buffers and the
  AMP scaler's state. They are ordinary training steps on the first batches, not thrown away.
- The learning rate read from device memory. A fused optimizer given a float bakes it into the captured
  launch; given a one-element CUDA tensor it reads the tensor at every replay. That tensor stands in the
  param groups only while warming up and capturing; otherwise the groups hold their float, so the
  scheduler and the checkpoint see exactly what an eager run has, and a changed float is copied into
  the tensor before the next replay.
- A batch of another size (a last partial batch) runs eagerly through the same step function, on the
  same parameters, gradients and optimizer state.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

StepFunction = Callable[[torch.Tensor, torch.Tensor], tuple]


class CapturedStep:
    """Calls ``step(images, targets) -> (loss, rates)``: eagerly for the first ``warmup_steps`` calls,
    then as the replay of a graph captured on the next call (and eagerly for a batch of another shape).

    ``step`` must be capturable (see the module's docstring) and ``optimizer`` fused or capturable.
    """

    def __init__(self, step: StepFunction, optimizer: torch.optim.Optimizer, device: torch.device,
                 warmup_steps: int = 3):
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be at least 1 (capture needs warmed kernels), got {warmup_steps}")
        self.step, self.optimizer, self.device = step, optimizer, device
        self.warmup_steps, self.warmed = warmup_steps, 0
        # One float32 scalar per param group, and the float it last received.
        self.lr_tensors = [torch.zeros((), dtype=torch.float32, device=device) for _ in optimizer.param_groups]
        self.lr_values: list[float | None] = [None] * len(optimizer.param_groups)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_images = self.static_targets = None
        self.static_outputs: tuple | None = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple:
        if self.graph is None:
            if self.warmed < self.warmup_steps:
                self.warmed += 1
                return self._warm_up(images, targets)
            self._capture(images, targets)
        if images.shape != self.static_images.shape or targets.shape != self.static_targets.shape:
            return self.step(images, targets)  # the graph is for one batch shape
        self._refresh_lr()
        self.static_images.copy_(images)
        self.static_targets.copy_(targets)
        self.graph.replay()
        return self.static_outputs

    def _warm_up(self, images: torch.Tensor, targets: torch.Tensor) -> tuple:
        # On a side stream, as PyTorch's whole-network capture recipe does: the warm-up's lazily created
        # state (cuBLAS and cuDNN workspaces, autograd's streams) is then not tied to the capture.
        current, side = torch.cuda.current_stream(self.device), torch.cuda.Stream(self.device)
        with self._lr_on_device():
            side.wait_stream(current)  # after the batch and the learning rate written on the current stream
            with torch.cuda.stream(side):
                outputs = self.step(images, targets)
        current.wait_stream(side)
        return outputs

    def _capture(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        self.static_images, self.static_targets = images.clone(), targets.clone()
        graph = torch.cuda.CUDAGraph()
        # Capture records the step without running it: the replay in __call__ trains on this batch.
        with self._lr_on_device(), torch.cuda.graph(graph):
            self.static_outputs = self.step(self.static_images, self.static_targets)
        self.graph = graph

    @contextlib.contextmanager
    def _lr_on_device(self):
        """The param groups hold the CUDA learning rates inside the block, their floats again after it."""
        groups = self.optimizer.param_groups
        self._refresh_lr()
        values = [group["lr"] for group in groups]
        for group, tensor in zip(groups, self.lr_tensors):
            group["lr"] = tensor
        try:
            yield
        finally:
            for group, value in zip(groups, values):
                group["lr"] = value

    def _refresh_lr(self) -> None:
        """Copy each group's float learning rate into its tensor when it changed (the scheduler's step)."""
        for index, group in enumerate(self.optimizer.param_groups):
            value = float(group["lr"])
            if value != self.lr_values[index]:
                self.lr_tensors[index].fill_(value)  # a device write, queued before the next replay
                self.lr_values[index] = value
