"""flashspike.activation_based on its own (no SpikingJelly needed): step modes, their errors, v_seq,
set_step_mode, and values by hand. tests/test_activation_based_peer.py compares with SpikingJelly 2.x."""

import pytest
import torch
from torch import nn

from flashspike import neuron as core_neuron
from flashspike.activation_based import base, encoding, functional, layer, monitor, neuron, surrogate
from flashspike import surrogate as flashspike_surrogate
from flashspike.codegen import TORCH


def test_a_node_is_the_core_neuron_with_a_step_mode():
    node = neuron.LIFNode(tau=2.0)
    assert isinstance(node, core_neuron.MultiStepLIFNode) and isinstance(node, base.MemoryModule)
    assert node.step_mode == "s" and node.backend == "auto"
    # LIF by hand: H = V + (X − V)/2, threshold 1, hard reset to 0
    x = torch.tensor([[1.2], [1.2], [1.2]])
    single = torch.stack([node(step) for step in x])
    assert single.flatten().tolist() == [0.0, 0.0, 1.0]  # H = 0.6, 0.9, 1.05: fires at the third step
    node.reset()
    node.step_mode = "m"
    assert torch.equal(node(x), single)


def test_step_mode_is_checked():
    with pytest.raises(ValueError, match=r"step_mode must be one of \('s', 'm'\), got 'x'"):
        neuron.IFNode(step_mode="x")
    with pytest.raises(ValueError, match="step_mode"):
        functional.set_step_mode(nn.Sequential(neuron.IFNode()), "multi")
    with pytest.raises(ValueError, match=r"step_mode must be one of \('m',\)"):
        neuron.PSN(T=3).step_mode = "s"


def test_v_seq_in_both_step_modes():
    x = torch.tensor([[0.5], [0.7], [0.1]])
    multi = neuron.IFNode(step_mode="m", store_v_seq=True)
    multi(x)
    assert multi.v_seq.flatten().tolist() == pytest.approx([0.5, 0.0, 0.1])
    single = neuron.IFNode(store_v_seq=True)
    for step in x:
        single(step)
    assert torch.equal(single.v_seq, multi.v_seq)
    single.reset()
    assert single.v_seq is None
    assert neuron.IFNode().v_seq is None  # not kept: None, as SpikingJelly 2.x has it


def test_set_step_mode_leaves_containers_modules_single_step():
    net = nn.Sequential(layer.Conv2d(1, 2, 3, padding=1), layer.BatchNorm2d(2), neuron.IFNode(),
                        layer.MultiStepContainer(neuron.LIFNode()), layer.SeqToANNContainer(nn.Flatten()),
                        layer.Linear(2 * 4 * 4, 3))
    functional.set_step_mode(net, "m")
    assert [getattr(m, "step_mode", None) for m in net] == ["m", "m", "m", None, None, "m"]
    assert net[3][0].step_mode == "s"
    y = net(torch.rand(5, 2, 1, 4, 4) * 3)
    assert y.shape == (5, 2, 3)
    with pytest.raises(ValueError, match="step_mode 'm'"):
        layer.SeqToANNContainer(neuron.IFNode(step_mode="m"))


def test_wrappers_name_the_expected_shape():
    conv = layer.Conv2d(1, 2, 3, step_mode="m")
    with pytest.raises(ValueError, match=r"\[T, N, C, H, W\]"):
        conv(torch.rand(2, 1, 5, 5))
    assert list(conv.state_dict()) == ["weight", "bias"] and "step_mode=m" in repr(conv)


def test_dropout_keeps_one_mask_per_sequence():
    torch.manual_seed(0)
    drop = layer.Dropout(0.5, step_mode="m")
    y = drop(torch.ones(4, 3, 10))
    assert all(torch.equal(y[t], y[0]) for t in range(4)) and set(y.unique().tolist()) == {0.0, 2.0}
    drop.step_mode = "s"
    assert torch.equal(drop(torch.ones(3, 10)), y[0])  # the same mask until reset()


