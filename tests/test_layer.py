"""flashspike.layer: containers and their checkpoints, dropouts, stateful and stateless layers."""

import copy

import pytest
import torch
from torch import nn

from flashspike import functional, layer, neuron


def _sj():
    return pytest.importorskip("spikingjelly.clock_driven.layer")


# ---------------------------------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------------------------------


def _conv_net(lib_layer):
    return nn.Sequential(
        lib_layer.SeqToANNContainer(nn.Conv2d(1, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)),
        lib_layer.SeqToANNContainer(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)),
        lib_layer.SeqToANNContainer(nn.Linear(5, 2)),
        lib_layer.MultiStepContainer(nn.Linear(2, 2), nn.Tanh()),
    )


def test_parameter_and_state_dict_names_are_spikingjelly_names():
    net = _conv_net(layer)
    keys = ["0.0.weight", "0.1.weight", "0.1.bias", "0.1.running_mean", "0.1.running_var", "0.1.num_batches_tracked",
            "1.1.weight", "1.1.bias", "2.0.weight", "2.0.bias", "3.0.weight", "3.0.bias"]
    assert list(net.state_dict()) == keys
    # Names keyed by optimizers and parameter groups are the same names.
    assert [name for name, _ in net.named_parameters()] == [k for k in keys if "running" not in k and "batches" not in k]
    assert "(0): Conv2d(" in repr(net[0]) and "(0): Linear(" in repr(net[2])
    meta = net.state_dict()._metadata
    assert "0.1" in meta and "2.0" in meta


def test_optimizer_state_keyed_by_name_matches_spikingjelly():
    sj_layer = _sj()
    ours, theirs = _conv_net(layer), _conv_net(sj_layer)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]


def test_non_strict_loading_still_loads_container_weights():
    torch.manual_seed(0)
    src, dst = _conv_net(layer), _conv_net(layer)
    result = dst.load_state_dict(src.state_dict(), strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for (name, a), b in zip(dst.state_dict().items(), src.state_dict().values()):
        assert torch.equal(a, b), name


def test_nested_containers_keep_spikingjelly_keys():
    sj_layer = _sj()
    theirs = sj_layer.SeqToANNContainer(sj_layer.MultiStepContainer(nn.Linear(2, 2)), nn.ReLU())
    ours = layer.SeqToANNContainer(layer.MultiStepContainer(nn.Linear(2, 2)), nn.ReLU())
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["0.0.weight", "0.0.bias"]
    ours.load_state_dict(theirs.state_dict())
    assert torch.equal(ours[0][0].weight, theirs[0][0].weight)


def test_load_errors_name_the_keys_state_dict_shows():
    net = _conv_net(layer)
    sd = net.state_dict()
    sd["2.1.weight"] = sd["2.0.weight"]  # a second module where there is one
    with pytest.raises(RuntimeError, match=r"Unexpected key.*2\.1\.weight") as error:
        net.load_state_dict(sd)
    assert "module" not in str(error.value)
    result = net.load_state_dict(sd, strict=False)
    assert result.unexpected_keys == ["2.1.weight"] and result.missing_keys == []
    sd = net.state_dict()
    del sd["0.0.weight"]
    with pytest.raises(RuntimeError, match=r"Missing key.*\"0\.0\.weight\"") as error:
        net.load_state_dict(sd)
    assert "module" not in str(error.value)
    result = net.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["0.0.weight"] and result.unexpected_keys == []
    # Every name a load error may give is a name state_dict() shows.
    assert set(result.missing_keys) <= set(net.state_dict())


def test_spikingjelly_checkpoint_loads_and_gives_the_same_outputs():
    sj_layer = _sj()
    torch.manual_seed(1)
    sj_net = _conv_net(sj_layer).double()
    sj_net(torch.rand(2, 3, 1, 4, 4, dtype=torch.float64))  # move the running statistics
    sj_net.eval()
    ours = _conv_net(layer).double().eval()
    ours.load_state_dict(sj_net.state_dict(), strict=True)
    x = torch.rand(3, 2, 1, 4, 4, dtype=torch.float64)
    assert torch.equal(ours(x), sj_net(x))
    # And ours loads back into SpikingJelly.
    fresh = _conv_net(sj_layer).double().eval()
    fresh.load_state_dict(ours.state_dict(), strict=True)
    assert torch.equal(fresh(x), sj_net(x))


def test_containers_are_sequentials():
    single = layer.SeqToANNContainer(nn.Linear(2, 3))
    several = layer.MultiStepContainer(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert isinstance(single, nn.Sequential) and isinstance(several, nn.Sequential)
    assert len(single) == 1 and isinstance(single[0], nn.Linear) and list(single) == [single[0]]
    assert len(several) == 3 and [type(m) for m in several] == [nn.Linear, nn.ReLU, nn.Linear]
    assert isinstance(several[0:2], layer.MultiStepContainer) and len(several[0:2]) == 2
    with pytest.raises(IndexError):
        single[1]
    with pytest.raises(TypeError, match="nn.Module"):
        layer.SeqToANNContainer(torch.relu)


def test_multistep_container_runs_each_step():
    c = layer.MultiStepContainer(neuron.IFNode(), nn.Identity())
    x = torch.tensor([[0.6], [0.6], [0.1]])
    assert c(x).flatten().tolist() == [0.0, 1.0, 0.0]


@pytest.mark.parametrize("make, step_in, step_out", [
    (lambda: layer.MultiStepContainer(nn.Linear(4, 3)), (2, 4), (2, 3)),
    (lambda: layer.MultiStepContainer(nn.Conv2d(1, 2, 3), nn.Flatten()), (5, 1, 4, 4), (5, 8)),
    (lambda: layer.SeqToANNContainer(nn.Linear(4, 3)), (2, 4), (2, 3)),
])
def test_empty_sequence_gives_empty_output_of_the_right_shape(make, step_in, step_out):
    c = make()
    x = torch.rand(0, *step_in, requires_grad=True)
    y = c(x)
    assert y.shape == (0, *step_out)
    # The shape is that of a real call, and the output stays in the input's graph.
    assert c(torch.rand(1, *step_in)).shape[1:] == y.shape[1:]
    assert y.requires_grad and y.grad_fn is not None
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert grad.shape == x.shape


def test_empty_sequence_leaves_single_step_state_alone():
    c = layer.MultiStepContainer(neuron.IFNode())
    c(torch.full((1, 3), 0.5))
    v = c[0].v.clone()
    assert c(torch.rand(0, 3)).shape == (0, 3)
    assert torch.equal(c[0].v, v)


# ---------------------------------------------------------------------------------------------------
# Dropouts
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, p_default", [(layer.Dropout, 0.5), (layer.Dropout2d, 0.2),
                                            (layer.MultiStepDropout, 0.5), (layer.MultiStepDropout2d, 0.5)])
