"""What a multi-step node holds as its state ``v`` when the caller has said that nobody will read it.

After a multi-step call a node keeps its last potential ``v`` (one time step of the layer, in the
input's dtype), so that a next call can continue the sequence. A training step that resets the
network as soon as the loss is computed (:class:`flashspike.CapturedStep`) never reads it: keeping it
only holds that memory through the rest of the forward, where the step's memory peaks. Such a caller
sets :data:`DROPS_LAST_POTENTIAL` on the nodes for the forward; each then keeps :data:`DROPPED` instead.

:data:`DROPPED` is not a value: reading anything of it (``node.v.shape``, ``node.v + 1``, ``float(node.v)``,
a comparison) raises an error that says why and how to keep the potential, and so does a second call
of the node before ``reset()``, which would have continued from it. ``reset()`` gives the node its
resting value back, as always.
"""

from __future__ import annotations

__all__ = ["DROPS_LAST_POTENTIAL", "DROPPED", "DroppedPotentialError", "continuing_error"]

# The attribute a caller sets to True on a multi-step node for the calls whose last potential nobody reads.
DROPS_LAST_POTENTIAL = "drops_last_potential"

_WHY = ("the node's last potential was not kept: its call ran inside a flashspike.CapturedStep, which resets the "
        "network once the loss is computed and so drops the neurons' last potentials as they are made (their "
        "memory is then free through the rest of the forward). To read node.v in loss_fn or a hook, or to call "
        "a node twice in one forward, build the step with drop_last_potentials=False")


class DroppedPotentialError(AttributeError):
    """Something of a dropped last potential was read. An AttributeError, so that ``hasattr`` and the
    protocols that probe attributes (copy, pickle) see a plain object without them."""


def _refuse(*args, **kwargs):
    raise DroppedPotentialError(_WHY)


class _Dropped:
    __slots__ = ()

    def __getattr__(self, name):
        raise DroppedPotentialError(_WHY)

    def __repr__(self) -> str:
        return "<dropped last potential: " + _WHY + ">"

    def __reduce__(self):
        return "DROPPED"  # copies and pickles are the one object

    __hash__ = object.__hash__
    __torch_function__ = classmethod(_refuse)  # a torch function given it refuses too


for _name in ("add", "radd", "sub", "rsub", "mul", "rmul", "truediv", "rtruediv", "pow", "rpow", "matmul",
              "rmatmul", "neg", "pos", "abs", "float", "int", "bool", "index", "len", "iter", "getitem", "array",
              "eq", "ne", "lt", "le", "gt", "ge"):
    setattr(_Dropped, f"__{_name}__", _refuse)

DROPPED = _Dropped()


def continuing_error(node_name: str) -> DroppedPotentialError:
    """The error of a call that would continue from :data:`DROPPED` (a second call before ``reset()``)."""
    return DroppedPotentialError(f"{node_name} was called again before reset(), but " + _WHY)
