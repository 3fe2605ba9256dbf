"""flashspike.functional: whole-net helpers, spike-train utilities, losses and conv-BN fusion."""

import math

import pytest
import torch
from torch import nn

from flashspike import functional, layer, neuron


def _sj():
    return pytest.importorskip("spikingjelly.clock_driven.functional")


def test_detach_net_calls_detach_on_every_module_that_has_one():
    class Stateful(nn.Module):
        def __init__(self):
            super().__init__()
            self.v = None

        def detach(self):
            self.v = self.v.detach()

        def forward(self, x):
            self.v = x * 2 if self.v is None else self.v + x
            return self.v

    net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(Stateful()), Stateful())
    x = torch.rand(1, 2, requires_grad=True)
    net(x)
    assert net[1][0].v.requires_grad and net[2].v.requires_grad
    functional.detach_net(net)
    assert not net[1][0].v.requires_grad and not net[2].v.requires_grad
    assert net[0].weight.requires_grad  # parameters untouched


def test_first_spike_index_by_hand():
    spikes = torch.tensor([[0, 1, 1, 0, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 1.0]])
    assert functional.first_spike_index(spikes).int().tolist() == [[0, 1, 0, 0, 0], [0] * 5, [1, 0, 0, 0, 0]]


def test_redundant_one_hot_by_hand():
    codes = functional.redundant_one_hot(torch.tensor([0, 2]), num_classes=3, n=2)
    assert codes.tolist() == [[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1]]
    assert codes.dtype == torch.get_default_dtype()
    with pytest.raises(ValueError, match="1-D"):
        functional.redundant_one_hot(torch.tensor([[0]]), 3, 2)


def test_kernel_dot_product_by_hand():
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert functional.kernel_dot_product(x, x).tolist() == [[1.0, 1.0], [1.0, 2.0]]
    assert functional.kernel_dot_product(x, x, "polynomial", 2).tolist() == [[1.0, 1.0], [1.0, 4.0]]
    torch.testing.assert_close(functional.kernel_dot_product(x, x, "sigmoid", 0.5),
                               torch.sigmoid(torch.tensor([[0.5, 0.5], [0.5, 1.0]])))
    g = functional.kernel_dot_product(x, x, "gaussian", 1.0)
    torch.testing.assert_close(g, torch.tensor([[1.0, math.exp(-0.5)], [math.exp(-0.5), 1.0]]))
    with pytest.raises(NotImplementedError, match="gaussian"):
        functional.kernel_dot_product(x, x, "rbf")


def test_spike_similar_loss_by_hand():
    spikes = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([[1, 0], [1, 0], [0, 1]])
    # The cosine similarities equal the targets exactly (up to the 1e-8 guard).
    assert functional.spike_similar_loss(spikes, labels).item() < 1e-12
    wrong = torch.tensor([[1, 0], [0, 1], [0, 1]])
    assert functional.spike_similar_loss(spikes, wrong, "linear", "l1").item() == pytest.approx(4 / 9)
    with pytest.raises(NotImplementedError, match="loss_type"):
        functional.spike_similar_loss(spikes, labels, "linear", "hinge")


@pytest.mark.parametrize("args", [("linear", "mse"), ("polynomial", "l1", 2), ("sigmoid", "bce", 0.7),
                                  ("gaussian", "mse", 1.5)])
def test_spike_similar_loss_matches_spikingjelly(args):
    sj = _sj()
    spikes = (torch.rand(5, 2, 6) > 0.5).float()
    labels = (torch.rand(5, 3) > 0.5).long()
    torch.testing.assert_close(functional.spike_similar_loss(spikes, labels, *args),
                               sj.spike_similar_loss(spikes, labels, *args))


def test_temporal_efficient_training_cross_entropy():
    torch.manual_seed(0)
    x_seq = torch.randn(3, 4, 5)
    target = torch.tensor([0, 4, 2, 1])
    want = sum(nn.functional.cross_entropy(x_seq[t], target) for t in range(3)) / 3
    torch.testing.assert_close(functional.temporal_efficient_training_cross_entropy(x_seq, target), want)
    dense = torch.randn(3, 4, 5, 2, 2)
    dense_target = torch.randint(0, 5, (4, 2, 2))
    want = sum(nn.functional.cross_entropy(dense[t], dense_target) for t in range(3)) / 3
    torch.testing.assert_close(functional.temporal_efficient_training_cross_entropy(dense, dense_target), want)
    with pytest.raises(ValueError, match=r"\[T, N, C"):
        functional.temporal_efficient_training_cross_entropy(torch.randn(4, 5), target)


def test_set_threshold_margin():
    node = nn.Module()
    node.v_threshold = 1.0
    label = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    functional.set_threshold_margin(node, label)
    torch.testing.assert_close(node.v_threshold, torch.tensor([[0.9, 1.1], [1.1, 0.9]]))
    node.eval()
    functional.set_threshold_margin(node, label, eval_threshold=0.8)
    assert node.v_threshold == 0.8


def _spike_cluster_by_hand_case():
    # One neuron, T = 8, T_in = 1: spikes at 0, 1 (a cluster of 2), 4 (a cluster of 1) and 7 (1).
    v = torch.tensor([1.0, 1.0, 0.0, 0.5, 1.0, 0.0, 0.2, 1.0]).unsqueeze(1).repeat(1, 2)
    v[:, 1] = 0.0  # a silent neuron: no clusters; its highest step is the first
    return v


