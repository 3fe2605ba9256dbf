"""One row of the training benchmark, run in a process of its own: build the model, time its steps.

    python -m flashspike.benchmarks.train_worker '<row spec as JSON>'

It prints one line ``ROW <json>`` with the measured row. A fresh process per row means the peak
memory is counted from process start (a ``reduce-overhead`` graph pool included), a crash or a
compiler cache never leaks into the next row, and the two SpikingJelly versions (both the package
``spikingjelly``) each get the process whose PYTHONPATH puts theirs first.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import compiling
from ..captured import CapturedStep
from ..cluster import Cluster, leave_process_group
from ..cuda_utils import median_seconds
from . import peak_memory

INPUTS = {  # name -> (channels, height, width, num_classes)
    "cifar": (3, 32, 32, 10),
    "imagenet": (3, 224, 224, 1000),
    "dvs": (2, 128, 128, 11),
}
MARKER = "ROW "
BATCH_POOL = 2  # distinct synthetic batches the steps cycle through
# The transformer models' arguments (a row's spec carries them as "model_config"): the papers'
# CIFAR-10 configurations, each with its default neurons (LIF, sigmoid surrogate), built by flashspike's
# classes and by SpikingJelly 2.x's of the same name. They train with AdamW, as in their papers.
TRANSFORMER_CONFIGS = {
    "spikformer": dict(img_size_h=32, img_size_w=32, patch_size=4, embed_dims=384, num_heads=12, mlp_ratio=4.0,
                       depths=4),  # spikformer_cifar10's
    "spike_driven_transformer": dict(embed_dims=512, num_heads=8, mlp_ratio=4.0, depths=2, pooling_stat="0011"),
}
TRANSFORMERS = tuple(TRANSFORMER_CONFIGS)


def adapt_stem(model: nn.Module, channels: int) -> None:
    """Give the first convolution ``channels`` input channels (the zoo's stems take 3; DVS events 2).

    The first is the first registered, depth first: a stem nested in a stage comes before a later
    convolution held by the stage's parent (the Spike-Driven Transformer's position encoding)."""
    name, stem = next((name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d))
    if stem.in_channels == channels:
        return
    # the same class (SpikingJelly 2.x's own Conv2d keeps its step mode), fresh weights
    adapted = type(stem)(channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding,
                         bias=stem.bias is not None)
    if hasattr(stem, "step_mode"):
        adapted.step_mode = stem.step_mode
    parent, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent), attribute, adapted)


def build_flashspike(spec, num_classes):
    from .. import neuron, surrogate
    from ..model import sew_resnet, spike_driven_transformer, spikformer, spiking_vgg
    from ..model.csnn import CSNN

    if spec["model"] in TRANSFORMERS:
        transformer = {"spikformer": spikformer.Spikformer,
                       "spike_driven_transformer": spike_driven_transformer.SpikeDrivenTransformer}[spec["model"]]
        return transformer(T=spec["T"], num_classes=num_classes, **spec["model_config"], backend=spec["backend"])
    node = dict(multi_step_neuron=neuron.MultiStepIFNode, surrogate_function=surrogate.ATan(), detach_reset=True,
                backend=spec["backend"])
    if spec["model"] == "fmnist":
        memory_format = torch.channels_last if spec["memory_format"] == "channels_last" else torch.contiguous_format
        return CSNN(spec["T"], backend=spec["backend"], memory_format=memory_format)
    if spec["model"] == "sew_resnet18":
        return sew_resnet.multi_step_sew_resnet18(num_classes=num_classes, cnf="ADD", **node)
    return spiking_vgg.multi_step_spiking_vgg11_bn(num_classes=num_classes, **node)


def build_sj014(spec, num_classes):
    import spikingjelly
    from spikingjelly.clock_driven import neuron, surrogate

    version = getattr(spikingjelly, "__version__", "0.0.0.0.14")
    from spikingjelly.clock_driven.model import sew_resnet, spiking_vgg

    backend = "cupy" if spec["device"].startswith("cuda") else "torch"
    node = dict(multi_step_neuron=neuron.MultiStepIFNode, surrogate_function=surrogate.ATan(), detach_reset=True,
                backend=backend)
    if spec["model"] == "sew_resnet18":
        model = sew_resnet.multi_step_sew_resnet18(num_classes=num_classes, cnf="ADD", **node)
    else:
        model = spiking_vgg.multi_step_spiking_vgg11_bn(num_classes=num_classes, **node)
    return model, f"SpikingJelly {version} {backend}"


def build_sj2(spec, num_classes):
    import importlib.metadata

    from spikingjelly.activation_based import functional, neuron, surrogate
    from spikingjelly.activation_based.model import sew_resnet, spiking_vgg

    node = dict(spiking_neuron=neuron.IFNode, surrogate_function=surrogate.ATan(), detach_reset=True)
    if spec["model"] in TRANSFORMERS:
        from spikingjelly.activation_based.model import spike_driven_transformer, spikformer

        transformer = {"spikformer": spikformer.Spikformer,
                       "spike_driven_transformer": spike_driven_transformer.SpikeDrivenTransformer}[spec["model"]]
        model = transformer(T=spec["T"], num_classes=num_classes, **spec["model_config"])
    elif spec["model"] == "sew_resnet18":
        model = sew_resnet.sew_resnet18(num_classes=num_classes, cnf="ADD", **node)
    else:
        model = spiking_vgg.spiking_vgg11_bn(num_classes=num_classes, **node)
    functional.set_step_mode(model, "m")
    return model, f"SpikingJelly {importlib.metadata.version('spikingjelly')}"


def check_peer_version(subject: str) -> None:
    """The ``spikingjelly`` this process found must be the peer's version: name the path flag otherwise."""
    import importlib.util

    import spikingjelly

    has_014 = importlib.util.find_spec("spikingjelly.clock_driven") is not None
    if subject == "sj014" and not has_014:
        raise ImportError(f"the spikingjelly at {spikingjelly.__path__[0]} has no clock_driven API (not "
                          "0.0.0.0.14); give --sj014-path")
    if subject == "sj2" and has_014:
        raise ImportError(f"the spikingjelly at {spikingjelly.__path__[0]} is 0.0.0.0.14, not 2.x; give --sj2-path")


