"""The neuron speed benchmark: SpikingJelly's published experiment, runnable on any machine.

    python -m flashspike.benchmarks.neuron [--neuron if|lif|plif|eif] [--surrogate NAME] [--peers]
                                           [--t 8 16 32 64 128] [--dtypes float32 float16]

A ``MultiStepLIFNode(surrogate_function=surrogate.ATan(alpha=2.0))`` (``--neuron``: another neuron;
``--if`` is ``--neuron if``; ``--surrogate``: another surrogate with its defaults) runs
x of shape [T, N] in two modes: forward in eval mode under ``torch.no_grad()`` ("f"), and forward +
backward in train mode with ``y.sum().backward()`` ("fb"). Every backend in flashspike's registry
that can run on the device is measured (on a CPU only 'torch'); ``--peers`` adds SpikingJelly and
snnTorch when they are installed. Each time is the median over ``--repeats`` of the mean of a loop
of calls long enough to time (so a host-bound call shows its host cost).

Besides milliseconds, the table gives the speed-up over 'torch', the peak memory a call adds, and
the bandwidth achieved counting only the bytes the neuron must move (b bytes per element):
forward (2·T·N + N)·b (read X, write S and the last V); forward + backward (6·T·N + N)·b (the
forward also writes H for the backward, which reads dL/dS and H and writes dL/dX). That bandwidth is
also shown as a share of a device-to-device copy measured in the same run. The floors are the same for
every neuron: PLIF's ∂L/∂w is reduced from values the backward already holds, and EIF and PLIF rebuild
V[t−1] from the H they read anyway. A last table measures the host-bound case T=4, N=4096, forward +
backward, where the GPU work is microseconds, next to PyTorch's own floor for such a call (a
``torch.autograd.Function`` that only allocates its output and its gradient, plus the sum and the
backward): its column "x floor" is each subject's time over that floor's. There each backend also
has an "operator pair" row: its two custom operators (what a graph compiled by ``torch.compile``
calls, see :mod:`flashspike.backends.operators`) called forward then backward without autograd.

Results go to ``--out``: ``neuron_benchmark.json`` and the bar charts ``exe_time_f.png`` and
``exe_time_fb.png`` (matplotlib; skipped with a notice when it is missing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .. import __version__, backends, neuron, surrogate
from ..cuda_utils import median_seconds
from .charts import pyplot

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
HOST_CASE = (4, 4096)  # (T, N) of the host-bound case
SECONDS_PER_REPEAT = 0.005  # a timed loop runs at least this long, so launch jitter averages out


@dataclass
class Subject:
    """One thing measured: a label and a factory of fresh neurons ``node(x_seq) -> spike_seq``, or a
    call of its own (``own_call(mode, T, N, dtype, device) -> call``) for what is no such neuron."""

    label: str
    make: Callable[[], Callable] | None
    reset: Callable[[object], None] | None
    backend: str | None = None  # flashspike's backend, for its own subjects
    own_call: Callable | None = None


@dataclass(frozen=True)
class NeuronChoice:
    """A ``--neuron``: the class name (flashspike's and SpikingJelly's alike), its constructor keywords
    and a title for the report."""

    cls: str
    kwargs: dict
    title: str


NEURONS = {
    "if": NeuronChoice("MultiStepIFNode", {}, "MultiStepIFNode"),
    "lif": NeuronChoice("MultiStepLIFNode", {"tau": 2.0}, "MultiStepLIFNode(tau=2)"),
    "plif": NeuronChoice("MultiStepParametricLIFNode", {"init_tau": 2.0}, "MultiStepParametricLIFNode(init_tau=2)"),
    "eif": NeuronChoice("MultiStepEIFNode", {}, "MultiStepEIFNode(tau=2, delta_T=1, theta_rh=0.8)"),
}


# Every surrogate both flashspike and SpikingJelly define, by name.
SURROGATES = [name for name in surrogate.__all__ if isinstance(getattr(surrogate, name), type)
              and issubclass(getattr(surrogate, name), surrogate.SurrogateFunction)
              and getattr(surrogate, name) is not surrogate.SurrogateFunction]


def make_surrogate(module, name: str):
    """Surrogate ``name`` of ``module`` (flashspike's or SpikingJelly's) with its default hyper-parameters,
    as a spiking function."""
    return getattr(module, name)()


# ---- the subjects ----

def flashspike_subjects(args, device) -> tuple[list[Subject], dict]:
    """A subject per registered backend that runs on ``device``; the others with the reason why not."""
    choice = NEURONS[args.neuron]
    cls = getattr(neuron, choice.cls)
    subjects, skipped = [], {}
    probe = torch.zeros(1, 1, device=device)
    names = args.backends or [name for name in backends.KNOWN_BACKENDS if name != "auto"]
    for name in names:
        if device.type == "cpu" and name != "torch":
            skipped[name] = "kernel backends are measured on CUDA devices only"
            continue
        try:
            backends.get(name).check_input(probe)
        except (ImportError, backends.BackendError) as error:
            skipped[name] = str(error)
            continue
        subjects.append(Subject(
            f"flashspike {name}",
            lambda name=name: cls(surrogate_function=make_surrogate(surrogate, args.surrogate), backend=name,
                                  **choice.kwargs),
            lambda node: node.reset(),
            backend=name,
        ))
    return subjects, skipped


def operator_pair(subject: Subject) -> Subject:
    """What a compiled graph runs for one of flashspike's nodes, forward + backward: its two custom
    operators called one after the other, with no autograd around them (the compiler's wrappers
    excluded), so that their host cost shows next to the eager node's."""
    name = subject.backend

    def own_call(mode, steps, n, dtype, device):
        node = subject.make().to(device)
        p, w = node.params(), node._decay_w()
        options = p.text
        x = (torch.rand(steps, n, device=device) * 1.5).to(dtype)
        grad_spike = torch.ones_like(x)
        forward = torch.ops.flashspike.multi_step_forward.default
        backward = torch.ops.flashspike.multi_step_backward.default

        def call():
            with torch.no_grad():
                h = forward(x, None, w, True, False, name, options)[2]
                return backward(h, grad_spike, None, None, w, False, False, name, options)
        return call

    return Subject(f"flashspike {name} operator pair", None, None, backend=name, own_call=own_call)


