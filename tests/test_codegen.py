"""The expression language and the generated neuron step, run as Python through a Triton shim, and
the shared fused autograd Function driven by that Python 'kernel'."""

import itertools

import pytest
import torch

from flashspike import neuron, surrogate
from flashspike.backends import fused, reference
from flashspike.backends.step_code import backward_step, forward_step
from flashspike.codegen import CUDA, TRITON, Emitter, var

import bptt


def test_rendering_in_both_languages():
    x = var("x")
    e = 2.0 * x - 1 / (x + 3)
    assert CUDA.render(e) == "((2.0f * x) - (1.0f / (x + 3.0f)))"
    assert TRITON.render(e) == "((2.0 * x) - (1.0 / (x + 3.0)))"
    assert CUDA.render(Emitter.where(x >= 0, 1.0, -1.5)) == "((x >= 0.0f) ? 1.0f : (-1.5f))"
    assert TRITON.render(Emitter.exp(-x)) == "tl.exp((-x))"
    assert CUDA.render(Emitter.abs(x) ** 2) == "(fabsf(x) * fabsf(x))"
    assert CUDA.render(x * 1e-5) == "(x * 1e-05f)"


def test_rendering_refuses_what_it_cannot_spell():
    x = var("x")
    with pytest.raises(NotImplementedError):
        x ** 3
    with pytest.raises(NotImplementedError, match="triton"):
        TRITON.render(Emitter.atan(x))
    with pytest.raises(ValueError, match="non-finite"):
        x + float("inf")
    with pytest.raises(TypeError):
        x + "1"
    with pytest.raises(TypeError, match="truth value"):
        bool(x > 0)


class _TL:
    """Just enough of triton.language to run generated statements over tensors."""

    exp, abs, where = staticmethod(torch.exp), staticmethod(torch.abs), staticmethod(torch.where)


class PythonKernels:
    """A kernel set (fused.py's contract) whose step is the generated Triton text run as Python."""

    def forward(self, x, v_init, p, save_h, store_v_seq, decay=None):
        fwd = compile("\n".join(forward_step(p, TRITON)), "<forward>", "exec")
        v = torch.full_like(x[0], p.v_rest) if v_init is None else v_init
        spikes, hs, vs = fused.new_output(x.shape, x), fused.new_output(x.shape, x), fused.new_output(x.shape, x)
        for t in range(x.shape[0]):
            scope = {"tl": _TL, "x": x[t], "v": v}
            exec(fwd, scope)
            spikes[t], hs[t], vs[t] = scope["spike"], scope["h"], scope["v_next"]
            v = scope["v_next"]
        return spikes, (vs if store_v_seq else vs[-1].clone()), (hs if save_h else None)

    def backward(self, h, grad_spike, grad_v_out, p, store_v_seq, need_grad_v_init, sum_grad_x=False, v_init=None,
                 decay=None):
        bwd = compile("\n".join(backward_step(p, TRITON)), "<backward>", "exec")
        grad_x = fused.new_output(h.shape, h)
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


OPTIONS = list(itertools.product(
    [("if", True), ("lif", True), ("lif", False)], [0.0, 0.2, None], [False, True],
    [surrogate.ATan(), surrogate.Sigmoid(), surrogate.PiecewiseQuadratic(), surrogate.SoftSign()],
))


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: f"{o[0][0]}-{o[0][1]}-{o[1]}-{o[2]}-{type(o[3]).__name__}")
@pytest.mark.parametrize("store_v_seq", [False, True])
def test_generated_step_through_fused_function_matches_reference(opts, store_v_seq):
    (charge, decay_input), v_reset, detach, sg = opts
    kw = dict(v_threshold=0.9, v_reset=v_reset, surrogate_function=sg, detach_reset=detach, backend="torch",
              store_v_seq=store_v_seq)
    node = neuron.MultiStepIFNode(**kw) if charge == "if" else neuron.MultiStepLIFNode(1.5, decay_input, **kw)
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
    got = loss_and_grads(lambda xr, vr: fused.fused_multi_step(PythonKernels(), xr, vr, p, store_v_seq))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_fused_function_starts_from_rest_without_materializing_v():
    p = neuron.MultiStepLIFNode(v_reset=-0.25, backend="torch").params()
    x = torch.randn(4, 6, dtype=torch.float64) + 0.5

    class Spy(PythonKernels):
        def forward(self, x, v_init, p, save_h, store_v_seq, decay=None):
            self.v_init = v_init
            self.save_h = save_h
            return super().forward(x, v_init, p, save_h, store_v_seq, decay)

    spy = Spy()
    with torch.no_grad():
        spike, v_last, _ = fused.fused_multi_step(spy, x, -0.25, p, False)
    assert spy.v_init is None and spy.save_h is False  # inference stores nothing for backward
    ref = bptt.run(x, -0.25, leaky=True, vr=-0.25)
    assert torch.equal(spike, ref["s"])
    torch.testing.assert_close(v_last, ref["v"][-1])
