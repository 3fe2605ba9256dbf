"""Backend 'cupy' beyond the shared parity grid (tests/test_parity.py): errors, dtypes under autocast,
streams, a second device, CUDA graphs, the kernel caches, host syncs, what is stored, vector and
scalar paths, and sequences of more than 2^31 elements (64-bit offsets).

The first tests run everywhere (errors need no GPU); the rest are marked ``gpu``.
"""

from __future__ import annotations

import os
import sys
import time
import warnings

import pytest
import torch

import grid
from conftest import require_backend
from flashspike import backends, surrogate
from flashspike.backends import BackendError, cupy_backend
from flashspike.backends import cuda_source as src


# ---- errors (no GPU needed) ----

def test_cpu_tensor_names_the_backends_that_run_there():
    with pytest.raises(BackendError, match=r"CUDA tensors.*'torch'.*'auto'"):
        grid.node("cupy")(torch.rand(3, 4))


def test_missing_cupy_gives_the_pip_command_and_the_cause(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    state = cupy_backend._CupyState()
    for _ in range(2):  # the failure is kept and raised again, never swallowed
        with pytest.raises(ImportError, match=r"pip install cupy-cuda1[23]x") as info:
            state.load()
        assert isinstance(info.value.__cause__, ImportError)
        assert "import of cupy halted" in str(info.value)  # the original message is shown


def test_broken_cupy_library_is_reported_with_its_error(monkeypatch):
    class BrokenCupy:
        class cuda:
            class runtime:
                @staticmethod
                def runtimeGetVersion():
                    raise RuntimeError("libcudart.so.13: cannot open shared object file")

    monkeypatch.setitem(sys.modules, "cupy", BrokenCupy)
    with pytest.raises(ImportError, match="libcudart.so.13: cannot open") as info:
        cupy_backend._CupyState().load()
    assert isinstance(info.value.__cause__, RuntimeError)


def test_vector_width_needs_a_multiple_and_16_byte_alignment():
    assert cupy_backend._vector_width(torch.float32, 1024, 0, 512) == 4
    assert cupy_backend._vector_width(torch.float16, 1024, 0, 512) == 8
    assert cupy_backend._vector_width(torch.bfloat16, 1020, 0) == 1  # 1020 % 8
    assert cupy_backend._vector_width(torch.float32, 1024, 0, 8) == 1  # an offset view


# ---- on a GPU ----

gpu = pytest.mark.gpu


@pytest.fixture
def cuda():
    require_backend("cupy")
    return torch.device("cuda", torch.cuda.current_device())


def _reference_run(x, **kw):
    node = grid.node("torch", **kw)
    return node(x.double().cpu()), node


@gpu
def test_auto_picks_cupy_on_cuda(cuda):
    assert backends.resolve("auto", torch.zeros(2, 3, device=cuda)) is backends.get("cupy")


@gpu
def test_float64_falls_back_to_the_reference_with_one_notice(cuda, monkeypatch):
    monkeypatch.setattr(cupy_backend.BACKEND, "_warned_dtypes", set())
    x = torch.rand(4, 33, device=cuda, dtype=torch.float64) * 2
    with pytest.warns(UserWarning, match="float64.*'torch'"):
        spike = grid.node("cupy")(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spike_again = grid.node("cupy")(x)
    assert spike.dtype == torch.float64 and torch.equal(spike, spike_again)
    assert torch.equal(spike.cpu(), _reference_run(x)[0])


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_autocast_runs_in_the_dtype_that_arrives(cuda, dtype):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96).to(cuda)
    node = grid.node("cupy")
    x = torch.randn(6, 8, 64, device=cuda)
    with torch.autocast("cuda", dtype=dtype):
        spike = node(linear(x))
    assert spike.dtype == dtype and node.v.dtype == dtype
    spike.sum().backward()
    assert linear.weight.grad is not None and torch.isfinite(linear.weight.grad).all()
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
        current = linear(x)
    mismatch = (spike.detach().cpu().double() != _reference_run(current)[0]).double().mean()
    assert mismatch < 1e-3  # only neurons at a threshold tie may differ


@gpu
def test_runs_on_the_current_side_stream(cuda):
    """The kernel must wait for work queued before it on the caller's stream: x is written there
    after a long sleep. A launch on another stream would read x too early."""
    base = torch.randn(32, 1 << 16, device=cuda) + 0.5
    expected = grid.node("cupy")(base).cpu()
    side = torch.cuda.Stream(cuda)
    side.wait_stream(torch.cuda.current_stream(cuda))
    with torch.cuda.stream(side):
        x = torch.zeros_like(base)
        torch.cuda._sleep(50_000_000)  # tens of milliseconds of GPU time
        x.copy_(base)
        with torch.no_grad():
            spike = grid.node("cupy")(x)
    side.synchronize()
    assert torch.equal(spike.cpu(), expected)


@gpu
def test_second_device(cuda):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs a second CUDA device")
    device = torch.device("cuda", 1)
    x = (torch.randn(5, 3, 257) + 0.5).to(device).requires_grad_()
    assert torch.cuda.current_device() == 0
    node = grid.node("cupy")
    spike = node(x)
    (spike * torch.arange(spike.numel(), device=device).view_as(spike).sin()).sum().backward()
    assert spike.device == device and node.v.device == device and x.grad.device == device
    ref_spike, ref_node = _reference_run(x.detach())
    assert torch.equal(spike.detach().cpu().double(), ref_spike)
    torch.testing.assert_close(node.v.detach().cpu().double(), ref_node.v, rtol=1e-5, atol=1e-5)
    # and again on device 0 with the same options: a kernel per device
    spike0 = grid.node("cupy")(x.detach().to(cuda))
    assert torch.equal(spike0.cpu(), spike.detach().cpu())


@gpu
def test_cuda_graph_capture_and_replay(cuda):
    node = grid.node("cupy", store_v_seq=True)
    static_x = (torch.randn(8, 4096, device=cuda) + 0.5).requires_grad_()
    weight = torch.randn(8, 4096, device=cuda)
    side = torch.cuda.Stream(cuda)
    side.wait_stream(torch.cuda.current_stream(cuda))
    with torch.cuda.stream(side):  # warm-up: compile and load the kernels before capturing
        for _ in range(2):
            node.reset()
            static_x.grad = None
            (node(static_x) * weight).sum().backward()
    torch.cuda.current_stream(cuda).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    static_x.grad = None
    with torch.cuda.graph(graph):
        node.reset()
        static_spike = node(static_x)
        (static_spike * weight).sum().backward()
    for seed in (1, 2):
        torch.manual_seed(seed)
        with torch.no_grad():
            static_x.copy_(torch.randn(8, 4096, device=cuda) + 0.5)
        graph.replay()
        torch.cuda.synchronize(cuda)
        xr = static_x.detach().cpu().double().requires_grad_()
        ref_spike = grid.node("torch", store_v_seq=True)(xr)
        (ref_spike * weight.cpu().double()).sum().backward()
        assert torch.equal(static_spike.detach().cpu().double(), ref_spike.detach())
        torch.testing.assert_close(static_x.grad.cpu().double(), xr.grad, rtol=1e-4, atol=1e-4)


@gpu
def test_kernels_are_cached_in_memory_and_on_disk(cuda):
    kernels = cupy_backend.BACKEND.compiled
    alpha = 1.0 + (time.time_ns() % 1_000_000) / 1e7  # a source no earlier run has compiled
    node = grid.node("cupy", surrogate=surrogate.Sigmoid(alpha=alpha))
    x = torch.rand(4, 1000, device=cuda, requires_grad=True)
    cache_dir = os.environ.get("CUPY_CACHE_DIR", os.path.expanduser("~/.cupy/kernel_cache"))
    before = set(os.listdir(cache_dir)) if os.path.isdir(cache_dir) else set()
    count = kernels.compiled_count()
    node(x).sum().backward()
    assert kernels.compiled_count() == count + 2  # one forward, one backward variant
    assert len(set(os.listdir(cache_dir)) - before) >= 2
    for _ in range(3):
        node.reset()
        node(x).sum().backward()
    assert kernels.compiled_count() == count + 2
    # same options, new objects: the same key, nothing compiled
    grid.node("cupy", surrogate=surrogate.Sigmoid(alpha=alpha))(x).sum().backward()
    assert kernels.compiled_count() == count + 2


@gpu
def test_no_host_sync_in_forward_and_backward(cuda):
    node = grid.node("cupy", store_v_seq=True)
    x = torch.rand(8, 4096, device=cuda, requires_grad=True)
    v0 = torch.rand(4096, device=cuda, requires_grad=True)
    weight = torch.rand(8, 4096, device=cuda)

    def step():
        node.v = v0
        (node(x) * weight).sum().backward()
        node.v = v0
        node(x).sum().backward()
        with torch.no_grad():
            node.reset()
            node(x)

    step()  # compile and load first
    torch.cuda.synchronize(cuda)
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@gpu
def test_training_saves_only_h_and_inference_saves_nothing(cuda):
    x = torch.rand(8, 4096, device=cuda, requires_grad=True)
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        grid.node("cupy", store_v_seq=True)(x)
    assert [tuple(t.shape) for t in saved] == [(8, 4096)]  # H only
    node = grid.node("cupy")
    with torch.no_grad():
        node(x)  # warm-up
        torch.cuda.synchronize(cuda)
        before = torch.cuda.memory_allocated(cuda)
        spike = node(x)
        torch.cuda.synchronize(cuda)
        assert torch.cuda.memory_allocated(cuda) - before <= spike.numel() * 4 + 4096 * 4 + 1024


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_vector_and_scalar_paths_agree(cuda, dtype):
    """N a multiple of 16 bytes' worth runs the vectorized kernels, a misaligned view the scalar ones:
    same numbers, and the contiguous view is not copied."""
    torch.manual_seed(3)
    steps, n = 9, 1024
    flat = (torch.randn(steps * n + 1, device=cuda) + 0.5).to(dtype)
    aligned = flat[: steps * n].view(steps, n).clone()
    misaligned = flat[1:].view(steps, n)  # contiguous, 2 or 4 bytes off a 16-byte boundary
    misaligned.copy_(aligned)
    kernels = cupy_backend.BACKEND.compiled
    results = []
    for x in (aligned, misaligned):
        x = x.detach().requires_grad_()
        node = grid.node("cupy", store_v_seq=True)
        spike = node(x)
        (spike * 0.5 + node.v_seq * 0.25).sum().backward()
        results.append((spike.detach(), node.v_seq.detach(), x.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)
    used = {key[2][-1] for key in kernels.functions if key[1] == dtype}
    assert {1, src.vector_width(dtype)} <= used


@gpu
@pytest.mark.parametrize("n", [(1 << 30) + 1, 1 << 30], ids=["scalar", "vector"])
def test_more_than_2_31_elements(cuda, n):
    """T=3 steps of 2^30 neurons in float16: offsets of step 2 pass 2^31, so 32-bit indexing would
    write the wrong place. Neurons are independent: check slices at both ends against the reference."""
    steps = 3
    torch.cuda.empty_cache()
    if torch.cuda.mem_get_info(cuda)[0] < 30 * 2**30:
        pytest.skip("needs about 30 GiB of free GPU memory")
    g = torch.Generator(device=cuda).manual_seed(0)
    x = (torch.rand(steps, n, device=cuda, generator=g, dtype=torch.float16) * 1.5).requires_grad_()
    node = grid.node("cupy", v_reset=None)
    spike = node(x)
    spike.sum().backward()  # the gradient arrives as one broadcast value (GRAD_SCALAR)
    edges = [slice(0, 4096), slice(n - 4096, n), slice(n // 2 - 2048, n // 2 + 2048)]
    for part in edges:
        xs = x.detach()[:, part].cpu().double().requires_grad_()
        ref = grid.node("torch", v_reset=None)
        ref_spike = ref(xs)
        ref_spike.sum().backward()
        got = spike.detach()[:, part].cpu().double()
        assert (got == ref_spike.detach()).double().mean() > 0.999  # float16 threshold ties aside
        torch.testing.assert_close(x.grad[:, part].cpu().double(), xs.grad, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(node.v.detach()[part].cpu().double(), ref.v, rtol=2e-3, atol=2e-3)
    del x, spike, node
    torch.cuda.empty_cache()


def test_a_forward_and_a_backward_of_equal_switches_are_two_functions(monkeypatch):
    # A forward's switches (booleans, then VEC) may equal a backward's (GRAD_* modes are small ints, and
    # True == 1): the compiled kernels are told apart by the kernel too, never handed for the other.
    monkeypatch.setattr(cupy_backend, "_compile", lambda source, name, device_index: name)
    compiled = cupy_backend.CompiledKernels()
    forward = (True, True, False, False, False, False, 1)
    backward = (src.GRAD_DENSE, src.GRAD_DENSE, False, False, False, False, 1)
    assert forward == backward  # (what made them collide)
    got = [compiled.function(("key",), "source", torch.float32, switches, 0, name_of)
           for switches, name_of in ((forward, src.forward_name), (backward, src.backward_name))]
    assert got == [src.forward_name(torch.float32, *forward), src.backward_name(torch.float32, *backward)]
    assert got[0].startswith("fs_forward") and got[1].startswith("fs_backward")
