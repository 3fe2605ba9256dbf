"""Surrogate functions: forward step, backward against the formulas, primitives and repr."""

import math

import pytest
import torch

from flashspike import surrogate
from flashspike.codegen import CUDA, TRITON, Emitter, var

import bptt

SURROGATES = [surrogate.ATan, surrogate.Sigmoid, surrogate.PiecewiseQuadratic, surrogate.SoftSign]
DEFAULT_ALPHA = {"ATan": 2.0, "Sigmoid": 4.0, "PiecewiseQuadratic": 1.0, "SoftSign": 2.0}


@pytest.mark.parametrize("cls", SURROGATES)
def test_defaults_and_repr(cls):
    sg = cls()
    assert sg.alpha == DEFAULT_ALPHA[cls.__name__] and sg.spiking is True
    assert repr(sg) == f"{cls.__name__}(alpha={sg.alpha}, spiking=True)"
    assert repr(cls(alpha=3, spiking=False)) == f"{cls.__name__}(alpha=3.0, spiking=False)"


@pytest.mark.parametrize("cls", SURROGATES)
def test_spiking_forward_is_heaviside(cls):
    x = torch.tensor([-2.0, -1e-7, 0.0, 1e-7, 3.0, float("nan")])
    y = cls()(x)
    assert y[:5].tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert math.isnan(y[5])  # NaN stays NaN


@pytest.mark.parametrize("cls", SURROGATES)
@pytest.mark.parametrize("alpha", [0.5, 2.0, 5.0])
def test_backward_is_the_stated_derivative(cls, alpha):
    x = torch.linspace(-3, 3, 601, dtype=torch.float64, requires_grad=True)
    cls(alpha=alpha)(x).backward(torch.ones_like(x))
    torch.testing.assert_close(x.grad, bptt.surrogate_grad(cls.__name__, alpha, x.detach()))


@pytest.mark.parametrize("cls", SURROGATES)
def test_derivative_is_the_derivative_of_the_primitive(cls):
    x = torch.linspace(-3, 3, 599, dtype=torch.float64, requires_grad=True)  # avoids the kinks at ±1/α
    cls(alpha=1.3, spiking=False)(x).sum().backward()
    torch.testing.assert_close(x.grad, bptt.surrogate_grad(cls.__name__, 1.3, x.detach()))


@pytest.mark.parametrize("cls", SURROGATES)
def test_primitive_goes_from_zero_to_one(cls):
    g = cls(spiking=False)
    ends = g(torch.tensor([-1e4, 0.0, 1e4], dtype=torch.float64))
    torch.testing.assert_close(ends, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), atol=1e-3, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_backward_is_computed_in_float32(dtype):
    x = torch.tensor([0.01, 0.2, -0.7], dtype=dtype, requires_grad=True)
    surrogate.Sigmoid()(x).backward(torch.ones_like(x))
    expected = bptt.surrogate_grad("Sigmoid", 4.0, x.detach().double()).to(dtype)
    assert x.grad.dtype == dtype
    assert torch.equal(x.grad, expected)


@pytest.mark.parametrize("bad", [0, -1.0, "2", None, True])
def test_bad_alpha(bad):
    if bad is None:
        assert surrogate.ATan(alpha=None).alpha == 2.0  # None means the default
        return
    with pytest.raises(ValueError, match="alpha"):
        surrogate.ATan(alpha=bad)


@pytest.mark.parametrize("cls", SURROGATES)
def test_generated_code_evaluates_to_the_formula(cls):
    # The Triton spelling of the derivative, run as Python over tensors, equals the formula.
    tl = type("tl", (), {"exp": staticmethod(torch.exp), "abs": staticmethod(torch.abs),
                         "where": staticmethod(torch.where)})
    e = Emitter(TRITON)
    e.define("out", cls.derivative(var("u"), 1.7, e))
    u = torch.linspace(-3, 3, 301, dtype=torch.float64)
    scope = {"tl": tl, "u": u}
    exec("\n".join(e.lines), scope)
    torch.testing.assert_close(scope["out"], bptt.surrogate_grad(cls.__name__, 1.7, u))
    # ...and the CUDA spelling is float32 C.
    c = Emitter(CUDA)
    c.define("out", cls.derivative(var("u"), 1.7, c))
    assert all(line.startswith("const float ") and line.endswith(";") for line in c.lines)


def test_key_identifies_formula_and_alpha():
    assert surrogate.ATan().key == surrogate.ATan(2.0).key != surrogate.ATan(3.0).key
    assert surrogate.ATan().key != surrogate.SoftSign().key
