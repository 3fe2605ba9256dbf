"""The example's training machinery: the data set on the device, the network
(:class:`flashspike.model.csnn.CSNN`) with its optimizer, schedule and AMP scaler, one training step,
an epoch, and the test pass; this process's place among torchrun's processes is
:class:`flashspike.cluster.Cluster`.

Where the time goes, and why the loop looks as it does: the whole data set sits on the training
device as uint8 (47 MB), a batch is an index gather there, and the loss and accuracy are summed on the
device, so a training step never waits for the host (one synchronization ends the training part of an
epoch, one more the test). Optimizers are fused on CUDA, which lets the AMP scaler skip its per-step
inf check on the host. On one CUDA device the whole training step is then captured once as a CUDA
graph and replayed (``-cuda_graph auto``, see flashspike.CapturedStep): eager, the step's hundred-odd
operations cost the host about twice the GPU's time, and replaying removes that host work without
changing a number the step computes.
"""

from __future__ import annotations

import sys
import time
import warnings

try:
    import resource  # Unix only
except ImportError:
    resource = None

import torch
import torch.nn.functional as F
from torch import nn

from .. import backends, compiling, functional
from ..captured import CapturedStep
from ..memory.batchnorm_recompute import recompute_h_after_batchnorm
from ..memory.pooling import store_pool_indices_in_bytes
from ..cluster import Cluster
from ..model.csnn import CSNN
from .fashion_mnist import NUM_CLASSES


RSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss counts bytes on macOS, KiB on Linux


class UsageError(Exception):
    """A bad flag or flag combination, reported as one line and exit code 2."""


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


class ByteImages(nn.Module):
    """``net`` on the data set's uint8 images ``[B, 28, 28]``, converted by :func:`as_input` inside the
    training step (so a captured step converts the batch on the device too)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, images_u8: torch.Tensor) -> torch.Tensor:
        return self.net(as_input(images_u8))


def rate_loss(rates: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The example's loss: mean squared error of the firing rates against one-hot targets, in float32."""
    return F.mse_loss(rates.float(), targets)


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
        self.net = CSNN(args.T, args.channels, args.step_mode, args.backend, memory_format,
                        NUM_CLASSES).to(self.device)
        if args.pool_bytes == "on":
            store_pool_indices_in_bytes(self.net)
        if args.recompute_h == "on":
            recompute_h_after_batchnorm(self.net)
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
        # Several processes: a captured step averages the gradients itself, inside its graph; an eager
        # one leaves that to DistributedDataParallel, which overlaps it with the backward.
        self.capturable = bool(args.cuda_graph)
        if cluster.world > 1 and not self.capturable:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
            if memory_format == torch.channels_last:
                # The first convolution's weight [C, 1, 3, 3] has one input channel, so its channels_last
                # and contiguous strides differ only in a dimension of size 1, over the same memory; DDP
                # compares the strides and warns about a mismatch that costs nothing.
                warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        # With CUDA graphs (-compile reduce-overhead) each step is marked: the previous step's outputs
        # have been consumed by then (Totals.add queues its work at once).
        self.mark_compiled_step = bool(args.compile) and compiling.uses_cuda_graphs(args.compile)
        if args.compile:
            # The neurons are custom operators the compiler sees through; their state stays a Python
            # attribute, which reset_net (outside the compiled region) puts back to rest.
            self.model = compiling.compile(self.model, mode=args.compile, fullgraph=True)
        # One training step (forward, loss, reset_net, backward, optimizer and scaler steps); with
        # -cuda_graph captured once and replayed for every full batch (a partial one runs eagerly).
        if self.capturable and self.device.type != "cuda":
            raise UsageError(f"-cuda_graph needs a CUDA device, but the device is {self.device}")
        self.stepper = CapturedStep(ByteImages(self.model), rate_loss, self.optimizer, self.scaler,
                                    autocast_dtype=self.amp_dtype if args.amp else None, capture=self.capturable,
                                    distributed=cluster.world > 1 and self.capturable)

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, checkpoint: dict) -> None:
        misfit = state_misfit(self.net.state_dict(), checkpoint["net"])
        if misfit is not None:
            raise ValueError(f"its network is another: {misfit}")
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

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.args.amp)

    def train_step(self, images_u8: torch.Tensor, targets: torch.Tensor):
        """One training step on a batch; returns (loss, rates), both still on the device (a captured
        step's are overwritten by the next step). It starts and ends with the neurons at rest."""
        if self.mark_compiled_step:
            torch.compiler.cudagraph_mark_step_begin()
        loss = self.stepper(images_u8, targets)
        return loss, self.stepper.outputs

    def train_epoch(self, split: DeviceSplit, batch_indices: list, progress=None) -> torch.Tensor:
        """[loss sum, correct, count] over the batches, on the device (no sync)."""
        self.model.train()
        totals = Totals(self.device)
        for index in batch_indices:
            loss, rates = self.train_step(split.images[index], split.targets[index])
            totals.add(loss, len(index), rates, split.labels[index])  # mean loss x batch size
            if progress is not None:
                progress.update()
        return totals.as_tensor()

    @torch.no_grad()
    def evaluate(self, split: DeviceSplit, batch_indices: list, progress=None) -> torch.Tensor:
        """[loss sum, correct, count] of the unwrapped net over the batches, on the device."""
        self.net.eval()
        totals = Totals(self.device)
        for index in batch_indices:
            with self._autocast():
                rates = self.net(as_input(split.images[index]))
            loss_sum = F.mse_loss(rates.float(), split.targets[index], reduction="sum")
            totals.add(loss_sum, 1 / NUM_CLASSES, rates, split.labels[index])  # per-sample mean x count
            functional.reset_net(self.net)
            if progress is not None:
                progress.update()
        return totals.as_tensor()


