"""ParametricLIF (PLIF) and EIF: hand-computed trajectories and gradients, the API as SpikingJelly's,
SpikingJelly itself as an independent reference, the compiled operators with a learnable w, and the
float32 state that keeps long float16 sequences finite.

(The kernel backends are held against the reference for both neurons by tests/test_parity.py.)
"""

import inspect
import math

import pytest
import torch

from flashspike import neuron, surrogate
from flashspike.backends import operators
from conftest import require_backend


def _seq(values, requires_grad=False):
    return torch.tensor(values, dtype=torch.float64).view(-1, 1).requires_grad_(requires_grad)


# ---- hand-computed trajectories ---------------------------------------------------------------------


def test_plif_decay_input_trajectory_and_grad_w():
    # init_tau = 2: w = 0, k = sigmoid(0) = 0.5. H = .5·1 = .5; .5 + .5·(1 − .5) = .75;
    # .75 + .5·(3 − .75) = 1.875 -> spike, V = 0.
    # detach_reset: below the threshold V = H exactly, without the surrogate's path through the reset.
    node = neuron.MultiStepParametricLIFNode(detach_reset=True, backend="torch", store_v_seq=True).double()
    x = _seq([1.0, 1.0, 3.0])
    spike = node(x)
    assert spike.view(-1).tolist() == [0.0, 0.0, 1.0]
    assert node.v_seq.view(-1).tolist() == pytest.approx([0.5, 0.75, 0.0], abs=1e-12)
    # V[1] = V[0] + k·(X[1] − V[0]), V[0] = k·X[0]: dV[1]/dk = (X[1] − V[0]) + (1 − k)·X[0] = .5 + .5 = 1,
    # and dk/dw = k(1 − k) = .25.
    node.v_seq[1].sum().backward()
    assert node.w.grad.item() == pytest.approx(0.25, abs=1e-12)


def test_plif_without_decay_input_trajectory_and_grad_w():
    # k = .5: H = .6; .6 − .3 + .6 = .9; .9 − .45 + .6 = 1.05 -> spike.
    node = neuron.MultiStepParametricLIFNode(decay_input=False, detach_reset=True, backend="torch",
                                             store_v_seq=True).double()
    spike = node(_seq([0.6, 0.6, 0.6]))
    assert spike.view(-1).tolist() == [0.0, 0.0, 1.0]
    assert node.v_seq.view(-1).tolist() == pytest.approx([0.6, 0.9, 0.0], abs=1e-12)
    # V[1] = V[0]·(1 − k) + X[1] with V[0] = .6: dV[1]/dk = −.6, times k(1 − k) = .25.
    node.v_seq[1].sum().backward()
    assert node.w.grad.item() == pytest.approx(-0.15, abs=1e-12)


def test_plif_learned_tau_changes_the_trajectory():
    # init_tau = 4: k = .25. H = .25·2 = .5; .5 + .25·(4 − .5) = 1.375 -> spike, V = 0.
    node = neuron.MultiStepParametricLIFNode(init_tau=4.0, backend="torch", store_v_seq=True).double()
    assert node.w.item() == pytest.approx(-math.log(3.0))
    assert node(_seq([2.0, 4.0])).view(-1).tolist() == [0.0, 1.0]
    # (w is a float32 parameter, so k is 1/4 to float32 precision)
    assert node.v_seq.view(-1).tolist() == pytest.approx([0.5, 0.0], abs=1e-7)


def test_single_step_plif_follows_the_same_trajectory_and_gradient():
    node = neuron.ParametricLIFNode(detach_reset=True).double()
    got = [node(torch.tensor([x], dtype=torch.float64)).item() for x in (1.0, 1.0)]
    assert got == [0.0, 0.0] and node.v.item() == pytest.approx(0.75)
    node.v.sum().backward()
    assert node.w.grad.item() == pytest.approx(0.25, abs=1e-12)


