"""flashspike.monitor: hand-counted rates, enable/disable/reset, SpikingJelly's numbers, torch.compile."""

import pytest
import torch
from torch import nn

from flashspike import functional, layer, monitor, neuron


def _net():
    # IF neurons with threshold 1 fed directly: an input of 1 fires every step, 0.5 every other step.
    return nn.Sequential(neuron.MultiStepIFNode(backend="torch"), layer.MultiStepContainer(neuron.IFNode()))


X = torch.tensor([[[1.0, 0.5, 0.0, 0.0]]]).repeat(4, 1, 1)  # [T=4, N=1, 4 neurons]


def test_rates_by_hand():
    net = _net()
    mon = monitor.Monitor(net)
    assert list(mon.module_dict) == ["0", "1.0"]
    mon.enable()
    net(X)
    # First node: the input 1 fires 4 times, 0.5 twice: 6 spikes of 16 outputs.
    assert mon.get_avg_firing_rate(all=False, module_name="0") == 6 / 16
    # The second node gets 1,1,1,1 and 0,1,0,1 per step: fires 4 and 2 times as well.
    assert mon.get_avg_firing_rate(all=False, module_name="1.0") == 6 / 16
    assert mon.get_avg_firing_rate() == 12 / 32
    assert mon.get_nonfire_ratio(all=False, module_name="0") == 0.5
    assert mon.get_nonfire_ratio() == 0.5
    with pytest.raises(ValueError, match="Invalid module_name"):
        mon.get_avg_firing_rate(all=False, module_name="2")


def test_disable_removes_hooks_and_reset_zeroes():
    net = _net()
    mon = monitor.Monitor(net, backend="torch")
    mon.enable()
    assert mon.enabled and len(net[0]._forward_hooks) == 1
    net(X)
    rate = mon.get_avg_firing_rate()
    assert isinstance(rate, torch.Tensor) and rate.item() == 12 / 32
    mon.disable()
    assert not mon.enabled and len(net[0]._forward_hooks) == 0
    net[0].reset()
    net(X * 0)
    assert mon.get_avg_firing_rate().item() == 12 / 32  # nothing recorded while disabled
    mon.reset()
    with pytest.raises(ValueError, match="recorded nothing"):
        mon.get_avg_firing_rate()
    mon.enable()
    mon.enable()  # enabling twice does not double the hooks
    assert len(net[0]._forward_hooks) == 1
    with pytest.raises(ValueError, match="'numpy' or 'torch'"):
        monitor.Monitor(net, backend="cupy")


def test_matches_spikingjelly():
    sj_neuron = pytest.importorskip("spikingjelly.clock_driven.neuron")
    sj_monitor = pytest.importorskip("spikingjelly.clock_driven.monitor")
    torch.manual_seed(0)
    x = torch.rand(5, 3, 6) * 1.5
    theirs = nn.Sequential(sj_neuron.MultiStepLIFNode(backend="torch"), sj_neuron.MultiStepIFNode(backend="torch"))
    ours = nn.Sequential(neuron.MultiStepLIFNode(backend="torch"), neuron.MultiStepIFNode(backend="torch"))
    m_theirs, m_ours = sj_monitor.Monitor(theirs, "cpu", "torch"), monitor.Monitor(ours, "cpu", "torch")
    m_theirs.enable()
    m_ours.enable()
    theirs(x)
    ours(x)
    for kwargs in ({}, {"all": False, "module_name": "1"}):
        torch.testing.assert_close(m_ours.get_avg_firing_rate(**kwargs), m_theirs.get_avg_firing_rate(**kwargs))
        torch.testing.assert_close(m_ours.get_nonfire_ratio(**kwargs).double(),
                                   torch.as_tensor(m_theirs.get_nonfire_ratio(**kwargs)).double())


def test_compiled_calls_are_not_recorded():
    net = _net()
    mon = monitor.Monitor(net)
    mon.enable()
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    y = compiled(X)
    assert torch.equal(y, _net()(X))  # the hooks do not change the compiled result
    with pytest.raises(ValueError, match="torch.compile"):
        mon.get_avg_firing_rate()
    functional.reset_net(net)
    net(X)  # eager calls still count
    assert mon.get_avg_firing_rate() == 12 / 32


def test_record_v_keeps_the_potentials():
    net = nn.Sequential(neuron.MultiStepIFNode(backend="torch", store_v_seq=True),
                        layer.MultiStepContainer(neuron.IFNode()), neuron.MultiStepIFNode(backend="torch"))
    mon = monitor.Monitor(net, record_v=True)
    mon.enable()
    net(X)
    first = mon.get_v("0")
    assert len(first) == 1 and first[0][:, 0, 1].tolist() == [0.5, 0.0, 0.5, 0.0]  # every step, from v_seq
    single = mon.get_v("1.0")
    assert len(single) == 4 and all(v.shape == (1, 1, 4) for v in single)  # one per step of the loop
    assert single[0][0, 0].tolist() == [0.0, 0.0, 0.0, 0.0]  # step 0's input spikes 1, 0, 0, 0: fires, resets
    last = mon.get_v("2")
    assert len(last) == 1 and last[0].shape == (1, 1, 4)  # without v_seq: the potential after the call
    mon.reset()
    net(X.clone().requires_grad_())  # v_seq could be computed now, but is not: only a kept one is recorded
    assert mon.get_v("2")[0].shape == (1, 1, 4) and mon.get_v("0")[0].shape[0] == 4
    mon.reset()
    assert mon.get_v("0") == []
    with pytest.raises(ValueError, match="record_v=True"):
        monitor.Monitor(net).get_v("0")
    with pytest.raises(ValueError, match="Invalid module_name"):
        mon.get_v("9")


def test_torch_backend_counts_in_the_outputs_dtype():
    net = nn.Sequential(neuron.MultiStepIFNode())
    mon = monitor.Monitor(net, backend="torch")
    mon.enable()
    net(torch.full((3, 2, 4), 0.4, dtype=torch.float64))  # fires at step 2 (0.4, 0.8, 1.2)
    rate = mon.get_avg_firing_rate()
    assert rate.dtype == torch.float64 and rate.item() == 1 / 3
