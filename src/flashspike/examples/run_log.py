"""A run's log folder: its metrics.jsonl, TensorBoard events and checkpoints, written so that no epoch's
record is lost or half-written, and the progress lines printed while an epoch runs.

An epoch is recorded in this order: its line printed, its metrics.jsonl line, its TensorBoard points,
checkpoint_max.pth (when it is the best epoch), and last checkpoint_latest.pth. The latest checkpoint
is the commit: it holds the metrics of every epoch it covers (``history``), and a resumed run rewrites
metrics.jsonl and the TensorBoard curves from that history. A process killed anywhere in between so
leaves an epoch that the resumed run trains again, to the same numbers, and records once. Beside the
record, flags.json and model.txt hold every flag and the network of the run's latest start, which the
start-up header only summarizes.

One run at a time holds a folder: its process (torchrun's rank 0) takes an advisory lock on the folder
before it writes or removes anything there, and another run started on that folder (the same command
twice, ``-overwrite`` or ``-resume`` while it trains) is refused with the holder's process id. The
system drops the lock when the process ends, however it ends, so a killed run leaves no lock behind.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: runs are not locked there
    fcntl = None

from .checkpoint import checkpoint_bytes, remove_stale_temporaries, write_atomic
from .trainer import UsageError

METRICS, LATEST, BEST = "metrics.jsonl", "checkpoint_latest.pth", "checkpoint_max.pth"
# What a run was started with, in full: the start-up header prints a few lines and names these files.
FLAGS, MODEL = "flags.json", "model.txt"
HOLDER = ".holder"  # the process id of the run that holds the folder (information for a refused run)
SCALARS = ("train_loss", "train_acc", "test_loss", "test_acc", "train_time", "train_speed")
TENSORBOARD_PREFIX = "events.out.tfevents."
PROGRESS_SECONDS = 10.0  # between progress lines where there is no terminal for a bar


class RecordError(OSError):
    """An epoch's record could not be written (a full disk, a folder made read-only)."""