def state_misfit(expected: dict, saved: dict) -> str | None:
    """What keeps ``saved`` (a state_dict) from loading into a module whose state_dict is ``expected``,
    in one line (load_state_dict lists every tensor, a line each); None when it fits."""
    def shape(value):
        return list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__

    resized = [k for k in expected if k in saved and shape(saved[k]) != shape(expected[k])]
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    parts = []
    if resized:
        parts.append(f"{len(resized)} tensors of other shapes (e.g. {resized[0]}: {shape(saved[resized[0]])} saved, "
                     f"{shape(expected[resized[0]])} here)")
    if missing:
        parts.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensors this network has not (e.g. {unexpected[0]})")
    return "; ".join(parts) or None


# The bytes a training step keeps for its backward, at least, per time step, image and channel: each
# neuron layer's H and spikes (28x28 and 14x14), the max-pools' outputs and int64 indices, the second
# convolution's and batch norm's outputs. (The rest, and what backward allocates, comes on top.)
_KEPT_PER_STEP_IMAGE_CHANNEL = 784 * 2 + 196 * (3 + 2 + 2) + 49 * 3


def _available_memory(device: torch.device) -> int | None:
    """Bytes free for this process on ``device`` (None where it cannot be told)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _size(n: float) -> str:
    return f"{n / 2**40:.1f} TiB" if n >= 2**40 else f"{n / 2**30:.1f} GiB"


def check_memory(args, device: torch.device) -> None:
    """Refuse -T, -b and -channels whose training cannot fit ``device``'s free memory, before anything
    is allocated: one line that says how much is needed and what to lower, where the allocator would
    raise a traceback (or the system start swapping) later."""
    available = _available_memory(device)
    if available is None:
        return
    c = args.channels
    weights = (c * 9 + c * c * 9 + c * 49 * c * 16 + c * 16 * NUM_CLASSES) * 4
    weights *= 3 if args.opt == "SGD" else 4  # with their gradients and the optimizer's state
    if weights > available:
        raise UsageError(f"-channels {c} needs about {_size(weights)} for the network's weights, gradients and "
                         f"optimizer state alone, and {device} has {_size(available)} free; lower -channels")
    kept = args.T * args.b * c * _KEPT_PER_STEP_IMAGE_CHANNEL * (2 if args.amp else 4)
    if weights + kept > available:
        raise UsageError(f"-T {args.T}, -b {args.b} and -channels {c} need at least {_size(weights + kept)} for a "
                         f"training step, and {device} has {_size(available)} free; lower -T, -b or -channels")


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
        seconds = time.perf_counter() - started
        # No allocator statistics on the CPU: the process's peak resident memory (the interpreter and
        # PyTorch included), where the platform reports it.
        memory = "" if resource is None else \
            f", peak_rss_mib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RSS_UNIT / 2**20:.1f}"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"bench: device={name}, T={args.T}, b={args.b}, amp={args.amp}, step_mode={args.step_mode}, "
          f"backend={trainer.check_backend()}, memory_format={str(trainer.net.memory_format).replace('torch.', '')}, "
          f"compile={args.compile}, cuda_graph={args.cuda_graph}, pool_bytes={args.pool_bytes}, "
          f"recompute_h={args.recompute_h}, "
          f"steps={steps}, step_time_ms={seconds / steps * 1000:.3f}{memory}",
          flush=True)


def epoch_order(shuffle: torch.Generator, n: int, cluster: Cluster) -> torch.Tensor:
    """This process's training indices for the next epoch, on the device. Every process draws the same
    permutation and takes every world-th index of it: disjoint shards of equal size."""
    usable = n - n % cluster.world
    order = torch.randperm(n, generator=shuffle)[:usable][cluster.rank::cluster.world]
    return order.to(cluster.device)