def peer_subjects(args, device) -> tuple[list[Subject], dict]:
    """SpikingJelly (its 'torch' and, on CUDA, 'cupy' backends) and snnTorch, where importable."""
    subjects, skipped = [], {}
    try:
        import spikingjelly
        from spikingjelly.clock_driven import functional as sj_functional
        from spikingjelly.clock_driven import neuron as sj_neuron
        from spikingjelly.clock_driven import surrogate as sj_surrogate
    except ImportError as error:
        skipped["SpikingJelly"] = f"not importable ({error}); pip install spikingjelly==0.0.0.0.14"
    else:
        version = getattr(spikingjelly, "__version__", "0.0.0.0.14")
        choice = NEURONS[args.neuron]
        cls = getattr(sj_neuron, choice.cls)
        for backend in ("torch", "cupy") if device.type == "cuda" else ("torch",):
            subjects.append(Subject(
                f"SpikingJelly {version} {backend}",
                lambda backend=backend: cls(surrogate_function=make_surrogate(sj_surrogate, args.surrogate),
                                            backend=backend, **choice.kwargs),
                sj_functional.reset_net,
            ))
    if args.neuron not in ("if", "lif"):
        skipped["snnTorch"] = f"has no {NEURONS[args.neuron].cls} to compare"
        return subjects, skipped
    try:
        import snntorch
        from snntorch import surrogate as snn_surrogate
    except ImportError as error:
        skipped["snnTorch"] = f"not importable ({error}); pip install snntorch==1.0.0"
    else:
        beta = 1.0 if args.neuron == "if" else 0.5  # V decays by 1 - 1/tau per step for tau = 2

        class LeakyLoop(torch.nn.Module):
            """snnTorch's Leaky neuron stepped over T in Python, as its tutorials do."""

            def __init__(self):
                super().__init__()
                self.lif = snntorch.Leaky(beta=beta, spike_grad=snn_surrogate.atan(alpha=2.0))

            def forward(self, x_seq):
                mem = self.lif.init_leaky()
                spikes = []
                for x in x_seq:
                    spike, mem = self.lif(x, mem)
                    spikes.append(spike)
                return torch.stack(spikes)

        subjects.append(Subject(f"snnTorch {snntorch.__version__} Leaky loop", LeakyLoop, lambda node: None))
    return subjects, skipped


