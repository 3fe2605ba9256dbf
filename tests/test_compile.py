"""torch.compile and CUDA graphs: the custom operators of flashspike.backends.operators and their kernels.

CPU (CI):
- the plain-PyTorch kernel set (backends/torch_kernels.py) against hand-computed steps and against
  the autograd reference, for every option, dtype, state and absent output gradient;
- ``torch.library.opcheck`` of both operators, and their bad inputs;
- ``torch.compile(net, fullgraph=True)`` of a small multi-step net: no graph break, and the same
  spikes, state and gradients as eager over consecutive calls, after ``reset_net`` and without grad.

GPU (marked ``gpu``), with backends 'cupy' and 'triton': the same compile check (float32 and float16
autocast), opcheck on CUDA, and the example's training step (reset, forward, backward, fused SGD
step; float32, or float16 autocast with a GradScaler) of a small conv SNN captured as one CUDA graph
and replayed, against the same steps run eagerly. A backend whose module or package cannot be
imported is skipped, unless FLASHSPIKE_REQUIRE_BACKENDS names it (tests/conftest.py).

Compiling is slow, so the compiled nets are few and tiny; most use the 'aot_eager' compiler, which
runs everything the operators need (Dynamo, fake tensors, AOTAutograd) but generates no code.
"""

import copy
import math

import pytest
import torch
from torch import nn

from flashspike import backends, functional, layer, neuron, surrogate
from flashspike.backends import autograd, choice, operators, reference, torch_kernels
from flashspike.params import NeuronParams
from flashspike.dynamics import charge
from conftest import kernel_device, require_backend
from grid import Cell, cell_id, params

GPU_BACKENDS = ["cupy", "triton"]


def _forward_op(x, v_init, p, *, save_h=True, store_v_seq=False, backend="torch", w=None):
    return torch.ops.flashspike.multi_step_forward(x, v_init, w, save_h, store_v_seq, backend, p.text)


def _backward_op(h, grad_spike, grad_v_out, p, *, store_v_seq=False, need_grad_v_init=True, backend="torch",
                 v_init=None, w=None):
    return torch.ops.flashspike.multi_step_backward(h, grad_spike, grad_v_out, v_init, w, store_v_seq,
                                                    need_grad_v_init, backend, p.text)


# --- the kernel set in plain PyTorch -------------------------------------------------------------------


def test_forward_operator_follows_a_hand_computed_trajectory():
    # IF, V_th = 1, hard reset to 0: H = 0.6, 1.2 (spike, V -> 0), 0.6, 2.1 (spike, V -> 0).
    p = params("if", v_threshold=1.0)
    x = torch.tensor([[0.6], [0.6], [0.6], [1.5]], dtype=torch.float64)
    spike, v_seq, h = _forward_op(x, None, p, store_v_seq=True)
    assert spike.flatten().tolist() == [0.0, 1.0, 0.0, 1.0]
    torch.testing.assert_close(h.flatten(), torch.tensor([0.6, 1.2, 0.6, 2.1], dtype=torch.float64))
    torch.testing.assert_close(v_seq.flatten(), torch.tensor([0.6, 0.0, 0.6, 0.0], dtype=torch.float64))
    # Without save_h nothing is kept for backward; without store_v_seq only the last V comes back.
    spike, v_last, h = _forward_op(x, None, p, save_h=False)
    assert h.numel() == 0 and v_last.shape == (1,) and v_last.item() == 0.0


