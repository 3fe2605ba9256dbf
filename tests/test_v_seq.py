"""A multi-step node's ``v_seq`` without ``store_v_seq=True``: computed on first read from the H the call
keeps for its backward pass (flashspike.backends.rebuilt_v_seq), equal to what ``store_v_seq=True``
keeps, at no cost when it is never read, and an explanatory error where nothing was kept."""

import gc
import weakref

import pytest
import torch
from torch import nn

from torch.utils._python_dispatch import TorchDispatchMode

from flashspike import layer, neuron, surrogate
from flashspike.backends import rebuilt_v_seq
from flashspike.memory.batchnorm_recompute import recompute_h_after_batchnorm

from conftest import kernel_device

KERNEL = "triton"  # through the CPU interpreter here; 'cupy' runs the same Function (backends.autograd)
CLASSES = {
    "IF": (neuron.MultiStepIFNode, {}),
    "LIF": (neuron.MultiStepLIFNode, {"tau": 1.5}),
    "PLIF": (neuron.MultiStepParametricLIFNode, {"init_tau": 3.0}),
    "EIF": (neuron.MultiStepEIFNode, {"delta_T": 0.5}),
}


def _pair(name, backend, v_reset, **options):
    """The same node twice: with store_v_seq=True and without."""
    cls, kwargs = CLASSES[name]
    # EIF's reset value is one that bfloat16 holds: Triton's CPU interpreter stores float32 to bfloat16
    # rounding toward zero (GPUs and torch round to nearest), so its kernels would store -0.1 otherwise
    # than the rebuild's torch rounding does.
    kwargs = {**kwargs, "v_reset": (-0.125 if name == "EIF" else 0.0) if v_reset == "hard" else None, **options}
    return cls(backend=backend, store_v_seq=True, **kwargs), cls(backend=backend, **kwargs)


@pytest.fixture(autouse=True)
def _tensors_where_the_kernels_run():
    """Every tensor these tests make is made where the kernel backend runs here: on CUDA, or on the CPU
    through Triton's interpreter."""
    with torch.device(kernel_device(KERNEL)):
        yield


def _generator(seed):
    return torch.Generator(torch.get_default_device()).manual_seed(seed)


