"""SpikingJelly 2.x programs and the same text on flashspike.activation_based, run side by side.

Run as a script (``python tests/activation_based_peer.py NAME ...``) in a process whose path finds
SpikingJelly 2.x's ``spikingjelly`` and flashspike. Each program is written once, against an
``activation_based`` package ``ab``; it runs on SpikingJelly's and on flashspike's (same seed, float64)
and the script prints, as JSON, per program: the largest absolute difference of every compared
output, gradient and state, and whether the state_dict keys agree. Checkpoints go both ways: the net
built by SpikingJelly gives its state_dict to flashspike's (``strict=True``) and flashspike's to a
fresh SpikingJelly net.

Tests (tests/test_activation_based_peer.py) start it through :func:`run`; it is never imported by
flashspike itself.
"""

from __future__ import annotations

import importlib
import json
import sys

import torch
from torch import nn

DTYPE = torch.float64


def _grads(net: nn.Module) -> dict:
    return {f"grad {name}": p.grad for name, p in net.named_parameters() if p.grad is not None}


def _run(net: nn.Module, x: torch.Tensor, weights: torch.Tensor | None = None) -> dict:
    """Outputs, input gradient and parameter gradients of one forward and backward."""
    x = x.clone().requires_grad_(True)
    y = net(x)
    (y * (weights if weights is not None else torch.linspace(0.5, 1.5, y.numel(), dtype=y.dtype).view(y.shape))).sum().backward()
    return {"output": y.detach(), "grad input": x.grad, **_grads(net)}


def _compare(ours: dict, theirs: dict) -> dict:
    """Largest absolute difference per entry (inf where a shape differs or an entry is missing)."""
    report = {}
    for name in sorted(set(ours) | set(theirs)):
        a, b = ours.get(name), theirs.get(name)
        if a is None or b is None or a.shape != b.shape:
            report[name] = float("inf")
        else:
            report[name] = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    return report


def _twins(build, ab_theirs, ab_ours) -> tuple:
    """The same net from both libraries, flashspike's loaded (strictly) from SpikingJelly's state_dict,
    and a fresh SpikingJelly net loaded (strictly) from flashspike's."""
    torch.manual_seed(0)
    theirs = build(ab_theirs).to(DTYPE)
    torch.manual_seed(1)
    ours = build(ab_ours).to(DTYPE)
    keys = list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    back = build(ab_theirs).to(DTYPE)
    back.load_state_dict(ours.state_dict(), strict=True)
    back_equal = all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), theirs.state_dict().values()))
    return theirs, ours, {"keys equal": keys, "checkpoint round trip": back_equal,
                          "named parameters equal": [n for n, _ in ours.named_parameters()]
                          == [n for n, _ in theirs.named_parameters()]}


# ----------------------------------------------------------------------------------------------------
# The programs: each takes the activation_based package and returns (net builder, input, program)
# ----------------------------------------------------------------------------------------------------


def conv_net_multi_step(ab_theirs, ab_ours):
    """A step_mode='m' conv net of layer.* wrappers and neurons, trained one step."""
    def build(ab):
        return nn.Sequential(
            ab.layer.Conv2d(2, 4, kernel_size=3, padding=1, bias=False, step_mode="m"),
            ab.layer.BatchNorm2d(4, step_mode="m"),
            ab.neuron.IFNode(surrogate_function=ab.surrogate.ATan(), step_mode="m"),
            ab.layer.MaxPool2d(2, 2, step_mode="m"),
            ab.layer.Conv2d(4, 4, kernel_size=3, padding=1, step_mode="m"),
            ab.layer.BatchNorm2d(4, step_mode="m"),
            ab.neuron.LIFNode(tau=2.0, detach_reset=True, step_mode="m"),
            ab.layer.AvgPool2d(2, 2, step_mode="m"),
            ab.layer.Flatten(step_mode="m"),
            ab.layer.Dropout(0.0, step_mode="m"),
            ab.layer.Linear(4 * 2 * 2, 5, step_mode="m"),
            ab.neuron.ParametricLIFNode(init_tau=2.0, v_reset=None, step_mode="m"),
        )
    theirs, ours, report = _twins(build, ab_theirs, ab_ours)
    x = torch.rand(4, 3, 2, 8, 8, dtype=DTYPE) * 2
    results = [_run(net, x) for net in (theirs, ours)]
    return report, results


