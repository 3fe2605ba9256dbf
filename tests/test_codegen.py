"""The expression language and the generated neuron step, run as Python through a Triton shim, and
the shared fused autograd Function driven by that Python 'kernel'."""

import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from flashspike import neuron
from flashspike.backends import autograd, layouts, reference
from flashspike.backends.step_code import backward_step, forward_step
from flashspike.codegen import CUDA, TORCH, TRITON, Emitter, var

import bptt
from custom_surrogate import every_surrogate
from grid import Cell, cell_id, option_grid


def test_rendering_in_both_languages():
    x = var("x")
    e = 2.0 * x - 1 / (x + 3)
    cuda, triton = Emitter(CUDA), Emitter(TRITON)
    assert CUDA.render(e) == "((2.0f * x) - (1.0f / (x + 3.0f)))"
    assert TRITON.render(e) == "((2.0 * x) - (1.0 / (x + 3.0)))"
    assert CUDA.render(Emitter.where(x >= 0, 1.0, -1.5)) == "((x >= 0.0f) ? 1.0f : (-1.5f))"
    assert TRITON.render(triton.exp(-x)) == "tl.exp((-x))"
    assert CUDA.render(cuda.abs(x) ** 2) == "(fabsf(x) * fabsf(x))"
    assert CUDA.render(x * 1e-5) == "(x * 1e-05f)"


# Each function in CUDA's accurate float32 spelling, and Triton's (composed where Triton's core lacks it).
SPELLINGS = [
    ("exp", "expf(x)", "tl.exp(x)"), ("log", "logf(x)", "tl.log(x)"), ("sqrt", "sqrtf(x)", "tl.sqrt(x)"),
    ("sin", "sinpif((x * 0.3183098861837907f))", "tl.sin(x)"), ("cos", "cospif((x * 0.3183098861837907f))", None), ("erf", "erff(x)", "tl.erf(x)"),
    ("erfc", "erfcf(x)", "(1.0 - tl.erf(x))"), ("atan", "atanf(x)", None),
]


@pytest.mark.parametrize(("name", "cuda_text", "triton_text"), SPELLINGS, ids=[s[0] for s in SPELLINGS])
def test_function_spellings(name, cuda_text, triton_text):
    x = var("x")
    assert CUDA.render(getattr(Emitter(CUDA), name)(x)) == cuda_text
    if triton_text is not None:
        assert TRITON.render(getattr(Emitter(TRITON), name)(x)) == triton_text


def test_pow_spellings():
    """A non-whole exponent goes through a logarithm; a small whole one becomes products (and one
    division when negative), which is exact to two roundings and much cheaper than CUDA's powf."""
    x = var("x")
    assert CUDA.render(Emitter(CUDA).pow(x, -2.5)) == "exp2f(((-2.5f) * log2f(x)))"
    assert TRITON.render(Emitter(TRITON).pow(x, 0.5)) == "tl.exp((0.5 * tl.log(x)))"
    assert TRITON.render(Emitter(TRITON).pow(x, 5)) == "tl.exp((5.0 * tl.log(x)))"
    assert CUDA.render(Emitter(CUDA).pow(x, 1)) == "x"
    assert CUDA.render(Emitter(CUDA).pow(x, 0)) == "1.0f"
    e = Emitter(CUDA)
    assert CUDA.render(e.pow(x + 1.0, -2)) == "(1.0f / _t1_pow_square)"
    assert e.lines == ["const float _t0_pow_base = (x + 1.0f);",
                       "const float _t1_pow_square = (_t0_pow_base * _t0_pow_base);"]
    e = Emitter(TRITON)
    assert TRITON.render(e.pow(x, 3)) == "(_t0_pow_base * _t1_pow_square)"
    assert e.lines == ["_t0_pow_base = x", "_t1_pow_square = (_t0_pow_base * _t0_pow_base)"]


