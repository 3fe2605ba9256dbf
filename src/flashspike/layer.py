"""Layers for spiking networks: containers that run ordinary modules over a time sequence ``[T, N, *]``,
dropouts that keep one mask for a whole sequence, and the other layers of SpikingJelly's ``layer``.

Stateful layers are :class:`flashspike.base.MemoryModule` s: their state is a set of memories (plain
attributes, not buffers, so ``state_dict()`` does not carry them) that follow the module through
``.to()`` and return to their initial values on ``reset()``, which
:func:`flashspike.functional.reset_net` calls for every module of a net.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import functional
from .base import MemoryModule

__all__ = [
    "SeqToANNContainer", "MultiStepContainer",
    "Dropout", "Dropout2d", "MultiStepDropout", "MultiStepDropout2d",
    "SynapseFilter", "NeuNorm", "DCT", "AXAT", "ChannelsPool", "DropConnectLinear", "STDPLearner",
    "PrintShapeModule", "ConvBatchNorm2d", "ElementWiseRecurrentContainer", "LinearRecurrentContainer",
    "MultiStepThresholdDependentBatchNorm1d", "MultiStepThresholdDependentBatchNorm2d",
    "MultiStepThresholdDependentBatchNorm3d", "MultiStepTemporalWiseAttention",
]


def _check_sequence(x_seq: torch.Tensor, who: str) -> None:
    if not isinstance(x_seq, torch.Tensor):
        raise TypeError(f"{who} expects a tensor of shape [T, N, *], got {type(x_seq).__name__}")
    if x_seq.dim() < 2:
        raise ValueError(f"{who} expects x_seq of shape [T, N, *] (at least 2 dimensions), got {tuple(x_seq.shape)}")


# ----------------------------------------------------------------------------------------------------
# Containers
# ----------------------------------------------------------------------------------------------------


class _Container(nn.Sequential):
    """An ``nn.Sequential`` of the modules given, as SpikingJelly's containers are: parameters, buffers
    and ``state_dict`` keys are named ``<i>.<name>`` (``conv.1.0.weight``), so names, checkpoints and
    optimizer states keyed by name carry over between the two libraries, and load errors name the keys
    that ``state_dict()`` shows."""

    def __init__(self, *modules: nn.Module):
        if not modules:
            raise ValueError(f"{type(self).__name__} needs at least one module")
        # nn.Sequential's slicing builds the same class from an OrderedDict of named modules.
        named = len(modules) == 1 and isinstance(modules[0], OrderedDict)
        for m in modules[0].values() if named else modules:
            if not isinstance(m, nn.Module):
                raise TypeError(f"{type(self).__name__} takes nn.Module arguments, got {type(m).__name__}")
        super().__init__(*modules)

    def _run_modules(self, x: torch.Tensor) -> torch.Tensor:
        return nn.Sequential.forward(self, x)


class SeqToANNContainer(_Container):
    """Runs stateless modules on all time steps at once: ``[T, N, *] -> [T*N, *] -> modules -> [T, N, *]``.

    Merging T into the batch is a view for a contiguous input, so a convolution or linear layer sees
    one large batch instead of T small ones.
    """

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        _check_sequence(x_seq, "SeqToANNContainer")
        y = self._run_modules(x_seq.flatten(0, 1))
        return y.view(x_seq.shape[0], x_seq.shape[1], *y.shape[1:])


class MultiStepContainer(_Container):
    """Runs single-step modules (for example :class:`flashspike.neuron.IFNode`) once per time step.

    An empty sequence (T = 0) gives an empty output whose step shape is what the modules would
    return: a copy of them is run once on a zero step, so the modules' own state is not touched. The
    output is a view of the input, so it stays in the input's autograd graph.
    """

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        _check_sequence(x_seq, "MultiStepContainer")
        if x_seq.shape[0] == 0:
            with torch.no_grad():
                y = copy.deepcopy(self)._run_modules(x_seq.new_zeros(x_seq.shape[1:]))
            return x_seq.reshape(0, *y.shape).to(y.dtype)  # no elements: any shape is a view
        return torch.stack([self._run_modules(x) for x in x_seq])


# ----------------------------------------------------------------------------------------------------
# Dropouts: one mask per sequence
# ----------------------------------------------------------------------------------------------------


def _check_p(p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"p must be a number in [0, 1), got {p!r}")
    return float(p)


class Dropout(MemoryModule):
    """Dropout whose mask is drawn at the first call and kept until ``reset()``.

    Every time step of a sequence then sees the same dropped units: redrawing at each step would
    average the dropout away over T. Kept units are scaled by 1 / (1 − p) as in ``nn.Dropout``. In
    eval mode the input passes unchanged (and the mask, if any, is kept for later training calls).

    Args:
        p: the probability that a unit is dropped, in [0, 1).
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        # reset() forgets the mask: the next training call draws a new one
        self.register_memory('mask', None)
        self.p = _check_p(p)
        self.reset()

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def create_mask(self, x: torch.Tensor) -> None:
        # Dropout of ones draws exactly as nn.Dropout would, so seeds give SpikingJelly's masks.
        self.mask = F.dropout(torch.ones_like(x.detach()), self.p, training=True)

    def _masked(self, x: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__} expects a tensor, got {type(x).__name__}")
        if self.mask is None:
            self.create_mask(step)
        elif self.mask.shape != step.shape:
            raise ValueError(
                f"{type(self).__name__} keeps a mask of shape {tuple(self.mask.shape)} from an earlier call, but this "
                f"input's step has shape {tuple(step.shape)}. Call functional.reset_net(net) (or .reset()) before "
                "feeding a batch of another size.")
        return x * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._masked(x, x)