def test_eif_trajectory():
    # tau = 2, delta_T = 1, theta_rh = −.1, v_rest = 0, start at v_reset = −.1:
    # H[0] = −.1 + (.4 + 0 + .1 + exp(0))/2 = .65;
    # H[1] = .65 + (.5 − .65 + exp(.75))/2 = 1.6335… -> spike, V = −.1.
    node = neuron.MultiStepEIFNode(theta_rh=-0.1, backend="torch", store_v_seq=True)
    assert node.v == -0.1
    spike = node(_seq([0.4, 0.5]))
    h1 = 0.65 + (0.5 - 0.65 + math.exp(0.75)) / 2
    assert h1 > 1.0
    assert spike.view(-1).tolist() == [0.0, 1.0]
    assert node.v_seq.view(-1).tolist() == pytest.approx([0.65, -0.1], abs=1e-12)
    single = neuron.EIFNode(theta_rh=-0.1)
    assert [single(torch.tensor([x], dtype=torch.float64)).item() for x in (0.4, 0.5)] == [0.0, 1.0]


def test_eif_gradient_of_the_exponential_charge():
    # dH[1]/dV[0] = 1 + (exp(V[0] − θ) − 1)/tau, and dV[0]/dX[0] = 1/tau.
    node = neuron.MultiStepEIFNode(theta_rh=-0.1, detach_reset=True, backend="torch", store_v_seq=True)
    x = _seq([0.4, -1.0], requires_grad=True)
    assert node(x).sum().item() == 0.0  # H[1] = .65 + (−1 − .65 + exp(.75))/2 = .8835… < 1
    node.v_seq[1].sum().backward()
    assert x.grad.view(-1).tolist() == pytest.approx([(1 + (math.exp(0.75) - 1) / 2) / 2, 0.5], abs=1e-12)


# ---- the API, as SpikingJelly's --------------------------------------------------------------------


def _defaults(cls):
    return {k: v.default for k, v in inspect.signature(cls).parameters.items()}


def test_signatures_defaults_and_state():
    assert _defaults(neuron.MultiStepParametricLIFNode) == dict(
        init_tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, surrogate_function=None, detach_reset=False,
        backend="auto", store_v_seq=False)
    assert list(_defaults(neuron.ParametricLIFNode)) == ["init_tau", "decay_input", "v_threshold", "v_reset",
                                                         "surrogate_function", "detach_reset"]
    assert _defaults(neuron.MultiStepEIFNode) == dict(
        tau=2.0, delta_T=1.0, theta_rh=0.8, v_threshold=1.0, v_rest=0.0, v_reset=-0.1, surrogate_function=None,
        detach_reset=False, backend="auto", store_v_seq=False)
    assert list(_defaults(neuron.EIFNode)) == ["tau", "delta_T", "theta_rh", "v_threshold", "v_rest", "v_reset",
                                               "surrogate_function", "detach_reset"]
    plif = neuron.MultiStepParametricLIFNode(3.0)
    assert list(plif.state_dict()) == ["w"] and isinstance(plif.w, torch.nn.Parameter)
    assert plif.w.item() == pytest.approx(-math.log(2.0)) and plif.w.dtype == torch.float32
    eif = neuron.MultiStepEIFNode(v_rest=0.05, store_v_seq=True)
    assert eif.state_dict() == {} and eif.v_rest == 0.05 and eif.v == -0.1
    eif(torch.rand(2, 3))
    assert eif.v_seq.shape == (2, 3)
    eif.reset()
    assert eif.v == -0.1 and eif.v_seq is None
    assert neuron.MultiStepEIFNode(v_reset=None).v == 0.0


def test_printing_reads_like_spikingjelly():
    assert repr(neuron.MultiStepParametricLIFNode(surrogate_function=surrogate.ATan())) == (
        "MultiStepParametricLIFNode(\n  v_threshold=1.0, v_reset=0.0, detach_reset=False, tau=2.0, backend=auto\n"
        "  (surrogate_function): ATan(alpha=2.0, spiking=True)\n)")
    assert repr(neuron.EIFNode(surrogate_function=surrogate.ATan())) == (
        "EIFNode(\n  v_threshold=1.0, v_reset=-0.1, detach_reset=False, tau=2.0, delta_T=1.0, theta_rh=0.8\n"
        "  (surrogate_function): ATan(alpha=2.0, spiking=True)\n)")


