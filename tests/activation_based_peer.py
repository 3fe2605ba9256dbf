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


# (name, constructor, keyword arguments, step modes): every neuron both libraries ship, with options
# that reach each branch of its equations.
def _neuron_cases(ab):
    n, sg = ab.neuron, ab.surrogate
    return [
        ("IF hard", n.IFNode, dict(surrogate_function=sg.ATan()), "sm"),
        ("IF soft detach", n.IFNode, dict(v_reset=None, detach_reset=True, v_threshold=0.8), "sm"),
        ("LIF hard", n.LIFNode, dict(tau=1.5, surrogate_function=sg.Sigmoid(alpha=3.0)), "sm"),
        ("LIF soft no decay_input", n.LIFNode, dict(tau=2.5, decay_input=False, v_reset=None), "sm"),
        ("PLIF hard", n.ParametricLIFNode, dict(init_tau=1.7, surrogate_function=sg.ATan()), "sm"),
        ("PLIF soft no decay_input", n.ParametricLIFNode, dict(init_tau=3.0, decay_input=False, v_reset=None), "sm"),
        ("EIF", n.EIFNode, dict(tau=2.0, delta_T=0.7, theta_rh=0.6, v_rest=-0.05, v_reset=-0.1), "sm"),
        ("QIF", n.QIFNode, dict(tau=2.0, v_c=0.7, a0=0.8, v_rest=-0.05, v_reset=-0.1), "sm"),
        ("Izhikevich", n.IzhikevichNode, dict(tau=2.0, a=0.1, b=0.2, tau_w=3.0, v_rest=-0.1), "sm"),
        ("KLIF", n.KLIFNode, dict(tau=2.0), "sm"),
        ("KLIF scale_reset soft", n.KLIFNode, dict(scale_reset=True, tau=2.0, v_reset=None), "sm"),
        ("LIAF", n.LIAFNode, dict(act=torch.tanh, threshold_related=True, tau=2.0), "sm"),
        ("PSN", n.PSN, dict(T=4), "m"),
        ("MaskedPSN", n.MaskedPSN, dict(k=2, T=4, lambda_init=1.0), "sm"),
        ("MaskedPSN lambda 0.3", n.MaskedPSN, dict(k=2, T=4, lambda_init=0.3), "m"),
        ("SlidingPSN", n.SlidingPSN, dict(k=3), "sm"),
    ]


def neurons(ab_theirs, ab_ours):
    """Every neuron in each step mode it supports: spikes, the final state, v_seq, input and parameter
    gradients; store_v_seq where the neuron has it."""
    x_seq = torch.randn(4, 3, 5, dtype=DTYPE) * 1.2 + 0.6
    report, results = {}, ([], [])
    for (name, theirs_class, kwargs, modes), (_, ours_class, ours_kwargs, _) in zip(_neuron_cases(ab_theirs),
                                                                                      _neuron_cases(ab_ours)):
        for mode in modes:
            nets = []
            for cls, kw in ((theirs_class, kwargs), (ours_class, ours_kwargs)):
                torch.manual_seed(0)
                options = dict(kw, step_mode=mode) if mode == "s" or "PSN" not in name or "Sliding" in name or "Masked" in name else dict(kw)
                if "store" not in name and "PSN" not in name:
                    options["store_v_seq"] = True
                nets.append(cls(**options).to(DTYPE))
            nets[1].load_state_dict(nets[0].state_dict(), strict=True)
            report[f"{name} {mode} keys"] = list(nets[0].state_dict()) == list(nets[1].state_dict())
            for net, out in zip(nets, results):
                x = x_seq.clone().requires_grad_(True)
                y = net(x) if mode == "m" else torch.stack([net(step) for step in x])
                (y * torch.linspace(0.5, 1.5, y.numel(), dtype=DTYPE).view(y.shape)).sum().backward()
                entry = {"output": y.detach(), "grad input": x.grad, **_grads(net)}
                for state in ("v", "w", "v_seq"):
                    value = getattr(net, state, None)
                    if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
                        entry[state] = value.detach()
                out.append({f"{name} {mode} {k}": v for k, v in entry.items()})
    return report, tuple({k: v for d in out for k, v in d.items()} for out in results)


