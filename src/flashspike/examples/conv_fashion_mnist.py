"""Train a convolutional spiking network on Fashion-MNIST: SpikingJelly's conv_fashion_mnist tutorial,
with its flags, on flashspike's multi-step neurons.

    python -m flashspike.examples.conv_fashion_mnist -T 4 -b 128 -epochs 64 -opt SGD -lr 0.1 -amp -backend auto
    torchrun --nproc_per_node=2 -m flashspike.examples.conv_fashion_mnist -amp -backend auto   # one GPU a process
    python -m flashspike.examples.conv_fashion_mnist -channels 16 -epochs 1                   # CPU, a few minutes
    python -m flashspike.examples.conv_fashion_mnist -amp -backend auto -cuda_graph off       # eager steps (no graph)

Where the time goes, and why the loop looks as it does: the whole data set sits on the training
device as uint8 (47 MB), a batch is an index gather there, and the loss and accuracy are summed on the
device, so a training step never waits for the host (one synchronization ends the training part of an
epoch, one more the test). Optimizers are fused on CUDA, which lets the AMP scaler skip its per-step
inf check on the host. On one CUDA device the whole training step is then captured once as a CUDA
graph and replayed (``-cuda_graph auto``, see captured_step.py): eager, the step's hundred-odd
operations cost the host about twice the GPU's time, and replaying removes that host work without
changing a number the step computes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import backends, functional
from .captured_step import CapturedStep
from .checkpoint import copy_atomic, rng_states, save_atomic, set_rng_states
from .csnn import CSNN
from .fashion_mnist import NUM_CLASSES, DataMissingError, IDXFormatError, load_fashion_mnist


class UsageError(Exception):
    """A bad flag or flag combination, reported as one line and exit code 2."""


# ---------------------------------------------------------------- the command line

def _choice(names: tuple[str, ...]):
    """An argparse type that accepts ``names`` in any case and returns the spelling given here."""
    by_lower = {name.lower(): name for name in names}

    def parse(text: str) -> str:
        try:
            return by_lower[text.lower()]
        except KeyError:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(names)} (any case)") from None

    parse.__name__ = "choice"
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flashspike.examples.conv_fashion_mnist",
        description="Train SpikingJelly's convolutional SNN on Fashion-MNIST with flashspike neurons. "
        "Flags are SpikingJelly's (single dash; '-data-dir' works as '-data_dir'). Under torchrun every "
        "process trains on its shard of each batch order with DistributedDataParallel.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    def flag(name: str, **kwargs):
        names = [f"-{name}"] + ([f"-{name.replace('_', '-')}"] if "_" in name else [])
        parser.add_argument(*names, **kwargs)

    default_device = "cuda:0" if torch.cuda.is_available() else "cpu"
    flag("T", type=int, default=4, help="time steps each image is shown for")
    flag("device", default=default_device, help="training device; under torchrun each process takes cuda:LOCAL_RANK")
    flag("b", type=int, default=128, help="batch size of each process")
    flag("epochs", type=int, default=64, help="number of training epochs")
    flag("j", type=int, default=4, help="ignored: the data set lives on the device, no loader workers are needed")
    flag("data_dir", default=None, help="directory of the four IDX files (gzipped or not); default: "
         "/usr/share/datasets/fashion-mnist when present, else ./data, downloaded when the network allows")
    flag("out_dir", default="./logs", help="where the run's log folder is made")
    flag("resume", default=None, help="a checkpoint_latest.pth to continue from, exactly")
    flag("amp", action="store_true", help="automatic mixed precision (float16 on CUDA, bfloat16 on CPU)")
    flag("cupy", action="store_true", help="short for -backend cupy")
    flag("opt", type=_choice(("SGD", "Adam")), default="SGD", help="optimizer: SGD or Adam (any case)")
    flag("lr", type=float, default=0.1, help="learning rate")
    flag("momentum", type=float, default=0.9, help="SGD momentum")
    flag("lr_scheduler", type=_choice(("CosALR", "StepLR")), default="CosALR",
         help="CosALR (cosine annealing over T_max epochs) or StepLR (any case)")
    flag("step_size", type=int, default=32, help="StepLR: epochs between decays")
    flag("gamma", type=float, default=0.1, help="StepLR: decay factor")
    flag("T_max", type=int, default=64, help="CosALR: epochs of one half cosine")
    flag("backend", choices=backends.KNOWN_BACKENDS, default="torch",
         help="multi-step neuron backend; 'auto' takes the fastest that runs on the device")
    flag("channels", type=int, default=128, help="channels of the convolutions")
    flag("step_mode", choices=("m", "s"), default="m",
         help="m: multi-step neurons over [T, N, ...]; s: single-step neurons in a Python loop over T (the baseline)")
    flag("memory_format", choices=("auto", "channels_last", "contiguous"), default="auto",
         help="layout of the convolution activations: auto is channels_last on CUDA (cuDNN's and max-pool's "
         "NHWC kernels, no layout conversions; the neurons read it in place) and contiguous elsewhere")
    flag("seed", type=int, default=0, help="seed of the weights and of the batch order")
    flag("max_batches", type=int, default=None,
         help="train and test on at most this many batches per epoch and process (quick checks)")
    flag("no_download", action="store_true", help="never download the data set")
    flag("bench_steps", type=int, default=0,
         help="time this many training steps on a random batch already on the device, report the step time and "
         "the peak memory of those steps (after a warm-up), and exit (no data set needed)")
    flag("compile", action="store_true",
         help="train through torch.compile(net, fullgraph=True); epoch 0's times include compiling")
    flag("cuda_graph", nargs="?", const="on", default="auto", choices=("auto", "on", "off"),
         help="capture the whole training step (forward, backward, optimizer step, loss scaling) as a CUDA graph "
         "after 3 warm-up steps and replay it for every full batch: the same computation without the host's "
         "per-operation work; epoch 0's times include warm-up and capture; evaluation runs eagerly. 'on' (the "
         "bare flag) needs one CUDA device and one process; 'auto' is 'on' for multi-step training on one CUDA "
         "device without -compile or torchrun, else 'off'")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.cupy:
        if args.backend not in ("torch", "cupy"):
            raise UsageError(f"-cupy means -backend cupy, but -backend {args.backend} was given too")
        args.backend = "cupy"
    for name in ("T", "b", "epochs", "channels", "T_max", "step_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"-{name} must be at least 1, got {getattr(args, name)}")
    if args.max_batches is not None and args.max_batches < 1:
        raise UsageError(f"-max_batches must be at least 1, got {args.max_batches}")
    if args.step_mode == "s" and args.backend != "torch":
        raise UsageError(f"-backend {args.backend} applies to multi-step neurons; -step_mode s has none")
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if args.cuda_graph == "auto":
        capturable = args.device.startswith("cuda") and processes == 1 and not args.compile and args.step_mode == "m"
        args.cuda_graph = "on" if capturable else "off"
    elif args.cuda_graph == "on" and args.compile:
        raise UsageError("-compile and -cuda_graph are alternatives: give one of them")
    elif args.cuda_graph == "on" and processes > 1:
        raise UsageError("-cuda_graph trains in one process: DistributedDataParallel's gradient "
                         "all-reduce is not captured here; run without torchrun, or drop -cuda_graph")
    args.cuda_graph = args.cuda_graph == "on"  # from here on, whether the step is captured
    return args


def run_name(args) -> str:
    """The log folder's name: SpikingJelly's, plus what this example adds."""
    name = f"T_{args.T}_b_{args.b}_{args.opt}_lr_{args.lr}_"
    if args.lr_scheduler == "CosALR":
        name += f"CosALR_{args.T_max}"
    else:
        name += f"StepLR_{args.step_size}_{args.gamma}"
    if args.amp:
        name += "_amp"
    if args.backend != "torch":
        name += f"_{args.backend}"
    if args.channels != 128:
        name += f"_c{args.channels}"
    if args.step_mode == "s":
        name += "_s"
    if args.compile:
        name += "_compile"
    # (Not -cuda_graph: a captured step computes exactly what the eager one does.)
    return name


# ---------------------------------------------------------------- distributed

class Cluster:
    """This process's place among torchrun's processes (rank 0 of 1 without torchrun)."""

    def __init__(self, requested_device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        device = torch.device(requested_device)
        if self.world > 1 and device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise UsageError(f"-device {requested_device}: CUDA is not available here; use -device cpu")
            torch.cuda.set_device(device)
        self.device = device
        if self.world > 1:
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over all processes (in place)."""
        if self.world > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    def share_buffers(self, net: nn.Module) -> None:
        """Give every process rank 0's BatchNorm statistics: each updated them on its own last batch."""
        if self.world > 1:
            for buffer in net.buffers():
                torch.distributed.broadcast(buffer, 0)

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# ---------------------------------------------------------------- data on the device

