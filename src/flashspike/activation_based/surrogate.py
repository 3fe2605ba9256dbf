"""Surrogate gradient functions, as SpikingJelly's ``activation_based.surrogate``: flashspike's own
(:mod:`flashspike.surrogate`), whose formulas run on every backend, and the hand-written style of
:mod:`flashspike.surrogate_functions`. ``SurrogateFunctionBase`` here is SpikingJelly 2.x's, whose
hyper-parameters are given by name: ``SurrogateFunctionBase(spiking=True, **kwargs)``."""

from .. import surrogate as _surrogate
from ..surrogate import *  # noqa: F401,F403  (the same surrogates under the same names)
from ..surrogate_functions import KeywordSurrogateFunctionBase as SurrogateFunctionBase  # noqa: F401

__all__ = [name for name in _surrogate.__all__ if name != "MultiArgsSurrogateFunctionBase"]
