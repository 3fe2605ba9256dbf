"""Test set-up shared by every test module.

- On a machine without CUDA, Triton kernels run through Triton's CPU interpreter, which must be
  switched on before triton is first imported: that is done here, at collection start.
- Tests marked ``gpu`` are skipped when no CUDA device is present.
- Kernel outputs start as NaN (``layouts.POISON_OUTPUTS``), so an element a kernel forgets to write fails.
"""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


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
