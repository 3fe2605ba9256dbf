"""flashspike.CapturedStep: the whole training step replayed from a CUDA graph.

CPU: the same steps run eagerly (with a notice), equal to a hand-written training loop; every bad
argument named. GPU (marked ``gpu``): replays equal the same steps run eagerly (losses, outputs,
weights) with AMP and a GradScaler, fused and capturable optimizers, an LR scheduler, batches of another
shape (eager, or a graph of their own), a zoo model and a model written with flashspike neurons only; and
the captured step needs no more memory than the eager one.
"""

import copy
import warnings
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flashspike import CapturedStep, functional, layer, neuron, surrogate
from flashspike.dropped_potential import DROPPED, DROPS_LAST_POTENTIAL, DroppedPotentialError
from conftest import kernel_device


def _net(backend="torch", seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        layer.SeqToANNContainer(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8)),
        neuron.MultiStepLIFNode(tau=2.0, surrogate_function=surrogate.ATan(), backend=backend),
        layer.SeqToANNContainer(nn.Flatten(), nn.Linear(8 * 6 * 6, 5)),
        neuron.MultiStepIFNode(v_threshold=0.2, surrogate_function=surrogate.ATan(), backend=backend),
    )


def _rate_loss(out, labels):
    return F.cross_entropy(out.float().mean(0), labels)


def _batches(device, count=6, b=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [((torch.rand(3, b, 2, 6, 6, generator=g) * 3).to(device), torch.randint(0, 5, (b,), generator=g).to(device))
            for _ in range(count)]


# ------------------------------------------------------------------ CPU: eager steps, bad arguments

def test_on_the_cpu_steps_run_eagerly_as_a_plain_training_loop():
    plain, stepped = _net(), _net()
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.5, momentum=0.9)
    opt_stepped = torch.optim.SGD(stepped.parameters(), lr=0.5, momentum=0.9)
    sched_plain = torch.optim.lr_scheduler.StepLR(opt_plain, 2, 0.5)
    sched_stepped = torch.optim.lr_scheduler.StepLR(opt_stepped, 2, 0.5)
    with pytest.warns(UserWarning, match="CUDA graphs need a CUDA device; the model is on cpu"):
        step = CapturedStep(stepped, _rate_loss, opt_stepped)
    losses = []
    for x, y in _batches("cpu"):
        opt_plain.zero_grad()
        out = plain(x)
        loss = _rate_loss(out, y)
        loss.backward()
        opt_plain.step()
        functional.reset_net(plain)
        sched_plain.step()
        got = step(x, y)
        sched_stepped.step()
        assert torch.equal(got, loss.detach()) and not got.requires_grad
        assert torch.equal(step.outputs, out.detach())
        losses.append(float(got))
    assert len(set(losses)) > 1, "the loss should move as the net trains"
    assert not step.captured and step.steps == 6
    for (name, a), b in zip(plain.named_parameters(), stepped.parameters()):
        assert torch.equal(a, b), name
    assert all(isinstance(m.v, float) for m in stepped if isinstance(m, neuron.MultiStepIFNode)), "reset after each step"


def test_capture_false_says_nothing_and_reset_false_keeps_the_state():
    net = _net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step = CapturedStep(net, _rate_loss, torch.optim.SGD(net.parameters(), lr=0.1), capture=False, reset=False)
    x, y = _batches("cpu", 1)[0]
    step(x, y)
    assert isinstance(net[1].v, torch.Tensor) and net[1].v.shape == (4, 8, 6, 6)


