"""Surrogate functions: every SpikingJelly surrogate's forward (both modes) and gradient against formulas
written out by hand here and against SpikingJelly itself; defaults, repr, hyper-parameter rules; the
generated code of every formula evaluated against the same hand-written formulas."""

import math

import numpy as np
import pytest
import torch

from flashspike import surrogate
from flashspike.codegen import CUDA, TORCH, TRITON, Emitter, var

from conftest import kernel_device

ALL = [surrogate.PiecewiseQuadratic, surrogate.PiecewiseExp, surrogate.Sigmoid, surrogate.SoftSign, surrogate.ATan,
       surrogate.NonzeroSignLogAbs, surrogate.Erf, surrogate.PiecewiseLeakyReLU, surrogate.SquarewaveFourierSeries,
       surrogate.S2NN, surrogate.QPseudoSpike]
DEFAULTS = {
    "PiecewiseQuadratic": dict(alpha=1.0), "PiecewiseExp": dict(alpha=1.0), "Sigmoid": dict(alpha=4.0),
    "SoftSign": dict(alpha=2.0), "ATan": dict(alpha=2.0), "NonzeroSignLogAbs": dict(alpha=1.0),
    "Erf": dict(alpha=2.0), "PiecewiseLeakyReLU": dict(w=1.0, c=0.01), "SquarewaveFourierSeries": dict(n=2, T_period=8),
    "S2NN": dict(alpha=4.0, beta=1.0), "QPseudoSpike": dict(alpha=2.0),
}
# Non-default hyper-parameters for each class (the formulas must hold beyond the defaults).
OTHER = {
    "PiecewiseQuadratic": dict(alpha=1.7), "PiecewiseExp": dict(alpha=2.5), "Sigmoid": dict(alpha=1.5),
    "SoftSign": dict(alpha=0.6), "ATan": dict(alpha=3.0), "NonzeroSignLogAbs": dict(alpha=2.2),
    "Erf": dict(alpha=0.8), "PiecewiseLeakyReLU": dict(w=0.5, c=0.1), "SquarewaveFourierSeries": dict(n=4, T_period=5.0),
    "S2NN": dict(alpha=2.0, beta=0.5), "QPseudoSpike": dict(alpha=3.5),
}
ids = lambda c: c.__name__  # noqa: E731


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


