"""Max-pooling with one byte per output for the backward: the same outputs, choices among equal values
and gradients as PyTorch's max_pool2d (CPU through Triton's interpreter, CUDA against PyTorch's CUDA
kernels)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flashspike.memory import pooling
from conftest import kernel_device

GEOMETRIES = [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((3, 3), (1, 1), (1, 1)),
              ((2, 3), (1, 2), (1, 0)), ((3, 3), (3, 3), (0, 0))]
GEOMETRY_IDS = ["k2s2", "k3s2p1", "k3s1p1", "k2x3s1x2p1x0", "k3s3"]


def every_case(test):
    """Every geometry, input kind (spikes, with many equal maxima; values, with NaN and -inf), layout
    and dtype."""
    for mark in (pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str),
                 pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"]),
                 pytest.mark.parametrize("kind", ["spikes", "values"]),
                 pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)):
        test = mark(test)
    return test


def _input(kind, dtype, channels_last, device, shape=(2, 3, 7, 9)):
    g = torch.Generator().manual_seed(11)
    if kind == "spikes":  # many equal maxima: which one is chosen matters for the gradient
        x = (torch.rand(shape, generator=g) > 0.5).float()
    else:
        x = torch.randn(shape, generator=g)
        flat = x.view(-1)
        flat[::17] = float("nan")
        flat[5::23] = float("-inf")
    x = x.to(dtype).to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _kernels(device):
    from flashspike.memory import pooling_triton

    return pooling_triton


@every_case
def test_forward_picks_pytorchs_maximum_and_element(geometry, kind, channels_last, dtype):
    device = kernel_device("triton")
    kernel, stride, padding = geometry
    x = _input(kind, dtype, channels_last, device)
    y, positions = _kernels(device).forward(x, kernel, stride, padding)
    expected, indices = F.max_pool2d_with_indices(x.float() if device == "cpu" and dtype != torch.float32 else x,
                                                  kernel, stride, padding)
    torch.testing.assert_close(y, expected.to(dtype), rtol=0, atol=0, equal_nan=True)
    assert positions.dtype == torch.uint8 and positions.stride() == y.stride()
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    # the byte position, as the input-plane index PyTorch keeps
    oh = torch.arange(y.shape[2], device=device).view(1, 1, -1, 1)
    ow = torch.arange(y.shape[3], device=device).view(1, 1, 1, -1)
    p = positions.long()
    ih = oh * stride[0] - padding[0] + p // kernel[1]
    iw = ow * stride[1] - padding[1] + p % kernel[1]
    assert torch.equal(ih * x.shape[3] + iw, indices)


def _pytorch_gradient(x, grad, kernel, stride, padding):
    """PyTorch's input gradient, summed in float32 (what its CUDA kernels do for 16-bit tensors)."""
    wide = x.float().requires_grad_()
    F.max_pool2d(wide, kernel, stride, padding).backward(grad.float())
    return wide.grad.to(x.dtype)


@every_case
def test_backward_gives_pytorchs_gradient(geometry, kind, channels_last, dtype):
    device = kernel_device("triton")
    kernel, stride, padding = geometry
    x = _input(kind, dtype, channels_last, device)
    kernels = _kernels(device)
    y, positions = kernels.forward(x, kernel, stride, padding)
    g = torch.Generator().manual_seed(4)
    grad = torch.randn(y.shape, generator=g).to(dtype).to(device)
    if kind == "values":  # NaN inputs aside, every output's gradient lands where PyTorch sends it
        grad_x = kernels.backward(grad, positions, x.shape, dtype, kernels.channels_last(x), kernel, stride, padding)
        assert grad_x.stride() == x.stride()
    grad_x = kernels.backward(grad.contiguous(), positions, x.shape, dtype, kernels.channels_last(x), kernel,
                              stride, padding)
    expected = _pytorch_gradient(x, grad, kernel, stride, padding)
    if dtype == torch.bfloat16 and device == "cpu" and stride[0] * stride[1] < kernel[0] * kernel[1]:
        # Summed gradients are rounded to bfloat16 at the end; Triton's CPU interpreter rounds that
        # conversion toward zero, a GPU to nearest (compared exactly in the GPU test): one unit apart.
        torch.testing.assert_close(grad_x, expected, rtol=2 ** -7, atol=0, equal_nan=True)
        return
    torch.testing.assert_close(grad_x, expected, rtol=0, atol=0, equal_nan=True)


@pytest.fixture
def fused_on_this_device(monkeypatch):
    device = kernel_device("triton")
    monkeypatch.setattr(pooling, "_runs_fused", lambda x: True)
    return device


def test_the_module_keeps_bytes_and_trains_like_nn_maxpool(fused_on_this_device):
    device = fused_on_this_device
    plain = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.MaxPool2d(3, 2, 1), nn.Flatten(), nn.Linear(4 * 4 * 5, 3))
    plain = plain.to(device)
    import copy

    lean = copy.deepcopy(plain)
    assert pooling.store_pool_indices_in_bytes(lean) == 1
    assert type(lean[1]) is pooling.BytePositionMaxPool2d and repr(lean) == repr(plain)
    x = torch.randn(6, 2, 8, 9, device=device)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = lean(x)
    assert torch.equal(out, plain(x))
    assert [t.dtype for t in saved].count(torch.int64) == 0 and any(t.dtype == torch.uint8 for t in saved)
    out.sum().backward()
    plain(x).sum().backward()
    for a, b in zip(lean.parameters(), plain.parameters()):
        assert torch.equal(a.grad, b.grad)
    assert pooling.store_pool_indices_in_bytes(lean, enabled=False) == 1 and type(lean[1]) is nn.MaxPool2d


