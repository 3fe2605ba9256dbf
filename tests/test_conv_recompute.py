"""Convolution outputs made again in the backward: outputs, gradients and running statistics equal bit
for bit to the same net's without the switch; the output freed once the forward has read it, kept by
no layer (exactly its bytes fewer kept), and computed again once for the BatchNorm and the neuron
together; an input changed in place before the backward refused."""

import copy
import weakref

import pytest
import torch
from torch import nn

from flashspike import functional, layer, neuron
from flashspike.backends import recompute
from flashspike.memory import batchnorm_recompute, conv_recompute, spike_bits
from conftest import kernel_device
from kept_step import training_step


def _net(backend, *, batchnorm=True, channels_first=3):
    torch.manual_seed(3)
    norm = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
    return nn.Sequential(
        layer.SeqToANNContainer(nn.Conv2d(channels_first, 6, 3, stride=2, padding=1, bias=False), norm(6)),
        neuron.MultiStepLIFNode(tau=2.0, backend=backend, detach_reset=True),
        layer.SeqToANNContainer(nn.Conv2d(6, 4, 3, padding=1), norm(4)),
        neuron.MultiStepIFNode(backend=backend),
    )


class _ConvCalls:
    """Each convolution call (``_conv_forward``), with a weak reference to its output."""

    def __init__(self, monkeypatch):
        self.outputs = []
        plain = nn.Conv2d._conv_forward

        def counted(module, *args):
            output = plain(module, *args)
            self.outputs.append(weakref.ref(output))
            return output

        monkeypatch.setattr(nn.Conv2d, "_conv_forward", counted)


def _step(net, x, autocast_dtype=None, calls=None):
    """One training step (:func:`kept_step.training_step`), then which convolution outputs were alive
    when the forward returned, and the convolution calls in all."""
    alive = []
    if calls is not None:
        calls.outputs.clear()
    after_forward = None if calls is None else (lambda: alive.extend(ref() is not None for ref in calls.outputs))
    step = training_step(net, x, autocast_dtype, after_forward)
    return (*step, alive if calls is not None else None, None if calls is None else len(calls.outputs))


def _assert_same_training(a, b):
    assert torch.equal(a[0], b[0])
    assert a[1].keys() == b[1].keys() and a[2].keys() == b[2].keys()
    for name in a[1]:
        assert torch.equal(a[1][name], b[1][name]), name
    for name in a[2]:
        assert torch.equal(a[2][name], b[2][name]), name
    assert any(g.abs().sum() > 0 for g in a[1].values())


def _input(device, channels=3):
    return (torch.rand(3, 2, channels, 8, 8, generator=torch.Generator().manual_seed(5)) * 3).to(device)


def _first_output_bytes(net, x, autocast_dtype=None):
    with torch.no_grad(), torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32,
                                         enabled=autocast_dtype is not None):
        y = net[0][0](x.flatten(0, 1))
    return y.numel() * y.element_size()


def _compare(monkeypatch, backend, device, autocast_dtype=None, *, batchnorm=True, switch_batchnorm=True,
             memory_format=torch.contiguous_format):
    plain = _net(backend, batchnorm=batchnorm).to(device, memory_format=memory_format)
    if switch_batchnorm:
        batchnorm_recompute.recompute_h_after_batchnorm(plain)
    lean = copy.deepcopy(plain)
    assert conv_recompute.recompute_convolution_outputs(lean, first_only=True) == 1
    x = _input(device)
    x = x.contiguous(memory_format=torch.channels_last_3d) if memory_format == torch.channels_last else x
    calls = _ConvCalls(monkeypatch)
    plain_step, lean_step = _step(plain, x, autocast_dtype, calls), _step(lean, x, autocast_dtype, calls)
    _assert_same_training(plain_step, lean_step)
    return plain_step, lean_step, _first_output_bytes(plain, x, autocast_dtype)


@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16], ids=["float32", "autocast-bf16"])
def test_the_output_is_freed_after_the_forward_and_made_again_once(monkeypatch, autocast_dtype, reproducible):
    # The Triton normalization (the interpreter on the CPU) and Triton neurons: the BatchNorm keeps the
    # convolution's output for its backward, the neuron reads it again for its H.
    plain, lean, output_bytes = _compare(monkeypatch, "triton", kernel_device("triton"), autocast_dtype)
    assert plain[4] == [True, True] and lean[4] == [False, True]  # the first output is kept by no one
    assert plain[5] == 2 and lean[5] == 3  # once more, for the BatchNorm's and the neuron's backward together
    assert plain[3] - lean[3] == output_bytes