class _AllocateOnly(torch.autograd.Function):
    """The least an autograd node can do: allocate its output, and its input's gradient."""

    @staticmethod
    def forward(ctx, x):
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.empty_like(grad)


class PyTorchFloor(torch.nn.Module):
    """PyTorch's host floor for one differentiable call: :class:`_AllocateOnly`."""

    def forward(self, x):
        return _AllocateOnly.apply(x)


FLOOR = Subject("PyTorch floor (allocate only)", PyTorchFloor, lambda node: None)


def add_floor_ratios(rows: list[dict]) -> None:
    """Each row's time over the floor's in the same mode, dtype, T and N."""
    floor = {(r["mode"], r["dtype"], r["T"], r["N"]): r["ms"] for r in rows if r["subject"] == FLOOR.label and "ms" in r}
    for r in rows:
        floor_ms = floor.get((r["mode"], r["dtype"], r["T"], r["N"]))
        if "ms" in r and floor_ms:
            r["floor_ratio"] = r["ms"] / floor_ms


# ---- measuring ----

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(call: Callable[[], object], device, repeats: int) -> float:
    """Milliseconds per call: the median over ``repeats`` of a timed loop of calls."""
    for _ in range(3):  # warm-up: compilation, caches, the allocator
        call()
    _sync(device)
    start = time.perf_counter()
    call()
    _sync(device)
    single = time.perf_counter() - start
    inner = max(1, min(200, math.ceil(SECONDS_PER_REPEAT / max(single, 1e-7))))
    return median_seconds(call, device, repeats, inner) * 1e3


def peak_mib(call: Callable[[], object], device) -> float | None:
    """Memory one call adds at its peak, beyond what was allocated before it (CUDA only)."""
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    call()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def copy_bandwidth(device) -> float:
    """Bytes per second of a device-to-device copy (bytes read + bytes written)."""
    size = 2**30 if device.type == "cuda" else 2**27
    buffers = [torch.empty(size, dtype=torch.uint8, device=device) for _ in range(2)]
    ms = median_ms(lambda: buffers[1].copy_(buffers[0]), device, repeats=10)
    buffers.clear()  # 2 GiB back to the allocator before the neurons are measured
    return 2 * size / (ms * 1e-3)


def must_move_bytes(mode: str, steps: int, n: int, element_size: int) -> int:
    """The bytes the neuron cannot avoid moving (see the module docstring)."""
    per_step = 2 if mode == "f" else 6
    return (per_step * steps * n + n) * element_size


def make_call(subject: Subject, mode: str, steps: int, n: int, dtype, device):
    """A no-argument function running one call of ``subject`` in ``mode`` on fresh random input."""
    if subject.own_call is not None:
        return subject.own_call(mode, steps, n, dtype, device)
    node = subject.make().to(device)
    x = (torch.rand(steps, n, device=device) * 1.5).to(dtype)
    if mode == "f":
        node.eval()

        def call():
            subject.reset(node)
            with torch.no_grad():
                return node(x)
    else:
        node.train()
        x.requires_grad_()

        def call():
            subject.reset(node)
            x.grad = None  # as optimizer.zero_grad(): no accumulation kernel
            for parameter in node.parameters():  # PLIF's w
                parameter.grad = None
            node(x).sum().backward()
    return call


def measure(subject, mode, steps, n, dtype, device, repeats, copy_bps) -> dict:
    row = dict(subject=subject.label, mode=mode, dtype=str(dtype).replace("torch.", ""), T=steps, N=n)
    try:
        call = make_call(subject, mode, steps, n, dtype, device)
        row["ms"] = median_ms(call, device, repeats)
        row["peak_MiB"] = peak_mib(call, device)
    except Exception as error:  # a peer may not support a case (a dtype, its CuPy path): record why
        row["error"] = f"{type(error).__name__}: {error}"[:300]
        return row
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    bytes_moved = must_move_bytes(mode, steps, n, torch.empty((), dtype=dtype).element_size())
    row["GBps"] = bytes_moved / (row["ms"] * 1e-3) / 1e9
    row["copy_share"] = row["GBps"] * 1e9 / copy_bps
    return row


