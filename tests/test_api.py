"""The public API: signatures, printing, state, backends, containers, helpers and every bad input."""

import inspect
import math

import pytest
import torch
from torch import nn

import flashspike
from flashspike import backends, cuda_utils, functional, layer, neuron, surrogate


def test_signatures_match_spikingjelly_multistep_api():
    def defaults(cls):
        return {k: v.default for k, v in inspect.signature(cls).parameters.items()}

    assert defaults(neuron.MultiStepIFNode) == dict(
        v_threshold=1.0, v_reset=0.0, surrogate_function=None, detach_reset=False, backend="auto", store_v_seq=False)
    assert defaults(neuron.MultiStepLIFNode) == dict(
        tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, surrogate_function=None, detach_reset=False,
        backend="auto", store_v_seq=False)
    assert list(defaults(neuron.IFNode)) == ["v_threshold", "v_reset", "surrogate_function", "detach_reset"]
    assert list(defaults(neuron.LIFNode)) == ["tau", "decay_input", "v_threshold", "v_reset",
                                              "surrogate_function", "detach_reset"]
    # surrogate_function=None means a fresh Sigmoid(), as SpikingJelly's default.
    assert repr(neuron.MultiStepIFNode().surrogate_function) == "Sigmoid(alpha=4.0, spiking=True)"
    # Positional arguments in SpikingJelly's order.
    node = neuron.MultiStepLIFNode(3.0, False, 0.5, None, surrogate.ATan(), True, "torch", True)
    assert (node.tau, node.decay_input, node.v_threshold, node.v_reset, node.detach_reset, node.backend,
            node.store_v_seq) == (3.0, False, 0.5, None, True, "torch", True)


def test_printing_reads_like_spikingjelly():
    assert repr(neuron.MultiStepIFNode(surrogate_function=surrogate.ATan())) == (
        "MultiStepIFNode(\n  v_threshold=1.0, v_reset=0.0, detach_reset=False, backend=auto\n"
        "  (surrogate_function): ATan(alpha=2.0, spiking=True)\n)")
    assert repr(neuron.MultiStepLIFNode(surrogate_function=surrogate.ATan(), backend="cupy")) == (
        "MultiStepLIFNode(\n  v_threshold=1.0, v_reset=0.0, detach_reset=False, tau=2.0, backend=cupy\n"
        "  (surrogate_function): ATan(alpha=2.0, spiking=True)\n)")
    assert repr(neuron.LIFNode(tau=3.0, surrogate_function=surrogate.ATan())) == (
        "LIFNode(\n  v_threshold=1.0, v_reset=0.0, detach_reset=False, tau=3.0\n"
        "  (surrogate_function): ATan(alpha=2.0, spiking=True)\n)")
    assert "v_reset=None" in repr(neuron.IFNode(v_reset=None))


def test_state_is_a_plain_attribute_not_in_state_dict():
    node = neuron.MultiStepIFNode(store_v_seq=True)
    assert node.v == 0.0 and node.v_seq is None
    node(torch.rand(3, 2, 4))
    assert node.v.shape == (2, 4)
    assert node.state_dict() == {} and list(node.buffers()) == []
    node.reset()
    assert node.v == 0.0
    assert neuron.MultiStepIFNode(v_reset=None).v == 0.0
    assert neuron.MultiStepLIFNode(v_reset=-0.5).v == -0.5


def test_store_v_seq_keeps_every_step():
    node = neuron.MultiStepIFNode(store_v_seq=True)
    x = torch.rand(5, 3)
    node(x)
    assert node.v_seq.shape == (5, 3)
    assert torch.equal(node.v_seq[-1], node.v)
    node.store_v_seq = False
    node.reset()
    node(x)
    with pytest.raises(AttributeError, match="store_v_seq=True"):
        node.v_seq
    assert not hasattr(node, "v_seq")


def test_v_seq_without_store_v_seq_says_how_to_get_it():
    node = neuron.MultiStepLIFNode()
    node(torch.rand(3, 2))
    with pytest.raises(AttributeError, match=r"MultiStepLIFNode.v_seq is not available: its last call ran without autograd.*store_v_seq=True"):
        node.v_seq
    node.store_v_seq = True
    assert node.v_seq is None  # from the next call on
    node(torch.rand(3, 2))
    assert node.v_seq.shape == (3, 2)
    with pytest.raises(AttributeError, match="no attribute 'v_sq'"):  # other names: torch's own message
        node.v_sq


