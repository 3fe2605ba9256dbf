"""Checkpoint plumbing: every random generator's state, files replaced atomically, and checkpoint
files that carry a checksum of what they hold.

A checkpoint file is ``torch.save`` of ``{"format": FORMAT, "sha256": ..., "payload": uint8 tensor}``,
the payload being ``torch.save`` of the training state. PyTorch's own reader checks no checksum, so a
file with flipped bytes would otherwise load and silently train from wrong numbers.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import os
import math
import random
import sys
import warnings
from pathlib import Path

import torch

FORMAT = "flashspike.examples checkpoint, version 1"


class CheckpointError(ValueError):
    """A file is not a whole, unchanged checkpoint of this example."""


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


# ---------------------------------------------------------------- checkpoint files

def _serialized(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def checkpoint_bytes(payload: dict) -> bytes:
    """The file a checkpoint of ``payload`` is: the payload serialized, with its SHA-256 beside it."""
    inner = _serialized(payload)
    return _serialized({"format": FORMAT, "sha256": hashlib.sha256(inner).hexdigest(),
                        "payload": torch.frombuffer(bytearray(inner), dtype=torch.uint8)})


# The lines of torch.load's refusals that advise on torch.load itself rather than say what is wrong.
_TORCH_LOAD_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _reason(error: Exception) -> str:
    """What torch.load found wrong, in one line: its refusal without its advice (which is to load the
    file with weights_only=False, that is, to run whatever code it holds)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    specific = [line for line in lines if not line.startswith(_TORCH_LOAD_ADVICE)]
    text = (specific or lines or [""])[0]
    if text.startswith("WeightsUnpickler error:"):
        text = text[len("WeightsUnpickler error:"):].strip()
    first_sentence = text.split(". ")[0].rstrip(".")
    return f"{type(error).__name__}: {first_sentence}" if first_sentence else type(error).__name__


def _load(source):
    """``torch.load`` of plain data only: a file holding code or other objects is refused unread."""
    with warnings.catch_warnings():  # its notes on pickle protocols: the refusal below says what matters
        warnings.simplefilter("ignore")
        return torch.load(source, map_location="cpu", weights_only=True)


def load_checkpoint(path, required: tuple[str, ...] = ()) -> dict:
    """The payload of a checkpoint file, after checking its checksum and that it has the ``required``
    keys; raises :class:`CheckpointError` that names the file and what is wrong with it, in one line."""
    try:
        outer = _load(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: a folder, not a checkpoint file") from None
    except Exception as error:  # truncated or foreign: pickle, zip and weights_only errors differ
        raise CheckpointError(f"{path}: not a readable checkpoint of this example ({_reason(error)}); it was "
                              "refused unread") from None
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a checkpoint of this example (a file torch.save wrote, but without "
                              f"the {FORMAT!r} marker and checksum)")
    payload, recorded = outer.get("payload"), outer.get("sha256")
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8 or not isinstance(recorded, str):
        raise CheckpointError(f"{path}: a checkpoint without its payload or checksum")
    payload = payload.contiguous()
    # Its bytes, read from its memory without needing numpy (an empty tensor may have no memory at all).
    inner = ctypes.string_at(payload.data_ptr(), payload.numel()) if payload.numel() else b""
    digest = hashlib.sha256(inner).hexdigest()
    if digest != recorded:
        raise CheckpointError(f"{path}: corrupted: its contents hash to SHA-256 {digest[:16]}..., but the file "
                              f"records {recorded[:16]}...; use another checkpoint")
    try:
        state = _load(io.BytesIO(inner))
    except Exception as error:  # an intact checksum over bytes that never were a checkpoint
        raise CheckpointError(f"{path}: not a readable checkpoint of this example ({_reason(error)}); it was "
                              "refused unread") from None
    missing = [key for key in required if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{path}: an incomplete checkpoint: it lacks {', '.join(missing)}")
    return state


def check_training_state(path, state: dict) -> None:
    """Refuse a checkpoint whose entries are not what this example writes (a file made by other code,
    or damaged before its checksum was taken), naming the file and the entry; see CHECKPOINT_KEYS."""
    def refuse(what: str):
        raise CheckpointError(f"{path}: {what}; this example never writes that (another program's file, or "
                              "damaged before it was saved)")

    epoch = state["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        refuse(f"its epoch is {epoch!r}, not a whole number >= 0")
    best = state["max_test_acc"]
    if isinstance(best, bool) or not isinstance(best, (int, float)) or not (math.isfinite(best) and best <= 1):
        refuse(f"its max_test_acc is {best!r}, not an accuracy")
    history = state["history"]
    if not isinstance(history, list) or len(history) != epoch + 1:
        count = len(history) if isinstance(history, list) else type(history).__name__
        refuse(f"its history holds {count} epochs' metrics, but it covers epochs 0 to {epoch}")
    for index, record in enumerate(history):
        if not isinstance(record, dict) or record.get("epoch") != index:
            refuse(f"its history's entry {index} is not the metrics of epoch {index}")
    rng = state["rng"]
    missing = [name for name in ("torch", "python", "shuffle") if not isinstance(rng, dict) or name not in rng]
    if missing:
        refuse(f"its random generators' states lack {', '.join(missing)}")
    for name in ("torch", "shuffle"):
        if not isinstance(rng[name], torch.Tensor) or rng[name].dtype != torch.uint8:
            refuse(f"its {name} generator state is not a byte tensor")
    for name in ("net", "optimizer", "lr_scheduler", "scaler", "args"):
        if not isinstance(state[name], dict):
            refuse(f"its {name} is a {type(state[name]).__name__}, not a dict")
    data = state.get("data")
    if data is not None and not (isinstance(data, dict) and all(isinstance(data.get(k), str)
                                                                for k in ("dir", "fingerprint"))):
        refuse("its record of the training data is not a folder and a fingerprint")


# ---------------------------------------------------------------- atomic files

def _temporary(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.tmp{pid}")


def write_atomic(data: bytes, path: Path) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: a kill leaves the old file whole."""
    def write(temporary: Path) -> None:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())  # on disk before the rename makes it the file

    replace_atomically(path, write)


def replace_atomically(path: Path, write) -> None:
    """Call ``write(temporary)`` for a temporary file beside ``path``, then rename it onto ``path``."""
    temporary = _temporary(path, os.getpid())
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:  # an interrupt too: leave no half-written temporary behind
        temporary.unlink(missing_ok=True)
        raise


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def remove_stale_temporaries(folder: Path, names) -> list[Path]:
    """Remove the temporaries that :func:`replace_atomically` left beside ``folder/name`` when its process
    was killed: only files of that pattern, and only those whose process no longer runs."""
    removed = []
    for name in names:
        prefix = f".{name}.tmp"
        for candidate in Path(folder).glob(f".{name}.tmp*"):
            pid = candidate.name[len(prefix):]
            if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)) and candidate.is_file():
                candidate.unlink(missing_ok=True)
                removed.append(candidate)
    return removed