def make_batches(spec, device, memory_format):
    """``BATCH_POOL`` random batches: ``[T, B, C, H, W]`` (the fmnist net: static ``[B, 1, 28, 28]``)."""
    T, B = spec["T"], spec["B"]
    channels, height, width, num_classes = (1, 28, 28, 10) if spec["model"] == "fmnist" else INPUTS[spec["input"]]
    batches = []
    for _ in range(BATCH_POOL):
        if spec["model"] == "fmnist":
            x = torch.rand(B, 1, 28, 28, device=device)
        elif memory_format == torch.channels_last:
            # [T, B, H, W, C] seen as [T, B, C, H, W]: flattened over T·B it is a channels-last batch
            x = torch.rand(T, B, height, width, channels, device=device).permute(0, 1, 4, 2, 3)
        else:
            x = torch.rand(T, B, channels, height, width, device=device)
        batches.append((x, torch.randint(0, num_classes, (B,), device=device)))
    return batches, num_classes, channels


class MemorySwitch(NamedTuple):
    """One of flashspike's ways of keeping less for the backward, turned on for flashspike rows by the
    benchmark flag named after its key (``--spike-bits`` for "spike_bits"; ``--no-...`` turns it off)."""

    label: str  # added to a row's subject where it switched layers
    module: str
    function: str  # switches a model's layers
    help: str
    # True: on unless turned off (exact, and no slower); "captured": so in the captured rows on CUDA only
    default: bool | str = False
    cuda_only: bool = False  # its kernels run on CUDA only (elsewhere the layers take their ordinary path)
    options: tuple = ()  # (name, value) pairs the function takes beside the model

    def switches(self, wanted: bool | None, cuda: bool, captured: bool = False) -> bool:
        """Whether a row on CUDA (``cuda``) or not, of the captured mode (``captured``) or not, switches its
        layers: ``wanted`` as the flags set it, None where no flag did (the switch's default for the row)."""
        if wanted is None:
            wanted = self.default is True or (self.default == "captured" and cuda and captured)
        return bool(wanted) and (cuda or not self.cuda_only)


