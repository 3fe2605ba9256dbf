"""SEW-ResNet's ADD joined in the neuron's call: a kernel-backend neuron handed a tensor (``neuron.ADDEND``,
through ``StepModule.fire(..., add=...)``) writes that tensor added to its spikes in place of the spikes,
one rounding as torch's add, so the sum is no pass over memory of its own. Outputs and gradients equal
the unfused block's bit for bit; what the sum can hold stays known to the layers that keep their input in
bits; where a hook or the compiler could see the call, it is not fused."""

import copy

import pytest
import torch

from flashspike import functional, neuron, surrogate
from flashspike.backends import autograd, choice, rebuilt_v_seq
from flashspike.memory import spike_bits
from flashspike.model import common, sew_resnet
from flashspike.params import NeuronParams
from conftest import kernel_device


@pytest.mark.parametrize("backend", ["cupy", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("save_h", [False, True])
def test_the_kernels_write_the_addend_plus_the_spikes(backend, dtype, save_h):
    device = kernel_device(backend)
    node = neuron.MultiStepLIFNode(tau=2.0, backend=backend)
    p = NeuronParams.of(node)
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(4, 5, 16, generator=g) * 3).to(dtype).to(device)
    addend = torch.randint(0, 3, (4, 5, 16), generator=g).to(dtype).to(device)
    kernels = choice.plan_for(backend, x, p).kernels
    for store_v_seq in (False, True):
        spike, v_out, h = kernels.forward(x, None, p, save_h, store_v_seq)
        added, v_added, h_added = kernels.forward(x, None, p, save_h, store_v_seq, addend=addend)
        assert torch.equal(added, addend + spike) and 0 < spike.sum() < spike.numel()
        assert torch.equal(v_added, v_out) and (h is None) == (h_added is None)
        assert h is None or torch.equal(h_added, h)


def _sew(backend="triton", cnf="ADD"):
    torch.manual_seed(0)
    return sew_resnet.multi_step_sew_resnet18(num_classes=5, cnf=cnf, multi_step_neuron=neuron.MultiStepIFNode,
                                              surrogate_function=surrogate.ATan(), detach_reset=True, backend=backend)


def _step(net, x):
    out = net(x)
    out.mean(0).logsumexp(1).sum().backward()
    functional.reset_net(net)
    return out, [p.grad for p in net.parameters()]


def _count_added_calls(monkeypatch):
    calls = []
    plain = autograd.fused_multi_step

    def counting(*args, **kwargs):
        calls.append(len(args) > 7 and args[7] is not None or kwargs.get("addend") is not None)
        return plain(*args, **kwargs)

    monkeypatch.setattr(choice, "fused_multi_step", counting)
    return calls


def test_sew_resnet18_joins_its_add_in_the_neuron_and_trains_bit_for_bit(monkeypatch, reproducible):
    device = kernel_device("triton")
    fused = _sew().to(device)
    apart = copy.deepcopy(fused)
    x = torch.rand(2, 2, 3, 32, 32, device=device) * 2
    with monkeypatch.context() as patch:
        patch.setattr(common, "takes_fused_call", lambda node: False)
        want = _step(apart, x)
    calls = _count_added_calls(monkeypatch)
    got = _step(fused, x)
    assert sum(calls) == 8  # the 8 blocks of SEW-ResNet-18, each joined in its last neuron
    assert torch.equal(got[0], want[0])
    assert all(torch.equal(a, b) for a, b in zip(got[1], want[1]))
    assert all(neuron.ADDEND not in vars(m) for m in fused.modules())  # nothing left behind


def test_a_hooked_neuron_returns_its_spikes_and_the_block_adds(monkeypatch):
    device = kernel_device("triton")
    net = _sew().to(device)
    reference = copy.deepcopy(net)
    seen = []
    net.layer1[0].sn2.register_forward_hook(lambda module, args, output: seen.append(output))
    calls = _count_added_calls(monkeypatch)
    x = torch.rand(2, 2, 3, 32, 32, device=device) * 2
    with torch.no_grad():
        got = net(x)
        want = reference(x)
    assert torch.equal(got, want)
    assert sum(calls) == 2 * 8 - 1  # every block of both nets but the hooked one
    assert seen and set(seen[0].unique().tolist()) <= {0.0, 1.0}  # the hook saw spikes, not a sum


def test_the_sum_is_known_to_hold_small_integers_and_no_spikes():
    # the layers that keep their input in bits keep the sum in 2 bits (a spike plus a spike), and the
    # neuron's output no longer counts as spikes
    device = kernel_device("triton")
    node = neuron.MultiStepIFNode(backend="triton")
    x = (torch.rand(3, 2, 8, device=device) * 2).requires_grad_()
    before = (torch.rand(3, 2, 8, device=device) * 2).requires_grad_()
    shortcut = neuron.MultiStepIFNode(backend="triton")(before)
    node.__dict__[neuron.ADDEND] = shortcut
    out = node(x)
    del node.__dict__[neuron.ADDEND]
    assert spike_bits.integer_bound(out) == 2 and not spike_bits.is_spike_input(out)
    assert not autograd.is_spike_output(out.grad_fn, 0)
    with pytest.raises(AttributeError, match="residual shortcut"):
        node.v_seq
    (out * torch.arange(out.numel(), device=device).view(out.shape)).sum().backward()
    assert x.grad.abs().sum() > 0 and before.grad.abs().sum() > 0  # both through the neuron's backward


@pytest.mark.parametrize("backend", ["cupy", "triton"])
@pytest.mark.parametrize("from_batchnorm", [False, True], ids=["H kept", "H computed again"])
def test_a_broadcast_gradient_reaches_the_addend_laid_out_once(backend, from_batchnorm):
    # The gradient of a mean over the pixels arrives expanded; the addend gets it laid out as the kernels
    # read it (dense), not the broadcast, which every later kernel would copy again.
    from flashspike.memory import batchnorm_recompute

    device = kernel_device(backend)
    node = neuron.MultiStepIFNode(backend=backend)
    x = (torch.rand(3, 2, 4, 5, 6, device=device) * 2).requires_grad_()
    bn = torch.nn.BatchNorm2d(4).to(device)
    if from_batchnorm:
        batchnorm_recompute.recompute_h_after_batchnorm(bn)
    base = torch.randint(0, 2, (3, 2, 4, 5, 6), device=device).float().requires_grad_()
    addend = base * 1
    seen = []
    addend.register_hook(seen.append)
    node.__dict__[neuron.ADDEND] = addend
    out = node(bn(x.flatten(0, 1)).view(x.shape))
    del node.__dict__[neuron.ADDEND]
    spikes = out.detach() - addend.detach()
    assert ((spikes == 0) | (spikes == 1)).all() and 0 < spikes.sum() < spikes.numel()
    grad = torch.randn(3, 2, 4, 1, 1, device=device).expand_as(out)
    out.backward(grad)
    (got,) = seen
    assert got.stride() == out.stride() and 0 not in got.stride()
    assert torch.equal(got, grad) and torch.equal(base.grad, grad)
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("case", ["torch backend", "addend of another layout"])
def test_where_the_kernel_cannot_add_the_sum_is_made_after(case):
    device = kernel_device("triton")
    backend = "torch" if case == "torch backend" else "triton"
    node = neuron.MultiStepLIFNode(tau=2.0, backend=backend)
    x = torch.rand(3, 2, 4, 5, device=device) * 3
    addend = torch.rand(3, 2, 5, 4, device=device).transpose(2, 3)  # (strides unlike the spikes')
    want = addend + node(x)
    functional.reset_net(node)
    node.__dict__[neuron.ADDEND] = addend
    got = node(x)
    assert torch.equal(got, want)


def test_hooks_see_the_neurons_fire_in_spikingjellys_order():
    # A downsampling block fires its shortcut before its branch's last neuron only where no hook could
    # see it: a monitor's hooks see the branch, then the shortcut, as SpikingJelly calls them.
    device = kernel_device("triton")
    net = _sew().to(device)
    order = []
    for name, module in net.named_modules():
        if isinstance(module, neuron.BaseNode):
            module.register_forward_hook(lambda module, args, output, name=name: order.append(name))
    with torch.no_grad():
        net(torch.rand(2, 1, 3, 32, 32, device=device))
    assert order[order.index("layer2.0.sn1"):order.index("layer2.1.sn1")] == [
        "layer2.0.sn1", "layer2.0.sn2", "layer2.0.downsample_sn"]