def test_without_triton_the_plain_batchnorm_and_its_neuron_share_the_output_made_again(monkeypatch, reproducible):
    monkeypatch.setattr(batchnorm_recompute, "_normalize_kernels", lambda x: None)
    plain, lean, output_bytes = _compare(monkeypatch, "triton", kernel_device("triton"))
    assert lean[4] == [False, True] and (plain[5], lean[5]) == (2, 3)
    assert plain[3] - lean[3] == output_bytes


def test_a_neuron_reading_the_output_directly_computes_it_again_for_its_h(monkeypatch, reproducible):
    # (a neuron keeps H, not its input: the outputs are freed either way)
    plain, lean, output_bytes = _compare(monkeypatch, "triton", kernel_device("triton"), batchnorm=False)
    assert plain[4] == lean[4] == [False, False] and (plain[5], lean[5]) == (2, 3)
    assert plain[3] - lean[3] == output_bytes  # the first neuron's H, which it no longer keeps


def test_layers_that_keep_the_output_themselves_keep_it(monkeypatch, reproducible):
    # PyTorch's own BatchNorm and the 'torch' reference neuron keep what they keep: the switch changes nothing.
    plain, lean, _ = _compare(monkeypatch, "torch", "cpu", switch_batchnorm=False)
    assert plain[3] == lean[3] and lean[4] == [True, True] and lean[5] == 2


def test_an_input_changed_in_place_before_the_backward_is_refused(reproducible):
    # Under autocast the convolution keeps its own 16-bit copy of the input: the plain net's backward
    # does not see the change, but an output made again from the input would.
    device = kernel_device("triton")
    for switched in (False, True):
        net = _net("triton").to(device)
        batchnorm_recompute.recompute_h_after_batchnorm(net)
        conv_recompute.recompute_convolution_outputs(net, enabled=switched, first_only=True)
        x = _input(device)
        with torch.autocast(device, dtype=torch.bfloat16):
            out = net(x)
        x.mul_(2)
        if switched:
            with pytest.raises(RuntimeError, match="modified by an inplace operation after the forward"):
                out.float().sum().backward()
        else:
            out.float().sum().backward()


def test_other_kept_tensors_go_to_the_hooks_outside_and_are_checked(reproducible):
    # The BatchNorm's weight is kept beside the output made again: the outer hooks see it; without
    # them, an in-place change of it is refused as autograd refuses it.
    device = kernel_device("triton")
    net = _net("triton").to(device)
    batchnorm_recompute.recompute_h_after_batchnorm(net)
    conv_recompute.recompute_convolution_outputs(net, first_only=True)
    seen = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t) or t, lambda t: t):
        net(_input(device)).sum().backward()
    assert any(t is net[0][1].weight for t in seen)
    functional.reset_net(net)
    out = net(_input(device))
    with torch.no_grad():
        net[0][1].weight.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_an_image_input_is_marked_and_a_call_without_gradients_is_not():
    conv = nn.Conv2d(2, 2, 1)
    conv_recompute.recompute_convolution_outputs(conv)
    x = torch.randn(2, 2, 3, 3)
    assert recompute.recipe_for(conv(x)) is not None  # the weight needs a gradient: the graph keeps x as it is
    with torch.no_grad():
        assert recompute.recipe_for(conv(x)) is None


def test_a_bit_saving_convolution_on_spikes_is_not_marked():
    device = kernel_device("triton")
    torch.manual_seed(0)
    source = neuron.MultiStepIFNode(backend="triton")
    conv = layer.SeqToANNContainer(nn.Conv2d(2, 3, 1)).to(device)
    spike_bits.store_spike_inputs_in_bits(conv)
    conv_recompute.recompute_convolution_outputs(conv)
    spikes = source(torch.rand(2, 2, 2, 3, 3, device=device, requires_grad=True) * 2)
    assert spike_bits.is_spike_input(spikes)
    y = conv(spikes)
    assert recompute.recipe_for(y) is None


