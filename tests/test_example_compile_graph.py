"""The example's ``-compile`` and ``-cuda_graph``: the same training as eager, and clear refusals.

CPU: a tiny ``-compile`` run against the same run eager; ``-cuda_graph`` refused on the CPU, under
torchrun and together with ``-compile``; the folder suffixes. GPU (marked ``gpu``): steps replayed from
a captured CUDA graph against the same steps run eagerly, the learning rate reaching the graph, a
partial batch run eagerly between replays, and ``-bench_steps`` with ``-cuda_graph``.
"""

import re

import pytest
import torch

from flashspike.examples import conv_fashion_mnist as cli
from flashspike.examples.checkpoint import load_checkpoint
from test_example_train import common, data_dir, epoch_lines, read_metrics, run_module  # noqa: F401 (fixture)


# ------------------------------------------------------------------ -compile

def test_compile_trains_like_eager(data_dir, tmp_path):  # noqa: F811 (the fixture)
    """Two epochs of 8 batches, compiled (inductor on the CPU) and eager, from the same seed.

    Losses and accuracies depend on the weights only through the spike counts (a rate is a multiple of
    1/T), so they agree exactly unless a compiled kernel's rounding moves a membrane potential across
    the threshold; the tolerance admits a few such flips, far less than one epoch of training moves them.
    """
    flags = common(data_dir, tmp_path, "-channels", "8", "-epochs", "2", "-max_batches", "8")
    eager = run_module(*flags)
    compiled = run_module(*flags, "-compile")
    assert eager.returncode == 0, eager.stderr[-3000:]
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    assert "note: the first epoch trained in this run includes compiling" in compiled.stdout
    expected = read_metrics(tmp_path / "T_4_b_32_SGD_lr_0.1_CosALR_64_c8")
    got = read_metrics(tmp_path / "T_4_b_32_SGD_lr_0.1_CosALR_64_c8_compile")
    assert len(got) == len(expected) == 2 and len(epoch_lines(compiled.stdout)) == 2
    assert expected[1]["train_loss"] < expected[0]["train_loss"] - 5e-3, "the eager run should learn"
    for e, g in zip(expected, got):
        for key in ("train_loss", "test_loss"):
            assert g[key] == pytest.approx(e[key], abs=5e-4), key
        assert g["train_acc"] == pytest.approx(e["train_acc"], abs=2 / 256)  # 8 batches x 32 images
        assert g["test_acc"] == pytest.approx(e["test_acc"], abs=2 / 160)
        assert g["lr"] == e["lr"]
    a = load_checkpoint(tmp_path / "T_4_b_32_SGD_lr_0.1_CosALR_64_c8" / "checkpoint_latest.pth")
    b = load_checkpoint(tmp_path / "T_4_b_32_SGD_lr_0.1_CosALR_64_c8_compile" / "checkpoint_latest.pth")
    assert a["net"].keys() == b["net"].keys()  # the checkpoint holds the plain net's names, not the wrapper's
    for key in a["net"]:
        torch.testing.assert_close(b["net"][key], a["net"][key], rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------ -cuda_graph refusals and names

def test_cuda_graph_on_a_cpu_device_is_a_clear_error(data_dir, tmp_path, capsys):  # noqa: F811
    for extra in ((), ("-bench_steps", "2")):
        assert cli.main(common(data_dir, tmp_path, "-cuda_graph", *extra)) == 2
        assert capsys.readouterr().err == "error: -cuda_graph needs a CUDA device, but the device is cpu\n"
    assert not any(tmp_path.iterdir()), "nothing should be written"


def test_cuda_graph_under_torchrun_is_parsed_as_asked(monkeypatch):
    # each process captures its own step, the all-reduce inside it (CapturedStep(distributed=True))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.parse_args(["-device", "cuda:0", "-cuda_graph"]).cuda_graph is True


def test_compile_and_cuda_graph_together_are_refused(capsys):
    assert cli.main(["-device", "cpu", "-compile", "-cuda_graph"]) == 2
    assert "-compile and -cuda_graph are alternatives" in capsys.readouterr().err


def test_folder_names_carry_the_new_flags():
    # A captured step computes what the eager one does: same run, same folder.
    assert cli.run_name(cli.parse_args(["-amp", "-cupy", "-cuda_graph"])) == "T_4_b_128_SGD_lr_0.1_CosALR_64_amp_cupy"
    assert cli.run_name(cli.parse_args(["-compile", "-channels", "16", "-step_mode", "s"])) == (
        "T_4_b_128_SGD_lr_0.1_CosALR_64_c16_s_compile")


@pytest.mark.parametrize("argv, world, captured", [
    (["-device", "cuda:0"], 1, True),  # the default on a GPU machine
    (["-device", "cuda:1", "-amp", "-cupy"], 1, True),
    (["-device", "cpu"], 1, False),
    (["-device", "cuda:0", "-compile"], 1, False),
    (["-device", "cuda:0", "-step_mode", "s"], 1, False),  # the baseline stays SpikingJelly's eager loop
    (["-device", "cuda:0"], 2, True),  # torchrun: each process captures its step, all-reduce included
    (["-device", "cuda:0", "-cuda_graph", "off"], 1, False),
    (["-device", "cuda:0", "-cuda_graph"], 1, True),
    (["-device", "cuda:0", "-cuda-graph", "on"], 1, True),
])
def test_cuda_graph_auto_captures_where_it_can(argv, world, captured, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    assert cli.parse_args(argv).cuda_graph is captured


@pytest.mark.parametrize("argv, world, mode", [
    (["-device", "cuda:0", "-compile"], 1, "reduce-overhead"),  # one GPU: CUDA graphs through the compiler
    (["-device", "cuda:0", "-compile"], 2, "default"),  # torchrun
    (["-device", "cpu", "-compile"], 1, "default"),
    (["-device", "cuda:0", "-compile", "max-autotune-no-cudagraphs"], 1, "max-autotune-no-cudagraphs"),
    (["-device", "cuda:0"], 1, False),
])
def test_compile_auto_picks_the_mode(argv, world, mode, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    assert cli.parse_args(argv).compile == mode


def test_compile_takes_only_torch_compile_modes(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["-compile", "fastest"])
    assert "invalid choice: 'fastest'" in capsys.readouterr().err


def test_cuda_graph_takes_only_its_three_values(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["-cuda_graph", "yes"])
    assert "invalid choice: 'yes'" in capsys.readouterr().err


# ------------------------------------------------------------------ GPU: replays against eager steps

def _trainer(*flags):
    args = cli.parse_args(["-device", "cuda:0", "-channels", "16", "-b", "32", "-amp", "-backend", "auto", *flags])
    torch.manual_seed(0)
    return cli.Trainer(args, cli.Cluster(args.device))


@pytest.mark.gpu
def test_cuda_graph_steps_match_eager_steps_gpu(monkeypatch):
    """3 warm-up steps, then replays, of the example's float16 AMP step: the same losses, rates and
    weights as eager steps; a learning rate set between replays (as the scheduler does) reaches the
    graph; a batch of another size runs eagerly between replays on the same state."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    eager, graphed = _trainer(), _trainer("-cuda_graph")
    for p, q in zip(eager.net.parameters(), graphed.net.parameters(), strict=True):
        assert torch.equal(p, q)
    g = torch.Generator(device="cuda").manual_seed(1)

    def batch(n=32):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, device="cuda", generator=g)
        labels = torch.randint(0, 10, (n,), device="cuda", generator=g)
        return images, torch.nn.functional.one_hot(labels, 10).float()

    def both(images, targets):
        losses, rates = [], []
        for trainer in (eager, graphed):
            loss, rate = trainer.train_step(images, targets)
            losses.append(loss.detach().clone())
            rates.append(rate.detach().clone())  # a replay's outputs are overwritten by the next one
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(rates[1], rates[0], rtol=0, atol=1e-6)
        return losses[0]

    eager.net.train()
    graphed.net.train()
    losses = [both(*batch()) for _ in range(8)]
    assert graphed.stepper.captured and graphed.stepper.graphs == 1
    assert len(set(map(float, losses))) > 1, "the losses should move as the net trains"

    both(*batch(16))  # a partial batch: eager in both, between replays

    # A learning rate of 0 must freeze the weights under a replay; a new one must be used again.
    for trainer in (eager, graphed):
        trainer.optimizer.param_groups[0]["lr"] = 0.0
    before = [p.detach().clone() for p in graphed.net.parameters()]
    both(*batch())
    for p, q in zip(graphed.net.parameters(), before):
        assert torch.equal(p, q), "the replay ignored a learning rate of 0"
    for trainer in (eager, graphed):
        trainer.optimizer.param_groups[0]["lr"] = 0.05
    for _ in range(3):
        both(*batch())
    assert graphed.optimizer.param_groups[0]["lr"] == 0.05  # a float again outside warm-up and capture
    torch.cuda.synchronize()
    for p, q in zip(graphed.net.parameters(), eager.net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    assert not any(torch.equal(p, q) for p, q in zip(graphed.net.parameters(), before)), "lr 0.05 changed nothing"


@pytest.mark.gpu
def test_bench_steps_honours_cuda_graph_gpu(capsys):
    argv = ["-device", "cuda:0", "-channels", "8", "-b", "16", "-amp", "-backend", "auto", "-bench_steps", "20"]
    assert cli.main(argv + ["-cuda_graph"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^bench: .*, compile=False, cuda_graph=True, pool_bytes=on, recompute_h=off, steps=20, step_time_ms=\d+\.\d+, "
                     r"peak_memory_mib=\d+\.\d$", out, re.M), out