# Each surrogate written out in numpy, float64, from its published formula:
# (primitive g, the backward slope with spiking=True, the slope of g).
def _hand(name, h):
    if name == "PiecewiseQuadratic":
        a = h["alpha"]
        g = lambda x: np.where(x > 1 / a, 1.0, np.where(x < -1 / a, 0.0, -a * a / 2 * x * np.abs(x) + a * x + 0.5))
        d = lambda x: np.where(np.abs(x) > 1 / a, 0.0, a - a * a * np.abs(x))
        return g, d, d
    if name == "PiecewiseExp":
        a = h["alpha"]
        g = lambda x: np.where(x >= 0, 1 - np.exp(-a * np.abs(x)) / 2, np.exp(-a * np.abs(x)) / 2)
        d = lambda x: a / 2 * np.exp(-a * np.abs(x))
        return g, d, d
    if name == "Sigmoid":
        a = h["alpha"]
        d = lambda x: a * _sigmoid(a * x) * (1 - _sigmoid(a * x))
        return (lambda x: _sigmoid(a * x)), d, d
    if name == "SoftSign":
        a = h["alpha"]
        d = lambda x: 1 / (2 * a * (1 / a + np.abs(x)) ** 2)
        return (lambda x: (a * x / (1 + np.abs(a * x)) + 1) / 2), d, d
    if name == "ATan":
        a = h["alpha"]
        d = lambda x: a / 2 / (1 + (math.pi / 2 * a * x) ** 2)
        return (lambda x: np.arctan(math.pi / 2 * a * x) / math.pi + 0.5), d, d
    if name == "NonzeroSignLogAbs":
        a = h["alpha"]
        d = lambda x: 1 / (1 / a + np.abs(x))
        return (lambda x: np.where(x >= 0, 1.0, -1.0) * np.log1p(a * np.abs(x))), d, d
    if name == "Erf":
        a = h["alpha"]
        d = lambda x: a / math.sqrt(math.pi) * np.exp(-(a * x) ** 2)
        return (lambda x: np.array([math.erfc(-a * v) / 2 for v in x])), d, d
    if name == "PiecewiseLeakyReLU":
        w, c = h["w"], h["c"]
        g = lambda x: np.where(x < -w, c * x + c * w, np.where(x > w, c * x - c * w + 1, x / (2 * w) + 0.5))
        d = lambda x: np.where(np.abs(x) < w, 1 / w, c)
        dg = lambda x: np.where(np.abs(x) > w, c, 1 / (2 * w))
        return g, d, dg
    if name == "SquarewaveFourierSeries":
        n, period = h["n"], h["T_period"]
        om = 2 * math.pi / period
        g = lambda x: 0.5 + 2 / math.pi * sum(np.sin((2 * k - 1) * om * x) / (2 * k - 1) for k in range(1, n))
        d = lambda x: 4 / period * sum(np.cos((2 * k - 1) * om * x) for k in range(1, n))
        return g, d, d
    if name == "S2NN":
        a, b = h["alpha"], h["beta"]
        left = lambda x: a * _sigmoid(a * x) * (1 - _sigmoid(a * x))
        g = lambda x: np.where(x < 0, _sigmoid(a * x), b * np.log(np.abs(x + 1) + 1e-5) + 0.5)
        d = lambda x: np.where(x < 0, left(x), b / np.where(x < 0, 1.0, x + 1))
        dg = lambda x: np.where(x < 0, left(x), b / (x + 1 + 1e-5))
        return g, d, dg
    if name == "QPseudoSpike":
        a = h["alpha"]
        tail = lambda x: 0.5 * (1 + 2 / (a - 1) * np.abs(x)) ** (1 - a)
        d = lambda x: (1 + 2 / (a - 1) * np.abs(x)) ** (-a)
        return (lambda x: np.where(x >= 0, 1 - tail(x), tail(x))), d, d
    raise KeyError(name)


def hand(cls, hyper):
    """(g, backward slope, g') of ``cls`` as tensors -> tensors, from the numpy formulas above."""
    return tuple((lambda f: lambda x: torch.from_numpy(np.asarray(f(x.detach().double().numpy()), dtype=np.float64)))(f)
                 for f in _hand(cls.__name__, hyper))


def grid(cls, hyper):
    """x values on both sides of 0 and of every kink, the kinks themselves, and far tails."""
    points = [0.0, 1e-7, -1e-7, 0.3, -0.3, 1.0, -1.0, 2.0, -2.0, 7.5, -7.5, 40.0, -40.0, -0.999, -1.001]
    for name in ("alpha", "w"):
        if name in hyper and cls is not surrogate.QPseudoSpike:
            kink = hyper[name] if name == "w" else 1 / hyper[name]
            points += [kink, -kink, kink * (1 + 1e-6), -kink * (1 + 1e-6), kink * (1 - 1e-6), -kink * (1 - 1e-6)]
    return torch.tensor(sorted(set(points)) + list(np.linspace(-3, 3, 121)), dtype=torch.float64)


def _make(cls, hyper, spiking=True):
    return cls(**hyper, spiking=spiking)


@pytest.mark.parametrize("cls", ALL, ids=ids)
def test_defaults(cls):
    sg = cls()
    assert dict(zip(sg.hyperparameters, sg.values())) == DEFAULTS[cls.__name__] and sg.spiking is True
    assert list(sg.hyperparameters) == list(DEFAULTS[cls.__name__])


