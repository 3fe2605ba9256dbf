"""Every public name of SpikingJelly 0.0.0.0.14's model zoo exists here with the same parameters
(names, order, defaults): a script written for SpikingJelly's zoo runs with its import changed."""

import inspect

import pytest

from flashspike import model
from zoo_reference import sj_zoo

MODULES = ["spiking_resnet", "sew_resnet", "spiking_vgg", "parametric_lif_net"]


def _parameters(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("module", MODULES)
def test_every_public_name_has_spikingjelly_parameters(module):
    theirs, ours = sj_zoo(module), getattr(model, module)
    assert set(theirs.__all__) <= set(ours.__all__)
    for name in theirs.__all__:
        their_obj, our_obj = getattr(theirs, name), getattr(ours, name)
        if inspect.isclass(their_obj):
            assert inspect.isclass(our_obj), name
            assert _parameters(our_obj.__init__) == _parameters(their_obj.__init__), name
            assert _parameters(our_obj.forward)[1:] == _parameters(their_obj.forward)[1:], f"{name}.forward"
        else:
            assert our_obj.__name__ == name
            assert _parameters(our_obj) == _parameters(their_obj), name


def test_module_level_helpers_match():
    assert model.sew_resnet.sew_function.__name__ == "sew_function"
    assert model.spiking_vgg.cfgs == sj_zoo("spiking_vgg").cfgs


def _builders():
    for module in ("spiking_resnet", "sew_resnet", "spiking_vgg"):
        for name in getattr(model, module).__all__:
            builder = getattr(getattr(model, module), name)
            if not inspect.isclass(builder) and name.startswith(("spiking_", "multi_step_", "sew_")):
                yield pytest.param(builder, id=f"{module}.{name}")


@pytest.mark.parametrize("builder", list(_builders()))
@pytest.mark.parametrize("num_classes", [-1, 0, "10", 10.0, True])
def test_every_builder_names_a_bad_num_classes(builder, num_classes):
    from flashspike import neuron

    step = "multi_step_neuron" if builder.__name__.startswith("multi_step") else "single_step_neuron"
    neuron_class = neuron.MultiStepIFNode if step == "multi_step_neuron" else neuron.IFNode
    extra = {"cnf": "ADD"} if "sew" in builder.__name__ else {}
    with pytest.raises(ValueError, match=f"num_classes must be a positive int, got {num_classes!r}"):
        builder(num_classes=num_classes, **{step: neuron_class}, **extra)