def test_the_neurons_rest_before_the_backward_and_their_last_potentials_are_freed():
    # A kernel backend keeps nothing of a neuron's last potential for its backward; the step resets the
    # neurons once the loss is computed, so those tensors are gone when the backward starts.
    device = kernel_device("triton")
    net = _net("triton").to(device)
    nodes = [m for m in net if hasattr(m, "v")]
    potentials = []  # a weak reference to each neuron's last potential, as its forward left it
    for node in nodes:
        node.register_forward_hook(lambda module, args, out: potentials.append(weakref.ref(module.v)))
    at_backward = []

    def loss_fn(out, labels):
        out.register_hook(lambda grad: at_backward.append(([m.v for m in nodes], [ref() for ref in potentials])))
        return _rate_loss(out, labels)

    step = CapturedStep(net, loss_fn, torch.optim.SGD(net.parameters(), lr=0.1), capture=False,
                        drop_last_potentials=False)
    x, y = _batches(device, 1)[0]
    step(x, y)
    (states, alive), = at_backward
    assert [type(v) for v in states] == [float, float] and states == [0.0, 0.0], "reset before the backward"
    assert len(alive) == 2 and alive == [None, None], "the last potentials freed before the backward"

    # reset=False: the potentials stay the neurons' state, through the backward and after it
    potentials.clear(), at_backward.clear()
    CapturedStep(net, loss_fn, torch.optim.SGD(net.parameters(), lr=0.1), capture=False, reset=False)(x, y)
    (states, alive), = at_backward
    assert all(isinstance(v, torch.Tensor) for v in states) and all(v is not None for v in alive)
    assert all(m.v is ref() for m, ref in zip(nodes, potentials))


def _potentials_made(monkeypatch):
    """Weak references to the last potential of every kernel call from now on, as the kernels made it."""
    from flashspike.backends import kernel_set

    made, real = [], kernel_set.forward_outputs

    def recording(x, save_h, store_v_seq):
        spike, v_out, h = real(x, save_h, store_v_seq)
        made.append(weakref.ref(v_out))
        return spike, v_out, h

    monkeypatch.setattr(kernel_set, "forward_outputs", recording)
    return made


def test_the_neurons_drop_their_last_potentials_as_the_forward_makes_them(monkeypatch):
    device = kernel_device("triton")
    made = _potentials_made(monkeypatch)
    nets = {drop: _net("triton").to(device) for drop in (True, False)}
    x_y = _batches(device, 3)
    losses = {}
    for drop, net in nets.items():
        nodes = [m for m in net if hasattr(m, "v")]
        states, alive_at_loss = [], []
        for node in nodes:
            node.register_forward_hook(lambda module, args, out: states.append(module.v))

        def loss_fn(out, labels):
            alive_at_loss.append([ref() is not None for ref in made[-2:]])
            return _rate_loss(out, labels)

        step = CapturedStep(net, loss_fn, torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9), capture=False,
                            drop_last_potentials=drop)
        losses[drop] = [step(x, y) for x, y in x_y]
        assert all(node.v == 0.0 for node in nodes), "reset in every step, either way"
        if drop:
            assert all(v is DROPPED for v in states) and len(states) == 6
            assert alive_at_loss == [[False, False]] * 3, "each last potential freed as soon as it was made"
        else:
            assert all(isinstance(v, torch.Tensor) for v in states)
            assert alive_at_loss == [[True, True]] * 3
        states.clear()
    # nothing else differs: the same losses and weights
    assert [float(v) for v in losses[True]] == [float(v) for v in losses[False]]
    for a, b in zip(nets[True].parameters(), nets[False].parameters()):
        assert torch.equal(a, b)


def test_reading_a_dropped_potential_names_the_option_and_leaves_the_net_at_rest():
    net = _net()
    node = net[1]

    def reads_v(out, labels):
        return _rate_loss(out, labels) + 0.0 * node.v.mean()

    step = CapturedStep(net, reads_v, torch.optim.SGD(net.parameters(), lr=0.1), capture=False)
    x, y = _batches("cpu", 1)[0]
    with pytest.raises(DroppedPotentialError, match="drop_last_potentials=False"):
        step(x, y)
    assert node.v == 0.0 and not node.__dict__.get("drops_last_potential"), "reset, and no longer dropping"
    with pytest.raises(AttributeError, match="dropped the last potential v"):  # v_seq, computed from v
        CapturedStep(net, lambda out, labels: _rate_loss(out, labels) + 0.0 * node.v_seq.sum(),
                     torch.optim.SGD(net.parameters(), lr=0.1), capture=False)(x, y)
    # kept on request, or when the step leaves the state to the caller
    for kwargs in (dict(drop_last_potentials=False), dict(reset=False)):
        loss = CapturedStep(net, reads_v, torch.optim.SGD(net.parameters(), lr=0.1), capture=False, **kwargs)(x, y)
        assert torch.isfinite(loss)
        functional.reset_net(net)
    with pytest.raises(TypeError, match="drop_last_potentials must be True or False, got 'yes'"):
        CapturedStep(net, _rate_loss, torch.optim.SGD(net.parameters(), lr=0.1), drop_last_potentials="yes")


