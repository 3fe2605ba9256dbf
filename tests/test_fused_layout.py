"""The memory rules of the fused path (backends/layouts.py): which layouts reach the kernels as they are."""

import pytest
import torch

from flashspike.backends import layouts, step_code
from flashspike.params import NeuronParams
from flashspike.surrogate import ATan
from conftest import kernel_device


def _cl(t):
    return t.movedim(-3, -1).contiguous().movedim(-1, -3)


def _passes_uncopied(x):
    return layouts.sequence_layout(x) is x


def test_sequences_whose_steps_are_dense_blocks_pass_uncopied():
    x = torch.randn(3, 2, 4, 5, 6)
    assert _passes_uncopied(x)
    assert _passes_uncopied(_cl(x))
    assert _passes_uncopied(x[1:])  # an offset into the storage is fine
    assert _passes_uncopied(_cl(x)[:1])  # T = 1: the first stride does not matter
    assert _passes_uncopied(torch.randn(4, 1, 3).transpose(1, 2))  # size-1 dims may have any stride
    assert _passes_uncopied(torch.randn(1, 3, 4).expand(5, 3, 4))  # one step repeated: read in place
    assert _passes_uncopied(_cl(torch.randn(2, 4, 5, 6)).expand(3, 2, 4, 5, 6))


@pytest.mark.parametrize("make", [
    lambda: torch.randn(2, 3, 4).transpose(0, 1),  # T not outermost
    lambda: torch.randn(1, 3, 1).expand(5, 3, 4),  # a step that is itself a broadcast
    lambda: torch.randn(3, 4, 6)[:, :, :5],  # steps with gaps
    lambda: torch.randn(3, 4, 6)[:, :, ::2],
    lambda: _cl(torch.randn(3, 2, 4, 5, 6)).transpose(0, 1),
], ids=["transposed", "broadcast-step", "sliced", "strided", "channels-last-transposed"])
def test_other_layouts_are_copied_contiguous(make):
    x = make()
    laid = layouts.sequence_layout(x)
    assert laid is not x and laid.is_contiguous() and torch.equal(laid, x)


def test_outputs_follow_the_input_layout():
    x = _cl(torch.randn(3, 2, 4, 5, 6))
    spike, v_out, h = layouts.forward_outputs(x, True, False)
    assert spike.stride() == x.stride() == h.stride() and v_out.stride() == x.stride()[1:]
    spike, v_seq, h = layouts.forward_outputs(x, False, True)
    assert v_seq.stride() == x.stride() and h is None
    grad_x, grad_v = layouts.backward_outputs(x, True)
    assert grad_x.stride() == x.stride() and grad_v.stride() == x.stride()[1:]


def test_a_step_repeated_over_time_gets_separate_output_blocks():
    x = _cl(torch.randn(2, 4, 5, 6)).expand(3, 2, 4, 5, 6)
    spike, v_seq, h = layouts.forward_outputs(x, True, True)
    for out in (spike, v_seq, h):
        assert out.stride() == (2 * 4 * 5 * 6, *x.stride()[1:])
    assert layouts.backward_outputs(h, False)[0].stride() == h.stride()


def test_initial_state_is_laid_out_like_a_step():
    p = NeuronParams(leaky=False, v_threshold=1.0, v_reset=0.0, detach_reset=False, surrogate=ATan())
    x = _cl(torch.randn(3, 2, 4, 5, 6))
    v = _cl(torch.randn(2, 4, 5, 6))
    assert layouts.initial_state(v, x, p) is v
    contiguous = v.contiguous()
    moved = layouts.initial_state(contiguous, x, p)
    assert moved.stride() == x.stride()[1:] and torch.equal(moved, contiguous)
    assert layouts.initial_state(0.0, x, p) is None  # at rest: the kernel fills it in
    filled = layouts.initial_state(0.25, x, p)
    assert filled.stride() == x.stride()[1:] and bool((filled == 0.25).all())


def test_gradient_operands():
    h = _cl(torch.randn(3, 2, 4, 5, 6))
    ones = torch.ones(()).expand(h.shape)  # what y.sum().backward() hands over
    mode, passed = layouts.grad_operand(ones, h, True)
    assert mode == step_code.GRAD_SCALAR and passed.data_ptr() == ones.data_ptr()  # one element, not copied
    same = torch.randn_like(h)
    assert same.stride() == h.stride() and layouts.grad_operand(same, h, True) == (step_code.GRAD_DENSE, same)
    contiguous = torch.randn(h.shape)
    mode, passed = layouts.grad_operand(contiguous, h, True)
    assert mode == step_code.GRAD_DENSE and passed.stride() == h.stride() and torch.equal(passed, contiguous)
    step = torch.randn(h.shape[1:])
    mode, passed = layouts.grad_operand(step, h, False)
    assert mode == step_code.GRAD_DENSE and passed.stride() == h.stride()[1:] and torch.equal(passed, step)
    assert layouts.grad_operand(None, h, True) == (step_code.GRAD_ABSENT, None)
    mode, passed = layouts.grad_operand(same.double(), h, True)
    assert passed.dtype == h.dtype
    time_broadcast = torch.randn(h.shape[1:]).expand(h.shape)  # .mean(0)'s gradient: not a scalar
    mode, passed = layouts.grad_operand(time_broadcast, h, True)
    assert mode == step_code.GRAD_DENSE and torch.equal(passed, time_broadcast)


