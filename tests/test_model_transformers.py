"""Spikformer and the Spike-Driven Transformer: each attention against its paper formula by hand, the
neurons' options at each position, bad arguments, the kernel backends against 'torch', the compiler,
and (where FLASHSPIKE_SJ2_PATH names SpikingJelly 2.x) the models against 2.x's own in float64: the
same public signatures, state_dicts that load strictly both ways, equal outputs, gradients and
BatchNorm statistics after a training step."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from flashspike import functional, neuron, surrogate
from flashspike.model import spike_driven_transformer as sdt
from flashspike.model import spikformer
from conftest import kernel_device, peer_pythonpath, spikingjelly2_path, write_peer_stubs
from zoo_reference import assert_close

WORKER = Path(__file__).with_name("sj2_transformer_worker.py")

# Tiny models covering every branch: both patch sizes, both SDT MLP shortcuts, stems with and without pools.
# The tiny Spikformers' attention fires only with a lower threshold (a few tokens, narrow heads); it goes
# to every neuron, as any keyword the model does not take.
CASES = {
    "spikformer_patch4": ("Spikformer", dict(T=2, img_size_h=16, img_size_w=16, patch_size=4, num_classes=5,
                                             embed_dims=16, num_heads=2, depths=2, v_threshold=0.25), (3, 16, 16)),
    "spikformer_patch16": ("Spikformer", dict(T=3, in_channels=2, img_size_h=32, img_size_w=32, patch_size=16,
                                              num_classes=4, embed_dims=16, num_heads=2, mlp_ratio=2.0, depths=1,
                                              v_threshold=0.25), (2, 32, 32)),
    "sdt_0011": ("SpikeDrivenTransformer", dict(T=2, num_classes=5, embed_dims=16, num_heads=2, depths=2,
                                                pooling_stat="0011"), (3, 16, 16)),
    "sdt_1010_mlp_ratio_1": ("SpikeDrivenTransformer", dict(T=3, in_channels=2, num_classes=4, embed_dims=16,
                                                            num_heads=4, depths=1, mlp_ratio=1.0,
                                                            pooling_stat="1010"), (2, 16, 16)),
}
PUBLIC = {
    spikformer: ["Spikformer", "spikformer_cifar10", "spikformer_s", "spikformer_ti", "SpikformerConv2dBN",
                 "SpikformerConv2dBNLIF", "SpikformerPatchStem", "SpikformerMLP", "SpikformerBlock",
                 "SpikingSelfAttention"],
    sdt: ["SpikeDrivenTransformer", "sdt_8_384", "SpikeDrivenSelfAttention"],
}
BATCH = 2


def _class(name):
    return getattr(spikformer, name, None) or getattr(sdt, name)


def _build(case, **neuron_options):
    class_name, config, _ = CASES[case]
    return _class(class_name)(**config, **neuron_options)


def _inputs(case, dtype=torch.float64):
    class_name, config, image = CASES[case]
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(config["T"], BATCH, *image, generator=generator, dtype=dtype) * 3
    return x, torch.rand(BATCH, *image, generator=generator, dtype=dtype) * 3


def _spread(model):
    """Weights at which the tiny models fire in training and in eval mode: He-scaled convolutions and
    BatchNorm with random scales, shifts and statistics (the heads' biases stay zero, so an output that
    is not zero proves spikes reached the head)."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                size = module.num_features
                module.weight.copy_(1.0 + 2.0 * torch.rand(size, generator=generator))
                module.bias.copy_(torch.rand(size, generator=generator) - 0.5)
                module.running_mean.copy_(0.2 * torch.randn(size, generator=generator))
                module.running_var.copy_(0.05 + 0.2 * torch.rand(size, generator=generator))
    return model


def _parameters_by_key(model):
    """Parameters under their state_dict keys (SpikingJelly's layout, which a container's own names differ from)."""
    return {key: value for key, value in model.state_dict(keep_vars=True).items() if isinstance(value, nn.Parameter)}


def _training_step(model, x):
    x = x.clone().requires_grad_(True)
    y = model.train()(x)
    (y * torch.linspace(-1.0, 1.0, y.numel(), dtype=y.dtype, device=y.device).view_as(y)).sum().backward()
    return y.detach(), x.grad, {key: p.grad for key, p in _parameters_by_key(model).items()}


