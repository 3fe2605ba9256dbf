"""Neurons whose subclass overrides charge, fire or reset run those methods, single- and multi-step,
and behave as SpikingJelly's neurons with the same overrides."""

import types
import warnings

import pytest
import torch

from flashspike import neuron, surrogate
from flashspike.backends import reference

from conftest import kernel_device


# Overrides written once and given to our classes and SpikingJelly's alike.
def charge_with_bias(self, x):
    self.v = self.v + x + 0.5


def fire_at_half_threshold(self):
    return self.surrogate_function(self.v - 0.5 * self.v_threshold)


def reset_below_rest(self, spike):
    spike_d = spike.detach() if self.detach_reset else spike
    self.v = self.v * (1.0 - spike_d) - 0.25 * spike_d


OVERRIDES = {
    "charge": {"neuronal_charge": charge_with_bias},
    "fire": {"neuronal_fire": fire_at_half_threshold},
    "reset": {"neuronal_reset": reset_below_rest},
    "all": {"neuronal_charge": charge_with_bias, "neuronal_fire": fire_at_half_threshold,
            "neuronal_reset": reset_below_rest},
}


def _subclass(base, methods):
    return type("Custom" + base.__name__, (base,), dict(methods))


def test_bias_in_the_charge_fires_every_other_step():
    # H = 0.5, 1.0 (fires, back to 0), 0.5, 1.0 with zero input.
    node = _subclass(neuron.MultiStepIFNode, OVERRIDES["charge"])(backend="torch", store_v_seq=True)
    with pytest.warns(UserWarning, match="has its own neuronal_charge"):
        spikes = node(torch.zeros(4, 1))
    assert spikes.view(-1).tolist() == [0.0, 1.0, 0.0, 1.0]
    assert node.v_seq.view(-1).tolist() == [0.5, 0.0, 0.5, 0.0]


@pytest.mark.parametrize("backend", ["auto", "torch", "triton", "cupy"])
def test_override_runs_whatever_the_backend(backend):
    node = _subclass(neuron.MultiStepLIFNode, OVERRIDES["charge"])(backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spikes = node(torch.zeros(4, 3))
    assert spikes[:, 0].tolist() == [0.0, 1.0, 0.0, 1.0]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "cupy", "triton"])
def test_override_on_cuda_matches_the_cpu(backend):
    cls = _subclass(neuron.MultiStepLIFNode, OVERRIDES["all"])
    x = torch.randn(5, 3, 7) + 0.3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = cls(backend="torch", store_v_seq=True)
        on_cpu = expected(x)
        node = cls(backend=backend, store_v_seq=True)
        got = node(x.cuda())
    assert torch.equal(got.cpu(), on_cpu)
    torch.testing.assert_close(node.v_seq.cpu(), expected.v_seq)


