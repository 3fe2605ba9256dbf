"""SpikingJelly-style programs that run with only the import line changed.

Each program below is written against ``spikingjelly.clock_driven``. The test runs it with the import
line rewritten to ``flashspike``; where SpikingJelly is installed it also runs the original text and
compares every output, gradient and state-dict entry (float64, same seed, the 'torch' backend).
"""

import pytest
import torch

SJ_IMPORT = "from spikingjelly.clock_driven import "
OURS_IMPORT = "from flashspike import "

CONV_NET = """
import torch
from torch import nn
from spikingjelly.clock_driven import neuron, surrogate, layer, functional, encoding


def run():
    torch.manual_seed(0)
    T, N = 4, 3
    net = nn.Sequential(
        layer.SeqToANNContainer(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)),
        neuron.MultiStepLIFNode(tau=2.0, surrogate_function=surrogate.ATan(), detach_reset=True, backend='torch'),
        layer.MultiStepDropout2d(0.3),
        layer.SeqToANNContainer(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 5)),
        neuron.MultiStepIFNode(v_reset=None, surrogate_function=surrogate.Sigmoid(), backend='torch'),
        layer.MultiStepDropout(0.2),
        layer.MultiStepContainer(nn.Linear(5, 5), neuron.IFNode(surrogate_function=surrogate.ATan())),
    ).double()
    encoder = encoding.PoissonEncoder()
    img = torch.rand(N, 1, 6, 6, dtype=torch.float64) * 3
    outs = []
    for _ in range(2):
        x_seq = torch.stack([encoder(img) for _ in range(T)])
        out = net(x_seq * 2)
        out.sum().backward()
        outs.append(out.detach())
        functional.reset_net(net)
    net.eval()
    with torch.no_grad():
        outs.append(net(torch.stack([encoder(img) for _ in range(T)]) * 2))
    functional.reset_net(net)
    return outs, [p.grad for p in net.parameters()], net.state_dict()
"""

STATEFUL_LOOP = """
import torch
from torch import nn
from spikingjelly.clock_driven import neuron, layer, functional, encoding


def run():
    torch.manual_seed(1)
    T = 6
    x = torch.rand(2, 8, dtype=torch.float64)
    encoder = encoding.LatencyEncoder(T)
    phase = encoding.WeightedPhaseEncoder(T)
    net = nn.Sequential(nn.Linear(8, 4), neuron.LIFNode(tau=3.0, v_threshold=0.1), layer.SynapseFilter(tau=4.0, learnable=True),
                        layer.Dropout(0.25)).double()
    recurrent = layer.ElementWiseRecurrentContainer(neuron.IFNode(), lambda y, x: y * 0.5 + x)
    outs = []
    for trial in range(2):
        for t in range(T):
            out = net(encoder(x) * 4 + phase(x * 0.9))
            outs.append(out)
            outs.append(recurrent(out))
        functional.reset_net(net)
        functional.reset_net(encoder)
        functional.reset_net(phase)
        functional.reset_net(recurrent)
    sum(o.sum() for o in outs).backward()
    return outs, [p.grad for p in net.parameters()], net.state_dict()
"""

TDBN_ATTENTION = """
import torch
from torch import nn
from spikingjelly.clock_driven import neuron, layer, functional


def run():
    torch.manual_seed(2)
    T = 8
    net = nn.Sequential(
        layer.SeqToANNContainer(nn.Conv2d(2, 3, 3, padding=1)),
        layer.MultiStepThresholdDependentBatchNorm2d(4.0, 0.5, 3),
        layer.MultiStepTemporalWiseAttention(T, reduction=4, dimension=4),
        neuron.MultiStepLIFNode(v_threshold=0.3, backend='torch'),
    ).double()
    x_seq = torch.rand(T, 2, 2, 5, 5, dtype=torch.float64) * 2
    out = net(x_seq)
    out.sum().backward()
    functional.reset_net(net)
    return [out], [p.grad for p in net.parameters()], net.state_dict()
"""

PROGRAMS = {"conv_net": CONV_NET, "stateful_loop": STATEFUL_LOOP, "tdbn_attention": TDBN_ATTENTION}


def _run(text: str):
    namespace = {}
    exec(compile(text, "<port program>", "exec"), namespace)
    return namespace["run"]()


def _ported(text: str) -> str:
    assert text.count(SJ_IMPORT) == 1
    return text.replace(SJ_IMPORT, OURS_IMPORT)


@pytest.mark.parametrize("name", PROGRAMS)
def test_program_runs_with_only_the_import_changed(name):
    outs, grads, state = _run(_ported(PROGRAMS[name]))
    assert all(torch.isfinite(o).all() for o in outs)
    assert any(o.abs().sum() > 0 for o in outs)  # something spiked
    assert all(g is not None for g in grads)
    assert state


@pytest.mark.parametrize("name", PROGRAMS)
def test_program_gives_spikingjellys_numbers(name):
    pytest.importorskip("spikingjelly.clock_driven")
    ours, theirs = _run(_ported(PROGRAMS[name])), _run(PROGRAMS[name])
    for o, t in zip(ours[0], theirs[0], strict=True):
        torch.testing.assert_close(o, t, rtol=1e-12, atol=1e-12)
    for o, t in zip(ours[1], theirs[1], strict=True):
        torch.testing.assert_close(o, t, rtol=1e-10, atol=1e-12)
    assert list(ours[2]) == list(theirs[2])
    for key in ours[2]:
        torch.testing.assert_close(ours[2][key], theirs[2][key], rtol=0, atol=0)
