"""The custom operators read the eager path's layouts in place and hand back the same strides.

- ``torch.library.opcheck`` of both operators (fake implementation against the real one, strides
  included, and the autograd registration) on contiguous, channels_last and expanded-step inputs,
  with backend 'torch' and every kernel backend that runs here: 'triton' through its interpreter on a
  machine without CUDA, 'cupy' and 'triton' on a GPU;
- the strides the real kernels produce are those :func:`layouts.sequence_strides` states;
- a compiled node gives the eager node's outputs and gradients, with identical strides, for the
  same three layouts (the expanded step's gradient summed over T in the kernel).
"""

import os

import pytest
import torch

from flashspike import backends, neuron, surrogate
from flashspike.backends import layouts, operators
from flashspike.params import NeuronParams

T = 3
STEP = (2, 3, 2, 2)  # [B, C, H, W]


def _cl(t):
    return t.movedim(-3, -1).contiguous().movedim(-1, -3)


def _backends():
    """'torch', and the kernel backends that run here ('triton' through its interpreter on a CPU;
    'cupy' and 'triton' on a GPU)."""
    names = ["torch"]
    for name in ("cupy", "triton"):
        try:
            backends.resolve(name, torch.zeros(1, 1, device=_device()))
            names.append(name)
        except (ImportError, backends.BackendError):
            pass
    return names


def _device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(layout, g, dtype=torch.float32):
    """(operator input, repeat) for a layout: the sequence itself, or (expanded) its one step and T."""
    step = torch.randn(STEP, generator=g, dtype=dtype) + 0.6
    if layout == "contiguous":
        return torch.randn(T, *STEP, generator=g, dtype=dtype) + 0.6, 0
    if layout == "channels_last":
        return _cl(torch.randn(T, *STEP, generator=g, dtype=dtype) + 0.6), 0
    return _cl(step), T  # expanded: the operator gets the step


LAYOUTS = ["contiguous", "channels_last", "expanded"]
P = NeuronParams(leaky=True, v_threshold=0.9, v_reset=None, detach_reset=False, surrogate=surrogate.ATan())


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck_over_layouts(backend, layout):
    g = torch.Generator().manual_seed(3)
    x, repeat = _inputs(layout, g)
    x = x.to(_device())
    sequence = x.expand(repeat, *x.shape) if repeat else x
    v0 = torch.empty_strided(sequence.shape[1:], sequence.stride()[1:], device=x.device).copy_(
        torch.randn(STEP, generator=g))
    options = P.text
    forward = torch.ops.flashspike.multi_step_forward.default
    backward = torch.ops.flashspike.multi_step_backward.default
    store_v_seq = layout != "contiguous"
    torch.library.opcheck(forward, (x.clone().requires_grad_(), v0.clone().requires_grad_(), None, True,
                                    store_v_seq, backend, options, repeat))
    torch.library.opcheck(forward, (x, None, None, False, False, backend, options, repeat))
    spike, v_out, h = forward(x, v0, None, True, store_v_seq, backend, options, repeat)
    strides = layouts.sequence_strides(sequence)
    assert spike.stride() == h.stride() == strides
    assert v_out.stride() == (strides if store_v_seq else strides[1:])
    if layout == "channels_last":
        assert strides == x.stride()  # read and written in place, never made contiguous
    grad_spike = torch.ones((), device=x.device).expand(spike.shape)  # what y.sum().backward() sends
    torch.library.opcheck(backward, (h, grad_spike, torch.randn_like(v_out), v0, None, store_v_seq, True,
                                     backend, options, repeat > 0))
    grad_x, grad_v_init, _ = backward(h, grad_spike, None, v0, None, store_v_seq, True, backend, options, repeat > 0)
    assert grad_x.stride() == (strides[1:] if repeat else strides) and grad_v_init.stride() == strides[1:]


def test_an_expanded_step_gets_its_gradient_summed_in_the_kernel():
    g = torch.Generator().manual_seed(4)
    step = _cl(torch.randn(STEP, generator=g, dtype=torch.float64) + 0.6)
    options = P.text
    forward = torch.ops.flashspike.multi_step_forward.default
    backward = torch.ops.flashspike.multi_step_backward.default
    _, _, h = forward(step, None, None, True, False, "torch", options, T)
    grad_spike = torch.randn(h.shape, generator=g, dtype=torch.float64)
    per_step, _, _ = backward(h, grad_spike, None, None, None, False, False, "torch", options)
    summed, _, _ = backward(h, grad_spike, None, None, None, False, False, "torch", options, True)
    assert summed.shape == step.shape and summed.stride() == step.stride()
    torch.testing.assert_close(summed, per_step.sum(0), rtol=1e-12, atol=1e-12)


def test_bad_repeat_and_step_shapes_are_refused():
    options = P.text
    with pytest.raises(ValueError, match=r"with repeat = T > 0, one step \[N, \*\]\), got shape \(\) with repeat=3"):
        torch.ops.flashspike.multi_step_forward(torch.zeros(()), None, None, False, False, "torch", options, 3)
    with pytest.raises(ValueError, match="repeat=-1"):
        torch.ops.flashspike.multi_step_forward(torch.zeros(3, 4), None, None, False, False, "torch", options, -1)
    with pytest.raises(ValueError, match=r"v_init of one step's shape \[N, \*\] = \(4,\)"):
        torch.ops.flashspike.multi_step_forward(torch.zeros(4), torch.zeros(3, 4), None, False, False, "torch",
                                                options, 3)


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _node(backend):
    return neuron.MultiStepLIFNode(tau=2.0, v_reset=None, surrogate_function=surrogate.ATan(), backend=backend,
                                   store_v_seq=True)


def _run(node, layout, leaf):
    """Spikes, v_seq and the leaf's gradient of one call of ``node`` on the layout made from ``leaf``."""
    leaf.grad = None
    node.reset()
    x = leaf.unsqueeze(0).expand(T, *leaf.shape) if layout == "expanded" else leaf
    spike = node(x)
    weights = torch.arange(spike.numel(), dtype=spike.dtype, device=spike.device).reshape(spike.shape) % 5
    ((spike * weights).sum() + node.v_seq.sum()).backward()
    return spike.detach(), node.v_seq.detach(), leaf.grad


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("layout", LAYOUTS)
def test_compiled_node_equals_eager_with_the_same_strides(backend, layout, fresh_dynamo):
    g = torch.Generator().manual_seed(5)
    dtype = torch.float64 if backend == "torch" else torch.float32
    if layout == "expanded":
        leaf = _cl(torch.randn(STEP, generator=g, dtype=dtype) + 0.6)
    else:
        leaf, _ = _inputs(layout, g, dtype)
    leaf = leaf.to(_device()).requires_grad_()
    eager = _run(_node(backend), layout, leaf)
    compiler = "inductor" if backend == "torch" and os.environ.get("TRITON_INTERPRET") != "1" else "aot_eager"
    compiled = _run(torch.compile(_node(backend), fullgraph=True, backend=compiler), layout, leaf)
    assert 0.05 < eager[0].float().mean().item() < 0.95, "the input should make some neurons fire and others not"
    for got, expected in zip(compiled, eager):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        if backend != "torch":  # eager 'torch' is the reference, whose outputs are stacked contiguous
            assert got.stride() == expected.stride()
    assert compiled[2].stride() == leaf.stride()
