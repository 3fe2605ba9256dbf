"""Neurons after a recomputable BatchNorm keep no H: outputs, gradients and running statistics equal
bit for bit to the same layers' with every neuron keeping H, and exactly H's bytes fewer kept for the
backward (but for each channel's scale and shift); close to the plain layers' (the normalization's
rounding), and equal to them bit for bit where Triton is missing (CPU through Triton's interpreter,
CUDA on both kernel backends)."""

import contextlib
import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flashspike import functional, layer, neuron
from flashspike.backends import autograd, recompute
from flashspike.memory import batchnorm_recompute
from conftest import kernel_device
from kept_step import training_step


class _InPlace(nn.Module):
    """Changes its input in place: a neuron reading it must not compute it again from the BatchNorm."""

    def forward(self, x):
        return x.mul_(1.5)


def _net(backend, changed_in_place=False):
    torch.manual_seed(7)
    return nn.Sequential(
        layer.SeqToANNContainer(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)),
        neuron.MultiStepIFNode(backend=backend, detach_reset=True),
        layer.SeqToANNContainer(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4, affine=False),
                                *([_InPlace()] if changed_in_place else [])),
        neuron.MultiStepLIFNode(tau=2.0, backend=backend, v_reset=None),
        layer.SeqToANNContainer(nn.Conv2d(4, 4, 3, padding=1, bias=False),
                                nn.BatchNorm2d(4, track_running_stats=False)),
        neuron.MultiStepParametricLIFNode(backend=backend),
        layer.SeqToANNContainer(nn.Flatten(), nn.Linear(4 * 6 * 6, 5), nn.BatchNorm1d(5)),
        neuron.MultiStepIFNode(backend=backend),
    )


def _neuron_inputs(net, x, autocast_dtype):
    """Bytes of each neuron's input (the size of its H) in one forward."""
    sizes = []
    hooks = [m.register_forward_pre_hook(lambda m, args: sizes.append(args[0].numel() * args[0].element_size()))
             for m in net if isinstance(m, neuron.BaseNode)]
    with torch.no_grad(), torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32,
                                         enabled=autocast_dtype is not None):
        net(x)
    functional.reset_net(net)
    for hook in hooks:
        hook.remove()
    return sizes


def _keep_h(monkeypatch):
    """Neurons keep H whatever their input (the switched BatchNorm still normalizes as it does)."""
    monkeypatch.setattr(autograd, "recipe_for", lambda x: None)


def _without_triton_normalization(monkeypatch):
    """The switched BatchNorm as where Triton is missing: the plain layer's output, marked."""
    monkeypatch.setattr(batchnorm_recompute, "_normalize_kernels", lambda x: None)


def _channels_of_recomputing_neurons(net):
    """Bytes of the per-channel scale and shift that each neuron after a switched BatchNorm keeps."""
    return sum(8 * m.num_features for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def _assert_close_to_plain(a, b):
    """The switched layers against the plain ones: the same spikes; gradients and statistics within
    the rounding of the normalization's multiply-add (ordered otherwise by PyTorch's kernels)."""
    (out_a, grads_a, buffers_a, _), (out_b, grads_b, buffers_b, _) = a, b
    assert torch.equal(out_a, out_b)
    assert grads_a.keys() == grads_b.keys() and buffers_a.keys() == buffers_b.keys()
    for name in list(grads_a) + list(buffers_a):
        got, want = (grads_a | buffers_a)[name].double(), (grads_b | buffers_b)[name].double()
        scale = max(want.abs().max().item(), 1.0)
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3 * scale, msg=lambda m: f"{name}: {m}")


def _assert_equal(a, b):
    (out_a, grads_a, buffers_a, _), (out_b, grads_b, buffers_b, _) = a, b
    assert torch.equal(out_a, out_b)
    assert grads_a.keys() == grads_b.keys() and buffers_a.keys() == buffers_b.keys()
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name
    for name in buffers_a:
        assert torch.equal(buffers_a[name], buffers_b[name]), name


def _compare(monkeypatch, backend, device, autocast_dtype, memory_format=torch.contiguous_format,
             changed_in_place=False):
    """(plain, switched, switched with every neuron keeping its H) after one step, and each neuron's
    H size. The switched net's recompute must give what keeping H gives, bit for bit."""
    plain = _net(backend, changed_in_place).to(device, memory_format=memory_format)
    lean = copy.deepcopy(plain)
    assert batchnorm_recompute.recompute_h_after_batchnorm(lean) == 4
    kept = copy.deepcopy(lean)
    x = (torch.rand(3, 4, 2, 6, 6, generator=torch.Generator().manual_seed(1)) * 3).to(device)
    x = x.contiguous(memory_format=torch.channels_last_3d) if memory_format == torch.channels_last else x
    results = [training_step(plain, x, autocast_dtype), training_step(lean, x, autocast_dtype)]
    with monkeypatch.context() as patch:
        _keep_h(patch)
        results.append(training_step(kept, x, autocast_dtype))
    _assert_equal(results[1], results[2])
    if autocast_dtype is None:  # (16-bit gradients differ from any other rounding's by far more)
        _assert_close_to_plain(results[1], results[0])
    return results, _neuron_inputs(plain, x, autocast_dtype), _channels_of_recomputing_neurons(lean)


