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
