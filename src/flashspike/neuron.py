"""Spiking neurons: multi-step nodes ``[T, N, *] -> [T, N, *]`` and single-step nodes ``[N, *] -> [N, *]``.

A neuron is charge, fire, reset: the methods ``neuronal_charge(x)``, ``neuronal_fire()`` and
``neuronal_reset(spike)`` act on the membrane potential ``self.v``, as in SpikingJelly. IF and LIF
implement them with :mod:`flashspike.dynamics` and differ only in the charge, as do PLIF (LIF with a
learnable decay 1/tau = sigmoid(w), the parameter ``w``) and EIF (an exponential charge). A single-step node
always runs them; a multi-step node runs the whole sequence at once instead, by the plan that
:func:`flashspike.backends.choice.plan_for` gives it (a backend's fused kernels, or the reference), unless
its class overrides one of them or one is assigned to the node itself (``node.neuronal_fire = ...``):
then it runs them step by step (the kernels cannot know the override).

A node's options are those :class:`flashspike.params.NeuronParams` declares for its kind: each is checked
when assigned, and ``params()`` reads them into the frozen object every backend receives.

Every node is a :class:`flashspike.base.MemoryModule`: ``v`` (and ``v_threshold``, ``v_reset``,
``v_seq``) are memories, plain attributes that ``state_dict()`` does not carry and DDP does not
broadcast. ``v`` is a Python float (the resting value) until the first call, then a tensor shaped like
one time step. ``reset()`` (or :func:`flashspike.functional.reset_net`) returns every memory to its
value at construction, as SpikingJelly does: a threshold assigned after construction lasts until the
next ``reset()``; ``node.set_reset_value("v_threshold", x)`` changes what ``reset()`` restores.
"""

from __future__ import annotations

import importlib.util
import math
import warnings

import torch
from torch import nn

from . import backends, dynamics, surrogate
from .backends import operators, rebuilt_v_seq, recompute
from .backends.choice import plan_for
from .base import MemoryModule, check_floating
from .dropped_potential import DROPPED, DROPS_LAST_POTENTIAL, continuing_error
from .params import NODE_CHECKS, NeuronParams, kind_of
from .params import flag as _flag
from .params import greater_than_one as _greater_than_one
from .params import number as _number
from .params import positive as _positive

__all__ = ["BaseNode", "IFNode", "LIFNode", "MultiStepIFNode", "MultiStepLIFNode", "ParametricLIFNode",
           "MultiStepParametricLIFNode", "EIFNode", "MultiStepEIFNode", "QIFNode", "GeneralNode",
           "MultiStepGeneralNode", "LIAFNode"]


def _option_checks_of(cls: type) -> dict:
    """The options a node class checks whenever one is assigned (at construction as later), whose change
    rebuilds the cached NeuronParams (see BaseNode.params()): the checks of the options its kind reads
    (NeuronParams declares them), a multi-step node's store_v_seq, and what a class adds or narrows in
    ``_own_option_checks`` (QIFNode's options, EIF's tau)."""
    checks = {**NODE_CHECKS[cls._kind], "store_v_seq": _flag}
    for klass in reversed(cls.__mro__):
        checks.update(klass.__dict__.get("_own_option_checks", {}))
    return checks


_UNSET = object()


