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
