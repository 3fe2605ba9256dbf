"""The whole training step as one CUDA graph: forward, loss, ``reset_net``, backward and optimizer step.

    step = flashspike.CapturedStep(model, loss_fn, optimizer, scaler)   # scaler: optional GradScaler
    for inputs, targets in loader:
        loss = step(inputs, targets)          # loss_fn(model(inputs), targets), trained on
        scheduler.step()                      # (per epoch or per step: both keep working)

Why: a deep SNN at small T is a few milliseconds of GPU work spread over hundreds of kernel launches
from Python, each costing the host several microseconds; eager, the host is the limit. A replay issues
every launch of the step with one call, so the GPU runs back to back without changing a number the
step computes.

What capture needs, and how this class provides it:
- Fixed addresses. The graph reads the batch from static buffers (refreshed with ``copy_``) and leaves
  the loss and the outputs in tensors of its own memory pool, overwritten by the next call. Gradients
  are zeroed in place and autocast keeps no weight cache, so every tensor the step touches outlives
  the capture.
- Nothing created lazily inside the capture. The first ``warmup_steps`` calls are ordinary training
  steps run eagerly on a side stream (PyTorch's recipe for whole-network capture): they compile the
  neuron kernels, let cuDNN choose its algorithms, create the gradients, the optimizer's state and the
  scaler's. The next call records the step and replays it, training on its batch.
- No memory beyond the eager step's. PyTorch keeps a cuBLAS workspace (and a cuBLASLt one, tens of MiB
  together on recent GPUs) for every stream that ever ran a matmul, for the life of the process. So the
  warm-ups and the captures share one side stream, and the workspaces are released just before each
  capture: the graph's own is then allocated inside its memory pool, where no later allocation can take
  it (PyTorch's compiled CUDA graphs do the same).
- No host synchronization in the step. The optimizer must be capturable: ``capturable=True`` where it
  has that option (Adam, AdamW), ``fused=True`` where it has not (SGD); with a GradScaler it must be
  fused as well, so the scaler hands it the inverse scale and the inf flag on the device, and
  ``scaler.update()`` stays on the device too.
- The learning rate read from device memory. A fused or capturable optimizer given a one-element CUDA
  tensor as its learning rate reads it at every replay. Such tensors stand in the param groups only
  while warming up and capturing; otherwise the groups hold their floats, so LR schedulers and
  checkpoints see exactly what an eager run has, and a changed float is copied to the device before
  the next replay.
- One graph per batch shape. A batch of another shape or dtype (the last partial batch of an epoch) is
  trained eagerly by default (``other_shapes="eager"``: no memory for a second graph); with
  ``other_shapes="capture"`` each new shape gets one eager step and then a graph of its own, all graphs
  sharing one memory pool (which is why every call overwrites the outputs of the last).

On the CPU (or with ``capture=False``) the same steps run eagerly; the CPU case says so once.

Several processes (``torchrun``): DistributedDataParallel averages the gradients from hooks that run
between the host and the device, which a graph cannot hold. Pass the model itself, not wrapped, with
``distributed=True``: the step then averages the gradients itself, with one all-reduce per dtype after
the backward, inside the graph, and (``broadcast_buffers=True``, as DDP does) gives every process rank
0's buffers (BatchNorm statistics) before each forward. The parameters and buffers start equal on
every process: they are broadcast from rank 0 when the step is built. The numbers are DDP's: each
gradient is the mean over the processes of their own.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable

import torch
from torch import nn
from torch.utils import _pytree as pytree

from . import functional
from .distributed import GradientAverager
from .dropped_potential import DROPS_LAST_POTENTIAL

OTHER_SHAPES = ("eager", "capture")


def _signature(tree) -> tuple:
    """What a graph was captured for: the structure, each tensor's shape, dtype and device, and every
    other leaf's value."""
    leaves, spec = pytree.tree_flatten(tree)
    return (spec, tuple((tuple(x.shape), x.dtype, x.device) if isinstance(x, torch.Tensor) else ("value", x)
                        for x in leaves))


def _detached(tree):
    return pytree.tree_map(lambda x: x.detach() if isinstance(x, torch.Tensor) else x, tree)


def _copy_into(static, new) -> None:
    for target, source in zip(pytree.tree_leaves(static), pytree.tree_leaves(new)):
        if isinstance(target, torch.Tensor):
            target.copy_(source)


