"""``flashspike.compile``: ``torch.compile`` with the one Inductor setting deep conv SNNs need.

On CUDA, Inductor's *layout optimization* turns convolution weights channels_last inside the compiled
graph, and for a convolution whose input has a 1x1 spatial size (ResNet's last stage on CIFAR-sized
images) its stride prediction for the weight gradient (channels_last) disagrees with what cuDNN
returns (contiguous): the compiled backward stops at ``assert_size_stride ...
convolution_backward``. This is PyTorch's (a plain ReLU network of the same shape fails the same
way), present in torch 2.11. Compiling with that optimization off avoids it; the model's own weights
must then stay contiguous (the default), since channels_last weights meet the same misprediction.

``torch.compile`` takes either ``mode`` or ``options``, not both; this function turns a mode into its
options (``torch._inductor.list_mode_options``) so that the setting can go with any mode.
"""

from __future__ import annotations

import torch

__all__ = ["compile", "MODES", "INDUCTOR_OPTIONS"]

#: The modes of torch.compile this function accepts.
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

#: What flashspike.compile adds to every mode's Inductor options.
INDUCTOR_OPTIONS = {"layout_optimization": False}


def compile(model, mode: str | None = None, options: dict | None = None, **kwargs):  # noqa: A001 (as torch.compile)
    """``torch.compile(model, ...)`` with Inductor's layout optimization off (see the module's text).

    ``mode`` is one of :data:`MODES` (None is "default"); ``options`` are more Inductor options, which
    win over the mode's and over :data:`INDUCTOR_OPTIONS`; other keywords (``fullgraph``,
    ``dynamic``, ``backend``...) go to ``torch.compile`` unchanged. With a backend other than
    Inductor, ``mode`` and ``options`` go to ``torch.compile`` as given.
    """
    mode = "default" if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(map(repr, MODES))}")
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"options must be a dict of Inductor options, got {type(options).__name__}")
    if kwargs.get("backend", "inductor") != "inductor":
        return torch.compile(model, mode=None if mode == "default" else mode, options=options, **kwargs)
    from torch._inductor import list_mode_options

    merged = {**list_mode_options(mode), **INDUCTOR_OPTIONS, **(options or {})}
    return torch.compile(model, options=merged, **kwargs)


def uses_cuda_graphs(mode: str | None, options: dict | None = None) -> bool:
    """Whether a compile with this mode and options replays CUDA graphs (the caller then marks steps
    with ``torch.compiler.cudagraph_mark_step_begin``)."""
    if options and "triton.cudagraphs" in options:
        return bool(options["triton.cudagraphs"])
    from torch._inductor import list_mode_options

    return bool(list_mode_options("default" if mode is None else mode).get("triton.cudagraphs", False))