def test_backward_operator_follows_a_hand_computed_step():
    # LIF, tau = 2, decay_input, soft reset, V_th = 1, ATan(alpha = 2), one step from V[-1] = 0.4:
    # H = 0.4 + (0.5 - 0.4) / 2 = 0.45, no spike. With u = H - 1 and σ = 1 / (1 + (π/2·2·u)²),
    # ∂L/∂H = 3σ + 2·(1 - σ) for ∂L/∂S = 3 and ∂L/∂V = 2 (∂V/∂H = 1, ∂V/∂S = -V_th);
    # ∂L/∂X = ∂L/∂H / 2 and ∂L/∂V[-1] = ∂L/∂H · (1 - 1/2).
    p = params(v_reset=None, v_threshold=1.0, tau=2.0)
    x = torch.tensor([[0.5]], dtype=torch.float64)
    spike, v_last, h = _forward_op(x, torch.tensor([0.4], dtype=torch.float64), p)
    assert spike.item() == 0.0 and h.item() == pytest.approx(0.45) and v_last.item() == pytest.approx(0.45)
    sigma = 1.0 / (1.0 + (math.pi / 2 * 2.0 * (0.45 - 1.0)) ** 2)
    grad_h = 3 * sigma + 2 * (1 - sigma)
    grad_x, grad_v_init, _ = _backward_op(h, torch.full_like(x, 3.0), torch.full((1,), 2.0, dtype=torch.float64), p)
    assert grad_x.item() == pytest.approx(grad_h / 2, rel=1e-12)
    assert grad_v_init.item() == pytest.approx(grad_h / 2, rel=1e-12)
    grad_x, grad_v_init, _ = _backward_op(h, torch.full_like(x, 3.0), None, p, need_grad_v_init=False)
    assert grad_x.item() == pytest.approx(3 * sigma / 2, rel=1e-12) and grad_v_init.numel() == 0


KERNEL_OPTIONS = [
    Cell("if"),
    Cell(v_reset=None, surrogate=surrogate.Sigmoid()),
    Cell(decay_input=False, v_reset=-0.3, detach_reset=True, surrogate=surrogate.PiecewiseQuadratic(alpha=1.5)),
    Cell(surrogate=surrogate.SoftSign()),
]


def _run_multi_step(run, x, v0, p, store_v_seq, loss_on, weights):
    """Forward with ``run`` (a multi_step), then backward of a random mix of the chosen outputs."""
    spike, v_last, v_seq = run(x, v0, p, store_v_seq)
    loss = 0.0
    if "spike" in loss_on:
        loss = loss + (spike * weights[0]).sum()
    if "v" in loss_on:
        loss = loss + (v_last * weights[1][0]).sum()
        if store_v_seq:
            loss = loss + (v_seq * weights[2]).sum()
    loss.backward()
    return spike.detach(), v_last.detach()


def _far_from_threshold(x, v0, p, tie):
    """Neurons whose H never comes within ``tie`` of the threshold: where rounding H (as a float16
    kernel saves it) cannot flip the spike or the hard reset's ∂V/∂H that backward recomputes."""
    with torch.no_grad():
        _, _, v_seq = reference.BACKEND.multi_step(x, v0, p, True)
    v_prev = torch.cat([torch.as_tensor(v0, dtype=x.dtype).expand_as(x[:1]), v_seq[:-1]])
    return ((charge(v_prev, x, p) - p.v_threshold).abs() > tie).all(0)


