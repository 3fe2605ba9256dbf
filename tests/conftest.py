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

import importlib.util
import os
import sys
from pathlib import Path

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


@pytest.fixture
def whole_model_statistics(monkeypatch):
    """For a whole model through Triton's interpreter: the switched BatchNorm's kernels on small tiles,
    their statistics in one program per channel block. The interpreter merges a statistics tile's lanes
    one combine call at a time, about half a second per GPU-sized tile (64 rows by 64 channels), which
    made minutes of a model test's time; the GPU's tiles, the multi-program split and its merges are
    tested on their own (test_batchnorm_recompute). On a GPU, nothing changes."""
    if not HAS_CUDA:
        from flashspike.memory import batchnorm_triton

        monkeypatch.setattr(batchnorm_triton, "ELEMENTS_PER_PROGRAM", 256)
        monkeypatch.setattr(batchnorm_triton, "MOMENT_PROGRAMS", 1)


# ---- SpikingJelly as a peer in subprocesses ----

SJ2_VARIABLE = "FLASHSPIKE_SJ2_PATH"
# Modules that SpikingJelly's zoos import but the comparisons never use, as stand-ins for a machine
# without them: 0.0.0.0.14's ResNets import torchvision's weight download, 2.x imports loguru and h5py.
PEER_STUBS = {
    "torchvision/__init__.py": "",
    "torchvision/models/__init__.py": "",
    "torchvision/models/utils.py": ("def load_state_dict_from_url(*args, **kwargs):\n"
                                    "    raise RuntimeError('no weight downloads in tests')\n"),
    "loguru/__init__.py": ("class _Silent:\n    def __getattr__(self, name):\n"
                           "        return lambda *args, **kwargs: None\n\n\nlogger = _Silent()\n"),
    "h5py/__init__.py": "",
}


def write_peer_stubs(folder: Path) -> Path:
    """``folder`` with a stand-in for each module of :data:`PEER_STUBS` that is not installed."""
    for relative, text in PEER_STUBS.items():
        if importlib.util.find_spec(relative.split("/")[0]) is None:
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return folder


def peer_pythonpath(*folders) -> str:
    """A PYTHONPATH for a peer's subprocess: ``folders`` first, then the folders this process was given
    (a module that :func:`write_peer_stubs` found installed there got no stand-in)."""
    return os.pathsep.join(filter(None, [*map(str, folders), os.environ.get("PYTHONPATH")]))


@pytest.fixture
def peer_stubs(tmp_path, monkeypatch):
    """:func:`write_peer_stubs` in a fresh folder, which PYTHONPATH names first for the test's subprocesses."""
    folder = write_peer_stubs(tmp_path / "stubs")
    monkeypatch.setenv("PYTHONPATH", peer_pythonpath(folder))
    return folder


def spikingjelly2_path() -> Path:
    """The folder holding SpikingJelly 2.x's ``spikingjelly`` package, named by FLASHSPIKE_SJ2_PATH (it
    conflicts with an installed 0.0.0.0.14, so it is only ever imported in a subprocess). Unset: a skip;
    naming a folder without it: a failure (a broken set-up must not pass for an absent one)."""
    if sys.version_info < (3, 11):
        pytest.skip("SpikingJelly 2.x needs Python 3.11 or later")
    folder = os.environ.get(SJ2_VARIABLE)
    if not folder:
        pytest.skip(f"SpikingJelly 2.x not given: set {SJ2_VARIABLE} to the folder holding its spikingjelly package")
    package = Path(folder) / "spikingjelly"
    if not (package / "activation_based").is_dir() or (package / "clock_driven").is_dir():
        pytest.fail(f"{SJ2_VARIABLE}={folder} holds no SpikingJelly 2.x (a spikingjelly package with "
                    "activation_based and without 0.0.0.0.14's clock_driven)", pytrace=False)
    return Path(folder)