@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16], ids=["float32", "autocast-bf16"])
def test_neurons_keep_no_h_and_train_bit_for_bit(monkeypatch, autocast_dtype, reproducible):
    (_, lean, kept), h_sizes, channels = _compare(monkeypatch, "triton", kernel_device("triton"), autocast_dtype)
    assert kept[3] - lean[3] == sum(h_sizes) - channels  # every neuron's H, for its channels' scale and shift


def test_an_output_changed_in_place_is_not_computed_again(monkeypatch, reproducible):
    (_, lean, kept), h_sizes, channels = _compare(monkeypatch, "triton", kernel_device("triton"), None,
                                                  changed_in_place=True)
    assert kept[3] - lean[3] == sum(h_sizes) - h_sizes[1] - (channels - 8 * 4)  # the second neuron keeps its H


def test_without_triton_the_plain_output_is_computed_again_bit_for_bit(monkeypatch, reproducible):
    _without_triton_normalization(monkeypatch)
    device = kernel_device("triton")
    plain = _net("triton").to(device)
    lean = copy.deepcopy(plain)
    batchnorm_recompute.recompute_h_after_batchnorm(lean)
    x = (torch.rand(3, 4, 2, 6, 6, generator=torch.Generator().manual_seed(1)) * 3).to(device)
    plain_step, lean_step = training_step(plain, x, None), training_step(lean, x, None)
    _assert_equal(plain_step, lean_step)
    assert plain_step[3] - lean_step[3] == sum(_neuron_inputs(plain, x, None))


def test_a_view_of_the_output_finds_the_recipe_and_other_tensors_do_not(monkeypatch):
    device = kernel_device("triton")  # the Triton normalization: CUDA, or the interpreter on the CPU
    bn = batchnorm_recompute.RecomputableBatchNorm2d(3).to(device)
    x = torch.randn(4, 3, 2, 2, device=device, requires_grad=True)
    y = bn(x)
    seq = y.view(2, 2, 3, 2, 2)
    found, view = recompute.recipe_for(seq)
    assert isinstance(found, recompute.Normalized) and found.how == (4, 3) and found.inputs[0] is x
    source = recompute.normalized_input(found, view, seq)
    assert torch.equal(source, x.view(2, 2, 3, 2, 2)) and source.stride() == seq.stride()
    scale, shift = found.inputs[1:]
    torch.testing.assert_close(y, x * scale.view(3, 1, 1) + shift.view(3, 1, 1))
    assert recompute.normalized_input(found, recompute.recipe_for(y[:, 1:])[1], y[:, 1:]) is None  # off the planes
    assert recompute.recipe_for(x) is None and recompute.recipe_for(y + 0) is None
    bn.eval()  # running statistics decide the output: not marked
    assert recompute.recipe_for(bn(x)) is None
    with torch.no_grad():
        assert recompute.recipe_for(bn.train()(x)) is None
    _without_triton_normalization(monkeypatch)  # the plain layer's output and a function that makes it again
    y = bn(x)
    found, view = recompute.recipe_for(y.view(2, 2, 3, 2, 2))
    again = recompute.recompute(found.how, view, found.inputs)
    assert torch.equal(again, y.view(2, 2, 3, 2, 2))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cupy", "triton"])
def test_neurons_keep_no_h_and_train_bit_for_bit_gpu(monkeypatch, backend, reproducible):
    device = kernel_device(backend)
    for autocast_dtype in (None, torch.float16):
        for memory_format in (torch.contiguous_format, torch.channels_last):
            (_, lean, kept), h_sizes, channels = _compare(monkeypatch, backend, device, autocast_dtype, memory_format)
            assert kept[3] - lean[3] == sum(h_sizes) - channels