MEMORY_SWITCHES = {
    "spike_bits": MemorySwitch(
        "spike bits", "flashspike.memory.spike_bits", "store_spike_inputs_in_bits",
        "flashspike rows keep spike inputs of convolutions and linear layers in one bit, and sums of spikes in a "
        "few, for the backward (flashspike.memory.spike_bits; eager and captured steps; on by default in captured "
        "CUDA rows, where it costs the step under 5 percent, off by default in the others, whose host time its kernels' "
        "launches add to)",
        default="captured"),
    "pool_bytes": MemorySwitch(
        "pool bytes", "flashspike.memory.pooling", "store_pool_indices_in_bytes",
        "flashspike rows' max-pools keep one byte per output for the backward instead of an int64 index, with "
        "kernels faster than PyTorch's max-pool (flashspike.memory.pooling; eager and captured steps on CUDA)",
        default=True, cuda_only=True),
    "recompute_h": MemorySwitch(
        "H recomputed", "flashspike.memory.batchnorm_recompute", "recompute_h_after_batchnorm",
        "flashspike rows' neurons after a BatchNorm keep no H: their backward computes it again from the "
        "BatchNorm's kept input (flashspike.memory.batchnorm_recompute; eager and captured steps; on by default "
        "in captured CUDA rows, where the switched BatchNorm's Triton kernels make the step no slower; off by "
        "default in the others, whose host time each of those kernels' launches adds to)",
        default="captured"),
    "recompute_stem": MemorySwitch(
        "stem recomputed", "flashspike.memory.conv_recompute", "recompute_convolution_outputs",
        "flashspike rows' first convolution (the stem) keeps no output for the backward: the backward computes it "
        "again from the image, once for its BatchNorm and neuron together (flashspike.memory.conv_recompute; it "
        "pays with --recompute-h, where that output is the only activation of the stem kept; off by default)",
        options=(("first_only", True),)),
}


def make_optimizer(model_name: str, parameters, cuda: bool) -> torch.optim.Optimizer:
    """AdamW for the transformers, SGD with momentum for the others; fused on CUDA. A captured step
    needs its state on the device: fused SGD keeps it there; Adam and AdamW also need ``capturable``
    (their ``step()`` refuses a CUDA graph capture without it)."""
    if model_name in TRANSFORMERS:
        on_device = {"fused": True, "capturable": True} if cuda else {}
        return torch.optim.AdamW(parameters, lr=5e-4, weight_decay=0.06, **on_device)
    return torch.optim.SGD(parameters, lr=0.01, momentum=0.9, **({"fused": True} if cuda else {}))


def class_scores(out: torch.Tensor) -> torch.Tensor:
    """A model's output as ``[B, classes]`` scores: the mean over time of ``[T, B, classes]``; a model
    that averages over time itself (the Spike-Driven Transformer) gives ``[B, classes]`` already."""
    return out.float().mean(0) if out.dim() == 3 else out.float()


