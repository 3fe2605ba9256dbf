"""The options of one neuron layer, declared once, frozen, as every backend receives them.

Each option is one field of :class:`NeuronParams`, declared with :func:`option`: its default, the
:class:`OptionRule` that checks a value and reads it back from text, the node attribute that holds it,
and the neuron kinds whose equations read it. Everything else is derived from those declarations:

- the checks a node runs when one of its kind's options is assigned (:data:`NODE_CHECKS`, used by
  :mod:`flashspike.neuron`), and the same checks on every NeuronParams built;
- the params a node runs with (:meth:`NeuronParams.of`: the options its kind reads, from its attributes);
- the key of the compiled kernels (:attr:`NeuronParams.key`: the options its kind reads, and the surrogate's key);
- the text the compiled operators carry, and its reading back (:attr:`NeuronParams.text`,
  :meth:`NeuronParams.from_text`).

A new option is one more :func:`option` field here, plus its use in the equations
(:mod:`flashspike.dynamics`, from which the reference and both kernel languages are generated).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import MISSING, dataclass, field, fields
from typing import Callable, NamedTuple

import torch

from .surrogate import ATan, SurrogateFunction

__all__ = ["NeuronParams", "OptionRule", "option", "NODE_CHECKS", "KINDS", "kind_of", "number", "finite_or_none",
           "positive", "greater_than_one", "flag", "callable_surrogate"]


# ---- checks: each returns the value as kept, or raises an error that names the option ----

def number(name: str, value, *, positive: bool = False) -> float:
    if isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a number, got a tensor of shape {tuple(value.shape)}: a neuron's options are "
                        "one number for the whole layer (per-neuron values are not supported; .item() turns a "
                        "one-element tensor into a number)")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return value


def finite_or_none(name: str, value) -> float | None:
    return None if value is None else number(name, value)


def positive(name: str, value) -> float:
    return number(name, value, positive=True)


def greater_than_one(name: str, value) -> float:
    value = number(name, value)
    if not value > 1.0:
        raise ValueError(f"{name} must be greater than 1, got {value!r}")
    return value


def flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def callable_surrogate(name: str, value):
    if not callable(value):
        raise TypeError(
            f"{name} must be callable: a flashspike.surrogate module such as surrogate.ATan() (every backend) or any "
            f"function of a tensor (backend 'torch' only), got {value!r}"
        )
    return value


_BOOLS = {"True": True, "False": False}


def _float_or_none(text: str) -> float | None:
    return None if text == "None" else float(text)


class OptionRule(NamedTuple):
    """How an option's value is checked (``check(name, value)``) and read back from its text (``parse``,
    the inverse of ``repr``, or of the surrogate's :attr:`~flashspike.surrogate.SurrogateFunction.text`)."""

    check: Callable
    parse: Callable[[str], object]


FLAG = OptionRule(flag, _BOOLS.__getitem__)
NUMBER = OptionRule(number, float)
POSITIVE = OptionRule(positive, float)
NUMBER_OR_NONE = OptionRule(finite_or_none, _float_or_none)
SURROGATE = OptionRule(callable_surrogate, SurrogateFunction.from_text)

#: The neuron kinds, by the charge equation of :mod:`flashspike.dynamics` they run.
KINDS = ("if", "lif", "plif", "eif")


