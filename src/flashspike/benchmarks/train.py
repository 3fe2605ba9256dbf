"""The deep-SNN training benchmark: one training step and one synthetic epoch of zoo models.

    python -m flashspike.benchmarks.train [--models sew_resnet18] [--input cifar] [--t 4 16] [--b 64] [--peers]

A step is forward, loss, backward and an optimizer step (fp16 autocast with loss scaling by default):
SGD with momentum 0.9, AdamW for the transformers. Models: ``sew_resnet18`` (multi-step SEW-ResNet-18,
cnf ADD, MultiStepIFNode, ATan, detach_reset=True), ``spiking_vgg11_bn`` (multi-step, same neuron),
``fmnist`` (the Fashion-MNIST example's network, ``flashspike.model.csnn.CSNN``, which takes the static
image ``[B, 1, 28, 28]`` and repeats it over T inside), and two transformers in their papers' CIFAR-10
configurations with their default LIF neurons: ``spikformer`` (384 wide, 4 blocks, 12 heads, 4x4
patches; ``[T, B, classes]`` out) and ``spike_driven_transformer`` (512 wide, 2 blocks, 8 heads, stem
pools 0011; ``[B, classes]`` out). Modes: ``eager``, ``compile`` (``torch.compile`` default),
``reduce-overhead`` and ``captured`` (the whole step in one CUDA graph, as the example's
``-cuda_graph``).

Every row runs in a fresh subprocess (``train_worker``): peak memory is ``max_memory_allocated``
from process start, so a ``reduce-overhead`` graph pool, the warm-up and cuDNN's algorithm search
are all counted; "steady MiB" is the peak of every step after the first (the memory training needs
once cuDNN has chosen its algorithms: a captured row's is its capture's, which allocates what a step
does, since a replay allocates nothing). Eager rows also report "kept MiB": what autograd keeps for the backward of one step
(every storage a saved tensor lives in, once; parameters not), counted without the device allocator,
so a CPU run measures it too. A failing or crashing row is recorded with its error and the run goes
on. The time is the median over ``--repeats`` loops of ``--steps`` steps after ``--warmup`` steps
(CUDA events). cuDNN's autotuning (``torch.backends.cudnn.benchmark``) is on in every row unless
``--no-cudnn-benchmark``. ``--spike-bits``, ``--pool-bytes`` and ``--recompute-h`` switch flashspike
rows' layers to the versions that keep less for the backward; pool bytes (CUDA only), spike bits and
recomputed H (these two in captured CUDA rows: in an eager step their kernels' launches cost host time)
are on unless ``--no-pool-bytes`` / ``--no-spike-bits`` / ``--no-recompute-h``; ``--recompute-stem`` (off
unless given) makes the backward compute the first convolution's output again instead of keeping it.
A host-bound step's time follows the host's speed, which can drift between processes: ``--rounds K``
runs all rows K times, round after round, and keeps each row's median. ``--profile K`` then runs K
more steps of each row under ``torch.profiler`` and prints where the time goes, by kind of work, then
K more under cProfile for the host's share (:mod:`.profile`). ``--peak-allocations K`` records every allocation of each CUDA row and
prints what was alive at its peaks, by the code that allocated it (:mod:`.peak_memory`).

``--peers`` adds SpikingJelly 0.0.0.0.14 (its clock_driven zoo, ``MultiStepIFNode(backend='cupy')``,
eager) and SpikingJelly 2.x (its activation_based zoo in multi-step mode, its own neuron kernels; eager
and reduce-overhead; its own ``spikformer`` and ``spike_driven_transformer`` models too, which
0.0.0.0.14 lacks), each in a subprocess whose PYTHONPATH puts ``--sj014-path`` / ``--sj2-path`` first.
Results: a markdown table, ``train_benchmark.json`` and ``train_step.png`` in ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from .. import __version__, backends
from .charts import pyplot
from .neuron import device_name
from .peak_memory import format_peak_allocations
from .profile import TOP, format_profile
from .train_worker import INPUTS, MARKER, MEMORY_SWITCHES, TRANSFORMER_CONFIGS, TRANSFORMERS

MODELS = ("sew_resnet18", "spiking_vgg11_bn", "fmnist", *TRANSFORMERS)
MODES = ("eager", "compile", "reduce-overhead", "max-autotune-no-cudagraphs", "captured")
CUDA_ONLY_MODES = ("reduce-overhead", "captured")
COMPILED_MODES = ("compile", "reduce-overhead", "max-autotune-no-cudagraphs")
PEER_MODES = {"sj014": ("eager",), "sj2": ("eager", "reduce-overhead")}
PEER_MODELS = {"sj014": ("sew_resnet18", "spiking_vgg11_bn"),
               "sj2": ("sew_resnet18", "spiking_vgg11_bn", *TRANSFORMERS)}
PEER_NAMES = {"sj014": "SpikingJelly 0.0.0.0.14", "sj2": "SpikingJelly 2.x"}
SRC_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding the flashspike package


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="python -m flashspike.benchmarks.train",
                                     description="Time a training step and a synthetic epoch of deep SNNs.")
    parser.add_argument("--version", action="version", version=f"flashspike {__version__}")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["sew_resnet18"],
                        help="models to train (default sew_resnet18); fmnist ignores --input; spikformer and "
                             "spike_driven_transformer are CIFAR-10 configurations (trained with AdamW)")
    parser.add_argument("--input", choices=list(INPUTS), default="cifar",
                        help="input shape: cifar [T,B,3,32,32] 10 classes, imagenet [T,B,3,224,224] 1000, "
                             "dvs [T,B,2,128,128] 11 (default cifar)")
    parser.add_argument("--t", type=positive, nargs="+", default=[4], metavar="T", help="time steps (default 4)")
    parser.add_argument("--b", type=positive, default=64, help="batch size (default 64)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="eager, compile, reduce-overhead, captured (default all; the last two need CUDA)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float16",
                        help="autocast dtype; float32 turns autocast off (default float16, with loss scaling)")
    parser.add_argument("--backend", choices=backends.KNOWN_BACKENDS, default="auto",
                        help="flashspike's neuron backend (default auto)")
    parser.add_argument("--memory-format", choices=["auto", "channels_last", "contiguous"], default="auto",
                        help="layout of the weights and of the input flattened over T·B; auto: channels_last for eager "
                             "and captured rows, contiguous for compiled ones (torch 2.11's Inductor mispredicts "
                             "channels_last weights' gradients, see flashspike.compile) (default auto)")
    parser.add_argument("--warmup", type=positive, default=5,
                        help="steps before timing: compilation and capture happen here (default 5)")
    parser.add_argument("--steps", type=positive, default=20, help="steps per timed loop (default 20)")
    parser.add_argument("--repeats", type=positive, default=3, help="timed loops; the median is kept (default 3)")
    parser.add_argument("--epoch-steps", type=int, default=0, metavar="K",
                        help="also time an epoch of K steps on synthetic batches, to the last loss on the host "
                             "(default 0: not measured)")
    parser.add_argument("--peak-allocations", type=int, default=0, metavar="K",
                        help="record every allocation of each CUDA row (torch.cuda.memory's history, with Python "
                             "stacks) and print, at its peak from process start and at its peak from the second "
                             "step on, the K largest groups of live memory by the code that allocated it "
                             "(flashspike.benchmarks.peak_memory; the row's times then include the recording) "
                             "(default 0: not recorded)")
    parser.add_argument("--profile", type=int, default=0, metavar="K",
                        help="after timing, run K more steps under torch.profiler and print where the time goes, by "
                             "kind of work: kernel time on CUDA (captured graphs' kernels included), operator time "
                             "on the CPU; then K more under cProfile: the host's wall time per step and its costliest "
                             "Python functions (default 0: not profiled)")
    parser.add_argument("--profile-names", type=positive, default=TOP, metavar="N",
                        help="with --profile, the N costliest kernel (or operator) names of each kind of work, each "
                             f"with its launches per step (default {TOP})")
    parser.add_argument("--nproc", type=positive, default=1,
                        help="processes per row, launched by torchrun, training one model data-parallel (one GPU each "
                             "on CUDA, Gloo on the CPU): DistributedDataParallel, or in the captured mode "
                             "CapturedStep(distributed=True) with the all-reduce inside each graph; --b is the batch "
                             "of each process, images/s counts all (default 1)")
    for key, switch in MEMORY_SWITCHES.items():
        # (None: no flag given, the switch's default for each row's device and mode; see MemorySwitch.switches)
        parser.add_argument("--" + key.replace("_", "-"), action=argparse.BooleanOptionalAction,
                            default=switch.default if isinstance(switch.default, bool) else None, help=switch.help)
    parser.add_argument("--no-cudnn-benchmark", dest="cudnn_benchmark", action="store_false",
                        help="leave torch.backends.cudnn.benchmark off; by default every row turns it on (the shapes "
                             "are fixed, so cuDNN times its algorithms once and keeps the fastest, as the example does)")
    parser.add_argument("--layout-optimization", action="store_true",
                        help="compile with plain torch.compile (Inductor's layout optimization on) instead of "
                             "flashspike.compile")
    parser.add_argument("--peers", action="store_true",
                        help="also measure SpikingJelly 0.0.0.0.14 and 2.x (sew_resnet18, spiking_vgg11_bn; 2.x also "
                             "spikformer and spike_driven_transformer)")
    parser.add_argument("--sj014-path", type=Path,
                        help="folder holding SpikingJelly 0.0.0.0.14's spikingjelly package (default: the installed one)")
    parser.add_argument("--sj2-path", type=Path,
                        help="folder holding SpikingJelly 2.x's spikingjelly package (default: the installed one)")
    parser.add_argument("--rounds", type=positive, default=1,
                        help="run every row this many times, one round of all rows after another, and keep each "
                             "row's median: a host whose speed drifts then touches every mode alike (default 1)")
    parser.add_argument("--row-timeout", type=positive, default=900, help="seconds a row may take (default 900)")
    parser.add_argument("--device", default="cuda" if cuda else "cpu", help="torch device (default cuda if present)")
    parser.add_argument("--threads", type=int, default=0,
                        help="PyTorch's CPU threads in each row's process (default 0: PyTorch's own choice, one per "
                             "core); on a machine whose cores other work shares, 1 can be faster")
    parser.add_argument("--out", type=Path, default=Path("bench_out"),
                        help="folder for train_benchmark.json and train_step.png (default bench_out)")
    args = parser.parse_args(argv)
    if args.epoch_steps < 0:
        parser.error("--epoch-steps must be 0 or positive")
    if args.profile < 0:
        parser.error("--profile must be 0 or positive")
    if args.peak_allocations < 0:
        parser.error("--peak-allocations must be 0 or positive")
    if args.threads < 0:
        parser.error("--threads must be 0 (PyTorch's choice) or positive")
    return args


# ---- the rows ----

def row_memory_format(requested: str, mode: str) -> str:
    if requested != "auto":
        return requested
    return "contiguous" if mode in COMPILED_MODES else "channels_last"


def memory_switches(args) -> dict:
    """Which of flashspike's memory switches (:data:`.train_worker.MEMORY_SWITCHES`) the flags turn on."""
    return {key: getattr(args, key) for key in MEMORY_SWITCHES}


