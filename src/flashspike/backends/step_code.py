"""Source code of one neuron time step, generated for a kernel language.

Both kernel backends (CUDA through CuPy, and Triton) wrap the lines produced here in their own loop
over t; the arithmetic itself comes from :mod:`flashspike.dynamics` and the surrogate's derivative
from :mod:`flashspike.surrogate`, so no kernel restates a formula. All variables are float32.

The backward step is the chain rule through one step. With u = H − V_th, S = Θ(u), σ = g'(u):

    ∂V/∂H (S held fixed) = 1 − S   (hard reset)   or 1      (soft reset)
    ∂V/∂S               = V_reset − H (hard)       or −V_th  (soft); 0 with detach_reset
    ∂L/∂H = ∂L/∂S · σ + ∂L/∂V · (∂V/∂H + ∂V/∂S · σ)
    ∂L/∂X[t] = ∂L/∂H · ∂H/∂X,   ∂L/∂V[t−1] = ∂L/∂H · ∂H/∂V[t−1]

where ∂L/∂S is the gradient of the spike output and ∂L/∂V gathers every path into V[t] (the next
step's charge, a stored v_seq, the final v).
"""

from __future__ import annotations

from ..codegen import Emitter, Language, var
from ..dynamics import charge, charge_slopes, reset
from ..params import NeuronParams
from ..surrogate import heaviside


def forward_step(p: NeuronParams, language: Language) -> list[str]:
    """Statements that read ``x`` (X[t]) and ``v`` (V[t−1]) and define ``h``, ``spike``, ``v_next``."""
    e = Emitter(language, prefix="_f")
    h = e.define("h", charge(var("v"), var("x"), p))
    spike = e.define("spike", heaviside(h - p.v_threshold, e))
    e.define("v_next", reset(h, spike, p))
    return e.lines


def backward_step(p: NeuronParams, language: Language) -> list[str]:
    """Statements that read ``h`` (H[t]), ``grad_spike`` (∂L/∂S[t]) and ``grad_v`` (∂L/∂V[t]) and
    define ``grad_x`` (∂L/∂X[t]) and ``grad_v_prev`` (∂L/∂V[t−1] through this step)."""
    e = Emitter(language, prefix="_b")
    h, grad_spike, grad_v = var("h"), var("grad_spike"), var("grad_v")
    u = e.let("u", h - p.v_threshold)
    sg = e.let("sg", p.surrogate.derivative(u, p.surrogate.alpha, e))
    if p.v_reset is None:
        dv_dh, dv_ds = 1.0, -p.v_threshold
    else:
        dv_dh, dv_ds = 1.0 - heaviside(u, e), p.v_reset - h
    if p.detach_reset:
        grad_h = grad_spike * sg + grad_v * dv_dh
    else:
        grad_h = grad_spike * sg + grad_v * (dv_dh + dv_ds * sg)
    grad_h = e.define("grad_h", grad_h)
    dh_dv, dh_dx = charge_slopes(p)
    e.define("grad_x", grad_h * dh_dx)
    e.define("grad_v_prev", grad_h * dh_dv)
    return e.lines