def option(default=MISSING, *, rule: OptionRule, attribute: str | None = None, kinds: tuple | None = None,
           sets_kind: bool = False, compare: bool = True):
    """One option of :class:`NeuronParams`: ``rule`` checks it; a node holds it as ``attribute`` (the
    field's own name by default); the equations of ``kinds`` read it (None: every kind). A ``sets_kind``
    option (``leaky``, ``parametric``, ``exponential``) is a class attribute of the node that selects the
    charge equation."""
    metadata = {"rule": rule, "attribute": attribute, "kinds": kinds, "sets_kind": sets_kind}
    return field(default=default, compare=compare, metadata=metadata)


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

    leaky: bool = option(rule=FLAG, sets_kind=True)
    v_threshold: float = option(rule=NUMBER)
    v_reset: float | None = option(rule=NUMBER_OR_NONE)
    detach_reset: bool = option(rule=FLAG)
    surrogate: SurrogateFunction = option(rule=SURROGATE, attribute="surrogate_function", compare=False)
    tau: float = option(2.0, rule=POSITIVE, kinds=("lif", "eif"))
    decay_input: bool = option(True, rule=FLAG, kinds=("lif", "plif"))
    parametric: bool = option(False, rule=FLAG, sets_kind=True)
    exponential: bool = option(False, rule=FLAG, sets_kind=True)
    delta_T: float = option(1.0, rule=POSITIVE, kinds=("eif",))
    theta_rh: float = option(0.8, rule=NUMBER, kinds=("eif",))
    resting_potential: float = option(0.0, rule=NUMBER, attribute="v_rest", kinds=("eif",))
    # Every option but the surrogate as ``name=value`` pairs joined by commas (floats by repr, which
    # reads back exactly), and the options that the kernels of this kind depend on: made here, once,
    # because compiled code reads them while it traces, where an option changed since the last
    # compile may be a symbolic number that no text can hold.
    _fields_text: str = field(init=False, compare=False, repr=False)
    _options_key: tuple = field(init=False, compare=False, repr=False)

    def __post_init__(self):
        for f in _OPTIONS:
            checked = f.metadata["rule"].check(f.name, getattr(self, f.name))
            object.__setattr__(self, f.name, checked)
        if (self.parametric or self.exponential) and not self.leaky:
            raise ValueError("a parametric (PLIF) or exponential (EIF) neuron is leaky: pass leaky=True")
        if self.parametric and self.exponential:
            raise ValueError("a neuron is either parametric (PLIF) or exponential (EIF), not both")
        text = ",".join(f"{f.name}={getattr(self, f.name)!r}" for f in _OPTIONS if f.name != "surrogate")
        object.__setattr__(self, "_fields_text", text)
        kind = self.kind
        object.__setattr__(self, "_options_key", (kind, *(getattr(self, f.name) for f in _KEYED[kind])))

    @classmethod
    def of(cls, node) -> "NeuronParams":
        """The options of ``node`` (a neuron module): its ``sets_kind`` class attributes, then each option
        its kind reads, from the option's attribute; an option the node does not hold takes its default
        (one without a default raises AttributeError: the node is still being built)."""
        flags = {f.name: getattr(node, f.name) for f in _KIND_FLAGS}
        values = {}
        for f in _READ[kind_of(**flags)]:
            attribute = f.metadata["attribute"] or f.name
            values[f.name] = getattr(node, attribute) if f.default is MISSING else getattr(node, attribute, f.default)
        return cls(**flags, **values)

    @property
    def text(self) -> str:
        """Every option as ``name=value`` pairs joined by commas, the surrogate by its
        :attr:`~flashspike.surrogate.SurrogateFunction.text`: what the compiled operators receive (one
        string, because the dispatcher's per-argument work grows with the argument count), and what
        :meth:`from_text` reads back. Both parts are texts made when their values were set."""
        return f"{self._fields_text},surrogate={self.surrogate.text}"

    @classmethod
    def from_text(cls, text: str) -> "NeuronParams":
        """The NeuronParams whose :attr:`text` is ``text``; a ValueError that says what was expected otherwise."""
        try:
            pairs = dict(item.split("=", 1) for item in text.split(","))
            if set(pairs) != _NAMES:
                raise ValueError(f"fields {sorted(pairs)} instead of {sorted(_NAMES)}")
            values = {f.name: f.metadata["rule"].parse(pairs[f.name]) for f in _OPTIONS}
            return cls(**values)
        except (ValueError, KeyError, TypeError, SyntaxError) as err:
            example = cls(leaky=True, v_threshold=1.0, v_reset=0.0, detach_reset=False, surrogate=ATan())
            raise ValueError(
                f"bad neuron options {text!r}: expected what flashspike.params.NeuronParams.text writes, e.g. "
                f"{example.text!r} ({type(err).__name__}: {err})"
            ) from err

    @property
    def kind(self) -> str:
        """'if', 'lif', 'plif' or 'eif': which charge equation of :mod:`flashspike.dynamics` applies."""
        return kind_of(self.leaky, self.parametric, self.exponential)

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
    def surrogate_state(self):
        """What of the surrogate the kernels depend on and may change in place (its mode and
        hyper-parameters): its key, a new object after each change; None for a callable that is no
        :class:`~flashspike.surrogate.SurrogateFunction`."""
        surrogate = self.surrogate
        return surrogate.key if isinstance(surrogate, SurrogateFunction) else None

    @property
    def key(self) -> tuple:
        """The kind, the options its equations read, and the surrogate's key."""
        return (*self._options_key, self.surrogate.key)


def kind_of(leaky: bool, parametric: bool, exponential: bool) -> str:
    """The kind ('if', 'lif', 'plif' or 'eif') that these ``sets_kind`` options select."""
    if not leaky:
        return "if"
    if parametric:
        return "plif"
    return "eif" if exponential else "lif"


_OPTIONS = tuple(f for f in fields(NeuronParams) if f.init)
_NAMES = frozenset(f.name for f in _OPTIONS)
_KIND_FLAGS = tuple(f for f in _OPTIONS if f.metadata["sets_kind"])
# kind -> the options its equations read (those a node of that kind holds), and those among them
# that the kernels' key holds (the surrogate's key is added to it at each call).
_READ = {kind: tuple(f for f in _OPTIONS if not f.metadata["sets_kind"]
                     and (f.metadata["kinds"] is None or kind in f.metadata["kinds"])) for kind in KINDS}
_KEYED = {kind: tuple(f for f in _READ[kind] if f.name != "surrogate") for kind in KINDS}

#: kind -> {node attribute: check} for the options that kind's equations read: what a node of that kind
#: checks when one is assigned.
NODE_CHECKS = {kind: {f.metadata["attribute"] or f.name: f.metadata["rule"].check for f in _READ[kind]}
               for kind in KINDS}