class DeviceSplit:
    """One split on the device: uint8 images, int64 labels and float one-hot targets."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device):
        self.images = images.to(device)
        self.labels = labels.to(device=device, dtype=torch.long)
        self.targets = F.one_hot(self.labels, NUM_CLASSES).float()

    def __len__(self) -> int:
        return len(self.labels)


def memory_format_for(flag: str, device: torch.device) -> torch.memory_format:
    """The -memory_format flag's layout on ``device``."""
    if flag == "auto":
        flag = "channels_last" if device.type == "cuda" else "contiguous"
    return torch.channels_last if flag == "channels_last" else torch.contiguous_format


def as_input(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, 28, 28]`` -> float ``[N, 1, 28, 28]`` in [0, 1]: exactly torchvision's ToTensor."""
    return images_u8.unsqueeze(1).float().div_(255)


def batches(order: torch.Tensor, batch_size: int, drop_last: bool, max_batches: int | None):
    """Slices of ``order`` (indices on the device), one per batch."""
    count = len(order) // batch_size if drop_last else -(-len(order) // batch_size)
    if max_batches is not None:
        count = min(count, max_batches)
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(count)]


# ---------------------------------------------------------------- training and testing

class Totals:
    """Loss sum, correct answers and images seen, summed on the device: no host sync per batch."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.count = 0

    def add(self, loss: torch.Tensor, weight: float, rates: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss.add_(loss, alpha=weight)  # one kernel: loss x weight accumulated
        self.correct += (rates.argmax(1) == labels).sum()
        self.count += len(labels)

    def as_tensor(self) -> torch.Tensor:
        """[loss sum, correct, count] as float64 on the device."""
        return torch.stack((self.loss, self.correct.double(), self.loss.new_tensor(float(self.count))))


class Trainer:
    """The network (DDP-wrapped under torchrun), its optimizer, LR schedule and AMP scaler."""

    def __init__(self, args, cluster: Cluster):
        self.args, self.cluster, self.device = args, cluster, cluster.device
        memory_format = memory_format_for(args.memory_format, self.device)
        self.net = CSNN(args.T, args.channels, args.step_mode, args.backend, memory_format).to(self.device)
        fused = {"fused": True} if self.device.type == "cuda" else {}  # fused: no host sync in scaler.step
        if args.opt == "SGD":
            self.optimizer = torch.optim.SGD(self.net.parameters(), lr=args.lr, momentum=args.momentum, **fused)
        else:
            self.optimizer = torch.optim.Adam(self.net.parameters(), lr=args.lr, **fused)
        if args.lr_scheduler == "CosALR":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=args.T_max)
        else:
            self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, args.step_size, args.gamma)
        # CUDA autocasts to float16, which needs loss scaling; CPU to bfloat16, which does not.
        self.amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=args.amp and self.amp_dtype == torch.float16
        )
        self.model = self.net
        if cluster.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
            if memory_format == torch.channels_last:
                # The first convolution's weight [C, 1, 3, 3] has one input channel, so its channels_last
                # and contiguous strides differ only in a dimension of size 1, over the same memory; DDP
                # compares the strides and warns about a mismatch that costs nothing.
                warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        if args.compile:
            # The neurons are custom operators the compiler sees through; their state stays a Python
            # attribute, which reset_net (outside the compiled region) puts back to rest.
            self.model = torch.compile(self.model, fullgraph=True)
        # -cuda_graph: the step must be capturable (see captured_step.py), and every full batch replays it.
        self.capturable = bool(args.cuda_graph)
        self.train_step = self.step
        if self.capturable:
            if self.device.type != "cuda":
                raise UsageError(f"-cuda_graph needs a CUDA device, but the device is {self.device}")
            self.train_step = CapturedStep(self.step, self.optimizer, self.device)

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, checkpoint: dict) -> None:
        self.net.load_state_dict(checkpoint["net"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["lr_scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])

    def check_backend(self) -> str:
        """The backend the neurons will run on, resolved now so a bad choice fails before training."""
        if self.args.step_mode == "s":
            return "single-step reference"
        dtype = self.amp_dtype if self.args.amp else torch.float32
        probe = torch.zeros(self.args.T, 1, device=self.device, dtype=dtype)
        try:
            return backends.resolve(self.args.backend, probe).name
        except (backends.BackendError, ImportError) as error:
            raise UsageError(f"-backend {self.args.backend} cannot run on {self.device}: {error}") from None

    def _autocast(self, cache_enabled: bool = True):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.args.amp,
                              cache_enabled=cache_enabled)

    def step(self, images_u8: torch.Tensor, targets: torch.Tensor):
        """One training step on a batch; returns (loss, rates), both still on the device.

        It starts and ends with the neurons at rest. Capturable when ``self.capturable``: gradients are
        zeroed in place and autocast keeps no weight cache (its casts would live outside the graph).
        """
        self.optimizer.zero_grad(set_to_none=not self.capturable)
        with self._autocast(cache_enabled=not self.capturable):
            rates = self.model(as_input(images_u8))
        loss = F.mse_loss(rates.float(), targets)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        functional.reset_net(self.net)  # the next batch starts from rest
        # Detached: a caller holding them must not keep this step's autograd graph (and with it the
        # parameters' AccumulateGrad nodes, bound to this step's stream) alive into the next step.
        return loss.detach(), rates.detach()

    def train_epoch(self, split: DeviceSplit, batch_indices: list, progress=None) -> torch.Tensor:
        """[loss sum, correct, count] over the batches, on the device (no sync)."""
        self.model.train()
        totals = Totals(self.device)
        for index in batch_indices:
            loss, rates = self.train_step(split.images[index], split.targets[index])
            totals.add(loss, len(index), rates, split.labels[index])  # mean loss x batch size
            if progress is not None:
                progress.update(1)
        return totals.as_tensor()

    @torch.no_grad()
    def evaluate(self, split: DeviceSplit, batch_indices: list) -> torch.Tensor:
        """[loss sum, correct, count] of the unwrapped net over the batches, on the device."""
        self.net.eval()
        totals = Totals(self.device)
        for index in batch_indices:
            with self._autocast():
                rates = self.net(as_input(split.images[index]))
            loss_sum = F.mse_loss(rates.float(), split.targets[index], reduction="sum")
            totals.add(loss_sum, 1 / NUM_CLASSES, rates, split.labels[index])  # per-sample mean x count
            functional.reset_net(self.net)
        return totals.as_tensor()


# ---------------------------------------------------------------- checkpoints

# Flags that make another network, optimizer or schedule: resuming under others is not the same run.
_STRUCTURAL_FLAGS = ("T", "channels", "step_mode", "opt", "lr_scheduler", "amp")


def load_checkpoint(path: str, args) -> dict:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"-resume {path}: no such file") from None
    except Exception as error:  # a truncated or foreign file: pickle, zip and weights_only errors differ
        raise UsageError(f"-resume {path}: not a readable checkpoint ({type(error).__name__}: {error})") from None
    saved = checkpoint.get("args", {}) if isinstance(checkpoint, dict) else {}
    differ = [f"-{k} {saved.get(k)} (now {getattr(args, k)})" for k in _STRUCTURAL_FLAGS if saved.get(k) != getattr(args, k)]
    if differ:
        raise UsageError(f"-resume {path}: the checkpoint was trained with " + ", ".join(differ))
    return checkpoint


# ---------------------------------------------------------------- the run

def _optional(module: str, purpose: str, install: str):
    """Import an optional package, or warn once with the real cause and return None."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as error:
        print(f"warning: {purpose} is off: {error} (pip install {install})", file=sys.stderr)
        return None


