"""The Fashion-MNIST training example on the CPU: the command line, the printed line, the log folder,
checkpoints, TensorBoard, exact resume, errors without tracebacks, and torchrun with 2 gloo processes.

The runs use a small synthetic data set in the IDX format (a bright block whose position is the
class, on noise), so they are fast and a trained net must reach a high accuracy on it.
"""

import copy
import gc
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flashspike import functional
from flashspike.examples import conv_fashion_mnist as cli
from flashspike.examples import fashion_mnist as fm
from flashspike.examples.checkpoint import load_checkpoint, write_atomic
from conftest import kernel_device

SRC = str(Path(__file__).resolve().parents[1] / "src")
LINE = re.compile(
    r"^epoch=(\d+), train_loss=([\d.]+), train_acc=([\d.]+), test_loss=([\d.]+), test_acc=([\d.]+), "
    r"max_test_acc=([\d.]+), total_time=([\d.]+), train_time=([\d.]+), train_speed=(\d+)$",
    re.M,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a small shared CPU, more threads mostly wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_split(n: int, generator: torch.Generator):
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=generator)]
    images = torch.randint(0, 64, (n, 28, 28), generator=generator).to(torch.uint8)
    for k in range(10):  # class k: a 8x5 block in a 2x5 grid
        top, left = 3 + 13 * (k // 5), 1 + 5 * (k % 5)
        images[labels == k, top:top + 8, left:left + 5] = 255
    return images, labels.to(torch.uint8)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("synthetic")
    generator = torch.Generator().manual_seed(0)
    for split, n, suffix in (("train", 640, ".gz"), ("t10k", 160, "")):  # gzipped and plain files
        images, labels = synthetic_split(n, generator)
        fm.write_idx(directory / f"{split}-images-idx3-ubyte{suffix}", images)
        fm.write_idx(directory / f"{split}-labels-idx1-ubyte{suffix}", labels)
    return directory


def run_module(*args: str, module="flashspike.examples.conv_fashion_mnist", launcher=()):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *launcher, "-m", module, *args], capture_output=True, text=True,
                          env=env, timeout=300)


def common(data_dir, out_dir, *extra):
    return ["-device", "cpu", "-data_dir", str(data_dir), "-out_dir", str(out_dir), "-channels", "4", "-b", "32",
            *extra]


def epoch_lines(text: str) -> list[dict]:
    keys = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "max_test_acc", "total_time",
            "train_time", "train_speed")
    return [dict(zip(keys, map(float, match))) for match in LINE.findall(text)]


def read_metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ one short run, checked from the outside