def test_dropout_defaults_and_bad_p(cls, p_default):
    assert cls().p == p_default and repr(cls(0.25)) == f"{cls.__name__}(p=0.25)"
    for bad in (1.0, -0.1, "0.5", True):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            cls(bad)


def test_multistep_dropout_keeps_one_mask_until_reset():
    torch.manual_seed(0)
    d = layer.MultiStepDropout(0.5)
    x = torch.ones(4, 3, 50)
    y = d(x)
    # Same mask on every step, values 0 or 1 / (1 - p).
    assert all(torch.equal(y[t], y[0]) for t in range(4))
    assert set(y.unique().tolist()) == {0.0, 2.0}
    assert torch.equal(d(x), y)  # a second call keeps the mask
    d.eval()
    assert d(x) is x
    d.train()
    functional.reset_net(nn.Sequential(d))
    assert d.mask is None and not torch.equal(d(x), y)
    with pytest.raises(ValueError, match="reset_net"):
        d(torch.ones(4, 2, 50))


def test_multistep_dropout2d_drops_whole_channels():
    torch.manual_seed(0)
    d = layer.MultiStepDropout2d(0.5)
    y = d(torch.ones(3, 2, 16, 4, 4))
    per_channel = y.flatten(3)
    assert torch.equal(per_channel.amin(-1), per_channel.amax(-1))
    assert torch.equal(y[0], y[2])


def test_single_step_dropout_keeps_its_mask_over_calls():
    torch.manual_seed(0)
    d = layer.Dropout(0.3)
    x = torch.ones(2, 40)
    assert torch.equal(d(x), d(x))
    torch.testing.assert_close(d.mask.unique(), torch.tensor([0.0, 1 / 0.7]))


