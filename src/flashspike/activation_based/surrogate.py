"""Surrogate gradient functions, as SpikingJelly's ``activation_based.surrogate``: flashspike's own
(:mod:`flashspike.surrogate`), whose formulas run on every backend."""

from ..surrogate import *  # noqa: F401,F403  (the same surrogates under the same names)
from ..surrogate import __all__  # noqa: F401