def layers(ab_theirs, ab_ours):
    """Every stateless wrapper, container and stateful layer, in step mode 'm' against the same layer
    of SpikingJelly 2.x (and the stateless ones in 's' too)."""
    def cases(ab):
        L = ab.layer
        return [
            ("Conv1d", lambda: L.Conv1d(2, 3, 3, padding=1, step_mode="m"), (4, 2, 2, 7)),
            ("Conv2d", lambda: L.Conv2d(2, 3, 3, stride=2, padding=1, step_mode="m"), (3, 2, 2, 6, 6)),
            ("Conv3d", lambda: L.Conv3d(2, 3, 2, step_mode="m"), (3, 2, 2, 3, 4, 4)),
            ("ConvTranspose1d", lambda: L.ConvTranspose1d(2, 3, 3, step_mode="m"), (3, 2, 2, 5)),
            ("ConvTranspose2d", lambda: L.ConvTranspose2d(2, 3, 2, stride=2, step_mode="m"), (3, 2, 2, 4, 4)),
            ("ConvTranspose3d", lambda: L.ConvTranspose3d(2, 2, 2, step_mode="m"), (2, 2, 2, 2, 3, 3)),
            ("BatchNorm1d", lambda: L.BatchNorm1d(3, step_mode="m"), (4, 5, 3)),
            ("BatchNorm2d", lambda: L.BatchNorm2d(3, step_mode="m"), (3, 4, 3, 5, 5)),
            ("BatchNorm3d", lambda: L.BatchNorm3d(2, step_mode="m"), (2, 3, 2, 3, 4, 4)),
            ("GroupNorm", lambda: L.GroupNorm(2, 4, step_mode="m"), (3, 2, 4, 5, 5)),
            ("MaxPool1d", lambda: L.MaxPool1d(2, step_mode="m"), (3, 2, 2, 8)),
            ("MaxPool2d", lambda: L.MaxPool2d(3, 2, 1, step_mode="m"), (3, 2, 2, 7, 7)),
            ("MaxPool3d", lambda: L.MaxPool3d(2, step_mode="m"), (2, 2, 2, 4, 4, 4)),
            ("AvgPool1d", lambda: L.AvgPool1d(2, step_mode="m"), (3, 2, 2, 8)),
            ("AvgPool2d", lambda: L.AvgPool2d(2, step_mode="m"), (3, 2, 2, 6, 6)),
            ("AvgPool3d", lambda: L.AvgPool3d(2, step_mode="m"), (2, 2, 2, 4, 4, 4)),
            ("AdaptiveAvgPool1d", lambda: L.AdaptiveAvgPool1d(3, step_mode="m"), (3, 2, 2, 7)),
            ("AdaptiveAvgPool2d", lambda: L.AdaptiveAvgPool2d((2, 3), step_mode="m"), (3, 2, 2, 7, 7)),
            ("AdaptiveAvgPool3d", lambda: L.AdaptiveAvgPool3d(2, step_mode="m"), (2, 2, 2, 5, 5, 5)),
            ("Linear", lambda: L.Linear(5, 3, step_mode="m"), (3, 2, 5)),
            ("Flatten", lambda: L.Flatten(step_mode="m"), (3, 2, 2, 3, 3)),
            ("Upsample", lambda: L.Upsample(scale_factor=2, mode="bilinear", step_mode="m"), (2, 2, 2, 3, 3)),
            ("WSConv2d", lambda: L.WSConv2d(2, 3, 3, step_mode="m"), (3, 2, 2, 5, 5)),
            ("WSLinear", lambda: L.WSLinear(5, 3, step_mode="m"), (3, 2, 5)),
            ("Dropout", lambda: L.Dropout(0.5, step_mode="m"), (4, 3, 6)),
            ("Dropout2d", lambda: L.Dropout2d(0.5, step_mode="m"), (4, 3, 6, 2, 2)),
            ("SeqToANNContainer", lambda: L.SeqToANNContainer(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)), (3, 2, 2, 5, 5)),
            ("MultiStepContainer", lambda: L.MultiStepContainer(nn.Linear(5, 4), ab.neuron.IFNode()), (4, 2, 5)),
            ("StepModeContainer", lambda: L.StepModeContainer(True, "m", nn.Linear(5, 4), ab.neuron.LIFNode()),
             (4, 2, 5)),
            ("ElementWiseRecurrentContainer", lambda: L.ElementWiseRecurrentContainer(
                ab.neuron.IFNode(), element_wise_function=lambda y, x: y + x, step_mode="m"), (4, 2, 5)),
            ("LinearRecurrentContainer", lambda: L.LinearRecurrentContainer(
                ab.neuron.IFNode(), in_features=5, out_features=5, step_mode="m"), (4, 2, 5)),
            ("SynapseFilter", lambda: L.SynapseFilter(tau=3.0, learnable=True, step_mode="m"), (4, 2, 5)),
            ("VotingLayer", lambda: L.VotingLayer(3, step_mode="m"), (3, 2, 9)),
            ("Delay", lambda: L.Delay(2, step_mode="m"), (5, 2, 3)),
            ("ThresholdDependentBatchNorm2d", lambda: L.ThresholdDependentBatchNorm2d(
                alpha=1.0, v_th=0.5, num_features=3), (3, 2, 3, 4, 4)),
            ("TemporalWiseAttention", lambda: L.TemporalWiseAttention(4, reduction=2, dimension=2), (4, 3, 6)),
        ]
    report, results = {}, ({}, {})
    torch.manual_seed(5)
    for (name, make_theirs, shape), (_, make_ours, _) in zip(cases(ab_theirs), cases(ab_ours)):
        x = torch.randn(shape, dtype=DTYPE)
        nets = []
        for make in (make_theirs, make_ours):
            torch.manual_seed(0)
            nets.append(make().to(DTYPE))
        nets[1].load_state_dict(nets[0].state_dict(), strict=True)
        report[f"{name} keys"] = list(nets[0].state_dict()) == list(nets[1].state_dict())
        for net, out in zip(nets, results):
            torch.manual_seed(1)  # dropout masks
            out.update({f"{name} {k}": v for k, v in _run(net, x).items()})
            if hasattr(net, "step_mode") and name not in ("Dropout", "Dropout2d", "Delay", "SynapseFilter") \
                    and "Container" not in name and net.step_mode == "m" and name not in (
                        "ThresholdDependentBatchNorm2d", "TemporalWiseAttention"):
                net.step_mode = "s"
                out[f"{name} single step"] = net(x[0]).detach()
    return report, results


