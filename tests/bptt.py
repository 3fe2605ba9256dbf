"""An independent, deliberately plain float64 implementation of the neuron and its BPTT gradient.

It shares no code with flashspike: the equations are restated from the issue text and the backward is
unrolled by hand, step by step, so the tests can hold the library's autograd and kernels against it.
"""

import math

import torch


def surrogate_grad(name, alpha, u):
    if name == "ATan":
        return alpha / 2 / (1 + (math.pi / 2 * alpha * u) ** 2)
    if name == "Sigmoid":
        s = torch.sigmoid(alpha * u)
        return alpha * s * (1 - s)
    if name == "PiecewiseQuadratic":
        return torch.where(u.abs() > 1 / alpha, torch.zeros_like(u), alpha - alpha**2 * u.abs())
    if name == "SoftSign":
        return alpha / (2 * (1 + (alpha * u).abs()) ** 2)
    raise KeyError(name)


def run(x, v0, *, leaky, tau=2.0, decay_input=True, vth=1.0, vr=0.0, detach=False,
        surrogate=("ATan", 2.0), grad_s=None, grad_v_seq=None, grad_v_last=None):
    """Forward over x [T, ...] from v0, then (if any grad is given) the hand-unrolled backward.

    Returns dict with s, v (all steps), h, and grad_x, grad_v0 when gradients were given.
    """
    x = x.double()
    T = x.shape[0]
    v = torch.full_like(x[0], float(v0)) if not torch.is_tensor(v0) else v0.double().clone()
    v_start = v.clone()
    rest = 0.0 if vr is None else vr
    hs, ss, vs = [], [], []
    for t in range(T):
        if not leaky:
            h = v + x[t]
        elif decay_input:
            h = v + (x[t] - (v - rest)) / tau
        else:
            h = v - (v - rest) / tau + x[t]
        s = (h >= vth).double()
        v = h - vth * s if vr is None else h * (1 - s) + vr * s
        hs.append(h)
        ss.append(s)
        vs.append(v)
    out = {"h": torch.stack(hs), "s": torch.stack(ss), "v": torch.stack(vs), "v_start": v_start}
    if grad_s is None and grad_v_seq is None and grad_v_last is None:
        return out

    a = 1.0 if not leaky else 1 - 1 / tau  # dH/dV[t-1]
    b = 1.0 if not leaky or not decay_input else 1 / tau  # dH/dX[t]
    zeros = torch.zeros_like(x[0])
    g_v = zeros.clone() if grad_v_last is None else grad_v_last.double().clone()
    grad_x = torch.zeros_like(x)
    for t in reversed(range(T)):
        if grad_v_seq is not None:
            g_v = g_v + grad_v_seq[t].double()
        h, s = hs[t], ss[t]
        sg = surrogate_grad(surrogate[0], surrogate[1], h - vth)
        g_s = zeros if grad_s is None else grad_s[t].double()
        # through V[t] = reset(H[t], S[t]):
        if vr is None:
            dv_dh, dv_ds = 1.0, -vth
        else:
            dv_dh, dv_ds = 1 - s, vr - h
        if detach:
            dv_ds = 0.0
        g_h = g_s * sg + g_v * dv_dh + g_v * dv_ds * sg
        grad_x[t] = g_h * b
        g_v = g_h * a
    out["grad_x"] = grad_x
    out["grad_v0"] = g_v
    return out