def test_the_step_loop_notice_is_shown_once_per_class():
    cls = _subclass(neuron.MultiStepIFNode, OVERRIDES["fire"])
    with pytest.warns(UserWarning, match="fused kernels"):
        cls()(torch.zeros(2, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cls()(torch.zeros(2, 1))


def test_classes_without_overrides_keep_the_fused_path(monkeypatch):
    calls = []
    real = reference.BACKEND.multi_step
    monkeypatch.setattr(reference.BACKEND, "multi_step", lambda *args: calls.append(1) or real(*args))
    plain = type("Plain", (neuron.MultiStepLIFNode,), {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain(backend="torch")(torch.zeros(2, 3))
        neuron.MultiStepIFNode(backend="torch")(torch.zeros(2, 3))
    assert len(calls) == 2
    assert not plain._own_dynamics and not neuron.MultiStepIFNode._own_dynamics
    assert _subclass(neuron.MultiStepIFNode, OVERRIDES["reset"])._own_dynamics
    custom = _subclass(neuron.MultiStepIFNode, OVERRIDES["charge"])(backend="torch")
    with pytest.warns(UserWarning):
        custom(torch.zeros(2, 3))
    assert len(calls) == 2  # the step loop, not the backend


def test_a_class_whose_methods_the_kernels_implement_keeps_the_fused_path():
    # A neuron with fused kernels may define the methods for single-step use and declare them known.
    fused = _subclass(neuron.MultiStepLIFNode, {"neuronal_charge": neuron.BaseNode.neuronal_charge,
                                                "_dynamics_in_kernels": True})
    assert not fused._own_dynamics
    assert _subclass(fused, OVERRIDES["fire"])._own_dynamics  # its subclasses' overrides still count
    assert not _subclass(fused, {})._own_dynamics


@pytest.mark.parametrize("base", [neuron.IFNode, neuron.LIFNode])
def test_single_step_nodes_run_the_overrides(base):
    node = _subclass(base, OVERRIDES["all"])()
    got = [node(torch.zeros(1)).item() for _ in range(4)]
    # H = 0.5 fires at half the threshold and resets to -0.25; H = 0.25 does not fire; H = 0.75 fires;
    # H = 0.25 again. (The override replaces LIF's leak too, so IF and LIF agree.)
    assert got == [1.0, 0.0, 1.0, 0.0]
    assert node.v.item() == pytest.approx(0.25)


def test_single_step_methods_give_the_built_in_trajectory():
    # The built-in methods are the equations of flashspike.dynamics: charge, fire and reset by hand.
    node = neuron.LIFNode(tau=2.0)
    node._start_steps(torch.tensor([0.0]))
    node.neuronal_charge(torch.tensor([3.0]))
    assert node.v.item() == 1.5
    spike = node.neuronal_fire()
    assert spike.item() == 1.0
    node.neuronal_reset(spike)
    assert node.v.item() == 0.0


# ---- against SpikingJelly ----

def _sj_pair(kind, methods, **kw):
    sj_neuron = pytest.importorskip("spikingjelly.clock_driven.neuron")
    sj_surrogate = pytest.importorskip("spikingjelly.clock_driven.surrogate")
    ours_base, theirs_base = {
        "if": (neuron.MultiStepIFNode, sj_neuron.MultiStepIFNode),
        "lif": (neuron.MultiStepLIFNode, sj_neuron.MultiStepLIFNode),
        "if1": (neuron.IFNode, sj_neuron.IFNode),
        "lif1": (neuron.LIFNode, sj_neuron.LIFNode),
    }[kind]
    ours = _subclass(ours_base, methods)(surrogate_function=surrogate.ATan(), **kw,
                                         **({"backend": "torch", "store_v_seq": True} if "1" not in kind else {}))
    theirs = _subclass(theirs_base, methods)(surrogate_function=sj_surrogate.ATan(), **kw)
    return ours, theirs


@pytest.mark.parametrize("override", OVERRIDES)
@pytest.mark.parametrize("kind", ["if", "lif"])
@pytest.mark.parametrize("v_reset,detach_reset", [(0.0, False), (None, True), (-0.2, False)])
def test_multistep_overrides_match_spikingjelly(override, kind, v_reset, detach_reset):
    ours, theirs = _sj_pair(kind, OVERRIDES[override], v_reset=v_reset, detach_reset=detach_reset)
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(6, 5, generator=g, dtype=torch.float64) * 0.6 + 0.2)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outs = [ours(xs[0]), theirs(xs[1])]
    w = torch.randn(6, 5, generator=g, dtype=torch.float64)
    for out, node in zip(outs, (ours, theirs)):
        ((out * w).sum() + node.v_seq.sum()).backward()
    assert torch.equal(outs[0].detach(), outs[1].detach())
    torch.testing.assert_close(ours.v_seq.detach(), theirs.v_seq.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("override", OVERRIDES)
@pytest.mark.parametrize("kind", ["if1", "lif1"])
def test_single_step_overrides_match_spikingjelly(override, kind):
    _assert_same_steps(*_sj_pair(kind, OVERRIDES[override]))


def _assert_same_steps(ours, theirs):
    g = torch.Generator().manual_seed(4)
    for _ in range(5):
        x = torch.randn(7, generator=g, dtype=torch.float64) * 0.6 + 0.2
        assert torch.equal(ours(x), theirs(x))
        torch.testing.assert_close(ours.v, theirs.v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("override", OVERRIDES)
def test_overrides_assigned_to_a_multistep_node_match_spikingjelly(override):
    """``node.neuronal_fire = ...`` on the node itself: SpikingJelly's step loop calls the node's
    attribute, so an instance's own method counts as a subclass's does."""
    sj_neuron = pytest.importorskip("spikingjelly.clock_driven.neuron")
    sj_surrogate = pytest.importorskip("spikingjelly.clock_driven.surrogate")
    ours = neuron.MultiStepLIFNode(surrogate_function=surrogate.ATan(), backend="torch", store_v_seq=True)
    theirs = sj_neuron.MultiStepLIFNode(surrogate_function=sj_surrogate.ATan())
    for node in (ours, theirs):
        for name, method in OVERRIDES[override].items():
            setattr(node, name, types.MethodType(method, node))
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 0.6 + 1.2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(ours(x), theirs(x))
    torch.testing.assert_close(ours.v_seq, theirs.v_seq, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_an_assigned_override_runs_on_any_backend_until_deleted(backend):
    node = neuron.MultiStepIFNode(backend=backend)
    x = torch.zeros(4, 3, device=kernel_device(backend))
    node.neuronal_charge = types.MethodType(charge_with_bias, node)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert node(x)[:, 0].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert not type(node)._own_dynamics  # the class itself is untouched
    del node.neuronal_charge
    node.reset()
    assert node(x).sum().item() == 0.0  # the backend's own charge again


def test_a_direct_base_node_subclass_runs_like_spikingjelly():
    # SpikingJelly users write a neuron as a BaseNode subclass that defines its charge.
    sj_neuron = pytest.importorskip("spikingjelly.clock_driven.neuron")
    sj_surrogate = pytest.importorskip("spikingjelly.clock_driven.surrogate")

    def decaying_charge(self, x):
        self.v = 0.9 * self.v + x

    ours = _subclass(neuron.BaseNode, {"neuronal_charge": decaying_charge})(surrogate_function=surrogate.ATan())
    theirs = _subclass(sj_neuron.BaseNode, {"neuronal_charge": decaying_charge})(surrogate_function=sj_surrogate.ATan())
    _assert_same_steps(ours, theirs)


def test_a_subclass_may_keep_attributes_of_any_kind():
    # Only a node's own options are checked on assignment: a custom neuron's extra state is free.
    class Adaptive(neuron.MultiStepIFNode):
        def __init__(self):
            super().__init__(backend="torch")
            self.a0 = torch.nn.Parameter(torch.tensor(0.1))
            self.register_memory("v_rest", torch.zeros(()))

        def neuronal_charge(self, x):
            self.v = self.v + x - self.a0

    node = Adaptive()
    with pytest.warns(UserWarning):
        node(torch.ones(3, 2)).sum().backward()
    assert node.a0.grad is not None