def encoders_monitors_functional(ab_theirs, ab_ours):
    """The stateful encoders in both step modes, every monitor, and the functional helpers."""
    report, results = {}, ({}, {})
    x = torch.rand(3, 4, dtype=DTYPE) * 0.85
    pattern = (torch.rand(3, 2, 4) > 0.5).to(DTYPE)
    for ab, out in zip((ab_theirs, ab_ours), results):
        E, F = ab.encoding, ab.functional
        for name, make in (("latency linear", lambda m: E.LatencyEncoder(4, step_mode=m)),
                           ("latency log", lambda m: E.LatencyEncoder(5, enc_function="log", step_mode=m)),
                           ("weighted phase", lambda m: E.WeightedPhaseEncoder(3, step_mode=m)),
                           ("periodic", lambda m: E.PeriodicEncoder(pattern, step_mode=m))):
            single = make("s")  # (SpikingJelly's periodic encoder takes its train again as the first input)
            out[f"{name} s"] = torch.stack([single(pattern if name == "periodic" else x) for _ in range(6)])
            if name != "periodic":
                out[f"{name} m"] = make("m")(x.unsqueeze(0).repeat(6, 1, 1))
        net = nn.Sequential(ab.layer.Linear(4, 5, step_mode="m"), ab.neuron.LIFNode(step_mode="m"),
                            ab.layer.Linear(5, 2, step_mode="m"), ab.neuron.IFNode(step_mode="m")).to(DTYPE)
        torch.manual_seed(0)
        for layer in (net[0], net[2]):
            nn.init.uniform_(layer.weight, -1, 1)
            nn.init.uniform_(layer.bias, -0.5, 0.5)
        monitors = [ab.monitor.InputMonitor(net, ab.layer.Linear), ab.monitor.GradInputMonitor(net, ab.neuron.LIFNode),
                    ab.monitor.GradOutputMonitor(net, (ab.neuron.LIFNode, ab.neuron.IFNode)),
                    ab.monitor.AttributeMonitor("v", True, net, ab.neuron.IFNode)]
        x_seq = (torch.rand(5, 3, 4, dtype=DTYPE) * 2).requires_grad_(True)
        for _ in range(2):
            y = net(x_seq)
            y.sum().backward()
            F.reset_net(net)
        for what, monitor in zip(("input monitor", "grad input monitor", "grad output monitor", "attribute monitor"),
                                 monitors):
            out[what] = torch.cat([r.flatten() if isinstance(r, torch.Tensor) else torch.tensor([r], dtype=DTYPE)
                                             for r in monitor.records])
            out[f"{what} records per module"] = torch.tensor([len(monitor[name]) for name in monitor.monitored_layers])
            monitor.remove_hooks()
        spikes = (torch.rand(4, 3, 6) > 0.6).to(DTYPE)
        out["first_spike_index"] = F.first_spike_index(spikes).to(DTYPE)
        conv = nn.Conv2d(2, 3, 3).to(DTYPE)
        torch.manual_seed(0)
        image_seq = torch.rand(3, 2, 2, 5, 5, dtype=DTYPE)
        out["seq_to_ann_forward"] = F.seq_to_ann_forward(image_seq, conv).detach()
        out["seq_to_ann_forward list"] = F.seq_to_ann_forward(image_seq, [conv, nn.ReLU()]).detach()
        out["t_last_seq_to_ann_forward"] = F.t_last_seq_to_ann_forward(image_seq.movedim(0, -1),
                                                                       nn.Flatten()).detach()
        if_node = ab.neuron.IFNode()
        out["multi_step_forward"] = F.multi_step_forward(x_seq.detach(), if_node)
        F.reset_net(if_node)
        lif = ab.neuron.LIFNode(step_mode="m")
        out["chunk_multi_step_forward"] = F.chunk_multi_step_forward(2, x_seq.detach(), lif)
        stack = nn.Sequential(ab.layer.SeqToANNContainer(nn.Linear(4, 4)), ab.neuron.IFNode(),
                              ab.layer.MultiStepContainer(ab.neuron.LIFNode()))
        F.set_step_mode(stack, "m")
        out["set_step_mode"] = torch.tensor([stack[1].step_mode == "m", stack[2][0].step_mode == "s",
                                             hasattr(stack[0], "step_mode")])
        out["temporal_efficient_training_cross_entropy"] = F.temporal_efficient_training_cross_entropy(
            torch.linspace(-1, 1, 24, dtype=DTYPE).view(2, 3, 4), torch.tensor([0, 3, 1])).detach()
    return report, results


PROGRAMS = {f.__name__: f for f in (conv_net_multi_step, zoo_with_encoder_and_monitor, dvs_gesture_checkpoint,
                                    neurons, layers, encoders_monitors_functional)}


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