def test_the_switch_adds_a_hook_only_and_switches_back():
    net = _net("torch")
    state, text = net.state_dict(), repr(net)
    assert conv_recompute.recompute_convolution_outputs(net) == 2
    assert conv_recompute.recompute_convolution_outputs(net) == 0
    assert [conv_recompute.is_recomputing(m) for m in net.modules() if isinstance(m, nn.Conv2d)] == [True, True]
    assert repr(net) == text and net.state_dict().keys() == state.keys()
    assert conv_recompute.is_recomputing(copy.deepcopy(net)[0][0])
    assert conv_recompute.recompute_convolution_outputs(net, enabled=False) == 2
    assert not any(conv_recompute.is_recomputing(m) for m in net.modules())
    assert conv_recompute.recompute_convolution_outputs(net, first_only=True) == 1
    assert [conv_recompute.is_recomputing(m) for m in net.modules() if isinstance(m, nn.Conv2d)] == [True, False]
    x = torch.randn(1, 3, 4, 4, requires_grad=True)
    y = net[0][0](x)
    found, view = recompute.recipe_for(y)
    assert torch.equal(recompute.recompute(found.how, view, found.inputs), y)
    assert found.inputs[0] is x and found.inputs[1] is net[0][0].weight


def test_a_zoo_stem_made_again_under_a_neuron_that_fires_from_its_batchnorms_input(monkeypatch, reproducible):
    # The Fashion-MNIST net: its stem's BatchNorm output is left unwritten (the neuron fires from the
    # convolution's output, one step repeated over T) and the convolution's output is kept by no layer.
    from flashspike.model.csnn import CSNN

    device = kernel_device("triton")
    torch.manual_seed(2)
    plain = CSNN(2, channels=4, backend="triton").to(device)
    batchnorm_recompute.recompute_h_after_batchnorm(plain)
    lean = copy.deepcopy(plain)
    assert conv_recompute.recompute_convolution_outputs(lean, first_only=True) == 1
    assert conv_recompute.is_recomputing(lean.static_conv[0])
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(3)).to(device)
    calls = _ConvCalls(monkeypatch)
    plain_step, lean_step = _step(plain, x, None, calls), _step(lean, x, None, calls)
    _assert_same_training(plain_step, lean_step)
    assert plain_step[4] == [True, True] and lean_step[4] == [False, True] and lean_step[5] == 3
    assert plain_step[3] - lean_step[3] == 3 * 4 * 28 * 28 * 4


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cupy", "triton"])
def test_the_output_is_freed_after_the_forward_and_made_again_once_gpu(monkeypatch, backend, reproducible):
    device = kernel_device(backend)
    for autocast_dtype in (None, torch.float16):
        for memory_format in (torch.contiguous_format, torch.channels_last):
            plain, lean, output_bytes = _compare(monkeypatch, backend, device, autocast_dtype,
                                                 memory_format=memory_format)
            assert lean[4] == [False, True] and (plain[5], lean[5]) == (2, 3)
            assert plain[3] - lean[3] == output_bytes


@pytest.mark.gpu
def test_a_sew_resnet_stem_made_again_trains_as_the_plain_model_gpu(reproducible):
    # With cuDNN's autotuning on (the benchmark's setting): the algorithm it times first is used again.
    from flashspike.model import sew_resnet
    from flashspike.memory import pooling

    torch.manual_seed(0)
    plain = sew_resnet.multi_step_sew_resnet18(num_classes=10, cnf="ADD", multi_step_neuron=neuron.MultiStepIFNode,
                                               detach_reset=True, backend="cupy")
    plain = plain.cuda().to(memory_format=torch.channels_last)
    for switch in (spike_bits.store_spike_inputs_in_bits, pooling.store_pool_indices_in_bytes,
                   batchnorm_recompute.recompute_h_after_batchnorm):
        switch(plain)
    lean = copy.deepcopy(plain)
    assert conv_recompute.recompute_convolution_outputs(lean, first_only=True) == 1
    x = torch.rand(2, 4, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last_3d)
    torch.backends.cudnn.benchmark = True
    for _ in range(2):
        steps = [_step(net, x, torch.float16) for net in (plain, lean)]
        # cuDNN may run the convolution made again with another plan than the forward's (its plan cache
        # keys on the operands' alignment too): outputs equal, gradients within float16 rounding
        assert torch.equal(steps[0][0], steps[1][0])
        for name, grad in steps[1][1].items():
            want = steps[0][1][name].float()
            torch.testing.assert_close(grad.float(), want, rtol=1e-2, atol=1e-2 * max(want.abs().max().item(), 1.0),
                                       msg=lambda m: f"{name}: {m}")
        for net in (plain, lean):
            net.zero_grad(set_to_none=True)
    assert steps[0][3] - steps[1][3] >= 2 * 4 * 64 * 32 * 32 * 2  # the stem's output, float16
