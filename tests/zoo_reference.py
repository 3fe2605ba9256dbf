"""SpikingJelly's model zoo as a test reference, and the check that holds a flashspike model to it.

SpikingJelly's zoo modules import ``torchvision.models.utils`` for weight downloads; where torchvision is
missing a stand-in module is present only while they are imported (weights are never downloaded here).
"""

import importlib
import sys
import types

import pytest
import torch


def sj_zoo(name: str):
    """``spikingjelly.clock_driven.model.<name>``, or a skip where SpikingJelly is not installed."""
    pytest.importorskip("spikingjelly")
    try:
        import torchvision.models.utils  # noqa: F401

        return importlib.import_module(f"spikingjelly.clock_driven.model.{name}")
    except ImportError:
        pass
    names = ("torchvision", "torchvision.models", "torchvision.models.utils")
    saved = {n: sys.modules.get(n) for n in names}
    utils = types.ModuleType("torchvision.models.utils")

    def load_state_dict_from_url(*args, **kwargs):
        raise RuntimeError("no weight downloads in tests")

    utils.load_state_dict_from_url = load_state_dict_from_url
    sys.modules.update({"torchvision": types.ModuleType("torchvision"),
                        "torchvision.models": types.ModuleType("torchvision.models"),
                        "torchvision.models.utils": utils})
    try:
        return importlib.import_module(f"spikingjelly.clock_driven.model.{name}")
    finally:
        for n, module in saved.items():
            if module is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = module


def sj_neuron(name: str, **options):
    """A factory for SpikingJelly's neuron ``name`` with SpikingJelly's surrogate ATan."""
    pytest.importorskip("spikingjelly")
    from spikingjelly.clock_driven import neuron, surrogate

    return getattr(neuron, name), dict(options, surrogate_function=surrogate.ATan())


def on_meta(build):
    """``build()`` with its tensors on the meta device: names and shapes only, no memory or init work."""
    with torch.device("meta"):
        return build()


def unfilled(build):
    """``build()`` with storage but no initialisation, for a model whose every value is loaded next."""
    return on_meta(build).to_empty(device="cpu")


def key_shapes(model: torch.nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def run_with_grads(model, x, seed=0, **forward_kwargs):
    """Output, input gradient and every parameter's gradient of one forward/backward."""
    torch.manual_seed(seed)  # the same dropout masks for both models
    x = x.clone().requires_grad_(True)
    y = model(x, **forward_kwargs)
    weight = torch.linspace(-1.0, 1.0, y.numel(), dtype=y.dtype).view_as(y)
    (y * weight).sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    return y.detach(), x.grad, grads


def assert_close(actual, expected, name, rtol=1e-9, atol=1e-12):
    """|actual − expected| <= atol + rtol·|expected| everywhere: torch.testing.assert_close's test in a
    few passes, for the 100-million-element classifier weights of a VGG."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, name
    bound = expected.abs().mul_(rtol).add_(atol)
    excess = (actual - expected).abs_().sub_(bound)
    worst = excess.max().item() if excess.numel() else 0.0
    assert worst <= 0, f"{name}: off by {worst:.3g} beyond the tolerance"


def assert_matches_reference(ours, reference, x, **forward_kwargs):
    """Load the reference's state_dict into ours strictly; outputs, gradients and the state after the
    step (batch-norm statistics) must agree."""
    ours.load_state_dict(reference.state_dict(), strict=True)
    y_ref, gx_ref, g_ref = run_with_grads(reference, x, **forward_kwargs)
    y, gx, g = run_with_grads(ours, x, **forward_kwargs)
    assert y_ref.abs().sum() > 0 and gx_ref.abs().sum() > 0, "a silent reference proves nothing"
    assert_close(y, y_ref, "output")
    assert_close(gx, gx_ref, "input gradient")
    assert g.keys() == g_ref.keys()
    for name in g_ref:
        assert (g[name] is None) == (g_ref[name] is None), name
        if g_ref[name] is not None:
            assert_close(g[name], g_ref[name], f"gradient of {name}")
    state, state_ref = ours.state_dict(), reference.state_dict()
    for name in state_ref:
        if state_ref[name].is_floating_point():
            assert_close(state[name], state_ref[name], name)
        else:
            assert torch.equal(state[name], state_ref[name]), name
