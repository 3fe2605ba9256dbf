"""Train a convolutional spiking network on Fashion-MNIST: SpikingJelly's conv_fashion_mnist tutorial,
with its flags, on flashspike's multi-step neurons.

    python -m flashspike.examples.conv_fashion_mnist -T 4 -b 128 -epochs 64 -opt SGD -lr 0.1 -amp   # a GPU
    torchrun --nproc_per_node=2 -m flashspike.examples.conv_fashion_mnist -amp                    # one GPU a process
    python -m flashspike.examples.conv_fashion_mnist -device cpu -channels 16 -epochs 1           # CPU, minutes
    python -m flashspike.examples.conv_fashion_mnist -resume logs/RUN/checkpoint_latest.pth -epochs 80

The script reads top to bottom: the flags (flags.py), the network (flashspike.model.csnn) and its
training (trainer.py; the processes and device: flashspike.cluster), the data (fashion_mnist.py), then
one loop over epochs whose record the run log writes (run_log.py: no epoch is lost or half-written, one
run at a time holds a folder, and a resumed run continues exactly, on the data its checkpoint records by
folder and fingerprint).
"""

from __future__ import annotations

import random
import shlex
import sys
import time
from pathlib import Path

import torch

from ..cluster import Cluster, DeviceError
from ..model.csnn import CSNN  # noqa: F401 (the network, for `from ...conv_fashion_mnist import CSNN`)
from .checkpoint import CheckpointError, check_training_state, load_checkpoint, rng_states, set_rng_states
from .fashion_mnist import DataMissingError, IDXFormatError, default_data_dir, fingerprint, load_fashion_mnist
from .flags import RUN_FLAGS, as_typed, parse_args, run_name
from .run_log import FLAGS, LATEST, MODEL, RecordError, RunLog, describe_run, prepare_folder, release_folders
from .trainer import DeviceSplit, Trainer, UsageError, batches, benchmark_steps, check_memory, epoch_order

# What a checkpoint of this example holds (run_log.py adds the epochs' metrics as "history"; "data", the
# folder and fingerprint of the data trained on, is absent from checkpoints of earlier versions).
CHECKPOINT_KEYS = ("net", "optimizer", "lr_scheduler", "scaler", "epoch", "max_test_acc", "args", "rng", "history")


def read_resumed(path: str) -> dict:
    """The checkpoint -resume names, checked whole and complete."""
    try:
        checkpoint = load_checkpoint(path, CHECKPOINT_KEYS)
        check_training_state(path, checkpoint)
    except CheckpointError as error:
        raise UsageError(f"-resume {error}") from None
    saved = checkpoint["args"]
    missing = [name for name in RUN_FLAGS if not isinstance(saved, dict) or name not in saved]
    if missing:
        raise UsageError(f"-resume {path}: an incomplete checkpoint: its flags lack {', '.join(missing)}")
    return checkpoint


def refuse_discarding(folder: Path, resumed: Path, epoch: int) -> None:
    """A resumed run rewrites its folder's record from its checkpoint: refuse one that would drop epochs
    recorded after it (resuming from checkpoint_max.pth while checkpoint_latest.pth is further on)."""
    latest = folder / LATEST
    if not latest.is_file() or latest.samefile(resumed):
        return
    try:
        later = load_checkpoint(latest, ("epoch",))["epoch"]
    except CheckpointError:
        return  # a damaged latest checkpoint: the one given is what can be continued
    if later > epoch:
        raise UsageError(f"-resume {resumed}: ends at epoch {epoch}, but {latest} holds epochs up to {later}; "
                         f"resuming would discard epochs {epoch + 1} to {later}: resume from {latest}, or copy "
                         "the checkpoint into a folder of its own first")


def run_folder(args) -> Path:
    """The run's log folder: a resumed run continues in its checkpoint's own."""
    return Path(args.resume).parent if args.resume else Path(args.out_dir) / run_name(args)