def row_specs(args) -> tuple[list[dict], dict]:
    """Every row to run, and the peers not run with the reason why."""
    subjects, skipped = [("flashspike", None)], {}
    if args.peers:
        for subject, path in (("sj014", args.sj014_path), ("sj2", args.sj2_path)):
            name = PEER_NAMES[subject]
            if path is not None and not (path / "spikingjelly").is_dir():
                skipped[name] = f"no spikingjelly package under {path}"
                continue
            subjects.append((subject, path))
            for model in (m for m in args.models if m not in PEER_MODELS[subject]):
                skipped[f"{name} {model}"] = ("the Fashion-MNIST example's net is flashspike's own" if model == "fmnist"
                                              else f"{name}'s model zoo has no {model}")
    base = dict(B=args.b, dtype=args.dtype, backend=args.backend, memory_format=args.memory_format,
                warmup=args.warmup, steps=args.steps, repeats=args.repeats, epoch_steps=args.epoch_steps,
                profile=args.profile, profile_names=args.profile_names, peak_allocations=args.peak_allocations,
                device=args.device, layout_optimization=args.layout_optimization, cudnn_benchmark=args.cudnn_benchmark,
                nproc=args.nproc, threads=args.threads, **memory_switches(args))
    specs = []
    for model in args.models:
        for steps in args.t:
            for mode in args.modes:
                for subject, path in subjects:
                    if subject != "flashspike" and (model not in PEER_MODELS[subject]
                                                    or mode not in PEER_MODES[subject]):
                        continue
                    specs.append(dict(base, subject=subject, path=None if path is None else str(path), model=model,
                                      input="fmnist" if model == "fmnist" else args.input, T=steps, mode=mode,
                                      memory_format=row_memory_format(args.memory_format, mode),
                                      model_config=TRANSFORMER_CONFIGS.get(model)))
    return specs, skipped


