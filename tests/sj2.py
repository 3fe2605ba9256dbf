"""Running code against SpikingJelly 2.x, which cannot share a process with the SpikingJelly
0.0.0.0.14 the other tests import (both are the package ``spikingjelly``): a script runs in a
subprocess whose path puts 2.x first (the folder FLASHSPIKE_SJ2_PATH names: see
conftest.spikingjelly2_path), with stand-ins for the modules 2.x imports but the tests never use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import peer_pythonpath, spikingjelly2_path, write_peer_stubs

ROOT = Path(__file__).resolve().parent.parent


def run_script(script: Path, args: list[str], stubs: Path, timeout: float = 600) -> dict:
    """``script args`` with SpikingJelly 2.x and flashspike importable; its JSON output."""
    env = {**os.environ, "PYTHONPATH": peer_pythonpath(spikingjelly2_path(), ROOT / "src", write_peer_stubs(stubs))}
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)
    if done.returncode:
        raise AssertionError(f"{script.name} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
