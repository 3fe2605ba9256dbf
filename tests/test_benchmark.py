"""The neuron benchmark as a user runs it, on the CPU with a tiny N: its JSON, table and charts."""

import json
import math

import pytest
import torch

from flashspike.benchmarks import neuron as bench


def test_bytes_the_neuron_must_move():
    # forward: read X, write S (T·N each) and the last V (N); float32, T=8, N=2^20
    assert bench.must_move_bytes("f", 8, 2**20, 4) == (2 * 8 + 1) * 2**20 * 4
    # forward + backward: X, S, H forward; dL/dS, H, dL/dX backward; plus the last V. float16, T=128
    assert bench.must_move_bytes("fb", 128, 2**20, 2) == (6 * 128 + 1) * 2**20 * 2


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as done:
        bench.parse_args(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--if", "--n", "--t", "--dtypes", "--repeats", "--backends", "--peers", "--out", "--device"):
        assert flag in text


@pytest.mark.parametrize("argv", [["--n", "0"], ["--t", "4", "0"], ["--dtypes", "float64"], ["--backends", "auto"]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as done:
        bench.parse_args(argv)
    assert done.value.code == 2
    assert "error" in capsys.readouterr().err


def test_cpu_smoke_run_writes_json_and_charts(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the charts need matplotlib")
    report = bench.main(["--device", "cpu", "--n", "64", "--t", "2", "3", "--repeats", "2",
                         "--dtypes", "float32", "float16", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "neuron_benchmark.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["N"] == 64 and saved["neuron"].startswith("MultiStepLIFNode") and saved["copy_GBps"] > 0
    rows = saved["results"]
    # 'torch' only on a CPU: 2 modes x 2 dtypes x 2 T
    assert sorted((r["mode"], r["dtype"], r["T"]) for r in rows) == sorted(
        (m, d, t) for m in ("f", "fb") for d in ("float32", "float16") for t in (2, 3))
    for r in rows:
        assert r["subject"] == "flashspike torch" and "error" not in r
        assert r["ms"] > 0 and r["speedup"] == 1.0 and r["peak_MiB"] is None
        element = 4 if r["dtype"] == "float32" else 2
        expected = bench.must_move_bytes(r["mode"], r["T"], 64, element) / (r["ms"] * 1e-3) / 1e9
        assert math.isclose(r["GBps"], expected, rel_tol=1e-9)
        assert math.isclose(r["copy_share"], r["GBps"] / saved["copy_GBps"], rel_tol=1e-9)
    assert [(r["subject"], r["T"], r["N"], r["mode"]) for r in saved["host_case"]] == [
        (bench.FLOOR.label, 4, 4096, "fb"), ("flashspike torch", 4, 4096, "fb"),
        ("flashspike torch operator pair", 4, 4096, "fb")]
    for skipped in ("cupy", "triton"):
        assert skipped in saved["skipped"]
    for chart in ("exe_time_f.png", "exe_time_fb.png"):
        assert (tmp_path / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "flashspike torch" in out and "host-bound case" in out and "exe_time_fb.png" in out


def test_a_failing_subject_is_reported_not_fatal():
    def broken():
        raise RuntimeError("no kernel for this dtype")

    row = bench.measure(bench.Subject("broken", broken, lambda node: None), "f", 2, 8, torch.float32,
                        torch.device("cpu"), 1, 1e9)
    assert row["error"] == "RuntimeError: no kernel for this dtype" and "ms" not in row
    assert "failed: RuntimeError" in bench.format_table([row])