# ---- against SpikingJelly 2.x ----


@pytest.fixture(scope="module")
def sj2_report(tmp_path_factory):
    """Every case run by SpikingJelly 2.x's models, with our (spread) weights loaded, in one subprocess."""
    sj2 = spikingjelly2_path()
    folder = tmp_path_factory.mktemp("sj2")
    cases = []
    for case in CASES:
        torch.manual_seed(3)
        x, x_static = _inputs(case)
        cases.append({"class": CASES[case][0], "config": CASES[case][1], "x": x, "x_static": x_static,
                      "state": _spread(_build(case).double()).state_dict()})
    torch.save({"names": [name for names in PUBLIC.values() for name in names], "cases": cases}, folder / "jobs.pt")
    env = dict(os.environ, PYTHONPATH=peer_pythonpath(sj2, write_peer_stubs(folder / "stubs")))
    done = subprocess.run([sys.executable, str(WORKER), str(folder / "jobs.pt"), str(folder / "report.pt")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = torch.load(folder / "report.pt")
    return report["signatures"], dict(zip(CASES, report["cases"]))


def _signature(fn):
    import inspect

    return [(p.name, str(p.kind), repr(p.default)) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("module", list(PUBLIC), ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_public_names_have_spikingjelly2s_parameters(module, sj2_report):
    signatures, _ = sj2_report
    for name in PUBLIC[module]:
        ours = getattr(module, name)
        assert name in module.__all__
        if isinstance(ours, type):
            assert signatures[name] == {"init": _signature(ours.__init__)[1:], "forward": _signature(ours.forward)[1:]}
        else:
            assert signatures[name] == {"call": _signature(ours)}, name


@pytest.mark.parametrize("case", list(CASES))
def test_state_dicts_load_both_ways_and_a_training_step_equals_spikingjelly2s(case, sj2_report):
    _, reports = sj2_report
    theirs = reports[case]
    # 2.x's freshly built model loads strictly into ours (ours loaded into 2.x's in the subprocess).
    fresh = _build(case, backend="torch").double()
    fresh.load_state_dict(theirs["fresh_state"], strict=True)
    assert list(fresh.state_dict()) == list(theirs["fresh_state"])
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, theirs["fresh_state"][key]), key

    torch.manual_seed(3)
    x, x_static = _inputs(case)
    ours = _spread(_build(case, backend="torch").double())
    y, x_grad, grads = _training_step(ours, x)
    assert theirs["y"].abs().sum() > 0 and theirs["x_grad"].abs().sum() > 0, "a silent reference proves nothing"
    assert_close(y, theirs["y"], "output")
    assert_close(x_grad, theirs["x_grad"], "input gradient")
    assert grads.keys() == theirs["grads"].keys()
    for key, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, f"no gradient reached {key}"
        assert_close(grad, theirs["grads"][key], f"gradient of {key}")
    for key, value in ours.state_dict().items():  # BatchNorm's statistics after the step
        if value.is_floating_point():
            assert_close(value, theirs["state_after"][key], key)
        else:
            assert torch.equal(value, theirs["state_after"][key]), key

    functional.reset_net(ours)
    with torch.no_grad():
        y_static = ours.eval()(x_static)
    assert theirs["y_static"].abs().sum() > 0
    assert_close(y_static, theirs["y_static"], "eval-mode output of a static image")


# ---- by hand ----


def _identity_neuron(**options):
    """A "neuron" that passes its input on, so an attention's output is its formula on real numbers."""
    return nn.Identity()


def _conv_bn_eval(weight, x, bias=None):
    """A 1x1 convolution over the channels of ``x`` [T, N, C, *] and a BatchNorm at its initial statistics
    (eval mode: x / sqrt(1 + eps))."""
    y = torch.einsum("oc,tnc...->tno...", weight.reshape(weight.shape[0], -1), x)
    if bias is not None:
        y = y + bias.view(-1, *([1] * (x.dim() - 3)))
    return y / (1.0 + 1e-5) ** 0.5


def test_spiking_self_attention_is_the_papers_formula_per_head():
    # SSA(Q, K, V) = s · Q Kᵀ V per head with token-major Q, K, V [L, head_dim], s = 0.125
    torch.manual_seed(0)
    attention = spikformer.SpikingSelfAttention(6, num_heads=2, spiking_neuron=_identity_neuron).double().eval()
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)  # [T, N, C, L]
    qkv = _conv_bn_eval(attention.qkv_conv_bn[0].weight, x).transpose(-2, -1)  # [T, N, L, 3·C]
    q, k, v = qkv.split(6, dim=-1)
    heads = [0.125 * q[..., h * 3:(h + 1) * 3] @ k[..., h * 3:(h + 1) * 3].transpose(-2, -1) @ v[..., h * 3:(h + 1) * 3]
             for h in range(2)]
    expected = _conv_bn_eval(attention.proj_conv_bn[0].weight, torch.cat(heads, dim=-1).transpose(-2, -1))
    assert_close(attention(x), expected, "SSA")


def test_spike_driven_self_attention_is_the_papers_formula():
    # SDSA(Q, K, V) = Q ⊗ SUM_tokens(K ⊗ V), then a 1x1 conv-BN and the shortcut
    torch.manual_seed(0)
    attention = sdt.SpikeDrivenSelfAttention(4, num_heads=2, spiking_neuron=_identity_neuron).double().eval()
    x = torch.randn(2, 3, 4, 2, 3, dtype=torch.float64)  # [T, N, C, H, W]
    q, k, v = (_conv_bn_eval(conv.weight, x) for conv in (attention.q_conv, attention.k_conv, attention.v_conv))
    kv = (k * v).sum(dim=(-2, -1), keepdim=True)
    expected = _conv_bn_eval(attention.proj_conv.weight, q * kv, attention.proj_conv.bias) + x
    assert_close(attention(x), expected, "SDSA")


def test_each_position_gets_the_papers_neuron_options_and_the_callers_keywords():
    model = spikformer.Spikformer(T=1, img_size_h=16, img_size_w=16, patch_size=4, num_classes=3, embed_dims=16,
                                  num_heads=2, depths=1, tau=3.0, backend="torch", surrogate_function=surrogate.ATan())
    attention, mlp = model.blocks[0].attn, model.blocks[0].mlp
    # the attention keeps the paper's tau and detach_reset; every other keyword reaches every neuron
    assert (attention.attn_lif.v_threshold, attention.attn_lif.tau, attention.attn_lif.detach_reset) == (0.5, 2.0, True)
    assert (attention.qkv_lif.v_threshold, attention.qkv_lif.tau) == (1.0, 2.0)
    assert (mlp.neuron1.tau, mlp.neuron1.detach_reset) == (3.0, True)
    assert model.patch_embed.stages[0].neuron.tau == 3.0
    nodes = [m for m in model.modules() if isinstance(m, neuron.MultiStepLIFNode)]
    assert len(nodes) == 5 + 3 + 2 and all(n.backend == "torch" for n in nodes)
    assert all(isinstance(n.surrogate_function, surrogate.ATan) for n in nodes)
    assert len({id(n.surrogate_function) for n in nodes}) == len(nodes)  # each neuron its own copy

    # a neuron class of the caller's gets the caller's keywords only
    model = spikformer.Spikformer(T=1, img_size_h=16, img_size_w=16, patch_size=4, num_classes=3, embed_dims=16,
                                  num_heads=2, depths=1, spiking_neuron=neuron.MultiStepIFNode, v_threshold=0.7)
    attn_lif = model.blocks[0].attn.attn_lif
    assert type(attn_lif) is neuron.MultiStepIFNode and (attn_lif.v_threshold, attn_lif.detach_reset) == (0.7, False)

    model = sdt.SpikeDrivenTransformer(T=1, num_classes=3, embed_dims=16, num_heads=2, depths=1)
    attention, mlp = model.blocks[0].attn, model.blocks[0].mlp
    assert not model.patch_embed.stages[0][2].detach_reset and not mlp.lif1.detach_reset
    assert not model.head_lif.detach_reset and model.head_lif.v_threshold == 1.0
    assert attention.q_lif.detach_reset and attention.shortcut_lif.detach_reset
    assert (attention.attn_lif.v_threshold, attention.attn_lif.detach_reset) == (0.5, True)


def test_a_static_image_is_the_sequence_of_it_repeated():
    for case in ("spikformer_patch4", "sdt_0011"):
        model = _spread(_build(case, backend="torch").double()).eval()
        _, x_static = _inputs(case)
        with torch.no_grad():
            y_static = model(x_static)
            functional.reset_net(model)
            y_seq = model(x_static.expand(CASES[case][1]["T"], *x_static.shape))
        expected_shape = (2, BATCH, 5) if case.startswith("spikformer") else (BATCH, 5)
        assert y_static.shape == expected_shape and y_static.abs().sum() > 0
        assert torch.equal(y_static, y_seq), case


@pytest.mark.parametrize("build, error, words", [
    (lambda: spikformer.Spikformer(patch_size=8), ValueError, "patch_size"),
    (lambda: spikformer.SpikingSelfAttention(10, num_heads=4), ValueError, "num_heads"),
    (lambda: sdt.SpikeDrivenSelfAttention(10, num_heads=4), ValueError, "num_heads"),
    (lambda: sdt.SpikeDrivenTransformer(pooling_stat="011"), ValueError, "pooling_stat"),
    (lambda: sdt.SpikeDrivenTransformer(pooling_stat="0120"), ValueError, "pooling_stat"),
    (lambda: spikformer.SpikformerMLP(4, 8, 4, step_mode="s"), ValueError, "step_mode"),
    (lambda: spikformer.SpikformerMLP(4, 8, 4, spiking_neuron=3), TypeError, "spiking_neuron"),
])
def test_bad_arguments_are_refused_by_name(build, error, words):
    with pytest.raises(error, match=words):
        build()


@pytest.mark.parametrize("call, words", [
    (lambda: _build("spikformer_patch4")(torch.rand(3, 16, 16)), r"\[T, N, C, H, W\]"),
    (lambda: _build("sdt_0011")(torch.rand(1, 2, 2, 3, 16, 16)), r"\[T, N, C, H, W\]"),
    (lambda: spikformer.SpikformerBlock(16, 2)(torch.rand(2, 2, 16, 4)), r"\[T, N, C, H, W\]"),
    (lambda: spikformer.SpikingSelfAttention(16, 2)(torch.rand(2, 2, 16, 4, 4)), r"\[T, N, C, L\]"),
])
def test_inputs_of_the_wrong_shape_are_refused_by_name(call, words):
    with pytest.raises(ValueError, match=words):
        call()


# ---- backends and the compiler ----


@pytest.mark.parametrize("case", ["spikformer_patch16", "sdt_1010_mlp_ratio_1"])
def test_triton_backend_trains_like_torch(case, reproducible):
    # (reproducible: cuDNN's default weight-gradient kernels may add in any order, and the first
    # convolution's weight gradient then differs between two identical float32 steps)
    device = kernel_device("triton")
    reference = _spread(_build(case, backend="torch")).to(device)
    model = copy.deepcopy(reference)
    neurons = sum(isinstance(m, neuron.MultiStepLIFNode) for m in model.modules())
    assert functional.set_backend(model, "triton") == neurons
    x, _ = _inputs(case, dtype=torch.float32)
    expected, got = _training_step(reference, x.to(device)), _training_step(model, x.to(device))
    assert expected[0].abs().sum() > 0
    for key in expected[2]:
        torch.testing.assert_close(got[2][key], expected[2][key], msg=key)
    torch.testing.assert_close(got[:2], expected[:2])


@pytest.mark.parametrize("case", ["spikformer_patch16", "sdt_1010_mlp_ratio_1"])
def test_compiles_whole_without_graph_breaks(case):
    torch._dynamo.reset()
    model = _spread(_build(case, backend="torch")).eval()
    x, _ = _inputs(case, dtype=torch.float32)
    with torch.no_grad():
        eager = model(x)
        functional.reset_net(model)
        # aot_eager: the whole graph is captured (fullgraph fails on any break) without minutes of C++
        # compilation on a CPU
        got = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    torch._dynamo.reset()
    assert eager.abs().sum() > 0
    torch.testing.assert_close(got, eager, rtol=0, atol=0)