def _static_input_case(monkeypatch, backend, device, memory_format=torch.contiguous_format):
    # The Fashion-MNIST net normalizes the image once and feeds it to its first neuron at every step
    # (expand): that neuron's backward recomputes the one step and its H over all T.
    from flashspike.model.csnn import CSNN

    torch.manual_seed(2)
    plain = CSNN(3, channels=4, backend=backend, memory_format=memory_format).to(device)
    lean = copy.deepcopy(plain)
    assert batchnorm_recompute.recompute_h_after_batchnorm(lean) == 2
    kept = copy.deepcopy(lean)
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(4)).to(device)
    results = [training_step(plain, x, None), training_step(lean, x, None)]
    with monkeypatch.context() as patch:
        _keep_h(patch)
        results.append(training_step(kept, x, None))
    _assert_equal(results[1], results[2])
    _assert_close_to_plain(results[1], results[0])
    assert results[2][3] - results[1][3] == 3 * 5 * 4 * (28 * 28 + 14 * 14) * 4 - _channels_of_recomputing_neurons(lean)


def test_a_static_input_repeated_over_t_is_computed_again_once(monkeypatch, reproducible):
    _static_input_case(monkeypatch, "triton", kernel_device("triton"))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cupy", "triton"])
def test_a_static_input_repeated_over_t_is_computed_again_once_gpu(monkeypatch, backend, reproducible):
    for memory_format in (torch.contiguous_format, torch.channels_last):
        _static_input_case(monkeypatch, backend, kernel_device(backend), memory_format)


def test_carried_state_potentials_and_eif_are_recomputed_exactly(monkeypatch, reproducible):
    # Two calls without a reset (the second starts from the first's V, which the recompute must start
    # from too), a neuron whose backward rebuilds V[t-1] (EIF), and a loss on the kept potentials.
    device = kernel_device("triton")
    torch.manual_seed(11)
    lean = nn.Sequential(
        layer.SeqToANNContainer(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)),
        neuron.MultiStepEIFNode(backend="triton"),
        layer.SeqToANNContainer(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)),
        neuron.MultiStepLIFNode(tau=3.0, backend="triton", store_v_seq=True),
    ).to(device)
    batchnorm_recompute.recompute_h_after_batchnorm(lean)
    kept = copy.deepcopy(lean)
    x = (torch.rand(2, 3, 2, 5, 5, generator=torch.Generator().manual_seed(6)) * 4).to(device)
    results = []
    for net in (lean, kept):
        with monkeypatch.context() as patch:
            if net is kept:
                _keep_h(patch)
            loss = 0
            for chunk in (x, x.flip(0)):
                out = net(chunk)
                loss = loss + out.sum() + 0.1 * net[3].v_seq.square().sum()
            loss.backward()
        functional.reset_net(net)
        results.append((out, [p.grad for p in net.parameters()]))
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    assert any(g.abs().sum() > 0 for g in grads_a)


def test_the_switched_layer_checks_its_input_as_batchnorm_does():
    bn = batchnorm_recompute.RecomputableBatchNorm2d(3)
    with pytest.raises(ValueError, match="expected 4D input"):
        bn(torch.randn(2, 3, 4, requires_grad=True))


def _normalized_sequence_case(dtype, memory_format, repeated, device):
    """A [T, B, C, H, W] sequence (or one step repeated over T) of BatchNorm inputs, its per-channel
    scale and shift, and the normalized sequence as the switched BatchNorm writes it."""
    g = torch.Generator().manual_seed(5)
    steps, batch, channels = 4, 3, 5
    flat = (torch.randn(1 if repeated else steps * batch, channels, 4, 6, generator=g) * 2).to(dtype).to(device)
    flat = flat.contiguous(memory_format=memory_format)
    scale = (torch.rand(channels, generator=g) + 0.5).to(device)
    shift = (torch.randn(channels, generator=g) * 0.5 + 0.4).to(device)
    kernels = batchnorm_recompute._normalize_kernels(flat)
    normalized = kernels.normalize(flat, scale, shift)
    if repeated:
        return [t.expand(steps, *t.shape[1:]) for t in (flat, normalized)], scale, shift
    return [t.view(steps, batch, channels, 4, 6) for t in (flat, normalized)], scale, shift


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("repeated", [False, True], ids=["sequence", "repeated"])
def test_the_kernels_compute_h_again_and_fire_from_the_normalized_input(backend, dtype, memory_format, repeated):
    from flashspike.backends import choice
    from flashspike.params import NeuronParams

    device = kernel_device("triton")
    (x, y), scale, shift = _normalized_sequence_case(dtype, memory_format, repeated, device)
    node = neuron.MultiStepLIFNode(tau=2.0, backend=backend)
    p = NeuronParams.of(node)
    kernels = choice.plan_for(backend if backend != "torch" else "triton", y, p).kernels
    if backend == "torch":
        from flashspike.backends.torch_kernels import KERNELS as kernels
    channel = 1 if repeated else 2  # (a repeated step is [T, C, H, W])
    if backend == "torch":  # rounded as PyTorch rounds (Triton's interpreter rounds bfloat16 otherwise)
        view = [1] * x.dim()
        view[channel] = -1
        y = (x.double() * scale.double().view(view) + shift.double().view(view)).float().to(dtype)
    v_init = (torch.rand(y.shape[1:], generator=torch.Generator().manual_seed(3)) * 0.5).to(dtype).to(device)
    v_init = v_init.contiguous(memory_format=memory_format) if v_init.dim() == 4 else v_init
    terms = (scale, shift, y.stride(channel), y.shape[channel])
    for start in (None, v_init):
        _, _, h = kernels.forward(y, start, p, True, False)
        again = kernels.recompute_h(x, *terms, start, p)
        assert again.stride() == h.stride()
        assert torch.equal(again, h)
        assert not torch.equal(h, kernels.forward(x, start, p, True, False)[2])  # the input was normalized
        for store_v_seq in (False, True):  # fired from x, with no H: the outputs of firing from y
            spike, v_out, _ = kernels.forward(y, start, p, False, store_v_seq)
            fired = kernels.forward(x, start, p, True, store_v_seq, normalize=terms)
            assert fired[2] is None
            for got, want in zip(fired[:2], (spike, v_out)):
                assert got.stride() == want.stride() and torch.equal(got, want)
            assert spike.sum() > 0


