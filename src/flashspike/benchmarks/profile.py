"""Where a training step's time goes: ``torch.profiler`` over a few steps, summed by kind of work.

On CUDA the device time of every kernel (and memory copy or set) is counted, captured graphs' kernels
included; on the CPU the self time of every operator. Each name falls into the first kind whose
pattern it matches (:data:`KINDS`), so the shares add up to the whole step. The training benchmark's
``--profile K`` calls :func:`profile_steps` on each row after timing it.

A kernel's name rarely says which of the model's operations launched it, and copies are the work a
layout mismatch adds, so the summary also lists the operators whose own time is copying (``aten::copy_``,
``clone``, ``contiguous``, ``_to_copy`` ...) with their inputs' shapes. In a captured step the replayed
kernels have no operator, so only eager rows can say this.

The host's side comes last: the same number of steps again under :mod:`cProfile`, whose wall time per
step beside the kernel time says whether a row waits for the GPU or for Python, and whose costliest
functions (by their own time: Python's and the C calls it makes, a kernel launcher's included) say
where the host's time goes.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import re
import time
from typing import Callable

import torch
from torch.autograd import DeviceType

# (kind, pattern searched in the lower-cased kernel or operator name); the first match wins.
KINDS = (
    ("neuron", r"fs_forward|fs_backward|flashspike_forward|flashspike_backward|flashspike::"),
    ("spike bits", r"_pack_bits|_unpack_bits"),
    ("max-pool", r"max_pool"),
    ("convolution", r"conv|cudnn|xmma|implicit_gemm|dgrad|wgrad|fprop|winograd"),
    ("batch norm", r"batch_norm|batchnorm|bn_fw|bn_bw|welford"),
    ("matmul", r"gemm|cutlass|addmm|\bmm\b|matmul|nvjet|bmm"),
    ("optimizer", r"fused_sgd|fused_adam|multi_tensor|foreach|sgd|adam"),
    ("copy and cast", r"copy|cast|convert|memcpy|memset|\bto\b|_to_copy"),
    ("reduction", r"reduce|sum|mean|norm|softmax|log_softmax|nll|cross_entropy|mse"),
    ("elementwise", r"elementwise|vectorized|add|mul|sub|div|fill|where|clamp|relu|exp|sigmoid|zero"),
)
_COMPILED = [(kind, re.compile(pattern)) for kind, pattern in KINDS]
TOP = 3  # the most costly names kept per kind, unless the caller asks for more
COPY_OPERATORS = 8  # the most costly copying operators listed
HOST_FUNCTIONS = 8  # the host functions of most own time listed


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, pattern in _COMPILED:
        if pattern.search(lowered):
            return kind
    return "other"


def _timed_names(profiler, device: torch.device) -> list[tuple[str, float]]:
    """(name, microseconds) of every kernel on CUDA, of every operator's self time on the CPU."""
    if device.type == "cuda":
        return [(event.name, event.time_range.elapsed_us()) for event in profiler.events()
                if event.device_type == DeviceType.CUDA]
    return [(entry.key, entry.self_cpu_time_total) for entry in profiler.key_averages()
            if entry.self_cpu_time_total > 0]


def summarize(timed: list[tuple[str, float]], steps: int, names: int = TOP) -> dict:
    """``{"ms_per_step", "kinds": {kind: ms per step}, "top": {kind: [[name, ms per step, calls per step],
    ...]}}``, kinds by falling time, each with its ``names`` costliest names."""
    by_kind: dict[str, float] = {}
    by_name: dict[str, float] = {}
    calls: dict[str, int] = {}
    for name, microseconds in timed:
        by_name[name] = by_name.get(name, 0.0) + microseconds
        calls[name] = calls.get(name, 0) + 1
    kind_of_name = {name: kind_of(name) for name in by_name}  # each distinct name classified once
    for name, microseconds in by_name.items():
        by_kind[kind_of_name[name]] = by_kind.get(kind_of_name[name], 0.0) + microseconds
    per_step = 1e-3 / steps  # microseconds summed over the steps -> milliseconds per step
    kinds = dict(sorted(((k, v * per_step) for k, v in by_kind.items()), key=lambda item: -item[1]))
    top = {kind: [] for kind in kinds}
    for name, microseconds in sorted(by_name.items(), key=lambda item: -item[1]):
        if len(top[kind_of_name[name]]) < names:
            top[kind_of_name[name]].append([name[:120], microseconds * per_step, calls[name] / steps])
    return {"ms_per_step": sum(kinds.values()), "kinds": kinds, "top": top}


