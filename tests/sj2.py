"""Running code against SpikingJelly 2.x, which cannot share a process with the SpikingJelly
0.0.0.0.14 the other tests import (both are the package ``spikingjelly``).

SpikingJelly 2.x is found through the environment variable SPIKINGJELLY2_PATH, a folder holding its
``spikingjelly`` package (``pip install --no-deps --target DIR spikingjelly==2.0.0``); without it the
tests that need it are skipped. Its imports that the tests never use (loguru's logger, torchvision's
download helper, h5py) are stubbed when they are not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

VARIABLE = "SPIKINGJELLY2_PATH"
ROOT = Path(__file__).resolve().parent.parent

# module -> file -> text: just enough for SpikingJelly 2.x's activation_based to import.
_STUBS = {
    "loguru": {"__init__.py": "class _Logger:\n    def __getattr__(self, name):\n        return lambda *a, **k: None\n\n\n"
                              "logger = _Logger()\n"},
    "torchvision": {"__init__.py": "", "models/__init__.py": "",
                    "models/utils.py": "def load_state_dict_from_url(*args, **kwargs):\n"
                                       "    raise RuntimeError('no downloads in tests')\n"},
    "h5py": {"__init__.py": ""},
}


def sj2_path() -> Path:
    """SpikingJelly 2.x's folder, or skip the test."""
    if sys.version_info < (3, 11):
        pytest.skip("SpikingJelly 2.x needs Python 3.11 or later")
    value = os.environ.get(VARIABLE)
    if not value:
        pytest.skip(f"SpikingJelly 2.x not given ({VARIABLE} unset)")
    path = Path(value)
    if not (path / "spikingjelly" / "activation_based").is_dir():
        pytest.skip(f"{VARIABLE}={value} holds no SpikingJelly 2.x (spikingjelly/activation_based)")
    return path


def run_script(script: Path, args: list[str], stubs: Path, timeout: float = 600) -> dict:
    """``script args`` with SpikingJelly 2.x and flashspike importable; its JSON output."""
    for module, files in _STUBS.items():
        if importlib.util.find_spec(module) is None:
            for name, text in files.items():
                (stubs / module / name).parent.mkdir(parents=True, exist_ok=True)
                (stubs / module / name).write_text(text)
    path = [str(sj2_path()), str(ROOT / "src"), str(stubs)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)
    if done.returncode:
        raise AssertionError(f"{script.name} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