@pytest.mark.parametrize("k", [-4, -3, -2, -1, 1, 2, 3, 4, -2.5, 0.5, 7.0])
@pytest.mark.parametrize("language", ["cuda", "triton"])
def test_pow_composition_computes_the_power(language, k):
    """The composed text, evaluated with Python's math in place of each language's functions."""
    lang = {"cuda": CUDA, "triton": TRITON}[language]
    e = Emitter(lang)
    text = lang.render(e.pow(var("b"), k))
    env = {"b": 1.7, "tl": SimpleNamespace(exp=math.exp, log=math.log), "exp2f": lambda v: 2.0 ** v,
           "log2f": math.log2}

    def python(source):  # CUDA's float literals without their suffix
        return re.sub(r"(?<![\w.])(\d[\d.e+-]*)f\b", r"\1", source)

    for line in e.lines:
        name, value = line.removeprefix("const float ").rstrip(";").split(" = ")
        env[name] = eval(python(value), env)
    result = eval(python(text), env)
    assert result == pytest.approx(1.7 ** k, rel=1e-12)


def test_rendering_refuses_what_it_cannot_spell():
    x = var("x")
    with pytest.raises(NotImplementedError):
        x ** 3
    with pytest.raises(NotImplementedError, match="triton"):
        TRITON.render(Emitter(CUDA).atan(x))  # a node built for CUDA: Triton spells no atan itself
    with pytest.raises(TypeError, match="constant exponent"):
        Emitter(CUDA).pow(x, x)
    with pytest.raises(ValueError, match="non-finite"):
        x + float("inf")
    with pytest.raises(TypeError):
        x + "1"
    with pytest.raises(TypeError, match="truth value"):
        bool(x > 0)


class _TL:
    """Just enough of triton.language to run generated statements over tensors."""

    exp, log, abs, where = staticmethod(torch.exp), staticmethod(torch.log), staticmethod(torch.abs), staticmethod(TORCH.where)
    sin, cos, erf, floor = staticmethod(torch.sin), staticmethod(torch.cos), staticmethod(torch.erf), staticmethod(torch.floor)


class PythonKernels:
    """A kernel set (kernel_set.py's contract) whose step is the generated Triton text run as Python."""

    def forward(self, x, v_init, p, save_h, store_v_seq, decay=None, spike_bits=False, normalize=None, addend=None):
        # (``spike_bits`` asks for the spikes packed where a kernel set can: this one never does; the calls
        # here normalize nothing and add nothing)
        assert normalize is None and addend is None
        fwd = compile("\n".join(forward_step(p, TRITON)), "<forward>", "exec")
        v = torch.full_like(x[0], p.v_rest) if v_init is None else v_init
        spikes, hs, vs = layouts.new_output(x.shape, x), layouts.new_output(x.shape, x), layouts.new_output(x.shape, x)
        for t in range(x.shape[0]):
            scope = {"tl": _TL, "x": x[t], "v": v}
            exec(fwd, scope)
            spikes[t], hs[t], vs[t] = scope["spike"], scope["h"], scope["v_next"]
            v = scope["v_next"]
        return spikes, (vs if store_v_seq else vs[-1].clone()), (hs if save_h else None)

    def backward(self, h, grad_spike, grad_v_out, p, store_v_seq, need_grad_v_init, sum_grad_x=False, v_init=None,
                 decay=None):
        bwd = compile("\n".join(backward_step(p, TRITON)), "<backward>", "exec")
        grad_x = layouts.new_output(h.shape, h)
        grad_v = torch.zeros_like(h[0])
        if grad_v_out is not None and not store_v_seq:
            grad_v = grad_v + grad_v_out
        for t in reversed(range(h.shape[0])):
            if grad_v_out is not None and store_v_seq:
                grad_v = grad_v + grad_v_out[t]
            gs = torch.zeros_like(h[t]) if grad_spike is None else grad_spike[t]
            scope = {"tl": _TL, "h": h[t], "grad_spike": gs, "grad_v": grad_v}
            exec(bwd, scope)
            grad_x[t] = scope["grad_x"]
            grad_v = scope["grad_v_prev"]
        return (grad_x.sum(0) if sum_grad_x else grad_x), (grad_v if need_grad_v_init else None), None


# Every option set with one surrogate; every surrogate, spiking and smooth, with two option sets.
OPTIONS = option_grid(kinds=("if", "lif"), v_resets=(0.0, 0.2, None)) + [
    Cell(v_reset=v_reset, detach_reset=detach, surrogate=sg) for v_reset, detach in [(0.2, False), (None, True)]
    for spiking in (True, False) for sg in every_surrogate(spiking)]


