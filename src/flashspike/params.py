"""The options of one neuron layer, frozen, as every backend receives them."""

from __future__ import annotations

from dataclasses import dataclass, field

from .surrogate import SurrogateFunction


@dataclass(frozen=True)
class NeuronParams:
    """Everything that defines a neuron's dynamics, per layer and constant during a call.

    ``leaky`` selects LIF (True) or IF (False) charging; ``tau`` and ``decay_input`` only matter for
    LIF. ``v_reset=None`` means soft reset (subtract the threshold). ``key`` identifies the compiled
    kernel that implements these options.
    """

    leaky: bool
    v_threshold: float
    v_reset: float | None
    detach_reset: bool
    surrogate: SurrogateFunction = field(compare=False)
    tau: float = 2.0
    decay_input: bool = True

    @property
    def v_rest(self) -> float:
        """The potential a fresh neuron starts from: v_reset, or 0 for soft reset."""
        return 0.0 if self.v_reset is None else self.v_reset

    @property
    def key(self) -> tuple:
        leak = (self.tau, self.decay_input) if self.leaky else None
        return (leak, self.v_threshold, self.v_reset, self.detach_reset, self.surrogate.key)