def test_spike_cluster_by_hand():
    n_clusters, k_pos, k_neg = functional.spike_cluster(_spike_cluster_by_hand_case(), 1.0, 1)
    assert n_clusters.tolist() == [3.0, 0.0]
    # Steps free of spikes within 1 step: none (3 and 5 are next to spikes, 2 and 6 too) -> no positive step.
    assert k_pos[:, 0].int().tolist() == [0] * 8
    assert k_neg[:, 0].int().tolist() == [0, 0, 0, 0, 1, 0, 0, 0]  # the first smallest cluster: at 4
    assert k_pos[:, 1].int().tolist() == [1, 0, 0, 0, 0, 0, 0, 0] and not k_neg[:, 1].any()


@pytest.mark.parametrize("seed", range(4))
def test_spike_cluster_matches_spikingjelly(seed):
    sj = _sj()
    torch.manual_seed(seed)
    v = torch.rand(12, 7) * 1.3
    for T_in in (0, 1, 2):
        for ours, want in zip(functional.spike_cluster(v, 1.0, T_in), sj.spike_cluster(v, 1.0, T_in)):
            assert torch.equal(ours, want)


def test_kaiming_normal_conv_linear_weight():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(3, 4))
    bn_weight = net[1].weight.clone()
    torch.manual_seed(0)
    functional.kaiming_normal_conv_linear_weight(net)
    torch.manual_seed(0)
    want = torch.empty(2, 1, 3, 3)
    nn.init.kaiming_normal_(want, a=math.sqrt(5))
    assert torch.equal(net[0].weight, want) and torch.equal(net[1].weight, bn_weight)


def _convbn():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return conv, bn.eval()


def test_fuse_convbn2d():
    conv, bn = _convbn()
    x = torch.rand(2, 2, 5, 5)
    fused = functional.fuse_convbn2d(conv, bn)
    torch.testing.assert_close(fused(x), bn(conv(x)))
    w = functional.fused_conv2d_weight_of_convbn2d(conv, bn)
    b = functional.fused_conv2d_bias_of_convbn2d(conv, bn)
    torch.testing.assert_close(nn.functional.conv2d(x, w, b, padding=1), bn(conv(x)))
    with pytest.raises(ValueError, match="without bias"):
        functional.fuse_convbn2d(nn.Conv2d(2, 3, 3), bn)
    with pytest.raises(ValueError, match="channels"):
        functional.fused_conv2d_weight_of_convbn2d(nn.Conv2d(2, 4, 3, bias=False), bn)


def test_scale_fused_convbn2d():
    conv, bn = _convbn()
    w0 = functional.fused_conv2d_weight_of_convbn2d(conv, bn).detach()
    b0 = functional.fused_conv2d_bias_of_convbn2d(conv, bn).detach()
    functional.scale_fused_conv2d_weight_of_convbn2d(conv, bn, k=2.0)
    functional.scale_fused_conv2d_bias_of_convbn2d(conv, bn, k=3.0, b=0.5)
    torch.testing.assert_close(functional.fused_conv2d_weight_of_convbn2d(conv, bn), 2 * w0)
    torch.testing.assert_close(functional.fused_conv2d_bias_of_convbn2d(conv, bn), 3 * b0 + 0.5)


def test_convbn_helpers_match_spikingjelly():
    sj = _sj()
    conv, bn = _convbn()
    torch.testing.assert_close(functional.fused_conv2d_weight_of_convbn2d(conv, bn),
                               sj.fused_conv2d_weight_of_convbn2d(conv, bn))
    torch.testing.assert_close(functional.fused_conv2d_bias_of_convbn2d(conv, bn),
                               sj.fused_conv2d_bias_of_convbn2d(conv, bn))


def test_reset_net_reaches_layers():
    net = nn.Sequential(layer.MultiStepDropout(0.5), layer.SynapseFilter(2.0))
    net(torch.ones(2, 3))
    assert net[0].mask is not None and isinstance(net[1].out_i, torch.Tensor)
    functional.reset_net(net)
    assert net[0].mask is None and net[1].out_i == 0.0


def test_reset_net_calls_class_methods_and_instance_callables_once_each():
    calls = []

    class Stateful(torch.nn.Module):
        def reset(self):
            calls.append(self)

    inner, shared = Stateful(), Stateful()
    assigned = torch.nn.Linear(2, 2)
    assigned.reset = lambda: calls.append("assigned")  # an instance attribute, not a method
    net = torch.nn.Sequential(inner, torch.nn.Sequential(shared, assigned), shared, torch.nn.ReLU())
    functional.reset_net(net)
    assert calls.count(inner) == 1 and calls.count(shared) == 1 and calls.count("assigned") == 1 and len(calls) == 3


def test_set_threshold_margin_refuses_a_flashspike_neuron_in_training_mode():
    node = neuron.MultiStepIFNode()
    label = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(TypeError, match="per-neuron thresholds are not supported"):
        functional.set_threshold_margin(node, label)
    assert node.v_threshold == 1.0
    node.eval()
    functional.set_threshold_margin(node, label, eval_threshold=0.8)  # one number: taken
    assert node.v_threshold == 0.8 and node.params().v_threshold == 0.8
    with pytest.raises(TypeError, match="got a tensor of shape \\(2, 2\\).*per-neuron values are not supported"):
        node.v_threshold = label