def add_speedups(rows: list[dict]) -> None:
    """Speed-up over flashspike 'torch' in the same mode, dtype, T and N."""
    base = {(r["mode"], r["dtype"], r["T"], r["N"]): r["ms"] for r in rows
            if r["subject"] == "flashspike torch" and "ms" in r}
    for r in rows:
        reference_ms = base.get((r["mode"], r["dtype"], r["T"], r["N"]))
        if "ms" in r and reference_ms:
            r["speedup"] = reference_ms / r["ms"]


# ---- reporting ----

def format_table(rows: list[dict]) -> str:
    floor = any("floor_ratio" in r for r in rows)  # the host-bound case: each time over PyTorch's floor
    header = f"{'mode':4} {'dtype':8} {'T':>4} {'subject':34} {'ms':>9} {'speedup':>8} {'GB/s':>8} {'copy%':>6} {'peak MiB':>9}"
    header += f" {'x floor':>8}" if floor else ""
    lines = [header, "-" * len(header)]
    for r in rows:
        head = f"{r['mode']:4} {r['dtype']:8} {r['T']:>4} {r['subject']:34}"
        if "error" in r:
            lines.append(f"{head} failed: {r['error'][:80]}")
            continue
        speedup = f"{r['speedup']:.1f}x" if "speedup" in r else "-"
        peak = "-" if r["peak_MiB"] is None else f"{r['peak_MiB']:.0f}"
        line = f"{head} {r['ms']:9.4f} {speedup:>8} {r['GBps']:8.1f} {100 * r['copy_share']:5.0f}% {peak:>9}"
        if floor:
            line += f" {r['floor_ratio']:7.2f}x" if "floor_ratio" in r else f" {'-':>8}"
        lines.append(line)
    return "\n".join(lines)


def plot(rows: list[dict], out: Path, title: str) -> list[str]:
    """Bar charts of ms per call against T, one bar per subject and dtype; returns the files written."""
    plt = pyplot()
    if plt is None:
        return []
    written = []
    for mode, name, what in (("f", "exe_time_f.png", "forward (eval, no_grad)"),
                             ("fb", "exe_time_fb.png", "forward + backward (y.sum().backward())")):
        chosen = [r for r in rows if r["mode"] == mode and "ms" in r]
        if not chosen:
            continue
        steps = sorted({r["T"] for r in chosen})
        series = list(dict.fromkeys((r["subject"], r["dtype"]) for r in chosen))
        subjects = list(dict.fromkeys(subject for subject, _ in series))
        dtypes = list(dict.fromkeys(dtype for _, dtype in series))
        width = 0.8 / len(series)
        fig, ax = plt.subplots(figsize=(max(8.0, 1.8 * len(steps)), 6.0))
        for k, (subject, dtype) in enumerate(series):
            ms = {r["T"]: r["ms"] for r in chosen if (r["subject"], r["dtype"]) == (subject, dtype)}
            xs = [i + (k - (len(series) - 1) / 2) * width for i, t in enumerate(steps) if t in ms]
            # a colour per subject, a hatch per dtype: every series stays distinguishable
            ax.bar(xs, [ms[t] for t in steps if t in ms], width, label=f"{subject} {dtype}",
                   color=plt.get_cmap("tab10")(subjects.index(subject) % 10),
                   hatch=("", "//", "..")[dtypes.index(dtype) % 3], edgecolor="white", linewidth=0.3)
        ax.set_xticks(range(len(steps)), [str(t) for t in steps])
        ax.set_xlabel("T (time steps)")
        ax.set_ylabel("ms per call (log scale)")
        ax.set_yscale("log")
        ax.set_title(f"{title}\n{what}", fontsize=9)
        ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.12))
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(name)
    return written


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


# ---- the command ----