def test_reset_net_resets_every_stateful_module():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.count = 5

        def reset(self):
            self.count = 0

        def forward(self, x):
            return x

    net = nn.Sequential(layer.SeqToANNContainer(nn.Linear(4, 4)), neuron.MultiStepIFNode(),
                        nn.Sequential(neuron.MultiStepLIFNode(v_reset=None)), layer.MultiStepContainer(neuron.IFNode()),
                        Custom())
    net(torch.rand(3, 2, 4) * 3)
    functional.reset_net(net)
    assert net[1].v == 0.0 and net[2][0].v == 0.0 and net[3][0].v == 0.0 and net[4].count == 0


def test_set_backend():
    net = nn.Sequential(neuron.MultiStepIFNode(), neuron.IFNode(), neuron.MultiStepLIFNode())
    assert functional.set_backend(net, "torch") == 2
    assert net[0].backend == net[2].backend == "torch"
    with pytest.raises(ValueError, match="known backends"):
        functional.set_backend(net, "jax")


def test_backend_names_checked_at_construction_usable_at_call():
    for name in ("torch", "cupy", "triton", "auto"):
        node = neuron.MultiStepIFNode(backend=name)  # never fails, even on a CPU-only machine
        assert node.backend == name
    with pytest.raises(ValueError, match="'auto', 'torch', 'cupy', 'triton'"):
        neuron.MultiStepIFNode(backend="cuda")
    node = neuron.MultiStepIFNode()
    with pytest.raises(ValueError, match="known backends"):
        node.backend = "CuPy"
    assert flashspike.KNOWN_BACKENDS == ("auto", "torch", "cupy", "triton")


def test_auto_is_torch_on_cpu_and_costs_a_lookup():
    x = torch.rand(2, 3)
    assert backends.resolve("auto", x).name == "torch"
    assert backends.resolve("auto", x) is backends.resolve("auto", x)
    assert backends.auto_candidates("cpu", torch.float32) == ("torch",)
    assert backends.auto_candidates("cuda", torch.float64) == ("torch",)
    assert backends.auto_candidates("cuda", torch.float16)[-1] == "torch"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-tensor error of GPU backends")
def test_cupy_on_a_cpu_tensor_is_a_clear_error():
    node = neuron.MultiStepIFNode(backend="cupy")
    with pytest.raises((backends.BackendError, ImportError)) as err:
        node(torch.rand(2, 3))
    assert "'torch'" in str(err.value) or "pip install" in str(err.value)


@pytest.mark.parametrize("node", [neuron.MultiStepIFNode(), neuron.MultiStepLIFNode()])
def test_bad_multistep_inputs(node):
    with pytest.raises(ValueError, match=r"\[T, N, \*\]"):
        node(torch.rand(5))
    with pytest.raises(ValueError, match=r"\[T, N, \*\]"):
        node(torch.tensor(1.0))
    with pytest.raises(TypeError, match="floating-point"):
        node(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="floating-point"):
        node(torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="torch.Tensor"):
        node([[1.0, 2.0]])


def test_batch_size_change_without_reset_is_a_clear_error():
    node = neuron.MultiStepIFNode()
    node(torch.rand(4, 8, 3))
    with pytest.raises(ValueError, match="reset_net"):
        node(torch.rand(4, 6, 3))
    node.reset()
    assert node(torch.rand(4, 6, 3)).shape == (4, 6, 3)
    single = neuron.IFNode()
    single(torch.rand(8))
    with pytest.raises(ValueError, match="reset_net"):
        single(torch.rand(6))


def test_state_dtype_follows_the_input():
    node = neuron.MultiStepIFNode()
    node(torch.rand(2, 3))
    y = node(torch.rand(2, 3, dtype=torch.float64))
    assert y.dtype == node.v.dtype == torch.float64


@pytest.mark.parametrize("shape", [(0, 3), (3, 0), (0, 0, 2), (2, 0, 5)])
def test_empty_inputs_give_empty_outputs(shape):
    node = neuron.MultiStepLIFNode(store_v_seq=True)
    y = node(torch.rand(shape))
    assert y.shape == shape and node.v_seq.shape == shape
    if shape[0] == 0:
        assert node.v == 0.0  # nothing happened
    else:
        assert node.v.shape == shape[1:]