@pytest.mark.parametrize("cell", KERNEL_OPTIONS, ids=cell_id)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("v_init", ["rest", "tensor"])
@pytest.mark.parametrize("store_v_seq", [False, True])
@pytest.mark.parametrize("loss_on", [("spike", "v"), ("spike",), ("v",)], ids="+".join)
def test_torch_kernels_match_the_reference(cell, dtype, v_init, store_v_seq, loss_on):
    p = cell.params()
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(6, 2, 37, generator=g, dtype=torch.float64) + 0.8).to(dtype)
    v0 = (torch.randn(2, 37, generator=g, dtype=torch.float64) * 0.3).to(dtype) if v_init == "tensor" else p.v_rest
    weights = [torch.randn(6, 2, 37, generator=g, dtype=torch.float64) for _ in range(3)]

    def inputs(as_dtype):
        xi = x.to(as_dtype, copy=True).requires_grad_()
        vi = v0.to(as_dtype, copy=True).requires_grad_() if isinstance(v0, torch.Tensor) else v0
        return xi, vi

    def kernels_run(*args):
        return autograd.fused_multi_step(torch_kernels.KERNELS, *args)

    xk, vk = inputs(dtype)
    spike, v_last = _run_multi_step(kernels_run, xk, vk, p, store_v_seq, loss_on, [w.to(dtype) for w in weights])
    # float16 is computed in float32 from the rounded inputs, so float32 is its reference.
    ref_dtype = torch.float32 if dtype == torch.float16 else dtype
    xr, vr = inputs(ref_dtype)
    ref_spike, ref_v = _run_multi_step(reference.BACKEND.multi_step, xr, vr, p, store_v_seq, loss_on,
                                       [w.to(ref_dtype) for w in weights])

    assert spike.dtype == dtype and v_last.dtype == dtype
    assert 0.1 < ref_spike.mean().item() < 0.9, "the input should make some neurons fire and others not"
    # The same forward formulas in the same precision: identical spikes, and V rounded once.
    assert torch.equal(spike.to(ref_dtype), ref_spike)
    assert torch.equal(v_last, ref_v.to(dtype))
    grad_tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-2}[dtype]
    keep = torch.ones(x.shape[1:], dtype=torch.bool)
    if dtype == torch.float16:
        keep = _far_from_threshold(xr.detach(), vr.detach() if isinstance(vr, torch.Tensor) else vr, p, 1e-2)
        assert keep.float().mean() > 0.7, "too many neurons near the threshold for a meaningful comparison"
    pairs = [(xk.grad, xr.grad, keep.expand_as(x))]
    if isinstance(v0, torch.Tensor):
        pairs.append((vk.grad, vr.grad, keep))
    for got, ref, mask in pairs:
        assert not torch.isnan(got).any(), "unwritten gradient elements (outputs start as NaN in tests)"
        scale = ref.abs().max().item()
        torch.testing.assert_close(got.to(ref_dtype)[mask], ref[mask], rtol=grad_tol, atol=grad_tol * scale)


# --- the operators: opcheck and bad inputs ---------------------------------------------------------------


