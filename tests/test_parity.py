"""Every kernel backend against the reference backend 'torch': one parametrized grid for all of them.

The reference runs in float64 on the very values the kernel received (after rounding to its dtype),
so the only differences left are the kernel's float32 arithmetic and the rounding of its outputs.

What is compared, and how closely (TOLERANCE below):
- spikes: identical, for every neuron whose float64 trajectory never comes within ``SPIKE_TIE`` of
  the threshold (a tie can round either way; at least 70% of the neurons must remain, so the test
  can't pass by excluding everything); with a surrogate's ``spiking=False`` the output is its smooth
  primitive, compared like V;
- V (last step and, with store_v_seq, every step): within rtol/atol of the output dtype's rounding;
- gradients of x and of the initial state: within ``grad`` relative to the largest reference gradient,
  for neurons that never come within ``grad_tie`` of the threshold (the backward reads H rounded to
  the dtype, so the surrogate's value and a recomputed spike move with that rounding);
- PLIF's ∂L/∂w, one sum over every neuron and step: within ``grad_w`` of Σ|∂L/∂X| (the size of its
  terms; see check_grad_w). With 16-bit storage a neuron near the threshold may recompute another
  spike from its rounded H, which no mask can leave out of one sum, hence the wider bounds there.

The grid has a NEURON axis (IF, LIF, PLIF, EIF): every kernel backend is held against the reference
for every neuron.

Outputs are poisoned with NaN before each call (tests/conftest.py), so unwritten elements fail.
Kernel backends run on CUDA when present; 'triton' also runs on the CPU through its interpreter
(TRITON_INTERPRET=1, set by conftest.py on machines without CUDA). A backend whose package is missing
is skipped, unless FLASHSPIKE_REQUIRE_BACKENDS (comma-separated) names it: then the test fails.
"""

import pytest
import torch

from flashspike import backends
from conftest import kernel_device
from custom_surrogate import every_surrogate, surrogate_id
from grid import DTYPES, LAYOUTS, NEURONS, SURROGATES, V_INITS, Cell, cell_id, channels_last, far_from_ties, node, option_grid

KERNEL_BACKENDS = ["cupy", "triton"]

TOLERANCE = {
    torch.float32: dict(grad_tie=1e-4, rtol=1e-5, atol=1e-5, grad=1e-4, grad_w=1e-6),
    torch.float16: dict(grad_tie=2e-3, rtol=1e-3, atol=1e-3, grad=2e-2, grad_w=1e-3),
    torch.bfloat16: dict(grad_tie=1e-2, rtol=8e-3, atol=8e-3, grad=1e-1, grad_w=1e-2),
}
# Kernels compute in float32 from the same rounded inputs, so their H differs from float64 by float32
# rounding whatever the dtype: spikes must agree wherever H stays this far from the threshold.
SPIKE_TIE = 1e-4


