"""Source code of one neuron time step, generated for a kernel language.

The step is written once, as functions of values in a math namespace (``forward_values``,
``backward_values``); ``forward_step`` and ``backward_step`` render it as source lines. Both kernel
backends (CUDA through CuPy, and Triton) wrap those lines in their own loop over t; the arithmetic itself comes from :mod:`flashspike.dynamics` and the surrogate's derivative
from :mod:`flashspike.surrogate`, so no kernel restates a formula. All variables are float32.

The backward step is the chain rule through one step. With u = H − V_th, S = Θ(u) and σ = the
surrogate's slope at u (with ``spiking=False``: S = g(u), σ = g'(u)):

    ∂V/∂H (S held fixed) = 1 − S   (hard reset)   or 1      (soft reset)
    ∂V/∂S               = V_reset − H (hard)       or −V_th  (soft); 0 with detach_reset
    ∂L/∂H = ∂L/∂S · σ + ∂L/∂V · (∂V/∂H + ∂V/∂S · σ)
    ∂L/∂X[t] = ∂L/∂H · ∂H/∂X,   ∂L/∂V[t−1] = ∂L/∂H · ∂H/∂V[t−1]

where ∂L/∂S is the gradient of the spike output and ∂L/∂V gathers every path into V[t] (the next
step's charge, a stored v_seq, the final v).

Two neurons need V[t−1] in the backward step, and get it without any extra saved tensor:

- EIF's charge is nonlinear in V: ∂H/∂V[t−1] = 1 + (exp((V[t−1] − θ_rh)/ΔT) − 1)/tau;
- PLIF's decay k = sigmoid(w) is shared by every neuron and step: ∂L/∂w = Σ over t and neurons of
  ∂L/∂H[t] · ∂H[t]/∂w, with ∂H/∂w from :func:`flashspike.dynamics.charge_slope_w`.

V[t−1] is rebuilt from the saved H[t−1] as the forward made it, V[t−1] = reset(H[t−1], Θ(H[t−1] − V_th))
(:func:`previous_v`), and V[−1] is the initial state. PLIF's decay k enters the step as the variable
``decay``, which the kernels read from a tensor argument at run time.
"""

from __future__ import annotations

from ..codegen import Emitter, Language, var
from ..dynamics import charge, charge_slope_w, charge_slopes, reset
from ..params import NeuronParams

# How an output gradient reaches a backward kernel (its GRAD_SPIKE / GRAD_V switch), in both kernel
# languages; :func:`flashspike.backends.layouts.grad_operand` chooses it.
GRAD_ABSENT = 0  # no gradient flows into this output: read nothing, treat as zero
GRAD_DENSE = 1  # a tensor laid out like the output
GRAD_SCALAR = 2  # every element equals element 0 (the expanded ones of y.sum().backward())


def _decay_var(p: NeuronParams):
    return var("decay") if p.parametric else None


def forward_values(x, v, p: NeuronParams, m, decay=None):
    """One step, (X[t], V[t−1]) -> (H[t], S[t], V[t]), in the math namespace ``m``."""
    h = m.let("h", charge(v, x, p, m, decay))
    spike = m.let("spike", p.surrogate.output(h - p.v_threshold, m))
    return h, spike, reset(h, spike, p)


def previous_v(h_prev, p: NeuronParams, m):
    """V[t−1] rebuilt from H[t−1], as the forward step made it."""
    return reset(h_prev, p.surrogate.output(h_prev - p.v_threshold, m), p)


def backward_values(h, grad_spike, grad_v, p: NeuronParams, m, v_prev=None, decay=None):
    """(H[t], ∂L/∂S[t], ∂L/∂V[t]) -> (∂L/∂H[t], ∂L/∂X[t], ∂L/∂V[t−1] through this step, and for PLIF
    this step's term of ∂L/∂w, else None), in ``m``. ``v_prev`` (V[t−1]) is needed when
    ``p.backward_reads_v_prev``, ``decay`` (k) for PLIF."""
    u = m.let("u", h - p.v_threshold)
    sg = m.let("sg", p.surrogate.output_slope(u, m))
    if p.v_reset is None:
        dv_dh, dv_ds = 1.0, -p.v_threshold
    else:
        dv_dh, dv_ds = 1.0 - p.surrogate.output(u, m), p.v_reset - h
    if p.detach_reset:
        grad_h = grad_spike * sg + grad_v * dv_dh
    else:
        grad_h = grad_spike * sg + grad_v * (dv_dh + dv_ds * sg)
    grad_h = m.let("grad_h", grad_h)
    dh_dv, dh_dx = charge_slopes(p, v_prev, m, decay)
    grad_w = grad_h * charge_slope_w(h, v_prev, p, decay) if p.parametric else None
    return grad_h, grad_h * dh_dx, grad_h * dh_dv, grad_w


def forward_step(p: NeuronParams, language: Language) -> list[str]:
    """Statements that read ``x`` (X[t]) and ``v`` (V[t−1]) (and, for PLIF, ``decay``) and define
    ``h``, ``spike``, ``v_next``."""
    e = Emitter(language, prefix="_f")
    for name, value in zip(("h", "spike", "v_next"), forward_values(var("x"), var("v"), p, e, _decay_var(p))):
        e.define(name, value)
    return e.lines


def previous_v_step(p: NeuronParams, language: Language) -> list[str]:
    """Statements that read ``h_prev`` (H[t−1]) and define ``v_rebuilt`` (V[t−1])."""
    e = Emitter(language, prefix="_p")
    e.define("v_rebuilt", previous_v(var("h_prev"), p, e))
    return e.lines


def backward_step(p: NeuronParams, language: Language) -> list[str]:
    """Statements that read ``h`` (H[t]), ``grad_spike`` (∂L/∂S[t]) and ``grad_v`` (∂L/∂V[t]) (and
    ``v_prev``, V[t−1], when ``p.backward_reads_v_prev``; ``decay`` for PLIF) and define ``grad_h``,
    ``grad_x`` (∂L/∂X[t]), ``grad_v_prev`` (∂L/∂V[t−1] through this step) and, for PLIF, ``grad_w``
    (this step's term of ∂L/∂w)."""
    e = Emitter(language, prefix="_b")
    v_prev = var("v_prev") if p.backward_reads_v_prev else None
    values = backward_values(var("h"), var("grad_spike"), var("grad_v"), p, e, v_prev, _decay_var(p))
    for name, value in zip(("grad_h", "grad_x", "grad_v_prev", "grad_w"), values):
        if value is not None:
            e.define(name, value)
    return e.lines
