"""QIFNode, GeneralNode / MultiStepGeneralNode and LIAFNode: hand-computed trajectories and SpikingJelly."""

import warnings

import pytest
import torch

from flashspike import neuron, surrogate


def _steps(node, xs):
    """Feed a one-neuron single-step node ``xs``; (outputs, potentials after each step)."""
    ys, vs = [], []
    for x in xs:
        ys.append(node(torch.tensor([x], dtype=torch.float64)).item())
        vs.append(node.v.item())
    return ys, vs


def test_qif_hand_computed_trajectory():
    # tau=2, v_c=0.8, a0=1, v_rest=0; starts at v_reset=-0.1; x = 1 each step:
    # H = -0.1 + (1 + (-0.1)(-0.9))/2 = 0.445
    # H = 0.445 + (1 + 0.445·(-0.355))/2 = 0.8660125
    # H = 0.8660125 + (1 + 0.8660125·0.0660125)/2 ≈ 1.3946 -> fires, back to -0.1
    node = neuron.QIFNode()
    assert node.v == -0.1
    spikes, vs = _steps(node, [1.0, 1.0, 1.0])
    assert spikes == [0.0, 0.0, 1.0]
    assert vs == pytest.approx([0.445, 0.8660125, -0.1], abs=1e-12)
    node.reset()
    assert node.v == -0.1


def test_qif_options_checked():
    with pytest.raises(ValueError, match="a0 must be positive"):
        neuron.QIFNode(a0=0.0)
    with pytest.raises(ValueError, match="v_threshold > v_reset"):
        neuron.QIFNode(v_threshold=-0.2)
    with pytest.raises(ValueError, match="v_rest >= v_reset"):
        neuron.QIFNode(v_rest=-0.5)
    with pytest.raises(ValueError, match="v_c must be a finite number"):
        neuron.QIFNode().v_c = float("nan")
    assert neuron.QIFNode(v_reset=None, v_rest=-3.0).v == 0.0  # soft reset: no ordering to check


# a=0.5, b=2, c=0.1, threshold 1, hard reset to 0; x = .2, .3, 0, .5:
# H = .5, .25 + .6 + .1 = .95, .475 + .1 = .575, .2875 + 1 + .1 = 1.3875 (fires)
GENERAL_XS, GENERAL_SPIKES, GENERAL_VS = [0.2, 0.3, 0.0, 0.5], [0.0, 0.0, 0.0, 1.0], [0.5, 0.95, 0.575, 0.0]


def test_general_node_hand_computed_trajectory():
    spikes, vs = _steps(neuron.GeneralNode(0.5, 2.0, 0.1), GENERAL_XS)
    assert spikes == GENERAL_SPIKES
    assert vs == pytest.approx(GENERAL_VS, abs=1e-12)


