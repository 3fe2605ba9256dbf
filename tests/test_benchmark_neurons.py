"""The neuron benchmark's ``--neuron`` choice (and its ``--if`` alias), on the CPU with a tiny N."""

import pytest
import torch

from flashspike.benchmarks import neuron as bench


@pytest.mark.parametrize("argv, expected", [([], "lif"), (["--if"], "if"), (["--neuron", "plif"], "plif"),
                                            (["--neuron", "eif"], "eif")])
def test_neuron_flag_and_if_alias(argv, expected):
    assert bench.parse_args(argv).neuron == expected


def test_unknown_neuron_is_refused(capsys):
    with pytest.raises(SystemExit) as done:
        bench.parse_args(["--neuron", "qif"])
    assert done.value.code == 2
    assert "--neuron" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["plif", "eif"])
def test_cpu_run_of_another_neuron(name, tmp_path):
    args = bench.parse_args(["--neuron", name, "--device", "cpu", "--n", "32", "--t", "2", "--repeats", "1",
                             "--dtypes", "float32", "--no-host-case", "--out", str(tmp_path)])
    report = bench.run(args)
    assert report["neuron"] == bench.NEURONS[name].title
    assert {(r["mode"], r["subject"]) for r in report["results"]} == {("f", "flashspike torch"),
                                                                      ("fb", "flashspike torch")}
    assert all("error" not in r and r["ms"] > 0 for r in report["results"])


def test_peers_without_a_matching_snntorch_neuron_say_why():
    args = bench.parse_args(["--neuron", "plif", "--device", "cpu"])
    _, skipped = bench.peer_subjects(args, torch.device("cpu"))
    assert "snnTorch" in skipped


def test_threads_sets_pytorchs_cpu_threads(tmp_path):
    before = torch.get_num_threads()
    args = bench.parse_args(["--device", "cpu", "--n", "32", "--t", "2", "--repeats", "1", "--dtypes", "float32",
                             "--no-host-case", "--threads", "1", "--out", str(tmp_path)])
    try:
        assert bench.run(args)["threads"] == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit):
        bench.parse_args(["--threads", "-2"])
