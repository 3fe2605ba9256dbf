"""The reference backend against hand-computed trajectories and a hand-unrolled BPTT."""

import itertools
import math

import pytest
import torch

from flashspike import neuron, surrogate

import bptt


def _seq(values):
    return torch.tensor(values, dtype=torch.float64).view(-1, 1)


def _run(node, xs):
    spikes = node(_seq(xs))
    return spikes.view(-1).tolist(), node


# Each case: node, input sequence, expected spikes, expected V after each step (worked out by hand).
HAND_CASES = {
    # IF, hard reset to 0: H = .5, 1.1, .2, 1.7
    "if_hard": (lambda: neuron.MultiStepIFNode(backend="torch", store_v_seq=True),
                [0.5, 0.6, 0.2, 1.5], [0, 1, 0, 1], [0.5, 0.0, 0.2, 0.0]),
    # IF, soft reset: H = .5, 1.1, .3, 1.8
    "if_soft": (lambda: neuron.MultiStepIFNode(v_reset=None, backend="torch", store_v_seq=True),
                [0.5, 0.6, 0.2, 1.5], [0, 1, 0, 1], [0.5, 0.1, 0.3, 0.8]),
    # LIF tau=2, decay_input, hard to 0: H = .5, .75, .875, .875 + (3 - .875)/2 = 1.9375
    "lif_decay_hard": (lambda: neuron.MultiStepLIFNode(tau=2.0, backend="torch", store_v_seq=True),
                       [1.0, 1.0, 1.0, 3.0], [0, 0, 0, 1], [0.5, 0.75, 0.875, 0.0]),
    # LIF tau=2, no decay_input: H = .6, .3 + .6 = .9, .45 + .6 = 1.05
    "lif_nodecay_hard": (lambda: neuron.MultiStepLIFNode(decay_input=False, backend="torch", store_v_seq=True),
                         [0.6, 0.6, 0.6], [0, 0, 1], [0.6, 0.9, 0.0]),
    # LIF tau=2, decay_input, hard reset to -0.5 (start at -0.5): H = 0, .25, .25 + (3 - .75)/2 = 1.375
    "lif_decay_reset_minus_half": (
        lambda: neuron.MultiStepLIFNode(v_reset=-0.5, backend="torch", store_v_seq=True),
        [1.0, 1.0, 3.0], [0, 0, 1], [0.0, 0.25, -0.5]),
    # LIF tau=4, decay_input, soft reset (rest 0): H = .5, .5 + (4 - .5)/4 = 1.375 -> .375,
    # .375 + (2 - .375)/4 = .78125
    "lif_decay_soft": (lambda: neuron.MultiStepLIFNode(tau=4.0, v_reset=None, backend="torch", store_v_seq=True),
                       [2.0, 4.0, 2.0], [0, 1, 0], [0.5, 0.375, 0.78125]),
    # LIF tau=2, no decay_input, soft reset: H = 1.2 -> .2, .1 + 1.2 = 1.3 -> .3, .15 + 0 = .15
    "lif_nodecay_soft": (lambda: neuron.MultiStepLIFNode(decay_input=False, v_reset=None, backend="torch",
                                                         store_v_seq=True),
                         [1.2, 1.2, 0.0], [1, 1, 0], [0.2, 0.3, 0.15]),
    # threshold reached exactly fires (Θ(0) = 1): H = 1.0
    "if_tie_fires": (lambda: neuron.MultiStepIFNode(backend="torch", store_v_seq=True),
                     [0.25, 0.75], [0, 1], [0.25, 0.0]),
}


@pytest.mark.parametrize("case", HAND_CASES)
def test_hand_computed_trajectory(case):
    make, xs, spikes, vs = HAND_CASES[case]
    node = make()
    got, node = _run(node, xs)
    assert got == spikes
    assert node.v_seq.view(-1).tolist() == pytest.approx(vs, abs=1e-12)
    assert node.v.item() == pytest.approx(vs[-1], abs=1e-12)


@pytest.mark.parametrize("case", HAND_CASES)
def test_single_step_nodes_follow_the_same_trajectory(case):
    make, xs, spikes, vs = HAND_CASES[case]
    multi = make()
    kwargs = dict(v_threshold=multi.v_threshold, v_reset=multi.v_reset)
    if multi.leaky:
        single = neuron.LIFNode(tau=multi.tau, decay_input=multi.decay_input, **kwargs)
    else:
        single = neuron.IFNode(**kwargs)
    got, got_v = [], []
    for x in xs:
        got.append(single(torch.tensor([x], dtype=torch.float64)).item())
        got_v.append(single.v.item())
    assert got == spikes
    assert got_v == pytest.approx(vs, abs=1e-12)


OPTIONS = list(itertools.product(
    [("if", True), ("lif", True), ("lif", False), ("plif", True), ("plif", False), ("eif", True)],  # (neuron, decay_input)
    [0.0, -0.3, None],  # v_reset
    [False, True],  # detach_reset
    [surrogate.ATan(), surrogate.Sigmoid(), surrogate.PiecewiseQuadratic(), surrogate.SoftSign(alpha=3.0)],
))


# EIF's constants in these tests, and PLIF's w (sigmoid(w) = 1/1.7: the same tau as LIF's).
EIF = dict(delta_T=0.5, theta_rh=0.6, v_rest=0.1)
PLIF_W = -math.log(0.7)


