"""SpikingJelly 2.x's transformer models as the tests' reference, run in a subprocess whose PYTHONPATH puts
2.x first (it conflicts with an installed 0.0.0.0.14):

    python sj2_transformer_worker.py JOBS.pt REPORT.pt

JOBS.pt holds ``{"names": [...], "cases": [...]}``; each case names a model class and its arguments and
carries a state_dict and inputs. For each case the report holds 2.x's freshly built state_dict, then,
with the case's state_dict loaded strictly: one training step's output, input gradient, parameter
gradients (by state_dict key) and the state after it, and the eval-mode output of a static image. It also
holds the signature (parameter names, kinds, defaults) of every public name asked for.
"""

import inspect
import sys

import torch
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.layer import attention
from spikingjelly.activation_based.model import spike_driven_transformer, spikformer

MODULES = (spikformer, spike_driven_transformer, attention)


def public(name: str):
    return next(getattr(module, name) for module in MODULES if hasattr(module, name))


def signature(fn) -> list:
    return [(p.name, str(p.kind), repr(p.default)) for p in inspect.signature(fn).parameters.values()]


def signatures(name: str) -> dict:
    obj = public(name)
    if not inspect.isclass(obj):
        return {"call": signature(obj)}
    return {"init": signature(obj.__init__)[1:], "forward": signature(obj.forward)[1:]}


def run_case(case: dict) -> dict:
    torch.manual_seed(0)
    model = public(case["class"])(**case["config"]).to(torch.float64).train()
    report = {"fresh_state": model.state_dict()}
    model.load_state_dict(case["state"], strict=True)
    x = case["x"].clone().requires_grad_(True)
    y = model(x)
    (y * torch.linspace(-1.0, 1.0, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    parameters = {key: value for key, value in model.state_dict(keep_vars=True).items()
                  if isinstance(value, torch.nn.Parameter)}
    report.update(y=y.detach(), x_grad=x.grad, grads={key: p.grad for key, p in parameters.items()},
                  state_after=model.state_dict())
    functional.reset_net(model)
    with torch.no_grad():
        report["y_static"] = model.eval()(case["x_static"])
    return report


def main(jobs_path: str, report_path: str) -> None:
    jobs = torch.load(jobs_path)
    report = {"signatures": {name: signatures(name) for name in jobs["names"]},
              "cases": [run_case(case) for case in jobs["cases"]]}
    torch.save(report, report_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