def benchmark_steps(trainer: Trainer, steps: int) -> None:
    """Time training steps on one random batch already on the device; print time and peak memory."""
    args, device = trainer.args, trainer.device
    generator = torch.Generator(device=device).manual_seed(args.seed)
    images = torch.randint(0, 256, (args.b, 28, 28), dtype=torch.uint8, device=device, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (args.b,), device=device, generator=generator)
    targets = F.one_hot(labels, NUM_CLASSES).float()
    trainer.model.train()
    for _ in range(max(10, steps // 10)):  # warm-up: kernel compilation, cuDNN's choice, allocator, capture
        trainer.train_step(images, targets)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        # The peak of steady training (weights, optimizer state, one batch's activations), not of
        # cuDNN's one-off algorithm search during the warm-up.
        torch.cuda.reset_peak_memory_stats(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            trainer.train_step(images, targets)
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1000.0
        memory = f", peak_memory_mib={torch.cuda.max_memory_allocated(device) / 2**20:.1f}"
    else:
        started = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(images, targets)
        seconds, memory = time.perf_counter() - started, ""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"bench: device={name}, T={args.T}, b={args.b}, amp={args.amp}, step_mode={args.step_mode}, "
          f"backend={trainer.check_backend()}, memory_format={str(trainer.net.memory_format).replace('torch.', '')}, "
          f"compile={args.compile}, cuda_graph={args.cuda_graph}, "
          f"steps={steps}, step_time_ms={seconds / steps * 1000:.3f}{memory}",
          flush=True)


def epoch_order(shuffle: torch.Generator, n: int, cluster: Cluster) -> torch.Tensor:
    """This process's training indices for the next epoch, on the device. Every process draws the same
    permutation and takes every world-th index of it: disjoint shards of equal size."""
    usable = n - n % cluster.world
    order = torch.randperm(n, generator=shuffle)[:usable][cluster.rank::cluster.world]
    return order.to(cluster.device)


class RunLog:
    """What rank 0 writes: the log folder, TensorBoard, metrics.jsonl, checkpoints and the epoch line."""

    def __init__(self, out_dir: Path, first_epoch: int):
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"log folder: {out_dir}", flush=True)
        tensorboard = _optional("torch.utils.tensorboard", "TensorBoard logging", "tensorboard")
        # purge_step: a resumed run replaces what a stopped one logged after its checkpoint.
        self.writer = tensorboard and tensorboard.SummaryWriter(str(out_dir), purge_step=first_epoch)
        self.tqdm = _optional("tqdm", "the progress bar", "tqdm") if sys.stderr.isatty() else None

    def progress(self, epoch: int, total: int):
        return self.tqdm and self.tqdm.tqdm(total=total, desc=f"epoch {epoch}", leave=False)

    def epoch_done(self, metrics: dict, checkpoint: dict, is_best: bool) -> None:
        save_atomic(checkpoint, self.out_dir / "checkpoint_latest.pth")
        if is_best:
            copy_atomic(self.out_dir / "checkpoint_latest.pth", self.out_dir / "checkpoint_max.pth")
        with open(self.out_dir / "metrics.jsonl", "a") as file:
            file.write(json.dumps(metrics) + "\n")
        if self.writer is not None:
            for key in ("train_loss", "train_acc", "test_loss", "test_acc", "train_time", "train_speed"):
                self.writer.add_scalar(key, metrics[key], metrics["epoch"])
            self.writer.flush()
        m = metrics
        print(f"epoch={m['epoch']}, train_loss={m['train_loss']:.6f}, train_acc={m['train_acc']:.4f}, "
              f"test_loss={m['test_loss']:.6f}, test_acc={m['test_acc']:.4f}, max_test_acc={m['max_test_acc']:.4f}, "
              f"total_time={m['total_time']:.3f}, train_time={m['train_time']:.3f}, "
              f"train_speed={m['train_speed']:.0f}", flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def train(args, cluster: Cluster) -> None:
    trainer = Trainer(args, cluster)
    main = cluster.is_main
    backend = trainer.check_backend()
    if main:
        print(args)
        print(trainer.net)
        layout = str(trainer.net.memory_format).replace("torch.", "")
        print(f"backend: {args.backend} -> {backend}; device: {cluster.device}; processes: {cluster.world}; "
              f"memory format: {layout}", flush=True)
        if args.compile or args.cuda_graph:
            what = "compiling" if args.compile else "3 warm-up steps and the CUDA graph's capture"
            print(f"note: the first epoch trained in this run includes {what}; later epochs are steady", flush=True)
    if args.bench_steps:
        if main:
            benchmark_steps(trainer, args.bench_steps)
        return

    shuffle = torch.Generator().manual_seed(args.seed)  # the batch order's own generator
    start_epoch, max_test_acc = 0, -1.0
    if args.resume:
        checkpoint = load_checkpoint(args.resume, args)
        trainer.load_state_dict(checkpoint)
        start_epoch, max_test_acc = checkpoint["epoch"] + 1, checkpoint["max_test_acc"]
        set_rng_states(checkpoint["rng"], shuffle, cluster.device)

    data = load_fashion_mnist(args.data_dir, allow_download=not args.no_download)
    train_split = DeviceSplit(data.train_images, data.train_labels, cluster.device)
    test_split = DeviceSplit(data.test_images, data.test_labels, cluster.device)
    test_order = torch.arange(cluster.rank, len(test_split), cluster.world, device=cluster.device)
    test_batches = batches(test_order, args.b, False, args.max_batches)
    log = RunLog(Path(args.out_dir) / run_name(args), start_epoch) if main else None

    for epoch in range(start_epoch, args.epochs):
        started = time.perf_counter()
        # Full batches only (as SpikingJelly's drop_last): BatchNorm never sees a batch of one.
        train_batches = batches(epoch_order(shuffle, len(train_split), cluster), args.b, True, args.max_batches)
        progress = log.progress(epoch, len(train_batches)) if log else None
        train_totals = trainer.train_epoch(train_split, train_batches, progress)
        if progress is not None:
            progress.close()
        if cluster.device.type == "cuda":
            torch.cuda.synchronize(cluster.device)  # the training time must include the queued work
        train_time = time.perf_counter() - started
        trainer.scheduler.step()
        cluster.share_buffers(trainer.net)
        test_totals = trainer.evaluate(test_split, test_batches)
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
                      "args": vars(args), "rng": rng_states(shuffle, cluster.device)}
        log.epoch_done(metrics, checkpoint, is_best)
    if log:
        log.close()


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        cluster = Cluster(args.device)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    if cluster.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolutions
    try:
        train(args, cluster)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (DataMissingError, IDXFormatError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