def _make(charge, decay_input, v_reset, detach, sg, tau=1.7, **kw):
    common = dict(v_threshold=0.8, v_reset=v_reset, surrogate_function=sg, detach_reset=detach, backend="torch", **kw)
    if charge == "if":
        return neuron.MultiStepIFNode(**common)
    if charge == "plif":
        node = neuron.MultiStepParametricLIFNode(init_tau=tau, decay_input=decay_input, **common).double()
        with torch.no_grad():
            node.w.fill_(PLIF_W)  # (in float64: the hand-unrolled reference takes it as a Python float)
        return node
    if charge == "eif":
        if v_reset is not None:
            common["v_reset"] = min(v_reset, EIF["v_rest"])
        return neuron.MultiStepEIFNode(tau=tau, **EIF, **common)
    return neuron.MultiStepLIFNode(tau=tau, decay_input=decay_input, **common)


def _bptt_options(charge):
    """The bptt.run arguments that select the neuron ``charge``."""
    return dict(leaky=charge != "if", plif_w=PLIF_W if charge == "plif" else None,
                eif=EIF if charge == "eif" else None)


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: f"{o[0][0]}-{o[0][1]}-{o[1]}-{o[2]}-{type(o[3]).__name__}")
def test_autograd_matches_hand_unrolled_bptt(opts):
    (charge, decay_input), v_reset, detach, sg = opts
    g = torch.Generator().manual_seed(0)
    T, N = 6, 40
    x = (torch.randn(T, N, generator=g, dtype=torch.float64) * 0.8 + 0.4).requires_grad_()
    v0 = (torch.randn(N, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    grad_s, grad_v_seq = torch.randn(T, N, generator=g, dtype=torch.float64), torch.randn(T, N, generator=g,
                                                                                          dtype=torch.float64)
    node = _make(charge, decay_input, v_reset, detach, sg, store_v_seq=True)
    node.v = v0
    s = node(x)
    torch.autograd.backward([s, node.v_seq], [grad_s, grad_v_seq])

    ref = bptt.run(x.detach(), v0.detach(), tau=1.7, decay_input=decay_input, vth=0.8,
                   vr=node.v_reset, detach=detach, surrogate=(type(sg).__name__, sg.alpha),
                   grad_s=grad_s, grad_v_seq=grad_v_seq, **_bptt_options(charge))
    assert torch.equal(s.detach(), ref["s"])
    torch.testing.assert_close(node.v_seq.detach(), ref["v"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, ref["grad_x"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(v0.grad, ref["grad_v0"], rtol=1e-10, atol=1e-12)
    if charge == "plif":
        torch.testing.assert_close(node.w.grad, torch.as_tensor(ref["grad_w"]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("charge,decay_input", [("if", True), ("lif", True), ("lif", False), ("plif", True),
                                                ("plif", False), ("eif", True)])
@pytest.mark.parametrize("v_reset", [0.0, None])
def test_smooth_neuron_passes_gradcheck(charge, decay_input, v_reset):
    # With spiking=False the "spike" is the smooth primitive, so the whole neuron is differentiable and
    # finite differences check the reference's autograd graph. (detach_reset makes the gradient
    # deliberately differ from the true derivative; the BPTT test above covers it.)
    detach = False
    sg = surrogate.Sigmoid(alpha=2.0, spiking=False)

    def f(x, v0):
        node = _make(charge, decay_input, v_reset, detach, sg, store_v_seq=True)
        node.v = v0
        return node(x), node.v_seq

    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    v0 = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x, v0))
    if charge == "plif":  # and dL/dw, through w itself
        def of_w(w):
            node = _make(charge, decay_input, v_reset, detach, sg, store_v_seq=True)
            del node.w  # w itself, not a new leaf, so that the gradient reaches gradcheck's input
            node.w = w
            node.v = v0.detach()
            return node(x.detach()), node.v_seq

        assert torch.autograd.gradcheck(of_w, (torch.tensor(0.3, dtype=torch.float64, requires_grad=True),))


def test_detach_reset_changes_the_gradient():
    # A sanity check that the option is not a no-op: the reset path carries gradient only without it.
    x = torch.tensor([[0.9], [0.9], [0.9]], dtype=torch.float64)
    grads = []
    for detach in (False, True):
        xg = x.clone().requires_grad_()
        node = neuron.MultiStepIFNode(surrogate_function=surrogate.ATan(), detach_reset=detach, backend="torch")
        node(xg).sum().backward()
        grads.append(xg.grad)
    assert not torch.allclose(grads[0], grads[1])


def test_split_sequence_continues_from_kept_state():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(10, 3, 4, generator=g) + 0.5
    whole = neuron.MultiStepLIFNode(tau=3.0, backend="torch")
    parts = neuron.MultiStepLIFNode(tau=3.0, backend="torch")
    expected = whole(x)
    got = torch.cat([parts(x[:4]), parts(x[4:])])
    assert torch.equal(got, expected)
    torch.testing.assert_close(parts.v, whole.v)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_reference_runs_in_every_float_dtype(dtype):
    x = (torch.randn(5, 7) + 0.5).to(dtype).requires_grad_()
    node = neuron.MultiStepLIFNode(surrogate_function=surrogate.ATan(), backend="torch", store_v_seq=True)
    y = node(x)
    y.sum().backward()
    assert y.dtype == dtype and node.v.dtype == dtype and node.v_seq.dtype == dtype and x.grad.dtype == dtype
    ref = bptt.run(x.detach(), 0.0, leaky=True)
    # Away from ties, spikes agree with the float64 computation on the same (rounded) inputs.
    far = (ref["h"] - 1.0).abs() > 0.05
    assert far.float().mean() > 0.8
    assert torch.equal(y.double()[far.cumprod(0).bool()], ref["s"][far.cumprod(0).bool()])