@pytest.mark.parametrize("cell", OPTIONS, ids=cell_id)
@pytest.mark.parametrize("store_v_seq", [False, True])
def test_generated_step_through_fused_function_matches_reference(cell, store_v_seq):
    node = cell.node("torch", store_v_seq=store_v_seq)
    sg = cell.surrogate
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, 7, generator=g, dtype=torch.float64) + 0.5
    v0 = torch.randn(3, 7, generator=g, dtype=torch.float64) * 0.3
    w = torch.randn(5, 3, 7, generator=g, dtype=torch.float64)

    def loss_and_grads(run):
        xr, vr = x.clone().requires_grad_(), v0.clone().requires_grad_()
        spike, v_last, v_seq = run(xr, vr)
        loss = (spike * w).sum() + (v_last * w[0]).sum() + (0 if v_seq is None else (v_seq * w).sum())
        loss.backward()
        return spike, v_last, xr.grad, vr.grad

    p = node.params()
    ref = loss_and_grads(lambda xr, vr: reference.BACKEND.multi_step(xr, vr, p, store_v_seq))
    got = loss_and_grads(lambda xr, vr: autograd.fused_multi_step(PythonKernels(), xr, vr, p, store_v_seq))
    # Triton composes arctangent and cosine (polynomials) and erfc (1 − erf) to float32's accuracy, not
    # float64's: the smooth primitives of ATan and Erf, and the Fourier series' slope.
    composed = (not sg.spiking and type(sg).__name__ in ("ATan", "Erf", "Gaussian")
                or type(sg).__name__ == "SquarewaveFourierSeries")
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-6 if composed else 1e-10, atol=1e-6 if composed else 1e-12)


def test_fused_function_starts_from_rest_without_materializing_v():
    p = neuron.MultiStepLIFNode(v_reset=-0.25, backend="torch").params()
    x = torch.randn(4, 6, dtype=torch.float64) + 0.5

    class Spy(PythonKernels):
        def forward(self, x, v_init, p, save_h, store_v_seq, decay=None, *rest):
            self.v_init = v_init
            self.save_h = save_h
            return super().forward(x, v_init, p, save_h, store_v_seq, decay, *rest)

    spy = Spy()
    with torch.no_grad():
        spike, v_last, _ = autograd.fused_multi_step(spy, x, -0.25, p, False)
    assert spy.v_init is None and spy.save_h is False  # inference stores nothing for backward
    ref = bptt.run(x, -0.25, leaky=True, vr=-0.25)
    assert torch.equal(spike, ref["s"])
    torch.testing.assert_close(v_last, ref["v"][-1])


def test_triton_cos_is_accurate_for_every_float():
    """Triton's cosine: a reduction by π and one even polynomial for |z| <= 2¹³·π, within 3e-7 of
    float64's value over many periods; beyond, tl.cos (here numpy's), given only those arguments (the
    other lanes give it 0, so a GPU never takes its slow path for them), up to float32's largest."""
    emitter = Emitter(TRITON)
    result = emitter.let("result", emitter.cos(var("z")))
    generator = np.random.default_rng(0)
    huge = np.float32(10.0) ** generator.uniform(4.0, 38.5, 20_000).astype(np.float32)
    z = np.concatenate([np.linspace(-3000.0, 3000.0, 600_001, dtype=np.float32),
                        np.linspace(25_000.0, 2**13 * math.pi, 10_001, dtype=np.float32), huge, -huge,
                        np.float32([1e8, 1e9, 1e30, -1e30, 3.4e38])])
    given_to_cos = []

    def tl_cos(a):
        given_to_cos.append(a)
        return np.cos(a)

    # (Triton's constants are float32: so is every select here)
    where = lambda c, a, b: np.where(c, a, b).astype(np.float32)  # noqa: E731
    scope = {"tl": SimpleNamespace(floor=np.floor, where=where, abs=np.abs, cos=tl_cos), "z": z}
    with np.errstate(all="raise"):  # no lane overflows, even in the branch it discards
        exec("\n".join(emitter.lines), scope)
    got = scope[result.args[0]]
    assert got.dtype == np.float32
    assert np.abs(got.astype(np.float64) - np.cos(z.astype(np.float64))).max() < 3e-7
    (arguments,) = given_to_cos
    near = np.abs(z) <= 2**13 * math.pi
    assert not arguments[near].any() and np.array_equal(arguments[~near], z[~near])