def _same_bits(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_hand_computed_hard_and_soft_reset_with_a_carried_state():
    # IF, V_th = 1, the state carried over from an earlier call [0.5, -0.25]: H is [0.75, 0.25], then
    # [1.25, 0.75]; a hard reset then gives H [0.75, 1.0], a soft one H [1.0, 1.0] (both fire).
    x = torch.tensor([[0.25, 0.5], [0.5, 0.5], [0.75, 0.25]], requires_grad=True)
    expected = {0.0: [[0.75, 0.25], [0.0, 0.75], [0.75, 0.0]], None: [[0.75, 0.25], [0.25, 0.75], [0.0, 0.0]]}
    for backend in ("torch", KERNEL):
        for v_reset, want in expected.items():
            if backend == "torch" and v_reset is None:
                continue  # the reference keeps no H with a soft reset (see the test after the next)
            node = neuron.MultiStepIFNode(v_reset=v_reset, backend=backend)
            node.v = torch.tensor([0.5, -0.25])
            node(x)
            assert node.v_seq.tolist() == want, (backend, v_reset)


@pytest.mark.parametrize("name", list(CLASSES))
@pytest.mark.parametrize("v_reset", ["hard", "soft"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", ["torch", KERNEL])
def test_equal_to_store_v_seq(backend, dtype, v_reset, name):
    kept, rebuilt = _pair(name, backend, v_reset)
    rebuilt.load_state_dict(kept.state_dict())
    generator = _generator(3)
    x = (torch.randn(5, 2, 33, generator=generator) * 1.2 + 0.3).to(dtype)
    v0 = (torch.rand(2, 33, generator=generator) - 0.5).to(dtype)
    kept.v, rebuilt.v = v0.clone(), v0.clone()
    x = x.requires_grad_()
    kept(x)
    spikes = rebuilt(x)  # held, as the next layer would: a 16-bit rebuild reads the spikes
    sixteen_bit = dtype != torch.float32
    if v_reset == "soft" and (backend == "torch" or sixteen_bit):
        why = "keeps the pre-reset potential H only" if backend == "torch" else "cannot be recovered exactly"
        with pytest.raises(AttributeError, match=why + ".*store_v_seq=True"):
            rebuilt.v_seq
        return
    assert rebuilt.v_seq.dtype == dtype
    _same_bits(rebuilt.v_seq.detach(), kept.v_seq.detach())
    assert rebuilt.v_seq is rebuilt.v_seq  # computed once
    del spikes


def test_the_reference_with_a_soft_reset_or_detach_reset_says_why():
    for options in (dict(v_reset=None), dict(detach_reset=True)):
        node = neuron.MultiStepIFNode(backend="torch", **options)
        node(torch.rand(3, 4, requires_grad=True))
        with pytest.raises(AttributeError, match="backend 'torch'.*hard reset.*detach_reset=False"):
            node.v_seq
    node = neuron.MultiStepIFNode(backend=KERNEL, detach_reset=True)  # the kernels keep H either way
    node(torch.rand(3, 4, requires_grad=True))
    assert node.v_seq.shape == (3, 4)


@pytest.mark.parametrize("backend", ["torch", KERNEL])
def test_a_loss_on_a_rebuilt_v_seq_refuses_to_backward(backend):
    x = torch.rand(4, 3, requires_grad=True)
    node = neuron.MultiStepLIFNode(backend=backend)
    spikes = node(x)
    v_seq = node.v_seq
    assert v_seq.requires_grad
    with pytest.raises(RuntimeError, match="no gradient path.*store_v_seq=True"):
        (spikes.sum() + v_seq.sum()).backward(retain_graph=True)
    # Also when only the input's gradient is asked for: the rebuilt v_seq sits behind the call's last V.
    with pytest.raises(RuntimeError, match="no gradient path.*store_v_seq=True"):
        torch.autograd.grad(v_seq.square().sum(), x, retain_graph=True)
    assert not v_seq.detach().requires_grad
    # With store_v_seq=True, v_seq is differentiable as in SpikingJelly.
    kept = neuron.MultiStepLIFNode(backend=backend, store_v_seq=True)
    kept(x)
    (grad,) = torch.autograd.grad(kept.v_seq.sum(), x)
    assert grad.abs().sum() > 0


def test_read_under_no_grad_is_a_plain_tensor():
    node = neuron.MultiStepIFNode(backend=KERNEL)
    node(torch.rand(3, 2, requires_grad=True))
    with torch.no_grad():
        assert not node.v_seq.requires_grad


def _unavailable(node, match):
    with pytest.raises(AttributeError, match=match + ".*store_v_seq=True"):
        node.v_seq


@pytest.mark.parametrize("backend", ["torch", KERNEL])
def test_where_nothing_was_kept_reading_says_why(backend):
    node = neuron.MultiStepIFNode(backend=backend)
    _unavailable(node, "no call since the node was built or reset")
    x = torch.rand(3, 2, requires_grad=True)
    with torch.no_grad():
        node(x)
    _unavailable(node, r"without autograd \(under torch.no_grad\(\)")
    node.reset()
    with torch.inference_mode():
        node(torch.rand(3, 2))
    _unavailable(node, "without autograd")
    node.reset()
    node(torch.rand(3, 2))  # nothing requires grad
    _unavailable(node, "without autograd")
    node.reset()
    node(x)
    node.reset()
    _unavailable(node, "no call since the node was built or reset")
    node(x)
    node.v = node.v.detach()  # truncated BPTT (node.detach()) cuts the last call's graph
    _unavailable(node, "graph of its last call is gone")
    assert not hasattr(node, "v_seq")


@pytest.mark.parametrize("backend", ["torch", KERNEL])
def test_after_backward_h_is_freed(backend):
    node = neuron.MultiStepIFNode(backend=backend)
    x = torch.rand(3, 2, requires_grad=True)
    node(x).sum().backward()
    _unavailable(node, "backward pass of its last call has freed")
    node.reset()
    node(x)
    v_seq = node.v_seq  # read before backward: kept
    node(x * 1.0).sum().backward()  # a later call replaces it
    assert v_seq.shape == (3, 2)


def test_a_dropped_graph_is_not_kept_alive():
    """The node keeps weak references only: once the call's outputs are dropped, H is freed."""
    packed = []

    def pack(t):
        packed.append(weakref.ref(t))
        return t

    for backend in ("torch", KERNEL):
        packed.clear()
        node = neuron.MultiStepIFNode(backend=backend)
        x = torch.rand(3, 2, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            node(x)
        node.v = node.v.detach()  # the last reference to the call's graph
        gc.collect()
        assert packed and all(ref() is None for ref in packed if ref() is not x), backend
        _unavailable(node, "gone")


def test_the_recompute_switch_keeps_no_h():
    net = nn.Sequential(layer.SeqToANNContainer(nn.BatchNorm1d(4)), neuron.MultiStepIFNode(backend=KERNEL))
    recompute_h_after_batchnorm(net)
    net(torch.rand(3, 2, 4, requires_grad=True))
    _unavailable(net[1], "computed again in the backward pass")


def test_a_smooth_surrogate_on_the_kernels_says_why():
    node = neuron.MultiStepIFNode(backend=KERNEL, surrogate_function=surrogate.Sigmoid(spiking=False))
    node(torch.rand(3, 2, requires_grad=True))
    _unavailable(node, "smooth mode")
    ref = neuron.MultiStepIFNode(backend="torch", surrogate_function=surrogate.Sigmoid(spiking=False))
    kept = neuron.MultiStepIFNode(backend="torch", surrogate_function=surrogate.Sigmoid(spiking=False),
                                  store_v_seq=True)
    x = torch.rand(3, 2, requires_grad=True)
    ref(x), kept(x)
    _same_bits(ref.v_seq.detach(), kept.v_seq.detach())  # the reference rebuilds it with its own operations


def test_a_changed_surrogate_or_sixteen_bit_spikes_changed_in_place_say_why():
    sg = surrogate.Sigmoid()
    node = neuron.MultiStepIFNode(backend=KERNEL, surrogate_function=sg)
    node(torch.rand(3, 2, requires_grad=True))
    sg.spiking = False
    _unavailable(node, "surrogate's mode or hyper-parameters changed")
    node = neuron.MultiStepIFNode(backend=KERNEL)
    spikes = node(torch.rand(3, 2, dtype=torch.float16, requires_grad=True))
    spikes.detach().mul_(2)
    _unavailable(node, "spike output, which is gone or was changed")


def test_empty_call_and_own_dynamics():
    node = neuron.MultiStepIFNode(backend=KERNEL)
    node(torch.rand(0, 2, requires_grad=True))
    assert node.v_seq.shape == (0, 2)

    class Doubling(neuron.MultiStepIFNode):
        def neuronal_charge(self, x):
            self.v = self.v + 2 * x

    with pytest.warns(UserWarning):
        node = Doubling()
        node(torch.rand(3, 2, requires_grad=True))
    _unavailable(node, "runs its own neuronal_charge")


class _Ops(TorchDispatchMode):
    """The name of every operator a block dispatches."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def _one_call(backend):
    """(operators dispatched, shapes of the tensors autograd keeps) of one LIF call without store_v_seq."""
    saved = []
    node = neuron.MultiStepLIFNode(backend=backend)
    node.v = torch.zeros(3, 5)
    x = torch.rand(4, 3, 5, generator=_generator(0)).requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        with _Ops() as ops:
            node(x)
    return node, ops.names, saved


@pytest.mark.parametrize("backend", ["torch", KERNEL])
def test_nothing_more_is_kept_nor_computed_when_v_seq_is_not_read(backend, monkeypatch):
    """The forward dispatches the same operators (no extra kernel, no stack or copy) and autograd keeps
    the same tensors as with nothing recorded for v_seq at all."""
    node, ops, saved = _one_call(backend)
    assert node.v_seq.shape == (4, 3, 5)
    if backend == KERNEL:
        assert saved == [(4, 3, 5)]  # H alone
    monkeypatch.setattr(rebuilt_v_seq, "after_call", lambda *args: rebuilt_v_seq.NO_GRAPH)
    _, ops_without, saved_without = _one_call(backend)
    assert (ops, saved) == (ops_without, saved_without)


def test_against_spikingjelly_on_a_small_net():
    """SpikingJelly 0.0.0.0.14's multi-step nodes always keep v_seq: ours, without store_v_seq, reads the same."""
    sj_neuron = pytest.importorskip("spikingjelly.clock_driven.neuron")
    torch.manual_seed(0)
    fc1, fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def net(node1, node2):
        return nn.Sequential(layer.SeqToANNContainer(fc1), node1, layer.SeqToANNContainer(fc2), node2)

    x = torch.rand(5, 2, 6) * 2
    theirs = net(sj_neuron.MultiStepLIFNode(tau=2.0, v_reset=None), sj_neuron.MultiStepIFNode())
    theirs(x).sum().backward()  # SpikingJelly's v_seq stays after backward, ours must be read before it
    for backend in ("torch", KERNEL):
        first = neuron.MultiStepLIFNode(tau=2.0, v_reset=None, backend=backend)
        ours = net(first, neuron.MultiStepIFNode(backend=backend))
        out = ours(x)
        if backend == "torch":
            _unavailable(first, "backend 'torch'")  # soft reset on the reference
        else:
            torch.testing.assert_close(first.v_seq.detach(), theirs[1].v_seq, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ours[3].v_seq.detach(), theirs[3].v_seq, rtol=1e-6, atol=1e-6)
        del out


def test_a_compiled_call_says_why():
    node = neuron.MultiStepIFNode(backend="torch")
    torch.compile(node, backend="eager", fullgraph=True)(torch.rand(3, 2, requires_grad=True))
    _unavailable(node, "torch.compile")
    kept = neuron.MultiStepIFNode(backend="torch", store_v_seq=True)
    torch.compile(kept, backend="eager", fullgraph=True)(torch.rand(3, 2, requires_grad=True))
    assert kept.v_seq.shape == (3, 2)