def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(
        prog="python -m flashspike.benchmarks.neuron",
        description="Time multi-step neurons per backend (SpikingJelly's neuron speed experiment).",
    )
    parser.add_argument("--version", action="version", version=f"flashspike {__version__}")
    parser.add_argument("--neuron", choices=list(NEURONS), default="lif",
                        help="the neuron: " + ", ".join(f"{k} = {v.title}" for k, v in NEURONS.items())
                        + " (default lif); with --peers, SpikingJelly's class of the same name")
    parser.add_argument("--if", dest="neuron", action="store_const", const="if",
                        help="the same as --neuron if (MultiStepIFNode)")
    parser.add_argument("--surrogate", choices=SURROGATES, default="ATan",
                        help="the surrogate, with its default hyper-parameters (default ATan, alpha=2); with "
                        "--peers, SpikingJelly's of the same name")
    parser.add_argument("--n", type=int, default=2**20 if cuda else 2**12,
                        help="neurons per time step, N (default 2^20 on CUDA, 2^12 on a CPU)")
    parser.add_argument("--t", type=int, nargs="+", default=[8, 16, 32, 64, 128], metavar="T",
                        help="time steps to measure (default 8 16 32 64 128)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16"], choices=list(DTYPES),
                        help="input dtypes (default float32 float16)")
    parser.add_argument("--repeats", type=int, default=10, help="timed loops per case; the median is kept")
    parser.add_argument("--backends", nargs="+", choices=[b for b in backends.KNOWN_BACKENDS if b != "auto"],
                        help="flashspike backends to measure (default: every one that runs on the device)")
    parser.add_argument("--peers", action="store_true",
                        help="also measure SpikingJelly and snnTorch, where installed (never dependencies)")
    parser.add_argument("--no-host-case", action="store_true",
                        help=f"skip the host-bound case T={HOST_CASE[0]}, N={HOST_CASE[1]}")
    parser.add_argument("--device", default="cuda" if cuda else "cpu", help="torch device (default cuda if present)")
    parser.add_argument("--threads", type=int, default=0,
                        help="PyTorch's CPU threads (default 0: PyTorch's own choice, one per core); on a machine "
                             "whose cores other work shares, 1 can be faster")
    parser.add_argument("--out", type=Path, default=Path("bench_out"),
                        help="folder for neuron_benchmark.json and the charts (default bench_out)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeats < 1 or min(args.t) < 1:
        parser.error("--n, --repeats and every --t must be positive")
    if args.threads < 0:
        parser.error("--threads must be 0 (PyTorch's choice) or positive")
    return args


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    subjects, skipped = flashspike_subjects(args, device)
    if args.peers:
        peers, peers_skipped = peer_subjects(args, device)
        subjects += peers
        skipped.update(peers_skipped)
    copy_bps = copy_bandwidth(device)
    rows = []
    for mode in ("f", "fb"):
        for dtype_name in args.dtypes:
            for steps in args.t:
                for subject in subjects:
                    rows.append(measure(subject, mode, steps, args.n, DTYPES[dtype_name], device, args.repeats,
                                        copy_bps))
    host_rows = []
    if not args.no_host_case:
        steps, n = HOST_CASE
        pairs = [operator_pair(subject) for subject in subjects if subject.backend is not None]
        for subject in [FLOOR, *subjects, *pairs]:
            host_rows.append(measure(subject, "fb", steps, n, DTYPES[args.dtypes[0]], device, args.repeats,
                                     copy_bps))
    add_speedups(rows)
    add_speedups(host_rows)
    add_floor_ratios(host_rows)
    return dict(
        neuron=NEURONS[args.neuron].title,
        surrogate=repr(make_surrogate(surrogate, args.surrogate)),
        device=device_name(device),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        torch=torch.__version__,
        N=args.n,
        threads=torch.get_num_threads(),
        copy_GBps=copy_bps / 1e9,
        skipped=skipped,
        results=rows,
        host_case=host_rows,
    )


def main(argv=None) -> dict:
    args = parse_args(argv)
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "neuron_benchmark.json").write_text(json.dumps(report, indent=1))
    title = f"{report['neuron']}, {report['surrogate']}, N={args.n}, {report['device']}, {report['date'][:10]}"
    print(f"{title}; device-to-device copy {report['copy_GBps']:.0f} GB/s")
    for name, reason in report["skipped"].items():
        print(f"  not measured: {name}: {reason}")
    print(format_table(report["results"]))
    if report["host_case"]:
        print(f"\nhost-bound case: T={HOST_CASE[0]}, N={HOST_CASE[1]}, forward + backward")
        print(format_table(report["host_case"]))
    charts = plot(report["results"], args.out, title)
    print(f"\nwrote {args.out / 'neuron_benchmark.json'}" + "".join(f", {args.out / c}" for c in charts))
    return report


if __name__ == "__main__":
    main()
