"""What a new user meets first: `python -m flashspike`'s report, --version on every command, and the
package's metadata (licence, project links)."""

import re
import tomllib
from pathlib import Path

import pytest
import torch

import flashspike
from flashspike import __main__ as entry
from flashspike import environment

ROOT = Path(__file__).resolve().parents[1]


def test_python_m_flashspike_reports_versions_device_and_backends(capsys):
    assert entry.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"flashspike {flashspike.__version__}\n")
    assert f"torch {torch.__version__}" in out
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        assert "CUDA device: none available" in out
    assert f"backends on {device}:" in out and re.search(r"^  torch +runs here$", out, re.M)
    for name in ("cupy", "triton"):
        if device == "cuda":
            assert re.search(rf"^  {name} +(runs here|does not run here: \w+Error: .+)$", out, re.M), name
    if device == "cpu":  # the machine's fact, not the probe tensor's device
        assert re.search(r"^  cupy +does not run here: no CUDA device here \(it runs on CUDA GPUs; (cupy\S* \S+|not "
                         r"installed)\)$", out, re.M), out
        assert "x_seq is on" not in out
    assert re.search(r"^  auto +-> (torch|cupy|triton)$", out, re.M)
    for command in ("examples.conv_fashion_mnist", "examples.plot", "benchmarks.neuron", "benchmarks.train"):
        assert f"python -m flashspike.{command} --help" in out


def test_a_backend_that_cannot_run_says_why():
    status = environment.backend_status(torch.device("cpu"))
    assert status["torch"] is None
    assert "runs on CUDA tensors" in status["cupy"]  # the backend's own error, not a guess


@pytest.mark.parametrize("module", ["flashspike.__main__", "flashspike.examples.conv_fashion_mnist",
                                    "flashspike.examples.plot", "flashspike.benchmarks.neuron"])
def test_every_command_has_version(module, capsys):
    import importlib

    main = importlib.import_module(module)
    with pytest.raises(SystemExit) as caught:
        if module.endswith("neuron"):
            main.parse_args(["--version"])
        else:
            main.main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"flashspike {flashspike.__version__}\n"


def test_licence_and_project_links_in_the_metadata():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "MIT"}
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License\n") and "the flashspike authors" in licence
    urls = project["urls"]
    assert set(urls) >= {"Homepage", "Documentation", "Issues"}
    assert all(url.startswith("https://github.com/flashspike/flashspike") for url in urls.values())
