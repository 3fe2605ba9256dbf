"""The example's command line: SpikingJelly's flags and this example's own, their checks, the log
folder's name, and the flags a resumed run takes from its checkpoint."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys

import torch

from .. import __version__, backends, compiling
from .trainer import UsageError

# The flags that define a run: a resumed run continues under the checkpoint's values of these.
RUN_FLAGS = ("T", "b", "opt", "lr", "momentum", "lr_scheduler", "step_size", "gamma", "T_max", "amp",
             "channels", "step_mode", "seed", "max_batches")
# A negative number (argparse reads it as a value), or -inf/-nan (argparse then says the flag before lacks
# its value, which is the right complaint).
_NUMBER = re.compile(r"^-(\.?\d|inf|nan)", re.I)


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


def build_parser(defaults: bool = True) -> argparse.ArgumentParser:
    """The command line; with ``defaults=False`` a flag left out is absent from the parsed namespace
    (how :func:`parse_args` tells the flags given from the defaults)."""
    parser = argparse.ArgumentParser(
        prog="python -m flashspike.examples.conv_fashion_mnist",
        allow_abbrev=False,
        description="Train SpikingJelly's convolutional SNN on Fashion-MNIST with flashspike neurons. "
        "Flags are SpikingJelly's (single dash; '-data-dir' works as '-data_dir'). Under torchrun every "
        "process trains on its shard of each batch order with DistributedDataParallel.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    def flag(name: str, **kwargs):
        names = [f"-{name}"] + ([f"-{name.replace('_', '-')}"] if "_" in name else [])
        if not defaults:
            kwargs["default"] = argparse.SUPPRESS
        parser.add_argument(*names, **kwargs)

    parser.add_argument("--version", action="version", version=f"flashspike {__version__}")
    default_device = "cuda:0" if torch.cuda.is_available() else "cpu"
    flag("T", type=int, default=4, help="time steps each image is shown for")
    flag("device", default=default_device, help="training device; under torchrun each process takes cuda:LOCAL_RANK")
    flag("b", type=int, default=128, help="batch size of each process")
    flag("epochs", type=int, default=64, help="number of training epochs")
    flag("j", type=int, default=4, help="ignored: the data set lives on the device, no loader workers are needed")
    flag("data_dir", default=None, help="directory of the four IDX files (gzipped or not); default: "
         "/usr/share/datasets/fashion-mnist when present, else ./data, downloaded when the network allows")
    flag("out_dir", default="./logs", help="where the run's log folder is made")
    flag("resume", default=None,
         help="a checkpoint_latest.pth to continue from, exactly, in its own folder and with the flags it was "
         "trained with (a flag given that differs from them is refused)")
    flag("overwrite", action="store_true",
         help="start over in a log folder that holds a run, removing that run's metrics, events and checkpoints")
    flag("amp", action="store_true", help="automatic mixed precision (float16 on CUDA, bfloat16 on CPU)")
    flag("cupy", action="store_true", help="short for -backend cupy")
    flag("opt", type=_choice(("SGD", "Adam")), default="SGD", help="optimizer: SGD or Adam (any case)")
    flag("lr", type=float, default=0.1, help="learning rate (above 0)")
    flag("momentum", type=float, default=0.9, help="SGD momentum (0 to 1)")
    flag("lr_scheduler", type=_choice(("CosALR", "StepLR")), default="CosALR",
         help="CosALR (cosine annealing over T_max epochs) or StepLR (any case)")
    flag("step_size", type=int, default=32, help="StepLR: epochs between decays")
    flag("gamma", type=float, default=0.1, help="StepLR: decay factor")
    flag("T_max", type=int, default=64, help="CosALR: epochs of one half cosine")
    flag("backend", choices=backends.KNOWN_BACKENDS, default="auto",
         help="multi-step neuron backend; 'auto' takes the fastest that runs on the device")
    flag("channels", type=int, default=128, help="channels of the convolutions")
    flag("step_mode", choices=("m", "s"), default="m",
         help="m: multi-step neurons over [T, N, ...]; s: single-step neurons in a Python loop over T (the baseline)")
    flag("memory_format", choices=("auto", "channels_last", "contiguous"), default="auto",
         help="layout of the convolution activations: auto is channels_last on CUDA (cuDNN's and max-pool's "
         "NHWC kernels, no layout conversions; the neurons read it in place) and contiguous elsewhere")
    flag("pool_bytes", choices=("on", "off"), default="on",
         help="on: the max-pools keep, for the backward, the position of each output's maximum in its window as one "
         "byte instead of an int64 index, with kernels faster than PyTorch's (flashspike.memory.pooling; CUDA, the "
         "same values); off: nn.MaxPool2d's own")
    flag("recompute_h", choices=("on", "off"), default="off",
         help="on: the BatchNorms' outputs are never written; each neuron fires from its BatchNorm's input, "
         "normalizing it as it loads it, and keeps no H for the backward (flashspike.memory.batchnorm_recompute; "
         "CUDA with Triton, or the CPU under Triton's interpreter; values up to the normalization's rounding); "
         "off: nn.BatchNorm2d's own")
    flag("seed", type=int, default=0, help="seed of the weights and of the batch order")
    flag("threads", type=int, default=0,
         help="CPU threads for PyTorch (default 0: PyTorch's own choice, one per core); on a machine whose cores "
              "other work shares, 1 can be faster")
    flag("max_batches", type=int, default=None,
         help="train and test on at most this many batches per epoch and process (quick checks)")
    flag("no_download", action="store_true", help="never download the data set")
    flag("allow_other_data", action="store_true",
         help="with -resume: continue on data other than the run's (a checkpoint records the folder and a "
         "fingerprint of the data it was trained on; a resumed run reads that folder unless -data_dir is given, "
         "and refuses other data without this flag)")
    flag("bench_steps", type=int, default=0,
         help="time this many training steps on a random batch already on the device, report the step time and "
         "the peak memory of those steps (after a warm-up), and exit (no data set needed)")
    flag("verbose", action="store_true",
         help="print the full flags and the network at start (a run's folder holds them as flags.json and model.txt)")
    flag("compile", nargs="?", const="auto", default=False, choices=("auto", *compiling.MODES),
         help="train through flashspike.compile(net, mode=MODE, fullgraph=True) (torch.compile with the "
         "setting deep conv SNNs need); the bare flag is 'auto': 'reduce-overhead' (CUDA graphs) on one CUDA "
         "device, else 'default'; epoch 0's times include compiling")
    flag("cuda_graph", nargs="?", const="on", default="auto", choices=("auto", "on", "off"),
         help="capture the whole training step (forward, backward, optimizer step, loss scaling) as a CUDA graph "
         "after 3 warm-up steps and replay it for every full batch: the same computation without the host's "
         "per-operation work; epoch 0's times include warm-up and capture; evaluation runs eagerly. Under torchrun "
         "each process captures its step with the gradients' all-reduce inside it (instead of "
         "DistributedDataParallel). 'on' (the bare flag) needs CUDA; 'auto' is 'on' for multi-step training on "
         "CUDA without -compile, else 'off'")
    return parser


def _refuse_unknown_flags(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """argparse reads '-bogus 1' as '-b ogus' (a short flag with its value attached); here every flag is
    written in full, so a token that names no flag is an error of its own."""
    known = set(parser._option_string_actions)
    for token in argv:
        if token == "--":
            return
        if token.startswith("-") and not _NUMBER.match(token) and token.split("=", 1)[0] not in known:
            parser.error(f"unrecognized flag {token} (flags are written in full, e.g. -b 64; see --help)")


def _check(args: argparse.Namespace, given: set[str]) -> None:
    """Refuse values no run can use; resolve -cupy and -cuda_graph auto."""
    if args.cupy:
        if "backend" in given and args.backend != "cupy":
            raise UsageError(f"-cupy means -backend cupy, but -backend {args.backend} was given too")
        args.backend = "cupy"
    for name in ("T", "b", "epochs", "channels", "T_max", "step_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"-{name} must be at least 1, got {getattr(args, name)}")
    if args.max_batches is not None and args.max_batches < 1:
        raise UsageError(f"-max_batches must be at least 1, got {args.max_batches}")
    if not -(2**63) <= args.seed < 2**64:
        raise UsageError(f"-seed must be a whole number from -2**63 to 2**64 - 1 (what torch.manual_seed takes), "
                         f"got {args.seed}")
    if args.threads < 0:
        raise UsageError(f"-threads must be 0 (PyTorch's choice) or more, got {args.threads}")
    if args.bench_steps < 0:
        raise UsageError(f"-bench_steps must be 0 (off) or more, got {args.bench_steps}")
    for name, low, high in (("lr", 0.0, math.inf), ("gamma", 0.0, math.inf), ("momentum", 0.0, 1.0)):
        value = getattr(args, name)
        inside = math.isfinite(value) and (low < value if name != "momentum" else low <= value) and value <= high
        if not inside:
            bounds = "from 0 to 1" if name == "momentum" else "above 0"
            raise UsageError(f"-{name} must be a finite number {bounds}, got {value}")
    if args.step_mode == "s" and args.backend not in ("auto", "torch"):
        raise UsageError(f"-backend {args.backend} applies to multi-step neurons; -step_mode s has none")
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if args.cuda_graph == "auto":
        capturable = args.device.startswith("cuda") and not args.compile and args.step_mode == "m"
        args.cuda_graph = "on" if capturable else "off"
    elif args.cuda_graph == "on" and args.compile:
        raise UsageError("-compile and -cuda_graph are alternatives: give one of them")
    args.cuda_graph = args.cuda_graph == "on"  # from here on, whether the step is captured
    if args.compile == "auto":
        one_gpu = args.device.startswith("cuda") and processes == 1
        args.compile = "reduce-overhead" if one_gpu else "default"


def parse_args(argv=None, resumed_flags: dict | None = None) -> argparse.Namespace:
    """The checked flags. ``resumed_flags``: the flags a checkpoint was trained with; the run flags left
    out take their values, and one given with another value is refused."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    _refuse_unknown_flags(parser, argv)
    args = parser.parse_args(argv)
    given = set(vars(build_parser(defaults=False).parse_args(argv)))
    if resumed_flags is not None:
        differ = [f"-{name} {resumed_flags.get(name)} (given: {getattr(args, name)})" for name in RUN_FLAGS
                  if name in given and resumed_flags.get(name) != getattr(args, name)]
        if differ:
            raise UsageError(f"-resume {args.resume}: the run was trained with " + ", ".join(differ) +
                             "; a resumed run continues under its own flags: leave these out, or start a new "
                             "run without -resume")
        for name in RUN_FLAGS:
            if name in resumed_flags:
                setattr(args, name, resumed_flags[name])
    _check(args, given)
    return args


def as_typed(args, names) -> str:
    """The flags ``names`` as they would be typed: a switch only when on, nothing for a value never set
    (``-amp -channels 4``, not ``-amp True -max_batches None``)."""
    words = []
    for name in names:
        value = getattr(args, name)
        if value is None or value is False:
            continue
        words.append(f"-{name}" if value is True else f"-{name} {value}")
    return " ".join(words)


def run_name(args) -> str:
    """The log folder's name: SpikingJelly's, plus what this example adds."""
    name = f"T_{args.T}_b_{args.b}_{args.opt}_lr_{args.lr}_"
    if args.lr_scheduler == "CosALR":
        name += f"CosALR_{args.T_max}"
    else:
        name += f"StepLR_{args.step_size}_{args.gamma}"
    if args.amp:
        name += "_amp"
    if args.backend != "auto":
        name += f"_{args.backend}"
    if args.channels != 128:
        name += f"_c{args.channels}"
    if args.step_mode == "s":
        name += "_s"
    if args.compile:
        name += "_compile"
    # (Not -cuda_graph: a captured step computes exactly what the eager one does.)
    return name