def data_splits(args, cluster: Cluster, recorded: dict | None) -> tuple[DeviceSplit, DeviceSplit, dict]:
    """The data set on the training device, checked to give every process at least one full batch and,
    resuming, to be the data the run was trained on (``recorded``); with the data's identity (folder and
    fingerprint), which every checkpoint records."""
    report = print if cluster.is_main else None
    data_dir = Path(args.data_dir) if args.data_dir is not None else default_data_dir()
    data = load_fashion_mnist(data_dir, allow_download=not args.no_download, report=report)
    identity = {"dir": str(data_dir.resolve()), "fingerprint": fingerprint(data)}
    if recorded is not None and recorded["fingerprint"] != identity["fingerprint"] and not args.allow_other_data:
        raise UsageError(f"-resume {args.resume}: the run was trained on the data in {recorded['dir']} (fingerprint "
                         f"{recorded['fingerprint'][:12]}), and {identity['dir']} holds other data (fingerprint "
                         f"{identity['fingerprint'][:12]}); give -data_dir with the run's data, or -allow_other_data "
                         "to continue on this data")
    train_split = DeviceSplit(data.train_images, data.train_labels, cluster.device)
    test_split = DeviceSplit(data.test_images, data.test_labels, cluster.device)
    per_process = len(train_split) // cluster.world
    if per_process < args.b:
        raise UsageError(f"-b {args.b} is more than the {per_process} training images of each process: an epoch "
                         f"would have no full batch; give -b {per_process} or less")
    return train_split, test_split, identity


def start_up_header(args, trainer: Trainer, backend: str, folder: Path | None) -> list[str]:
    """The few lines a run starts with: where its record goes, what it runs on, and what it trains. The
    full flags and the network are in the run folder (``describe_run``) and, with -verbose, on screen."""
    device, world = trainer.device, trainer.cluster.world
    processes = f"{world} process" + ("es" if world > 1 else "")
    if device.type == "cuda":
        where = f"{device} ({torch.cuda.get_device_name(device)}, {processes})"
    else:
        threads = torch.get_num_threads()
        where = f"{device} ({processes}, {threads} thread{'s' if threads > 1 else ''}{' each' if world > 1 else ''})"
    precision = "float32"
    if args.amp:
        precision = f"{str(trainer.amp_dtype).replace('torch.', '')} autocast"
        precision += " with loss scaling" if trainer.scaler.is_enabled() else ""
    layout = "channels_last" if trainer.net.memory_format == torch.channels_last else "contiguous"  # as -memory_format
    parameters = sum(p.numel() for p in trainer.net.parameters())
    record = (f"run folder: {folder} (full flags: {FLAGS}, network: {MODEL}; -verbose prints them)"
              if folder is not None else "run folder: none (-bench_steps records nothing; -verbose prints the flags "
              "and network)")
    return [
        record,
        f"device: {where}; backend: {args.backend} -> {backend}; precision: {precision}; memory format: {layout}",
        f"network: {type(trainer.net).__name__}, T={args.T}, {args.channels} channels, {parameters:,} parameters; "
        f"{args.opt} lr={args.lr}, batch {args.b}{' per process' if world > 1 else ''}, "
        f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}",
    ]


def announce(args, trainer: Trainer, backend: str, folder: Path | None) -> None:
    """Print the start-up header (and with -verbose the full flags and network) on the main process."""
    lines = start_up_header(args, trainer, backend, folder)
    if args.verbose:
        lines += [str(args), str(trainer.net)]
    if args.compile or args.cuda_graph:
        what = "compiling" if args.compile else "3 warm-up steps and the CUDA graph's capture"
        lines.append(f"note: the first epoch trained in this run includes {what}; later epochs are steady")
    print("\n".join(lines), flush=True)


