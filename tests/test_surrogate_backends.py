"""Surrogates as the backends see them: the compiled operators' option text, hyper-parameter changes
reaching the kernels, callables that are not SurrogateFunctions, and the refusal of double backward
through the kernels."""

import pytest
import torch

from flashspike import surrogate
from flashspike.backends import autograd, operators, reference, torch_kernels
from flashspike.params import NeuronParams

from custom_surrogate import Gaussian, every_surrogate, surrogate_id
from conftest import kernel_device
from grid import node, params


@pytest.mark.parametrize("sg", every_surrogate(True) + every_surrogate(False) + [surrogate.ATan(3)], ids=surrogate_id)
def test_option_text_rebuilds_every_hyperparameter(sg):
    p = params(v_threshold=0.3, v_reset=None, detach_reset=True, surrogate=sg, tau=1 / 3)
    rebuilt = NeuronParams.from_text(p.text)
    assert type(rebuilt.surrogate) is type(sg) and rebuilt.key == p.key
    assert rebuilt.surrogate.values() == sg.values() and rebuilt.surrogate.spiking == sg.spiking


def test_option_text_with_a_bad_hyperparameter_is_refused():
    text = params("if", surrogate=surrogate.S2NN()).text
    with pytest.raises(ValueError, match="beta must be"):
        NeuronParams.from_text(text.replace("beta=1.0", "beta=-1.0"))


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


def _defined_as(scale: float) -> type:
    """A user's surrogate class ``Slope`` whose slope is ``scale``·(Sigmoid's): called twice, it is the
    same class defined again with another formula (a notebook cell edited and run again), of the same
    module and qualified name."""

    class Slope(surrogate.SurrogateFunction):
        def __init__(self, alpha: float = 4.0, spiking: bool = True):
            super().__init__(spiking, alpha=alpha)

        @staticmethod
        def primitive(x, alpha, m):
            return m.sigmoid(alpha * x)

        @staticmethod
        def derivative(x, alpha, m):
            s = m.let("sigmoid", m.sigmoid(alpha * x))
            return scale * alpha * s * (1.0 - s)

    return Slope


def test_a_surrogate_class_defined_again_gets_kernels_of_its_own_formula():
    device = kernel_device("triton")
    first, second = _defined_as(1.0), _defined_as(3.0)
    assert (first.__module__, first.__qualname__) == (second.__module__, second.__qualname__)
    x = torch.randn(4, 50, generator=torch.Generator().manual_seed(5)) + 0.6
    for cls in (first, second):
        torch.testing.assert_close(_grad(_lif("triton", cls()), x.to(device)).cpu(), _grad(_lif("torch", cls()), x),
                                   rtol=1e-5, atol=1e-6)


def test_compiled_code_rebuilds_the_surrogate_class_of_its_own_formula():
    """Compiled code passes the surrogate to its operators as text (class name, values, formula digest):
    of two classes of one name, the operators rebuild the one whose formulas the text names."""
    first, second = _defined_as(1.0), _defined_as(3.0)
    for cls, other in ((second, first), (first, second)):
        sg = cls(alpha=2.5)
        rebuilt = surrogate.SurrogateFunction.from_text(sg.text)
        assert rebuilt.key == sg.key != other(alpha=2.5).key  # (the key holds the formulas' digest)
    x = torch.randn(4, 50, generator=torch.Generator().manual_seed(6)) + 0.6
    node = _lif("torch", second())
    compiled = torch.compile(node, backend="eager", fullgraph=True)
    torch.testing.assert_close(_grad(compiled, x), _grad(_lif("torch", second()), x))


def _fourier_slopes(sg, potentials):
    """The input gradient of a soft-reset IF step at each potential on 'triton' and on 'torch'."""
    device = kernel_device("triton")
    h = torch.tensor(potentials, dtype=torch.float32).view(1, -1)
    grads = []
    for backend, where in (("triton", device), ("torch", "cpu")):
        x = h.to(where, copy=True).requires_grad_()
        node(backend, "if", v_reset=None, surrogate=sg)(x).sum().backward()
        grads.append(x.grad.cpu())
    return grads


def test_fourier_series_slope_on_triton_far_from_the_threshold():
    """Its cosines reach arguments of any size: reduced exactly near the threshold, by tl.cos beyond."""
    far = [1e8, 1e9, 1e30, -1e30, 3.0e4, -2.6e4, 2.5e4, 3000.0, 0.3, 1.2]
    triton_grad, torch_grad = _fourier_slopes(surrogate.SquarewaveFourierSeries(), far)
    assert torch_grad.abs().max() <= 0.5  # its bound, 4/T_period·(n − 1)
    torch.testing.assert_close(triton_grad, torch_grad, rtol=1e-5, atol=1e-6)


def test_fourier_series_of_many_terms_on_triton():
    """200 terms: a sum whose generated text would nest 200 parentheses deep, cut into statements."""
    triton_grad, torch_grad = _fourier_slopes(surrogate.SquarewaveFourierSeries(n=200), [-2.0, -0.31, 0.0, 0.07, 1.5])
    torch.testing.assert_close(triton_grad, torch_grad, rtol=1e-4, atol=2e-5)
