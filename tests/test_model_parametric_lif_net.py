"""The parametric-LIF nets against SpikingJelly 0.0.0.0.14's: the same state_dict keys for every net,
and equal outputs and gradients (input, weights and each neuron's learned decay ``w``) in float64, in
training mode with the dropouts on."""

import pytest
import torch
from torch import nn

from flashspike import functional, neuron, surrogate
from zoo_reference import assert_matches_reference, key_shapes, on_meta, sj_neuron, sj_zoo, unfilled


NETS = ["MNISTNet", "FashionMNISTNet", "NMNISTNet", "CIFAR10Net", "CIFAR10DVSNet", "DVSGestureNet"]
PLIF_OPTIONS = {"init_tau": 2.0, "detach_reset": True, "v_threshold": 0.5}


def _nets():
    from flashspike.model import parametric_lif_net

    return parametric_lif_net


@pytest.mark.parametrize("multi_step", [False, True], ids=["single_step", "multi_step"])
@pytest.mark.parametrize("name", NETS)
def test_state_dict_keys_equal_spikingjelly_for_every_net(name, multi_step):
    theirs = sj_zoo("parametric_lif_net")
    prefix, node = ("MultiStep", "MultiStepParametricLIFNode") if multi_step else ("", "ParametricLIFNode")
    sj_class, sj_options = sj_neuron(node)
    ours = on_meta(lambda: getattr(_nets(), prefix + name)(8, getattr(neuron, node)))
    reference = on_meta(lambda: getattr(theirs, prefix + name)(8, sj_class, **sj_options))
    assert key_shapes(ours) == key_shapes(reference)
    assert "sn1.w" in key_shapes(ours)


def _pair(class_name, node, options, channels=8):
    ours = unfilled(lambda: getattr(_nets(), class_name)(channels, getattr(neuron, node), backend="torch",
                                                          surrogate_function=surrogate.ATan(), **options)
                    if node.startswith("MultiStep") else
                    getattr(_nets(), class_name)(channels, getattr(neuron, node), surrogate_function=surrogate.ATan(),
                                                 **options))
    sj_class, sj_options = sj_neuron(node, **options)
    torch.manual_seed(0)
    theirs = getattr(sj_zoo("parametric_lif_net"), class_name)(channels, sj_class, **sj_options)
    last_fc = [m for name, m in theirs.named_children() if name.startswith("fc")][-1]
    with torch.no_grad():
        last_fc.weight.mul_(4)  # PyTorch's default init leaves the output neurons silent over a few steps
    return ours.double(), theirs.double()


def test_multi_step_mnist_net_equals_spikingjelly():
    ours, theirs = _pair("MultiStepMNISTNet", "MultiStepParametricLIFNode", PLIF_OPTIONS)
    torch.manual_seed(1)
    assert_matches_reference(ours, theirs, torch.rand(3, 1, 28, 28, dtype=torch.float64) * 3, T=3)
    assert ours.sn1.w.grad.abs() > 0 and ours.sn4.w.grad.abs() > 0


def test_multi_step_cifar10_dvs_net_equals_spikingjelly():
    ours, theirs = _pair("MultiStepCIFAR10DVSNet", "MultiStepParametricLIFNode", PLIF_OPTIONS, channels=4)
    rates = []
    ours.sn6.register_forward_hook(lambda m, args, out: rates.append(out.mean().item()))
    torch.manual_seed(1)
    assert_matches_reference(ours, theirs, torch.rand(2, 2, 2, 128, 128, dtype=torch.float64) * 3)
    assert 0 < rates[0] < 1


class _PerStep(nn.Module):
    """A single-step net run over a sequence, one step per call."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x_seq):
        return functional.multi_step_forward(x_seq, self.net)


def test_single_step_nmnist_net_equals_spikingjelly_step_by_step():
    ours, theirs = _pair("NMNISTNet", "ParametricLIFNode", PLIF_OPTIONS)
    torch.manual_seed(1)
    assert_matches_reference(_PerStep(ours), _PerStep(theirs), torch.rand(2, 2, 2, 34, 34, dtype=torch.float64) * 3)


def test_nets_take_any_neuron():
    # The nets are not tied to PLIF: with IF neurons they match SpikingJelly's IF nets.
    ours, theirs = _pair("MultiStepCIFAR10Net", "MultiStepIFNode", {"detach_reset": True, "v_threshold": 0.5},
                         channels=4)
    torch.manual_seed(1)
    assert_matches_reference(ours, theirs, torch.rand(2, 3, 32, 32, dtype=torch.float64) * 3, T=2)


def test_voting_layer_averages_groups():
    voting = _nets().VotingLayer(10)
    x = torch.arange(40.0).view(2, 20)
    torch.testing.assert_close(voting(x), torch.tensor([[4.5, 14.5], [24.5, 34.5]]))


def test_bad_input_is_refused():
    net = _nets().MultiStepDVSGestureNet(4, neuron.MultiStepIFNode, backend="torch")
    with pytest.raises(ValueError, match=r"\[T, N, C, H, W\]"):
        net(torch.rand(2, 2, 128, 128))
    with pytest.raises(TypeError, match="multi_step_neuron must be a neuron class"):
        _nets().MultiStepMNISTNet(4)
    static = _nets().MultiStepMNISTNet(4, neuron.MultiStepIFNode, backend="torch")
    with pytest.raises(ValueError, match="T is None"):
        static(torch.rand(2, 1, 28, 28), None)


@pytest.mark.parametrize("prefix", ["", "MultiStep"])
def test_nmnist_nets_make_their_parameters_in_spikingjelly_order(prefix):
    """SpikingJelly builds the N-MNIST nets as MNIST nets and rebuilds conv1 and fc3: the same seed gives
    the same weights, and parameters() lists them in the same order (an optimizer state carries over)."""
    theirs_zoo = sj_zoo("parametric_lif_net")
    node = prefix + "ParametricLIFNode"
    sj_class, sj_options = sj_neuron(node)
    torch.manual_seed(0)
    ours = getattr(_nets(), prefix + "NMNISTNet")(4, getattr(neuron, node))
    torch.manual_seed(0)
    theirs = getattr(theirs_zoo, prefix + "NMNISTNet")(4, sj_class, **sj_options)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_parameters()][-3:] == ["conv1.weight", "fc3.weight", "fc3.bias"]
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(a, b), name
    assert ours.conv1.in_channels == 2 and ours.fc3.in_features == 4 * 8 * 8