@pytest.mark.parametrize("make, match", [
    (lambda: neuron.MultiStepParametricLIFNode(init_tau=1.0), "init_tau must be greater than 1"),
    (lambda: neuron.ParametricLIFNode(init_tau="2"), "init_tau must be a number"),
    (lambda: neuron.MultiStepEIFNode(tau=0.5), "tau must be greater than 1"),
    (lambda: neuron.MultiStepEIFNode(delta_T=0.0), "delta_T must be positive"),
    (lambda: neuron.MultiStepEIFNode(v_reset=0.5, v_rest=0.0), "v_rest >= v_reset"),
    (lambda: neuron.MultiStepEIFNode(v_threshold=0.5, v_reset=0.6, v_rest=1.0), "v_threshold > v_reset"),
])
def test_bad_options_are_refused(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_changing_an_option_rebuilds_the_kernel_options():
    node = neuron.MultiStepEIFNode()
    assert node.params().theta_rh == 0.8
    node.theta_rh = 0.5
    node.v_rest = 0.2
    assert node.params().theta_rh == 0.5 and node.params().resting_potential == 0.2
    plif = neuron.MultiStepParametricLIFNode()
    plif.decay_input = False
    assert plif.params().decay_input is False and plif.params().parametric


# ---- SpikingJelly 0.0.0.0.14 as an independent reference --------------------------------------------


def _spikingjelly():
    return pytest.importorskip("spikingjelly.clock_driven.neuron")


@pytest.mark.parametrize("decay_input", [True, False])
@pytest.mark.parametrize("v_reset", [0.0, -0.2, None])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_plif_matches_spikingjelly(decay_input, v_reset, detach_reset):
    sj = _spikingjelly()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 3, 16, generator=g, dtype=torch.float64) * 0.8 + 0.5
    grad_s = torch.randn(x.shape, generator=g, dtype=torch.float64)
    grad_v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    results = []
    for node in (sj.MultiStepParametricLIFNode(3.0, decay_input, 1.0, v_reset, detach_reset=detach_reset),
                 neuron.MultiStepParametricLIFNode(3.0, decay_input, 1.0, v_reset, detach_reset=detach_reset,
                                                   backend="torch", store_v_seq=True)):
        node = node.double()
        xi = x.clone().requires_grad_()
        spike = node(xi)
        torch.autograd.backward([spike, node.v_seq], [grad_s, grad_v])
        results.append((spike, node.v_seq, xi.grad, node.w.grad))
    for theirs, ours in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("v_reset", [-0.1, None])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_eif_matches_spikingjelly(v_reset, detach_reset):
    sj = _spikingjelly()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 3, 16, generator=g, dtype=torch.float64) * 0.8 + 0.4
    grad_s = torch.randn(x.shape, generator=g, dtype=torch.float64)
    # (SpikingJelly turns a float start potential into a float32 tensor: start both from float64 ones)
    v0 = torch.randn(x.shape[1:], generator=g, dtype=torch.float64) * 0.3
    results = []
    for node in (sj.MultiStepEIFNode(2.5, 0.7, 0.6, 1.0, 0.05, v_reset, detach_reset=detach_reset),
                 neuron.MultiStepEIFNode(2.5, 0.7, 0.6, 1.0, 0.05, v_reset, detach_reset=detach_reset,
                                         backend="torch", store_v_seq=True)):
        node.v = v0.clone()
        xi = x.clone().requires_grad_()
        spike = node(xi)
        (spike * grad_s).sum().backward()
        results.append((spike, node.v_seq, xi.grad))
    for theirs, ours in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


# ---- the compiled operators carry w ---------------------------------------------------------------


