"""functional.seq_to_ann_forward and functional.multi_step_forward: against per-step loops written
out here, against SpikingJelly where installed, and on bad input."""

import pytest
import torch
from torch import nn

from flashspike import functional, neuron, surrogate


def _conv_bn():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3, padding=1).double(), nn.BatchNorm2d(4).double().eval()
    bn.running_mean.uniform_(-1, 1)
    return conv, bn


@pytest.mark.parametrize("form", ["module", "list", "tuple", "sequential"])
def test_seq_to_ann_forward_equals_a_loop_over_steps(form):
    conv, bn = _conv_bn()
    modules = [conv] if form == "module" else [conv, bn]
    wrap = {"module": lambda ms: ms[0], "list": list, "tuple": tuple, "sequential": lambda ms: nn.Sequential(*ms)}[form]
    x_seq = torch.randn(3, 2, 3, 5, 5, dtype=torch.float64)
    expected = torch.stack([nn.Sequential(*modules)(x) for x in x_seq])
    y_seq = functional.seq_to_ann_forward(x_seq, wrap(modules))
    assert y_seq.shape == (3, 2, 4, 5, 5)
    torch.testing.assert_close(y_seq, expected, rtol=1e-12, atol=1e-12)


def test_seq_to_ann_forward_keeps_trailing_shape_changes():
    x_seq = torch.randn(2, 3, 4, 6, 6, dtype=torch.float64)
    y_seq = functional.seq_to_ann_forward(x_seq, [nn.AdaptiveAvgPool2d(1), nn.Flatten()])
    assert y_seq.shape == (2, 3, 4)
    torch.testing.assert_close(y_seq, x_seq.mean((-2, -1)))


def test_seq_to_ann_forward_matches_spikingjelly():
    pytest.importorskip("spikingjelly")
    from spikingjelly.clock_driven import functional as sj_functional

    conv, bn = _conv_bn()
    x_seq = torch.randn(4, 2, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(functional.seq_to_ann_forward(x_seq, [conv, bn]),
                               sj_functional.seq_to_ann_forward(x_seq, [conv, bn]), rtol=0, atol=0)


@pytest.mark.parametrize("fn", [functional.seq_to_ann_forward, functional.multi_step_forward])
def test_bad_sequences_are_refused_with_the_expected_shape(fn):
    with pytest.raises(TypeError, match=r"\[T, N, \*\]"):
        fn([[1.0, 2.0]], nn.Identity())
    with pytest.raises(ValueError, match=r"\[T, N, \*\].*\(5,\)"):
        fn(torch.zeros(5), nn.Identity())
    with pytest.raises(TypeError, match="module"):
        fn(torch.zeros(2, 3), [nn.Identity(), "relu"])


def test_seq_to_ann_forward_refuses_modules_that_lose_the_batch():
    with pytest.raises(ValueError, match=r"T\*N = 6"):
        functional.seq_to_ann_forward(torch.zeros(2, 3, 4), nn.Flatten(0))


def test_multi_step_forward_equals_the_multi_step_neuron():
    x_seq = torch.randn(5, 3, 4, dtype=torch.float64) * 2
    options = dict(surrogate_function=surrogate.ATan(), detach_reset=True)
    single, multi = neuron.LIFNode(tau=1.5, **options), neuron.MultiStepLIFNode(tau=1.5, backend="torch", **options)
    x1, x2 = x_seq.clone().requires_grad_(), x_seq.clone().requires_grad_()
    y1, y2 = functional.multi_step_forward(x1, single), multi(x2)
    assert y1.shape == x_seq.shape and 0 < y1.sum() < y1.numel()
    torch.testing.assert_close(y1, y2)
    y1.sum().backward()
    y2.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)


def test_multi_step_forward_runs_the_whole_chain_at_each_step():
    # Stateful single-step nodes in a chain equal the multi-step nodes one after the other, states
    # included; the call log shows the order: the whole chain at step 0, then at step 1, ...
    x_seq = torch.randn(6, 2, 3, dtype=torch.float64) * 3
    linear = nn.Linear(3, 3).double()
    chain = [neuron.IFNode(), linear, neuron.IFNode(v_threshold=0.5)]
    y_seq = functional.multi_step_forward(x_seq, chain)
    a, b = neuron.MultiStepIFNode(backend="torch"), neuron.MultiStepIFNode(v_threshold=0.5, backend="torch")
    expected = b(functional.seq_to_ann_forward(a(x_seq), linear))
    torch.testing.assert_close(y_seq, expected)
    torch.testing.assert_close(chain[2].v, b.v)
    calls = []
    functional.multi_step_forward(torch.zeros(3, 1), (lambda x: calls.append("f") or x, lambda x: calls.append("g") or x))
    assert calls == ["f", "g"] * 3


def test_multi_step_forward_needs_a_step():
    with pytest.raises(ValueError, match="at least one time step"):
        functional.multi_step_forward(torch.zeros(0, 2), nn.Identity())
