"""16-bit inputs are computed with a float32 state, on every backend.

A LIF (tau = 2, decay_input) driven by inputs of ±60000 alternating settles at V = ±20000: every
stored value fits float16 (max 65504), but the charge's X − V reaches 80000. Computed in float16 that
is inf, and the potentials and gradients that follow are inf and NaN; with the state in float32 (the
kernels' registers, and the reference since it computes 16-bit sequences in float32) the results are
finite and equal the float32 run on the same rounded inputs, within float16 rounding.
"""

import pytest
import torch

from flashspike import neuron, surrogate
from flashspike.dynamics import charge
from conftest import kernel_device

STEPS, N = 1000, 8


def _inputs():
    signs = torch.tensor([1.0, -1.0]).repeat(STEPS // 2)
    x = signs.view(-1, 1) * 60000.0 * (1 + 0.01 * torch.rand(STEPS, N, generator=torch.Generator().manual_seed(0)))
    return x.half()


def _run(backend, x, weights):
    node = neuron.MultiStepLIFNode(tau=2.0, v_threshold=1e5, surrogate_function=surrogate.ATan(), backend=backend,
                                   store_v_seq=True)
    x = x.clone().requires_grad_()
    spike = node(x)
    ((node.v_seq * weights.to(x.dtype)).sum() + spike.sum()).backward()
    return spike, node.v_seq, x.grad


def test_the_charge_overflows_in_float16_arithmetic():
    """What a float16 state would do: the test case really leaves float16's range inside the charge."""
    p = neuron.MultiStepLIFNode(v_threshold=1e5).params()
    v = torch.tensor([-20000.0], dtype=torch.float16)
    x = torch.tensor([60000.0], dtype=torch.float16)
    assert torch.isinf(charge(v, x, p)).all()
    assert torch.isfinite(charge(v.float(), x.float(), p)).all()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_float16_sequence_stays_finite_and_matches_float32(backend):
    device = "cpu" if backend == "torch" else kernel_device(backend)
    x = _inputs()
    weights = torch.randn(STEPS, N, generator=torch.Generator().manual_seed(1)) * 1e-3
    spike, v_seq, grad = _run(backend, x.to(device), weights.to(device))
    ref_spike, ref_v_seq, ref_grad = _run("torch", x.float(), weights)
    for got in (spike, v_seq, grad):
        assert got.dtype == torch.float16 and torch.isfinite(got).all()
    assert v_seq.abs().max() > 19000  # the potential really lives near the top of float16's range
    assert torch.equal(spike.float().cpu(), ref_spike)
    torch.testing.assert_close(v_seq.float().cpu(), ref_v_seq, rtol=1e-3, atol=0)
    torch.testing.assert_close(grad.float().cpu(), ref_grad, rtol=2e-3, atol=1e-6)