class BaseNode(MemoryModule):
    """State, options and the single-step forward shared by every neuron. Called, it runs one time step
    ``[N, *] -> [N, *]`` through ``neuronal_charge`` (IF's, or LIF's when ``leaky``), ``neuronal_fire``
    and ``neuronal_reset``; a subclass may override any of them, as with SpikingJelly's BaseNode."""

    # The kind of charge (see NeuronParams): LIF sets leaky; PLIF and EIF set parametric or exponential too.
    leaky = False
    parametric = False
    exponential = False
    # A class that defines neuronal_charge/fire/reset sets this in its own body when the fused kernels
    # implement exactly those methods (as BaseNode's, through flashspike.dynamics); a subclass that
    # overrides them without it runs them step by step.
    _dynamics_in_kernels = True
    # Whether a class's charge, fire or reset is one the kernels do not implement; decided once per
    # class (__init_subclass__), read on every multi-step call.
    _own_dynamics = False
    # Set per class (__init_subclass__): its kind, and the checks of its options (_option_checks_of).
    _kind = "if"
    _option_checks: dict = {}

    def __init__(
        self,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        surrogate_function: nn.Module | None = None,
        detach_reset: bool = False,
        tau: float = 2.0,
        decay_input: bool = True,
    ):
        super().__init__()
        checks = self._option_checks
        v_threshold = checks["v_threshold"]("v_threshold", v_threshold)
        v_reset = checks["v_reset"]("v_reset", v_reset)
        self.register_memory("v", 0.0 if v_reset is None else v_reset)
        self.register_memory("v_threshold", v_threshold)
        self.register_memory("v_reset", v_reset)
        self.surrogate_function = surrogate.Sigmoid() if surrogate_function is None else surrogate_function
        self.detach_reset = detach_reset
        # the charge's options that this kind reads (a class with options of its own sets them itself)
        for name, value in (("tau", tau), ("decay_input", decay_input)):
            if name in NODE_CHECKS[self._kind]:
                setattr(self, name, value)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._own_dynamics = any(
            not _defining_class(cls, name).__dict__.get("_dynamics_in_kernels", False) for name in _DYNAMICS_METHODS
        )
        cls._kind = kind_of(cls.leaky, cls.parametric, cls.exponential)
        cls._option_checks = _option_checks_of(cls)

    def __setattr__(self, name, value):
        check = self._option_checks.get(name)
        if check is None:
            super().__setattr__(name, value)
            if name in _DYNAMICS_METHODS:  # an instance's own charge, fire or reset, as SpikingJelly honours it
                self._dynamics_assigned()
            return
        value = check(name, value)
        self._check_options({name: value})
        changed = self.__dict__.get(name, _UNSET) != value
        super().__setattr__(name, value)
        if changed and name != "store_v_seq":
            self._options_changed()

    def __delattr__(self, name):
        super().__delattr__(name)
        if name in _DYNAMICS_METHODS:
            self._dynamics_assigned()

    def _dynamics_assigned(self) -> None:
        """After a charge, fire or reset method is assigned to (or deleted from) this node: a multi-step
        node runs its own methods step by step while the node has one of them, as for a subclass."""
        if any(name in self.__dict__ or name in self._modules for name in _DYNAMICS_METHODS):
            self.__dict__["_own_dynamics"] = True
        else:
            self.__dict__.pop("_own_dynamics", None)  # the class's answer again

    def _check_options(self, changed: dict) -> None:
        """Raise ValueError when the options, with ``changed`` in place of the current values, break a
        rule that ties several options together (EIF and QIF have one). Options not yet set (the node
        is being built) are not checked; the last one set is."""

    def _options_changed(self) -> None:
        """Build the kept NeuronParams again, now rather than at the next call: compiled code reads it
        while tracing, where an option (of this node or of another of its class) that changed since the
        last compile is a symbolic number, from which no kernel options text can be made."""
        self.__dict__["_cached_params"] = None
        try:
            self.params()
        except AttributeError:  # the node is being built: the last option its constructor sets builds it
            pass

    def set_reset_value(self, name: str, value) -> None:
        """What ``reset()`` gives memory ``name`` from now on; an option (``v_threshold``, ``v_reset``) is
        checked as when it is assigned."""
        check = self._option_checks.get(name)
        if check is not None:
            value = check(name, value)
            reset_values = {key: rv for key, rv in self._memories_rv.items() if key in self._option_checks}
            self._check_options({**reset_values, name: value})
        super().set_reset_value(name, value)

    def reset(self) -> None:
        """Forget the state: every memory returns to its value at construction (the potential to
        v_reset, or 0 for soft reset; v_threshold and v_reset to what they were given)."""
        super().reset()
        p = self.__dict__.get("_cached_params")
        if p is not None and (p.v_threshold != self.v_threshold or p.v_reset != self.v_reset):
            self._options_changed()

    def params(self) -> NeuronParams:
        """The current options as the frozen object that backends receive.

        Built once and kept until an option is assigned again: the per-call path stays a lookup.
        """
        p = self.__dict__.get("_cached_params")
        if p is None:
            p = self.__dict__["_cached_params"] = NeuronParams.of(self)
        return p

    # Charge, fire, reset: one time step on self.v, the equations of flashspike.dynamics.

    def neuronal_charge(self, x: torch.Tensor) -> None:
        """V[t-1] -> H[t] in ``self.v``, for the input ``x`` of this step."""
        self.v = dynamics.charge(self.v, x, self.params())

    def neuronal_fire(self) -> torch.Tensor:
        """The spike of this step, from ``self.v`` (H[t]) and the threshold."""
        return self.surrogate_function(self.v - self.v_threshold)

    def neuronal_reset(self, spike: torch.Tensor) -> None:
        """H[t] -> V[t] in ``self.v`` after ``spike``."""
        self.v = dynamics.reset(self.v, spike.detach() if self.detach_reset else spike, self.params())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One time step ``[N, *] -> [N, *]`` through charge, fire, reset; the state carries over to the
        next call."""
        check_floating(x, "x")
        self._start_steps(x)
        return self._step(x)

    def _step(self, x: torch.Tensor) -> torch.Tensor:
        """One step through charge, fire, reset; ``self.v`` must already be a tensor."""
        self.neuronal_charge(x)
        spike = self.neuronal_fire()
        self.neuronal_reset(spike)
        return spike

    def _initial_v(self, step_shape: torch.Size, like: torch.Tensor):
        """The kept potential, checked against one time step of the input (``step_shape``, ``like``)."""
        v = self.v
        if not isinstance(v, torch.Tensor):
            return v
        if v.shape != step_shape:
            raise ValueError(
                f"{type(self).__name__} keeps a state of shape {tuple(v.shape)} from an earlier call, but this "
                f"input's step has shape {tuple(step_shape)}. Call functional.reset_net(net) (or node.reset()) "
                "before feeding a batch of another size."
            )
        if v.device != like.device:
            raise ValueError(
                f"{type(self).__name__} keeps a state on {v.device} but the input is on {like.device}; "
                "call functional.reset_net(net) after moving the net."
            )
        return v if v.dtype == like.dtype else v.to(like.dtype)

    def _start_steps(self, step: torch.Tensor) -> None:
        """Put the kept potential in ``self.v`` as a tensor like ``step`` (one time step of the input),
        so that charge, fire and reset methods may treat it as one."""
        v = self._initial_v(step.shape, step)
        self.__dict__["v"] = v if isinstance(v, torch.Tensor) else torch.full_like(step, v)

    def extra_repr(self) -> str:
        return (f"v_threshold={self.v_threshold}, v_reset={self.v_reset}, detach_reset={self.detach_reset}"
                + self._charge_repr())

    def _charge_repr(self) -> str:
        """The charge's options as ``extra_repr`` shows them, after the threshold and reset ones (a
        multi-step node adds its backend after these, as SpikingJelly prints it)."""
        return f", tau={self.tau}" if self.leaky else ""


BaseNode._option_checks = _option_checks_of(BaseNode)
_DYNAMICS_METHODS = frozenset(("neuronal_charge", "neuronal_fire", "neuronal_reset"))


def _check_resting_options(node: BaseNode, changed: dict) -> None:
    """EIF's and QIF's rule, on ``node``'s options with ``changed`` in place (once all three are set): a
    hard reset lies below the threshold and at or below the resting potential."""
    v_threshold, v_rest, v_reset = (changed.get(name, node.__dict__.get(name, _UNSET))
                                    for name in ("v_threshold", "v_rest", "v_reset"))
    if _UNSET in (v_threshold, v_rest, v_reset) or v_reset is None:
        return
    if not (v_threshold > v_reset and v_rest >= v_reset):
        raise ValueError(f"{type(node).__name__} needs v_threshold > v_reset and v_rest >= v_reset, got "
                         f"v_threshold={v_threshold!r}, v_rest={v_rest!r}, v_reset={v_reset!r}")


def _defining_class(cls: type, name: str) -> type:
    return next(klass for klass in cls.__mro__ if name in klass.__dict__)


class _SingleStep(BaseNode):
    """A node that runs one time step per call (BaseNode's forward)."""


_warned_step_loop: set = set()
_is_compiling = torch.compiler.is_compiling
_is_grad_enabled = torch.is_grad_enabled
ADDEND = "_addend"  # see _MultiStep


class _MultiStep(BaseNode):
    # A class without fused kernels of its own sets this to False: its step loop is no surprise.
    _warn_step_loop = True
    # Set on a node by flashspike.memory.store_spike_inputs_in_bits: a kernel backend then also writes
    # the spikes packed a bit each, which a layer after it that keeps its input in bits takes as they
    # are instead of packing them again (backends.packed_bits).
    writes_spike_bits = False
    # Set on a node by a caller that resets the network before anything reads its last potential
    # (flashspike.CapturedStep): a call then keeps dropped_potential.DROPPED as v, not the tensor.
    drops_last_potential = False
    # Set on a node for one call (ADDEND, a tensor shaped like the input) by the caller that adds the
    # spikes to it (a SEW-ResNet block's ADD, see model.common.StepModule.fire): the call then returns
    # that sum, which a kernel set writes in place of the spikes, in the same pass.

    def __init__(self, *args, backend: str = "auto", store_v_seq: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend
        self.store_v_seq = store_v_seq
        self.register_memory("v_seq", None)
        # Without store_v_seq: what the last call left to compute v_seq from on first read (see
        # backends.rebuilt_v_seq), or why it left nothing.
        self.__dict__["_v_seq_kept"] = rebuilt_v_seq.NOT_CALLED

    @property
    def backend(self) -> str:
        """'auto', 'torch', 'cupy' or 'triton'; may be changed at any time, checked at the call."""
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        self._backend = backends.validate_name(name)

    @property
    def v_seq(self) -> torch.Tensor | None:
        """The potential after every step of the last call, ``[T, N, *]``.

        With ``store_v_seq=True`` it is kept by every call (None before the first). Without, it is
        computed on first read from the pre-reset potential H that a differentiated call keeps for
        its backward pass (nothing is kept or computed for it otherwise), and has no gradient path: a
        backward through it raises. Where the call kept nothing to compute it from (no autograd,
        torch.compile, the recompute switch, after backward() or reset(), ...) reading it raises an
        AttributeError that says why."""
        if self.store_v_seq:
            return self.__dict__["v_seq"]
        raise AttributeError  # answered by __getattr__

    @v_seq.setter
    def v_seq(self, value) -> None:
        self.__dict__["v_seq"] = value

    def __getattr__(self, name: str):
        if name == "v_seq":
            state = self.__dict__
            kept = state.get("_v_seq_kept", rebuilt_v_seq.NOT_CALLED)
            v_seq = state["_v_seq_kept"] = rebuilt_v_seq.read(kept, type(self).__name__)  # computed once
            return v_seq
        return super().__getattr__(name)

    def reset(self) -> None:
        super().reset()
        self.__dict__["_v_seq_kept"] = rebuilt_v_seq.NOT_CALLED

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        """The whole sequence ``[T, N, *] -> [T, N, *]`` in one call, continuing from ``self.v``."""
        # The hot path of every training step: each check costs host time, so each is made once.
        if not (isinstance(x_seq, torch.Tensor) and x_seq.is_floating_point()):
            check_floating(x_seq, "x_seq")
        if x_seq.dim() < 2:
            raise ValueError(
                f"{type(self).__name__} expects x_seq of shape [T, N, *] (at least 2 dimensions), "
                f"got shape {tuple(x_seq.shape)}"
            )
        state = self.__dict__  # plain attributes: skip nn.Module.__getattr__/__setattr__ on the hot path
        v_init = state["v"]
        if v_init is DROPPED:
            raise continuing_error(type(self).__name__)
        if isinstance(v_init, torch.Tensor):
            v_init = self._initial_v(x_seq.shape[1:], x_seq)
        if not x_seq.numel():
            return self._empty_call(x_seq)
        if self._own_dynamics:
            recompute.fill_unwritten(x_seq)  # (only a kernel set fires from an input not written yet)
            return self._step_loop(x_seq)
        if _is_compiling():
            # One custom operator that the compiler sees through; it chooses the kernel set as it runs.
            spike_seq, self.v, v_seq = operators.multi_step(self._backend, x_seq, v_init, self.params(), self.store_v_seq,
                                                      self._decay_w())
            if self.store_v_seq:
                self.v_seq = v_seq
            else:
                state["_v_seq_kept"] = rebuilt_v_seq.COMPILED
            return spike_seq
        p = state.get("_cached_params") or self.params()
        # What runs the call, as the chooser decided it; chosen again when it no longer serves (another
        # option, dtype, device type or backend, a surrogate's hyper-parameter assigned in place).
        plan = state.get("_plan")
        if plan is None or not plan.serves(self._backend, p, x_seq):
            plan = state["_plan"] = plan_for(self._backend, x_seq, p)
        store_v_seq = state["store_v_seq"]
        if plan.kernels is None:
            recompute.fill_unwritten(x_seq)
        # The reference keeps each step's H where its graph needs it, from which v_seq may be rebuilt.
        hs = [] if plan.kernels is None and not store_v_seq and _is_grad_enabled() else None
        addend = state.get(ADDEND)
        spike_seq, v, v_seq = plan.multi_step(x_seq, v_init, store_v_seq, self._decay_w(), hs,
                                              state.get("writes_spike_bits", False), addend)
        if store_v_seq:
            state["v_seq"] = v_seq
        if state.get(DROPS_LAST_POTENTIAL, False):
            v = DROPPED
            if not store_v_seq:
                state["_v_seq_kept"] = rebuilt_v_seq.DROPPED_STATE
        elif not store_v_seq:
            state["_v_seq_kept"] = (rebuilt_v_seq.after_call(plan, spike_seq, v, hs) if addend is None
                                    else rebuilt_v_seq.ADDED)
        state["v"] = v
        return spike_seq

    def fires_from_unwritten_input(self) -> bool:
        """Whether a call of this node reads its input only through :meth:`_MultiStep.forward` (no forward of
        its own, no step loop): a BatchNorm may then hand it an output not written yet, from whose input
        a kernel set fires (see :func:`flashspike.backends.recompute.mark_normalized`)."""
        return type(self).forward is _MultiStep.forward and not self._own_dynamics

    def __getstate__(self):
        # The plan's kernel set holds compiled kernels, which neither copy nor pickle: chosen again.
        state = dict(super().__getstate__())
        state.pop("_plan", None)
        state["_v_seq_kept"] = rebuilt_v_seq.NOT_CALLED  # weak references to this call's graph
        return state

    def _decay_w(self):
        """The learnable tensor the charge reads at run time (PLIF's w), or None."""
        return None

    def _step_loop(self, x_seq: torch.Tensor) -> torch.Tensor:
        """The class's own charge, fire and reset methods, once per step, on the input's device."""
        cls = type(self)
        if cls._warn_step_loop and cls not in _warned_step_loop:
            _warned_step_loop.add(cls)
            warnings.warn(
                f"{cls.__name__} has its own neuronal_charge, neuronal_fire or neuronal_reset (in its class or "
                "assigned to the node), which the fused kernels do not know: it runs those methods one step at "
                "a time instead of the backend "
                f"{self._backend!r}. This notice is shown once per class.",
                stacklevel=3,
            )
        self._start_steps(x_seq[0])
        spikes, vs = [], []
        for x in x_seq:
            spikes.append(self._step(x))
            if self.store_v_seq:
                vs.append(self.v)
        if self.store_v_seq:
            self.v_seq = torch.stack(vs)
        else:
            self.__dict__["_v_seq_kept"] = rebuilt_v_seq.OWN_DYNAMICS
        return torch.stack(spikes)

    def _empty_call(self, x_seq: torch.Tensor) -> torch.Tensor:
        # Nothing to simulate: T = 0 keeps the state, N = 0 leaves an empty one. The outputs are made
        # from x_seq so that they stay in its autograd graph (a backward through them gives an empty
        # gradient instead of failing).
        if x_seq.shape[0] > 0:
            self.v = x_seq[-1].clone()
        if self.store_v_seq:
            self.v_seq = x_seq.clone()
        else:
            self.__dict__["_v_seq_kept"] = x_seq.detach()  # empty: holds no memory
        return x_seq.clone()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", backend={self._backend}"


_NEURON_DOC = """
    Args:
        v_threshold: the potential at which the neuron fires.
        v_reset: the potential after a spike (hard reset), or None to subtract v_threshold (soft reset).
        surrogate_function: a :mod:`flashspike.surrogate` module; its derivative replaces the step's
            in the backward pass. Defaults to ``surrogate.Sigmoid()``. Backend 'torch' also takes any
            other function of a tensor.
        detach_reset: detach the spike in the reset term only.{extra}
"""
_LIF_DOC = """
        tau: the membrane time constant (> 0).
        decay_input: whether the input is divided by tau as well."""
_MULTI_DOC = """
        backend: 'auto' (the fastest available for the input's device), 'torch', 'cupy' or 'triton'.
        store_v_seq: keep the potential of every step in ``v_seq`` ([T, N, *]) after each call."""


class IFNode(_SingleStep):
    """Single-step integrate-and-fire neuron: H[t] = V[t−1] + X[t]."""

    __doc__ += _NEURON_DOC.format(extra="")

    def __init__(self, v_threshold=1.0, v_reset=0.0, surrogate_function=None, detach_reset=False):
        super().__init__(v_threshold, v_reset, surrogate_function, detach_reset)


class LIFNode(_SingleStep):
    """Single-step leaky integrate-and-fire neuron (see :mod:`flashspike.dynamics` for the charge)."""

    __doc__ += _NEURON_DOC.format(extra=_LIF_DOC)
    leaky = True

    def __init__(self, tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, surrogate_function=None,
                 detach_reset=False):
        super().__init__(v_threshold, v_reset, surrogate_function, detach_reset, tau, decay_input)


class MultiStepIFNode(_MultiStep):
    """Multi-step integrate-and-fire neuron: the whole ``[T, N, *]`` sequence per call."""

    __doc__ += _NEURON_DOC.format(extra=_MULTI_DOC)

    def __init__(self, v_threshold=1.0, v_reset=0.0, surrogate_function=None, detach_reset=False,
                 backend="auto", store_v_seq=False):
        super().__init__(v_threshold, v_reset, surrogate_function, detach_reset,
                         backend=backend, store_v_seq=store_v_seq)


class MultiStepLIFNode(_MultiStep):
    """Multi-step leaky integrate-and-fire neuron: the whole ``[T, N, *]`` sequence per call."""

    __doc__ += _NEURON_DOC.format(extra=_LIF_DOC + _MULTI_DOC)
    leaky = True

    def __init__(self, tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, surrogate_function=None,
                 detach_reset=False, backend="auto", store_v_seq=False):
        super().__init__(v_threshold, v_reset, surrogate_function, detach_reset, tau, decay_input,
                         backend=backend, store_v_seq=store_v_seq)


class _ParametricLIF:
    """PLIF: LIF's charge with the decay 1/tau = k = sigmoid(w) learned; ``w`` (an ``nn.Parameter``,
    initialised to -log(init_tau - 1)) is read by the kernels at run time and receives its gradient
    from every backend."""

    _dynamics_in_kernels = True  # its neuronal_charge is the kernels' PLIF charge
    leaky = parametric = True

    def __init__(self, init_tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, surrogate_function=None,
                 detach_reset=False, **multi_step):
        init_tau = _number("init_tau", init_tau)
        if not init_tau > 1.0:
            raise ValueError(f"init_tau must be greater than 1 (1/tau = sigmoid(w) lies in (0, 1)), got {init_tau!r}")
        super().__init__(v_threshold, v_reset, surrogate_function, detach_reset, decay_input=decay_input,
                         **multi_step)
        self.w = nn.Parameter(torch.as_tensor(-math.log(init_tau - 1.0)))

    def neuronal_charge(self, x: torch.Tensor) -> None:
        self.v = dynamics.charge(self.v, x, self.params(), decay=torch.sigmoid(self.w.to(x.dtype)))

    def _decay_w(self):
        return self.w

    def _charge_repr(self) -> str:
        with torch.no_grad():
            tau = 1.0 / self.w.sigmoid()
        return f", tau={tau}"


class _ExponentialIF:
    """EIF: H[t] = V[t−1] + (X[t] + v_rest − V[t−1] + delta_T·exp((V[t−1] − theta_rh)/delta_T)) / tau.
    ``v_rest`` is where the leak pulls; a fresh neuron starts at v_reset (0 for soft reset)."""

    leaky = exponential = True
    _own_option_checks = {"tau": _greater_than_one}

    def __init__(self, tau=2.0, delta_T=1.0, theta_rh=0.8, v_threshold=1.0, v_rest=0.0, v_reset=-0.1,
                 surrogate_function=None, detach_reset=False, **multi_step):
        super().__init__(v_threshold, v_reset, surrogate_function, detach_reset, tau, **multi_step)
        # v_rest last: its assignment checks the order of v_reset, v_rest and v_threshold
        self.delta_T, self.theta_rh, self.v_rest = delta_T, theta_rh, v_rest

    def _check_options(self, changed: dict) -> None:
        _check_resting_options(self, changed)

    def _charge_repr(self) -> str:
        return f", tau={self.tau}, delta_T={self.delta_T}, theta_rh={self.theta_rh}"


_PLIF_DOC = """
        init_tau: the membrane time constant tau at initialization (> 1); 1/tau = sigmoid(w) is learned.
        decay_input: whether the input is multiplied by 1/tau as well."""
_EIF_DOC = """
        tau: the membrane time constant (> 1).
        delta_T: the sharpness of the exponential term (> 0).
        theta_rh: the rheobase potential, where the exponential term equals delta_T.
        v_rest: the resting potential the leak pulls towards."""


class ParametricLIFNode(_ParametricLIF, _SingleStep):
    """Single-step parametric LIF neuron (PLIF): LIF with a learnable decay 1/tau = sigmoid(w)."""

    __doc__ += _NEURON_DOC.format(extra=_PLIF_DOC)

    def __init__(self, init_tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, surrogate_function=None,
                 detach_reset=False):
        super().__init__(init_tau, decay_input, v_threshold, v_reset, surrogate_function, detach_reset)


class MultiStepParametricLIFNode(_ParametricLIF, _MultiStep):
    """Multi-step parametric LIF neuron (PLIF) on the whole ``[T, N, *]`` sequence per call; ``w``
    receives its gradient from every backend."""

    __doc__ += _NEURON_DOC.format(extra=_PLIF_DOC + _MULTI_DOC)

    def __init__(self, init_tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, surrogate_function=None,
                 detach_reset=False, backend="auto", store_v_seq=False):
        super().__init__(init_tau, decay_input, v_threshold, v_reset, surrogate_function, detach_reset,
                         backend=backend, store_v_seq=store_v_seq)


class EIFNode(_ExponentialIF, _SingleStep):
    """Single-step exponential integrate-and-fire neuron (see :mod:`flashspike.dynamics`)."""

    __doc__ += _NEURON_DOC.format(extra=_EIF_DOC)

    def __init__(self, tau=2.0, delta_T=1.0, theta_rh=0.8, v_threshold=1.0, v_rest=0.0, v_reset=-0.1,
                 surrogate_function=None, detach_reset=False):
        super().__init__(tau, delta_T, theta_rh, v_threshold, v_rest, v_reset, surrogate_function, detach_reset)


class MultiStepEIFNode(_ExponentialIF, _MultiStep):
    """Multi-step exponential integrate-and-fire neuron on the whole ``[T, N, *]`` sequence per call."""

    __doc__ += _NEURON_DOC.format(extra=_EIF_DOC + _MULTI_DOC)

    def __init__(self, tau=2.0, delta_T=1.0, theta_rh=0.8, v_threshold=1.0, v_rest=0.0, v_reset=-0.1,
                 surrogate_function=None, detach_reset=False, backend="auto", store_v_seq=False):
        super().__init__(tau, delta_T, theta_rh, v_threshold, v_rest, v_reset, surrogate_function, detach_reset,
                         backend=backend, store_v_seq=store_v_seq)


class QIFNode(_SingleStep):
    """Single-step quadratic integrate-and-fire neuron:
    H[t] = V[t−1] + (X[t] + a0·(V[t−1] − v_rest)·(V[t−1] − v_c)) / tau.

    It starts (and resets) at ``v_reset``, not ``v_rest``. Runs in plain PyTorch (no fused kernels).
    """

    __doc__ += _NEURON_DOC.format(extra="""
        tau: the membrane time constant (> 0).
        v_c: the critical potential, above which the potential grows by itself.
        a0: the sharpness of the quadratic term (> 0).
        v_rest: the resting potential.""")
    _own_option_checks = {"tau": _positive, "v_c": _number, "a0": _positive, "v_rest": _number}

    def __init__(self, tau=2.0, v_c=0.8, a0=1.0, v_threshold=1.0, v_rest=0.0, v_reset=-0.1, surrogate_function=None,
                 detach_reset=False):
        super().__init__(v_threshold, v_reset, surrogate_function, detach_reset)
        self.tau = tau
        self.v_c = v_c
        self.a0 = a0
        self.v_rest = v_rest  # last: its assignment checks the order of v_reset, v_rest and v_threshold

    def _check_options(self, changed: dict) -> None:
        _check_resting_options(self, changed)

    def neuronal_charge(self, x: torch.Tensor) -> None:
        v = self.v
        self.v = v + (x + self.a0 * (v - self.v_rest) * (v - self.v_c)) / self.tau

    def extra_repr(self) -> str:
        return super().extra_repr() + f", tau={self.tau}, v_c={self.v_c}, a0={self.a0}, v_rest={self.v_rest}"


def _coefficient(name: str, value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a number or a floating-point tensor, got a {value.dtype} tensor")
        return value.detach().clone()
    # float64 keeps the number exact; as a 0-dim tensor it does not widen a float32 or float16 input.
    return torch.tensor(_number(name, value), dtype=torch.float64)


class GeneralNode(_SingleStep):
    """Single-step neuron with a general linear charge: H[t] = a·V[t−1] + b·X[t] + c.

    ``a``, ``b`` and ``c`` are numbers or tensors that broadcast against one step of the input; they
    are buffers (saved by ``state_dict()``, moved by ``.to()``). Runs in plain PyTorch (no fused kernels).
    """

    __doc__ += _NEURON_DOC.format(extra="""
        a, b, c: the coefficients of the charge.""")

    def __init__(self, a, b, c=0.0, v_threshold=1.0, v_reset=0.0, surrogate_function=None, detach_reset=False):
        super().__init__(v_threshold, v_reset, surrogate_function, detach_reset)
        self.register_buffer("a", _coefficient("a", a))
        self.register_buffer("b", _coefficient("b", b))
        self.register_buffer("c", _coefficient("c", c))

    def neuronal_charge(self, x: torch.Tensor) -> None:
        self.v = self.a * self.v + self.b * x + self.c


class MultiStepGeneralNode(_MultiStep, GeneralNode):
    """Multi-step :class:`GeneralNode`: runs its charge, fire and reset once per step, whatever the
    ``backend`` (recorded for :func:`flashspike.functional.set_backend`, but there are no fused kernels
    for this charge)."""

    __doc__ += _NEURON_DOC.format(extra="""
        a, b, c: the coefficients of the charge.""" + _MULTI_DOC)
    _warn_step_loop = False

    def __init__(self, a, b, c, v_threshold=1.0, v_reset=0.0, surrogate_function=None, detach_reset=False,
                 backend="torch", store_v_seq=False):
        super().__init__(a, b, c, v_threshold, v_reset, surrogate_function, detach_reset, backend=backend,
                         store_v_seq=store_v_seq)


class LIAFNode(LIFNode):
    """Single-step leaky integrate and analog fire neuron (LIAF-Net, arXiv:2011.06176): charges, fires
    and resets as :class:`LIFNode`, but outputs ``act(H[t] − v_threshold)`` (``threshold_related``) or
    ``act(H[t])`` instead of the spike. Its outputs are not binary.

    Args:
        act: the activation applied to the charged potential (any callable, e.g. ``torch.relu``).
        threshold_related: whether ``act`` sees the potential relative to the threshold.
        *args, **kwargs: as :class:`LIFNode`.
    """

    def __init__(self, act, threshold_related: bool, *args, **kwargs):
        if not callable(act):
            raise TypeError(f"act must be callable (a function or module), got {act!r}")
        super().__init__(*args, **kwargs)
        self.act = act
        self.threshold_related = _flag("threshold_related", threshold_related)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_floating(x, "x")
        self._start_steps(x)
        self.neuronal_charge(x)
        y = self.act(self.v - self.v_threshold if self.threshold_related else self.v)
        self.neuronal_reset(self.neuronal_fire())
        return y


_BACKEND_PACKAGES = {"cupy": "cupy", "triton": "triton"}


def check_backend(backend: str) -> None:
    """Raise unless ``backend`` is a known backend name whose package (CuPy, Triton) is installed."""
    backends.validate_name(backend)
    package = _BACKEND_PACKAGES.get(backend)
    if package is not None and importlib.util.find_spec(package) is None:
        raise ImportError(f"backend {backend!r} needs the package {package!r}, which is not installed")


def __getattr__(name: str):
    # AdaptiveBaseNode (a neuron with an adaptation current w) lives with the step-mode neurons, which
    # import this module: it is looked up on first use.
    if name == "AdaptiveBaseNode":
        from .activation_based.neuron import AdaptBaseNode
        return AdaptBaseNode
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