@pytest.mark.parametrize("name, shape", [("Dropout", (2, 8, 3, 3)), ("Dropout2d", (2, 8, 3, 3)),
                                         ("MultiStepDropout", (3, 2, 8, 3, 3)), ("MultiStepDropout2d", (3, 2, 8, 3, 3))])
def test_dropout_masks_match_spikingjelly(name, shape):
    sj_layer = _sj()
    x = torch.rand(shape)
    torch.manual_seed(5)
    sj = getattr(sj_layer, name)(0.4)
    want = [sj(x), sj(x)]
    torch.manual_seed(5)
    ours = getattr(layer, name)(0.4)
    assert torch.equal(ours(x), want[0]) and torch.equal(ours(x), want[1])


# ---------------------------------------------------------------------------------------------------
# Stateful single-step layers
# ---------------------------------------------------------------------------------------------------


def test_synapse_filter_by_hand():
    f = layer.SynapseFilter(tau=2.0)
    s = [1.0, 0.0, 0.0, 1.0]
    out = [f(torch.tensor([v])).item() for v in s]
    assert out == [1.0, 0.5, 0.25, 1.25]
    f.reset()
    assert f.out_i == 0.0
    learn = layer.SynapseFilter(tau=2.0, learnable=True)
    assert learn.w.item() == 0.0 and "tau=2.0" in repr(learn)  # sigmoid(0) = 1/2
    with pytest.raises(ValueError, match="> 1"):
        layer.SynapseFilter(tau=1.0)


def test_recurrent_containers_by_hand():
    c = layer.ElementWiseRecurrentContainer(nn.Identity(), lambda y, x: y + x)
    assert [c(torch.tensor([1.0])).item() for _ in range(3)] == [1.0, 2.0, 3.0]
    functional.reset_net(c)
    assert c.y is None and c(torch.tensor([2.0])).item() == 2.0
    lin = layer.LinearRecurrentContainer(nn.Identity(), in_features=1, out_features=1, bias=False)
    with torch.no_grad():
        lin.rc.weight.copy_(torch.tensor([[1.0, 0.5]]))
    outs = [lin(torch.tensor([[1.0]])).item() for _ in range(3)]
    assert outs == [1.0, 1.5, 1.75]
    with pytest.raises(TypeError, match="callable"):
        layer.ElementWiseRecurrentContainer(nn.Identity(), 3)


def test_neunorm_by_hand():
    n = layer.NeuNorm(2, 1, 1, k=0.5)
    with torch.no_grad():
        n.w.fill_(1.0)
    s = torch.ones(1, 2, 1, 1)
    # x = 0.5·x + (0.5/4)·2 → 0.25, then 0.375
    torch.testing.assert_close(n(s), torch.full((1, 2, 1, 1), 0.75))
    torch.testing.assert_close(n(s), torch.full((1, 2, 1, 1), 0.625))
    n.reset()
    assert n.x == 0.0 and layer.NeuNorm(3, 2, 2, shared_across_channels=True).w.shape == (1, 2, 2)


@pytest.mark.parametrize("name, args, shape", [
    ("NeuNorm", (3, 4, 4), (2, 3, 4, 4)),
    ("SynapseFilter", (5.0, True), (2, 3)),
    ("DCT", (2,), (2, 4, 6)),
    ("AXAT", (4, 3), (2, 5, 4, 4)),
])
def test_stateful_and_stateless_layers_match_spikingjelly(name, args, shape):
    sj_layer = _sj()
    torch.manual_seed(2)
    sj = getattr(sj_layer, name)(*args)
    torch.manual_seed(2)
    ours = getattr(layer, name)(*args)
    assert list(ours.state_dict()) == list(sj.state_dict())
    for _ in range(3):
        x = (torch.rand(shape) > 0.5).float()
        torch.testing.assert_close(ours(x), sj(x))


def test_dropconnect_linear():
    torch.manual_seed(0)
    d = layer.DropConnectLinear(4, 3, p=0.5, invariant=True, activation=None)
    x = torch.rand(5, 4)
    y = d(x)
    assert d.dropped_w.shape == (5, 3, 4) and d.dropped_b.shape == (5, 3)
    assert torch.equal(d(x), y)  # invariant: the same masks until reset
    # Each sample's output is its own masked linear layer.
    torch.testing.assert_close(y[1], d.dropped_w[1] @ x[1] + d.dropped_b[1])
    d.reset()
    assert d.dropped_w is None
    d.eval()
    torch.manual_seed(0)
    big = layer.DropConnectLinear(4, 3, p=0.5, samples_num=20000, activation=None).eval()
    torch.testing.assert_close(big(x), 0.5 * nn.functional.linear(x, big.weight, big.bias), atol=0.03, rtol=0)
    assert "invariant=False" in repr(big)


