"""Test set-up shared by every test module.

- On a machine without CUDA, Triton kernels run through Triton's CPU interpreter, which must be
  switched on before triton is first imported: that is done here, at collection start.
- Tests marked ``gpu`` are skipped when no CUDA device is present (a property of the machine, whatever
  FLASHSPIKE_REQUIRE_BACKENDS says).
- A test whose kernel backend cannot run here calls :func:`kernel_device` or :func:`require_backend`:
  it is skipped, unless FLASHSPIKE_REQUIRE_BACKENDS (comma-separated backend names, e.g.
  ``cupy,triton``) names that backend; then it fails with the reason. Every backend probe of the test
  suite goes through these two functions, so a broken install can't pass for an absent one.
- Kernel outputs start as NaN (``layouts.POISON_OUTPUTS``), so an element a kernel forgets to write fails.
"""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

REQUIRE_VARIABLE = "FLASHSPIKE_REQUIRE_BACKENDS"


def required_backends() -> set[str]:
    """The backend names listed in FLASHSPIKE_REQUIRE_BACKENDS (read at each call: tests may set it)."""
    return {name.strip() for name in os.environ.get(REQUIRE_VARIABLE, "").split(",") if name.strip()}


def backend_unavailable(name: str, reason: str):
    """Skip the running test because backend ``name`` cannot run here, or fail it when it is required."""
    if name in required_backends():
        pytest.fail(f"backend {name!r} is required ({REQUIRE_VARIABLE}) but cannot run here: {reason}",
                    pytrace=False)
    pytest.skip(f"backend {name!r} unavailable here: {reason}")


def require_backend(name: str, device: str = "cuda") -> None:
    """Backend ``name`` must accept a tensor on ``device`` (its package imports, the device is its own);
    otherwise :func:`backend_unavailable`."""
    from flashspike import backends

    if torch.device(device).type == "cuda" and not HAS_CUDA:
        backend_unavailable(name, "no CUDA GPU present")
    try:
        backends.get(name).check_input(torch.zeros(1, 1, device=device))
    except (ImportError, backends.BackendError) as error:
        backend_unavailable(name, str(error))


def kernel_device(name: str) -> str:
    """Where backend ``name`` runs its kernels here: 'cuda' when present, else 'cpu' for 'torch' and for
    'triton' through its interpreter (TRITON_INTERPRET=1, set above); a backend that runs nowhere here is
    :func:`backend_unavailable`."""
    if HAS_CUDA:
        device = "cuda"
    elif name == "torch" or (name == "triton" and os.environ.get("TRITON_INTERPRET") == "1"):
        device = "cpu"
    else:
        backend_unavailable(name, "it needs a CUDA GPU (none present)")
    require_backend(name, device)
    return device


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none present)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _poison_kernel_outputs(monkeypatch):
    from flashspike.backends import layouts

    monkeypatch.setattr(layouts, "POISON_OUTPUTS", True)


@pytest.fixture
def reproducible():
    """PyTorch's own backward repeats bit for bit only with deterministic algorithms (cuDNN's weight
    gradients may add in any order otherwise); with them on, any difference is the path under test's."""
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[:2]
    torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
