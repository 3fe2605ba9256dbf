"""What a BatchNorm's backward sums per channel of its output's gradient ``dy`` (the neuron kernels'
GRAD_SUMS), computed plainly in float64: Σ dy and Σ dy · (x − mean[c])."""

import torch


def batchnorm_gradient_sums(dy: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, channel_dim: int):
    """``[2, C]`` float64: the two sums over every element of ``dy`` and ``x`` (alike in shape) per channel
    of dimension ``channel_dim``."""
    dy = dy.double().movedim(channel_dim, -1).reshape(-1, dy.shape[channel_dim])
    centered = x.double().movedim(channel_dim, -1).reshape(-1, x.shape[channel_dim]) - mean.double()
    return torch.stack([dy.sum(0), (dy * centered).sum(0)])


def assert_sums_close(sums: torch.Tensor, dy: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, channel_dim: int):
    """``sums`` (a kernel's ``[2, slots, C]``) add up to :func:`batchnorm_gradient_sums`, within float32
    summation; and are no zeros (the case has gradients)."""
    want = batchnorm_gradient_sums(dy, x, mean, channel_dim)
    got = sums.double().sum(1)
    scale = dy.double().abs().sum() * (1 + x.double().abs().max())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * scale.item())
    assert want.abs().sum() > 0