def check_against_reference(name, shape, dtype, cell=Cell(), *, v_init="tensor", store_v_seq=False, grad="random",
                            seed=0, layout=None, v_layout=None, grad_layout=None):
    """The node of grid ``cell`` on backend ``name`` against the reference's. ``layout``, ``v_layout`` and ``grad_layout`` (functions of a contiguous tensor) lay out the kernel
    node's input, initial state and output gradients in memory; the values stay the same."""
    same = lambda t: t  # noqa: E731
    layout, v_layout, grad_layout = layout or same, v_layout or same, grad_layout or same
    device = kernel_device(name)
    tol = TOLERANCE[dtype]
    g = torch.Generator().manual_seed(seed)
    x64 = (torch.randn(shape, generator=g, dtype=torch.float64) * 0.7 + 0.45)
    x = layout(x64.to(dtype)).to(device).requires_grad_()
    x64 = x.detach().double().cpu().contiguous()  # the values the kernel really gets
    if v_init == "tensor":
        v0_64 = (torch.randn(shape[1:], generator=g, dtype=torch.float64) * 0.3).to(dtype).double()
    else:
        v0_64 = 0.0 if cell.v_reset is None else cell.v_reset
    weights = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3)]

    def run(layer, x_in, v0, w_dtype, w_device):
        if isinstance(v0, torch.Tensor):
            layer.v = v0
        spike = layer(x_in)
        if grad == "sum":
            loss = spike.sum()
        else:
            relay = grad_layout if w_device == device else same
            w = [relay(wi.to(w_dtype)).to(w_device) for wi in weights]
            loss = (spike * w[0]).sum() + (layer.v * w[1][0]).sum()
            if store_v_seq:
                loss = loss + (layer.v_seq * w[2]).sum()
        loss.backward()
        return spike, layer

    kernel_node = cell.node(name, store_v_seq=store_v_seq).to(device)  # PLIF's w goes along
    v0 = v_layout(v0_64.to(dtype)).to(device).requires_grad_() if isinstance(v0_64, torch.Tensor) else v0_64
    spike, kernel_node = run(kernel_node, x, v0, dtype, device)

    ref_node = cell.node("torch", store_v_seq=store_v_seq)
    xr = x64.clone().requires_grad_()
    v0r = v0_64.clone().requires_grad_() if isinstance(v0_64, torch.Tensor) else v0_64
    ref_spike, ref_node = run(ref_node, xr, v0r, torch.float64, "cpu")

    assert spike.dtype == dtype and kernel_node.v.dtype == dtype and spike.shape == x.shape
    keep = far_from_ties(ref_node, x64, v0_64, SPIKE_TIE)
    grad_keep = keep & far_from_ties(ref_node, x64, v0_64, tol["grad_tie"])
    assert grad_keep.double().mean() >= 0.7, "too many near-threshold neurons for a meaningful comparison"
    seq_keep = keep.expand_as(x64)

    got_spike = spike.detach().double().cpu()
    assert not torch.isnan(got_spike).any(), "unwritten spike elements"
    close = dict(rtol=tol["rtol"], atol=tol["atol"])
    if kernel_node.surrogate_function.spiking:
        assert torch.equal(got_spike[seq_keep], ref_spike.detach()[seq_keep])
    else:  # the smooth primitive, computed in float32
        torch.testing.assert_close(got_spike[seq_keep], ref_spike.detach()[seq_keep], **close)

    torch.testing.assert_close(kernel_node.v.detach().double().cpu()[keep], ref_node.v.detach()[keep], **close)
    if store_v_seq:
        torch.testing.assert_close(kernel_node.v_seq.detach().double().cpu()[seq_keep],
                                   ref_node.v_seq.detach()[seq_keep], **close)

    def close_grads(got, ref, mask):
        got = got.double().cpu()
        assert not torch.isnan(got).any(), "unwritten gradient elements"
        scale = max(ref.abs().max().item(), 1e-3)
        torch.testing.assert_close(got[mask], ref[mask], rtol=tol["grad"], atol=tol["grad"] * scale)

    close_grads(x.grad, xr.grad, grad_keep.expand_as(x64))
    if isinstance(v0, torch.Tensor):
        close_grads(v0.grad, v0r.grad, grad_keep)
    if hasattr(ref_node, "w"):
        check_grad_w(kernel_node, ref_node, xr, tol["grad_w"])


def check_grad_w(kernel_node, ref_node, xr, rel):
    """PLIF's ∂L/∂w against the reference's, within ``rel`` of Σ|∂L/∂X| over the sequence: each term
    ∂L/∂H·∂H/∂w of the sum is of the size of that step's ∂L/∂X = ∂L/∂H·∂H/∂X (|H − V[t−1]|, |V[t−1]|
    and k stay of order one here), so that is the scale the sum is rounded at."""
    assert kernel_node.w.grad is not None and ref_node.w.grad is not None
    got = kernel_node.w.grad.double().cpu()
    assert torch.isfinite(got).all(), "dL/dw not finite"
    scale = max(xr.grad.abs().sum().item(), 1e-3)
    torch.testing.assert_close(got, ref_node.w.grad.double(), rtol=0, atol=rel * scale)


@pytest.mark.parametrize("name", KERNEL_BACKENDS)
@pytest.mark.parametrize("cell", option_grid(v_resets=(0.0, -0.3, None), surrogates=SURROGATES), ids=cell_id)
def test_every_option(name, cell):
    check_against_reference(name, (6, 1151), torch.float32, cell, store_v_seq=cell.detach_reset)


