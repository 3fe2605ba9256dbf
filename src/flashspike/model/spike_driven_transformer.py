"""Spike-Driven Transformer (v1): Yao et al., "Spike-driven Transformer" (https://arxiv.org/abs/2307.01694),
on flashspike's multi-step neurons.

A spiking patch stem (four 3x3 conv-BN stages with LIF neurons between them, max-pools where
``pooling_stat`` says '1', and a conv-BN relative position encoding of the last stage's spikes added to
its input), ``depths`` encoder blocks, then an LIF on the tokens' mean and a linear head on the mean over
time: ``[T, N, C, H, W]`` (or a static image ``[N, C, H, W]`` repeated over ``T``) ``-> [N, num_classes]``.

The blocks keep membrane-potential shortcuts (the residual adds what enters a neuron, not spikes). Their
attention, spike-driven self-attention (SDSA), needs no matrix product: per head,
``Q ⊗ SN(Σ_tokens K ⊗ V)``, with ⊗ the element-wise product and SN a neuron of threshold 0.5.

Class names, arguments, defaults and ``state_dict`` keys are those of SpikingJelly 2.x's
``activation_based.model.spike_driven_transformer`` (the stem's and MLP's neurons plain LIF, the
attention's LIF with ``tau=2.0, detach_reset=True``), so a checkpoint of either loads into the other.
Every keyword argument that is not the model's goes to every neuron, e.g. ``backend='triton'``.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import functional
from ..memory.batchnorm_recompute import normalized_in_neuron
from .common import head_dim, image_to_sequence, make_multi_step_neuron, mean_over_tokens

__all__ = ["SpikeDrivenTransformer", "sdt_8_384", "SpikeDrivenSelfAttention"]

ATTENTION_LIF_OPTIONS = {"tau": 2.0, "detach_reset": True}
KV_LIF_OPTIONS = {"tau": 2.0, "v_threshold": 0.5, "detach_reset": True}


class SpikeDrivenSelfAttention(nn.Module):
    """Spike-driven self-attention with its shortcut, ``[T, N, dim, H, W] -> [T, N, dim, H, W]``:
    ``x + BN(conv(Q ⊗ attn_lif(Σ_tokens K ⊗ V)))``, where Q, K, V are the spikes of 1x1 conv-BN-LIF
    layers applied to ``shortcut_lif(x)`` and the sum runs over the H·W tokens of each head's channel."""

    def __init__(self, dim: int, num_heads: int = 8, spiking_neuron=None, **kwargs):
        super().__init__()
        self.dim, self.num_heads, self.head_dim = dim, num_heads, head_dim(dim, num_heads)
        self.shortcut_lif = make_multi_step_neuron(spiking_neuron, kwargs, ATTENTION_LIF_OPTIONS)

        def conv_bn_lif():
            return (nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim),
                    make_multi_step_neuron(spiking_neuron, kwargs, ATTENTION_LIF_OPTIONS))

        self.q_conv, self.q_bn, self.q_lif = conv_bn_lif()
        self.k_conv, self.k_bn, self.k_lif = conv_bn_lif()
        self.v_conv, self.v_bn, self.v_lif = conv_bn_lif()
        self.attn_lif = make_multi_step_neuron(spiking_neuron, kwargs, KV_LIF_OPTIONS)
        self.proj_conv = nn.Conv2d(dim, dim, 1)
        self.proj_bn = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"SpikeDrivenSelfAttention expects x of shape [T, N, C, H, W], got {tuple(x.shape)}")
        spikes = self.shortcut_lif(x)
        q, k, v = [self._heads(_fire(node, spikes, conv, bn)) for conv, bn, node in (
            (self.q_conv, self.q_bn, self.q_lif), (self.k_conv, self.k_bn, self.k_lif),
            (self.v_conv, self.v_bn, self.v_lif))]
        # One value per channel, [.., head_dim, 1]: a count of at most H·W coinciding spikes, exact in the
        # spikes' own dtype. Summed in that dtype, since CUDA autocast would sum in float32: a float32 kv
        # makes Q ⊗ kv float32, and the gradients coming back through those casts are channel-major copies
        # multiplied by token-major spikes.
        kv = self.attn_lif((k * v).sum(dim=-1, keepdim=True, dtype=k.dtype))
        attended = (q * kv).reshape(x.shape)
        return functional.seq_to_ann_forward(attended, (self.proj_conv, self.proj_bn)) + x

    def _heads(self, spikes: torch.Tensor) -> torch.Tensor:
        """``[T, N, C, H, W] -> [T, N, heads, head_dim, H·W]``."""
        return spikes.reshape(*spikes.shape[:2], self.num_heads, self.head_dim, -1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"


class _ConvStage(nn.Sequential):
    """A stem stage in SpikingJelly's indices: 0 a 3x3 convolution, 1 BatchNorm, 2 a neuron, 3 an
    optional max-pool; the stateless ones run on every time step at once."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        conv, batch_norm, node, *pool = self
        x_seq = _fire(node, x_seq, conv, batch_norm)
        return functional.seq_to_ann_forward(x_seq, pool) if pool else x_seq


def _fire(node: nn.Module, x_seq: torch.Tensor, conv: nn.Module, batch_norm: nn.Module) -> torch.Tensor:
    """``node`` on ``batch_norm(conv(x))`` over every step at once; the BatchNorm's output goes to the node
    alone, which may fire from its input (:func:`~flashspike.memory.batchnorm_recompute.normalized_in_neuron`)."""
    with normalized_in_neuron(batch_norm, node):
        return node(functional.seq_to_ann_forward(x_seq, (conv, batch_norm)))


def _max_pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(3, stride=2, padding=1)


class _SpikingPatchEmbed(nn.Module):
    """``embed_dims`` / 8, / 4, / 2 channel conv-BN-LIF stages, an ``embed_dims`` conv-BN, each followed
    by a max-pool where ``pooling_stat`` has '1'; then ``x + BN(conv(LIF(x)))`` (the position encoding)."""

    def __init__(self, in_channels: int, embed_dims: int, pooling_stat: str, spiking_neuron, neuron_kwargs: dict):
        super().__init__()
        widths = (embed_dims // 8, embed_dims // 4, embed_dims // 2)
        self.stages = nn.ModuleList()
        channels = in_channels
        for width, pooled in zip(widths, pooling_stat):
            stage = [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width),
                     make_multi_step_neuron(spiking_neuron, neuron_kwargs)]
            self.stages.append(_ConvStage(*stage, *([_max_pool()] if pooled == "1" else [])))
            channels = width
        final = [nn.Conv2d(channels, embed_dims, 3, padding=1), nn.BatchNorm2d(embed_dims)]
        self.final_stage = nn.Sequential(*final, *([_max_pool()] if pooling_stat[3] == "1" else []))
        self.final_lif = make_multi_step_neuron(spiking_neuron, neuron_kwargs)
        self.rpe_conv = nn.Conv2d(embed_dims, embed_dims, 3, padding=1, bias=False)
        self.rpe_bn = nn.BatchNorm2d(embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        x = functional.seq_to_ann_forward(x, self.final_stage)
        return functional.seq_to_ann_forward(self.final_lif(x), (self.rpe_conv, self.rpe_bn)) + x


class _SpikingMLP(nn.Module):
    """LIF, 1x1 conv-BN to ``hidden_dim``, LIF, 1x1 conv-BN back to ``dim``, with membrane shortcuts:
    around the whole, and around the first half too when ``hidden_dim == dim``."""

    def __init__(self, dim: int, hidden_dim: int, spiking_neuron, neuron_kwargs: dict):
        super().__init__()
        self.residual = dim == hidden_dim
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.bn1 = nn.BatchNorm2d(hidden_dim)
        self.lif1 = make_multi_step_neuron(spiking_neuron, neuron_kwargs)
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)
        self.bn2 = nn.BatchNorm2d(dim)
        self.lif2 = make_multi_step_neuron(spiking_neuron, neuron_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = functional.seq_to_ann_forward(self.lif1(x), (self.fc1, self.bn1))
        if self.residual:
            x = shortcut = x + shortcut
        return functional.seq_to_ann_forward(self.lif2(x), (self.fc2, self.bn2)) + shortcut


class _EncoderBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, spiking_neuron, neuron_kwargs: dict):
        super().__init__()
        self.attn = SpikeDrivenSelfAttention(dim, num_heads, spiking_neuron=spiking_neuron, **neuron_kwargs)
        self.mlp = _SpikingMLP(dim, int(dim * mlp_ratio), spiking_neuron, neuron_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attn(x))  # each adds its own shortcut


class SpikeDrivenTransformer(nn.Module):
    """Spike-Driven Transformer: ``[T, N, in_channels, H, W]`` or a static ``[N, in_channels, H, W]``
    (repeated over ``T`` steps) ``-> [N, num_classes]``. ``pooling_stat`` holds one '0' or '1' per stem
    stage (a max-pool of stride 2 after it or not); ``embed_dims`` must be divisible by ``num_heads``.
    ``kwargs`` go to every neuron (``backend='triton'``, ...); ``spiking_neuron`` is a multi-step neuron
    class (default: ``neuron.MultiStepLIFNode``). The CIFAR-10 configuration of the paper is
    ``SpikeDrivenTransformer(num_classes=10, embed_dims=512, num_heads=8, depths=2, pooling_stat='0011')``."""

    def __init__(self, T: int = 4, in_channels: int = 3, num_classes: int = 1000, embed_dims: int = 384,
                 num_heads: int = 8, depths: int = 8, mlp_ratio: float = 4.0, pooling_stat: str = "1111",
                 spiking_neuron=None, **kwargs):
        super().__init__()
        if not (isinstance(pooling_stat, str) and len(pooling_stat) == 4 and set(pooling_stat) <= {"0", "1"}):
            raise ValueError(f"pooling_stat must be four characters '0' or '1', one per stem stage, got "
                             f"{pooling_stat!r}")
        self.T = T
        self.patch_embed = _SpikingPatchEmbed(in_channels, embed_dims, pooling_stat, spiking_neuron, kwargs)
        self.blocks = nn.ModuleList([_EncoderBlock(embed_dims, num_heads, mlp_ratio, spiking_neuron, kwargs)
                                     for _ in range(depths)])
        self.head_lif = make_multi_step_neuron(spiking_neuron, kwargs)
        self.head = nn.Linear(embed_dims, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(image_to_sequence(x, self.T, "SpikeDrivenTransformer"))
        for block in self.blocks:
            x = block(x)
        spikes = self.head_lif(mean_over_tokens(x.flatten(3)))  # [T, N, embed_dims]
        return self.head(spikes.mean(dim=0))


def sdt_8_384(T: int = 4, in_channels: int = 3, num_classes: int = 1000, spiking_neuron=None,
              **kwargs) -> SpikeDrivenTransformer:
    """SDT-8-384 (ImageNet): 384 wide, 8 heads, 8 blocks, every stem stage pooled."""
    return SpikeDrivenTransformer(T=T, in_channels=in_channels, num_classes=num_classes, embed_dims=384, num_heads=8,
                                  depths=8, spiking_neuron=spiking_neuron, **kwargs)