def test_a_neuron_called_twice_in_one_forward_says_why_it_cannot_continue():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.node = neuron.MultiStepIFNode(backend="torch")

        def forward(self, x):  # the second call continues from the first's last potential
            return self.node(self.fc(torch.cat([x, x])))[-3:] + self.node(self.fc(x))

    net = Twice()
    x, y = torch.rand(3, 2, 4), torch.randint(0, 3, (2,))
    step = CapturedStep(net, _rate_loss, torch.optim.SGD(net.parameters(), lr=0.1), capture=False)
    with pytest.raises(DroppedPotentialError, match="MultiStepIFNode was called again before reset"):
        step(x, y)
    CapturedStep(net, _rate_loss, torch.optim.SGD(net.parameters(), lr=0.1), capture=False,
                 drop_last_potentials=False)(x, y)


def test_a_chunked_sequence_keeps_the_potentials_its_next_chunks_continue_from():
    from flashspike.activation_based import functional as ab_functional

    class Chunked(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.node = neuron.MultiStepLIFNode(tau=2.0, backend="torch")

        def forward(self, x):
            return ab_functional.chunk_multi_step_forward(2, self.fc(x), self.node)

    x, y = torch.rand(5, 2, 4) * 3, torch.randint(0, 3, (2,))
    losses = []
    for drop in (True, False):
        torch.manual_seed(0)
        net = Chunked()
        step = CapturedStep(net, _rate_loss, torch.optim.SGD(net.parameters(), lr=0.1), capture=False,
                            drop_last_potentials=drop)
        losses.append([float(step(x, y)) for _ in range(2)])
        assert net.node.v == 0.0 and DROPS_LAST_POTENTIAL not in net.node.__dict__
    assert losses[0] == losses[1]


def test_inputs_and_targets_may_be_nested():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, pair):
            return self.fc(pair["a"]) + pair["b"]

    net = TwoInputs()
    step = CapturedStep(net, lambda out, t: F.mse_loss(out, t[0]) * t[1], torch.optim.SGD(net.parameters(), lr=0.1),
                        capture=False)
    loss = step({"a": torch.ones(4, 3), "b": torch.zeros(4, 2)}, (torch.ones(4, 2), 2.0))
    assert loss.shape == () and step.outputs.shape == (4, 2)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(model=lambda x: x), TypeError, "model must be a torch.nn.Module, got function"),
    (dict(loss_fn=3), TypeError, "loss_fn must be callable"),
    (dict(optimizer="sgd"), TypeError, "optimizer must be a torch.optim.Optimizer, got str"),
    (dict(autocast_dtype=torch.float32), ValueError, "autocast_dtype must be None, torch.float16 or torch.bfloat16"),
    (dict(warmup_steps=0), ValueError, "warmup_steps must be an integer of at least 1"),
    (dict(warmup_steps=True), ValueError, "warmup_steps must be an integer of at least 1"),
    (dict(warmup_steps=2.0), ValueError, "warmup_steps must be an integer of at least 1"),
    (dict(other_shapes="graph"), ValueError, r"other_shapes must be one of \('eager', 'capture'\), got 'graph'"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    net = nn.Linear(2, 2)
    arguments = dict(model=net, loss_fn=F.mse_loss, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), capture=False)
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        CapturedStep(**arguments)


def test_a_model_without_parameters_or_on_two_devices_is_refused():
    with pytest.raises(ValueError, match="parameters must be on one device, found none"):
        CapturedStep(nn.ReLU(), F.mse_loss, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))
    split = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2, device="meta"))
    with pytest.raises(ValueError, match=r"one device, found \['cpu', 'meta'\]"):
        CapturedStep(split, F.mse_loss, torch.optim.SGD(split.parameters(), lr=0.1))