def train(args, cluster: Cluster, resumed: dict | None) -> None:
    main = cluster.is_main
    check_memory(args, cluster.device)
    trainer = Trainer(args, cluster)
    backend = trainer.check_backend()
    if args.bench_steps:
        if main:
            announce(args, trainer, backend, None)
            benchmark_steps(trainer, args.bench_steps)
        return

    shuffle = torch.Generator().manual_seed(args.seed)  # the batch order's own generator
    start_epoch, max_test_acc, history = 0, -1.0, []
    folder = run_folder(args)
    if resumed is not None:
        refuse_discarding(folder, Path(args.resume), resumed["epoch"])
        try:
            trainer.load_state_dict(resumed)
        except (RuntimeError, KeyError, ValueError) as error:  # states of another network or optimizer
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UsageError(f"-resume {args.resume}: does not fit this network and optimizer: {reason}") from None
        start_epoch, max_test_acc, history = resumed["epoch"] + 1, resumed["max_test_acc"], resumed["history"]
        set_rng_states(resumed["rng"], shuffle, cluster.device)
        if main:
            print(f"resumed {args.resume}: epochs 0 to {resumed['epoch']} done (max_test_acc={max_test_acc:.4f}); "
                  f"continuing at epoch {start_epoch} of {args.epochs} with the run's flags "
                  f"{as_typed(args, RUN_FLAGS)}", flush=True)
        if start_epoch >= args.epochs:
            if main:
                print(f"nothing to train: give -epochs above {start_epoch} to train more")
            return
    # The folder is checked before the data loads: a bad -out_dir fails in a second, not after minutes.
    prepare_folder(folder, resuming=resumed is not None, overwrite=args.overwrite, owner=main)
    if main:
        describe_run(folder, vars(args), str(trainer.net))
        announce(args, trainer, backend, folder)

    train_split, test_split, data_identity = data_splits(args, cluster, resumed and resumed.get("data"))
    test_order = torch.arange(cluster.rank, len(test_split), cluster.world, device=cluster.device)
    test_batches = batches(test_order, args.b, False, args.max_batches)
    log = RunLog(folder, history) if main else None

    for epoch in range(start_epoch, args.epochs):
        started = time.perf_counter()
        # Full batches only (as SpikingJelly's drop_last): BatchNorm never sees a batch of one.
        train_batches = batches(epoch_order(shuffle, len(train_split), cluster), args.b, True, args.max_batches)
        progress = log.progress(f"epoch {epoch} train", len(train_batches)) if log else None
        train_totals = trainer.train_epoch(train_split, train_batches, progress)
        if cluster.device.type == "cuda":
            torch.cuda.synchronize(cluster.device)  # the training time must include the queued work
        train_time = time.perf_counter() - started
        trainer.scheduler.step()
        cluster.share_buffers(trainer.net)
        progress = log.progress(f"epoch {epoch} test", len(test_batches)) if log else None
        test_totals = trainer.evaluate(test_split, test_batches, progress)
        totals = cluster.sum(torch.cat([train_totals, test_totals])).tolist()  # the epoch's one host sync
        if not main:
            continue
        test_acc = totals[4] / totals[5]
        is_best = test_acc > max_test_acc
        max_test_acc = max(max_test_acc, test_acc)
        metrics = {
            "epoch": epoch, "train_loss": totals[0] / totals[2], "train_acc": totals[1] / totals[2],
            "test_loss": totals[3] / totals[5], "test_acc": test_acc, "max_test_acc": max_test_acc,
            "total_time": time.perf_counter() - started, "train_time": train_time,
            "train_speed": totals[2] / train_time, "lr": trainer.optimizer.param_groups[0]["lr"],
        }
        checkpoint = {**trainer.state_dict(), "epoch": epoch, "max_test_acc": max_test_acc,
                      "args": vars(args), "rng": rng_states(shuffle, cluster.device), "data": data_identity}
        log.epoch_done(metrics, checkpoint, is_best)
    if log:
        log.close()


def interrupted(args) -> str:
    """The line a run stopped by Ctrl-C prints: what its folder holds, and the command that continues it."""
    latest = run_folder(args) / LATEST
    try:
        epoch = load_checkpoint(latest, ("epoch",))["epoch"]
    except CheckpointError:
        return (f"interrupted: no epoch of this run was recorded in {latest.parent}; start it again (with "
                "-overwrite if it says the folder holds a run)")
    command = ["python", "-m", "flashspike.examples.conv_fashion_mnist", "-resume", str(latest), "-epochs",
               str(args.epochs), "-device", args.device]
    for name, default in (("backend", "auto"), ("memory_format", "auto"), ("compile", False)):
        if getattr(args, name) != default:
            command += [f"-{name}", str(getattr(args, name))]
    command += ["-no_download"] if args.no_download else []
    return (f"interrupted: {latest} holds epochs 0 to {epoch}, recorded whole (the epoch under way is lost); "
            f"continue with: {shlex.join(command)}")


def _out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error)


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        resumed = None
        if args.resume:
            resumed = read_resumed(args.resume)
            args = parse_args(argv, resumed_flags=resumed["args"])
            recorded = resumed.get("data")
            if recorded is not None and args.data_dir is None:
                args.data_dir = recorded["dir"]  # the run's own data, as recorded
        cluster = Cluster(args.device)
    except DeviceError as error:
        print(f"error: -device {error}", file=sys.stderr)
        return 2
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    if cluster.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolutions
    try:
        train(args, cluster, resumed)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (DataMissingError, IDXFormatError, RecordError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if cluster.is_main:
            print(interrupted(args), file=sys.stderr)
        return 130  # (128 + SIGINT, as a shell reports it)
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if not _out_of_memory(error):
            raise
        first_line = str(error).strip().splitlines()[0]
        print(f"error: out of memory on {cluster.device} ({first_line}); lower -T, -b or -channels", file=sys.stderr)
        return 1
    finally:
        release_folders()
        cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
