"""``flashspike.compile`` and compiled training of real networks.

CPU: the options each mode becomes, bad arguments, and a small residual conv SNN (flashspike
neurons in containers, convolution, BatchNorm, max-pooling, a residual add) compiled with
Inductor: the same outputs and gradients as eager over consecutive steps with ``reset_net``
between them, in train and eval.

GPU (marked ``gpu``): the same network and SEW-ResNet-18 on CIFAR-sized input (its last stage
convolves a 1x1 feature map, the case torch 2.11's Inductor mispredicts under layout optimization)
trained with float16 autocast and a GradScaler under each mode: the compiled losses follow the
eager ones, and later steps compile nothing new.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import flashspike
from flashspike import compiling, functional, layer, neuron, surrogate
from flashspike.model import sew_resnet


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ---- the options ----

@pytest.mark.parametrize("mode", [None, *compiling.MODES])
def test_each_mode_becomes_its_options_with_layout_optimization_off(mode, monkeypatch):
    seen = {}
    monkeypatch.setattr(torch, "compile", lambda model, **kw: seen.update(kw) or model)
    model = nn.Linear(2, 2)
    assert flashspike.compile(model, mode=mode, fullgraph=True) is model
    assert seen["fullgraph"] is True and "mode" not in seen
    options = seen["options"]
    assert options["layout_optimization"] is False
    assert options.get("triton.cudagraphs", False) is (mode in ("reduce-overhead", "max-autotune"))
    assert options.get("max_autotune", False) is (mode is not None and mode.startswith("max-autotune"))
    assert compiling.uses_cuda_graphs(mode) is options.get("triton.cudagraphs", False)


def test_given_options_win_and_other_backends_get_their_arguments_unchanged(monkeypatch):
    seen = {}
    monkeypatch.setattr(torch, "compile", lambda model, **kw: seen.update(kw) or model)
    flashspike.compile(nn.Linear(2, 2), mode="reduce-overhead", options={"layout_optimization": True})
    assert seen["options"] == {"triton.cudagraphs": True, "layout_optimization": True}
    seen.clear()
    flashspike.compile(nn.Linear(2, 2), backend="aot_eager")
    assert seen == {"backend": "aot_eager", "mode": None, "options": None}


def test_bad_arguments_name_what_was_expected():
    with pytest.raises(ValueError, match="unknown mode 'fast'.*'reduce-overhead'"):
        flashspike.compile(nn.Linear(2, 2), mode="fast")
    with pytest.raises(TypeError, match="options must be a dict"):
        flashspike.compile(nn.Linear(2, 2), options=[("max_autotune", True)])


# ---- a residual conv SNN ----

class ResidualSNN(nn.Module):
    """conv-BN-neuron, a residual conv-BN-neuron block added to it, max-pool, linear, neuron."""

    def __init__(self, backend: str, channels: int = 8):
        super().__init__()
        node = dict(surrogate_function=surrogate.ATan(), detach_reset=True, backend=backend)
        self.stem = layer.SeqToANNContainer(nn.Conv2d(1, channels, 3, padding=1, bias=False),
                                            nn.BatchNorm2d(channels))
        self.sn1 = neuron.MultiStepIFNode(**node)
        self.block = layer.SeqToANNContainer(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                             nn.BatchNorm2d(channels))
        self.sn2 = neuron.MultiStepLIFNode(tau=2.0, **node)
        self.pool = layer.SeqToANNContainer(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(channels * 16, 10))
        self.sn3 = neuron.MultiStepParametricLIFNode(**node)

    def forward(self, x_seq):
        s = self.sn1(self.stem(x_seq))
        s = s + self.sn2(self.block(s))  # SEW's ADD
        return self.sn3(self.pool(s))  # [T, B, 10], as the zoo's multi-step nets


def _train_steps(model, net, batches, optimizer, scaler, autocast_dtype, device, mark_steps):
    losses = []
    for x, labels in batches:
        if mark_steps:
            torch.compiler.cudagraph_mark_step_begin()
        optimizer.zero_grad()
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            out = model(x)
        loss = F.cross_entropy(out.float().mean(0), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        functional.reset_net(net)
        losses.append(loss.item())
    return losses


def _compare_training(make_net, batches, device, mode, autocast_dtype, rtol, mean_eval=False):
    """Eager and compiled training of two copies of one net: the same losses step after step, and
    after warm-up no step compiles anything. ``mean_eval``: a deep net, whose float16 steps drift apart
    as a rounding flips single spikes and the updates carry the flips on: its first two losses (the same
    weights, then one update) agree within ``rtol``, later ones on average over the steps and each
    within 3·``rtol``; its evaluation outputs after training agree on average."""
    torch.manual_seed(0)
    eager_net = make_net().to(device)
    compiled_net = copy.deepcopy(eager_net)
    results = []
    for net, model in ((eager_net, eager_net), (compiled_net, flashspike.compile(compiled_net, mode=mode))):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
        net.train()
        results.append(_train_steps(model, net, batches[:2], optimizer, scaler, autocast_dtype, device,
                                    compiling.uses_cuda_graphs(mode) and model is not net))
        frames_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        results[-1] += _train_steps(model, net, batches[2:], optimizer, scaler, autocast_dtype, device,
                                    compiling.uses_cuda_graphs(mode) and model is not net)
        if model is not net:
            assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames_before, "a later step recompiled"
            net.eval()
            with torch.no_grad():
                if compiling.uses_cuda_graphs(mode):
                    torch.compiler.cudagraph_mark_step_begin()
                compiled_eval = model(batches[0][0]).float().clone()
                functional.reset_net(net)
            eager_net.eval()
            with torch.no_grad():
                eager_eval = eager_net(batches[0][0]).float()
                functional.reset_net(eager_net)
            if mean_eval:
                assert torch.isfinite(compiled_eval).all()
                assert (compiled_eval - eager_eval).abs().mean() < rtol
            else:
                torch.testing.assert_close(compiled_eval, eager_eval, rtol=rtol, atol=rtol)
    eager, compiled = torch.tensor(results[0]), torch.tensor(results[1])
    if not mean_eval:
        torch.testing.assert_close(compiled, eager, rtol=rtol, atol=rtol)
        return
    torch.testing.assert_close(compiled[:2], eager[:2], rtol=rtol, atol=rtol)
    torch.testing.assert_close(compiled, eager, rtol=3 * rtol, atol=3 * rtol)
    assert ((compiled - eager).abs() / eager.abs()).mean() < rtol, (compiled, eager)


def _batches(device, shape, classes, count=5):
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(*shape, generator=g).to(device), torch.randint(0, classes, (shape[1],), generator=g).to(device))
            for _ in range(count)]


def test_residual_snn_compiled_with_inductor_trains_like_eager_cpu(fresh_dynamo):
    device = torch.device("cpu")
    _compare_training(lambda: ResidualSNN("torch"), _batches(device, (3, 4, 1, 8, 8), 10), device, "default",
                      None, 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["default", "reduce-overhead", "max-autotune-no-cudagraphs"])
@pytest.mark.parametrize("backend", ["cupy", "triton"])
def test_residual_snn_compiled_trains_like_eager_gpu(mode, backend, fresh_dynamo):
    device = torch.device("cuda")
    _compare_training(lambda: ResidualSNN(backend), _batches(device, (4, 16, 1, 8, 8), 10), device, mode,
                      torch.float16, 2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_sew_resnet18_on_cifar_input_compiles_for_training_gpu(mode, fresh_dynamo, reproducible):
    """Its last stage convolves 1x1 feature maps: the case that plain torch.compile fails on torch 2.11.
    (reproducible: the same cuDNN kernels for both copies, whatever another test left set.)"""
    device = torch.device("cuda")

    def make_net():
        return sew_resnet.multi_step_sew_resnet18(num_classes=10, cnf="ADD", multi_step_neuron=neuron.MultiStepIFNode,
                                                  surrogate_function=surrogate.ATan(), detach_reset=True,
                                                  backend="cupy")

    _compare_training(make_net, _batches(device, (2, 8, 3, 32, 32), 10, count=4), device, mode, torch.float16, 5e-2,
                      mean_eval=True)
