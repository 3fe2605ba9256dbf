"""The neuron benchmark's host-bound case: PyTorch's floor row and each subject's ratio to it."""

import torch

from flashspike.benchmarks import neuron as bench


def test_host_case_reports_the_floor_and_each_ratio(tmp_path):
    args = bench.parse_args(["--device", "cpu", "--n", "32", "--t", "2", "--repeats", "1", "--dtypes", "float32",
                             "--out", str(tmp_path)])
    report = bench.run(args)
    rows = {r["subject"]: r for r in report["host_case"]}
    assert set(rows) == {bench.FLOOR.label, "flashspike torch", "flashspike torch operator pair"}
    assert all((r["T"], r["N"]) == bench.HOST_CASE and "error" not in r for r in rows.values())
    assert rows[bench.FLOOR.label]["floor_ratio"] == 1.0
    node = rows["flashspike torch"]
    assert node["floor_ratio"] == node["ms"] / rows[bench.FLOOR.label]["ms"]
    table = bench.format_table(report["host_case"])
    assert "x floor" in table.splitlines()[0] and f"{node['floor_ratio']:7.2f}x" in table
    assert "x floor" not in bench.format_table(report["results"]).splitlines()[0]


def test_the_floor_allocates_its_output_and_gradient():
    x = torch.rand(3, 5, requires_grad=True)
    y = bench.PyTorchFloor()(x)
    assert y.shape == x.shape and y.grad_fn is not None
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_operator_pair_runs_both_operators_without_autograd(monkeypatch):
    calls = []
    for name in ("multi_step_forward", "multi_step_backward"):
        real = getattr(torch.ops.flashspike, name).default
        monkeypatch.setattr(getattr(torch.ops.flashspike, name), "default",
                            lambda *args, real=real, name=name: calls.append((name, torch.is_grad_enabled())) or real(*args))
    args = bench.parse_args(["--device", "cpu", "--neuron", "plif", "--backends", "torch"])
    (subject,) = bench.flashspike_subjects(args, torch.device("cpu"))[0]
    pair = bench.operator_pair(subject)
    assert pair.label == "flashspike torch operator pair"
    grad_x, _, grad_w = bench.make_call(pair, "fb", 3, 8, torch.float32, torch.device("cpu"))()
    assert calls == [("multi_step_forward", False), ("multi_step_backward", False)]
    assert grad_x.shape == (3, 8) and grad_w.numel() == 1 and torch.isfinite(grad_x).all()