# ------------------------------------------------------------------ GPU: replays against eager steps

def _pair(make_net, make_optimizer, scaled, device, **kwargs):
    """The same net and optimizer twice: stepped eagerly and captured."""
    steps = []
    for capture in (False, True):
        net = make_net().to(device)
        optimizer = make_optimizer(net.parameters())
        scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 10) if scaled else None
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=5)
        steps.append((CapturedStep(net, _rate_loss, optimizer, scaler, capture=capture, **kwargs), net, scheduler))
    return steps


def _run_both(steps, batches):
    losses = []
    for x, y in batches:
        results = []
        for step, _, scheduler in steps:
            results.append((step(x, y).clone(), step.outputs.clone()))
            scheduler.step()
        (loss_a, out_a), (loss_b, out_b) = results
        torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out_b, out_a, rtol=0, atol=1e-6)
        # each parameter's .grad is the step's gradient, whichever graph (or eager step) computed it
        for p, q in zip(steps[0][1].parameters(), steps[1][1].parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6)
        losses.append(float(loss_a))
    return losses


def _same_weights(steps):
    (_, a, _), (_, b, _) = steps
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cupy", "triton"])
@pytest.mark.parametrize("optimizer, scaled, dtype", [
    (lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9, fused=True), True, torch.float16),
    (lambda p: torch.optim.AdamW(p, lr=1e-2, fused=True, capturable=True), True, torch.float16),
    (lambda p: torch.optim.Adam(p, lr=1e-2, capturable=True), False, torch.bfloat16),
    (lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9, fused=True), False, None),
], ids=["sgd-fp16-scaled", "adamw-fp16-scaled", "adam-capturable-bf16", "sgd-fp32"])
def test_replays_train_as_eager_steps_gpu(backend, optimizer, scaled, dtype, reproducible):
    device = kernel_device(backend)
    steps = _pair(lambda: _net(backend), optimizer, scaled, device, autocast_dtype=dtype)
    losses = _run_both(steps, _batches(device, 8))
    assert steps[1][0].captured and steps[1][0].graphs == 1 and not steps[0][0].captured
    assert len(set(losses)) > 1
    _same_weights(steps)
    # the scheduler's learning rate reached the graph: a float in the group, the same as the eager one's
    assert steps[1][0].optimizer.param_groups[0]["lr"] == steps[0][0].optimizer.param_groups[0]["lr"]
    assert isinstance(steps[1][0].optimizer.param_groups[0]["lr"], float)


@pytest.mark.gpu
def test_a_batch_of_another_shape_runs_eagerly_or_gets_its_own_graph_gpu(reproducible):
    device = kernel_device("cupy")
    sgd = lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9, fused=True)  # noqa: E731
    full, partial = _batches(device, 6, b=4), _batches(device, 3, b=2, seed=2)
    mixed = [full[0], full[1], full[2], full[3], partial[0], full[4], partial[1], partial[2], full[5], partial[0]]
    for other_shapes, graphs in (("eager", 1), ("capture", 2)):
        steps = _pair(_net, sgd, True, device, autocast_dtype=torch.float16, other_shapes=other_shapes)
        _run_both(steps, mixed)
        assert steps[1][0].graphs == graphs
        _same_weights(steps)


@pytest.mark.gpu
def test_a_learning_rate_of_zero_freezes_the_replayed_weights_gpu():
    device = kernel_device("cupy")
    net = _net("cupy").to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.0, fused=True)
    step = CapturedStep(net, _rate_loss, optimizer, warmup_steps=1)
    batches = _batches(device, 4)
    for x, y in batches[:2]:
        step(x, y)
    assert step.captured
    optimizer.param_groups[0]["lr"] = 0.0
    before = [p.detach().clone() for p in net.parameters()]
    step(*batches[2])
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before)), "the replay ignored a learning rate of 0"
    optimizer.param_groups[0]["lr"] = 0.1
    step(*batches[3])
    assert not all(torch.equal(p, q) for p, q in zip(net.parameters(), before))