def test_operators_give_plif_the_reference_gradients():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(6, 2, 9, generator=g, dtype=torch.float64) + 0.5
    v0 = torch.randn(2, 9, generator=g, dtype=torch.float64) * 0.3
    weights = torch.randn(x.shape, generator=g, dtype=torch.float64)
    results = []
    for run in ("ops", "reference"):
        node = neuron.MultiStepParametricLIFNode(2.5, surrogate_function=surrogate.ATan(), backend="torch").double()
        xi, vi = x.clone().requires_grad_(), v0.clone().requires_grad_()
        if run == "ops":
            spike, v_last, _ = operators.multi_step("torch", xi, vi, node.params(), False, node.w)
        else:
            node.v = vi
            spike, v_last = node(xi), node.v
        ((spike * weights).sum() + v_last.sum()).backward()
        results.append((spike, v_last, xi.grad, vi.grad, node.w.grad))
    for got, ref in zip(*results):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_opcheck_with_w():
    p = neuron.MultiStepParametricLIFNode(surrogate_function=surrogate.Sigmoid()).params()
    options = p.text
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 7, generator=g) + 0.5
    v0 = torch.randn(7, generator=g)
    w = torch.tensor(0.4, requires_grad=True)
    forward = torch.ops.flashspike.multi_step_forward.default
    torch.library.opcheck(forward, (x.clone().requires_grad_(), v0.clone().requires_grad_(), w, True, True, "torch",
                                    options))
    torch.library.opcheck(forward, (x, None, w.detach(), False, False, "torch", options))
    h = forward(x, v0, w.detach(), True, False, "torch", options)[2]
    torch.library.opcheck(torch.ops.flashspike.multi_step_backward.default,
                          (h, torch.randn_like(x), torch.randn_like(v0), v0, w.detach(), False, True, "torch", options))


def test_torch_compile_trains_w():
    node = neuron.MultiStepParametricLIFNode(surrogate_function=surrogate.ATan(), backend="torch")
    x = torch.randn(5, 3, 4) + 0.8
    eager = neuron.MultiStepParametricLIFNode(surrogate_function=surrogate.ATan(), backend="torch")
    compiled = torch.compile(node, backend="aot_eager", fullgraph=True)
    for module in (compiled, eager):
        module(x.clone().requires_grad_()).sum().backward()
    torch.testing.assert_close(node.w.grad, eager.w.grad, rtol=1e-5, atol=1e-6)
    assert node.w.grad.abs().item() > 0


# ---- on a GPU: a captured CUDA graph reads the current w ----------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["cupy", "triton"])
def test_cuda_graph_replays_with_the_current_w(name):
    require_backend(name)
    node = neuron.MultiStepParametricLIFNode(surrogate_function=surrogate.ATan(), backend=name).cuda()
    static_x = torch.rand(8, 4096, device="cuda", generator=torch.Generator("cuda").manual_seed(0)) + 0.3
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():  # warm-up: compiles the kernels outside the capture
        for _ in range(2):
            node.reset()
            node(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    node.reset()
    with torch.cuda.graph(graph), torch.no_grad():
        static_spike = node(static_x)
    with torch.no_grad():
        node.w.add_(0.7)  # an optimizer step, in place: the graph must read the new k = sigmoid(w)
    graph.replay()
    ref = neuron.MultiStepParametricLIFNode(surrogate_function=surrogate.ATan(), backend="torch").cuda()
    with torch.no_grad():
        ref.w.copy_(node.w)
        expected = ref(static_x)
    assert not torch.equal(expected, neuron.MultiStepParametricLIFNode(backend="torch").cuda()(static_x).detach())
    torch.testing.assert_close(static_spike, expected, rtol=0, atol=0)


def test_eif_tau_is_checked_on_assignment_as_at_construction():
    node = neuron.MultiStepEIFNode()
    with pytest.raises(ValueError, match="tau must be greater than 1"):
        node.tau = 0.5
    assert node.tau == 2.0