def run_row(spec: dict) -> dict:
    # Under torchrun: the process group (NCCL on CUDA, Gloo on the CPU), cuda:LOCAL_RANK each.
    cluster = Cluster(spec["device"])
    device, world = cluster.device, cluster.world
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    recording = cuda and spec.get("peak_allocations", 0) > 0
    if recording:  # every allocation from here on, the model's weights included
        peak_memory.start_recording()
    # Fixed shapes: with benchmark on, cuDNN times its algorithms at the first step (warm-up) and keeps
    # the fastest; its default heuristics pick a weight-gradient kernel several times slower for some
    # of these layers (the Fashion-MNIST net's, in float16).
    torch.backends.cudnn.benchmark = spec.get("cudnn_benchmark", True)
    memory_format = torch.channels_last if spec["memory_format"] == "channels_last" else torch.contiguous_format
    batches, num_classes, channels = make_batches(spec, device, memory_format)
    amp_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(spec["dtype"])
    row = {}
    if spec["subject"] == "flashspike":
        model = build_flashspike(spec, num_classes)
        from .. import backends

        probe = torch.zeros(spec["T"], 1, device=device, dtype=amp_dtype or torch.float32)
        row["subject"] = f"flashspike {backends.resolve(spec['backend'], probe).name}"  # 'auto' resolved
    else:
        check_peer_version(spec["subject"])
        model, row["subject"] = (build_sj014 if spec["subject"] == "sj014" else build_sj2)(spec, num_classes)
    if spec["model"] != "fmnist":
        adapt_stem(model, channels)
    if spec["subject"] == "flashspike":
        for key, switch in MEMORY_SWITCHES.items():
            if switch.switches(spec.get(key, False), cuda, spec["mode"] == "captured"):
                switch_layers = getattr(importlib.import_module(switch.module), switch.function)
                row[f"{key}_layers"] = switch_layers(model, **dict(switch.options))
                if row[f"{key}_layers"]:
                    row["subject"] += ", " + switch.label
    model = model.to(device, memory_format=memory_format).train()
    net = model
    captured = spec["mode"] == "captured"
    if world > 1:
        row["processes"] = world
        # A captured step averages the gradients itself, inside its graph (CapturedStep(distributed=True));
        # the other modes use DDP. The neurons' state is plain attributes: no buffer of theirs is sent.
        if not captured:
            model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    if spec["mode"] in ("compile", "reduce-overhead", "max-autotune-no-cudagraphs"):
        mode = "default" if spec["mode"] == "compile" else spec["mode"]
        if spec["layout_optimization"]:  # Inductor's own default
            model = torch.compile(model, mode=mode)
        else:
            model = compiling.compile(model, mode=mode)
    optimizer = make_optimizer(spec["model"], net.parameters(), cuda)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if spec["model"] == "fmnist":  # the example's loss: firing rates against one-hot targets
        def loss_fn(out, labels):
            return F.mse_loss(out.float(), F.one_hot(labels, num_classes).float())
    else:
        def loss_fn(out, labels):
            return F.cross_entropy(class_scores(out), labels)
    # Forward, loss, reset_net, backward, optimizer step: replayed from one CUDA graph in the captured mode.
    step = CapturedStep(model, loss_fn, optimizer, scaler, autocast_dtype=amp_dtype, capture=captured,
                        warmup_steps=3, distributed=captured and world > 1)
    mark_step = spec["mode"] == "reduce-overhead"
    counter = iter(range(1 << 62))

    def call():
        if mark_step:  # the compiler's CUDA graphs: the last step's outputs have been consumed
            torch.compiler.cudagraph_mark_step_begin()
        return step(*batches[next(counter) % BATCH_POOL])

    started = time.perf_counter()
    call()
    first_peak = 0
    if cuda:
        # The first step's peak (cuDNN's algorithm search, compilation, first-time allocations) is the
        # process's; every later step gets a peak of its own. A capture comes later: a replay allocates
        # nothing, so the steady peak of a captured row is its capture's, which allocates as a step does.
        torch.cuda.synchronize(device)
        first_peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    steady_from = peak_memory.events_so_far(device) if recording else 0
    for _ in range(max(spec["warmup"], 5 if captured else 1) - 1):
        call()
    if cuda:
        torch.cuda.synchronize(device)
    row["warmup_s"] = time.perf_counter() - started  # compilation and capture included
    row["ms"] = median_seconds(call, device, spec["repeats"], spec["steps"]) * 1e3
    if not cuda:
        row["threads"] = torch.get_num_threads()  # a CPU row's time depends on it
    row["images_per_s"] = spec["B"] * world / (row["ms"] * 1e-3)  # B per process
    if spec["epoch_steps"]:
        if cuda:
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        total = torch.zeros((), device=device)
        for _ in range(spec["epoch_steps"]):
            total += call()
        total.item()  # the epoch ends when its last loss is on the host
        row["epoch_s"] = time.perf_counter() - started
    if cuda:
        steady_peak = torch.cuda.max_memory_allocated(device)
        row["peak_MiB"], row["steady_peak_MiB"] = max(first_peak, steady_peak) / 2**20, steady_peak / 2**20
    else:
        row["peak_MiB"] = row["steady_peak_MiB"] = None
    if recording:
        row["peak_allocations"] = peak_memory.summarize(peak_memory.stop_recording(device), steady_from,
                                                        spec["peak_allocations"])
    if spec.get("profile"):
        from .profile import TOP, profile_steps

        row["profile"] = profile_steps(call, device, spec["profile"], spec.get("profile_names", TOP))
    if spec["mode"] == "eager":
        row["kept_MiB"] = kept_for_backward(call, net.parameters()) / 2**20
    return row


def kept_for_backward(call, parameters) -> int:
    """Bytes that autograd keeps for the backward of one step ``call()``: every storage a saved
    tensor lives in, counted once, parameters (which live anyway) not. It needs no device allocator's
    statistics, so it is measured on the CPU too (where a layer's CUDA-only path, the byte max-pool
    for one, takes its ordinary path and keeps what that keeps)."""
    skip = {p.untyped_storage().data_ptr() for p in parameters}
    kept = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        call()
    return sum(kept.values())


def main(argv=None) -> None:
    spec = json.loads((argv or sys.argv[1:])[0])
    try:
        row = run_row(spec)
    except Exception as error:  # recorded in the row: a failing case never stops the run
        row = {"error": f"{type(error).__name__}: {error}"[:500]}
    finally:
        leave_process_group()
    if int(os.environ.get("RANK", "0")) == 0:  # one row per run, from the first process
        print(MARKER + json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
