"""Backend 'triton' beyond the shared parity grid (tests/test_parity.py): its errors, its generated
source and kernel cache, the kernels' flags and masks on the CPU through Triton's interpreter, and on a
GPU the dtypes, CUDA graph capture, a second device and 64-bit indexing.

The float64 reference for gradients is tests/bptt.py, which shares no code with the library.
"""

import inspect
import linecache
import sys
import warnings

import pytest
import torch

import bptt
from flashspike import backends, neuron, optional_triton, surrogate
from flashspike.backends import choice, layouts, step_code, triton_backend, triton_source
from flashspike.backends.step_code import backward_step, forward_step
from flashspike.codegen import TRITON
from conftest import kernel_device
from grid import SURROGATES, Cell, node, params

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"


# ---------------------------------------------------------------- errors


def test_cpu_tensor_without_interpreter_names_the_alternatives(monkeypatch):
    monkeypatch.setattr(triton_backend, "interpreting", lambda: False)
    with pytest.raises(backends.BackendError, match="'torch'.*'auto'"):
        triton_backend.BACKEND.check_input(torch.zeros(2, 3))
    node = neuron.MultiStepLIFNode(backend="triton")
    with pytest.raises(backends.BackendError, match="CUDA"):
        node(torch.zeros(2, 3))


def test_other_devices_are_refused():
    with pytest.raises(backends.BackendError, match="meta"):
        triton_backend.BACKEND.check_input(torch.zeros(2, 3, device="meta"))


def test_missing_triton_is_an_import_error_with_the_cause(monkeypatch):
    monkeypatch.setattr(optional_triton, "_triton", None)
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    monkeypatch.setattr(triton_backend, "interpreting", lambda: True)
    with pytest.raises(ImportError, match="pip install triton") as err:
        triton_backend.BACKEND.check_input(torch.zeros(2, 3))
    assert isinstance(err.value.__cause__, ImportError)
    assert "'torch'" in str(err.value)