@pytest.mark.parametrize("shape, memory_format", [
    ((6, 5), None), ((6, 5, 7), None), ((4, 3, 5, 6), torch.contiguous_format), ((4, 3, 5, 6), torch.channels_last),
    ((2, 3, 2, 3, 4), torch.channels_last_3d), ((3, 1500), None),  # more channels than one row block
], ids=str)
def test_the_normalization_kernel_finds_every_elements_channel(shape, memory_format):
    device = kernel_device("triton")
    g = torch.Generator().manual_seed(8)
    x = torch.randn(shape, generator=g).to(device)
    if memory_format is not None:
        x = x.contiguous(memory_format=memory_format)
    channels = shape[1]
    scale, shift = torch.randn(channels, generator=g).to(device), torch.randn(channels, generator=g).to(device)
    y = batchnorm_recompute._normalize_kernels(x).normalize(x, scale, shift)
    view = [1] * x.dim()
    view[1] = -1
    assert y.stride() == x.stride()
    torch.testing.assert_close(y, (x.double() * scale.double().view(view) + shift.double().view(view)).float(),
                               rtol=1e-6, atol=1e-6)


def _split_kernels(monkeypatch):
    """The switched BatchNorm's Triton kernels, their reductions split over several programs whose
    partial results merge in several tiles (as large tensors are on a GPU)."""
    kernels = batchnorm_recompute._normalize_kernels(torch.empty(1, device=kernel_device("triton")))
    monkeypatch.setattr(kernels, "MOMENT_PROGRAMS", 16)
    monkeypatch.setattr(kernels, "MERGE_TILE", 64)
    return kernels