@pytest.mark.parametrize("backend", ["torch", "auto", "triton"])
def test_multistep_general_node_hand_computed_trajectory(backend):
    node = neuron.MultiStepGeneralNode(0.5, 2.0, 0.1, backend=backend, store_v_seq=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no kernels by design: no notice
        spikes = node(torch.tensor(GENERAL_XS, dtype=torch.float64).view(4, 1))
    assert spikes.view(-1).tolist() == GENERAL_SPIKES
    assert node.v_seq.view(-1).tolist() == pytest.approx(GENERAL_VS, abs=1e-12)
    assert isinstance(node, neuron.GeneralNode)


def test_general_node_coefficients_are_buffers():
    node = neuron.MultiStepGeneralNode(torch.tensor([0.5, 1.0]), 1, 0.0, backend="torch")
    assert sorted(node.state_dict()) == ["a", "b", "c"]
    assert node.b.dtype == torch.float64 and node.b.item() == 1.0  # a number is kept exact
    assert node.a.dtype == torch.float32  # a tensor as given
    assert neuron.GeneralNode(0.5, 2.0)(torch.ones(3, dtype=torch.float16)).dtype == torch.float16
    node.double()
    assert node.a.dtype == torch.float64
    # Per-neuron a: the second neuron never leaks.
    spikes = node(torch.full((3, 2), 0.4, dtype=torch.float64))
    assert spikes[:, 1].tolist() == [0.0, 0.0, 1.0] and spikes[:, 0].sum() == 0
    with pytest.raises(TypeError, match="floating-point tensor"):
        neuron.GeneralNode(torch.tensor([1, 2]), 1.0)
    with pytest.raises(ValueError, match="b must be a finite number"):
        neuron.GeneralNode(1.0, float("inf"))
    assert repr(node).splitlines()[1] == "  v_threshold=1.0, v_reset=0.0, detach_reset=False, backend=torch"


@pytest.mark.parametrize("threshold_related,outputs", [(True, [0.0, 0.0, 0.875]), (False, [0.5, 0.75, 1.875])])
def test_liaf_hand_computed_trajectory(threshold_related, outputs):
    # LIF tau=2, decay_input, hard reset to 0; x = 1, 1, 3: H = .5, .75, .75 + (3 - .75)/2 = 1.875 (fires)
    node = neuron.LIAFNode(torch.relu, threshold_related)
    ys, vs = _steps(node, [1.0, 1.0, 3.0])
    assert ys == pytest.approx(outputs, abs=1e-12)
    assert vs == pytest.approx([0.5, 0.75, 0.0], abs=1e-12)


def test_liaf_arguments():
    node = neuron.LIAFNode(torch.nn.ReLU(), False, 3.0, False, v_reset=None)
    assert (node.tau, node.decay_input, node.v_reset) == (3.0, False, None)
    assert "(act): ReLU()" in repr(node)
    with pytest.raises(TypeError, match="act must be callable"):
        neuron.LIAFNode("relu", True)
    with pytest.raises(TypeError, match="threshold_related must be True or False"):
        neuron.LIAFNode(torch.relu, None)


# ---- against SpikingJelly, float64 ----

def _sj():
    sj_neuron = pytest.importorskip("spikingjelly.clock_driven.neuron")
    sj_surrogate = pytest.importorskip("spikingjelly.clock_driven.surrogate")
    return sj_neuron, sj_surrogate


def _compare_single_step(ours, theirs, scale=0.6, shift=0.2, steps=6):
    g = torch.Generator().manual_seed(5)
    xs = [torch.randn(9, generator=g, dtype=torch.float64) * scale + shift for _ in range(steps)]
    losses = []
    for node in (ours, theirs):
        x = torch.stack(xs).requires_grad_()
        loss = sum((node(x[t]) * (t + 1)).sum() for t in range(steps)) + node.v.sum()
        loss.backward()
        losses.append((loss.detach(), x.grad, node.v.detach()))
    (l0, g0, v0), (l1, g1, v1) = losses
    torch.testing.assert_close(l0, l1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(v0, v1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g0, g1, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("v_reset", [-0.1, None])
def test_qif_matches_spikingjelly(v_reset):
    sj_neuron, sj_surrogate = _sj()
    kw = dict(tau=3.0, v_c=0.6, a0=1.5, v_threshold=1.0, v_rest=0.0, v_reset=v_reset)
    _compare_single_step(neuron.QIFNode(**kw, surrogate_function=surrogate.ATan()),
                         sj_neuron.QIFNode(**kw, surrogate_function=sj_surrogate.ATan()))


@pytest.mark.parametrize("threshold_related", [True, False])
def test_liaf_matches_spikingjelly(threshold_related):
    sj_neuron, sj_surrogate = _sj()
    ours = neuron.LIAFNode(torch.tanh, threshold_related, 2.5, surrogate_function=surrogate.ATan(), detach_reset=True)
    theirs = sj_neuron.LIAFNode(torch.tanh, threshold_related, 2.5, surrogate_function=sj_surrogate.ATan(),
                                detach_reset=True)
    _compare_single_step(ours, theirs, scale=1.0, shift=0.8)


def test_general_node_matches_spikingjelly_machinery():
    # SpikingJelly 0.0.0.0.14's own GeneralNode cannot run (it overwrites its coefficient buffers with
    # None), so the reference is its BaseNode with the same charge.
    sj_neuron, sj_surrogate = _sj()

    class SJGeneral(sj_neuron.BaseNode):
        def neuronal_charge(self, x):
            self.v = 0.7 * self.v + 1.3 * x - 0.05

    ours = neuron.GeneralNode(0.7, 1.3, -0.05, v_reset=None, surrogate_function=surrogate.ATan())
    _compare_single_step(ours, SJGeneral(v_reset=None, surrogate_function=sj_surrogate.ATan()))
    multi = neuron.MultiStepGeneralNode(0.7, 1.3, -0.05, v_reset=None, surrogate_function=surrogate.ATan())
    single = neuron.GeneralNode(0.7, 1.3, -0.05, v_reset=None, surrogate_function=surrogate.ATan())
    x = torch.randn(5, 4, dtype=torch.float64) + 0.5
    assert torch.equal(multi(x), torch.stack([single(step) for step in x]))