@pytest.fixture(scope="module")
def short_run(data_dir, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("logs")
    result = run_module(*common(data_dir, out_dir, "-epochs", "2", "-max_batches", "4"))
    assert result.returncode == 0, result.stderr
    return result, out_dir / "T_4_b_32_SGD_lr_0.1_CosALR_64_c4"


def test_short_run_starts_with_a_short_header_and_prints_one_line_per_epoch(short_run):
    result, folder = short_run
    # Everything before the first epoch: the header (run folder, device, network) and the data line;
    # the full flags and the network are in the run folder, not on the screen.
    start = result.stdout[:result.stdout.index("epoch=0,")].splitlines()
    assert len(start) <= 5, start
    assert start[0] == f"run folder: {folder} (full flags: flags.json, network: model.txt; -verbose prints them)"
    assert re.search(r"^device: cpu \(1 process, \d+ threads?\); backend: auto -> torch; precision: float32; "
                     r"memory format: contiguous$", result.stdout, re.M), start
    parameters = sum(p.numel() for p in cli.CSNN(T=4, channels=4).parameters())
    assert f"network: CSNN, T=4, 4 channels, {parameters:,} parameters; SGD lr=0.1, batch 32, 2 epochs" in start
    assert any(line.startswith("data: 640 training and 160 test images from ") for line in start)
    assert "Namespace(" not in result.stdout and "CSNN(" not in result.stdout
    lines = epoch_lines(result.stdout)
    assert [line["epoch"] for line in lines] == [0, 1]
    assert lines[1]["max_test_acc"] == max(line["test_acc"] for line in lines)
    for line in lines:
        assert 0 <= line["train_acc"] <= 1 and 0 <= line["test_acc"] <= 1 and line["train_loss"] > 0
        assert round(line["train_acc"] * 128) == pytest.approx(line["train_acc"] * 128, abs=0.01)  # 4 x 32 images
        assert line["train_time"] <= line["total_time"]
    assert "Traceback" not in result.stderr


def test_short_run_folder_holds_checkpoints_metrics_and_tensorboard(short_run):
    result, folder = short_run
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 6 and names[2].startswith("events.out.tfevents.")
    assert names[:2] + names[3:] == ["checkpoint_latest.pth", "checkpoint_max.pth", "flags.json", "metrics.jsonl",
                                     "model.txt"]
    # What the start-up header leaves out: every flag of the run, and the network as printed.
    args = cli.parse_args(common(json.loads((folder / "flags.json").read_text())["data_dir"], folder.parent,
                                 "-epochs", "2", "-max_batches", "4"))
    assert json.loads((folder / "flags.json").read_text()) == vars(args)
    assert (folder / "model.txt").read_text() == str(cli.CSNN(T=4, channels=4, backend="auto")) + "\n"
    printed = epoch_lines(result.stdout)
    metrics = read_metrics(folder)
    assert [m["epoch"] for m in metrics] == [0, 1]
    for line, record in zip(printed, metrics):
        for key in ("train_loss", "test_loss"):
            assert line[key] == pytest.approx(record[key], abs=5e-7)
        for key in ("train_acc", "test_acc", "max_test_acc"):
            assert line[key] == pytest.approx(record[key], abs=5e-5)
    latest = load_checkpoint(folder / "checkpoint_latest.pth")
    assert latest["epoch"] == 1 and latest["max_test_acc"] == metrics[1]["max_test_acc"]
    assert set(latest) >= {"net", "optimizer", "lr_scheduler", "scaler", "rng", "args", "history"}
    assert latest["history"] == metrics  # the checkpoint carries the record of the epochs it covers
    best_epoch = max(metrics, key=lambda m: m["test_acc"])["epoch"]  # the first epoch with the best accuracy
    assert load_checkpoint(folder / "checkpoint_max.pth")["epoch"] == best_epoch

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert logged == [(m["epoch"], pytest.approx(m[key], rel=1e-6)) for m in metrics]


def test_plot_command_draws_the_run(short_run, tmp_path, capsys):
    from flashspike.examples import plot

    _, folder = short_run
    assert plot.main([str(folder), "-o", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {tmp_path / 'accuracy.png'}", f"wrote {tmp_path / 'loss.png'}"]
    for name in ("accuracy.png", "loss.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_lines_where_there_is_no_terminal_and_the_data_source(data_dir, tmp_path, capsys, monkeypatch):
    from flashspike.examples import run_log

    monkeypatch.setattr(run_log, "PROGRESS_SECONDS", 0.0)  # a line after every batch
    assert cli.main(common(data_dir, tmp_path, "-epochs", "1", "-max_batches", "3")) == 0
    out = capsys.readouterr().out
    assert f"data: 640 training and 160 test images from {data_dir.resolve()}\n" in out
    # the last batch of a pass prints no line of its own: the epoch's line follows at once
    assert re.findall(r"^epoch 0 (train|test): (\d)/3 batches, \d+ s$", out, re.M) == [
        ("train", "1"), ("train", "2"), ("test", "1"), ("test", "2")]


# ------------------------------------------------------------------ errors: one clear line, no traceback
# (in-process: an exception that main() let through would fail the test as a traceback would)

def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert cli.main(common(tmp_path, tmp_path / "logs", "-no_download")) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Fashion-MNIST is not in") and err.count("\n") == 1
    for name in fm.FILES.values():
        assert name in err
    assert "apt-get install dataset-fashion-mnist" in err


def test_a_backend_that_cannot_run_here_is_a_clear_error(data_dir, tmp_path, capsys):
    assert cli.main(common(data_dir, tmp_path, "-cupy")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: -backend cupy cannot run on cpu:") and err.count("\n") == 1
    assert not (tmp_path / "T_4_b_32_SGD_lr_0.1_CosALR_64_cupy_c4").exists()


# ------------------------------------------------------------------ exact resume

def test_resume_ends_bit_identical_to_an_unstopped_run(data_dir, tmp_path, capsys):
    flags = common(data_dir, "{}", "-max_batches", "5", "-opt", "adam", "-lr", "0.01")
    through = [f.format(tmp_path / "a") for f in flags]
    stopped = [f.format(tmp_path / "b") for f in flags]
    assert cli.main(through + ["-epochs", "3"]) == 0
    assert cli.main(stopped + ["-epochs", "1"]) == 0
    folder_a, folder_b = (tmp_path / d / "T_4_b_32_Adam_lr_0.01_CosALR_64_c4" for d in "ab")
    capsys.readouterr()
    assert cli.main(stopped + ["-epochs", "3", "-resume", str(folder_b / "checkpoint_latest.pth")]) == 0
    resumed = epoch_lines(capsys.readouterr().out)
    assert [line["epoch"] for line in resumed] == [1, 2]

    def without_times(records):
        return [{k: v for k, v in r.items() if "time" not in k and "speed" not in k} for r in records]

    assert without_times(read_metrics(folder_b)) == without_times(read_metrics(folder_a))
    a = load_checkpoint(folder_a / "checkpoint_latest.pth")
    b = load_checkpoint(folder_b / "checkpoint_latest.pth")
    assert a["net"].keys() == b["net"].keys()
    for key in a["net"]:
        assert torch.equal(a["net"][key], b["net"][key]), key
    for index, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name]), (index, name)
    assert a["lr_scheduler"] == b["lr_scheduler"] and a["epoch"] == b["epoch"] == 2
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"]) and torch.equal(a["rng"]["shuffle"], b["rng"]["shuffle"])


def test_resume_refuses_another_network_or_a_broken_file(data_dir, tmp_path, capsys):
    assert cli.main(common(data_dir, tmp_path, "-epochs", "1", "-max_batches", "1")) == 0
    checkpoint = tmp_path / "T_4_b_32_SGD_lr_0.1_CosALR_64_c4" / "checkpoint_latest.pth"
    flags = ["-device", "cpu", "-data_dir", str(data_dir), "-out_dir", str(tmp_path), "-epochs", "2"]
    capsys.readouterr()
    assert cli.main(flags + ["-channels", "8", "-resume", str(checkpoint)]) == 2
    assert "the run was trained with -channels 4 (given: 8)" in capsys.readouterr().err
    broken = tmp_path / "broken.pth"
    broken.write_bytes(checkpoint.read_bytes()[:1000])
    assert cli.main(flags + ["-channels", "4", "-resume", str(broken)]) == 2
    assert f"error: -resume {broken}: not a readable checkpoint" in capsys.readouterr().err
    assert cli.main(flags + ["-resume", str(tmp_path / "absent.pth")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_an_interrupted_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_latest.pth"
    write_atomic(b"epoch 1", path)

    def dies_halfway(descriptor):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", dies_halfway)  # the bytes are written, not yet renamed into place
    with pytest.raises(KeyboardInterrupt):
        write_atomic(b"epoch 2", path)
    assert path.read_bytes() == b"epoch 1"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_latest.pth"]


# ------------------------------------------------------------------ the network and the variants

def test_training_learns_the_synthetic_classes(data_dir, tmp_path, capsys):
    assert cli.main(common(data_dir, tmp_path, "-channels", "8", "-epochs", "3")) == 0
    lines = epoch_lines(capsys.readouterr().out)
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert lines[-1]["max_test_acc"] >= 0.9, lines


def test_multi_step_and_single_step_nets_compute_the_same_rates():
    torch.manual_seed(3)
    multi = cli.CSNN(T=3, channels=4, step_mode="m").double().eval()
    single = cli.CSNN(T=3, channels=4, step_mode="s").double().eval()
    with torch.no_grad():
        for p_single, p_multi in zip(single.parameters(), multi.parameters(), strict=True):
            p_multi.mul_(3)  # larger weights: more spikes
            p_single.copy_(p_multi)
        for b_single, b_multi in zip(single.buffers(), multi.buffers(), strict=True):
            b_single.copy_(b_multi)
        x = torch.rand(5, 1, 28, 28, dtype=torch.float64)
        rates = multi(x)
        assert torch.equal(rates, single(x))
    assert rates.shape == (5, 10) and 0 < rates.sum() and bool(((rates * 3) == (rates * 3).round()).all())


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_channels_last_net_computes_the_same_rates_and_gradients(backend, monkeypatch):
    """The net in channels_last (what -memory_format auto picks on CUDA) against the contiguous one;
    'triton' runs the fused path (Triton's interpreter on the CPU), which reads that layout in place."""
    device = kernel_device(backend)
    # Full float32 convolutions on a GPU too (cuDNN may otherwise round them to TF32, 1e-3 apart).
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(4)
    plain = cli.CSNN(T=3, channels=4, step_mode="m", backend="torch").double()
    with torch.no_grad():
        for p in plain.parameters():
            p.mul_(3)  # larger weights: more spikes
    last = copy.deepcopy(plain)
    functional.set_backend(last, backend)
    last.memory_format = torch.channels_last
    plain, last = plain.to(device).float(), last.to(device, memory_format=torch.channels_last).float()
    x = torch.rand(5, 1, 28, 28, device=device)
    rates, rates_last = plain(x), last(x)
    torch.testing.assert_close(rates_last, rates)
    assert 0 < rates.sum()
    rates.square().sum().backward()
    rates_last.square().sum().backward()
    for p, q in zip(plain.parameters(), last.parameters(), strict=True):
        # float32 sums in another order (the NHWC kernels): close relative to the largest gradient
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4 * p.grad.abs().max().item())
    # The constructor lays the convolution weights out as asked, and moving the net keeps that layout.
    built = cli.CSNN(T=3, channels=4, memory_format=torch.channels_last).to(device)
    assert built.conv[1][1].weight.is_contiguous(memory_format=torch.channels_last)
    assert not built.conv[1][1].weight.is_contiguous()


@pytest.mark.parametrize(
    "extra, folder",
    [
        (["-step_mode", "s"], "T_4_b_32_SGD_lr_0.1_CosALR_64_c4_s"),
        (["-amp"], "T_4_b_32_SGD_lr_0.1_CosALR_64_amp_c4"),  # bfloat16 autocast on the CPU
        (["-opt", "ADAM", "-lr_scheduler", "steplr", "-step-size", "5", "-T", "2"], "T_2_b_32_Adam_lr_0.1_StepLR_5_0.1_c4"),
    ],
)
def test_variants_run_and_name_their_folder(data_dir, tmp_path, capsys, extra, folder):
    assert cli.main(common(data_dir, tmp_path, "-epochs", "1", "-max_batches", "2", *extra)) == 0
    (line,) = epoch_lines(capsys.readouterr().out)
    assert line["train_loss"] > 0 and (tmp_path / folder / "checkpoint_latest.pth").is_file()


def test_bench_steps_reports_a_step_time_without_data(capsys):
    assert cli.main(["-device", "cpu", "-channels", "4", "-b", "8", "-bench_steps", "2", "-data_dir", "/nonexistent"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^bench: device=cpu, T=4, b=8, .*step_time_ms=\d+\.\d+, peak_rss_mib=(\d+\.\d)$", out, re.M), out
    assert float(re.search(r"peak_rss_mib=(\S+)$", out, re.M).group(1)) > 50  # torch alone takes more
    assert out.startswith("run folder: none (-bench_steps records nothing; -verbose prints the flags and network)\n")
    assert "Namespace(" not in out and "CSNN(" not in out


def test_verbose_prints_the_full_flags_and_the_network(capsys):
    assert cli.main(["-device", "cpu", "-channels", "4", "-b", "8", "-bench_steps", "1", "-verbose"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^Namespace\(T=4, device='cpu', b=8, .*verbose=True", out, re.M), out
    assert "CSNN(" in out and out.count("MultiStepIFNode(") == 4



@pytest.mark.parametrize("flag, pool_class", [([], "BytePositionMaxPool2d"), (["-pool_bytes", "off"], "MaxPool2d")])
def test_the_pools_keep_bytes_unless_told_not_to(flag, pool_class):
    from flashspike.examples.trainer import Trainer
    from flashspike.cluster import Cluster

    trainer = Trainer(cli.parse_args(["-device", "cpu", "-channels", "4", *flag]), Cluster("cpu"))
    pools = [type(m).__name__ for m in trainer.net.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert pools == [pool_class] * 2


@pytest.mark.parametrize("flag, norm_class", [([], "BatchNorm2d"), (["-recompute_h", "on"], "RecomputableBatchNorm2d")])
def test_the_batchnorms_are_switched_only_when_told(flag, norm_class):
    from flashspike.examples.trainer import Trainer
    from flashspike.cluster import Cluster

    trainer = Trainer(cli.parse_args(["-device", "cpu", "-channels", "4", *flag]), Cluster("cpu"))
    norms = [type(m).__name__ for m in trainer.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms == [norm_class] * 2

# ------------------------------------------------------------------ flags

def test_flags_accept_dashes_and_any_case():
    args = cli.parse_args(["-data-dir", "d", "-out-dir", "o", "-opt", "adam", "-lr-scheduler", "STEPLR", "-T-max", "9"])
    assert (args.data_dir, args.out_dir, args.opt, args.lr_scheduler, args.T_max) == ("d", "o", "Adam", "StepLR", 9)
    assert cli.parse_args(["-cupy"]).backend == "cupy"
    defaults = cli.parse_args([])
    assert (defaults.T, defaults.b, defaults.epochs, defaults.lr, defaults.backend, defaults.opt) == (
        4, 128, 64, 0.1, "auto", "SGD")  # 'auto', as the neurons' own default
    assert cli.run_name(defaults) == "T_4_b_128_SGD_lr_0.1_CosALR_64"
    assert cli.run_name(cli.parse_args(["-amp", "-backend", "auto"])) == "T_4_b_128_SGD_lr_0.1_CosALR_64_amp"
    assert cli.run_name(cli.parse_args(["-backend", "torch"])) == "T_4_b_128_SGD_lr_0.1_CosALR_64_torch"
    assert cli.parse_args(["-step_mode", "s"]).backend == "auto"  # the default is no conflict


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-cupy", "-backend", "triton"], "-cupy means -backend cupy"),
        (["-step_mode", "s", "-backend", "cupy"], "-step_mode s has none"),
        (["-b", "0"], "-b must be at least 1"),
        (["-max_batches", "0"], "-max_batches must be at least 1"),
    ],
)
def test_bad_flag_combinations_are_usage_errors(argv, message, capsys):
    assert cli.main(argv + ["-device", "cpu"]) == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------ several processes

def test_epoch_order_gives_disjoint_equal_shards():
    class Shard:
        def __init__(self, rank, world):
            self.rank, self.world, self.device = rank, world, torch.device("cpu")

    orders = [cli.epoch_order(torch.Generator().manual_seed(5), 11, Shard(r, 2)) for r in range(2)]
    assert len(orders[0]) == len(orders[1]) == 5
    whole = torch.randperm(11, generator=torch.Generator().manual_seed(5))[:10]
    assert sorted(torch.cat(orders).tolist()) == sorted(whole.tolist())
    assert torch.equal(cli.epoch_order(torch.Generator().manual_seed(5), 11, Shard(0, 1)),
                       torch.randperm(11, generator=torch.Generator().manual_seed(5)))


def test_torchrun_with_two_gloo_processes(data_dir, tmp_path):
    result = run_module(*common(data_dir, tmp_path, "-epochs", "2", "-max_batches", "10", "-channels", "8"),
                        launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("run folder: ") == 1 and "(2 processes, 1 thread each)" in result.stdout  # rank 0 alone
    lines = epoch_lines(result.stdout)
    assert [line["epoch"] for line in lines] == [0, 1]
    for line in lines:  # 2 processes x 10 batches x 32 images: all 640 were trained on
        assert line["train_acc"] * 640 == pytest.approx(round(line["train_acc"] * 640), abs=0.03)
    # Each process tested its half of the 160 test images (3 batches of at most 32 reach all 80); the
    # reduced numbers must be those of the saved net tested alone on all of them.
    assert lines[-1]["test_loss"] < 0.099  # the net is not silent (a silent one scores 0.1 on every split)
    folder = tmp_path / "T_4_b_32_SGD_lr_0.1_CosALR_64_c8"
    checkpoint = load_checkpoint(folder / "checkpoint_latest.pth")
    args = cli.parse_args(common(data_dir, tmp_path, "-channels", "8"))
    trainer = cli.Trainer(args, cli.Cluster("cpu"))
    trainer.net.load_state_dict(checkpoint["net"])
    data = fm.load_fashion_mnist(data_dir, allow_download=False)
    test = cli.DeviceSplit(data.test_images, data.test_labels, torch.device("cpu"))
    loss_sum, correct, count = trainer.evaluate(test, cli.batches(torch.arange(160), 32, False, None)).tolist()
    assert count == 160
    assert lines[-1]["test_acc"] == pytest.approx(correct / count, abs=5e-5)
    assert lines[-1]["test_loss"] == pytest.approx(loss_sum / count, abs=5e-7)
    assert len(read_metrics(folder)) == 2


def test_progress_bar_on_a_terminal_closes_when_the_pass_ends():
    from flashspike.examples import run_log

    class Bar:
        def __init__(self, total, desc, leave):
            self.total, self.desc, self.leave, self.n, self.closed = total, desc, leave, 0, False

        def update(self, n):
            self.n += n

        def close(self):
            self.closed = True

    class FakeTqdm:
        tqdm = Bar

    progress = run_log.Progress("epoch 0 test", 3, FakeTqdm)
    for _ in range(3):
        assert not progress.bar.closed
        progress.update()
    assert (progress.bar.n, progress.bar.closed, progress.bar.desc, progress.bar.leave) == (3, True, "epoch 0 test", False)


def test_leaving_the_process_group_frees_a_model_held_in_a_reference_cycle_first(monkeypatch):
    # A DDP model whose last reference is a cycle must be gone before its process group is
    # destroyed: freed at interpreter shutdown instead, Gloo's threads abort the process.
    from flashspike import cluster

    torch.distributed.init_process_group("gloo", rank=0, world_size=1, store=torch.distributed.HashStore())
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
    model.module.owner = model  # the cycle
    del model
    alive_at_destroy = []
    destroy = torch.distributed.destroy_process_group

    def counting_destroy(*args, **kwargs):
        alive_at_destroy.append(sum(isinstance(o, torch.nn.parallel.DistributedDataParallel)
                                    for o in gc.get_objects()))
        destroy(*args, **kwargs)

    monkeypatch.setattr(torch.distributed, "destroy_process_group", counting_destroy)
    cluster.leave_process_group()
    assert alive_at_destroy == [0]
    assert not torch.distributed.is_initialized()
    cluster.leave_process_group()  # no group: nothing to do
    assert alive_at_destroy == [0]


@pytest.mark.gpu
def test_a_plain_cuda_device_is_named_by_its_index():
    # torch.cuda.set_device refuses a device without an index; "cuda" means the current device
    cluster = cli.Cluster("cuda")
    assert cluster.device == torch.device("cuda", torch.cuda.current_device())