@pytest.mark.parametrize("shape, memory_format", [
    # 260 channels: several channel blocks of the statistics and of their merge, the last ones partial
    ((6, 5), None), ((3, 260), None), ((4, 3, 5, 6), torch.channels_last), ((2, 3, 2, 3, 4), torch.channels_last_3d),
    ((700, 7), None),  # rows over several blocks and programs
], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_the_statistics_kernels_give_each_channels_mean_and_invstd(shape, memory_format, dtype, monkeypatch):
    device = kernel_device("triton")
    kernels = _split_kernels(monkeypatch)
    g = torch.Generator().manual_seed(5)
    # far from zero mean, per channel: a sum of squares would cancel where deviations do not
    x = torch.randn(shape, generator=g) * 0.5 + 100 + torch.arange(shape[1]).remainder(7).view(-1, *[1] * (len(shape) - 2))
    x = x.to(dtype).to(device)
    if memory_format is not None:
        x = x.contiguous(memory_format=memory_format)
    assert x.stride(1) == 1
    mean, invstd, _scale, _shift = kernels.statistics(x, 1e-5)
    dims = [d for d in range(x.dim()) if d != 1]
    wide = x.double()
    expected_mean = wide.mean(dims)
    expected_invstd = (wide.var(dims, correction=0) + 1e-5).rsqrt()
    assert mean.dtype == invstd.dtype == torch.float32
    torch.testing.assert_close(mean.double(), expected_mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(invstd.double(), expected_invstd, rtol=2e-4, atol=0)


@pytest.mark.parametrize("shape, memory_format", [
    ((6, 5), None), ((16, 260), None), ((4, 3, 5, 6), torch.channels_last), ((700, 7), None),
], ids=str)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_the_gradient_kernels_give_batchnorms_gradients(shape, memory_format, affine, dtype, monkeypatch):
    device = kernel_device("triton")
    kernels = _split_kernels(monkeypatch)
    g = torch.Generator().manual_seed(6)
    x = (torch.randn(shape, generator=g) * 2 + 3).to(dtype).to(device)
    grad = torch.randn(shape, generator=g).to(dtype).to(device)
    if memory_format is not None:
        x, grad = x.contiguous(memory_format=memory_format), grad.contiguous(memory_format=memory_format)
    weight = (torch.rand(shape[1], generator=g) + 0.5).to(device) if affine else None
    bias = torch.randn(shape[1], generator=g).to(device) if affine else None
    mean, invstd, _scale, _shift = kernels.statistics(x, 1e-5)
    grad_x, grad_weight, grad_bias = kernels.backward(grad, x, weight, mean, invstd, (True, affine, affine))
    wide = [None if t is None else t.double().requires_grad_() for t in (x, weight, bias)]
    F.batch_norm(wide[0], None, None, wide[1], wide[2], True, 0.0, 1e-5).backward(grad.double())
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-2, atol=2e-3)
    assert grad_x.dtype == dtype and grad_x.stride() == x.stride()
    torch.testing.assert_close(grad_x.double(), wide[0].grad, **tolerance)
    if affine:
        torch.testing.assert_close(grad_weight.double(), wide[1].grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(grad_bias.double(), wide[2].grad, rtol=1e-4, atol=1e-4)
    else:
        assert grad_weight is None and grad_bias is None
    only_weight = kernels.backward(grad, x, weight, mean, invstd, (False, affine, False))
    assert only_weight[0] is None and only_weight[2] is None and (only_weight[1] is not None) == affine


@pytest.mark.parametrize("shape, memory_format", [
    ((6, 5), None), ((3, 130), None), ((4, 3, 5, 6), torch.channels_last), ((700, 7), None),
], ids=str)
@pytest.mark.parametrize("affine, update", [(True, True), (False, True), (True, False)],
                         ids=["affine-update", "plain-update", "affine-eval"])
def test_the_statistics_launch_gives_affine_terms_bit_for_bit(shape, memory_format, affine, update, monkeypatch):
    # The statistics' last launch computes the scale, shift and running statistics from the mean and
    # invstd in registers: the same bits as the separate launch computes from them in memory.
    device = kernel_device("triton")
    kernels = _split_kernels(monkeypatch)
    g = torch.Generator().manual_seed(9)
    x = (torch.randn(shape, generator=g) * 2 + 3).to(device)
    if memory_format is not None:
        x = x.contiguous(memory_format=memory_format)
    channels = shape[1]
    weight = (torch.rand(channels, generator=g) + 0.5).to(device) if affine else None
    bias = torch.randn(channels, generator=g).to(device) if affine else None
    before = (torch.randn(channels, generator=g).to(device), (torch.rand(channels, generator=g) + 0.5).to(device))
    fused_running, separate_running = tuple(t.clone() for t in before), tuple(t.clone() for t in before)
    factor = 0.25
    fused = kernels.statistics(x, 1e-5, weight, bias, *(fused_running if update else (None, None)), factor)
    mean, invstd, _scale, _shift = kernels.statistics(x, 1e-5)  # no weight, no update: the statistics alone
    scale, shift = kernels.affine_terms(mean, invstd, weight, bias, *(separate_running if update else (None, None)),
                                        factor, 1e-5, x.numel() // channels)
    for got, want in zip(fused, (mean, invstd, scale, shift)):
        assert got.dtype == torch.float32 and got.shape == (channels,)
        assert torch.equal(got, want)
    for got, want in zip(fused_running, separate_running):
        assert torch.equal(got, want)
    # and those bits are the batch norm's: its scale, and nn.BatchNorm's update (unbiased variance)
    wide = x.double()
    dims = [d for d in range(x.dim()) if d != 1]
    expected_scale = (wide.var(dims, correction=0) + 1e-5).rsqrt() * (weight.double() if affine else 1)
    torch.testing.assert_close(fused[2].double(), expected_scale, rtol=2e-4, atol=0)
    if update:
        expected = (before[0].double() * (1 - factor) + wide.mean(dims) * factor,
                    before[1].double() * (1 - factor) + wide.var(dims, correction=1) * factor)
        for got, want in zip(fused_running, expected):
            torch.testing.assert_close(got.double(), want, rtol=2e-4, atol=1e-5)
    else:
        assert all(torch.equal(got, want) for got, want in zip(fused_running, before))


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=str)
def test_running_statistics_follow_batchnorms_update(momentum, memory_format):
    # (channels last: the statistics' own launch updates them; channel-major: the affine terms' launch)
    device = kernel_device("triton")
    plain = nn.BatchNorm2d(3, momentum=momentum).to(device)
    lean = copy.deepcopy(plain)
    batchnorm_recompute.recompute_h_after_batchnorm(lean)
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        x = (torch.randn(4, 3, 5, 5, generator=g) * 3 + 1).to(device).contiguous(memory_format=memory_format)
        x.requires_grad_()
        torch.testing.assert_close(lean(x), plain(x), rtol=1e-5, atol=1e-5)
    assert recompute.recipe_for(lean(x)) is not None and plain(x) is not None  # a fourth batch for both
    for name, buffer in plain.named_buffers():
        torch.testing.assert_close(dict(lean.named_buffers())[name], buffer, rtol=1e-5, atol=1e-6, msg=name)
    assert lean.num_batches_tracked.item() == plain.num_batches_tracked.item() == 4


@pytest.mark.parametrize("make", [
    lambda: neuron.MultiStepLIFNode(tau=2.0, backend="triton"),
    lambda: neuron.MultiStepParametricLIFNode(backend="triton", v_reset=None),
    lambda: neuron.MultiStepEIFNode(backend="triton"),
], ids=["lif", "plif", "eif"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_one_backward_kernel_computes_h_and_goes_back_through_it(monkeypatch, make, dtype):
    """The fused path (H written into dL/dX's memory by the backward kernel's own forward pass) equals
    H computed again by the forward kernel and then the ordinary backward, bit for bit, for every
    switch: an initial state, a kept V sequence, a scalar gradient, the initial state's gradient."""
    from flashspike.backends import choice, layouts
    from flashspike.params import NeuronParams

    monkeypatch.setattr(layouts, "POISON_OUTPUTS", True)  # an element the fused kernel misses is NaN
    device = kernel_device("triton")
    (x, y), scale, shift = _normalized_sequence_case(dtype, torch.channels_last, False, device)
    node = make()
    p = NeuronParams.of(node)
    kernels = choice.plan_for("triton", y, p).kernels
    assert kernels.fuses_normalized_backward
    decay = torch.full((1,), 0.6, device=device) if p.parametric else None
    g = torch.Generator().manual_seed(6)
    v_init = (torch.rand(y.shape[1:], generator=g) * 0.4).to(dtype).to(device)
    grad_spike = torch.randn(y.shape, generator=g).to(dtype).to(device)
    for start, store_v_seq, scalar, need_grad_v_init in itertools.product(
            (None, v_init), (False, True), (False, True), (False, True)):
        spike_grad = grad_spike.new_ones(()).expand(y.shape) if scalar else grad_spike
        v_grad = torch.randn(y.shape if store_v_seq else y.shape[1:], generator=g).to(dtype).to(device)
        arguments = (x, scale, shift, y.stride(2), y.shape[2], start, spike_grad, v_grad, p, store_v_seq,
                     need_grad_v_init, decay)
        fused = kernels.backward_normalized(*arguments)
        with monkeypatch.context() as patch:
            patch.setattr(kernels, "fuses_normalized_backward", False)
            apart = kernels.backward_normalized(*arguments)
        case = f"v_init={start is not None} store_v_seq={store_v_seq} scalar={scalar} grad_v_init={need_grad_v_init}"
        for got, want in zip(fused, apart):
            assert (got is None) == (want is None), case
            if got is not None:
                assert not torch.isnan(got).any(), case
                assert got.stride() == want.stride() and torch.equal(got, want), case


def test_gradients_masked_off_are_not_passed_on(monkeypatch):
    # PyTorch's CUDA batch-norm backward may return a defined gradient for an output it was told not to
    # compute; the switched layer passes on only what autograd asked for (a BatchNorm without affine
    # parameters, an input that needs no gradient).
    real = torch.ops.aten.native_batch_norm_backward

    class EveryGradient:
        def __call__(self, grad, x, weight, *rest):
            grad_x, grad_weight, grad_bias = real(grad, x, weight, *rest[:-1], [True, weight is not None,
                                                                               weight is not None])
            channels = x.shape[1]
            return (grad_x, grad_weight if grad_weight is not None else x.new_ones(channels),
                    grad_bias if grad_bias is not None else x.new_ones(channels))

    monkeypatch.setattr(torch.ops.aten, "native_batch_norm_backward", EveryGradient())
    device = kernel_device("triton")
    for affine in (False, True):
        bn = batchnorm_recompute.RecomputableBatchNorm2d(3, affine=affine).to(device)
        x = torch.randn(4, 3, 2, 2, device=device, requires_grad=affine is False)
        bn(x).square().sum().backward()
        assert (x.grad is not None) == (not affine)


class _Pair(nn.Module):
    """Two conv -> BatchNorm -> neuron blocks, each BatchNorm's output read by its neuron alone (through
    a view), inside ``normalized_in_neuron`` when ``paired``."""

    def __init__(self, backend, paired=True):
        super().__init__()
        torch.manual_seed(4)
        self.paired = paired
        self.convs = nn.ModuleList([nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 3, 3, padding=1)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(4), nn.BatchNorm2d(3)])
        self.sns = nn.ModuleList([neuron.MultiStepLIFNode(tau=2.0, backend=backend),
                                  neuron.MultiStepIFNode(backend=backend, store_v_seq=True)])

    def forward(self, x):
        for conv, bn, sn in zip(self.convs, self.bns, self.sns):
            T, N = x.shape[:2]
            context = batchnorm_recompute.normalized_in_neuron(bn, sn) if self.paired else contextlib.nullcontext()
            with context:
                x = sn(bn(conv(x.flatten(0, 1))).view(T, N, -1, *x.shape[3:]))
        return x


def _poison_unwritten_outputs(monkeypatch):
    """An output not written yet holds NaN: any read of it shows in the results."""
    monkeypatch.setattr(batchnorm_recompute, "_unwritten_like", lambda x: torch.full_like(x, float("nan")))


def _count_normalizations(monkeypatch):
    from flashspike.memory import batchnorm_triton

    calls = []
    plain = batchnorm_triton.normalize
    monkeypatch.setattr(batchnorm_triton, "normalize", lambda *a, **k: calls.append(1) or plain(*a, **k))
    return calls


@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16], ids=["float32", "autocast-bf16"])
def test_a_paired_neuron_fires_from_the_batchnorms_input_and_its_output_is_never_written(
        monkeypatch, autocast_dtype, reproducible):
    device = kernel_device("triton")
    plain = _Pair("triton", paired=False).to(device)
    batchnorm_recompute.recompute_h_after_batchnorm(plain)
    paired = copy.deepcopy(plain)
    paired.paired = True
    x = (torch.rand(3, 2, 2, 5, 5, generator=torch.Generator().manual_seed(2)) * 3).to(device)
    calls = _count_normalizations(monkeypatch)
    want = training_step(plain, x, autocast_dtype)
    assert len(calls) == 2
    _poison_unwritten_outputs(monkeypatch)
    calls.clear()
    got = training_step(paired, x, autocast_dtype)
    assert not calls  # no output written
    _assert_equal(got, want)
    assert got[0].sum() > 0
    assert all("_output_for_neuron" not in vars(bn) for bn in paired.bns)  # the context leaves no trace


@pytest.mark.parametrize("case", ["torch neurons", "hooked neuron", "single-step neuron", "plain batchnorm",
                                  "no gradients"])
def test_where_the_neuron_cannot_fire_from_the_input_the_output_is_written(monkeypatch, case, reproducible):
    from flashspike.activation_based import neuron as ab_neuron

    device = kernel_device("triton")
    net = _Pair("torch" if case == "torch neurons" else "triton").to(device)
    if case != "plain batchnorm":
        batchnorm_recompute.recompute_h_after_batchnorm(net)
    if case == "hooked neuron":
        net.sns[0].register_forward_hook(lambda module, args, output: None)
    if case == "single-step neuron":
        net.sns[0] = ab_neuron.LIFNode(tau=2.0, backend="triton")  # step_mode 's': reads one step at a time
        assert not net.sns[0].fires_from_unwritten_input()
        net.sns[0] = layer.MultiStepContainer(net.sns[0])
    reference = copy.deepcopy(net)
    reference.paired = False
    x = (torch.rand(3, 2, 2, 5, 5, generator=torch.Generator().manual_seed(2)) * 3).to(device)
    with torch.set_grad_enabled(case != "no gradients"):
        want = reference(x)
        functional.reset_net(reference)
        _poison_unwritten_outputs(monkeypatch)
        got = net(x)
    assert torch.equal(got, want) and not torch.isnan(got).any()


def test_an_unwritten_output_read_by_a_neuron_that_keeps_h_is_written_first(monkeypatch, reproducible):
    # A neuron that finds no recipe (keeps H) reads its input: the output is written before.
    device = kernel_device("triton")
    net = _Pair("triton").to(device)
    batchnorm_recompute.recompute_h_after_batchnorm(net)
    reference = copy.deepcopy(net)
    reference.paired = False
    x = (torch.rand(3, 2, 2, 5, 5, generator=torch.Generator().manual_seed(2)) * 3).to(device)
    want = training_step(reference, x)
    _poison_unwritten_outputs(monkeypatch)
    calls = _count_normalizations(monkeypatch)
    monkeypatch.setattr(autograd, "recipe_for", lambda x: None)
    got = training_step(net, x)
    assert len(calls) == 2
    _assert_equal(got, want)


def _zoo_model(name, device):
    from flashspike.model import spikformer
    from flashspike.model.csnn import CSNN

    torch.manual_seed(6)
    if name == "csnn":
        return CSNN(2, channels=4, backend="triton").to(device), torch.rand(3, 1, 28, 28)
    if name == "vgg11_bn":
        from flashspike.model import spiking_vgg

        net = spiking_vgg.multi_step_spiking_vgg11_bn(multi_step_neuron=neuron.MultiStepIFNode, backend="triton",
                                                      num_classes=3)
        return net.to(device), torch.rand(2, 1, 3, 32, 32) * 2
    if name == "spike_driven_transformer":
        from flashspike.model import spike_driven_transformer

        net = spike_driven_transformer.SpikeDrivenTransformer(T=2, num_classes=3, embed_dims=16, num_heads=2,
                                                              depths=1, backend="triton")
        return net.to(device), torch.rand(2, 3, 16, 16) * 2
    net = spikformer.Spikformer(T=2, img_size_h=16, img_size_w=16, patch_size=4, num_classes=3, embed_dims=16,
                                num_heads=2, depths=1, backend="triton")
    return net.to(device), torch.rand(2, 3, 16, 16) * 2


# (SEW-ResNet-18 with every switch: tests/test_pooling.py, its unwritten outputs poisoned too)
@pytest.mark.parametrize("name, written", [("csnn", 0), ("vgg11_bn", 0), ("spikformer", 2),
                                           ("spike_driven_transformer", 5)])
def test_zoo_models_fire_from_the_input_of_every_batchnorm_a_neuron_reads_alone(
        monkeypatch, name, written, reproducible, whole_model_statistics):
    # Unwritten outputs poisoned: the fused model trains as the same switched model without the pairing;
    # only the BatchNorms whose output another layer reads (Spikformer's max-pooled stem stages) write it.
    device = kernel_device("triton")
    paired, x = _zoo_model(name, device)
    batchnorm_recompute.recompute_h_after_batchnorm(paired)
    unpaired = copy.deepcopy(paired)
    x = x.to(device)
    with monkeypatch.context() as patch:
        patch.setattr(batchnorm_recompute, "called_plainly", lambda module: False)  # (no pairing applies)
        torch.manual_seed(9)  # (VGG's dropout draws the same masks in both steps)
        want = training_step(unpaired, x)
    _poison_unwritten_outputs(monkeypatch)
    calls = _count_normalizations(monkeypatch)
    torch.manual_seed(9)
    got = training_step(paired, x)
    assert len(calls) == written
    if name == "vgg11_bn" and got[0].is_cuda:
        # its adaptive average pool (1x1 up to 7x7) sums its CUDA gradient with atomics, in any order:
        # outputs equal, gradients within that rounding, none NaN
        assert torch.equal(got[0], want[0]) and not any(torch.isnan(g).any() for g in got[1].values())
        _assert_close_to_plain(got, want)
    else:
        _assert_equal(got, want)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cupy", "triton"])
def test_a_paired_neuron_fires_from_the_batchnorms_input_gpu(monkeypatch, backend, reproducible):
    # Both kernel backends, both layouts, float16 autocast, and the neurons writing their spikes' bits.
    from flashspike.memory import spike_bits

    device = kernel_device(backend)
    for autocast_dtype, memory_format in itertools.product((None, torch.float16),
                                                           (torch.contiguous_format, torch.channels_last)):
        plain = _Pair(backend, paired=False).to(device, memory_format=memory_format)
        batchnorm_recompute.recompute_h_after_batchnorm(plain)
        spike_bits.store_spike_inputs_in_bits(plain)
        paired = copy.deepcopy(plain)
        paired.paired = True
        x = (torch.rand(3, 8, 2, 6, 6, generator=torch.Generator().manual_seed(2)) * 3).to(device)
        if memory_format == torch.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        want = training_step(plain, x, autocast_dtype)
        with monkeypatch.context() as patch:
            _poison_unwritten_outputs(patch)
            calls = _count_normalizations(patch)
            got = training_step(paired, x, autocast_dtype)
        assert not calls
        _assert_equal(got, want)