def test_delay_by_hand():
    delay = layer.Delay(2, step_mode="m")
    x = torch.arange(1.0, 5.0).view(4, 1)
    assert delay(x).flatten().tolist() == [0.0, 0.0, 1.0, 2.0]


def test_izhikevich_by_hand():
    node = neuron.IzhikevichNode(tau=2.0, v_c=0.8, a0=1.0, v_rest=0.0, v_reset=0.0, a=0.5, b=0.1, tau_w=2.0)
    node(torch.tensor([0.4]))
    # H = 0 + (0.4 + 1·(0 − 0)·(0 − 0.8) − 0)/2 = 0.2; no spike; W = 0 + (0.5·0.2 − 0)/2 = 0.05
    assert node.v.item() == pytest.approx(0.2) and node.w.item() == pytest.approx(0.05)


def test_encoder_and_monitor():
    encoder = encoding.LatencyEncoder(3, step_mode="m")
    assert encoder(torch.tensor([[1.0, 0.0]]).repeat(3, 1)).tolist() == [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
    net = nn.Sequential(layer.Linear(2, 2), neuron.IFNode())
    with monitor.OutputMonitor(net, neuron.IFNode) as spikes:
        net(torch.ones(1, 2))
        net(torch.ones(1, 2))
        assert spikes.monitored_layers == ["1"] and len(spikes["1"]) == 2 and len(spikes.records) == 2
        spikes.clear_recorded_data()
        assert spikes.records == []
    net(torch.ones(1, 2))
    assert spikes.records == [] and spikes.hooks == []  # leaving the block removed the hooks


def test_backend_keyword_and_set_backend():
    net = nn.Sequential(neuron.LIFNode(backend="torch"), neuron.IFNode())
    assert net[0].backend == "torch"
    assert functional.set_backend(net, "torch") == 2
    assert isinstance(surrogate.ATan(), surrogate.SurrogateFunction)


def test_the_transformer_models_are_reached_under_spikingjellys_names():
    # A 2.x program's `from spikingjelly.activation_based.model import spikformer` with the import changed
    # gets the one implementation (flashspike.model), not a copy.
    from flashspike import model as zoo
    from flashspike.activation_based.model import spike_driven_transformer, spikformer

    assert spikformer.Spikformer is zoo.spikformer.Spikformer and spikformer.__all__ == zoo.spikformer.__all__
    assert spike_driven_transformer.sdt_8_384 is zoo.spike_driven_transformer.sdt_8_384
    net = spikformer.Spikformer(T=2, img_size_h=8, img_size_w=8, patch_size=4, embed_dims=16, num_heads=2,
                                mlp_ratio=2, depths=1, num_classes=3, backend="torch")
    assert net(torch.rand(2, 1, 3, 8, 8)).shape == (2, 1, 3)


@pytest.mark.parametrize("name", ["PiecewiseLeakyReLU", "SquarewaveFourierSeries", "S2NN"])
def test_every_surrogates_mode_follows_spiking_as_in_spikingjelly_2(name):
    """SpikingJelly 2.x's surrogates read ``spiking`` at every call (0.0.0.0.14 fixed these three's mode at
    construction, as flashspike.surrogate's do); the formulas are the same."""
    x = torch.tensor([-0.4, 0.0, 0.3], dtype=torch.float64)
    sg = getattr(surrogate, name)()
    assert isinstance(sg, getattr(flashspike_surrogate, name)) and type(sg).__name__ == name
    sg.spiking = False
    assert sg.in_spiking_mode is False
    assert torch.equal(sg(x), type(sg).primitive(x, *sg.values(), TORCH))
    sg.set_spiking_mode(True)
    assert torch.equal(sg(x), torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64))
    assert getattr(flashspike_surrogate, name)().key != sg.key  # its own kernels, though the same formulas
