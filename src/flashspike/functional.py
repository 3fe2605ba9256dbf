"""Helpers that act on a whole network, spike-train utilities, losses and conv-BN fusion."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import backends
from .neuron import BaseNode

__all__ = [
    "reset_net", "detach_net", "set_backend", "seq_to_ann_forward", "multi_step_forward",
    "spike_cluster", "spike_similar_loss", "kernel_dot_product", "set_threshold_margin", "redundant_one_hot",
    "first_spike_index", "temporal_efficient_training_cross_entropy", "kaiming_normal_conv_linear_weight",
    "fused_conv2d_weight_of_convbn2d", "fused_conv2d_bias_of_convbn2d", "scale_fused_conv2d_weight_of_convbn2d",
    "scale_fused_conv2d_bias_of_convbn2d", "fuse_convbn2d", "switch_module_classes",
]


# ----------------------------------------------------------------------------------------------------
# Whole-network helpers
# ----------------------------------------------------------------------------------------------------


def _call_on_every_module(net: nn.Module, method: str) -> None:
    # Looked up on the class (a method) or the instance's own attributes: ``getattr(module, method)``
    # on a module without it goes through nn.Module.__getattr__ and builds an AttributeError, which
    # costs microseconds per module of every step's reset.
    for module in net.modules():
        fn = module.__dict__.get(method)
        if fn is None:
            fn = getattr(type(module), method, None)
            if callable(fn):
                fn(module)
        elif callable(fn):
            fn()


def switch_module_classes(net: nn.Module, classes: dict, enabled: bool = True) -> int:
    """Give every module of ``net`` whose class is exactly a key of ``classes`` (not a subclass) the
    class it maps to, or with ``enabled=False`` every module of a class mapped to its key class back;
    returns how many were switched. Only the class changes: parameters, buffers, hooks, ``state_dict``
    keys stay (the layers of :mod:`flashspike.memory` are switched on this way)."""
    if not enabled:
        classes = {switched: plain for plain, switched in classes.items()}
    switched = 0
    for module in net.modules():
        target = classes.get(type(module))
        if target is not None:
            module.__class__ = target
            switched += 1
    return switched


def reset_net(net: nn.Module) -> None:
    """Reset every stateful module in ``net``: each module that has a ``reset()`` method, as the
    flashspike neurons, stateful layers and encoders (and SpikingJelly-style custom modules) do.

    Call it after each batch: a neuron otherwise continues from the potential the last batch left.
    """
    _call_on_every_module(net, "reset")


def detach_net(net: nn.Module) -> None:
    """Cut the autograd graph behind every stateful module's state: calls ``detach()`` on each module
    of ``net`` that has one. For truncated backpropagation through time: train on a long sequence in
    chunks, calling it between chunks, so the state carries over but the gradient stops at the cut."""
    _call_on_every_module(net, "detach")


def set_backend(net: nn.Module, backend: str) -> int:
    """Set ``backend`` on every multi-step neuron of ``net``; returns how many were changed."""
    backends.validate_name(backend)
    count = 0
    for module in net.modules():
        if isinstance(module, BaseNode) and hasattr(module, "backend"):
            module.backend = backend
            count += 1
    return count


def set_threshold_margin(output_layer: nn.Module, label_one_hot: torch.Tensor, eval_threshold: float = 1.0,
                         threshold0: float = 0.9, threshold1: float = 1.1) -> None:
    """Train the output layer with a margin: in training mode its threshold becomes a tensor shaped like
    ``label_one_hot``, ``threshold1`` for the true class and ``threshold0`` for the others; in eval mode
    it is ``eval_threshold``. The layer must accept a tensor ``v_threshold``: flashspike's neurons do not
    (their threshold is one number, compiled into their kernels), and are refused in training mode."""
    if output_layer.training:
        if isinstance(output_layer, BaseNode):
            raise TypeError(
                f"set_threshold_margin gives the output layer a threshold per neuron and sample (a tensor), and "
                f"flashspike's {type(output_layer).__name__} takes one number as v_threshold: per-neuron thresholds "
                "are not supported. Train without the margin, or give the output layer a module of your own that "
                "takes a tensor v_threshold."
            )
        threshold = torch.ones_like(label_one_hot) * threshold0
        threshold[label_one_hot == 1] = threshold1
        output_layer.v_threshold = threshold
    else:
        output_layer.v_threshold = eval_threshold


# ----------------------------------------------------------------------------------------------------
# Spike trains and losses
# ----------------------------------------------------------------------------------------------------


def first_spike_index(spikes: torch.Tensor) -> torch.Tensor:
    """A bool tensor, True only where each spike train (the last dimension is time) spikes first.

    ``spikes`` holds 0s and 1s, shaped ``[*, T]``.
    """
    with torch.no_grad():
        # The double cumulative sum is 1 exactly at the first spike: before it 0, after it > 1.
        return spikes.cumsum(dim=-1).cumsum(dim=-1) == 1


def redundant_one_hot(labels: torch.Tensor, num_classes: int, n: int) -> torch.Tensor:
    """One-hot codes with ``n`` output neurons per class: ``[N] -> [N, num_classes * n]`` (default dtype),
    class c owning neurons ``c*n .. c*n + n − 1``."""
    if labels.dim() != 1:
        raise ValueError(f"labels must be a 1-D tensor of class indices, got shape {tuple(labels.shape)}")
    codes = F.one_hot(labels, num_classes).repeat_interleave(n, dim=1)
    return codes.to(torch.get_default_dtype())


def kernel_dot_product(x: torch.Tensor, y: torch.Tensor, kernel: str = "linear", *args) -> torch.Tensor:
    """The kernel matrix ``K[i, j] = k(x[i], y[j])`` of two sets of vectors ``[N, D]`` and ``[M, D]``.

    kernel: 'linear' (x·y), 'polynomial' ((x·y)^d, args: d), 'sigmoid' (sigmoid(α·x·y), args: α) or
    'gaussian' (exp(−‖x − y‖² / (2σ²)), args: σ).
    """
    if kernel == "linear":
        return x.mm(y.t())
    if kernel == "polynomial":
        return x.mm(y.t()).pow(args[0])
    if kernel == "sigmoid":
        return torch.sigmoid(args[0] * x.mm(y.t()))
    if kernel == "gaussian":
        sigma = args[0]
        sq_dist = x.square().sum(dim=1, keepdim=True) + y.square().sum(dim=1).unsqueeze(0) - 2 * x.mm(y.t())
        return torch.exp(-sq_dist / (2 * sigma * sigma))
    raise NotImplementedError(f"kernel must be 'linear', 'polynomial', 'sigmoid' or 'gaussian', got {kernel!r}")


def spike_similar_loss(spikes: torch.Tensor, labels: torch.Tensor, kernel_type: str = "linear",
                       loss_type: str = "mse", *args) -> torch.Tensor:
    """A loss that makes the spike trains of samples with a shared label similar and the others not.

    spikes: ``[N, *]`` (flattened per sample); labels: ``[N, C]`` multi-hot. The target similarity of
    samples i, j is 1 if they share a label, else 0; the actual one is the kernel of their spike trains
    (cosine similarity for 'linear'). loss_type: 'mse', 'l1' or 'bce'.
    """
    spikes = spikes.flatten(start_dim=1)
    sim_p = kernel_dot_product(spikes, spikes, kernel_type, *args)
    if kernel_type == "linear":
        norm = spikes.norm(p=2, dim=1, keepdim=True)
        sim_p = sim_p / (norm.mm(norm.t()) + 1e-8)
    labels = labels.float()
    sim = labels.mm(labels.t()).clamp_max(1)
    losses = {"mse": F.mse_loss, "l1": F.l1_loss, "bce": F.binary_cross_entropy}
    if loss_type not in losses:
        raise NotImplementedError(f"loss_type must be 'mse', 'l1' or 'bce', got {loss_type!r}")
    return losses[loss_type](sim_p, sim)


def temporal_efficient_training_cross_entropy(x_seq: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The TET loss: the cross entropy of each time step's output, averaged over T.

    x_seq: ``[T, N, C]`` (or ``[T, N, C, *]``) logits; target: ``[N]`` (or ``[N, *]``) class indices.
    """
    if x_seq.dim() < 3:
        raise ValueError(f"x_seq must have shape [T, N, C, *], got {tuple(x_seq.shape)}")
    # cross_entropy takes [N, C, *]: put T among the trailing dimensions and repeat the target over it.
    logits = x_seq.movedim(0, 2)  # [N, C, T, *]
    T = x_seq.shape[0]
    target = target.unsqueeze(1).expand(target.shape[0], T, *target.shape[1:])
    return F.cross_entropy(logits, target)


