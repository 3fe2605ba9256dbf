"""The small names of SpikingJelly 0.0.0.0.14's clock_driven API: neuron.AdaptiveBaseNode,
neuron.check_backend, the zoo's conv3x3 / conv1x1 / sequential_forward (against SpikingJelly where
installed)."""

import pytest
import torch
from torch import nn

from flashspike import neuron
from zoo_reference import sj_zoo


class _AdaptiveIF(neuron.AdaptiveBaseNode):
    """IF charge minus the adaptation current, as a user writes on AdaptiveBaseNode."""

    def neuronal_charge(self, x):
        self.v = self.v + x - self.w


def test_adaptive_base_node_by_hand():
    node = _AdaptiveIF(v_threshold=1.0, v_reset=0.0, v_rest=0.0, w_rest=0.0, tau_w=2.0, a=0.5, b=0.25)
    outputs = [node(torch.tensor([x])).item() for x in (0.6, 0.6, 0.6)]
    # step 0: H = 0.6, no spike, W = 0 + (0.5·0.6 − 0)/2 = 0.15, V = 0.6
    # step 1: H = 0.6 + 0.6 − 0.15 = 1.05, spike, W = 0.15 + (0.5·1.05 − 0.15)/2 + 0.25 = 0.5875, V = 0
    # step 2: H = 0 + 0.6 − 0.5875 = 0.0125, no spike
    assert outputs == [0.0, 1.0, 0.0]
    assert node.w.item() == pytest.approx(0.5875 + (0.5 * 0.0125 - 0.5875) / 2)
    node.reset()
    assert node.w == 0.0 and node.v == 0.0


def test_check_backend():
    neuron.check_backend("torch")
    neuron.check_backend("auto")
    with pytest.raises(ValueError, match="unknown backend 'lava'"):
        neuron.check_backend("lava")


@pytest.mark.parametrize("module", ["spiking_resnet", "sew_resnet"])
def test_zoo_convolutions_are_spikingjelly_s(module):
    from flashspike import model

    ours, theirs = getattr(model, module), sj_zoo(module)
    for args in ((3, 8), (8, 16, 2, 4, 2)):
        a, b = ours.conv3x3(*args), theirs.conv3x3(*args)
        assert repr(a) == repr(b) and a.weight.shape == b.weight.shape
    assert repr(ours.conv1x1(8, 16, 2)) == repr(theirs.conv1x1(8, 16, 2))


def test_sequential_forward_matches_spikingjelly():
    from spikingjelly.clock_driven import neuron as sj_neuron

    from flashspike.model import spiking_vgg

    theirs = sj_zoo("spiking_vgg")
    torch.manual_seed(0)
    linear = nn.Linear(3, 4).double()
    x_seq = torch.rand(5, 2, 3, dtype=torch.float64) * 2
    ours_out = spiking_vgg.sequential_forward(nn.Sequential(linear, neuron.MultiStepIFNode(), nn.ReLU()), x_seq)
    theirs_out = theirs.sequential_forward(nn.Sequential(linear, sj_neuron.MultiStepIFNode(), nn.ReLU()), x_seq)
    assert torch.equal(ours_out, theirs_out)
    with pytest.raises(TypeError, match="nn.Sequential"):
        spiking_vgg.sequential_forward([linear], x_seq)