@pytest.mark.parametrize("cls", ALL, ids=ids)
def test_repr(cls):
    if list(DEFAULTS[cls.__name__]) == ["alpha"]:
        assert repr(cls()) == f"{cls.__name__}(alpha={DEFAULTS[cls.__name__]['alpha']}, spiking=True)"
        assert repr(cls(alpha=3, spiking=False)) == f"{cls.__name__}(alpha=3, spiking=False)"  # kept as given
    else:  # as SpikingJelly prints its surrogates of several hyper-parameters
        assert repr(cls(**OTHER[cls.__name__])) == f"{cls.__name__}()"


@pytest.mark.parametrize("cls", ALL, ids=ids)
@pytest.mark.parametrize("which", ["default", "other"])
def test_spiking_forward_is_heaviside_and_backward_the_stated_slope(cls, which):
    hyper = DEFAULTS[cls.__name__] if which == "default" else OTHER[cls.__name__]
    x = grid(cls, hyper).requires_grad_()
    y = _make(cls, hyper)(x)
    assert torch.equal(y, (x >= 0).double())
    y.backward(torch.ones_like(x))
    torch.testing.assert_close(x.grad, hand(cls, hyper)[1](x), rtol=1e-12, atol=1e-14)
    assert math.isnan(_make(cls, hyper)(torch.tensor(float("nan"))))  # NaN stays NaN