def spike_cluster(v: torch.Tensor, v_threshold, T_in: int):
    """Clusters of spikes in each neuron's train and the time steps to push up or down (for training
    spike timing). v: the potentials ``[T, N]``; a neuron spikes where v ≥ v_threshold; spikes at most
    ``T_in`` steps apart belong to one cluster.

    Returns ``(N_o, k_positive, k_negative)``: the number of clusters per neuron ``[N]``, and bool masks
    ``[T, N]``: ``k_positive`` at the step where v is highest among steps not within T_in of a spike
    (where a new cluster should be made), ``k_negative`` at the last spike of the smallest cluster
    (to be removed). Neurons without any such candidate get no positive step.
    """
    with torch.no_grad():
        T = v.shape[0]
        spike = v >= v_threshold
        far = float(2 * T_in)
        n_clusters = torch.zeros_like(v[0])
        size = torch.full_like(v[0], 2 * T)      # the size of the cluster being counted
        min_size = torch.full_like(v[0], 2 * T)  # the smallest finished cluster ...
        min_end = torch.full_like(v[0], 2 * T)   # ... and the step of its last spike
        last = torch.full_like(v[0], -far)       # the last spike so far
        for t in range(T):
            new = spike[t] & (t - last > T_in)
            smaller = new & (size < min_size)  # a new cluster closes the one before
            min_end[smaller] = last[smaller]
            min_size[smaller] = size[smaller]
            size[new] = 1
            n_clusters[new] += 1
            size[spike[t] & ~new] += 1
            last[spike[t]] = t
        smaller = size < min_size
        min_size[smaller] = size[smaller]
        min_end[smaller] = last[smaller]

        # Candidates for a new cluster: steps neither spiking nor within T_in of a spike.
        v_min = v.min().item()
        candidates = v.clone()
        near = spike.clone()
        last = torch.full_like(v[0], -far)
        for t in range(T):
            near[t] |= t - last <= T_in
            last[spike[t]] = t
        following = torch.full_like(v[0], far + T)
        for t in range(T - 1, -1, -1):
            near[t] |= following - t <= T_in
            following[spike[t]] = t
        candidates[near] = v_min
        steps = torch.arange(T, device=v.device).unsqueeze(1)
        k_positive = steps == candidates.argmax(dim=0)
        has_candidate = (candidates.max(dim=0)[0] != v_min) | (v.max(dim=0)[0] == v_min)
        k_negative = steps == min_end.long()
        return n_clusters, k_positive & has_candidate, k_negative


