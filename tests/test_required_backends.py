"""FLASHSPIKE_REQUIRE_BACKENDS (tests/conftest.py): a test whose backend cannot run here is skipped,
unless the variable names that backend; then it fails, naming it. Checked in a pytest of its own, over
one parity test of backend 'cupy', which cannot run without CUDA."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
CUPY_TEST = "test_parity.py::test_state_carries_over_consecutive_calls[cupy]"


def _pytest(required: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLASHSPIKE_REQUIRE_BACKENDS": required}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider", CUPY_TEST],
                          cwd=TESTS, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="'cupy' may run here: the check needs it unable to")
def test_a_required_backend_that_cannot_run_fails_the_test():
    skipped = _pytest("triton")
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout[-2000:]
    assert "backend 'cupy' unavailable here" in skipped.stdout
    failed = _pytest("triton,cupy")
    assert failed.returncode == 1 and "1 failed" in failed.stdout, failed.stdout[-2000:]
    assert "backend 'cupy' is required (FLASHSPIKE_REQUIRE_BACKENDS) but cannot run here" in failed.stdout