def test_what_the_kernels_do_not_cover_takes_nn_maxpools_path(fused_on_this_device):
    device = fused_on_this_device
    x = torch.randn(2, 3, 16, 16, device=device, requires_grad=True)
    for module in (nn.MaxPool2d(2, ceil_mode=True), nn.MaxPool2d(2, return_indices=True), nn.MaxPool2d(3, dilation=2),
                   nn.MaxPool2d(16)):  # the last: 256 window positions, more than a byte holds
        reference = module(x)
        pooling.store_pool_indices_in_bytes(module)
        result = module(x)
        if isinstance(reference, tuple):
            assert all(torch.equal(a, b) for a, b in zip(result, reference))
        else:
            assert torch.equal(result, reference) and result.grad_fn.name() == reference.grad_fn.name()
    with torch.no_grad():  # nothing to save: the plain forward
        pooled = pooling.BytePositionMaxPool2d(2)(x)
    assert pooled.grad_fn is None


def test_cpu_tensors_take_nn_maxpools_path_by_default():
    x = torch.randn(1, 1, 4, 4, requires_grad=True)
    y = pooling.BytePositionMaxPool2d(2)(x)
    assert "MaxPool2DWithIndices" in y.grad_fn.name()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_against_pytorchs_cuda_kernels_gpu(dtype, channels_last):
    # On CUDA PyTorch's own 16-bit kernels sum in float32 too: compared directly, bit for bit.
    device = kernel_device("triton")
    for (kernel, stride, padding), kind in zip(GEOMETRIES * 2, ["spikes"] * 5 + ["values"] * 5):
        x = _input(kind, dtype, channels_last, device, shape=(4, 16, 30, 30)).requires_grad_()
        module = pooling.BytePositionMaxPool2d(kernel, stride, padding)
        y = module(x)
        expected = F.max_pool2d(x, kernel, stride, padding)
        torch.testing.assert_close(y, expected, rtol=0, atol=0, equal_nan=True)
        grad = torch.randn_like(y)
        (grad_x,) = torch.autograd.grad(y, x, grad)
        (expected_grad,) = torch.autograd.grad(expected, x, grad)
        torch.testing.assert_close(grad_x, expected_grad, rtol=0, atol=0, equal_nan=True)


def test_a_second_derivative_is_refused_not_dropped(fused_on_this_device):
    x = torch.randn(1, 2, 6, 6, device=fused_on_this_device, requires_grad=True)
    y = pooling.BytePositionMaxPool2d(2)(x)
    (grad,) = torch.autograd.grad((y ** 2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiable"):
        grad.sum().backward()


def test_sew_resnet18_with_all_memory_switches_trains_like_the_plain_model(fused_on_this_device, monkeypatch,
                                                                          reproducible, whole_model_statistics):
    # The zoo model end to end (its stem's overlapping 3x3 pool, spike inputs after views, ADD sums of
    # spikes): outputs and every gradient equal to the model's with PyTorch's pools and convolutions
    # and neurons that keep H (its BatchNorms normalize as the switched ones do), with bytes and bits
    # kept for the backward and no H behind a BatchNorm. The switched model's neurons fire from their
    # BatchNorms' inputs: the outputs they leave unwritten hold NaN (the plain model's are written
    # before its neurons, which keep H, read them).
    import copy

    from flashspike import functional, neuron, surrogate
    from flashspike.backends import autograd
    from flashspike.memory import batchnorm_recompute, spike_bits
    from flashspike.model import sew_resnet

    device = fused_on_this_device
    monkeypatch.setattr(batchnorm_recompute, "_unwritten_like", lambda x: torch.full_like(x, float("nan")))
    torch.manual_seed(0)
    plain = sew_resnet.multi_step_sew_resnet18(num_classes=10, cnf="ADD", multi_step_neuron=neuron.MultiStepIFNode,
                                               surrogate_function=surrogate.ATan(), detach_reset=True,
                                               backend="triton").to(device)
    assert batchnorm_recompute.recompute_h_after_batchnorm(plain) == 20
    lean = copy.deepcopy(plain)
    assert pooling.store_pool_indices_in_bytes(lean) == 1
    assert spike_bits.store_spike_inputs_in_bits(lean) == 20  # 19 convolutions and the classifier (not the stem)
    x = torch.rand(2, 2, 3, 32, 32, device=device) * 2
    grads = []
    for net in (plain, lean):
        kept = []
        with monkeypatch.context() as patch:
            if net is plain:  # its neurons keep H
                patch.setattr(autograd, "recipe_for", lambda x: None)
            with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
                out = net(x)
            out.mean(0).logsumexp(1).sum().backward()
        functional.reset_net(net)
        grads.append((out, [p.grad for p in net.parameters()], kept))
    (out_a, grads_a, kept_a), (out_b, grads_b, kept_b) = grads
    assert torch.equal(out_a, out_b) and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    assert any(t.dtype == torch.int64 for t in kept_a) and not any(t.dtype == torch.int64 for t in kept_b)
    # the pool's positions and the inputs of the 19 convolutions after the stem: spikes in one bit,
    # ADD's sums (0..3) in two
    packed = [t for t in kept_b if t.dtype == torch.uint8 and t.numel()]  # not cuDNN BatchNorm's empty reserve
    assert len(packed) == 20
    neuron_inputs = {t.untyped_storage().data_ptr() for t in kept_a if t.dim() == 5}  # the 20 neurons' H
    assert len(neuron_inputs) == 20
    # the lean neurons keep only views of what their BatchNorms keep ([T·B, C, H, W])
    batchnorm_inputs = {t.untyped_storage().data_ptr() for t in kept_b if t.dim() == 4}
    assert all(t.untyped_storage().data_ptr() in batchnorm_inputs for t in kept_b if t.dim() == 5)
