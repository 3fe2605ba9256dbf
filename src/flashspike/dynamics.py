"""The neuron equations, written once.

With S = Θ(H − V_th) and V[−1] = V_reset (0 for soft reset):

- IF charge: H[t] = V[t−1] + X[t]
- LIF charge, decay_input: H[t] = V[t−1] + (X[t] − (V[t−1] − V_reset)) / tau
- LIF charge, not decay_input: H[t] = V[t−1] − (V[t−1] − V_reset) / tau + X[t]
  (V_reset is taken as 0 in both for soft reset)
- PLIF charge: LIF's with 1/tau = k = sigmoid(w), w learnable; k is a runtime value, not a constant
- EIF charge: H[t] = V[t−1] + (X[t] + V_rest − V[t−1] + ΔT·exp((V[t−1] − θ_rh) / ΔT)) / tau
  (V_rest is EIF's own resting potential, ``resting_potential``; the neuron starts at V_reset)
- hard reset: V[t] = H[t]·(1 − S[t]) + V_reset·S[t]
- soft reset: V[t] = H[t] − V_th·S[t]

The functions use only arithmetic and the math namespace ``m`` (see :mod:`flashspike.codegen`), so
they work on tensors (the reference backend) and on symbolic expressions (kernel code generation,
:mod:`flashspike.backends.step_code`) alike. ``decay`` is PLIF's k: a tensor for the reference, a
symbol read from a kernel argument for the kernels.
"""

from __future__ import annotations

from .codegen import TORCH
from .params import NeuronParams


def _decay(p: NeuronParams, decay):
    """PLIF's k, which must be given."""
    if decay is None:
        raise ValueError("a parametric (PLIF) neuron's charge needs its decay k = sigmoid(w)")
    return decay


def charge(v, x, p: NeuronParams, m=TORCH, decay=None):
    """H[t] from V[t−1] and X[t]. (LIF and EIF divide by their constant tau, as SpikingJelly does,
    so a float64 reference agrees with it to the last bit.)"""
    if not p.leaky:
        return v + x
    if p.exponential:
        return v + (x + p.resting_potential - v + p.delta_T * m.exp((v - p.theta_rh) / p.delta_T)) / p.tau
    if p.parametric:
        k = _decay(p, decay)
        if p.decay_input:
            return v + (x - (v - p.v_rest)) * k
        return v - (v - p.v_rest) * k + x
    if p.decay_input:
        return v + (x - (v - p.v_rest)) / p.tau
    return v - (v - p.v_rest) / p.tau + x


def charge_slopes(p: NeuronParams, v=None, m=TORCH, decay=None):
    """(∂H/∂V[t−1], ∂H/∂X[t]) of :func:`charge`. Constants for IF and LIF (numbers); PLIF's depend on
    k (``decay``) and EIF's ∂H/∂V[t−1] on V[t−1] (``v``)."""
    if not p.leaky:
        return 1.0, 1.0
    if p.exponential:
        return 1.0 + (m.exp((v - p.theta_rh) / p.delta_T) - 1.0) / p.tau, 1.0 / p.tau
    k = _decay(p, decay) if p.parametric else 1.0 / p.tau
    return 1.0 - k, (k if p.decay_input else 1.0)


def charge_slope_w(h, v, p: NeuronParams, decay):
    """∂H[t]/∂w of PLIF's charge at H[t] and V[t−1], with k = sigmoid(w), so ∂k/∂w = k·(1 − k).

    With decay_input, H − V[t−1] = k·(X − (V[t−1] − V_reset)) = k·∂H/∂k, hence
    ∂H/∂w = (H − V[t−1])·(1 − k): X is not needed, and nothing is divided by k (which may be tiny).
    Without, ∂H/∂k = −(V[t−1] − V_reset), hence ∂H/∂w = (V_reset − V[t−1])·k·(1 − k).
    """
    if p.decay_input:
        return (h - v) * (1.0 - decay)
    return (p.v_rest - v) * (decay * (1.0 - decay))


def reset(h, spike, p: NeuronParams):
    """V[t] from H[t] and S[t]."""
    if p.v_reset is None:
        return h - p.v_threshold * spike
    return h * (1.0 - spike) + p.v_reset * spike
