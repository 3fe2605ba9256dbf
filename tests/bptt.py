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
        surrogate=("ATan", 2.0), grad_s=None, grad_v_seq=None, grad_v_last=None, plif_w=None, eif=None):
    """Forward over x [T, ...] from v0, then (if any grad is given) the hand-unrolled backward.

    ``plif_w`` (a float) makes the neuron PLIF, 1/tau = sigmoid(plif_w); ``eif`` (a dict of delta_T,
    theta_rh, v_rest) makes it EIF with the given tau. Returns dict with s, v (all steps), h, and
    grad_x, grad_v0 (and grad_w for PLIF) when gradients were given.
    """
    x = x.double()
    T = x.shape[0]
    v = torch.full_like(x[0], float(v0)) if not torch.is_tensor(v0) else v0.double().clone()
    v_start = v.clone()
    rest = 0.0 if vr is None else vr
    hs, ss, vs = [], [], []
    k = None if plif_w is None else 1 / (1 + math.exp(-plif_w))
    v_prevs = []
    for t in range(T):
        v_prevs.append(v)
        if eif is not None:
            dT, theta = eif["delta_T"], eif["theta_rh"]
            h = v + (x[t] + eif["v_rest"] - v + dT * torch.exp((v - theta) / dT)) / tau
        elif k is not None:
            h = v + k * (x[t] - (v - rest)) if decay_input else v - k * (v - rest) + x[t]
        elif not leaky:
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
    if k is not None:
        a, b = 1 - k, (k if decay_input else 1.0)
    if eif is not None:
        b = 1 / tau
    grad_w = 0.0
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
        if eif is not None:  # the slope of the exponential charge at this step's V[t-1]
            a = 1 + (torch.exp((v_prevs[t] - eif["theta_rh"]) / eif["delta_T"]) - 1) / tau
        if k is not None:  # dH/dk from X and V[t-1], times dk/dw = k(1 - k)
            dh_dk = x[t] - (v_prevs[t] - rest) if decay_input else -(v_prevs[t] - rest)
            grad_w = grad_w + (g_h * dh_dk).sum() * k * (1 - k)
        g_v = g_h * a
    out["grad_x"] = grad_x
    out["grad_v0"] = g_v
    if k is not None:
        out["grad_w"] = grad_w
    return out
