"""Spikformer (:mod:`flashspike.model.spikformer`) under SpikingJelly 2.0.0's
``activation_based.model.spikformer`` name: the same classes and builders, which take ``[T, N, C, H,
W]`` (or a static ``[N, C, H, W]`` repeated over ``T``) as 2.0.0's do, with 2.0.0's ``state_dict``
keys."""

from ...model.spikformer import *  # noqa: F401,F403 (the face re-exports the one implementation)
from ...model.spikformer import __all__  # noqa: F401
