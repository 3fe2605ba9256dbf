"""Neurons after a recomputable BatchNorm keep no H: outputs, gradients and running statistics equal
to the plain layers' bit for bit, and exactly H's bytes fewer kept for the backward (CPU through
Triton's interpreter, CUDA on both kernel backends)."""

import copy

import pytest
import torch
from torch import nn

from flashspike import functional, layer, neuron
from flashspike.backends import recompute
from flashspike.memory import batchnorm_recompute
from conftest import kernel_device


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


def _step(net, x, autocast_dtype):
    """One training step's output, parameter gradients, BatchNorm statistics and the bytes of every
    storage autograd kept for the backward (each counted once; parameters, which live anyway, not)."""
    kept = {}
    parameters = {p.untyped_storage().data_ptr() for p in net.parameters()}

    def keep(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), \
            torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        out = net(x)
    (out.float() * torch.linspace(0.5, 1.5, out.numel(), device=x.device).view_as(out)).sum().backward()
    functional.reset_net(net)
    grads = {name: p.grad.clone() for name, p in net.named_parameters()}
    return out, grads, {name: b.clone() for name, b in net.named_buffers()}, sum(kept.values())


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


def _compare(backend, device, autocast_dtype, memory_format=torch.contiguous_format, changed_in_place=False):
    plain = _net(backend, changed_in_place).to(device, memory_format=memory_format)
    lean = copy.deepcopy(plain)
    assert batchnorm_recompute.recompute_h_after_batchnorm(lean) == 4
    x = (torch.rand(3, 4, 2, 6, 6, generator=torch.Generator().manual_seed(1)) * 3).to(device)
    x = x.contiguous(memory_format=torch.channels_last_3d) if memory_format == torch.channels_last else x
    out_plain, grads_plain, buffers_plain, kept_plain = _step(plain, x, autocast_dtype)
    out_lean, grads_lean, buffers_lean, kept_lean = _step(lean, x, autocast_dtype)
    assert torch.equal(out_plain, out_lean)
    assert grads_plain.keys() == grads_lean.keys() and buffers_plain.keys() == buffers_lean.keys()
    for name in grads_plain:
        assert torch.equal(grads_plain[name], grads_lean[name]), name
    for name in buffers_plain:
        assert torch.equal(buffers_plain[name], buffers_lean[name]), name
    return kept_plain - kept_lean, _neuron_inputs(plain, x, autocast_dtype)


@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16], ids=["float32", "autocast-bf16"])
def test_neurons_keep_no_h_and_train_bit_for_bit(autocast_dtype, reproducible):
    saved, h_sizes = _compare("triton", kernel_device("triton"), autocast_dtype)
    assert saved == sum(h_sizes)  # every neuron's H, and nothing kept in its place


def test_an_output_changed_in_place_is_not_computed_again(reproducible):
    saved, h_sizes = _compare("triton", kernel_device("triton"), None, changed_in_place=True)
    assert saved == sum(h_sizes) - h_sizes[1]  # the second neuron keeps its H


def test_a_view_of_the_output_finds_the_recipe_and_other_tensors_do_not():
    bn = batchnorm_recompute.RecomputableBatchNorm2d(3)
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    y = bn(x)
    seq = y.view(2, 2, 3, 2, 2)
    found, view = recompute.recipe_for(seq)
    again = recompute.recompute(found.how, view, found.inputs)
    assert torch.equal(again, seq) and again.stride() == seq.stride()
    assert recompute.recipe_for(y[1:])[1][2] == 12  # a slice: its offset in the output
    assert recompute.recipe_for(x) is None and recompute.recipe_for(y + 0) is None
    bn.eval()  # running statistics decide the output: not marked
    assert recompute.recipe_for(bn(x)) is None
    with torch.no_grad():
        assert recompute.recipe_for(bn.train()(x)) is None


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cupy", "triton"])
def test_neurons_keep_no_h_and_train_bit_for_bit_gpu(backend, reproducible):
    device = kernel_device(backend)
    for autocast_dtype in (None, torch.float16):
        saved, h_sizes = _compare(backend, device, autocast_dtype, torch.channels_last)
        assert saved == sum(h_sizes)


def test_a_static_input_repeated_over_t_is_computed_again_once(reproducible):
    # The Fashion-MNIST net normalizes the image once and feeds it to its first neuron at every step
    # (expand): that neuron's backward recomputes the one step and its H over all T.
    from flashspike.model.csnn import CSNN

    device = kernel_device("triton")
    torch.manual_seed(2)
    plain = CSNN(3, channels=4, backend="triton").to(device)
    lean = copy.deepcopy(plain)
    assert batchnorm_recompute.recompute_h_after_batchnorm(lean) == 2
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(4)).to(device)
    results = [_step(net, x, None) for net in (plain, lean)]
    assert torch.equal(results[0][0], results[1][0])
    for name in results[0][1]:
        assert torch.equal(results[0][1][name], results[1][1][name]), name
    assert results[0][3] - results[1][3] == 3 * 5 * 4 * (28 * 28 + 14 * 14) * 4  # both H, float32


def test_carried_state_potentials_and_eif_are_recomputed_exactly(reproducible):
    # Two calls without a reset (the second starts from the first's V, which the recompute must start
    # from too), a neuron whose backward rebuilds V[t-1] (EIF), and a loss on the kept potentials.
    device = kernel_device("triton")
    torch.manual_seed(11)
    plain = nn.Sequential(
        layer.SeqToANNContainer(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)),
        neuron.MultiStepEIFNode(backend="triton"),
        layer.SeqToANNContainer(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)),
        neuron.MultiStepLIFNode(tau=3.0, backend="triton", store_v_seq=True),
    ).to(device)
    lean = copy.deepcopy(plain)
    batchnorm_recompute.recompute_h_after_batchnorm(lean)
    x = (torch.rand(2, 3, 2, 5, 5, generator=torch.Generator().manual_seed(6)) * 4).to(device)
    results = []
    for net in (plain, lean):
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
