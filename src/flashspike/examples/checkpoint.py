"""Checkpoint plumbing: every random generator's state, and files replaced atomically."""

from __future__ import annotations

import os
import random
import shutil
import sys
from pathlib import Path

import torch


def rng_states(shuffle: torch.Generator, device: torch.device) -> dict:
    """Every random generator this process uses, in types that ``torch.load(weights_only=True)`` reads."""
    states = {"torch": torch.get_rng_state(), "python": random.getstate(), "shuffle": shuffle.get_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        kind, keys, pos, has_gauss, cached = numpy.random.get_state()
        states["numpy"] = (kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached)
    return states


def set_rng_states(states: dict, shuffle: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    shuffle.set_state(states["shuffle"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)
    numpy = sys.modules.get("numpy")
    if numpy is not None and "numpy" in states:
        kind, keys, pos, has_gauss, cached = states["numpy"]
        numpy.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def save_atomic(obj, path: Path) -> None:
    """Write to a temporary file beside ``path`` and rename it: a kill leaves the old file whole."""
    def write(temporary: Path) -> None:
        with open(temporary, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())  # on disk before the rename makes it the checkpoint

    replace_atomically(path, write)


def copy_atomic(source: Path, path: Path) -> None:
    replace_atomically(path, lambda temporary: shutil.copyfile(source, temporary))


def replace_atomically(path: Path, write) -> None:
    """Call ``write(temporary)`` for a temporary file beside ``path``, then rename it onto ``path``."""
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:  # an interrupt too: leave no half-written temporary behind
        temporary.unlink(missing_ok=True)
        raise
