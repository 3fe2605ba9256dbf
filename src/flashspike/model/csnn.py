"""The convolutional SNN of SpikingJelly's Fashion-MNIST tutorial, in multi-step and single-step form:
the network the example (:mod:`flashspike.examples.conv_fashion_mnist`) trains and the training
benchmark's ``fmnist`` rows time."""

from __future__ import annotations

import torch
from torch import nn

from .. import layer, neuron, surrogate
from ..memory.batchnorm_recompute import normalized_in_neuron
from .common import check_num_classes


def _unambiguous(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``x`` (dense in ``memory_format``) as a view whose strides say channels_last outright. An image of
    one channel is contiguous and channels_last at once; with its contiguous strides PyTorch takes it
    for channel-major, and cuDNN's backward of the first convolution then copies the NHWC gradient of
    its output to NCHW (and computes the weight gradient in NCHW)."""
    if memory_format != torch.channels_last or x.dim() != 4 or x.shape[1] != 1 or x.stride(1) == 1:
        return x
    height, width = x.shape[2:]
    return x.as_strided(x.shape, (height * width, 1, width, 1))


class CSNN(nn.Module):
    """Conv-BN once (the image is static), then IF neurons over T steps; the output is the firing rate.

    ``step_mode='m'`` feeds ``[T, N, ...]`` through multi-step neurons, with the stateless layers in
    SeqToANNContainer (T merged into the batch); ``'s'`` runs the same layers with single-step neurons
    once per time step, SpikingJelly's baseline. Both hold the same parameters in the same order.

    ``memory_format=torch.channels_last`` keeps the convolution weights and every convolution activation
    channels-last: cuDNN's convolutions and batch norms and PyTorch's max-pool then run their NHWC
    kernels with no layout conversions, and the multi-step neurons read and write that layout in
    place. The values computed are the same.

    ``num_classes`` output neurons: Fashion-MNIST's ten by default.
    """

    def __init__(self, T: int, channels: int = 128, step_mode: str = "m", backend: str = "torch",
                 memory_format: torch.memory_format = torch.contiguous_format, num_classes: int = 10):
        super().__init__()
        if step_mode not in ("m", "s"):
            raise ValueError(f"step_mode must be 'm' or 's', got {step_mode!r}")
        num_classes = check_num_classes(num_classes)
        self.T, self.step_mode, self.memory_format = T, step_mode, memory_format
        c = channels
        if step_mode == "m":
            def node():
                return neuron.MultiStepIFNode(surrogate_function=surrogate.ATan(), backend=backend)
            stateless = layer.SeqToANNContainer
        else:
            def node():
                return neuron.IFNode(surrogate_function=surrogate.ATan())
            stateless = nn.Sequential
        self.static_conv = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.conv = nn.Sequential(
            node(),
            stateless(nn.MaxPool2d(2, 2), nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)),
            node(),
            stateless(nn.MaxPool2d(2, 2), nn.Flatten()),
        )
        self.fc = nn.Sequential(
            stateless(nn.Linear(c * 7 * 7, c * 4 * 4, bias=False)),
            node(),
            stateless(nn.Linear(c * 4 * 4, num_classes, bias=False)),
            node(),
        )
        self.to(memory_format=memory_format)  # the weights; a later .to(device) keeps their layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[N, 1, 28, 28]`` -> firing rates ``[N, num_classes]``."""
        if self.step_mode == "m":
            # Each BatchNorm's output goes to the neuron after it alone (through views), which may fire
            # from the BatchNorm's input instead.
            with normalized_in_neuron(self.static_conv[1], self.conv[0]), \
                    normalized_in_neuron(self.conv[1][-1], self.conv[2]):
                x = self.static_conv(_unambiguous(x.contiguous(memory_format=self.memory_format), self.memory_format))
                # The same input at every step: a view, which the first neuron reads in place (it computes
                # what SpikingJelly's repeat(T, 1, 1, 1, 1) feeds it, without writing T copies).
                x_seq = x.unsqueeze(0).expand(self.T, *x.shape)
                return self.fc(self.conv(x_seq)).mean(0)
        x = self.static_conv(_unambiguous(x.contiguous(memory_format=self.memory_format), self.memory_format))
        spike_count = 0
        for _ in range(self.T):
            spike_count = spike_count + self.fc(self.conv(x))
        return spike_count / self.T