@pytest.mark.parametrize("name", KERNEL_BACKENDS)
@pytest.mark.parametrize("sg", every_surrogate(True) + every_surrogate(False), ids=surrogate_id)
def test_every_surrogate(name, sg):
    """Each surrogate (and a user-defined one), spiking and smooth (spiking=False: the kernels output
    and differentiate the primitive, as the reference does), hard and soft reset, in a small case."""
    check_against_reference(name, (4, 67), torch.float32, Cell(v_reset=-0.2, surrogate=sg), store_v_seq=True)
    check_against_reference(name, (3, 41), torch.float32, Cell("if", v_reset=None, detach_reset=True, surrogate=sg),
                            seed=1)


SHAPES = [(1, 7), (5, 1151), (4, 2, 3, 5), (16, 2, 33)]


@pytest.mark.parametrize("name", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("v_init", V_INITS)
@pytest.mark.parametrize("store_v_seq", [False, True])
@pytest.mark.parametrize("grad", ["random", "sum"])
def test_dtypes_shapes_and_state(name, dtype, shape, v_init, store_v_seq, grad):
    check_against_reference(name, shape, dtype, Cell(v_reset=None if store_v_seq else 0.0), v_init=v_init,
                            store_v_seq=store_v_seq, grad=grad)


@pytest.mark.parametrize("name", KERNEL_BACKENDS)
@pytest.mark.parametrize("charge", ["plif", "eif"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("v_init", V_INITS)
@pytest.mark.parametrize("store_v_seq", [False, True])
def test_dtypes_and_state_of_plif_and_eif(name, charge, dtype, v_init, store_v_seq):
    """PLIF and EIF rebuild V[t−1] in the backward pass, from H[t−1] and at t = 0 from the initial state."""
    check_against_reference(name, (5, 2, 33), dtype, Cell(charge, v_reset=None if store_v_seq else 0.0),
                            v_init=v_init, store_v_seq=store_v_seq)


@pytest.mark.parametrize("name", KERNEL_BACKENDS)
@pytest.mark.parametrize("charge", ["plif", "eif"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda f: f.__name__)
def test_memory_layouts_of_plif_and_eif(name, charge, layout):
    check_against_reference(name, (3, 2, 5, 4, 3), torch.float32, Cell(charge), layout=layout,
                            v_layout=channels_last, grad_layout=channels_last, store_v_seq=True)


@pytest.mark.parametrize("name", KERNEL_BACKENDS)
def test_state_carries_over_consecutive_calls(name):
    device = kernel_device(name)
    x = torch.randn(12, 3, 50, dtype=torch.float64) + 0.5
    kernel_node, ref_node = node(name), node("torch")
    xk = x.float().to(device)
    got = torch.cat([kernel_node(xk[:5]), kernel_node(xk[5:])]).double().cpu()
    expected = ref_node(x.float().double())
    assert torch.equal(got, expected)
    torch.testing.assert_close(kernel_node.v.double().cpu(), ref_node.v, rtol=1e-5, atol=1e-5)
    kernel_node.reset()
    assert torch.equal(kernel_node(xk[:5]).double().cpu(), expected[:5])


@pytest.mark.parametrize("name", KERNEL_BACKENDS)
def test_inference_matches_training_forward(name):
    device = kernel_device(name)
    x = (torch.randn(8, 300) + 0.5).to(device)
    with torch.no_grad():
        eval_spike = node(name, store_v_seq=True)(x)
    train_spike = node(name, store_v_seq=True)(x.clone().requires_grad_())
    assert torch.equal(eval_spike, train_spike.detach())
    assert not eval_spike.requires_grad


@pytest.mark.parametrize("name", KERNEL_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("v_layout", [None, channels_last], ids=["v-contiguous", "v-channels-last"])
@pytest.mark.parametrize("grad_layout", [None, channels_last, "sum"], ids=["grad-contiguous", "grad-channels-last", "sum"])
@pytest.mark.parametrize("store_v_seq", [False, True])
def test_memory_layouts(name, layout, v_layout, grad_layout, store_v_seq):
    """Inputs, states and gradients in other memory layouts give the same numbers; a channels_last
    sequence (steps are dense blocks) reaches the kernels without a copy and keeps its layout."""
    grad = "sum" if grad_layout == "sum" else "random"
    grad_layout = None if grad_layout == "sum" else grad_layout
    shape = (3, 2, 5, 4, 3)  # [T, B, C, H, W]
    check_against_reference(name, shape, torch.float32, layout=layout, v_layout=v_layout, grad_layout=grad_layout,
                            store_v_seq=store_v_seq, grad=grad)
    device = kernel_device(name)
    x = layout(torch.randn(shape)).to(device)
    layer = node(name, store_v_seq=store_v_seq)
    layer.v = v_layout(torch.randn(shape[1:])).to(device) if v_layout else layer.v
    spike = layer(x)
    if layout is channels_last:
        assert spike.stride() == x.stride() and layer.v.stride() == x.stride()[1:]
        if store_v_seq:
            assert layer.v_seq.stride() == x.stride()


@pytest.mark.parametrize("name", KERNEL_BACKENDS)
def test_channels_last_sequence_is_not_copied(name, monkeypatch):
    """The kernels receive the caller's channels_last memory itself."""
    device = kernel_device(name)
    x = channels_last(torch.randn(2, 3, 4, 5, 6)).to(device)
    seen = []
    kernels = backends.get(name).kernel_set(node(name).params())
    original = type(kernels).forward
    monkeypatch.setattr(type(kernels), "forward", lambda self, x_in, *rest: seen.append(x_in) or original(self, x_in, *rest))
    node(name)(x)
    assert seen and seen[0].data_ptr() == x.data_ptr() and seen[0].stride() == x.stride()


@pytest.mark.parametrize("name", KERNEL_BACKENDS)
@pytest.mark.parametrize("step_layout", [None, channels_last], ids=["contiguous", "channels-last"])
@pytest.mark.parametrize("spelling", ["expand", "unsqueeze-expand"])
@pytest.mark.parametrize("charge", NEURONS)
def test_input_repeated_over_time(name, step_layout, spelling, charge):
    """A static input expanded over T: read in place by the kernels, and its gradient summed over T in
    the backward kernel, which autograd hands to the step itself (no [T, *] gradient, no reduction)."""
    device = kernel_device(name)
    g = torch.Generator().manual_seed(3)
    step64 = (torch.randn(2, 5, 4, 3, generator=g, dtype=torch.float64) * 0.7 + 0.45).float().double()
    w_spike, w_v = (torch.randn(6, 2, 5, 4, 3, generator=g, dtype=torch.float64) for _ in range(2))
    # (clone: a tensor of its own, not a view, as a layer's output is; an expanded view's _base is its root)
    step = (step_layout or (lambda t: t))(step64.float()).to(device).clone().requires_grad_()
    ref_step = step64.clone().requires_grad_()
    results = []
    nodes = []
    for layer, x, dtype in ((node(name, charge, store_v_seq=True).to(device), step, torch.float32),
                            (node("torch", charge, store_v_seq=True), ref_step, torch.float64)):
        nodes.append(layer)
        spike = layer(x.expand(6, *x.shape) if spelling == "expand" else x.unsqueeze(0).expand(6, *x.shape))
        if x is step:
            assert spike.grad_fn.next_functions[0][0].variable is step  # straight to the step: no ExpandBackward
        ((spike * w_spike.to(x.device, dtype)).sum() + (layer.v_seq * w_v.to(x.device, dtype)).sum()).backward()
        results.append((spike.detach().double().cpu(), layer.v_seq.detach().double().cpu(), x.grad.double().cpu()))
    (spike, v_seq, grad), (ref_spike, ref_v_seq, ref_grad) = results
    keep = far_from_ties(nodes[1], step64.expand(6, *step64.shape), node("torch", charge).v, TOLERANCE[torch.float32]["grad_tie"])
    assert keep.double().mean() >= 0.7
    assert torch.equal(spike[keep.expand_as(spike)], ref_spike[keep.expand_as(spike)])
    torch.testing.assert_close(v_seq[keep.expand_as(v_seq)], ref_v_seq[keep.expand_as(v_seq)], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad[keep], ref_grad[keep], rtol=1e-4, atol=1e-4 * ref_grad.abs().max().item())
    if charge == "plif":
        check_grad_w(nodes[0], nodes[1], ref_step, TOLERANCE[torch.float32]["grad_w"])