def zoo_with_encoder_and_monitor(ab_theirs, ab_ours):
    """A SEW ResNet-18 put in step mode 'm' by set_step_mode, fed by a step-mode Poisson encoder, its
    neurons' outputs recorded by an OutputMonitor and their potentials by an AttributeMonitor."""
    def build(ab):
        net = ab.model.sew_resnet.sew_resnet18(spiking_neuron=ab.neuron.LIFNode, cnf="ADD", num_classes=10,
                                               surrogate_function=ab.surrogate.Sigmoid(), detach_reset=True)
        ab.functional.set_step_mode(net, "m")
        return net
    theirs, ours, report = _twins(build, ab_theirs, ab_ours)
    image = torch.rand(2, 3, 32, 32, dtype=DTYPE)
    results, monitored = [], []
    for ab, net in ((ab_theirs, theirs), (ab_ours, ours)):
        encoder = ab.encoding.PoissonEncoder(step_mode="m")
        torch.manual_seed(2)
        x_seq = encoder(image.unsqueeze(0).repeat(3, 1, 1, 1, 1))
        spikes = ab.monitor.OutputMonitor(net, ab.neuron.LIFNode)
        potentials = ab.monitor.AttributeMonitor("v", False, net, ab.neuron.LIFNode)
        net.train()
        result = _run(net, x_seq)
        result["encoded"] = x_seq
        result["recorded spikes"] = torch.cat([r.flatten() for r in spikes.records])
        result["recorded v"] = torch.cat([r.flatten() for r in potentials.records])
        monitored.append(spikes.monitored_layers)
        spikes.remove_hooks()
        potentials.remove_hooks()
        ab.functional.reset_net(net)
        results.append(result)
    report["monitored layers equal"] = monitored[0] == monitored[1] and len(monitored[0]) == 20  # sn1, 2 per block, 3 shortcuts
    return report, results


def dvs_gesture_checkpoint(ab_theirs, ab_ours):
    """The DVS-gesture net of parametric LIF neurons: a 2.0.0 checkpoint loads strictly both ways and
    gives the same outputs and gradients, in eval mode and in training mode."""
    def build(ab):
        net = ab.model.parametric_lif_net.DVSGestureNet(channels=4, spiking_neuron=ab.neuron.ParametricLIFNode,
                                                        surrogate_function=ab.surrogate.ATan(), detach_reset=True)
        ab.functional.set_step_mode(net, "m")
        return net
    theirs, ours, report = _twins(build, ab_theirs, ab_ours)
    x = (torch.rand(3, 2, 2, 128, 128, dtype=DTYPE) > 0.7).to(DTYPE)
    results = []
    for ab, net in ((ab_theirs, theirs), (ab_ours, ours)):
        net.eval()
        with torch.no_grad():
            evaluated = net(x)
        ab.functional.reset_net(net)
        net.train()
        torch.manual_seed(3)  # the dropout masks
        result = _run(net, x)
        result["eval output"] = evaluated
        ab.functional.reset_net(net)
        results.append(result)
    return report, results


PROGRAMS = {f.__name__: f for f in (conv_net_multi_step, zoo_with_encoder_and_monitor, dvs_gesture_checkpoint)}


def main(names: list[str]) -> dict:
    import spikingjelly.activation_based as ab_theirs

    import flashspike.activation_based as ab_ours
    for module in ("encoding", "monitor", "model.parametric_lif_net", "model.sew_resnet", "model.spiking_resnet",
                   "model.spiking_vgg"):  # SpikingJelly's package does not import them itself
        importlib.import_module(f"spikingjelly.activation_based.{module}")

    torch.set_default_dtype(DTYPE)
    out = {}
    for name in names:
        report, (theirs, ours) = PROGRAMS[name](ab_theirs, ab_ours)
        out[name] = {"report": report, "differences": _compare(ours, theirs)}
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
