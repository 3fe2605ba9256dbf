"""The spiking VGGs against SpikingJelly 0.0.0.0.14's: the same state_dict keys for every builder, and
equal outputs and gradients in float64 (training mode: batch norm and dropout included)."""

import pytest
import torch

from flashspike import neuron, surrogate
from flashspike.model import spiking_vgg
from zoo_reference import assert_matches_reference, key_shapes, on_meta, sj_neuron, sj_zoo, unfilled

BUILDERS = [f"spiking_vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")]


@pytest.mark.parametrize("name", BUILDERS)
def test_state_dict_keys_equal_spikingjelly_for_every_builder(name):
    theirs = sj_zoo("spiking_vgg")
    sj_ms, sj_kw = sj_neuron("MultiStepIFNode")
    sj_ss, sj_kw1 = sj_neuron("IFNode")
    multi = on_meta(lambda: getattr(spiking_vgg, "multi_step_" + name)(multi_step_neuron=neuron.MultiStepIFNode,
                                                                        num_classes=7))
    multi_ref = on_meta(lambda: getattr(theirs, "multi_step_" + name)(multi_step_neuron=sj_ms, num_classes=7, **sj_kw))
    assert key_shapes(multi) == key_shapes(multi_ref)
    single = on_meta(lambda: getattr(spiking_vgg, name)(single_step_neuron=neuron.IFNode, num_classes=7))
    single_ref = on_meta(lambda: getattr(theirs, name)(single_step_neuron=sj_ss, num_classes=7, **sj_kw1))
    assert key_shapes(single) == key_shapes(single_ref)


def _pair(builder, **model_kwargs):
    # A threshold of 0.5 keeps every layer of the plain (no batch norm) VGG firing on this input.
    options = {"detach_reset": True, "v_threshold": 0.5}
    ours = unfilled(lambda: getattr(spiking_vgg, builder)(
        multi_step_neuron=neuron.MultiStepIFNode, backend="torch", surrogate_function=surrogate.ATan(),
        num_classes=10, **options, **model_kwargs))
    sj_class, sj_options = sj_neuron("MultiStepIFNode", **options)
    theirs = getattr(sj_zoo("spiking_vgg"), builder)(multi_step_neuron=sj_class, num_classes=10, **sj_options,
                                                     **model_kwargs)
    return ours.double(), theirs.double()


def _spike_rate(module, store: list):
    module.register_forward_hook(lambda m, args, out: store.append(out.mean().item()))


@pytest.mark.parametrize("builder", ["multi_step_spiking_vgg11", "multi_step_spiking_vgg11_bn"])
def test_vgg11_equals_spikingjelly(builder):
    ours, theirs = _pair(builder)
    torch.manual_seed(1)
    x_seq = torch.rand(2, 2, 3, 32, 32, dtype=torch.float64) * 4
    rates = []
    _spike_rate(ours.features[-2], rates)
    _spike_rate(ours.classifier[4], rates)
    assert_matches_reference(ours, theirs, x_seq)
    assert all(0 < r < 1 for r in rates), rates


def test_single_step_vgg_runs_one_step_per_call():
    torch.manual_seed(0)
    x_seq = torch.rand(2, 1, 3, 32, 32)
    multi = spiking_vgg.multi_step_spiking_vgg11_bn(multi_step_neuron=neuron.MultiStepIFNode, backend="torch",
                                                    num_classes=5).eval()
    single = unfilled(lambda: spiking_vgg.spiking_vgg11_bn(single_step_neuron=neuron.IFNode, num_classes=5)).eval()
    single.load_state_dict(multi.state_dict(), strict=True)
    torch.testing.assert_close(torch.stack([single(x) for x in x_seq]), multi(x_seq))


def test_bad_arguments_are_refused():
    with pytest.raises(NotImplementedError, match="does not download"):
        spiking_vgg.multi_step_spiking_vgg16_bn(pretrained=True, multi_step_neuron=neuron.MultiStepIFNode)
    with pytest.raises(TypeError, match="multi_step_neuron must be a neuron class"):
        spiking_vgg.multi_step_spiking_vgg11(num_classes=3)
    model = on_meta(lambda: spiking_vgg.multi_step_spiking_vgg11(multi_step_neuron=neuron.MultiStepIFNode))
    with pytest.raises(ValueError, match="T is None"):
        model(torch.rand(1, 3, 32, 32, device="meta"))
