"""What this installation can run: flashspike's and PyTorch's versions, the CUDA device, the optional
packages, and for each backend whether it runs here or why not (its own error, as a call would raise it)."""

from __future__ import annotations

import importlib.metadata
import platform

import torch

from . import __version__, backends

# The pip distributions behind the optional backends, by backend.
_PACKAGES = {"cupy": ("cupy-cuda13x", "cupy-cuda12x", "cupy"), "triton": ("triton",)}


def _installed(distributions) -> str:
    """'name version' of the first installed distribution (read from its metadata: nothing is imported)."""
    for name in distributions:
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def backend_status(device: torch.device) -> dict[str, str | None]:
    """``{backend: None when it runs on device, else why not}``, from each backend's own input check."""
    probe = torch.zeros(2, 1, device=device)
    status = {}
    for name in backends.KNOWN_BACKENDS:
        if name == "auto":
            continue
        try:
            backends.get(name).check_input(probe)
            status[name] = None
        except (ImportError, backends.BackendError) as error:
            status[name] = f"{type(error).__name__}: {error}"
    return status


def report() -> str:
    """The report ``python -m flashspike`` prints."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda") if cuda else torch.device("cpu")
    lines = [
        f"flashspike {__version__}",
        f"python {platform.python_version()}, torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'})",
        f"CUDA device: {torch.cuda.get_device_name(device) if cuda else 'none available'}",
        "optional packages: " + ", ".join(f"{backend}: {_installed(names)}" for backend, names in _PACKAGES.items()),
        f"backends on {device.type}:",
    ]
    for name, problem in backend_status(device).items():
        if problem is not None and not cuda and name in _PACKAGES:
            # The backend's own error speaks of the probe tensor's device; the machine's fact is simpler.
            problem = f"no CUDA device here (it runs on CUDA GPUs; {_installed(_PACKAGES[name])})"
        lines.append(f"  {name:7} {'runs here' if problem is None else 'does not run here: ' + problem}")
    chosen = backends.resolve("auto", torch.zeros(2, 1, device=device)).name
    lines.append(f"  auto    -> {chosen}")
    return "\n".join(lines)
