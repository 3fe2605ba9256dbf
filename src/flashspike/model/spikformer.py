"""Spikformer: Zhou et al., "Spikformer: When Spiking Neural Network Meets Transformer"
(https://arxiv.org/abs/2209.15425), on flashspike's multi-step neurons.

A spiking patch stem (four conv-BN-LIF stages and a conv-BN-LIF relative position encoding added to
its input), then ``depths`` encoder blocks, each a spiking self-attention (SSA) and a spiking MLP with
residual additions, then the mean over tokens and a linear head applied at every time step:
``[T, N, C, H, W]`` (or a static image ``[N, C, H, W]`` repeated over ``T``) ``-> [T, N, num_classes]``.

SSA on spikes Q, K, V has no softmax: it is ``s · Q Kᵀ V`` (s = 0.125) per head, computed as
``Q (s · Kᵀ V)`` on token-major ``[L, head_dim]`` tensors, whose inner product is ``head_dim x head_dim``
instead of ``L x L``; its result is spiked again by a neuron of threshold 0.5.

The encoder keeps its tokens ``[T, N, C, L]`` token-major in memory (``[T, N, L, C]``, what flattening a
channels_last image gives), and its 1x1 Conv1d-BN layers run on the T·N·L tokens as rows
(:func:`pointwise_on_tokens`): no layer copies its input into another layout, and cuDNN gets NHWC
tensors. Tokens that arrive channel-major are copied to token-major once, as a block starts.

Class names, arguments, defaults and ``state_dict`` keys are those of SpikingJelly 2.x's
``activation_based.model.spikformer`` (its neurons' positions keep the paper's options: LIF with
``tau=2.0, detach_reset=True``, the attention's neuron at ``v_threshold=0.5``), so a checkpoint of either
loads into the other. Every keyword argument that is not the model's goes to every neuron, e.g.
``backend='triton'``. SpikingJelly's distributed-training configurations are not part of this module.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import layer
from ..memory.batchnorm_recompute import normalized_in_neuron
from . import token_attention
from .common import head_dim, image_to_sequence, make_multi_step_neuron, mean_over_tokens

__all__ = [
    "Spikformer", "spikformer_cifar10", "spikformer_s", "spikformer_ti", "SpikformerConv2dBN",
    "SpikformerConv2dBNLIF", "SpikformerPatchStem", "SpikformerMLP", "SpikformerBlock", "SpikingSelfAttention",
    "token_major", "pointwise_on_tokens",
]

# The paper's neuron options at each position (kept when ``spiking_neuron`` is None, unless overridden).
LIF_OPTIONS = {"tau": 2.0, "detach_reset": True}
ATTENTION_LIF_OPTIONS = {"tau": 2.0, "v_threshold": 0.5, "detach_reset": True}
PATCH_SIZES = (4, 16)


def token_major(tokens: torch.Tensor) -> torch.Tensor:
    """Tokens ``[T, N, C, L]`` laid out token-major (``[T, N, L, C]`` in memory): themselves when they are,
    else a copy."""
    return tokens.transpose(2, 3).contiguous().transpose(2, 3)


def pointwise_on_tokens(layers: nn.Sequential, tokens: torch.Tensor) -> torch.Tensor:
    """A kernel-1 Conv1d then a BatchNorm1d (``layers``, a :class:`~flashspike.layer.SeqToANNContainer`)
    on tokens ``[T, N, C, L]``, run on the T·N·L tokens as rows: ``-> [T, N, C', L]``, token-major.

    The values are the container's: a kernel-1 convolution acts on each token alone, and the BatchNorm's
    statistics run over the same T·N·L values per channel. Rows, because PyTorch copies a Conv1d input
    that is token-major (a permuted 3-d tensor) to channel-major first, and cuDNN then converts a
    channel-major half-precision input to NHWC and its output back. Rows ``[T·N·L, C, 1]`` are both
    layouts at once; their unit dimension's stride C makes PyTorch hand cuDNN NHWC tensors. The
    BatchNorm reads ``[T·N·L, C']`` rows, which PyTorch's CUDA batch norm reads in place (it copies a
    3-d input that is not channel-major). Tokens that are not token-major are copied to rows first.

    The rows leave the convolution through a transpose to ``[T·N·L, 1, C']``, not a squeeze: the
    gradient then comes back with strides (C', 1, C'), which cuDNN's convolution backward takes as NHWC,
    as its input is. Through a squeeze it would come back as (C', 1, 1), whose layout PyTorch reads as
    channel-major, and be copied to NHWC whole.
    """
    conv, norm = layers
    T, N, C, L = tokens.shape
    rows = tokens.transpose(2, 3).reshape(T * N * L, 1, C).transpose(1, 2)  # [T·N·L, C, 1], strides (C, 1, C)
    out = norm(conv(rows).transpose(1, 2).reshape(T * N * L, -1))  # [T·N·L, C']
    return out.view(T, N, L, out.shape[1]).transpose(2, 3)


class SpikformerConv2dBN(nn.Module):
    """Convolution without bias and BatchNorm (then a 3x3 max-pool of stride 2 when ``pool``) on every
    time step at once: ``[T, N, C, H, W] -> [T, N, out_channels, H', W']``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 pool: bool = False):
        super().__init__()
        modules = [nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False),
                   nn.BatchNorm2d(out_channels)]
        if pool:
            modules.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.block = layer.SeqToANNContainer(*modules)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return self.block(x_seq)


class SpikformerConv2dBNLIF(nn.Module):
    """:class:`SpikformerConv2dBN`, then a multi-step neuron (LIF with the paper's options by default)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 pool: bool = False, spiking_neuron=None, **kwargs):
        super().__init__()
        self.conv_bn = SpikformerConv2dBN(in_channels, out_channels, kernel_size, stride, padding, pool)
        self.neuron = make_multi_step_neuron(spiking_neuron, kwargs, LIF_OPTIONS)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        # (the BatchNorm's output goes to the neuron alone where no max-pool follows it)
        with normalized_in_neuron(self.conv_bn.block[-1], self.neuron):
            return self.neuron(self.conv_bn(x_seq))


class SpikformerPatchStem(nn.Module):
    """Image to spiking tokens: four 3x3 conv-BN-LIF stages of ``embed_dims`` / 8, / 4, / 2, / 1 channels,
    each halving the image with a max-pool (``patch_size=16``: all four; ``patch_size=4``: the last two),
    then ``x + RPE(x)`` with the relative position encoding RPE a fifth conv-BN-LIF."""

    def __init__(self, img_size_h: int = 224, img_size_w: int = 224, patch_size: int = 16, in_channels: int = 3,
                 embed_dims: int = 256, spiking_neuron=None, **kwargs):
        super().__init__()
        if patch_size not in PATCH_SIZES:
            raise ValueError(f"patch_size must be one of {PATCH_SIZES} (the stem halves the image 2 or 4 times), "
                             f"got {patch_size!r}")
        self.image_size = (img_size_h, img_size_w)
        self.patch_size = patch_size
        self.embed_dims = embed_dims
        widths = [embed_dims // 8, embed_dims // 4, embed_dims // 2, embed_dims]
        first_pooled = {4: 2, 16: 0}[patch_size]  # 4x4 patches: the image is halved twice, 16x16: four times
        stages, channels = [], in_channels
        for index, width in enumerate(widths):
            stages.append(SpikformerConv2dBNLIF(channels, width, 3, 1, 1, pool=index >= first_pooled,
                                                spiking_neuron=spiking_neuron, **kwargs))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.positional_encoding = SpikformerConv2dBNLIF(embed_dims, embed_dims, 3, 1, 1, pool=False,
                                                         spiking_neuron=spiking_neuron, **kwargs)
        self.grid_size = (img_size_h // patch_size, img_size_w // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        x_seq = self.stages(x_seq)
        return self.positional_encoding(x_seq) + x_seq


class SpikformerMLP(nn.Module):
    """Two 1x1 Conv1d-BN-LIF layers on tokens ``[T, N, C, L]``: ``in_features -> hidden_features ->
    out_features``; the output is token-major (:func:`pointwise_on_tokens`)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int, spiking_neuron=None, **kwargs):
        super().__init__()
        self.fc1 = layer.SeqToANNContainer(nn.Conv1d(in_features, hidden_features, kernel_size=1, bias=False),
                                           nn.BatchNorm1d(hidden_features))
        self.neuron1 = make_multi_step_neuron(spiking_neuron, kwargs, LIF_OPTIONS)
        self.fc2 = layer.SeqToANNContainer(nn.Conv1d(hidden_features, out_features, kernel_size=1, bias=False),
                                           nn.BatchNorm1d(out_features))
        self.neuron2 = make_multi_step_neuron(spiking_neuron, kwargs, LIF_OPTIONS)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        with normalized_in_neuron(self.fc1[1], self.neuron1), normalized_in_neuron(self.fc2[1], self.neuron2):
            return self.neuron2(pointwise_on_tokens(self.fc2, self.neuron1(pointwise_on_tokens(self.fc1, x_seq))))


class SpikingSelfAttention(nn.Module):
    """Spiking self-attention on tokens ``[T, N, dim, L]``: Q, K, V are spikes of one 1x1 Conv1d-BN
    (``3·dim`` channels, q then k then v, each head's channels together); per head the neuron ``attn_lif``
    (threshold 0.5) fires on ``scale · Q Kᵀ V``; a 1x1 Conv1d-BN-LIF projects the heads back to ``dim``.
    The output is token-major (:func:`pointwise_on_tokens`)."""

    # Set by flashspike.memory.spike_bits.store_spike_inputs_in_bits: Q, K and V kept in bits for the backward.
    keeps_spike_operands_in_bits = False

    def __init__(self, dim: int, num_heads: int = 8, spiking_neuron=None, **kwargs):
        super().__init__()
        self.dim, self.num_heads, self.head_dim = dim, num_heads, head_dim(dim, num_heads)
        self.scale = 0.125
        self.qkv_conv_bn = layer.SeqToANNContainer(nn.Conv1d(dim, 3 * dim, kernel_size=1, bias=False),
                                                   nn.BatchNorm1d(3 * dim))
        self.qkv_lif = make_multi_step_neuron(spiking_neuron, kwargs, LIF_OPTIONS)
        self.attn_lif = make_multi_step_neuron(spiking_neuron, kwargs, ATTENTION_LIF_OPTIONS)
        self.proj_conv_bn = layer.SeqToANNContainer(nn.Conv1d(dim, dim, kernel_size=1, bias=False),
                                                    nn.BatchNorm1d(dim))
        self.proj_lif = make_multi_step_neuron(spiking_neuron, kwargs, LIF_OPTIONS)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if x_seq.dim() != 4:
            raise ValueError(f"SpikingSelfAttention expects tokens of shape [T, N, C, L], got {tuple(x_seq.shape)}")
        with normalized_in_neuron(self.qkv_conv_bn[1], self.qkv_lif):
            qkv = self.qkv_lif(pointwise_on_tokens(self.qkv_conv_bn, x_seq))  # [T, N, 3·C, L], token-major
        attention = token_attention.attention_product(qkv, self.num_heads, self.scale,
                                                      in_bits=self.keeps_spike_operands_in_bits)
        attention = self.attn_lif(attention)
        with normalized_in_neuron(self.proj_conv_bn[1], self.proj_lif):
            return self.proj_lif(pointwise_on_tokens(self.proj_conv_bn, attention))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"


class SpikformerBlock(nn.Module):
    """One encoder block on ``[T, N, C, H, W]``: tokens ``x + SSA(x)``, then ``x + MLP(x)`` (hidden width
    ``mlp_ratio·dim``). The output is channels_last (its tokens token-major, see :func:`token_major`)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, spiking_neuron=None, **kwargs):
        super().__init__()
        # With the default neuron, the attention keeps the paper's tau and detach_reset whatever the
        # caller gives (as SpikingJelly 2.x's block does); other options reach it.
        attention_kwargs = kwargs if spiking_neuron is not None else {
            name: value for name, value in kwargs.items() if name not in ("tau", "detach_reset")}
        self.attn = SpikingSelfAttention(dim, num_heads, spiking_neuron=spiking_neuron, **attention_kwargs)
        self.mlp = SpikformerMLP(dim, int(dim * mlp_ratio), dim, spiking_neuron=spiking_neuron, **kwargs)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if x_seq.dim() != 5:
            raise ValueError(f"SpikformerBlock expects x_seq of shape [T, N, C, H, W], got {tuple(x_seq.shape)}")
        tokens = token_major(x_seq.flatten(3))  # a view of a channels_last x_seq
        tokens = tokens + self.attn(tokens)
        tokens = tokens + self.mlp(tokens)
        return tokens.reshape(x_seq.shape)


class Spikformer(nn.Module):
    """Spikformer: ``[T, N, in_channels, H, W]`` or a static ``[N, in_channels, H, W]`` (repeated over
    ``T`` steps) ``-> [T, N, num_classes]``. ``kwargs`` go to every neuron (``backend='triton'``, ...);
    ``spiking_neuron`` is a multi-step neuron class (default: ``neuron.MultiStepLIFNode`` with the paper's
    options at each position). Weights start as in the paper: truncated normal (std 0.02) for
    convolutions and the head, zero biases, BatchNorm at identity."""

    def __init__(self, T: int = 4, in_channels: int = 3, img_size_h: int = 224, img_size_w: int = 224,
                 patch_size: int = 16, num_classes: int = 1000, embed_dims: int = 256, num_heads: int = 8,
                 mlp_ratio: float = 4.0, depths: int = 4, spiking_neuron=None, **kwargs):
        super().__init__()
        self.T = T
        self.num_classes = num_classes
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.depths = depths
        self.patch_embed = SpikformerPatchStem(img_size_h, img_size_w, patch_size, in_channels, embed_dims,
                                               spiking_neuron=spiking_neuron, **kwargs)
        self.blocks = nn.ModuleList([SpikformerBlock(embed_dims, num_heads, mlp_ratio, spiking_neuron=spiking_neuron,
                                                     **kwargs) for _ in range(depths)])
        self.head = nn.Linear(embed_dims, num_classes)  # on [T, N, C]: every step at once
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x_seq: torch.Tensor) -> torch.Tensor:
        """``[T, N, C, H, W] -> [T, N, embed_dims]``: the encoder's tokens averaged."""
        x_seq = self.patch_embed(x_seq)
        for block in self.blocks:
            x_seq = block(x_seq)
        return mean_over_tokens(x_seq.flatten(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(image_to_sequence(x, self.T, "Spikformer")))


def spikformer_ti(T: int = 4, in_channels: int = 3, img_size_h: int = 224, img_size_w: int = 224,
                  num_classes: int = 1000, spiking_neuron=None, **kwargs) -> Spikformer:
    """Spikformer-Ti for ImageNet-sized input: 256 wide, 8 heads, 4 blocks, 16x16 patches."""
    return Spikformer(T=T, in_channels=in_channels, img_size_h=img_size_h, img_size_w=img_size_w,
                      num_classes=num_classes, embed_dims=256, num_heads=8, mlp_ratio=4.0, depths=4,
                      spiking_neuron=spiking_neuron, **kwargs)


def spikformer_s(T: int = 4, in_channels: int = 3, img_size_h: int = 224, img_size_w: int = 224,
                 num_classes: int = 1000, spiking_neuron=None, **kwargs) -> Spikformer:
    """Spikformer-S for ImageNet-sized input: 384 wide, 12 heads, 6 blocks, 16x16 patches."""
    return Spikformer(T=T, in_channels=in_channels, img_size_h=img_size_h, img_size_w=img_size_w,
                      num_classes=num_classes, embed_dims=384, num_heads=12, mlp_ratio=4.0, depths=6,
                      spiking_neuron=spiking_neuron, **kwargs)


def spikformer_cifar10(T: int = 4, num_classes: int = 10, spiking_neuron=None, **kwargs) -> Spikformer:
    """Spikformer for CIFAR-10 (3x32x32): 384 wide, 12 heads, 4 blocks, 4x4 patches."""
    return Spikformer(T=T, in_channels=3, img_size_h=32, img_size_w=32, patch_size=4, num_classes=num_classes,
                      embed_dims=384, num_heads=12, mlp_ratio=4.0, depths=4, spiking_neuron=spiking_neuron,
                      **kwargs)
