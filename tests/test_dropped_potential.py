"""The state a multi-step node keeps when its caller drops the last potential: any use of it raises an
error that says why, and nothing takes it for a value."""

import copy
import pickle

import pytest
import torch

from flashspike import neuron
from flashspike.dropped_potential import DROPPED, DROPS_LAST_POTENTIAL, DroppedPotentialError

USES = {
    "attribute": lambda v: v.shape,
    "add": lambda v: v + 1.0,
    "radd": lambda v: 1.0 + v,
    "tensor op": lambda v: torch.zeros(2) * v,
    "torch function": lambda v: torch.where(torch.ones(2, dtype=torch.bool), v, 0.0),
    "float": lambda v: float(v),
    "truth": lambda v: bool(v),
    "compare": lambda v: v == 0.0,
    "index": lambda v: v[0],
}


@pytest.mark.parametrize("use", USES)
def test_every_use_raises_the_reason(use):
    with pytest.raises(DroppedPotentialError, match="CapturedStep, which resets the network"):
        USES[use](DROPPED)
    assert issubclass(DroppedPotentialError, AttributeError) and not hasattr(DROPPED, "shape")


def test_copies_and_pickles_are_the_one_object():
    assert copy.copy(DROPPED) is DROPPED and copy.deepcopy(DROPPED) is DROPPED
    assert pickle.loads(pickle.dumps(DROPPED)) is DROPPED
    assert "dropped last potential" in repr(DROPPED)


@pytest.mark.parametrize("make", [lambda: neuron.MultiStepLIFNode(tau=2.0, backend="torch"),
                                  lambda: neuron.MultiStepIFNode(backend="torch", store_v_seq=True)])
def test_a_node_told_to_drop_keeps_no_potential_and_reset_brings_it_back(make):
    node = make()
    node.__dict__[DROPS_LAST_POTENTIAL] = True
    x = torch.rand(3, 2, 4) * 2
    spikes = node(x)
    assert node.v is DROPPED
    with pytest.raises(DroppedPotentialError, match="called again before reset"):
        node(x)
    node.reset()
    del node.__dict__[DROPS_LAST_POTENTIAL]
    assert node.v == 0.0 and torch.equal(node(x), spikes)  # the same call, now keeping its potential
    assert isinstance(node.v, torch.Tensor) and node.v.shape == (2, 4)