class Dropout2d(Dropout):
    """:class:`Dropout` of whole channels of ``[N, C, H, W]`` (as ``nn.Dropout2d``), kept until ``reset()``."""

    def __init__(self, p: float = 0.2):
        super().__init__(p)

    def create_mask(self, x: torch.Tensor) -> None:
        self.mask = F.dropout2d(torch.ones_like(x.detach()), self.p, training=True)


class _MultiStepMask:
    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x_seq
        _check_sequence(x_seq, type(self).__name__)
        if x_seq.shape[0] == 0:
            return x_seq * 1.0  # nothing to mask, and no step to draw one from
        return self._masked(x_seq, x_seq[0])


class MultiStepDropout(_MultiStepMask, Dropout):
    """:class:`Dropout` for a whole sequence ``[T, N, *]``: one mask, drawn from the first step's shape,
    for every step (and every later call until ``reset()``)."""

    def __init__(self, p: float = 0.5):
        super().__init__(p)


class MultiStepDropout2d(_MultiStepMask, Dropout2d):
    """:class:`Dropout2d` for a whole sequence ``[T, N, C, H, W]``: one channel mask for every step."""

    def __init__(self, p: float = 0.5):
        super().__init__(p)


# ----------------------------------------------------------------------------------------------------
# Stateful single-step layers
# ----------------------------------------------------------------------------------------------------


class SynapseFilter(MemoryModule):
    """A synapse's current, one step per call: I[t] = I[t−1] − (1 − S[t])·I[t−1]/tau + S[t].

    A spike sets the current up by one, and without one it decays with time constant tau.

    Args:
        tau: the time constant (> 1).
        learnable: learn tau, as w with 1/tau = sigmoid(w).
    """

    def __init__(self, tau: float = 100.0, learnable: bool = False):
        super().__init__()
        self.register_memory('out_i', 0.0)
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 1:
            raise ValueError(f"tau must be a number > 1, got {tau!r}")
        self.learnable = bool(learnable)
        if self.learnable:
            self.w = nn.Parameter(torch.as_tensor(-math.log(tau - 1)))
        else:
            self.tau = float(tau)
        self.reset()

    def extra_repr(self) -> str:
        tau = 1.0 / self.w.detach().sigmoid() if self.learnable else self.tau
        return f"tau={tau}, learnable={self.learnable}"

    def forward(self, in_spikes: torch.Tensor) -> torch.Tensor:
        inv_tau = self.w.sigmoid() if self.learnable else 1.0 / self.tau
        self.out_i = self.out_i - (1 - in_spikes) * self.out_i * inv_tau + in_spikes
        return self.out_i


class NeuNorm(MemoryModule):
    """Neighbour normalization of spikes ``[N, C, H, W]``, one step per call.

    X[t] = k·X[t−1] + (1 − k)/C² · Σ_c S[t]; the output is S[t] − w·X[t].

    Args:
        in_channels, height, width: the shape of one sample.
        k: the decay of X.
        shared_across_channels: one weight map for all channels instead of one per channel.
    """

    def __init__(self, in_channels: int, height: int, width: int, k: float = 0.9,
                 shared_across_channels: bool = False):
        super().__init__()
        self.register_memory('x', 0.0)
        self.k0 = k
        self.k1 = (1.0 - k) / in_channels ** 2
        self.w = nn.Parameter(torch.empty(1 if shared_across_channels else in_channels, height, width))
        nn.init.kaiming_uniform_(self.w, a=math.sqrt(5))
        self.reset()

    def extra_repr(self) -> str:
        return f"shape={self.w.shape}"

    def forward(self, in_spikes: torch.Tensor) -> torch.Tensor:
        self.x = self.k0 * self.x + self.k1 * in_spikes.sum(dim=1, keepdim=True)
        return in_spikes - self.w * self.x


