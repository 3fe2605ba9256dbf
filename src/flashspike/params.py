"""The options of one neuron layer, frozen, as every backend receives them."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from .surrogate import SurrogateFunction


@dataclass(frozen=True)
class NeuronParams:
    """Everything that defines a neuron's dynamics, per layer and constant during a call.

    ``leaky`` selects a leaky charge (LIF, PLIF, EIF) over IF's. Among leaky neurons, ``parametric``
    (PLIF) makes the decay 1/tau a learnable tensor given to every call instead of the constant
    ``tau``, and ``exponential`` (EIF) adds the exponential term with ``delta_T`` and ``theta_rh`` and
    leaks towards ``resting_potential``. ``decay_input`` matters for LIF and PLIF. ``v_reset=None``
    means soft reset (subtract the threshold). ``key`` identifies the compiled kernel that implements
    these options (PLIF's decay is a kernel argument, so it is not part of the key).
    """

    leaky: bool
    v_threshold: float
    v_reset: float | None
    detach_reset: bool
    surrogate: SurrogateFunction = field(compare=False)
    tau: float = 2.0
    decay_input: bool = True
    parametric: bool = False
    exponential: bool = False
    delta_T: float = 1.0
    theta_rh: float = 0.8
    resting_potential: float = 0.0
    # Every option but the surrogate as ``name=value`` pairs joined by commas (floats by repr, which
    # reads back exactly): made here, once, because compiled code reads it while it traces, where an
    # option changed since the last compile may be a symbolic number that no text can hold.
    text: str = field(init=False, compare=False, repr=False)

    def __post_init__(self):
        if (self.parametric or self.exponential) and not self.leaky:
            raise ValueError("a parametric (PLIF) or exponential (EIF) neuron is leaky: pass leaky=True")
        if self.parametric and self.exponential:
            raise ValueError("a neuron is either parametric (PLIF) or exponential (EIF), not both")
        text = ",".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.init and f.name != "surrogate")
        object.__setattr__(self, "text", text)

    @property
    def kind(self) -> str:
        """'if', 'lif', 'plif' or 'eif': which charge equation of :mod:`flashspike.dynamics` applies."""
        if not self.leaky:
            return "if"
        if self.parametric:
            return "plif"
        return "eif" if self.exponential else "lif"

    @property
    def v_rest(self) -> float:
        """The potential a fresh neuron starts from: v_reset, or 0 for soft reset."""
        return 0.0 if self.v_reset is None else self.v_reset

    @property
    def backward_reads_v_prev(self) -> bool:
        """Whether the backward pass needs V[t−1] (rebuilt from H[t−1]): a charge slope that depends
        on it (EIF) or the gradient of PLIF's decay."""
        return self.parametric or self.exponential

    @property
    def key(self) -> tuple:
        kind = self.kind
        if kind == "lif":
            charge = (kind, self.tau, self.decay_input)
        elif kind == "plif":
            charge = (kind, self.decay_input)
        elif kind == "eif":
            charge = (kind, self.tau, self.delta_T, self.theta_rh, self.resting_potential)
        else:
            charge = None
        return (charge, self.v_threshold, self.v_reset, self.detach_reset, self.surrogate.key)
