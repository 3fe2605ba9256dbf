"""The training benchmark's record of allocations: the peaks found by replaying the allocator's history,
and what was alive then, grouped by the code that allocated it (synthetic histories here; the
benchmark test marked gpu records a real row)."""

import pytest

from flashspike.benchmarks import peak_memory, train as bench

MiB = 2**20
TORCH = "/env/lib/python3.12/site-packages/torch/nn/modules/conv.py"
MODEL = "/work/src/flashspike/model/resnet_base.py"
STEP = "/work/src/flashspike/captured.py"


def _frame(filename, line, name):
    return {"filename": filename, "line": line, "name": name}


def _alloc(addr, mib, *frames):
    return {"action": "alloc", "addr": addr, "size": int(mib * MiB), "frames": list(frames)}


def _free(addr):
    return {"action": "free_requested", "addr": addr, "size": 0, "frames": []}


def _history():
    conv = (_frame(TORCH, 548, "_conv_forward"), _frame(MODEL, 150, "forward"), _frame(STEP, 280, "_step"))
    weights = (_frame(STEP, 100, "__init__"),)
    return [
        _alloc(1, 10, *weights),            # lives throughout
        _alloc(2, 100, *conv),               # the first step: 100 + 50 over the weights
        _alloc(3, 50, *conv),
        {"action": "segment_alloc", "addr": 99, "size": 10**9, "frames": []},  # not an allocation
        _free(2), _free(3),
        _alloc(4, 30, *conv),                # the second step: 30 + 20 + an engine allocation of 5
        _alloc(5, 20, _frame(TORCH, 10, "backward")),
        _alloc(6, 5),
        _free(4), _free(5), _free(6),
        {"action": "free_completed", "addr": 6, "size": 0, "frames": []},
    ]


def test_the_process_peak_and_the_steady_peak_with_what_was_alive():
    summary = peak_memory.summarize(_history(), steady_from=6, count=10)
    assert summary["complete"] and summary["events"] == 13
    process, steady = summary["process"], summary["steady"]
    assert process["MiB"] == pytest.approx(160) and steady["MiB"] == pytest.approx(65)
    # groups by the innermost frames outside PyTorch, largest first, with their largest allocations
    assert process["groups"] == [["resnet_base.py:150(forward) < captured.py:280(_step)", 150.0, 2, [100.0, 50.0]],
                                 ["captured.py:100(__init__)", 10.0, 1, [10.0]]]
    assert steady["groups"] == [["resnet_base.py:150(forward) < captured.py:280(_step)", 30.0, 1, [30.0]],
                                ["conv.py:10(backward)", 20.0, 1, [20.0]],  # only PyTorch's own frames
                                ["captured.py:100(__init__)", 10.0, 1, [10.0]],
                                ["?", 5.0, 1, [5.0]]]  # no frame: a thread of PyTorch's
    assert len(peak_memory.summarize(_history(), 6, count=1)["steady"]["groups"]) == 1


def test_a_record_that_lost_its_oldest_events_says_so(monkeypatch):
    monkeypatch.setattr(peak_memory, "MAX_EVENTS", 13)
    summary = peak_memory.summarize(_history(), 6, 3)
    assert not summary["complete"]
    row = dict(model="sew_resnet18", input="imagenet", T=4, B=32, mode="captured", subject="flashspike cupy",
               peak_allocations=summary)
    text = peak_memory.format_peak_allocations(row)
    assert "the oldest lost" in text and "peak from process start: 160.0 MiB" in text
    assert "| 150.0 | 2 | resnet_base.py:150(forward) < captured.py:280(_step) | 100.0, 50.0 |" in text
    assert "peak from the second step on: 65.0 MiB" in text


def test_the_flag_reaches_every_row_and_refuses_a_negative_count():
    specs, _ = bench.row_specs(bench.parse_args(["--modes", "eager", "captured", "--peak-allocations", "6"]))
    assert {spec["peak_allocations"] for spec in specs} == {6}
    assert {spec["peak_allocations"] for spec in bench.row_specs(bench.parse_args([]))[0]} == {0}
    with pytest.raises(SystemExit):
        bench.parse_args(["--peak-allocations", "-1"])