def test_float64_runs_the_reference_with_one_notice(monkeypatch):
    monkeypatch.setattr(triton_backend.BACKEND, "_warned_dtypes", set())
    x = (torch.randn(4, 5, dtype=torch.float64) + 0.5).to(kernel_device("triton"))
    p = params()
    with pytest.warns(UserWarning, match="float64"):
        spike, v_last, _ = choice.plan_for("triton", x, p).multi_step(x, 0.0, False)
    ref = bptt.run(x.cpu(), 0.0, leaky=True, tau=p.tau, vth=p.v_threshold, surrogate=("ATan", 2.0))
    assert torch.equal(spike.cpu(), ref["s"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choice.plan_for("triton", x, p).multi_step(x, 0.0, False)  # once per dtype, not per call


# ---------------------------------------------------------------- generated source


@pytest.mark.parametrize("sg", SURROGATES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("v_reset", [0.0, None])
@pytest.mark.parametrize("leaky", [False, True])
def test_source_wraps_the_generated_step_and_is_python(sg, v_reset, leaky):
    p = params("lif" if leaky else "if", v_reset=v_reset, surrogate=sg, v_threshold=0.75)
    fwd, bwd = triton_source.forward_source(p), triton_source.backward_source(p)
    compile(fwd, "<fwd>", "exec")
    compile(bwd, "<bwd>", "exec")
    # The arithmetic is step_code's, verbatim: no formula is restated around it.
    for line in forward_step(p, TRITON):
        assert line in fwd
    for line in backward_step(p, TRITON):
        assert line in bwd
    assert "0.75" in fwd and "0.75" in bwd  # the threshold is baked in
    assert "tl.int64" in fwd and "tl.int64" in bwd  # 64-bit offsets


def test_kernel_set_is_cached_per_options():
    kernel_device("triton")
    a = triton_backend.kernel_set(params(surrogate=surrogate.ATan(alpha=3.0)))
    b = triton_backend.kernel_set(params(surrogate=surrogate.ATan(alpha=3.0)))  # equal, not same
    c = triton_backend.kernel_set(params(surrogate=surrogate.ATan(alpha=3.5)))
    d = triton_backend.kernel_set(params(surrogate=surrogate.ATan(alpha=3.0), tau=4.0))
    assert a is b
    assert c is not a and d is not a
    # Triton reads the kernel back through inspect, which finds the generated text in linecache.
    fn = a.forward_kernel.fn
    assert inspect.getsource(fn) == triton_source.forward_source(params(surrogate=surrogate.ATan(3.0)))
    assert fn.__code__.co_filename in linecache.cache


def test_interpreter_block():
    assert triton_backend._interpreter_block(1) == 1
    assert triton_backend._interpreter_block(1151) == 2048
    assert triton_backend._interpreter_block(10**6) == triton_backend.INTERPRETER_MAX_BLOCK


# ---------------------------------------------------------------- kernels (interpreter on CPU, or GPU)


def test_hand_computed_if_trajectory():
    kernel_device("triton")
    # IF, V_th = 1, hard reset to 0: H = V + X; S = H >= 1; V = 0 after a spike.
    x = torch.tensor([[0.5, -1.0], [0.6, 0.25], [0.2, 2.0], [1.5, 0.0]], device=DEVICE)
    layer = node("triton", "if", store_v_seq=True, v_threshold=1.0)
    spike = layer(x)
    assert spike.tolist() == [[0, 0], [1, 0], [0, 1], [1, 0]]
    torch.testing.assert_close(layer.v_seq.cpu(), torch.tensor([[0.5, -1.0], [0.0, -0.75], [0.2, 0.0], [0.0, 0.0]]))


CASES = [
    # (grad on spikes, grad on v, store_v_seq, v_init given)
    ("strided", "strided", False, True),
    ("strided", "strided", True, True),
    ("scalar", None, False, False),
    ("scalar", "scalar", True, True),
    (None, "strided", True, False),
    (None, "scalar", False, True),
    ("transposed", None, True, True),
    ("strided", "transposed", True, False),
    ("time-broadcast", "strided", False, True),
]


def _gradient(kind, shape, gen):
    """(the float64 values for the reference, the float32 tensor in the layout the kernel receives)."""
    if kind is None:
        return None, None
    if kind == "scalar":  # what y.sum().backward() gives: one value, expanded with stride 0
        dev = torch.full((), 0.75, device=DEVICE).expand(shape)
    elif kind == "transposed":
        dev = torch.randn(shape[::-1], generator=gen).to(DEVICE).t()
    elif kind == "time-broadcast":
        dev = torch.randn(1, *shape[1:], generator=gen).to(DEVICE).expand(shape)
    else:
        dev = torch.randn(shape, generator=gen).to(DEVICE)
    return dev.double().cpu(), dev


OPTIONS = {
    "if": Cell("if"),
    "lif-soft-detach": Cell(v_reset=None, detach_reset=True),
    "lif-no-decay-input": Cell(decay_input=False, v_reset=-0.2),
}


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("opts", OPTIONS)
def test_kernel_flags_against_unrolled_bptt(case, opts, monkeypatch):
    """The kernel set called directly with each flag combination that autograd can produce, over several
    programs with a masked tail, against the hand-unrolled float64 BPTT."""
    kernel_device("triton")
    monkeypatch.setattr(triton_backend, "INTERPRETER_MAX_BLOCK", 16)  # 37 neurons: 3 programs, last masked
    gs_kind, gv_kind, store_v_seq, has_v_init = case
    p = OPTIONS[opts].params()
    shape = (6, 37)
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=gen) * 0.8 + 0.4).to(DEVICE)
    v_init = (torch.randn(shape[1], generator=gen) * 0.3).to(DEVICE) if has_v_init else None
    grad_s, gs_dev = _gradient(gs_kind, shape, gen)
    grad_v, gv_dev = _gradient(gv_kind, shape if store_v_seq else shape[1:], gen)
    expected_mode = {None: step_code.GRAD_ABSENT, "scalar": step_code.GRAD_SCALAR}.get(gs_kind, step_code.GRAD_DENSE)
    assert layouts.grad_operand(gs_dev, x, True)[0] == expected_mode

    kernels = triton_backend.kernel_set(p)
    spike, v_out, h = kernels.forward(x, v_init, p, True, store_v_seq)
    grad_x, grad_v_init, _ = kernels.backward(h, gs_dev, gv_dev, p, store_v_seq, has_v_init)

    ref = bptt.run(x.double().cpu(), p.v_rest if v_init is None else v_init.double().cpu(), leaky=p.leaky,
                   tau=p.tau, decay_input=p.decay_input, vth=p.v_threshold, vr=p.v_reset, detach=p.detach_reset,
                   surrogate=("ATan", 2.0), grad_s=grad_s, grad_v_seq=grad_v if store_v_seq else None,
                   grad_v_last=None if store_v_seq else grad_v)
    close = dict(rtol=1e-5, atol=1e-5)
    assert torch.equal(spike.double().cpu(), ref["s"])
    torch.testing.assert_close(h.double().cpu(), ref["h"], **close)
    torch.testing.assert_close(v_out.double().cpu(), ref["v"] if store_v_seq else ref["v"][-1], **close)
    torch.testing.assert_close(grad_x.double().cpu(), ref["grad_x"], **close)
    if has_v_init:
        torch.testing.assert_close(grad_v_init.double().cpu(), ref["grad_v0"], **close)
    else:
        assert grad_v_init is None


def test_inference_writes_no_h_and_training_matches_it():
    kernel_device("triton")
    p = params()
    kernels = triton_backend.kernel_set(p)
    x = (torch.randn(5, 300) + 0.5).to(DEVICE)
    spike, v_last, h = kernels.forward(x, None, p, False, False)
    assert h is None and v_last.shape == (300,)
    spike2, v_last2, h2 = kernels.forward(x, None, p, True, False)
    assert torch.equal(spike, spike2) and torch.equal(v_last, v_last2) and h2.shape == (5, 300)


def test_poisoned_outputs_are_all_overwritten():
    kernel_device("triton")
    assert layouts.POISON_OUTPUTS  # tests/conftest.py poisons kernel outputs
    x = (torch.randn(3, 2, 45) + 0.5).to(DEVICE).requires_grad_()
    v0 = torch.zeros(2, 45, device=DEVICE, requires_grad=True)
    layer = node("triton", store_v_seq=True)
    layer.v = v0
    spike = layer(x)
    (spike.sum() + layer.v_seq.sum()).backward()
    for t in (spike, layer.v_seq, x.grad, v0.grad):
        assert not torch.isnan(t).any()


# ---------------------------------------------------------------- GPU only


def _compare_with_torch(x, **kw):
    """Spikes, last V and input gradient of 'triton' and 'torch' (in float64) on the same input."""
    out = []
    for name in ("triton", "torch"):
        xi = (x if name == "triton" else x.detach().double()).clone().requires_grad_()
        node = neuron.MultiStepLIFNode(backend=name, surrogate_function=surrogate.ATan(), **kw)
        spike = node(xi)
        spike.sum().backward()
        out.append((spike.detach(), node.v.detach(), xi.grad))
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gpu_dtypes_store_and_return_the_input_dtype(dtype):
    x = (torch.randn(8, 4096, device="cuda") * 0.5 + 0.5).to(dtype)
    (spike, v, grad), (rspike, rv, rgrad) = _compare_with_torch(x)
    assert spike.dtype == v.dtype == grad.dtype == dtype
    agree = (spike.double() == rspike).double().mean().item()
    assert agree > 0.999  # the rest are threshold ties that float32 rounds the other way
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(v.double(), rv, rtol=tol, atol=tol)


@pytest.mark.gpu
def test_gpu_cuda_graph_capture_and_replay():
    node = neuron.MultiStepLIFNode(backend="triton", surrogate_function=surrogate.ATan())
    x = torch.randn(8, 2048, device="cuda") + 0.5
    x.requires_grad_()
    node(x).sum().backward()  # compile outside the capture
    x.grad = None
    node.reset()
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph):
        spike = node(x)
        spike.sum().backward()
    torch.cuda.current_stream().wait_stream(stream)
    x.data.copy_(torch.randn(8, 2048, device="cuda") + 0.5)
    x.grad.zero_()
    graph.replay()
    torch.cuda.synchronize()
    ref = bptt.run(x.detach().double().cpu(), 0.0, leaky=True, surrogate=("ATan", 2.0),
                   grad_s=torch.ones(8, 2048, dtype=torch.float64))
    assert torch.equal(spike.double().cpu(), ref["s"])
    torch.testing.assert_close(x.grad.double().cpu(), ref["grad_x"], rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_gpu_second_device_and_current_device_unchanged():
    torch.cuda.set_device(0)
    x = torch.randn(6, 1000, device="cuda:1") + 0.5
    (spike, v, grad), (rspike, rv, rgrad) = _compare_with_torch(x)
    assert spike.device == torch.device("cuda:1") and grad.device == torch.device("cuda:1")
    assert torch.cuda.current_device() == 0
    assert torch.equal(spike.double(), rspike)
    torch.testing.assert_close(grad.double(), rgrad, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_gpu_more_than_2_31_elements():
    # T * N > 2**31 in float16: every offset past 2**31 must be computed in 64 bits.
    steps, n = 2, 2**30 + 40
    x = torch.full((steps, n), 0.6, dtype=torch.float16, device="cuda")
    x[:, -8:] = torch.tensor([0.2, 0.5, 0.9, 1.2, -0.3, 0.45, 0.7, 2.0], dtype=torch.float16, device="cuda")
    x.requires_grad_()
    node = neuron.MultiStepIFNode(backend="triton", surrogate_function=surrogate.ATan())
    spike = node(x)
    spike.sum().backward()
    ref = bptt.run(x[:, -8:].detach().cpu(), 0.0, leaky=False, surrogate=("ATan", 2.0),
                   grad_s=torch.ones(steps, 8, dtype=torch.float64))
    assert torch.equal(spike[:, -8:].double().cpu(), ref["s"])
    torch.testing.assert_close(x.grad[:, -8:].double().cpu(), ref["grad_x"], rtol=2e-3, atol=2e-3)
    assert spike[1, 0].item() == 1.0 and spike[0, 0].item() == 0.0  # the head is right too
