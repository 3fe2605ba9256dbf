"""The Spike-Driven Transformer (:mod:`flashspike.model.spike_driven_transformer`) under SpikingJelly
2.0.0's ``activation_based.model.spike_driven_transformer`` name: the same classes and builders, with
2.0.0's arguments and ``state_dict`` keys."""

from ...model.spike_driven_transformer import *  # noqa: F401,F403 (the face re-exports the one implementation)
from ...model.spike_driven_transformer import __all__  # noqa: F401
