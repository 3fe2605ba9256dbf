"""The three memory switches (spike_bits, pooling, batchnorm_recompute) change module classes only:
parameters, buffers, state_dict keys and printed names stay, subclasses keep their own forward, and
``enabled=False`` switches back."""

import pytest
import torch
from torch import nn

from flashspike import layer, neuron
from flashspike.memory import batchnorm_recompute, pooling, spike_bits

SWITCHES = {
    "spike_bits": (spike_bits.store_spike_inputs_in_bits,
                   {nn.Conv2d: spike_bits.BitSavingConv2d, nn.Linear: spike_bits.BitSavingLinear}),
    "pooling": (pooling.store_pool_indices_in_bytes, {nn.MaxPool2d: pooling.BytePositionMaxPool2d}),
    "batchnorm_recompute": (batchnorm_recompute.recompute_h_after_batchnorm,
                            {nn.BatchNorm1d: batchnorm_recompute.RecomputableBatchNorm1d,
                             nn.BatchNorm2d: batchnorm_recompute.RecomputableBatchNorm2d,
                             nn.BatchNorm3d: batchnorm_recompute.RecomputableBatchNorm3d}),
}


def _net():
    torch.manual_seed(0)

    class OwnConv(nn.Conv2d):
        pass

    class OwnNorm(nn.BatchNorm2d):
        pass

    return nn.Sequential(
        layer.SeqToANNContainer(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.MaxPool2d(2)),
        neuron.MultiStepIFNode(),
        layer.SeqToANNContainer(OwnConv(4, 4, 1), OwnNorm(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 5),
                                nn.BatchNorm1d(5)),
        layer.SeqToANNContainer(nn.Conv3d(1, 1, 1), nn.BatchNorm3d(1)),
    )


@pytest.mark.parametrize("name", SWITCHES)
def test_a_switch_changes_classes_only_and_switches_back(name):
    switch, classes = SWITCHES[name]
    net = _net()
    plain_types = [type(m) for m in net.modules()]
    state, text = net.state_dict(), repr(net)
    expected = sum(t in classes for t in plain_types)
    assert expected == {"spike_bits": 2, "pooling": 1, "batchnorm_recompute": 3}[name]
    assert switch(net) == expected
    for before, module in zip(plain_types, net.modules()):
        assert type(module) is classes.get(before, before)  # subclasses and other classes untouched
    assert repr(net) == text and net.state_dict().keys() == state.keys()
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert switch(net) == 0  # nothing left to switch
    assert switch(net, enabled=False) == expected
    assert [type(m) for m in net.modules()] == plain_types


def test_the_modules_answer_to_their_earlier_names_too():
    # flashspike.spike_bits, .pooling and .batchnorm_recompute moved into flashspike.memory; the old
    # names give the same module objects, so a whole model pickled under them loads.
    import importlib
    import pickle

    import flashspike

    for name, module in (("spike_bits", spike_bits), ("pooling", pooling),
                         ("batchnorm_recompute", batchnorm_recompute)):
        assert importlib.import_module(f"flashspike.{name}") is module
        assert getattr(flashspike, name) is module and name in flashspike.__all__
    # protocol 0 names a class by its module's text, which can be edited in place
    text = pickle.dumps(spike_bits.BitSavingLinear, protocol=0)
    old = text.replace(b"flashspike.memory.spike_bits\n", b"flashspike.spike_bits\n")
    assert old != text and pickle.loads(old) is spike_bits.BitSavingLinear