@pytest.mark.parametrize("cls", ALL, ids=ids)
@pytest.mark.parametrize("which", ["default", "other"])
def test_primitive_and_its_gradient(cls, which):
    hyper = DEFAULTS[cls.__name__] if which == "default" else OTHER[cls.__name__]
    g, _, dg = hand(cls, hyper)
    x = grid(cls, hyper).requires_grad_()
    y = _make(cls, hyper, spiking=False)(x)
    torch.testing.assert_close(y, g(x), rtol=1e-12, atol=1e-14)
    y.sum().backward()
    torch.testing.assert_close(x.grad, dg(x), rtol=1e-12, atol=1e-14)
    # primitive_derivative, what the kernels use with spiking=False, states that same slope
    torch.testing.assert_close(_make(cls, hyper, spiking=False).output_slope(x.detach(), TORCH), dg(x),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls", ALL, ids=ids)
def test_gradcheck_of_the_smooth_primitive(cls):
    hyper = OTHER[cls.__name__]
    sg = _make(cls, hyper, spiking=False)
    # away from kinks and from 0 (where the piecewise primitives switch branch)
    x = torch.tensor([-2.7, -1.3, -0.41, -0.05, 0.07, 0.33, 1.21, 2.9], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(sg, (x,))
    assert torch.autograd.gradgradcheck(sg, (x,))


@pytest.mark.parametrize("cls", ALL, ids=ids)
@pytest.mark.parametrize("which", ["default", "other"])
def test_against_spikingjelly(cls, which):
    sj = pytest.importorskip("spikingjelly.clock_driven.surrogate")
    hyper = DEFAULTS[cls.__name__] if which == "default" else OTHER[cls.__name__]
    theirs_cls = getattr(sj, cls.__name__)
    for spiking in (True, False):
        ours, theirs = _make(cls, hyper, spiking), theirs_cls(**hyper, spiking=spiking)
        assert repr(ours) == repr(theirs)
        for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-6)):
            x = grid(cls, hyper).to(dtype)
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya, yb = ours(xa), theirs(xb)
            torch.testing.assert_close(ya, yb, rtol=tol, atol=tol)
            ya.sum().backward()
            yb.sum().backward()
            torch.testing.assert_close(xa.grad, xb.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_backward_is_computed_in_float32(dtype):
    x = torch.tensor([0.01, 0.2, -0.7], dtype=dtype, requires_grad=True)
    surrogate.Sigmoid()(x).backward(torch.ones_like(x))
    expected = hand(surrogate.Sigmoid, dict(alpha=4.0))[1](x.detach().double()).to(dtype)
    assert x.grad.dtype == dtype
    assert torch.equal(x.grad, expected)


BAD = [
    (surrogate.ATan, "alpha", [0, -1.0, "2", True, float("inf"), float("nan")]),
    (surrogate.QPseudoSpike, "alpha", [1.0, 0.5]),
    (surrogate.PiecewiseLeakyReLU, "w", [0.0, -1.0]),
    (surrogate.PiecewiseLeakyReLU, "c", [-0.01, float("nan")]),
    (surrogate.SquarewaveFourierSeries, "n", [1, 2.0, True]),
    (surrogate.SquarewaveFourierSeries, "T_period", [0.0, float("inf")]),
    (surrogate.S2NN, "beta", [0.0, -1.0]),
]


@pytest.mark.parametrize(("cls", "name", "values"), BAD, ids=lambda v: getattr(v, "__name__", str(v)))
def test_bad_hyperparameters_are_refused_at_construction_and_assignment(cls, name, values):
    for bad in values:
        with pytest.raises(ValueError, match=f"{cls.__name__}: {name} must be"):
            cls(**{name: bad})
        sg = cls()
        before = sg.key
        with pytest.raises(ValueError, match=f"{name} must be"):
            setattr(sg, name, bad)
        assert sg.key == before  # unchanged


def test_spiking_must_be_a_bool():
    with pytest.raises(TypeError, match="spiking"):
        surrogate.ATan(spiking=1)


def test_key_identifies_class_mode_and_every_hyperparameter():
    assert surrogate.ATan().key == surrogate.ATan(2).key != surrogate.ATan(3.0).key
    assert surrogate.ATan().key != surrogate.SoftSign().key
    assert surrogate.ATan().key != surrogate.ATan(spiking=False).key
    assert surrogate.S2NN().key != surrogate.S2NN(beta=2.0).key
    assert surrogate.PiecewiseLeakyReLU().key != surrogate.PiecewiseLeakyReLU(c=0.02).key


def test_assignment_reaches_key_and_backward():
    sg = surrogate.ATan()
    key = sg.key
    sg.alpha = 4.0
    assert sg.key != key and sg.key == surrogate.ATan(4.0).key
    x = torch.tensor([0.1, -0.3], dtype=torch.float64, requires_grad=True)
    sg(x).sum().backward()
    torch.testing.assert_close(x.grad, hand(surrogate.ATan, dict(alpha=4.0))[1](x))


def test_hyperparameters_of_a_forward_pass_hold_for_its_backward():
    sg = surrogate.Sigmoid(alpha=2.0)
    x = torch.tensor([0.1, -0.3], dtype=torch.float64, requires_grad=True)
    y = sg(x)
    sg.alpha = 9.0
    y.sum().backward()
    torch.testing.assert_close(x.grad, hand(surrogate.Sigmoid, dict(alpha=2.0))[1](x))


class _TL:
    """Just enough of triton.language to run generated statements over float64 tensors."""

    exp, log, sqrt, abs = staticmethod(torch.exp), staticmethod(torch.log), staticmethod(torch.sqrt), staticmethod(torch.abs)
    sin, cos, erf, floor = staticmethod(torch.sin), staticmethod(torch.cos), staticmethod(torch.erf), staticmethod(torch.floor)
    where = staticmethod(TORCH.where)


def _run_triton_text(formula, cls, hyper, u):
    e = Emitter(TRITON)
    e.define("out", formula(var("u"), *cls(**hyper).values(), e))
    scope = {"tl": _TL, "u": u}
    exec("\n".join(e.lines), scope)
    return scope["out"]


@pytest.mark.parametrize("cls", ALL, ids=ids)
@pytest.mark.parametrize("formula", ["primitive", "derivative", "primitive_derivative"])
def test_generated_code_evaluates_to_the_formula(cls, formula):
    hyper = OTHER[cls.__name__]
    u = torch.linspace(-3, 3, 301, dtype=torch.float64)
    expected = hand(cls, hyper)[["primitive", "derivative", "primitive_derivative"].index(formula)](u)
    got = _run_triton_text(getattr(cls, formula), cls, hyper, u)
    # Triton's arctangent and cosine are polynomials and erfc is 1 − erf: float32-level agreement, not
    # float64's
    composed = (formula == "primitive" and cls in (surrogate.ATan, surrogate.Erf)
                or formula != "primitive" and cls is surrogate.SquarewaveFourierSeries)
    tol = 3e-7 if composed else 1e-12
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    c = Emitter(CUDA)
    c.define("out", getattr(cls, formula)(var("u"), *cls(**hyper).values(), c))
    assert all(line.startswith("const float ") and line.endswith(";") for line in c.lines)


def test_triton_arctangent_over_its_whole_range():
    u = torch.cat([torch.linspace(-50, 50, 20001, dtype=torch.float64), torch.tensor([0.0, 1e-30, 1e30, -1e30])])
    got = _run_triton_text(lambda x, m: m.atan(x), type("Any", (), {"__init__": lambda self: None,
                                                                      "values": lambda self: ()}), {}, u)
    torch.testing.assert_close(got, torch.atan(u), rtol=2e-7, atol=1e-30)


# SpikingJelly 0.0.0.0.14 chooses the forward of these three once, at construction; the others follow
# ``spiking`` (and set_spiking_mode) at every call.
FIXED_MODE = {"PiecewiseLeakyReLU", "SquarewaveFourierSeries", "S2NN"}


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
@pytest.mark.parametrize("switch", ["assign", "set_spiking_mode"])
@pytest.mark.parametrize("built_spiking", [True, False])
def test_a_later_change_of_mode_as_spikingjelly(cls, switch, built_spiking):
    x = torch.tensor([-0.7, -0.2, 0.0, 0.3, 1.4], dtype=torch.float64)
    sg = cls(spiking=built_spiking)
    if switch == "assign":
        sg.spiking = not built_spiking
    else:
        sg.set_spiking_mode(not built_spiking)
    assert sg.spiking is (not built_spiking)  # the attribute reads as assigned either way
    fixed = cls.__name__ in FIXED_MODE
    assert cls.mode_fixed_at_construction is fixed
    runs_spiking = built_spiking if fixed else not built_spiking
    assert sg.in_spiking_mode is runs_spiking
    assert sg.key == cls(spiking=runs_spiking).key  # what the kernels are generated for
    smooth = cls.primitive(x, *sg.values(), TORCH)
    assert torch.equal(sg(x), surrogate.heaviside(x) if runs_spiking else smooth)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
@pytest.mark.parametrize("built_spiking", [True, False])
def test_a_later_change_of_mode_against_spikingjelly(cls, built_spiking):
    sj = pytest.importorskip("spikingjelly.clock_driven.surrogate")
    x = torch.tensor([-0.7, -0.2, 0.1, 0.3, 1.4], dtype=torch.float64)
    ours, theirs = cls(spiking=built_spiking), getattr(sj, cls.__name__)(spiking=built_spiking)
    for sg in (ours, theirs):
        sg.set_spiking_mode(not built_spiking)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-6, atol=1e-6)
    for sg in (ours, theirs):
        sg.spiking = built_spiking
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-6, atol=1e-6)


def test_a_fixed_mode_holds_in_the_kernels():
    """A neuron on a kernel backend runs PiecewiseLeakyReLU in its construction's mode, as the reference."""
    from flashspike import neuron
    x = torch.tensor([[0.4], [0.9], [-0.3]], device=kernel_device("triton"))
    sg = surrogate.PiecewiseLeakyReLU()
    sg.spiking = False
    for backend in ("torch", "triton"):
        out = neuron.MultiStepIFNode(surrogate_function=sg, backend=backend)(x)
        assert out.flatten().tolist() == [0.0, 1.0, 0.0], backend


def test_a_surrogate_pickled_before_in_spiking_mode_existed_loads():
    import pickle
    sg = surrogate.ATan(spiking=False)
    state = dict(sg.__dict__)
    del state["in_spiking_mode"]
    old = surrogate.ATan.__new__(surrogate.ATan)
    old.__setstate__(state)
    assert old.in_spiking_mode is False and old.key == sg.key
    assert pickle.loads(pickle.dumps(sg)).in_spiking_mode is False