def test_size_one_dimensions_of_any_stride_pass_uncopied():
    # A [T, N, C, 1, 1] activation (a ResNet's last stage on small images): PyTorch hands over its
    # gradient, and the next call's state, with other strides in the size-1 dimensions, which address
    # nothing; they reach the kernels as they are.
    p = NeuronParams(leaky=False, v_threshold=1.0, v_reset=0.0, detach_reset=False, surrogate=ATan())
    h = torch.randn(4, 2, 8, 1, 1).as_strided((4, 2, 8, 1, 1), (16, 8, 1, 8, 8))  # as channels_last makes it
    grad = torch.randn(4, 2, 8, 1, 1)
    assert grad.stride() != h.stride()
    assert layouts.grad_operand(grad, h, True) == (step_code.GRAD_DENSE, grad)
    v = torch.randn(2, 8, 1, 1)
    assert v.stride() != h.stride()[1:] and layouts.initial_state(v, h, p) is v
    # a stride that differs where the size is not 1 still means a copy
    other = torch.randn(4, 8, 2, 1, 1).transpose(1, 2)
    mode, passed = layouts.grad_operand(other, h, True)
    assert passed is not other and passed.stride() == h.stride() and torch.equal(passed, other)


def test_a_resnet_training_step_copies_no_activation(monkeypatch, whole_model_statistics):
    # channels_last end to end: in a SEW-ResNet-18 step (autocast, kernel-backend neurons, every
    # memory switch on) the only activation-sized copy is autocast's cast of the input image.
    from torch.utils._python_dispatch import TorchDispatchMode

    from flashspike import functional, neuron, surrogate
    from flashspike.memory import batchnorm_recompute, spike_bits
    from flashspike.backends.kernel_set import KernelSet
    from flashspike.model import sew_resnet

    device = kernel_device("triton")
    net = sew_resnet.multi_step_sew_resnet18(num_classes=10, cnf="ADD", multi_step_neuron=neuron.MultiStepIFNode,
                                             surrogate_function=surrogate.ATan(), detach_reset=True, backend="triton")
    spike_bits.store_spike_inputs_in_bits(net)
    batchnorm_recompute.recompute_h_after_batchnorm(net)
    net = net.to(device, memory_format=torch.channels_last)
    x = torch.rand(4, 2, 32, 32, 3, device=device).permute(0, 1, 4, 2, 3)  # channels_last steps
    copies = []

    class Copies(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in (torch.ops.aten.copy_.default, torch.ops.aten._to_copy.default, torch.ops.aten.clone.default):
                if out.dim() >= 4 and out.shape[0] in (4, 8):  # [T, B, ...] or [T·B, ...]: an activation
                    copies.append(tuple(out.shape))
            return out

    # the kernels' own work is not what is counted (Triton's interpreter copies to run them)
    monkeypatch.setattr(KernelSet, "launch_forward", lambda self, *args: None)
    monkeypatch.setattr(KernelSet, "launch_backward", lambda self, *args: None)
    for subclass in KernelSet.__subclasses__():
        monkeypatch.setattr(subclass, "launch_forward", lambda self, *args: None)
        monkeypatch.setattr(subclass, "launch_backward", lambda self, *args: None)
    with Copies(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
        out = net(x)
    with Copies():
        out.float().mean(0).sum().backward()
    functional.reset_net(net)
    assert copies == [(8, 3, 32, 32)]


@pytest.mark.parametrize("launcher", ["torch_kernels", "triton"])
def test_every_launcher_can_sum_the_input_gradient_over_time(launcher):
    """sum_grad_x (one input repeated over T) equals the per-step gradients summed afterwards."""
    p = NeuronParams(leaky=True, v_threshold=0.9, v_reset=None, detach_reset=False, surrogate=ATan())
    if launcher == "triton":
        from flashspike.backends import triton_backend

        device = kernel_device("triton")
        kernel_sets = [(launcher, triton_backend.kernel_set(p))]
    else:
        from flashspike.backends import torch_kernels

        device = "cpu"
        kernel_sets = [(launcher, torch_kernels.KERNELS)]
    g = torch.Generator().manual_seed(5)
    step = _cl(torch.randn(2, 3, 4, 5, generator=g) + 0.5).to(device)
    x = step.expand(6, *step.shape)
    grad_spike = torch.randn(x.shape, generator=g).to(device)
    for name, kernels in kernel_sets:
        _, _, h = kernels.forward(x, None, p, True, False)
        per_step, _, _ = kernels.backward(h, grad_spike, None, p, False, False)
        summed, _, _ = kernels.backward(h, grad_spike, None, p, False, False, True)
        assert summed.shape == step.shape and summed.stride() == step.stride(), name
        torch.testing.assert_close(summed, per_step.sum(0), rtol=1e-5, atol=1e-5, msg=name)
