"""What is allocated at a training row's memory peaks, and by which code.

The CUDA caching allocator records every allocation and free of the row, with the Python stack that
made it (``torch.cuda.memory._record_memory_history``). Replayed in order, the record gives the moment
when the most memory was allocated, once over the whole process (where the first step, with cuDNN's
algorithm search, often peaks) and once from the second step on (the steady peak; a captured row's is
its capture's, since a replay allocates nothing), and what was alive then, grouped by the code that
allocated it: the innermost frames outside PyTorch itself, so a group names the model's or the
library's line. The training benchmark's ``--peak-allocations K`` records its rows this way and prints
the K largest groups of each peak; the rows' times then include the recording's cost.
"""

from __future__ import annotations

import os

import torch

__all__ = ["start_recording", "events_so_far", "stop_recording", "summarize", "format_peak_allocations"]

MAX_EVENTS = 2_000_000  # allocations and frees kept; a longer record loses its oldest (then said)
FRAMES_PER_GROUP = 2  # frames outside PyTorch that name a group
SIZES_SHOWN = 4  # the largest allocations listed per group


def start_recording() -> None:
    torch.cuda.memory._record_memory_history(max_entries=MAX_EVENTS, stacks="python")


def _events(device: torch.device) -> list[dict]:
    traces = torch.cuda.memory._snapshot()["device_traces"]
    return list(traces[device.index or 0]) if traces else []


def events_so_far(device: torch.device) -> int:
    """How many events the record holds now: where a later part of it begins."""
    return len(_events(device))


def stop_recording(device: torch.device) -> list[dict]:
    """The record's events (dicts with ``action``, ``addr``, ``size`` and ``frames``), recording stopped."""
    events = _events(device)
    torch.cuda.memory._record_memory_history(enabled=None)
    return events


def allocated_by(frames: list[dict]) -> str:
    """The code that made an allocation: its innermost frames outside PyTorch, as ``file.py:line(function)``
    (innermost first), or the innermost frame where every frame is PyTorch's, ``?`` with no frame (an
    allocation made by a thread of PyTorch's own, as autograd's engine)."""
    def name(frame):
        return f"{os.path.basename(frame['filename'])}:{frame['line']}({frame['name']})"

    outside = [frame for frame in frames if "/torch/" not in frame["filename"].replace(os.sep, "/")]
    if outside:
        return " < ".join(name(frame) for frame in outside[:FRAMES_PER_GROUP])
    return name(frames[0]) if frames else "?"


def _peak(events: list[dict], start: int) -> tuple[int, dict]:
    """(bytes, live allocations by address) at the most allocated moment at or after event ``start``; the
    allocations before ``start`` count as they stand."""
    live, total, best, best_live = {}, 0, -1, {}
    for index, event in enumerate(events):
        action = event["action"]
        if action == "alloc":
            live[event["addr"]] = event
            total += event["size"]
        elif action == "free_requested" and event["addr"] in live:
            total -= live.pop(event["addr"])["size"]
        else:
            continue
        if index >= start and total > best:
            best, best_live = total, dict(live)
    return max(best, 0), best_live


def _groups(live: dict, count: int) -> list:
    groups: dict[str, list] = {}
    for event in live.values():
        groups.setdefault(allocated_by(event.get("frames", [])), []).append(event["size"])
    largest = sorted(groups.items(), key=lambda item: -sum(item[1]))[:count]
    return [[where, sum(sizes) / 2**20, len(sizes), [size / 2**20 for size in sorted(sizes, reverse=True)[:SIZES_SHOWN]]]
            for where, sizes in largest]


def summarize(events: list[dict], steady_from: int, count: int) -> dict:
    """``{"process": {"MiB", "groups"}, "steady": {...}, "events", "complete"}``: the peak over all
    ``events`` and the peak from event ``steady_from`` on, each with its ``count`` largest groups of live
    memory, ``[where, MiB, allocations, [largest MiB, ...]]``; ``complete`` is False where the record
    lost its oldest events (its peaks then miss what those allocated)."""
    summary = {"events": len(events), "complete": len(events) < MAX_EVENTS}
    for key, start in (("process", 0), ("steady", steady_from)):
        peak, live = _peak(events, start)
        summary[key] = {"MiB": peak / 2**20, "groups": _groups(live, count)}
    return summary


def format_peak_allocations(row: dict) -> str:
    """One row's peaks as tables: MiB, allocations, where, the largest allocations."""
    record = row["peak_allocations"]
    lines = [f"{row['model']} {row['input']} T={row['T']} B={row['B']} {row['mode']} | {row['subject']}: "
             f"memory alive at the peaks, by the code that allocated it ({record['events']} events"
             + ("" if record["complete"] else ", the oldest lost: the peaks miss what they allocated") + ")"]
    for key, title in (("process", "from process start"), ("steady", "from the second step on")):
        peak = record[key]
        lines += [f"peak {title}: {peak['MiB']:.1f} MiB", "| MiB | allocations | allocated by | largest MiB |",
                  "|---|---|---|---|"]
        for where, mib, allocations, largest in peak["groups"]:
            sizes = ", ".join(f"{size:.1f}" for size in largest)
            lines.append(f"| {mib:.1f} | {allocations} | {where.replace('|', '/')} | {sizes} |")
    return "\n".join(lines)