def test_stdp_learner_by_hand():
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
    learner = layer.STDPLearner(2.0, 2.0, lambda w: torch.ones_like(w), lambda w: -torch.ones_like(w))
    learner.stdp(torch.tensor([1.0, 0.0]), torch.tensor([1.0]), lin, 0.1)
    # Δw = 0.1·(1·s_pre − 1·s_post) = [0, −0.1]
    torch.testing.assert_close(lin.weight, torch.tensor([[0.0, -0.1]]))
    assert torch.equal(learner.trace_pre, torch.tensor([1.0, 0.0]))
    learner.reset()
    assert learner.trace_pre == 0.0
    with pytest.raises(NotImplementedError, match="nn.Linear"):
        learner.stdp(torch.ones(2), torch.ones(1), nn.Conv1d(1, 1, 1), 0.1)


# ---------------------------------------------------------------------------------------------------
# Stateless layers
# ---------------------------------------------------------------------------------------------------


def test_dct_is_orthonormal_and_checks_shape():
    d = layer.DCT(4)
    x = torch.rand(3, 8, 8)
    y = d(x)
    torch.testing.assert_close(y.square().sum(), x.square().sum())  # energy kept
    torch.testing.assert_close(y[:, 0, 0], x[:, :4, :4].mean((-1, -2)) * 4)  # DC term
    with pytest.raises(ValueError, match="multiples of 4"):
        d(torch.rand(2, 6, 8))


def test_channels_pool_and_print_shape(capsys):
    pool = layer.ChannelsPool(nn.MaxPool1d(2, 2))
    x = torch.arange(16.0).view(1, 4, 2, 2)
    assert torch.equal(pool(x), torch.maximum(x[:, 0::2], x[:, 1::2]))
    p = layer.PrintShapeModule("here")
    assert p(x) is x and capsys.readouterr().out == "here torch.Size([1, 4, 2, 2])\n"


def test_conv_batchnorm2d_fuses():
    torch.manual_seed(0)
    cb = layer.ConvBatchNorm2d(2, 3, 3, padding=1)
    cb(torch.rand(4, 2, 5, 5))  # running statistics
    cb.eval()
    x = torch.rand(2, 2, 5, 5)
    torch.testing.assert_close(cb.get_fused_conv()(x), cb(x))
    torch.testing.assert_close(nn.functional.conv2d(x, cb.get_fused_weight(), cb.get_fused_bias(), padding=1), cb(x))
    assert cb.conv.bias is None and list(cb.state_dict())[0] == "conv.weight"


@pytest.mark.parametrize("cls, shape", [(layer.MultiStepThresholdDependentBatchNorm1d, (3, 4, 2)),
                                        (layer.MultiStepThresholdDependentBatchNorm1d, (3, 4, 2, 5)),
                                        (layer.MultiStepThresholdDependentBatchNorm2d, (3, 4, 2, 5, 5)),
                                        (layer.MultiStepThresholdDependentBatchNorm3d, (3, 4, 2, 2, 3, 3))])
def test_threshold_dependent_batchnorm(cls, shape):
    bn = cls(0.5, 2.0, 2)
    assert torch.equal(bn.weight, torch.ones(2)) and bn.alpha == 0.5 and bn.v_th == 2.0
    x = torch.randn(shape) * 3 + 1
    y = bn(x)
    # Normalized over T, N and the spatial dimensions together, then scaled by alpha·v_th = 1.
    dims = [0, 1] + list(range(3, len(shape)))
    torch.testing.assert_close(y.mean(dims), torch.zeros(2), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"\[T, N, C"):
        bn(torch.randn(*shape, 2, 2))
    with pytest.raises(ValueError, match="affine"):
        cls(1.0, 1.0, 2, affine=False)


def test_threshold_dependent_batchnorm_matches_spikingjelly():
    sj_layer = _sj()
    x = torch.randn(3, 4, 2, 5, 5)
    sj = sj_layer.MultiStepThresholdDependentBatchNorm2d(0.7, 1.5, 2)
    ours = layer.MultiStepThresholdDependentBatchNorm2d(0.7, 1.5, 2)
    torch.testing.assert_close(ours(x), sj(x))
    torch.testing.assert_close(ours.running_var, sj.running_var)