class ElementWiseRecurrentContainer(MemoryModule):
    """Feeds a module's last output back: y[t] = sub_module(f(y[t−1], x[t])), y[−1] = 0.

    Args:
        sub_module: the module (single-step).
        element_wise_function: f, for example ``lambda y, x: y + x``.
    """

    def __init__(self, sub_module: nn.Module, element_wise_function: Callable):
        super().__init__()
        self.register_memory('y', None)
        if not callable(element_wise_function):
            raise TypeError(f"element_wise_function must be callable, got {element_wise_function!r}")
        self.sub_module = sub_module
        self.element_wise_function = element_wise_function
        self.reset()

    def extra_repr(self) -> str:
        return f"element-wise function={self.element_wise_function}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.y is None:
            self.y = torch.zeros_like(x.detach())
        self.y = self.sub_module(self.element_wise_function(self.y, x))
        return self.y


class LinearRecurrentContainer(MemoryModule):
    """Feeds a module's last output back through a linear layer: y[t] = sub_module(rc([x[t], y[t−1]])).

    Args:
        sub_module: the module (single-step), taking in_features and giving out_features.
        in_features, out_features: the sizes of x and y (the last dimension).
        bias: whether ``rc`` has a bias.
    """

    def __init__(self, sub_module: nn.Module, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.register_memory('y', None)
        self.sub_module_out_features = out_features
        self.rc = nn.Linear(in_features + out_features, in_features, bias)
        self.sub_module = sub_module
        self.reset()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.y is None:
            self.y = x.new_zeros((*x.shape[:-1], self.sub_module_out_features))
        self.y = self.sub_module(self.rc(torch.cat((x, self.y), dim=-1)))
        return self.y


class DropConnectLinear(MemoryModule):
    """A linear layer that drops weights (not units) with probability p, then an activation.

    Training: each sample draws its own weight and bias masks at each call (``invariant=False``), or once
    until ``reset()`` (``invariant=True``). Eval: the pre-activation is replaced by a Gaussian with the
    masked layer's mean and variance, and the output is the activation's mean over ``samples_num`` draws.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        p: the probability that a weight is dropped.
        samples_num: draws averaged in eval mode.
        invariant: keep the masks until ``reset()``.
        activation: applied to the output, or None.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, p: float = 0.5,
                 samples_num: int = 1024, invariant: bool = False, activation: nn.Module | None = nn.ReLU()):
        super().__init__()
        self.register_memory('dropped_w', None)
        self.register_memory('dropped_b', None)
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()
        self.p = _check_p(p)
        self.samples_num = samples_num
        self.invariant = invariant
        self.activation = activation
        self.reset()

    def reset_parameters(self) -> None:
        """The initialization of ``nn.Linear``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def drop(self, batch_size: int) -> None:
        """Draw the masks for a batch: ``dropped_w`` [N, out, in], ``dropped_b`` [N, out]."""
        def keep(t: torch.Tensor) -> torch.Tensor:
            return torch.rand((batch_size, *t.shape), dtype=t.dtype, device=t.device) > self.p

        self.dropped_w = self.weight * keep(self.weight)
        if self.bias is not None:
            self.dropped_b = self.bias * keep(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            if not self.invariant or self.dropped_w is None:
                self.drop(x.shape[0])
            y = torch.bmm(self.dropped_w, x.unsqueeze(-1)).squeeze(-1)
            if self.bias is not None:
                y = y + self.dropped_b
            return y if self.activation is None else self.activation(y)
        mean = (1 - self.p) * F.linear(x, self.weight, self.bias)
        bias_sq = None if self.bias is None else self.bias.square()
        var = self.p * (1 - self.p) * F.linear(x.square(), self.weight.square(), bias_sq)
        samples = torch.distributions.normal.Normal(mean, var.sqrt()).sample(torch.Size([self.samples_num]))
        return (samples if self.activation is None else self.activation(samples)).mean(dim=0)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"p={self.p}, invariant={self.invariant}")


class STDPLearner(MemoryModule):
    """Trace-based STDP for an ``nn.Linear``: call ``stdp(s_pre, s_post, linear, lr)`` once per step.

    trace_pre += −trace_pre/tau_pre + s_pre and likewise for the post trace; the weight moves by
    lr·(f_pre(w)·s_pre + f_post(w)·s_post[:, None]).
    """

    def __init__(self, tau_pre: float, tau_post: float, f_pre: Callable, f_post: Callable):
        super().__init__()
        self.register_memory('trace_pre', 0.0)
        self.register_memory('trace_post', 0.0)
        self.tau_pre = tau_pre
        self.tau_post = tau_post
        self.f_pre = f_pre
        self.f_post = f_post
        self.reset()

    @torch.no_grad()
    def stdp(self, s_pre: torch.Tensor, s_post: torch.Tensor, module: nn.Module, learning_rate: float) -> None:
        if not isinstance(module, nn.Linear):
            raise NotImplementedError(f"STDPLearner updates nn.Linear weights only, got {type(module).__name__}")
        self.trace_pre = self.trace_pre - self.trace_pre / self.tau_pre + s_pre
        self.trace_post = self.trace_post - self.trace_post / self.tau_post + s_post
        delta = self.f_pre(module.weight) * s_pre + self.f_post(module.weight) * s_post.unsqueeze(1)
        module.weight += delta * learning_rate


# ----------------------------------------------------------------------------------------------------
# Stateless layers
# ----------------------------------------------------------------------------------------------------


class DCT(nn.Module):
    """The 2-D discrete cosine transform (orthonormal DCT-II) of each kernel_size × kernel_size block
    of the last two dimensions."""

    def __init__(self, kernel_size: int):
        super().__init__()
        i = torch.arange(kernel_size, dtype=torch.float64).unsqueeze(1)
        j = torch.arange(kernel_size, dtype=torch.float64).unsqueeze(0)
        scale = torch.full((kernel_size, 1), math.sqrt(2 / kernel_size), dtype=torch.float64)
        scale[0] = math.sqrt(1 / kernel_size)
        self.kernel = (scale * torch.cos((j + 0.5) * math.pi * i / kernel_size)).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.kernel.shape[0]
        if x.dim() < 2 or x.shape[-2] % n or x.shape[-1] % n:
            raise ValueError(f"DCT(kernel_size={n}) expects the last two dimensions to be multiples of {n}, "
                             f"got shape {tuple(x.shape)}")
        k = self.kernel.to(x)
        blocks = x.reshape(-1, x.shape[-2], x.shape[-1])
        out = torch.empty_like(blocks)
        for i in range(0, x.shape[-2], n):
            for j in range(0, x.shape[-1], n):
                out[:, i:i + n, j:j + n] = k @ blocks[:, i:i + n, j:j + n] @ k.t()
        return out.view(x.shape)


class AXAT(nn.Module):
    """A·X·Aᵀ for each matrix X of the last two dimensions (A is [out_features, in_features], learned)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.A = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.A @ x.reshape(-1, x.shape[-2], x.shape[-1]) @ self.A.t()
        return y.view(*x.shape[:-2], *y.shape[-2:])


class ChannelsPool(nn.Module):
    """Pools over the channel dimension of ``[N, C, *]`` with a 1-D pool (``nn.MaxPool1d``, ``nn.AvgPool1d``)."""

    def __init__(self, pool: nn.Module):
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(x.flatten(2).permute(0, 2, 1)).permute(0, 2, 1)
        return y.reshape(x.shape[0], -1, *x.shape[2:])


class PrintShapeModule(nn.Module):
    """Prints ``ext_str`` and the input's shape, and returns the input: a probe for building nets."""

    def __init__(self, ext_str: str = "PrintShapeModule"):
        super().__init__()
        self.ext_str = ext_str

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print(self.ext_str, x.shape)
        return x


class ConvBatchNorm2d(nn.Module):
    """A bias-free ``nn.Conv2d`` followed by ``nn.BatchNorm2d`` (``conv``, ``bn``), with the fusion helpers
    of :mod:`flashspike.functional` as methods."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, padding_mode: str = "zeros", eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, groups=groups, bias=False, padding_mode=padding_mode)
        self.bn = nn.BatchNorm2d(out_channels, eps=eps, momentum=momentum, affine=affine,
                                 track_running_stats=track_running_stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    def get_fused_weight(self) -> torch.Tensor:
        return functional.fused_conv2d_weight_of_convbn2d(self.conv, self.bn)

    def get_fused_bias(self) -> torch.Tensor:
        return functional.fused_conv2d_bias_of_convbn2d(self.conv, self.bn)

    def scale_fused_weight(self, k=None, b=None) -> None:
        functional.scale_fused_conv2d_weight_of_convbn2d(self.conv, self.bn, k, b)

    def scale_fused_bias(self, k=None, b=None) -> None:
        functional.scale_fused_conv2d_bias_of_convbn2d(self.conv, self.bn, k, b)

    def get_fused_conv(self) -> nn.Conv2d:
        return functional.fuse_convbn2d(self.conv, self.bn)


class _ThresholdDependentBatchNorm(_BatchNorm):
    """Batch normalization over T and N of ``[T, N, C, *]``, its weight starting at alpha·v_th (tdBN)."""

    _step_dims: tuple = ()
    _layout = ""

    def __init__(self, alpha: float, v_th: float, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.affine:
            raise ValueError("threshold-dependent batch normalization needs affine=True")
        self.alpha = alpha
        self.v_th = v_th
        nn.init.constant_(self.weight, alpha * v_th)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        # x is the sequence with T merged into N.
        if x.dim() - 1 not in self._step_dims:
            raise ValueError(f"{type(self).__name__} expects x_seq of shape {self._layout}, "
                             f"got one with {x.dim() + 1} dimensions")

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        _check_sequence(x_seq, type(self).__name__)
        return super().forward(x_seq.flatten(0, 1)).view(x_seq.shape)


class MultiStepThresholdDependentBatchNorm1d(_ThresholdDependentBatchNorm):
    """tdBN for ``[T, N, C]`` or ``[T, N, C, L]``: ``(alpha, v_th, num_features, eps, momentum, ...)``."""

    _step_dims = (1, 2)
    _layout = "[T, N, C] or [T, N, C, L]"


class MultiStepThresholdDependentBatchNorm2d(_ThresholdDependentBatchNorm):
    """tdBN for ``[T, N, C, H, W]``: ``(alpha, v_th, num_features, eps, momentum, ...)``."""

    _step_dims = (3,)
    _layout = "[T, N, C, H, W]"


class MultiStepThresholdDependentBatchNorm3d(_ThresholdDependentBatchNorm):
    """tdBN for ``[T, N, C, D, H, W]``: ``(alpha, v_th, num_features, eps, momentum, ...)``."""

    _step_dims = (4,)
    _layout = "[T, N, C, D, H, W]"


class MultiStepTemporalWiseAttention(nn.Module):
    """Temporal-wise attention: scales each time step of ``[T, N, *]`` by a learned score in (0, 1).

    The score of step t is sigmoid(MLP(avg over the step) + MLP(max over the step)), with one MLP
    T -> T // reduction -> T shared by both.

    Args:
        T: the number of time steps (fixed).
        reduction: the MLP's reduction (at most T).
        dimension: 2 for ``[T, N, M]`` inputs, 4 for ``[T, N, C, H, W]``.
    """

    def __init__(self, T: int, reduction: int = 16, dimension: int = 4):
        super().__init__()
        if dimension not in (2, 4):
            raise ValueError(f"dimension must be 2 ([T, N, M]) or 4 ([T, N, C, H, W]), got {dimension!r}")
        if not T >= reduction:
            raise ValueError(f"reduction ({reduction}) cannot be greater than T ({T})")
        self.dimension = dimension
        if dimension == 2:
            self.avg_pool, self.max_pool = nn.AdaptiveAvgPool1d(1), nn.AdaptiveMaxPool1d(1)
        else:
            self.avg_pool, self.max_pool = nn.AdaptiveAvgPool3d(1), nn.AdaptiveMaxPool3d(1)
        self.sharedMLP = nn.Sequential(nn.Linear(T, T // reduction, bias=False), nn.ReLU(),
                                       nn.Linear(T // reduction, T, bias=False))
        self.sigmoid = nn.Sigmoid()

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if x_seq.dim() != self.dimension + 1:
            raise ValueError(f"MultiStepTemporalWiseAttention(dimension={self.dimension}) expects x_seq of shape "
                             f"{'[T, N, M]' if self.dimension == 2 else '[T, N, C, H, W]'}, got {tuple(x_seq.shape)}")
        x = x_seq.transpose(0, 1)  # [N, T, *]: T becomes the pools' channel dimension
        n, t = x.shape[:2]
        scores = self.sigmoid(self.sharedMLP(self.avg_pool(x).view(n, t)) + self.sharedMLP(self.max_pool(x).view(n, t)))
        return (x * scores.view(n, t, *([1] * (x.dim() - 2)))).transpose(0, 1)
