"""The neuron equations, written once.

With S = Θ(H − V_th) and V[−1] = V_reset (0 for soft reset):

- IF charge: H[t] = V[t−1] + X[t]
- LIF charge, decay_input: H[t] = V[t−1] + (X[t] − (V[t−1] − V_reset)) / tau
- LIF charge, not decay_input: H[t] = V[t−1] − (V[t−1] − V_reset) / tau + X[t]
  (V_reset is taken as 0 in both for soft reset)
- hard reset: V[t] = H[t]·(1 − S[t]) + V_reset·S[t]
- soft reset: V[t] = H[t] − V_th·S[t]

The functions use only arithmetic, so they work on tensors (the reference backend) and on symbolic
expressions (kernel code generation, :mod:`flashspike.backends.step_code`) alike.
"""

from __future__ import annotations

from .params import NeuronParams


def charge(v, x, p: NeuronParams):
    """H[t] from V[t−1] and X[t]."""
    if not p.leaky:
        return v + x
    if p.decay_input:
        return v + (x - (v - p.v_rest)) / p.tau
    return v - (v - p.v_rest) / p.tau + x


def charge_slopes(p: NeuronParams) -> tuple[float, float]:
    """(∂H/∂V[t−1], ∂H/∂X[t]) of :func:`charge`: constants, since charging is linear."""
    if not p.leaky:
        return 1.0, 1.0
    return 1.0 - 1.0 / p.tau, (1.0 / p.tau if p.decay_input else 1.0)


def reset(h, spike, p: NeuronParams):
    """V[t] from H[t] and S[t]."""
    if p.v_reset is None:
        return h - p.v_threshold * spike
    return h * (1.0 - spike) + p.v_reset * spike
