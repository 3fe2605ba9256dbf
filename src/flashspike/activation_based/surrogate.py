"""Surrogate gradient functions, as SpikingJelly's ``activation_based.surrogate``: flashspike's own
(:mod:`flashspike.surrogate`), whose formulas run on every backend, and the hand-written style of
:mod:`flashspike.surrogate_functions`. ``SurrogateFunctionBase`` here is SpikingJelly 2.x's, whose
hyper-parameters are given by name: ``SurrogateFunctionBase(spiking=True, **kwargs)``.

In SpikingJelly 2.x every surrogate's mode follows ``spiking`` at each call, where 0.0.0.0.14 fixes
that of ``PiecewiseLeakyReLU``, ``SquarewaveFourierSeries`` and ``S2NN`` at construction: here those
three are the same formulas with the mode that follows."""

from .. import surrogate as _surrogate
from ..surrogate import *  # noqa: F401,F403  (the same surrogates under the same names)
from ..surrogate_functions import KeywordSurrogateFunctionBase as SurrogateFunctionBase  # noqa: F401

__all__ = [name for name in _surrogate.__all__ if name != "MultiArgsSurrogateFunctionBase"]


def _mode_follows_spiking(cls: type) -> type:
    """``cls`` whose mode follows ``spiking``, under the same name, in this module."""
    return type(cls.__name__, (cls,), {"mode_fixed_at_construction": False, "__module__": __name__,
                                       "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})


PiecewiseLeakyReLU = _mode_follows_spiking(_surrogate.PiecewiseLeakyReLU)
SquarewaveFourierSeries = _mode_follows_spiking(_surrogate.SquarewaveFourierSeries)
S2NN = _mode_follows_spiking(_surrogate.S2NN)
