"""The spiking and SEW ResNets against SpikingJelly 0.0.0.0.14's: the same state_dict keys for every
builder, and equal outputs and gradients (input and every parameter) in float64 after loading
SpikingJelly's weights strictly."""

import weakref

import pytest
import torch

from flashspike import neuron, surrogate
from flashspike.model import sew_resnet, spiking_resnet
from zoo_reference import assert_matches_reference, key_shapes, on_meta, sj_neuron, sj_zoo, unfilled

ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
         "wide_resnet50_2", "wide_resnet101_2"]
FAMILIES = {"spiking_resnet": (spiking_resnet, "spiking_", {}), "sew_resnet": (sew_resnet, "sew_", {"cnf": "ADD"})}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_keys_equal_spikingjelly_for_every_builder(family, arch):
    ours, prefix, extra = FAMILIES[family]
    theirs = sj_zoo(family)
    sj_ms, sj_kw = sj_neuron("MultiStepIFNode")
    sj_ss, sj_kw1 = sj_neuron("IFNode")
    name = prefix + arch
    multi = on_meta(lambda: getattr(ours, "multi_step_" + name)(T=2, multi_step_neuron=neuron.MultiStepIFNode,
                                                                   num_classes=7, **extra))
    multi_ref = on_meta(lambda: getattr(theirs, "multi_step_" + name)(T=2, multi_step_neuron=sj_ms, num_classes=7,
                                                                       **extra, **sj_kw))
    assert key_shapes(multi) == key_shapes(multi_ref)
    single = on_meta(lambda: getattr(ours, name)(single_step_neuron=neuron.IFNode, num_classes=7, **extra))
    single_ref = on_meta(lambda: getattr(theirs, name)(single_step_neuron=sj_ss, num_classes=7, **extra, **sj_kw1))
    assert key_shapes(single) == key_shapes(single_ref)


def _pair(family, builder, neuron_name, options, **model_kwargs):
    """(ours, SpikingJelly's) in float64, the same neuron with the same options."""
    ours = unfilled(lambda: getattr(FAMILIES[family][0], builder)(
        multi_step_neuron=getattr(neuron, neuron_name), backend="torch", surrogate_function=surrogate.ATan(),
        **options, **model_kwargs))
    sj_class, sj_options = sj_neuron(neuron_name, **options)
    torch.manual_seed(0)
    theirs = getattr(sj_zoo(family), builder)(multi_step_neuron=sj_class, **sj_options, **model_kwargs)
    return ours.double(), theirs.double()


IF_DETACH = ("MultiStepIFNode", {"detach_reset": True})
# A lower threshold keeps the deep layers of SEW 'AND' and 'IAND' blocks firing.
IF_LOW = ("MultiStepIFNode", {"detach_reset": True, "v_threshold": 0.5})
LIF_SOFT = ("MultiStepLIFNode", {"tau": 1.5, "v_reset": None})


def _sequence(seed=1):
    torch.manual_seed(seed)
    return torch.rand(2, 2, 3, 32, 32, dtype=torch.float64) * 4


@pytest.mark.parametrize("neuron_name, options", [IF_DETACH, LIF_SOFT], ids=["if_detach", "lif_soft"])
def test_spiking_resnet18_equals_spikingjelly(neuron_name, options):
    ours, theirs = _pair("spiking_resnet", "multi_step_spiking_resnet18", neuron_name, options, num_classes=10)
    assert_matches_reference(ours, theirs, _sequence())


@pytest.mark.parametrize("cnf", ["ADD", "AND", "IAND"])
def test_sew_resnet18_equals_spikingjelly(cnf):
    ours, theirs = _pair("sew_resnet", "multi_step_sew_resnet18", *IF_LOW, num_classes=10, cnf=cnf)
    assert_matches_reference(ours, theirs, _sequence())


def test_sew_resnet50_bottleneck_equals_spikingjelly():
    ours, theirs = _pair("sew_resnet", "multi_step_sew_resnet50", *IF_LOW, num_classes=10, cnf="IAND")
    assert_matches_reference(ours, theirs, _sequence())