def _release_blas_workspaces() -> None:
    """Free the cuBLAS and cuBLASLt workspaces of every stream (each is allocated again where next needed)."""
    release = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)  # private, but the one way PyTorch offers
    if release is not None:
        release()


def _wraps_ddp(model: nn.Module) -> bool:
    return any(isinstance(m, nn.parallel.DistributedDataParallel) for m in model.modules())


class _Graph:
    """One captured step: its static inputs and targets, the graph, and the outputs it leaves."""

    def __init__(self, inputs, targets):
        clone = lambda x: x.clone() if isinstance(x, torch.Tensor) else x  # noqa: E731
        self.inputs, self.targets = pytree.tree_map(clone, inputs), pytree.tree_map(clone, targets)
        self.graph = torch.cuda.CUDAGraph()
        self.loss = self.outputs = None
        self.grads: list = []  # each parameter's gradient as this graph writes it

    def replay(self, inputs, targets):
        _copy_into(self.inputs, inputs)
        _copy_into(self.targets, targets)
        self.graph.replay()
        return self.loss, self.outputs


class CapturedStep:
    """A training step ``loss = step(inputs, targets)``, replayed from a CUDA graph.

    Each call computes ``outputs = model(inputs)`` and ``loss = loss_fn(outputs, targets)`` (under
    ``torch.autocast`` when ``autocast_dtype`` is given), puts the model's neurons back to rest
    (``functional.reset_net``, unless ``reset=False``; before the backward, which reads only what
    autograd saved, so the neurons' last potentials are freed before its peak), back-propagates the loss
    (scaled by ``scaler`` when given and enabled) and steps ``optimizer`` (and the scaler). It returns
    the loss, detached; the outputs are in :attr:`outputs`. Both are overwritten by the next call:
    ``clone()`` what you keep.

    ``inputs`` and ``targets`` are tensors or nested tuples, lists or dicts of them, on the model's
    device. See the module's docstring for what capture needs and how batches of another shape train.

    Args:
        model: the network (an ``nn.Module`` whose parameters are on one device).
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor``.
        optimizer: on CUDA, created with ``capturable=True`` (Adam, AdamW) or ``fused=True`` (SGD), and
            fused with a GradScaler.
        scaler: a ``torch.amp.GradScaler``, or None (no loss scaling).
        autocast_dtype: ``torch.float16`` or ``torch.bfloat16`` for mixed precision, or None.
        warmup_steps: eager steps before the capture (at least 1).
        other_shapes: ``"eager"`` or ``"capture"``: how a batch of a shape not yet captured trains.
        capture: False runs every step eagerly (the same computation; useful to compare).
        reset: put the neurons back to rest in every step, once the loss is computed
            (``functional.reset_net(model)``).
        drop_last_potentials: with ``reset``, the model's multi-step neurons keep no last potential
            as their state during the forward (the reset would discard it): its memory, one time step
            of every neuron, is free for the rest of the forward, where the step's memory peaks. Reading
            a neuron's ``v`` in ``loss_fn`` or a hook, or calling a neuron twice in one forward, then
            raises an error that names this option; False keeps the potentials until the reset.
        distributed: average the gradients over the processes of ``process_group`` inside the step
            (the model must not be wrapped in DistributedDataParallel); see the module's docstring.
        process_group: the processes to average over (None: the default group).
        broadcast_buffers: with ``distributed``, give every process rank 0's buffers before each forward.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[Any, Any], torch.Tensor],
                 optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None, *,
                 autocast_dtype: torch.dtype | None = None, warmup_steps: int = 3, other_shapes: str = "eager",
                 capture: bool = True, reset: bool = True, drop_last_potentials: bool = True,
                 distributed: bool = False, process_group=None, broadcast_buffers: bool = True):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(outputs, targets), got {loss_fn!r}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if autocast_dtype not in (None, torch.float16, torch.bfloat16):
            raise ValueError(f"autocast_dtype must be None, torch.float16 or torch.bfloat16, got {autocast_dtype}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
            raise ValueError(f"warmup_steps must be an integer of at least 1 (capture needs warmed kernels), "
                             f"got {warmup_steps!r}")
        if other_shapes not in OTHER_SHAPES:
            raise ValueError(f"other_shapes must be one of {OTHER_SHAPES}, got {other_shapes!r}")
        devices = {p.device for p in model.parameters()}
        if len(devices) != 1:
            raise ValueError(f"the model's parameters must be on one device, found {sorted(map(str, devices)) or 'none'}")
        (self.device,) = devices
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.autocast_dtype, self.warmup_steps, self.other_shapes = autocast_dtype, warmup_steps, other_shapes
        self.reset = reset
        if not isinstance(drop_last_potentials, bool):
            raise TypeError(f"drop_last_potentials must be True or False, got {drop_last_potentials!r}")
        self.drop_last_potentials = drop_last_potentials
        # The multi-step nodes the model holds now: told, for each step's forward, to drop their last potential.
        self._multi_step_nodes = [m for m in model.modules() if hasattr(type(m), DROPS_LAST_POTENTIAL)]
        if not isinstance(distributed, bool):
            raise TypeError(f"distributed must be True or False, got {distributed!r}")
        if distributed and _wraps_ddp(model):
            raise ValueError("distributed=True averages the gradients itself: pass the model without its "
                             "DistributedDataParallel wrapper")
        if not distributed and process_group is not None:
            raise ValueError("process_group is used with distributed=True only")
        # Built before any step: it makes the processes' parameters and buffers equal.
        self.averager = GradientAverager(model, process_group, broadcast_buffers) if distributed else None
        self.capture = bool(capture) and self.device.type == "cuda"
        if capture and self.device.type != "cuda":
            warnings.warn(f"CapturedStep: CUDA graphs need a CUDA device; the model is on {self.device}, so every "
                          "step runs eagerly", stacklevel=2)
        if self.capture:
            self._check_capturable()
        self.outputs = None
        self.steps = 0  # calls so far
        self._graphs: dict[tuple, _Graph] = {}
        self._warmed: dict[tuple, int] = {}  # eager warm-up steps taken per signature
        self._first: tuple | None = None  # the first batch's signature: it gets warmup_steps eager steps
        self._pool = None
        self._stream = None  # the side stream of every warm-up and capture
        self._grads_shown: _Graph | None = None  # the graph whose gradients the parameters' .grad are
        # One float32 scalar per param group, and the float it last received.
        self._lr_tensors = [torch.zeros((), dtype=torch.float32, device=self.device) for _ in optimizer.param_groups] \
            if self.capture else []
        self._lr_values: list[float | None] = [None] * len(self._lr_tensors)

    def _check_capturable(self) -> None:
        if _wraps_ddp(self.model):
            raise ValueError("CapturedStep cannot capture DistributedDataParallel's gradient all-reduce (its "
                             "hooks run on the host): pass the model without the wrapper and distributed=True, "
                             "which averages the gradients inside the graph, or train the DDP model with "
                             "capture=False")
        options, name = self.optimizer.defaults, type(self.optimizer).__name__
        # Optimizers with a `capturable` option (Adam, AdamW, ...) refuse capture without it, fused or
        # not; those without one (SGD) capture only fused, which reads the learning rate on the device.
        if "capturable" in options and not options["capturable"]:
            raise ValueError(f"{name} must be created with capturable=True for its step to be captured "
                             "(it keeps its step count on the host otherwise)")
        if "capturable" not in options and not options.get("fused"):
            raise ValueError(f"{name} must be created with fused=True for its step to be captured: otherwise "
                             "it reads the learning rate on the host at every step")
        if self.scaler is not None and not getattr(self.optimizer, "_step_supports_amp_scaling", False):
            raise ValueError(f"with a GradScaler, {type(self.optimizer).__name__} must be created with fused=True: "
                             "the scaler then hands it the inf check on the device instead of reading it on the host")

    @property
    def captured(self) -> bool:
        """Whether a graph has been captured (calls of its batch shape now replay it)."""
        return bool(self._graphs)

    @property
    def graphs(self) -> int:
        """How many graphs are captured (one per batch shape)."""
        return len(self._graphs)

    def __call__(self, inputs, targets) -> torch.Tensor:
        self.steps += 1
        if not self.capture:
            loss, self.outputs = self._step(inputs, targets)
            return loss
        signature = (_signature(inputs), _signature(targets))
        graph = self._graphs.get(signature)
        if graph is None:
            if self._first is None:
                self._first = signature
            wanted = self.warmup_steps if signature == self._first else 1
            if signature != self._first and self.other_shapes == "eager":
                loss, self.outputs = self._step(inputs, targets)
                return loss
            if self._warmed.get(signature, 0) < wanted:
                self._warmed[signature] = self._warmed.get(signature, 0) + 1
                loss, self.outputs = self._warm_up(inputs, targets)
                return loss
            graph = self._capture(signature, inputs, targets)
        self._refresh_lr()
        loss, self.outputs = graph.replay(inputs, targets)
        if self._grads_shown is not graph:  # an eager step or another graph wrote gradients of its own
            for p, grad in zip(self._parameters(), graph.grads):
                p.grad = grad
            self._grads_shown = graph
        return loss

    # ---- the step itself: one definition for eager, warm-up and capture

    def _step(self, inputs, targets):
        # Inside a capture the backward then writes each gradient into memory of the graph's own pool,
        # which every replay rewrites: no zero fill and no accumulating add per parameter and step.
        self.optimizer.zero_grad(set_to_none=True)
        self._grads_shown = None  # the parameters' .grad: this step's own
        if self.averager is not None:
            self.averager.share_buffers()
        dropping = self._multi_step_nodes if self.reset and self.drop_last_potentials else ()
        for node in dropping:
            node.__dict__[DROPS_LAST_POTENTIAL] = True
        try:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                enabled=self.autocast_dtype is not None, cache_enabled=False):
                outputs = self.model(inputs)
                loss = self.loss_fn(outputs, targets)
        except BaseException:
            if self.reset:  # (as the step would have: no node is left holding a dropped potential)
                functional.reset_net(self.model)
            raise
        finally:
            for node in dropping:
                node.__dict__.pop(DROPS_LAST_POTENTIAL, None)
        if self.reset:
            # Before the backward, not after the optimizer: the backward reads only what autograd saved,
            # and the neurons' last potentials (one time step of every neuron, held for a next forward
            # that would continue the sequence) would otherwise stay allocated through its peak.
            functional.reset_net(self.model)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.averager is not None:
            self.averager.average_gradients()  # the scaled gradients, as DDP's: an inf anywhere reaches all
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        # Detached: held by the caller, they must not keep this step's autograd graph alive.
        return loss.detach(), _detached(outputs)

    def _side_stream(self) -> torch.cuda.Stream:
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        return self._stream

    def _warm_up(self, inputs, targets):
        current, side = torch.cuda.current_stream(self.device), self._side_stream()
        with self._lr_on_device():
            side.wait_stream(current)  # after the batch and the learning rate written on the current stream
            with torch.cuda.stream(side):
                result = self._step(inputs, targets)
        current.wait_stream(side)
        return result

    def _capture(self, signature, inputs, targets) -> _Graph:
        graph = _Graph(inputs, targets)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        # Capture records the step without running it: the replay that follows trains on this batch.
        _release_blas_workspaces()  # the warm-ups' workspaces go; the graph's own comes from its pool
        try:
            with self._lr_on_device(), torch.cuda.graph(graph.graph, pool=self._pool, stream=self._side_stream()):
                graph.loss, graph.outputs = self._step(graph.inputs, graph.targets)
        except RuntimeError as error:
            raise RuntimeError("CapturedStep: the training step could not be captured as a CUDA graph; something "
                               "in the model, loss or optimizer waits for the host (.item(), printing a tensor, a "
                               "data-dependent shape) or is not capturable. Use capture=False to train eagerly. "
                               f"The error: {error}") from error
        graph.grads = [p.grad for p in self._parameters()]  # (held: they stay this graph's memory)
        self._grads_shown = graph
        self._graphs[signature] = graph
        return graph

    def _parameters(self):
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    @contextlib.contextmanager
    def _lr_on_device(self):
        """The param groups hold the CUDA learning rates inside the block, their floats again after it."""
        groups = self.optimizer.param_groups
        self._refresh_lr()
        values = [group["lr"] for group in groups]
        for group, tensor in zip(groups, self._lr_tensors):
            group["lr"] = tensor
        try:
            yield
        finally:
            for group, value in zip(groups, values):
                group["lr"] = value

    def _refresh_lr(self) -> None:
        """Copy each group's float learning rate into its tensor when it changed (a scheduler's step)."""
        if len(self.optimizer.param_groups) != len(self._lr_tensors):
            raise RuntimeError("CapturedStep: the optimizer's param groups changed after the step was built")
        for index, group in enumerate(self.optimizer.param_groups):
            value = float(group["lr"])
            if value != self._lr_values[index]:
                self._lr_tensors[index].fill_(value)  # a device write, queued before the next replay
                self._lr_values[index] = value