@pytest.mark.parametrize("dimension, shape", [(2, (8, 3, 5)), (4, (8, 3, 2, 4, 4))])
def test_temporal_wise_attention_matches_spikingjelly(dimension, shape):
    sj_layer = _sj()
    torch.manual_seed(3)
    sj = sj_layer.MultiStepTemporalWiseAttention(8, 4, dimension)
    torch.manual_seed(3)
    ours = layer.MultiStepTemporalWiseAttention(8, 4, dimension)
    assert list(ours.state_dict()) == list(sj.state_dict()) == ["sharedMLP.0.weight", "sharedMLP.2.weight"]
    x = torch.rand(shape)
    torch.testing.assert_close(ours(x), sj(x))


def test_temporal_wise_attention_scales_each_step():
    att = layer.MultiStepTemporalWiseAttention(4, 2, dimension=2)
    x = torch.rand(4, 3, 5)
    ratio = att(x) / x
    assert ((ratio > 0) & (ratio < 1)).all()
    torch.testing.assert_close(ratio, ratio[:, :, :1].expand_as(ratio))  # one score per step and sample
    with pytest.raises(ValueError, match="dimension"):
        layer.MultiStepTemporalWiseAttention(4, 2, dimension=3)
    with pytest.raises(ValueError, match="reduction"):
        layer.MultiStepTemporalWiseAttention(4, 8)
    with pytest.raises(ValueError, match=r"\[T, N, M\]"):
        att(torch.rand(4, 3, 5, 2))


def test_dropconnect_linear_matches_spikingjelly():
    sj_layer = _sj()
    x = torch.rand(3, 4, dtype=torch.float64)
    results = []
    for lib in (sj_layer, layer):
        torch.manual_seed(4)
        d = lib.DropConnectLinear(4, 2, p=0.3).double()
        results.append((d(x), d(x), list(d.state_dict())))
    torch.testing.assert_close(results[0][:2], results[1][:2])
    assert results[0][2] == results[1][2] == ["weight", "bias"]


def test_detach_net_cuts_the_graph_behind_layer_state():
    net = nn.Sequential(layer.SynapseFilter(2.0), layer.ElementWiseRecurrentContainer(nn.Identity(), torch.add))
    x = torch.ones(3, requires_grad=True)
    net(x)
    assert net[0].out_i.requires_grad and net[1].y.requires_grad
    functional.detach_net(net)
    assert not net[0].out_i.requires_grad and not net[1].y.requires_grad
    y = net(x)  # the state carries over without its history
    y.sum().backward()
    # Only this call's input: d/ds of I − (1 − s)·I/2 + s with I = 1 held fixed is 1/2 + 1 (3.5 without the cut).
    assert x.grad.tolist() == [1.5, 1.5, 1.5]


@pytest.mark.gpu
def test_layers_on_cuda_match_the_cpu_reference():
    from flashspike import monitor

    torch.manual_seed(0)
    net = nn.Sequential(
        layer.SeqToANNContainer(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)),
        layer.MultiStepThresholdDependentBatchNorm2d(1.0, 1.0, 4),
        layer.MultiStepTemporalWiseAttention(4, 2),
        neuron.MultiStepLIFNode(),
        layer.MultiStepDropout2d(0.3),
        layer.SeqToANNContainer(nn.Flatten(), nn.Linear(4 * 8 * 8, 3)),
        layer.MultiStepContainer(neuron.IFNode()),
    )
    # float64, so that no spike flips on rounding differences between the devices.
    net = net.double()
    functional.set_backend(net, "torch")
    gpu = copy.deepcopy(net).cuda()
    functional.set_backend(gpu, "auto")
    x = torch.rand(4, 2, 1, 8, 8, dtype=torch.float64) * 3
    mon = monitor.Monitor(gpu, backend="torch")
    mon.enable()
    y_gpu = gpu(x.cuda())
    y_gpu.sum().backward()  # training mode on the GPU: dropout masks drawn there
    assert gpu[4].mask.device.type == "cuda" and mon.get_avg_firing_rate().device.type == "cuda"
    functional.reset_net(gpu)
    net.eval()
    gpu.eval()
    torch.testing.assert_close(gpu(x.cuda()).cpu(), net(x))
