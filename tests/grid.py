"""The option grid and the node factory shared by the kernel tests (parity, codegen, compile, CUDA
compile and each backend's own tests): one spelling of "a neuron with these options", so that every
test file builds the same nodes from the same axes.

A :class:`Cell` is one point of the grid (neuron kind, reset, detach_reset, decay_input, surrogate);
:func:`node` builds the multi-step node of a cell for a backend; :func:`option_grid` lists the cells of
the axes a test crosses. The remaining axes (dtype, initial state, memory layout) are listed here too.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from flashspike import neuron
from flashspike import surrogate as surrogates
from flashspike.backends.reference import decay_of
from flashspike.codegen import TORCH
from flashspike.dynamics import charge, reset

from custom_surrogate import surrogate_id

NEURONS = ("if", "lif", "plif", "eif")
# Constants of every grid node unless a test overrides one: off SpikingJelly's defaults, so a constant
# dropped on the way to a kernel shows.
CONSTANTS = dict(v_threshold=0.9, tau=1.7, delta_T=1.0, theta_rh=0.8, v_rest=0.05)
# The surrogates of the option grid: two smooth ones and two piecewise ones (every surrogate has its
# own tests, see custom_surrogate.every_surrogate).
SURROGATES = (surrogates.ATan(), surrogates.Sigmoid(), surrogates.PiecewiseQuadratic(alpha=1.5),
              surrogates.SoftSign())
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
V_INITS = ("rest", "tensor")  # the initial state: the resting potential (a float), or a tensor


@dataclass(frozen=True)
class Cell:
    """One neuron option set. ``decay_input`` matters for LIF and PLIF only."""

    kind: str = "lif"
    decay_input: bool = True
    v_reset: float | None = 0.0
    detach_reset: bool = False
    surrogate: object = field(default_factory=surrogates.ATan)

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.decay_input}-{self.v_reset}-{self.detach_reset}-{surrogate_id(self.surrogate)}"

    def node(self, backend: str = "torch", *, store_v_seq: bool = False, **constants):
        return node(backend, self.kind, decay_input=self.decay_input, v_reset=self.v_reset,
                    detach_reset=self.detach_reset, surrogate=self.surrogate, store_v_seq=store_v_seq, **constants)

    def params(self, **constants):
        return self.node(**constants).params()


def node(backend: str = "torch", kind: str = "lif", *, decay_input: bool = True, v_reset: float | None = 0.0,
         detach_reset: bool = False, surrogate=None, store_v_seq: bool = False, **constants):
    """The multi-step node of neuron ``kind`` (one of NEURONS) with these options, for ``backend``;
    ``constants`` override CONSTANTS (v_threshold, tau, and EIF's delta_T, theta_rh, v_rest)."""
    unknown = set(constants) - set(CONSTANTS)
    if unknown:
        raise TypeError(f"unknown grid constants {sorted(unknown)}; expected some of {sorted(CONSTANTS)}")
    c = {**CONSTANTS, **constants}
    options = dict(v_threshold=c["v_threshold"], v_reset=v_reset, detach_reset=detach_reset, backend=backend,
                   surrogate_function=surrogate if surrogate is not None else surrogates.ATan(),
                   store_v_seq=store_v_seq)
    if kind == "if":
        return neuron.MultiStepIFNode(**options)
    if kind == "lif":
        return neuron.MultiStepLIFNode(c["tau"], decay_input, **options)
    if kind == "plif":
        return neuron.MultiStepParametricLIFNode(c["tau"], decay_input, **options)
    if kind == "eif":
        return neuron.MultiStepEIFNode(c["tau"], c["delta_T"], c["theta_rh"], v_rest=c["v_rest"], **options)
    raise ValueError(f"unknown neuron kind {kind!r}; expected one of {NEURONS}")


def params(kind: str = "lif", **options):
    """The NeuronParams of :func:`node` (same arguments, no backend)."""
    return node("torch", kind, **options).params()


def option_grid(kinds=NEURONS, v_resets=(0.0, None), detach_resets=(False, True), surrogates=(SURROGATES[0],)):
    """Every cell of these axes, decay_input both ways for LIF and PLIF (where it changes the charge)."""
    return [Cell(kind, decay_input, v_reset, detach, sg)
            for kind, decay_input, v_reset, detach, sg in itertools.product(
                kinds, (True, False), v_resets, detach_resets, surrogates)
            if decay_input or kind in ("lif", "plif")]


def cell_id(cell: Cell) -> str:
    return cell.id


# ---- memory layouts: the same values, laid out otherwise ------------------------------------------------


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` ``[T, B, C, H, W]`` (or one step ``[B, C, H, W]``) with C stored innermost, as a channels_last
    convolution leaves its output: the steps stay consecutive dense blocks."""
    return t.movedim(-3, -1).contiguous().movedim(-1, -3)


def time_innermost(t: torch.Tensor) -> torch.Tensor:
    """``t`` with T stored innermost: not blocks of steps, so the kernel backends need a copy."""
    return t.movedim(0, -1).contiguous().movedim(-1, 0)


LAYOUTS = (channels_last, time_innermost)


# ---- which neurons a comparison can hold exactly ----------------------------------------------------------


def far_from_ties(node_ref, x64, v0, tie):
    """Neurons whose float64 pre-reset potential never lies within ``tie`` of the threshold (``node_ref``:
    anything with ``params()``, and PLIF's ``w``)."""
    p = node_ref.params()
    decay = decay_of(getattr(node_ref, "w", None), p, torch.float64)
    v = v0 if isinstance(v0, torch.Tensor) else torch.full_like(x64[0], v0)
    ok = torch.ones_like(x64[0], dtype=torch.bool)
    for x in x64:
        h = charge(v, x, p, decay=decay)
        ok &= (h - p.v_threshold).abs() > tie
        v = reset(h, p.surrogate.output(h - p.v_threshold, TORCH), p)  # (Θ, or the smooth primitive)
    return ok