# ----------------------------------------------------------------------------------------------------
# Initialization and conv-BN fusion
# ----------------------------------------------------------------------------------------------------


def kaiming_normal_conv_linear_weight(net: nn.Module) -> None:
    """Kaiming-normal initialization (a = √5) of the weight of every Conv1d/2d/3d and Linear in ``net``."""
    for m in net.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=math.sqrt(5))


def _check_convbn(conv2d: nn.Conv2d, bn2d: nn.BatchNorm2d) -> None:
    if conv2d.bias is not None:
        raise ValueError("conv-BN fusion expects a convolution without bias (bias=False)")
    if conv2d.out_channels != bn2d.num_features:
        raise ValueError(f"the convolution gives {conv2d.out_channels} channels, the batch norm takes {bn2d.num_features}")


def _bn_scale(bn2d: nn.BatchNorm2d) -> torch.Tensor:
    return bn2d.weight / (bn2d.running_var + bn2d.eps).sqrt()


def fused_conv2d_weight_of_convbn2d(conv2d: nn.Conv2d, bn2d: nn.BatchNorm2d) -> torch.Tensor:
    """The weight of one convolution equal to ``bn2d(conv2d(x))`` in eval mode: W·γ/√(var + eps) per
    output channel."""
    _check_convbn(conv2d, bn2d)
    return conv2d.weight * _bn_scale(bn2d).view(-1, 1, 1, 1)


def fused_conv2d_bias_of_convbn2d(conv2d: nn.Conv2d, bn2d: nn.BatchNorm2d) -> torch.Tensor:
    """The bias of that fused convolution: β − mean·γ/√(var + eps)."""
    _check_convbn(conv2d, bn2d)
    return bn2d.bias - bn2d.running_mean * _bn_scale(bn2d)


@torch.no_grad()
def scale_fused_conv2d_weight_of_convbn2d(conv2d: nn.Conv2d, bn2d: nn.BatchNorm2d, k=None, b=None) -> None:
    """Change the conv-BN pair in place so that the fused weight becomes k·W + b·γ/√(var + eps): the
    convolution's weight becomes k·W + b."""
    _check_convbn(conv2d, bn2d)
    if k is not None:
        conv2d.weight.mul_(k)
    if b is not None:
        conv2d.weight.add_(b)