@pytest.mark.parametrize("backend", ["auto", "torch", "triton", "cupy"])
@pytest.mark.parametrize("shape", [(3, 0), (0, 2), (2, 0, 5)])
def test_empty_inputs_stay_attached_to_autograd(backend, shape):
    node = neuron.MultiStepLIFNode(backend=backend, store_v_seq=True)
    x = torch.rand(shape, requires_grad=True)
    y = node(x)
    assert y.requires_grad and node.v_seq.requires_grad
    (y.sum() + node.v_seq.sum()).backward()
    assert x.grad is not None and x.grad.shape == shape
    with torch.no_grad():
        assert not node(torch.rand(shape)).requires_grad


def test_empty_input_to_a_single_step_node_stays_attached():
    x = torch.rand(0, 4, requires_grad=True)
    y = neuron.LIFNode()(x)
    assert y.shape == (0, 4) and y.requires_grad
    y.sum().backward()
    assert x.grad.shape == (0, 4)


def test_nan_stays_nan():
    node = neuron.MultiStepIFNode(store_v_seq=True)
    x = torch.tensor([[0.5, float("nan")], [0.7, 0.1]], requires_grad=True)
    y = node(x)
    assert y[:, 0].tolist() == [0.0, 1.0]
    assert math.isnan(y[0, 1].item()) and math.isnan(node.v[1].item())
    y.sum().backward()  # no crash
    assert math.isfinite(x.grad[0, 0])


def test_bad_neuron_options():
    with pytest.raises(ValueError, match="tau"):
        neuron.MultiStepLIFNode(tau=0.0)
    with pytest.raises(TypeError, match="v_threshold"):
        neuron.MultiStepIFNode(v_threshold="1")
    with pytest.raises(TypeError, match="v_reset"):
        neuron.IFNode(v_reset=[0.0])
    with pytest.raises(TypeError, match="surrogate"):
        neuron.MultiStepIFNode(surrogate_function="ATan")  # any callable is taken (backend torch)


def test_single_step_nodes_match_multistep():
    x = torch.randn(6, 4, 5) + 0.6
    multi = neuron.MultiStepLIFNode(tau=1.5, v_reset=None)
    single = layer.MultiStepContainer(neuron.LIFNode(tau=1.5, v_reset=None))
    assert torch.equal(multi(x), single(x))
    torch.testing.assert_close(multi.v, single[0].v)


def test_seq_to_ann_container():
    one = layer.SeqToANNContainer(nn.Conv2d(2, 3, 3, padding=1))
    assert isinstance(one[0], nn.Conv2d)
    assert one(torch.rand(4, 5, 2, 6, 6)).shape == (4, 5, 3, 6, 6)
    several = layer.SeqToANNContainer(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, 7))
    assert len(several) == 3
    x = torch.rand(4, 5, 3, 6, 6)
    y = several(x)
    assert y.shape == (4, 5, 7)
    # Exactly the modules applied to each step on its own.
    assert torch.allclose(y[2], nn.Sequential(*several)(x[2]), atol=1e-6)
    with pytest.raises(ValueError, match=r"\[T, N, \*\]"):
        several(torch.rand(3))
    with pytest.raises(ValueError, match="at least one module"):
        layer.SeqToANNContainer()