def copying_operators(profiler, device: torch.device, steps: int) -> list:
    """``[[operator, input shapes, ms per step], ...]``: the operators (by their inputs' shapes) whose own
    time, on ``device``, is copying, costliest first."""
    rows = []
    for entry in profiler.key_averages(group_by_input_shape=True):
        if not entry.key.startswith("aten::") or kind_of(entry.key) != "copy and cast":
            continue
        microseconds = entry.self_device_time_total if device.type == "cuda" else entry.self_cpu_time_total
        if microseconds > 0:
            rows.append([entry.key, str(entry.input_shapes), microseconds * 1e-3 / steps])
    return sorted(rows, key=lambda row: -row[2])[:COPY_OPERATORS]


def _function_name(key: tuple) -> str:
    """A cProfile key ``(file, line, function)`` as ``package/module.py:line(function)``, or the C call's
    own name (``<built-in method ...>``)."""
    filename, line, function = key
    if filename == "~" or not filename:  # a C function: its name says what it is
        return function
    parts = filename.replace(os.sep, "/").split("/")
    for anchor in ("site-packages", "dist-packages", "src"):  # from the package's own folder on
        if anchor in parts:
            parts = parts[len(parts) - parts[::-1].index(anchor):]
            break
    else:
        parts = parts[-2:]
    return f"{'/'.join(parts)}:{line}({function})"


def host_functions(call: Callable[[], object], device: torch.device, steps: int) -> dict:
    """``{"ms_per_step", "functions": [[name, own ms per step, calls per step], ...]}``: ``steps`` calls of
    ``call()`` under cProfile, the device synchronized at the end (so the wall time includes any wait
    for it), and the functions with the most own time, costliest first."""
    profiler = cProfile.Profile()
    try:
        profiler.enable()
    except ValueError as error:  # another profiler holds the interpreter's hook (a debugger, coverage)
        return {"ms_per_step": None, "functions": [], "error": str(error)}
    started = time.perf_counter()
    for _ in range(steps):
        call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    profiler.disable()
    wall = time.perf_counter() - started
    stats = pstats.Stats(profiler).stats  # key -> (primitive calls, calls, own time, cumulative time, callers)
    costliest = sorted(stats.items(), key=lambda item: -item[1][2])[:HOST_FUNCTIONS]
    return {"ms_per_step": wall * 1e3 / steps,
            "functions": [[_function_name(key), own * 1e3 / steps, calls / steps]
                          for key, (_primitive, calls, own, _cumulative, _callers) in costliest]}


def profile_steps(call: Callable[[], object], device: torch.device, steps: int, names: int = TOP) -> dict:
    """Run ``call()`` ``steps`` times under the profiler (after the caller's warm-up) and summarize, with
    the ``names`` costliest names of each kind; then ``steps`` more under cProfile (:func:`host_functions`,
    the summary's ``"host"``)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as profiler:
        for _ in range(steps):
            call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    summary = summarize(_timed_names(profiler, device), steps, names)
    summary["what"] = "kernel time" if device.type == "cuda" else "operator self time (CPU)"
    summary["copying_operators"] = copying_operators(profiler, device, steps)
    summary["host"] = host_functions(call, device, steps)
    return summary


def format_profile(row: dict) -> str:
    """One row's profile as a table: kind, ms per step, share, the costliest names."""
    profile = row["profile"]
    total = profile["ms_per_step"] or 1.0
    lines = [f"{row['model']} {row['input']} T={row['T']} B={row['B']} {row['mode']} | {row['subject']}: "
             f"{profile['what']}, {profile['ms_per_step']:.3f} ms per step",
             "| kind | ms/step | share | costliest |", "|---|---|---|---|"]
    for kind, ms in profile["kinds"].items():
        names = "; ".join(f"{name} {value:.3f} ({calls:g}x)" for name, value, calls in profile["top"][kind])
        lines.append(f"| {kind} | {ms:.3f} | {ms / total:.1%} | {names.replace('|', '/')} |")
    for name, shapes, ms in profile.get("copying_operators", []):
        lines.append(f"copying: {name} {shapes} {ms:.3f} ms/step")
    host = profile.get("host")
    if host and host["ms_per_step"] is None:
        lines.append(f"host (cProfile): not profiled: {host['error']}")
    elif host:
        lines.append(f"host (cProfile): {host['ms_per_step']:.3f} ms per step, wall; the most own time:")
        for name, ms, calls in host["functions"]:
            lines.append(f"host: {name} {ms:.3f} ms/step in {calls:g} calls")
    return "\n".join(lines)
