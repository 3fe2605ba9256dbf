"""Surrogates as the backends see them: the compiled operators' option text, hyper-parameter changes
reaching the kernels, callables that are not SurrogateFunctions, and the refusal of double backward
through the kernels."""

import pytest
import torch

from flashspike import surrogate
from flashspike.backends import autograd, operators, reference, torch_kernels

from custom_surrogate import Gaussian, every_surrogate, surrogate_id
from conftest import kernel_device
from grid import node, params


@pytest.mark.parametrize("sg", every_surrogate(True) + every_surrogate(False) + [surrogate.ATan(3)], ids=surrogate_id)
def test_option_text_rebuilds_every_hyperparameter(sg):
    p = params(v_threshold=0.3, v_reset=None, detach_reset=True, surrogate=sg, tau=1 / 3)
    rebuilt = operators.params_from(operators.option_string(p))
    assert type(rebuilt.surrogate) is type(sg) and rebuilt.key == p.key
    assert rebuilt.surrogate.values() == sg.values() and rebuilt.surrogate.spiking == sg.spiking


def test_option_text_with_a_bad_hyperparameter_is_refused():
    text = operators.option_string(params("if", surrogate=surrogate.S2NN()))
    with pytest.raises(ValueError, match="beta must be"):
        operators.params_from(text.replace("beta=1.0", "beta=-1.0"))


def _lif(backend, sg, **kw):
    """A soft-reset LIF node with surrogate ``sg`` (any callable on 'torch')."""
    return node(backend, v_reset=None, surrogate=sg, **kw)


def _grad(node, x):
    x = x.clone().requires_grad_()
    node.reset()
    (node(x) * torch.linspace(-1, 1, x.numel()).view_as(x).to(x)).sum().backward()
    return x.grad


def test_assigned_hyperparameters_reach_the_kernels():
    device = kernel_device("triton")
    x = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) + 0.6
    sg = surrogate.S2NN()
    node, ref = _lif("triton", sg), _lif("torch", sg)
    before = _grad(node, x.to(device))
    sg.beta = 3.0
    sg.alpha = 1.5
    after = _grad(node, x.to(device))
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after.cpu(), _grad(ref, x), rtol=1e-5, atol=1e-6)
    # So does a change of mode, of a surrogate whose mode follows ``spiking`` (S2NN's is fixed at construction).
    follows = surrogate.QPseudoSpike()
    node.surrogate_function = ref.surrogate_function = follows
    node(x.to(device))  # chosen for the spiking mode
    follows.spiking = False
    node.reset(), ref.reset()
    smooth = node(x.to(device)).cpu()
    torch.testing.assert_close(smooth, ref(x), rtol=1e-5, atol=1e-6)
    assert not torch.equal(smooth, smooth.round())  # not 0/1


def test_any_callable_runs_on_the_torch_backend():
    sj = pytest.importorskip("spikingjelly.clock_driven.surrogate")
    x = torch.randn(5, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.6
    theirs = _grad(_lif("torch", sj.S2NN(alpha=3.0, beta=0.5)), x)
    ours = _grad(_lif("torch", surrogate.S2NN(alpha=3.0, beta=0.5)), x)
    torch.testing.assert_close(theirs, ours)
    lam = _lif("torch", lambda u: surrogate.ATan()(u))
    torch.testing.assert_close(_grad(lam, x), _grad(_lif("torch", surrogate.ATan()), x))


def test_kernel_backends_refuse_a_plain_callable():
    device = kernel_device("triton")
    node = _lif("triton", lambda u: (u >= 0).to(u))
    with pytest.raises(TypeError, match="backend='torch'"):
        node(torch.randn(3, 8, device=device))
    with pytest.raises(TypeError, match="must be callable"):
        _lif("torch", 2.0)


def _second_order(run, x):
    x = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(run(x).pow(2).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    return gg


def test_double_backward_through_the_kernels_is_refused():
    device = kernel_device("triton")
    x = (torch.randn(4, 20, generator=torch.Generator().manual_seed(2)) + 0.6).to(device)
    sg = surrogate.Sigmoid(spiking=False)  # smooth: a second-order term exists
    with pytest.raises(RuntimeError, match="create_graph"):
        _second_order(lambda xr: _lif("triton", sg, store_v_seq=True)(xr), x)
    p = _lif("triton", sg).params()
    with pytest.raises(RuntimeError, match="create_graph"):  # the compiled path's operators
        _second_order(lambda xr: operators.multi_step("triton", xr, p.v_rest, p, False)[0], x)
    # an ordinary backward is untouched
    x_leaf = x.clone().requires_grad_()
    _lif("triton", sg)(x_leaf).sum().backward()
    assert torch.isfinite(x_leaf.grad).all()


def test_double_backward_on_the_torch_backend():
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) + 0.6
    x.requires_grad_()
    node = _lif("torch", Gaussian(0.7, spiking=False))
    assert torch.autograd.gradgradcheck(lambda xr: (node.reset(), node(xr))[1], (x,))
    assert _second_order(lambda xr: (node.reset(), node(xr))[1], x).abs().sum() > 0


@pytest.mark.parametrize("sg", every_surrogate(False), ids=surrogate_id)
def test_compiled_torch_kernels_run_the_smooth_primitive(sg):
    """Under torch.compile backend 'torch' runs torch_kernels (the generated step evaluated with
    tensors): with spiking=False it outputs and differentiates the primitive as the reference does."""
    g = torch.Generator().manual_seed(4)
    x, v0, w = (torch.randn(5, 3, 9, generator=g, dtype=torch.float64) + 0.4,
                torch.randn(3, 9, generator=g, dtype=torch.float64) * 0.3,
                torch.randn(5, 3, 9, generator=g, dtype=torch.float64))
    p = _lif("torch", sg).params()
    results = []
    for run in (lambda *a: autograd.fused_multi_step(torch_kernels.KERNELS, *a), reference.BACKEND.multi_step):
        xr, vr = x.clone().requires_grad_(), v0.clone().requires_grad_()
        spike, v_last, v_seq = run(xr, vr, p, True)
        ((spike * w).sum() + (v_seq * w).sum()).backward()
        results.append((spike, v_last, xr.grad, vr.grad))
    assert not torch.equal(results[1][0], (results[1][0] > 0.5).double())  # smooth, not 0/1
    for got, ref in zip(*results):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_set_spiking_mode():
    sg = surrogate.ATan()
    sg.set_spiking_mode(False)
    assert sg.spiking is False and repr(sg) == "ATan(alpha=2.0, spiking=False)"