def test_training_a_small_net_lowers_the_loss():
    torch.manual_seed(0)
    net = nn.Sequential(layer.SeqToANNContainer(nn.Linear(10, 32)), neuron.MultiStepLIFNode(surrogate_function=surrogate.ATan()),
                        layer.SeqToANNContainer(nn.Linear(32, 2)), neuron.MultiStepIFNode(surrogate_function=surrogate.ATan()))
    x = torch.randn(64, 10)
    label = (x[:, 0] > 0).long()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        rate = net(x.unsqueeze(0).repeat(4, 1, 1)).mean(0)
        loss = nn.functional.mse_loss(rate, nn.functional.one_hot(label, 2).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        functional.reset_net(net)
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_autocast_output_dtype_follows_the_incoming_dtype():
    net = nn.Sequential(layer.SeqToANNContainer(nn.Linear(4, 4)), neuron.MultiStepIFNode())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(torch.rand(3, 2, 4))
    assert y.dtype == torch.bfloat16


def test_cal_fun_t_on_cpu():
    calls = []
    t = cuda_utils.cal_fun_t(5, "cpu", lambda a, b=0: calls.append(a + b), 1, b=2)
    assert isinstance(t, float) and t >= 0
    assert calls == [3] * 6  # one warm-up and five timed calls
    with pytest.raises(ValueError, match="positive int"):
        cuda_utils.cal_fun_t(0, "cpu", print)


@pytest.mark.gpu
def test_cal_fun_t_on_cuda_measures_gpu_time():
    a = torch.rand(2048, 2048, device="cuda")
    t_small = cuda_utils.cal_fun_t(5, "cuda", torch.mm, a[:64, :64], a[:64, :64])
    t_big = cuda_utils.cal_fun_t(5, "cuda:0", torch.mm, a, a)
    assert 0 < t_small < t_big


@pytest.mark.gpu
def test_reference_runs_on_cuda():
    x = (torch.rand(4, 3, 5, device="cuda") * 2).requires_grad_()
    node = neuron.MultiStepLIFNode(surrogate_function=surrogate.ATan(), backend="torch")
    y = node(x)
    y.sum().backward()
    cpu = neuron.MultiStepLIFNode(surrogate_function=surrogate.ATan(), backend="torch")
    xc = x.detach().cpu().requires_grad_()
    cpu(xc).sum().backward()
    torch.testing.assert_close(x.grad.cpu(), xc.grad)


def test_changing_an_option_after_a_call_takes_effect():
    # params() is cached per node; assigning any option must rebuild it.
    node = neuron.MultiStepLIFNode(backend="torch")
    x = torch.full((3, 5), 0.9)
    assert node(x).sum() == 0  # H stays below 1 with tau=2 and x=0.9
    node.reset()
    node.v_threshold = 0.4
    assert node(x).sum() > 0
    node.reset()  # as SpikingJelly: the threshold returns to its value at construction
    assert node.v_threshold == 1.0 and node(x).sum() == 0
    node.reset()
    node.set_reset_value("v_threshold", 0.4)
    node.reset()
    node.tau = 1.0  # H = x: fires every step at threshold 0.4
    assert node(x).sum() == 15
    node.reset()
    node.surrogate_function = surrogate.ATan(alpha=3.0)
    assert node.params().surrogate.alpha == 3.0
    node.detach_reset, node.v_reset, node.decay_input = True, None, False
    p = node.params()
    assert (p.detach_reset, p.v_reset, p.decay_input) == (True, None, False)


def test_repr_matches_spikingjelly():
    sj_neuron = pytest.importorskip("spikingjelly.clock_driven.neuron")
    pairs = [
        (neuron.IFNode(v_reset=None, detach_reset=True), sj_neuron.IFNode(v_reset=None, detach_reset=True)),
        (neuron.LIFNode(tau=3.0), sj_neuron.LIFNode(tau=3.0)),
        (neuron.MultiStepIFNode(backend="torch"), sj_neuron.MultiStepIFNode(backend="torch")),
        (neuron.MultiStepLIFNode(tau=4.0, backend="torch"), sj_neuron.MultiStepLIFNode(tau=4.0, backend="torch")),
        (neuron.QIFNode(), sj_neuron.QIFNode()),
    ]
    for ours, theirs in pairs:
        assert ours.extra_repr() == theirs.extra_repr()
        # The surrogate line differs only by the module's own repr, which is the same text.
        assert repr(ours) == repr(theirs)


def test_reset_after_changing_thresholds_matches_spikingjelly():
    # SpikingJelly keeps v_threshold and v_reset as memories: reset() restores their values at
    # construction, and the potential returns to the v_reset given at construction.
    sj_neuron = pytest.importorskip("spikingjelly.clock_driven.neuron")
    for ours, theirs in [(neuron.IFNode(v_reset=-0.5), sj_neuron.IFNode(v_reset=-0.5)),
                         (neuron.MultiStepLIFNode(), sj_neuron.MultiStepLIFNode())]:
        for node in (ours, theirs):
            node.v_threshold, node.v_reset = 0.3, None
            node(torch.ones(2, 3, dtype=torch.float64))
            node.reset()
        assert (ours.v_threshold, ours.v_reset, ours.v) == (theirs.v_threshold, theirs.v_reset, theirs.v)
        x = torch.rand(2, 3, dtype=torch.float64) * 1.5
        assert torch.equal(ours(x), theirs(x))
