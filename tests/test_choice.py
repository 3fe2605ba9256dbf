"""The one chooser (backends/choice.py), its plans, and the node's kept plan.

- eager 'torch' is the autograd reference (no kernel set), compiled 'torch' the PyTorch kernel set;
- a kernel backend keeps float64 exact by running 'torch', after one notice per backend and dtype;
- plans come from one dictionary; a named backend's own error is raised as it is;
- a node chooses once per options, dtype and device type, and again after any of them changes (an
  option, the backend, a surrogate's hyper-parameter assigned in place); copies and pickles of a node
  leave its plan behind.
"""

import copy
import os
import pickle
import warnings

import pytest
import torch

from flashspike import backends, neuron, surrogate
from flashspike.backends import choice, reference, torch_kernels
from flashspike.backends.kernel_set import KernelSet
from flashspike.params import NeuronParams

P = NeuronParams(leaky=True, v_threshold=1.0, v_reset=0.0, detach_reset=False, surrogate=surrogate.ATan())
TRITON = os.environ.get("TRITON_INTERPRET") == "1" and not torch.cuda.is_available()


def test_torch_is_the_reference_eagerly_and_a_kernel_set_when_traced():
    x = torch.zeros(2, 3)
    assert choice.plan_for("torch", x, P).kernels is None
    assert choice.plan_for("auto", x, P).kernels is None  # 'auto' on a CPU is 'torch'
    assert choice.plan_for("torch", x, P, traced=True).kernels is torch_kernels.KERNELS
    assert choice.plan_for("auto", x.double(), P, traced=True).kernels is torch_kernels.KERNELS


def test_a_callable_surrogate_runs_the_reference_or_is_refused():
    p = NeuronParams(leaky=False, v_threshold=1.0, v_reset=0.0, detach_reset=False, surrogate=torch.sigmoid)
    assert choice.plan_for("torch", torch.zeros(2, 3), p, traced=True).kernels is None
    assert p.surrogate_state is None
    if TRITON:
        with pytest.raises(TypeError, match="backend 'triton' generates its kernels"):
            choice.plan_for("triton", torch.zeros(2, 3), p)


def test_bad_names_and_devices_raise_their_own_errors():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        choice.plan_for("tpu", torch.zeros(2, 3), P)
    with pytest.raises((backends.BackendError, ImportError)):
        choice.plan_for("cupy", torch.zeros(2, 3), P)


@pytest.mark.skipif(not TRITON, reason="needs Triton's interpreter (a machine without CUDA)")
def test_float64_runs_torch_after_one_notice_per_backend(monkeypatch):
    triton = backends.get("triton")
    monkeypatch.setattr(triton, "_warned_dtypes", set())
    x = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.warns(UserWarning, match="'triton' has no torch.float64 kernels"):
        assert choice.plan_for("triton", x, P).kernels is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choice.plan_for("triton", x, P, traced=True).kernels is torch_kernels.KERNELS
    kernels = choice.plan_for("triton", x.float(), P).kernels
    assert isinstance(kernels, KernelSet) and kernels is choice.plan_for("triton", x.float(), P).kernels


class _Counting:
    """Counts the chooser's calls."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = choice.plan_for

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(neuron, "plan_for", counted)


def test_a_node_chooses_again_only_when_something_it_depends_on_changes(monkeypatch):
    counter = _Counting(monkeypatch)
    sg = surrogate.Sigmoid()
    node = neuron.MultiStepLIFNode(surrogate_function=sg, backend="torch")
    x = torch.rand(3, 4)
    for _ in range(3):
        node(x)
        node.reset()
    assert counter.calls == 1
    node(x.double())  # another dtype
    node.reset()
    assert counter.calls == 2
    node.tau = 3.0  # another option
    node(x)
    node.reset()
    assert counter.calls == 3
    sg.alpha = 2.5  # a hyper-parameter assigned in place
    node(x)
    node.reset()
    assert counter.calls == 4
    node.backend = "auto"
    node(x)
    assert counter.calls == 5


def test_copies_and_pickles_of_a_node_choose_again():
    node = neuron.MultiStepLIFNode(backend="torch")
    node(torch.rand(3, 4))
    assert "_plan" in node.__dict__
    for twin in (copy.deepcopy(node), pickle.loads(pickle.dumps(node))):
        assert "_plan" not in twin.__dict__
        twin.reset()
        twin(torch.rand(3, 4))
    assert "_plan" in node.__dict__  # the original keeps its own


def test_the_eager_node_runs_what_was_chosen(monkeypatch):
    seen = []

    class Recording(KernelSet):
        def launch_forward(self, x, v_init, spike, v_out, h, decay, p):
            seen.append(("forward", x.data_ptr(), h is not None))
            torch_kernels.KERNELS.launch_forward(x, v_init, spike, v_out, h, decay, p)

        def launch_backward(self, *args):
            seen.append(("backward",))
            return torch_kernels.KERNELS.launch_backward(*args)

    monkeypatch.setattr(neuron, "plan_for", lambda backend, x, p: choice.Plan(backend, x.device.type, x.dtype,
                                                                              Recording(), p, p.surrogate_state))
    node = neuron.MultiStepLIFNode(backend="torch")
    x = (torch.rand(4, 5, dtype=torch.float64) * 2).requires_grad_()
    spike = node(x)
    spike.sum().backward()
    assert seen == [("forward", x.data_ptr(), True), ("backward",)]
    ref_x = x.detach().clone().requires_grad_()
    ref_spike, _, _ = reference.BACKEND.multi_step(ref_x, 0.0, node.params(), False)
    ref_spike.sum().backward()
    assert torch.equal(spike, ref_spike)
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-12, atol=1e-12)


def test_layers_with_equal_options_share_one_plan_and_each_chooses_once(monkeypatch):
    """Plans are kept in one dictionary by the options' text: a second layer with equal options gets the
    first one's choice (its kernel set) for its own options object, and alternating calls of the two
    layers choose nothing again."""
    counter = _Counting(monkeypatch)
    before = len(choice._chosen)
    first, second = (neuron.MultiStepLIFNode(tau=3.0, backend="torch") for _ in range(2))
    x = torch.rand(3, 4)
    for _ in range(3):
        for node in (first, second):
            node(x)
            node.reset()
    assert counter.calls == 2 and len(choice._chosen) <= before + 1
    a, b = first.__dict__["_plan"], second.__dict__["_plan"]
    assert a.params is first.params() and b.params is second.params() and a.kernels is b.kernels
    text = first.params().text  # the compiled operators' plan: options read back once, then looked up
    traced = choice.plan_for_text("torch", x, text)
    assert traced is choice.plan_for_text("torch", x, text) and traced.params == first.params()
    assert traced.kernels is torch_kernels.KERNELS and a.kernels is None  # compiled 'torch' runs a kernel set
