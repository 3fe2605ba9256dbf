"""SpikingJelly's hand-written surrogate style: the lower-case autograd Functions, heaviside(x) and the
base classes for surrogates a user writes (flashspike.surrogate_functions), against SpikingJelly
0.0.0.0.14 where installed."""

import math

import pytest
import torch

from flashspike import neuron, surrogate

# name -> hyper-parameters passed after x
CASES = {"piecewise_quadratic": (1.3,), "piecewise_exp": (2.0,), "sigmoid": (4.0,), "soft_sign": (2.0,),
         "atan": (2.0,), "nonzero_sign_log_abs": (1.0,), "erf": (2.0,), "piecewise_leaky_relu": (0.7, 0.05),
         "squarewave_fourier_series": (3, 8.0), "s2nn": (4.0, 1.0), "q_pseudo_spike": (2.0,)}


def test_atan_function_by_hand():
    x = torch.tensor([-1.0, 0.0, 0.5], dtype=torch.float64, requires_grad=True)
    y = surrogate.atan.apply(x, 2.0)
    assert y.tolist() == [0.0, 1.0, 1.0]
    y.sum().backward()
    # (alpha/2) / (1 + (pi/2 * alpha * x)^2) with alpha = 2
    assert torch.allclose(x.grad, 1.0 / (1.0 + (math.pi * x.detach()) ** 2))


def test_heaviside_takes_one_argument():
    assert surrogate.heaviside(torch.tensor([-0.5, 0.0, 3.0])).tolist() == [0.0, 1.0, 1.0]


@pytest.mark.parametrize("name", sorted(CASES))
def test_lower_case_functions_match_spikingjelly(name):
    sj = pytest.importorskip("spikingjelly.clock_driven.surrogate")
    x = torch.linspace(-2.5, 2.5, 41, dtype=torch.float64)
    grads = []
    for lib in (surrogate, sj):
        leaf = x.clone().requires_grad_(True)
        y = getattr(lib, name).apply(leaf, *CASES[name])
        (y * torch.linspace(0.5, 1.5, 41, dtype=torch.float64)).sum().backward()
        grads.append((y.detach(), leaf.grad))
    assert torch.equal(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-12, atol=1e-12)


def _custom_surrogate(lib):
    class Custom(lib.SurrogateFunctionBase):
        def __init__(self, alpha=3.0, spiking=True):
            super().__init__(alpha, spiking)

        @staticmethod
        def spiking_function(x, alpha):
            return lib.sigmoid.apply(x, alpha)

        @staticmethod
        def primitive_function(x, alpha):
            return (x * alpha).sigmoid()
    return Custom


def test_a_hand_written_surrogate_drives_a_neuron_like_spikingjelly():
    sj_surrogate = pytest.importorskip("spikingjelly.clock_driven.surrogate")
    from spikingjelly.clock_driven import neuron as sj_neuron

    x = torch.randn(5, 3, 4, dtype=torch.float64) + 0.7
    results = []
    for lib_neuron, lib_surrogate in ((neuron, surrogate), (sj_neuron, sj_surrogate)):
        node = lib_neuron.MultiStepLIFNode(surrogate_function=_custom_surrogate(lib_surrogate)(), backend="torch")
        leaf = x.clone().requires_grad_(True)
        y = node(leaf)
        (y * torch.linspace(0.5, 1.5, y.numel(), dtype=torch.float64).view(y.shape)).sum().backward()
        results.append((y.detach(), leaf.grad))
    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-12, atol=1e-12)
    sg = _custom_surrogate(surrogate)()
    assert repr(sg) == "Custom(alpha=3.0, spiking=True)"
    sg.set_spiking_mode(False)
    assert torch.equal(sg(torch.zeros(2)), torch.full((2,), 0.5))
    # 'auto' runs such a surrogate on the reference (the kernels need formulas)
    auto = neuron.MultiStepIFNode(surrogate_function=_custom_surrogate(surrogate)())
    assert auto(torch.ones(2, 1, 3)).tolist() == [[[1.0] * 3], [[1.0] * 3]]


def test_activation_based_surrogate_base_takes_keywords():
    from flashspike.activation_based import surrogate as ab_surrogate

    class Gaussianish(ab_surrogate.SurrogateFunctionBase):
        def __init__(self, sigma=0.5, spiking=True):
            super().__init__(spiking, sigma=sigma)

        @staticmethod
        def spiking_function(x, sigma):
            return surrogate.heaviside(x)

        @staticmethod
        def primitive_function(x, sigma):
            return 0.5 * (1 + torch.erf(x / (sigma * math.sqrt(2))))

    sg = Gaussianish(sigma=0.25, spiking=False)
    assert repr(sg) == "Gaussianish(sigma=0.25, spiking=False)"
    assert sg(torch.zeros(1)).item() == 0.5
    sg.sigma = 1.0  # the current value is what the function sees
    assert sg(torch.tensor([1.0])).item() == pytest.approx(0.8413447, abs=1e-6)