def test_static_image_is_repeated_over_T_like_spikingjelly():
    # [N, C, H, W] with T: the stem runs once and its output is repeated (here as a view) over T steps.
    ours, theirs = _pair("spiking_resnet", "multi_step_spiking_resnet18", *IF_DETACH, num_classes=10, T=3,
                         zero_init_residual=True)
    assert_matches_reference(ours, theirs, _sequence()[0])


def test_zero_init_residual_zeroes_the_last_batch_norm_of_each_branch():
    deep = on_meta(lambda: spiking_resnet.multi_step_spiking_resnet50(multi_step_neuron=neuron.MultiStepIFNode))
    assert deep.layer1[0].last_bn is deep.layer1[0].bn3
    m = sew_resnet.multi_step_sew_resnet18(multi_step_neuron=neuron.MultiStepIFNode, cnf="ADD", num_classes=3,
                                           zero_init_residual=True)
    assert all((blk.bn2.weight == 0).all() and (blk.bn1.weight == 1).all() for stage in
               (m.layer1, m.layer2, m.layer3, m.layer4) for blk in stage)


def test_bad_arguments_are_refused():
    ms = neuron.MultiStepIFNode
    with pytest.raises(NotImplementedError, match="does not download"):
        spiking_resnet.multi_step_spiking_resnet18(pretrained=True, multi_step_neuron=ms)
    with pytest.raises(ValueError, match="cnf must be one of"):
        sew_resnet.multi_step_sew_resnet18(multi_step_neuron=ms, cnf="OR")
    with pytest.raises(ValueError, match="cnf must be one of"):
        sew_resnet.multi_step_sew_resnet18(multi_step_neuron=ms)
    with pytest.raises(TypeError, match="multi_step_neuron must be a neuron class"):
        spiking_resnet.multi_step_spiking_resnet18()
    with pytest.raises(ValueError, match="T must be a positive int"):
        spiking_resnet.multi_step_spiking_resnet18(T=0, multi_step_neuron=ms)
    with pytest.raises(ValueError, match="groups=1 and base_width=64"):
        spiking_resnet.multi_step_spiking_resnet18(multi_step_neuron=ms, groups=2)
    model = spiking_resnet.multi_step_spiking_resnet18(multi_step_neuron=ms, num_classes=3, backend="torch")
    with pytest.raises(ValueError, match=r"T is None"):
        model(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\[T, N, C, H, W\] or \[N, C, H, W\]"):
        model(torch.rand(3, 16, 16))


def test_single_step_models_run_one_step_per_call():
    torch.manual_seed(0)
    x_seq = torch.rand(2, 2, 3, 32, 32, dtype=torch.float64) * 4
    multi = spiking_resnet.multi_step_spiking_resnet18(multi_step_neuron=neuron.MultiStepIFNode, backend="torch",
                                                       num_classes=5).double().eval()
    single = spiking_resnet.spiking_resnet18(single_step_neuron=neuron.IFNode, num_classes=5).double().eval()
    single.load_state_dict(multi.state_dict(), strict=True)
    y_seq = torch.stack([single(x) for x in x_seq])
    torch.testing.assert_close(y_seq, multi(x_seq))


def test_a_stages_input_is_freed_once_the_stage_returns():
    # The stem's pooled spikes are the first stage's input: nothing but that stage reads them, so they
    # must not stay allocated through the later stages (where the forward's memory peaks).
    model = sew_resnet.multi_step_sew_resnet18(multi_step_neuron=neuron.MultiStepIFNode, backend="torch",
                                               num_classes=3, cnf="ADD")
    pooled, alive = [], []
    model.maxpool.register_forward_hook(lambda module, args, out: pooled.append(weakref.ref(out)))
    for stage in (model.layer2, model.layer3, model.layer4):
        stage.register_forward_pre_hook(lambda module, args: alive.append(pooled[-1]() is not None))
    with torch.no_grad():  # (autograd keeps nothing: what holds a tensor is the forward's own code)
        out = model(torch.rand(2, 1, 3, 32, 32))
    assert out.shape == (2, 1, 3) and len(pooled) == 1
    assert alive == [False, False, False]