def _optional(module: str, purpose: str, install: str):
    """Import an optional package, or warn once with the real cause and return None."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as error:
        print(f"warning: {purpose} is off: {error} (pip install {install})", file=sys.stderr)
        return None


def _ours(folder: Path) -> list[Path]:
    """The files a run writes into its folder."""
    return [path for path in sorted(folder.iterdir())
            if path.name in (METRICS, LATEST, BEST) or path.name.startswith(TENSORBOARD_PREFIX)]


_held: dict = {}  # folder -> the open descriptor whose lock holds it, for this process's run


def hold_folder(folder: Path) -> None:
    """Lock ``folder`` for this process until :func:`release_folders`, or refuse it when another
    running process holds it. The lock is ``flock`` on the folder itself: the system releases it when
    the process ends, so nothing is left to clean up after a crash."""
    if fcntl is None:
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held by another process (BlockingIOError), or a file system without locks
        os.close(descriptor)
        try:
            holder = (folder / HOLDER).read_text().strip() or "unknown"
        except OSError:
            holder = "unknown"
        raise UsageError(f"{folder} is in use by another run (process {holder}), which writes its record "
                         "there; wait for it to end, or give another -out_dir") from None
    _held[folder] = descriptor
    try:
        (folder / HOLDER).write_text(f"{os.getpid()}\n")
    except OSError:  # only information for a refused run; the lock holds without it
        pass


def release_folders() -> None:
    """Release the folders this process holds (the end of a run, whatever ended it)."""
    for folder, descriptor in list(_held.items()):
        (folder / HOLDER).unlink(missing_ok=True)
        os.close(descriptor)
        del _held[folder]


def prepare_folder(folder: Path, *, resuming: bool, overwrite: bool, owner: bool = True) -> None:
    """Make the run folder and check that it can be written, hold it (see :func:`hold_folder`), remove
    the temporaries a killed run left there, and refuse a folder that holds another run unless resuming
    it or told to overwrite it. Only the ``owner`` (torchrun's rank 0, which writes the record) holds the
    folder and removes files; the others check."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except (OSError, ValueError) as error:  # ValueError: a path with a NUL byte
        fix = "make it writable to resume there" if resuming else "give a writable -out_dir"
        raise UsageError(f"cannot write the run's log folder {folder}: {error}; {fix}") from None
    if owner:
        hold_folder(folder)
    for path in remove_stale_temporaries(folder, (METRICS, LATEST, BEST, FLAGS, MODEL)) if owner else ():
        print(f"removed {path.name}, a temporary file a stopped run left behind", flush=True)
    if resuming:
        return
    previous = _ours(folder)
    if previous and not overwrite:
        hint = f"-resume {folder / LATEST} to continue it, " if (folder / LATEST).is_file() else ""
        raise UsageError(f"{folder} already holds a run ({', '.join(p.name for p in previous)}); give {hint}"
                         "-overwrite to replace it, or another -out_dir")
    if not owner:
        return
    for path in previous:
        path.unlink()
    if previous:
        print(f"overwrite: removed the previous run's {', '.join(p.name for p in previous)} from {folder}")


def describe_run(folder: Path, flags: dict, model: str) -> None:
    """Write the run's full flags (``flags.json``) and its network as printed (``model.txt``) into its
    prepared folder. They describe the latest start: a resumed or overwriting run writes them again."""
    write_atomic((json.dumps(flags, indent=1, default=str) + "\n").encode(), folder / FLAGS)
    write_atomic((model + "\n").encode(), folder / MODEL)


class Progress:
    """Batches done of a pass: a tqdm bar on a terminal, gone when the pass ends; elsewhere (a log file,
    a pipe) a line every ``interval`` seconds, so a slow epoch shows it is alive."""

    def __init__(self, what: str, total: int, tqdm_module=None, interval: float = PROGRESS_SECONDS):
        self.what, self.total, self.done, self.interval = what, total, 0, interval
        self.bar = tqdm_module.tqdm(total=total, desc=what, leave=False) if tqdm_module else None
        self.started = self.last = time.perf_counter()

    def update(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            if self.done == self.total:
                self.bar.close()
            return
        now = time.perf_counter()
        if now - self.last >= self.interval and self.done < self.total:
            self.last = now
            print(f"{self.what}: {self.done}/{self.total} batches, {now - self.started:.0f} s", flush=True)


class RunLog:
    """What rank 0 writes into a prepared run folder. ``history``: the metrics of the epochs a resumed
    checkpoint covers (empty for a new run); metrics.jsonl and TensorBoard are rewritten to match it."""

    def __init__(self, folder: Path, history: list[dict]):
        self.folder, self.history = folder, list(history)
        tensorboard = _optional("torch.utils.tensorboard", "TensorBoard logging", "tensorboard")
        self.tqdm = _optional("tqdm", "the progress bar", "tqdm") if sys.stderr.isatty() else None
        earlier_events = sorted(folder.glob(TENSORBOARD_PREFIX + "*"))
        self.writer = tensorboard and tensorboard.SummaryWriter(str(folder))
        if history:
            # A resumed run: metrics.jsonl and the curves are written again from the checkpoint's history,
            # so an epoch it does not cover (a run stopped mid-record) leaves no line and no point. The
            # earlier event files go once the new one holds every point they should.
            lines = "".join(json.dumps(record) + "\n" for record in history)
            write_atomic(lines.encode(), folder / METRICS)
            for record in history:
                self._add_scalars(record)
            if self.writer is not None:
                for path in earlier_events:
                    path.unlink()

    def progress(self, what: str, total: int) -> Progress:
        return Progress(what, total, self.tqdm, PROGRESS_SECONDS)

    def epoch_done(self, metrics: dict, checkpoint: dict, is_best: bool) -> None:
        """Print the epoch's line, then record it (see the module's docstring for the order)."""
        m = metrics
        print(f"epoch={m['epoch']}, train_loss={m['train_loss']:.6f}, train_acc={m['train_acc']:.4f}, "
              f"test_loss={m['test_loss']:.6f}, test_acc={m['test_acc']:.4f}, max_test_acc={m['max_test_acc']:.4f}, "
              f"total_time={m['total_time']:.3f}, train_time={m['train_time']:.3f}, "
              f"train_speed={m['train_speed']:.0f}", flush=True)
        history = self.history + [metrics]
        try:
            self._append_metrics(metrics)
            self._add_scalars(metrics)
            data = checkpoint_bytes({**checkpoint, "history": history})
            if is_best:
                self._save(BEST, data)
            self._save(LATEST, data)
        except OSError as error:
            raise RecordError(
                f"epoch {m['epoch']}'s results (printed above) could not be recorded in {self.folder}: {error}. "
                f"{LATEST} holds the epochs before it; resume from it once the folder can be written"
            ) from None
        self.history = history

    def _append_metrics(self, metrics: dict) -> None:
        with open(self.folder / METRICS, "a") as file:
            file.write(json.dumps(metrics) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def _add_scalars(self, metrics: dict) -> None:
        if self.writer is not None:
            for key in SCALARS:
                self.writer.add_scalar(key, metrics[key], metrics["epoch"])
            self.writer.flush()

    def _save(self, name: str, data: bytes) -> None:
        write_atomic(data, self.folder / name)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