@torch.no_grad()
def scale_fused_conv2d_bias_of_convbn2d(conv2d: nn.Conv2d, bn2d: nn.BatchNorm2d, k=None, b=None) -> None:
    """Change the conv-BN pair in place so that the fused bias becomes k·bias + b: β and the running
    mean are scaled by k, then b is added to β."""
    _check_convbn(conv2d, bn2d)
    if k is not None:
        bn2d.bias.mul_(k)
        bn2d.running_mean.mul_(k)
    if b is not None:
        bn2d.bias.add_(b)


@torch.no_grad()
def fuse_convbn2d(conv2d: nn.Conv2d, bn2d: nn.BatchNorm2d, k=None, b=None) -> nn.Conv2d:
    """A new ``nn.Conv2d`` (with bias) that computes ``bn2d(conv2d(x))`` of the eval-mode pair.
    (``k`` and ``b`` are accepted for SpikingJelly's signature and unused, as there.)"""
    fused = nn.Conv2d(conv2d.in_channels, conv2d.out_channels, conv2d.kernel_size, stride=conv2d.stride,
                      padding=conv2d.padding, dilation=conv2d.dilation, groups=conv2d.groups, bias=True,
                      padding_mode=conv2d.padding_mode)
    fused.weight.data = fused_conv2d_weight_of_convbn2d(conv2d, bn2d)
    fused.bias.data = fused_conv2d_bias_of_convbn2d(conv2d, bn2d)
    return fused


def _as_module_chain(modules, who: str) -> tuple:
    """One module, or a list/tuple/Sequential of them, as a tuple applied in order."""
    chain = tuple(modules) if isinstance(modules, (list, tuple, nn.Sequential)) else (modules,)
    for module in chain:
        if not callable(module):
            raise TypeError(f"{who} expects a module or a list/tuple/nn.Sequential of modules, got {module!r}")
    return chain


def _check_seq(x_seq, who: str) -> None:
    if not isinstance(x_seq, torch.Tensor):
        raise TypeError(f"{who} expects x_seq as a tensor of shape [T, N, *], got {type(x_seq).__name__}")
    if x_seq.dim() < 2:
        raise ValueError(
            f"{who} expects x_seq of shape [T, N, *] (at least 2 dimensions), got shape {tuple(x_seq.shape)}"
        )


def seq_to_ann_forward(x_seq: torch.Tensor, stateless_module) -> torch.Tensor:
    """Run stateless modules on every time step at once: ``[T, N, *] -> [T*N, *] -> modules -> [T, N, *]``.

    ``stateless_module`` is one module (a convolution, a batch norm, a pool) or a list, tuple or
    ``nn.Sequential`` of them, applied in order. The modules must keep the batch dimension.
    """
    _check_seq(x_seq, "seq_to_ann_forward")
    chain = _as_module_chain(stateless_module, "seq_to_ann_forward")
    T, N = x_seq.shape[0], x_seq.shape[1]
    y = x_seq.flatten(0, 1)
    for module in chain:
        y = module(y)
    if y.dim() == 0 or y.shape[0] != T * N:
        raise ValueError(
            f"seq_to_ann_forward: the modules must keep the batch dimension T*N = {T * N}, "
            f"but returned shape {tuple(y.shape)}"
        )
    return y.view(T, N, *y.shape[1:])


def multi_step_forward(x_seq: torch.Tensor, single_step_module) -> torch.Tensor:
    """Run single-step modules once per time step and stack the results: ``[T, N, *] -> [T, N, *]``.

    ``single_step_module`` is one module (for example :class:`flashspike.neuron.IFNode`) or a list,
    tuple or ``nn.Sequential`` of them; at each step the whole chain runs before the next step starts,
    so a stateful module sees the steps in order.
    """
    _check_seq(x_seq, "multi_step_forward")
    chain = _as_module_chain(single_step_module, "multi_step_forward")
    if x_seq.shape[0] == 0:
        raise ValueError("multi_step_forward needs at least one time step, got x_seq of shape "
                         f"{tuple(x_seq.shape)}")
    y_seq = []
    for x in x_seq:
        for module in chain:
            x = module(x)
        y_seq.append(x)
    return torch.stack(y_seq)