def run_spec(spec: dict, timeout: int) -> dict:
    """One row in a fresh process; its error (or the end of its stderr) when it fails."""
    row = {k: spec[k] for k in ("model", "input", "T", "B", "mode", "dtype", "memory_format")}
    row["subject"] = PEER_NAMES.get(spec["subject"], f"flashspike {spec['backend']}")
    if spec.get("model_config"):
        row["model_config"] = spec["model_config"]
    if spec["mode"] in CUDA_ONLY_MODES and not spec["device"].startswith("cuda"):
        row["error"] = "needs CUDA"
        return row
    paths = [p for p in (spec["path"], SRC_ROOT, os.environ.get("PYTHONPATH")) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    launcher = [sys.executable]
    if spec.get("nproc", 1) > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={spec['nproc']}"]
    command = [*launcher, "-m", "flashspike.benchmarks.train_worker", json.dumps(spec)]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        row["error"] = f"timed out after {timeout} s"
        return row
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if lines:
        row.update(json.loads(lines[-1][len(MARKER):]))
    else:
        tail = done.stderr.strip().splitlines()[-3:]
        row["error"] = f"exit code {done.returncode}: " + " | ".join(tail)[:500]
    return row


def median_row(measured: list[dict]) -> dict:
    """One row from its rounds: the round of median ms/step (all its figures), with every round's ms
    under ``ms_rounds``; the first error when no round measured anything."""
    timed = sorted((r for r in measured if "ms" in r), key=lambda r: r["ms"])
    if not timed:
        return measured[0]
    row = dict(timed[(len(timed) - 1) // 2])
    if len(measured) > 1:
        row["ms_rounds"] = [r.get("ms") for r in measured]
    return row


# ---- reporting ----

def format_table(rows: list[dict]) -> str:
    lines = ["| model | input | T | B | mode | weights | subject | ms/step | images/s | epoch s | peak MiB | steady MiB "
             "| kept MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = (f"| {r['model']} | {r['input']} | {r['T']} | {r['B']} | {r['mode']} | {r.get('memory_format', '-')} "
                f"| {r['subject']} |")
        if "error" in r:
            lines.append(f"{head} failed: {r['error'][:120].replace('|', '/')} | | | | | |")
            continue
        epoch = f"{r['epoch_s']:.2f}" if "epoch_s" in r else "-"
        peak, steady = ("-" if r.get(key) is None else f"{r[key]:.0f}" for key in ("peak_MiB", "steady_peak_MiB"))
        kept = f"{r['kept_MiB']:.0f}" if "kept_MiB" in r else "-"
        lines.append(f"{head} {r['ms']:.2f} | {r['images_per_s']:.0f} | {epoch} | {peak} | {steady} | {kept} |")
    return "\n".join(lines)


def plot(rows: list[dict], out: Path, title: str) -> list[str]:
    """A horizontal bar per measured row: ms per step."""
    plt = pyplot()
    if plt is None:
        return []
    chosen = [r for r in rows if "ms" in r]
    if not chosen:
        return []
    labels = [f"{r['model']} {r['input']} T={r['T']} B={r['B']} {r['mode']} | {r['subject']}" for r in chosen]
    fig, ax = plt.subplots(figsize=(10.0, 1.5 + 0.3 * len(chosen)))
    ax.barh(range(len(chosen)), [r["ms"] for r in chosen],
            color=[plt.get_cmap("tab10")(MODES.index(r["mode"])) for r in chosen])
    ax.set_yticks(range(len(chosen)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms per training step")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "train_step.png", dpi=120)
    plt.close(fig)
    return ["train_step.png"]


def environment(device: str) -> dict:
    versions = {"torch": torch.__version__}
    for name in ("triton", "cupy"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    dev = torch.device(device)
    return dict(device=device_name(dev), flashspike=__version__, **versions,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def main(argv=None) -> dict:
    args = parse_args(argv)
    specs, skipped = row_specs(args)
    rounds = [[] for _ in specs]  # each spec's rows, one per round
    for _ in range(args.rounds):
        for spec, measured in zip(specs, rounds):
            measured.append(run_spec(spec, args.row_timeout))
            print(format_table(measured[-1:]).splitlines()[-1], flush=True)
    rows = [median_row(measured) for measured in rounds]
    report = dict(environment(args.device), skipped=skipped, rows=rows,
                  settings=dict(dtype=args.dtype, memory_format=args.memory_format, warmup=args.warmup,
                                steps=args.steps, repeats=args.repeats, rounds=args.rounds,
                                epoch_steps=args.epoch_steps, profile=args.profile, profile_names=args.profile_names,
                                peak_allocations=args.peak_allocations, layout_optimization=args.layout_optimization,
                                cudnn_benchmark=args.cudnn_benchmark,
                                nproc=args.nproc, threads=args.threads, **memory_switches(args)))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_benchmark.json").write_text(json.dumps(report, indent=1))
    title = f"training step, {args.dtype}, {report['device']}, torch {report['torch']}, {report['date'][:10]}"
    print(f"\n{title}")
    for name, reason in skipped.items():
        print(f"  not measured: {name}: {reason}")
    print(format_table(rows))
    for row in rows:
        if "profile" in row:
            print("\n" + format_profile(row))
        if "peak_allocations" in row:
            print("\n" + format_peak_allocations(row))
    charts = plot(rows, args.out, title)
    print(f"\nwrote {args.out / 'train_benchmark.json'}" + "".join(f", {args.out / c}" for c in charts))
    return report


if __name__ == "__main__":
    main()