@pytest.mark.parametrize("v_init", ["rest", 0.3, "tensor"])
@pytest.mark.parametrize("store_v_seq", [False, True])
def test_multi_step_through_the_operators_matches_the_reference(v_init, store_v_seq):
    # What compiled code runs, called eagerly: flattening, the initial state (a float other than
    # v_rest included), the operators' autograd formula, and the reshaped outputs.
    p = params(v_reset=-0.2, surrogate=surrogate.Sigmoid())
    g = torch.Generator().manual_seed(7)
    x = torch.randn(5, 3, 4, generator=g, dtype=torch.float64) + 0.8
    weights = [torch.randn(5, 3, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    v0 = {"rest": p.v_rest, "tensor": torch.randn(3, 4, generator=g, dtype=torch.float64)}.get(v_init, v_init)
    results = []
    for run in (lambda *args: operators.multi_step("torch", *args), reference.BACKEND.multi_step):
        xi = x.clone().requires_grad_()
        vi = v0.clone().requires_grad_() if isinstance(v0, torch.Tensor) else v0
        spike, v_last = _run_multi_step(run, xi, vi, p, store_v_seq, ("spike", "v"), weights)
        results.append((spike, v_last, xi.grad, vi.grad if isinstance(vi, torch.Tensor) else None))
    (spike, v_last, grad_x, grad_v), (ref_spike, ref_v, ref_grad_x, ref_grad_v) = results
    assert torch.equal(spike, ref_spike) and torch.equal(v_last, ref_v) and v_last.shape == (3, 4)
    torch.testing.assert_close(grad_x, ref_grad_x, rtol=1e-12, atol=1e-12)
    if grad_v is not None:
        torch.testing.assert_close(grad_v, ref_grad_v, rtol=1e-12, atol=1e-12)


OPCHECK_OPTIONS = [Cell("if"), Cell(v_reset=None, detach_reset=True, surrogate=surrogate.Sigmoid())]


@pytest.mark.parametrize("option_set", OPCHECK_OPTIONS, ids=["if-hard", "lif-soft-detach"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("store_v_seq", [False, True])
def test_opcheck(option_set, dtype, store_v_seq):
    p = option_set.params()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 11, generator=g, dtype=dtype) + 0.5
    v0 = torch.randn(11, generator=g, dtype=dtype)
    options = p.text
    forward = torch.ops.flashspike.multi_step_forward.default
    backward = torch.ops.flashspike.multi_step_backward.default
    for v_init, save_h in [(v0.clone().requires_grad_(), True), (None, True), (None, False)]:
        x_in = x.clone().requires_grad_(save_h)
        torch.library.opcheck(forward, (x_in, v_init, None, save_h, store_v_seq, "torch", options))
    h = _forward_op(x, v0, p, store_v_seq=store_v_seq)[2]
    grad_v_out = torch.randn(*((5, 11) if store_v_seq else (11,)), generator=g, dtype=dtype)
    expanded_ones = torch.ones(1, 1, dtype=dtype).expand(5, 11)  # what y.sum().backward() sends
    for grad_spike, grad_v, need_v in [(torch.randn(5, 11, generator=g, dtype=dtype), grad_v_out, True),
                                       (None, grad_v_out, False), (expanded_ones, None, True)]:
        torch.library.opcheck(backward, (h, grad_spike, grad_v, None, None, store_v_seq, need_v, "auto", options))


def test_forward_operator_skips_the_dispatcher_only_for_plain_tensors(monkeypatch):
    # Plain tensors (under autocast too) go from the autograd kernel straight to the kernel; fake
    # tensors must reach the fake implementation through the dispatcher, never the kernel itself.
    from torch._subclasses.fake_tensor import FakeTensorMode

    p = params()
    options = p.text
    forward = torch.ops.flashspike.multi_step_forward.default
    calls = []
    real_forward = operators._forward
    monkeypatch.setattr(operators, "_forward", lambda *args: calls.append(args[0]) or real_forward(*args))
    redispatched = []
    real_op = operators._FORWARD_OP
    monkeypatch.setattr(operators, "_FORWARD_OP", type("Op", (), {
        "redispatch": staticmethod(lambda *args: redispatched.append(args[0]) or real_op.redispatch(*args))}))
    monkeypatch.setattr(operators, "_reaches_kernel", {})
    x = torch.rand(3, 4)
    spike, _, _ = forward(x, None, None, True, False, "torch", options)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        forward(x, None, None, True, False, "torch", options)
    assert len(calls) == 2 and not redispatched
    torch.testing.assert_close(spike, reference.BACKEND.multi_step(x, p.v_rest, p, False)[0])
    with FakeTensorMode() as mode:
        fake_spike = forward(mode.from_tensor(x), None, None, True, False, "torch", options)[0]
    assert len(calls) == 2 and len(redispatched) == 1 and fake_spike.shape == (3, 4)
    x.requires_grad_()  # differentiated: recorded once, then the same decision below autograd
    forward(x, None, None, True, False, "torch", options)[0].sum().backward()
    assert len(calls) == 3 and x.grad is not None


def test_surrogates_are_rebuilt_from_name_and_alpha():
    class Doubled(surrogate.ATan):  # a user's own surrogate, found without any registration
        pass

    for sg in [surrogate.ATan(3.0), surrogate.Sigmoid(), surrogate.PiecewiseQuadratic(0.5), surrogate.SoftSign(),
               Doubled(1.5)]:
        p = params(surrogate=sg, v_reset=None, tau=1 / 3, v_threshold=0.1 + 0.2)  # floats that must read back exactly
        rebuilt = NeuronParams.from_text(p.text)
        assert type(rebuilt.surrogate) is type(sg) and rebuilt.key == p.key and rebuilt == p


def test_kernel_sets_come_from_the_kernel_backend():
    p = params()
    own = object()

    class Kernels(autograd.KernelBackend):
        name = "a"

        def kernel_set(self, params):
            assert params is p
            return own

    class NotKernels:
        name = "c"

    assert choice._backend_kernel_set(Kernels(), p) is own
    with pytest.raises(NotImplementedError, match="backend 'c' is no autograd.KernelBackend"):
        choice._backend_kernel_set(NotKernels(), p)


def test_operator_runs_a_kernel_backend_and_keeps_float64_exact():
    p = params(v_reset=None)
    x = torch.rand(4, 300, generator=torch.Generator().manual_seed(8)) * 2.5
    if torch.cuda.is_available():  # real kernels there; the CPU interpreter only where there is no GPU
        x = x.cuda()
    # float64 has no kernels in the GPU backends: the operator runs the PyTorch kernel set instead.
    assert choice.plan_for_text("triton", x.double(), p.text).kernels is torch_kernels.KERNELS
    require_backend("triton", x.device)  # without CUDA, Triton's interpreter runs the kernels (conftest.py)
    plan = choice.plan_for_text("triton", x, p.text)
    kernels, p_rebuilt = plan.kernels, plan.params
    assert kernels is not torch_kernels.KERNELS and p_rebuilt.key == p.key
    got = _forward_op(x, None, p, backend="triton", store_v_seq=True)
    expected = _forward_op(x, None, p, backend="torch", store_v_seq=True)
    assert torch.equal(got[0], expected[0]) and 0.05 < got[0].mean() < 0.95
    torch.testing.assert_close(got[1:], expected[1:], rtol=1e-6, atol=1e-6)


def test_operator_bad_inputs_name_what_was_expected():
    p = params()
    x = torch.rand(3, 4)
    options = p.text
    bad_surrogate = options.replace("flashspike.surrogate.ATan", "nowhere.Gaussian")
    with pytest.raises(ValueError, match="no flashspike surrogate class is called 'nowhere.Gaussian'"):
        torch.ops.flashspike.multi_step_forward(x, None, None, False, False, "torch", bad_surrogate)
    for bad in [options.replace(f"tau={p.tau},", ""), options.replace("leaky=True", "leaky=yes"), "", options + ",x=1"]:
        with pytest.raises(ValueError, match="bad neuron options .* expected what flashspike.params.NeuronParams.text"):
            torch.ops.flashspike.multi_step_forward(x, None, None, False, False, "torch", bad)
    with pytest.raises(ValueError, match=r"x of shape \[T, N, \*\] .*got shape \(12,\)"):
        _forward_op(x.flatten(), None, p)
    with pytest.raises(ValueError, match=r"v_init of one step's shape \[N, \*\] = \(4,\) and dtype torch.float32"):
        _forward_op(x, torch.zeros(4, dtype=torch.float64), p)
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        _forward_op(x, None, p, backend="tpu")
    # A GPU backend given a CPU tensor: its own error (device), or the import error of its package.
    with pytest.raises((backends.BackendError, ImportError)):
        _forward_op(x, None, p, backend="cupy")
    # Differentiating a call that kept no H says what to change.
    x.requires_grad_()
    spike, _, _ = _forward_op(x, None, p, save_h=False)
    with pytest.raises(RuntimeError, match="save_h=True"):
        spike.sum().backward()


# --- torch.compile -----------------------------------------------------------------------------------------


@pytest.fixture
def fresh_dynamo():
    """Each compiled test starts from empty Dynamo caches, so no test runs into another's recompile limit."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _dyadic(*shape, generator, scale=8):
    """Small multiples of 1/scale: sums and products of them are exact, so the linear layers give
    bit-identical results however a compiler orders their arithmetic, and so do the neurons' inputs."""
    return torch.randint(-4, 5, shape, generator=generator).double() / scale


def _small_net(backend="torch", dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    first, second = nn.Linear(6, 10), nn.Linear(10, 5)
    with torch.no_grad():
        for linear in (first, second):
            linear.weight.copy_(_dyadic(*linear.weight.shape, generator=g))
            linear.bias.copy_(_dyadic(*linear.bias.shape, generator=g) + 0.25)
    net = nn.Sequential(
        layer.SeqToANNContainer(first),
        neuron.MultiStepLIFNode(tau=2.0, surrogate_function=surrogate.ATan(), backend=backend),
        layer.SeqToANNContainer(second),
        neuron.MultiStepIFNode(v_reset=None, detach_reset=True, backend="auto", store_v_seq=True),
    )
    return net.to(dtype=dtype, device=device)


def _nodes(net):
    return [m for m in net.modules() if isinstance(m, neuron.BaseNode)]


def _train_calls(net, xs):
    """Consecutive calls without a reset (the state carries over), then one backward through all of them."""
    outputs = [net(x) for x in xs]
    last = _nodes(net)[-1]
    loss = sum((y * (i + 1)).sum() for i, y in enumerate(outputs)) + last.v.sum() + (last.v_seq ** 2).sum()
    loss.backward()
    return outputs


def _assert_same_as_eager(eager, compiled, eager_out, compiled_out, *, grad_tol):
    for y, yc in zip(eager_out, compiled_out):
        assert torch.equal(y, yc), "compiled spikes differ from eager"
    for node, cnode in zip(_nodes(eager), _nodes(compiled)):
        torch.testing.assert_close(cnode.v, node.v, rtol=1e-6, atol=1e-6)
        if node.store_v_seq:
            torch.testing.assert_close(cnode.v_seq, node.v_seq, rtol=1e-6, atol=1e-6)
    for (name, param), cparam in zip(eager.named_parameters(), compiled.parameters()):
        if param.grad is None:
            assert cparam.grad is None, name
            continue
        scale = param.grad.abs().max().item()
        torch.testing.assert_close(cparam.grad, param.grad, rtol=grad_tol, atol=grad_tol * scale, msg=name)


def test_compiled_net_keeps_state_like_eager(fresh_dynamo):
    g = torch.Generator().manual_seed(3)
    xs = [_dyadic(4, 3, 6, generator=g, scale=2) for _ in range(3)]
    eager = _small_net()
    net = copy.deepcopy(eager)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break fails
    for _round in range(2):  # the second round starts after reset_net, from the resting state again
        eager_out = _train_calls(eager, xs)
        compiled_out = _train_calls(compiled, xs)
        assert 0.05 < torch.stack(eager_out).mean().item() < 0.95, "the test needs both spikes and silence"
        _assert_same_as_eager(eager, net, eager_out, compiled_out, grad_tol=1e-10)
        for module in (eager, net):
            functional.reset_net(module)
            module.zero_grad()
    with torch.no_grad():  # inference: another graph, whose operator saves nothing for backward
        eager_out = [eager(x) for x in xs]
        compiled_out = [compiled(x) for x in xs]
    _assert_same_as_eager(eager, net, eager_out, compiled_out, grad_tol=0.0)


def test_fullgraph_inductor_compile_matches_eager(fresh_dynamo):
    g = torch.Generator().manual_seed(4)
    x = _dyadic(4, 8, 6, generator=g, scale=2).float()
    eager = _small_net(dtype=torch.float32)
    net = copy.deepcopy(eager)
    compiled = torch.compile(net, fullgraph=True)  # the default compiler, generating C++ here
    eager_out, compiled_out = [eager(x)], [compiled(x)]
    for y in (eager_out[0], compiled_out[0]):
        y.sum().backward()
    _assert_same_as_eager(eager, net, eager_out, compiled_out, grad_tol=1e-5)


# Options assigned between calls, one group a call: each call after a change compiles again (7 compiles,
# within Dynamo's recompile limit of 8).
CHANGES = [{}, {"tau": 3.0}, {"v_threshold": 0.5}, {"v_reset": None, "detach_reset": True},
           {"v_reset": -0.25, "decay_input": False}, {"alpha": 5.0}, {"surrogate_function": surrogate.Sigmoid()}]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_a_compiled_node_follows_each_option_change(backend, fresh_dynamo):
    """An option assigned between calls of a compiled node reaches its next call (it recompiles), as in
    eager mode: an option that changed is traced as a symbolic number, which no options text can hold."""
    device = kernel_device(backend)
    node = neuron.MultiStepLIFNode(surrogate_function=surrogate.ATan(), backend=backend)
    eager = neuron.MultiStepLIFNode(surrogate_function=surrogate.ATan(), backend="torch")
    compiled = torch.compile(node, fullgraph=True, backend="aot_eager")
    x = _dyadic(6, 5, generator=torch.Generator().manual_seed(7), scale=2).float().abs()

    def run(module, on):
        xr = x.to(on, copy=True).requires_grad_()  # a leaf of its own on either device
        spikes = module(xr)
        (spikes * torch.arange(1.0, 7.0, device=on).view(6, 1)).sum().backward()
        module_node = node if module is compiled else module
        v = module_node.v
        module_node.reset()
        return spikes.cpu(), v.cpu(), xr.grad.cpu()

    for changes in CHANGES:
        for option, value in changes.items():
            for target in (node, eager):
                setattr(target.surrogate_function if option == "alpha" else target, option, value)
        got, expected = run(compiled, device), run(eager, "cpu")
        assert torch.equal(got[0], expected[0]), changes
        torch.testing.assert_close(got[1:], expected[1:], rtol=1e-5, atol=1e-6, msg=str(changes))


def test_a_compiled_single_step_node_follows_an_option_change(fresh_dynamo):
    for cls in (neuron.LIFNode, neuron.EIFNode):  # the second class's first trace follows a change of the first's
        node, eager = cls(), cls()
        compiled = torch.compile(node, fullgraph=True, backend="aot_eager")
        for v_threshold in (1.0, 0.5, 0.75):
            node.v_threshold = eager.v_threshold = v_threshold
            x = torch.linspace(0.0, 3.0, 9)
            assert torch.equal(compiled(x), eager(x)) and torch.equal(node.v, eager.v)
            node.reset(), eager.reset()


# --- GPU: compile and CUDA graphs with the kernel backends -------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_BACKENDS)
@pytest.mark.parametrize("precision", ["float32", "autocast-float16"])
def test_compile_with_kernel_backend_gpu(name, precision, fresh_dynamo):
    require_backend(name)
    g = torch.Generator().manual_seed(5)
    xs = [_dyadic(4, 64, 6, generator=g, scale=2).float().cuda() for _ in range(2)]
    eager = _small_net(backend=name, dtype=torch.float32, device="cuda")
    for node in _nodes(eager):
        node.backend = name
    net = copy.deepcopy(eager)
    compiled = torch.compile(net, fullgraph=True)
    with torch.autocast("cuda", dtype=torch.float16, enabled=precision != "float32"):
        for _round in range(2):
            eager_out = _train_calls(eager, xs)
            compiled_out = _train_calls(compiled, xs)
            assert 0.05 < torch.stack(eager_out).float().mean().item() < 0.95
            # float16 gradients of the linear layers may round differently once the compiler fuses them.
            grad_tol = 1e-5 if precision == "float32" else 1e-2
            _assert_same_as_eager(eager, net, eager_out, compiled_out, grad_tol=grad_tol)
            for module in (eager, net):
                functional.reset_net(module)
                module.zero_grad()


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_BACKENDS)
def test_opcheck_gpu(name):
    require_backend(name)
    options = params(v_reset=None, surrogate=surrogate.Sigmoid()).text
    x = torch.randn(5, 4099, device="cuda") + 0.5  # N not a multiple of any vector width
    v0 = torch.randn(4099, device="cuda")
    forward = torch.ops.flashspike.multi_step_forward.default
    torch.library.opcheck(forward, (x.clone().requires_grad_(), v0.clone().requires_grad_(), None, True, True, name,
                                    options))
    torch.library.opcheck(forward, (x, None, None, False, False, name, options))
    h = forward(x, v0, None, True, False, name, options)[2]
    torch.library.opcheck(torch.ops.flashspike.multi_step_backward.default,
                          (h, torch.randn_like(x), torch.randn_like(v0), None, None, False, True, name, options))


class ConvSNN(nn.Module):
    """The example's shape in small: conv-BN on the static image, repeated over T, then spiking layers."""

    def __init__(self, backend, steps=4):
        super().__init__()
        self.steps = steps
        self.static_conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.spiking = nn.Sequential(
            neuron.MultiStepIFNode(surrogate_function=surrogate.ATan(), backend=backend),
            # Batch norm keeps the output layer firing from the first step on, so every step trains.
            layer.SeqToANNContainer(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 7 * 7, 10, bias=False),
                                    nn.BatchNorm1d(10)),
            neuron.MultiStepLIFNode(tau=2.0, surrogate_function=surrogate.ATan(), detach_reset=True, backend=backend),
        )

    def forward(self, images):
        x = self.static_conv(images)
        return self.spiking(x.unsqueeze(0).repeat(self.steps, 1, 1, 1, 1)).mean(0)


class Trainer:
    """The example's training step: reset, forward, MSE of the firing rate, backward, fused SGD step;
    with AMP, float16 autocast and a GradScaler (whose fused-optimizer path never syncs the host)."""

    def __init__(self, net, amp):
        self.net, self.amp = net, amp
        self.optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, fused=True)
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def step(self, images, labels):
        functional.reset_net(self.net)
        self.optimizer.zero_grad(set_to_none=False)  # in place: a captured graph keeps writing the same grads
        # Autocast's weight cache would keep tensors from outside the graph's pool: off, as CUDA graphs need.
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp, cache_enabled=False):
            rate = self.net(images)
        loss = nn.functional.mse_loss(rate.float(), nn.functional.one_hot(labels, 10).float())
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_BACKENDS)
@pytest.mark.parametrize("precision", ["float32", "amp-float16"])
def test_cuda_graph_training_step_gpu(name, precision, monkeypatch):
    """Capture reset + forward + backward + optimizer step as one CUDA graph, replay it on new batches,
    and get what the same steps give eagerly. Kernels are compiled in the warm-up, before capture; an
    allocation outside PyTorch's allocator or a host sync inside a neuron op makes capture fail."""
    require_backend(name)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    amp = precision == "amp-float16"
    g = torch.Generator().manual_seed(6)
    batches = [((torch.rand(32, 1, 14, 14, generator=g) * 1.5).cuda(),
                torch.randint(0, 10, (32,), generator=g).cuda()) for _ in range(8)]
    warmup, replayed = batches[:3], batches[3:]

    torch.manual_seed(0)
    eager = Trainer(ConvSNN(name).cuda(), amp)
    graphed = Trainer(copy.deepcopy(eager.net), amp)
    eager_losses = [eager.step(*batch) for batch in batches]

    static_images, static_labels = (t.clone() for t in warmup[0])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: kernels compiled, optimizer and scaler state created
        warm_losses = [graphed.step(*batch) for batch in warmup]
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = graphed.step(static_images, static_labels)
    before_replay = [p.detach().clone() for p in graphed.net.parameters()]
    graph_losses = []
    for images, labels in replayed:
        static_images.copy_(images)
        static_labels.copy_(labels)
        graph.replay()
        graph_losses.append(static_loss.clone())
    torch.cuda.synchronize()

    assert len(set(map(float, eager_losses))) > 1, "the losses should move as the net trains"
    torch.testing.assert_close(torch.stack(warm_losses + graph_losses), torch.stack(eager_losses),
                               rtol=1e-4, atol=1e-6)
    changed = [not torch.equal(p, q) for p, q in zip(graphed.net.parameters(), before_replay)]
    assert any(changed), "the replays changed no parameter"
    for p, q in zip(graphed.net.parameters(), eager.net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