@pytest.mark.gpu
def test_an_optimizer_that_reads_the_host_is_refused_gpu():
    net = nn.Linear(2, 2).cuda()
    with pytest.raises(ValueError, match="SGD must be created with fused=True"):
        CapturedStep(net, F.mse_loss, torch.optim.SGD(net.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="AdamW must be created with capturable=True"):
        CapturedStep(net, F.mse_loss, torch.optim.AdamW(net.parameters(), fused=True))
    with pytest.raises(ValueError, match="with a GradScaler, Adam must be created with fused=True"):
        CapturedStep(net, F.mse_loss, torch.optim.Adam(net.parameters(), capturable=True), torch.amp.GradScaler("cuda"))
    # a disabled scaler is no scaler
    CapturedStep(net, F.mse_loss, torch.optim.Adam(net.parameters(), capturable=True),
                 torch.amp.GradScaler("cuda", enabled=False))


@pytest.mark.gpu
def test_a_zoo_model_and_a_model_of_flashspike_neurons_only_gpu(reproducible):
    from flashspike.model import sew_resnet

    device = kernel_device("triton")

    def sew():
        torch.manual_seed(0)
        return sew_resnet.multi_step_sew_resnet18(num_classes=5, cnf="ADD", multi_step_neuron=neuron.MultiStepIFNode,
                                                  surrogate_function=surrogate.ATan(), detach_reset=True,
                                                  backend="triton").to(memory_format=torch.channels_last)

    class Attention(nn.Module):  # written as a Spikformer-style model file is: plain layers, flashspike neurons
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.q, self.k, self.v = (nn.Linear(16, 16) for _ in range(3))
            self.q_lif, self.k_lif, self.v_lif = (neuron.MultiStepLIFNode(tau=2.0, detach_reset=True, backend="triton")
                                                  for _ in range(3))
            self.head = nn.Linear(16, 5)

        def forward(self, x):  # [T, B, N, 16]
            q, k, v = self.q_lif(self.q(x)), self.k_lif(self.k(x)), self.v_lif(self.v(x))
            return self.head((q @ k.transpose(-2, -1) @ v * 0.125).mean(2))

    sgd = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, fused=True)  # noqa: E731
    g = torch.Generator().manual_seed(3)
    images = [((torch.rand(2, 4, 3, 32, 32, generator=g) * 2).to(device), torch.randint(0, 5, (4,), generator=g).to(device))
              for _ in range(5)]
    tokens = [(torch.randn(2, 4, 6, 16, generator=g).to(device), torch.randint(0, 5, (4,), generator=g).to(device))
              for _ in range(5)]
    for make, batches in ((sew, images), (Attention, tokens)):
        steps = _pair(make, sgd, True, device, autocast_dtype=torch.float16)
        _run_both(steps, batches)
        assert steps[1][0].captured
        _same_weights(steps)


@pytest.mark.gpu
def test_the_captured_step_peaks_where_the_eager_step_does_gpu():
    # PyTorch keeps a cuBLAS workspace (tens of MiB) for each stream that ran a matmul: warm-ups on
    # streams of their own, kept after the capture, would add one per warm-up to the captured step's peak.
    device = kernel_device("triton")
    batches = _batches(device, 6)
    peaks = {}
    for capture in (False, True):
        net = _net("triton").to(device)
        sgd = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9, fused=True)
        torch.cuda.synchronize(device)
        torch._C._cuda_clearCublasWorkspaces()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step = CapturedStep(net, _rate_loss, sgd, capture=capture, warmup_steps=3)
        for x, y in batches:
            step(x, y)
        torch.cuda.synchronize(device)
        assert step.captured == capture
        peaks[capture] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        del step, sgd, net
    assert peaks[False] > 1, "the eager step allocated no workspace: the comparison tests nothing"
    assert peaks[True] <= peaks[False] + 1, f"captured step's peak {peaks[True]:.1f} MiB, eager {peaks[False]:.1f} MiB"
