"""The example's run record under failure: a process stopped between any two writes of an epoch's
record, a corrupted checkpoint, temporaries a killed write left behind, a resumed run given other
flags, a second run into the same folder, and every bad input answered by one `error:` line.

Training runs here are tiny (4 channels, 2 batches of 32 synthetic images an epoch) and in-process.
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flashspike.examples import conv_fashion_mnist as cli
from flashspike.examples import fashion_mnist as fm
from flashspike.examples import run_log
from flashspike.examples.checkpoint import load_checkpoint, remove_stale_temporaries
from test_example_train import SRC, common, data_dir, epoch_lines, read_metrics, synthetic_split  # noqa: F401 (fixture)

FOLDER = "T_4_b_32_SGD_lr_0.1_CosALR_64_c4"
TIMES = ("total_time", "train_time", "train_speed")


def flags(data_dir, out_dir, *extra):  # noqa: F811 (the fixture's name)
    return common(data_dir, out_dir, "-epochs", "2", "-max_batches", "2", *extra)


def without_times(records):
    return [{k: v for k, v in record.items() if k not in TIMES} for record in records]


def tensorboard_curves(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {key: [(e.step, round(e.value, 6)) for e in events.Scalars(key)] for key in ("train_loss", "test_acc")}


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):  # noqa: F811
    """An uninterrupted two-epoch run: its folder, and the writes of its record in order."""
    out_dir = tmp_path_factory.mktemp("reference")
    writes = []
    with pytest.MonkeyPatch.context() as patch:
        for name in ("_append_metrics", "_add_scalars", "_save"):
            original = getattr(run_log.RunLog, name)

            def recorded(self, *args, _original=original, _name=name):
                writes.append(_name if _name != "_save" else args[0])
                return _original(self, *args)

            patch.setattr(run_log.RunLog, name, recorded)
        assert cli.main(flags(data_dir, out_dir)) == 0
    return out_dir / FOLDER, writes


def copy_of(folder, tmp_path):
    """A copy of a run's folder, to resume without touching the original."""
    return Path(shutil.copytree(folder, tmp_path / "run"))


class Crash(BaseException):
    """The process stopping at a point (a BaseException, as a kill is nothing the program handles)."""


def test_the_record_is_written_in_commit_order(reference):
    _, writes = reference
    # metrics line, TensorBoard points, best checkpoint, and last the latest checkpoint, every epoch
    assert writes[:4] == ["_append_metrics", "_add_scalars", run_log.BEST, run_log.LATEST]
    assert writes[4:6] == ["_append_metrics", "_add_scalars"] and writes[-1] == run_log.LATEST


@pytest.mark.parametrize("stop_before", range(7))  # the reference's 7 writes (epoch 1 is not its best)
def test_a_run_stopped_between_any_two_writes_resumes_to_the_same_record(
        reference, data_dir, tmp_path, monkeypatch, capsys, stop_before):  # noqa: F811
    expected_folder, writes = reference
    assert len(writes) == 7
    count = [0]
    for name in ("_append_metrics", "_add_scalars", "_save"):
        original = getattr(run_log.RunLog, name)

        def crashing(self, *args, _original=original):
            if count[0] == stop_before:
                raise Crash
            count[0] += 1
            return _original(self, *args)

        monkeypatch.setattr(run_log.RunLog, name, crashing)
    with pytest.raises(Crash):
        cli.main(flags(data_dir, tmp_path))
    monkeypatch.undo()
    folder = tmp_path / FOLDER
    capsys.readouterr()
    if (folder / run_log.LATEST).exists():
        assert load_checkpoint(folder / run_log.LATEST)["epoch"] == 0  # epoch 1's commit never happened
        assert cli.main(flags(data_dir, tmp_path, "-resume", str(folder / run_log.LATEST))) == 0
        out = capsys.readouterr().out
        assert f"resumed {folder / run_log.LATEST}: epochs 0 to 0 done" in out
        assert [line["epoch"] for line in epoch_lines(out)] == [1]
    else:  # stopped before the first epoch was committed: nothing to resume, the folder must be overwritten
        assert cli.main(flags(data_dir, tmp_path)) == 2
        assert "-overwrite" in capsys.readouterr().err
        assert cli.main(flags(data_dir, tmp_path, "-overwrite")) == 0
    expected = read_metrics(expected_folder)
    assert without_times(read_metrics(folder)) == without_times(expected)
    assert tensorboard_curves(folder) == tensorboard_curves(expected_folder)
    for name in (run_log.LATEST, run_log.BEST):
        got, want = load_checkpoint(folder / name), load_checkpoint(expected_folder / name)
        assert got["epoch"] == want["epoch"] and got["max_test_acc"] == want["max_test_acc"], name
        assert without_times(got["history"]) == without_times(want["history"])
        for key in want["net"]:
            assert torch.equal(got["net"][key], want["net"][key]), (name, key)


def test_a_process_killed_before_its_last_commit_resumes_to_the_same_record(reference, data_dir, tmp_path):  # noqa: F811
    """The same in a real process ended by os._exit (no cleanup, no flush): after epoch 1's best-or-not
    checkpoint and before its latest one."""
    stop = (
        "import os, sys\n"
        "from flashspike.examples import conv_fashion_mnist as cli, run_log\n"
        "original = run_log.RunLog._save\n"
        "def save(self, name, data):\n"
        "    if name == run_log.LATEST and len(self.history) == 1:\n"
        "        os._exit(9)\n"
        "    original(self, name, data)\n"
        "run_log.RunLog._save = save\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", stop, *flags(data_dir, tmp_path)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == 9, killed.stderr[-2000:]
    folder = tmp_path / FOLDER
    assert [line["epoch"] for line in epoch_lines(killed.stdout)] == [0, 1]
    assert [r["epoch"] for r in read_metrics(folder)] == [0, 1]  # epoch 1's line, not yet committed
    assert cli.main(flags(data_dir, tmp_path, "-resume", str(folder / run_log.LATEST))) == 0
    expected_folder, _ = reference
    assert without_times(read_metrics(folder)) == without_times(read_metrics(expected_folder))
    assert tensorboard_curves(folder) == tensorboard_curves(expected_folder)


def test_resume_refuses_a_checkpoint_that_would_discard_later_epochs(reference, data_dir, tmp_path, capsys):  # noqa: F811
    copy = copy_of(reference[0], tmp_path)
    assert load_checkpoint(copy / run_log.BEST)["epoch"] == 0  # the reference's best epoch is its first
    assert cli.main(flags(data_dir, tmp_path, "-epochs", "3", "-resume", str(copy / run_log.BEST))) == 2
    assert "resuming would discard epochs 1 to 1" in capsys.readouterr().err


# ------------------------------------------------------------------ checkpoint files

def test_a_corrupted_checkpoint_is_refused(reference, data_dir, tmp_path, capsys):  # noqa: F811
    folder, _ = reference
    data = bytearray((folder / run_log.LATEST).read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    corrupted = tmp_path / "checkpoint_latest.pth"
    corrupted.write_bytes(bytes(data))
    assert cli.main(flags(data_dir, tmp_path, "-epochs", "3", "-resume", str(corrupted))) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: -resume {corrupted}: ") and err.count("\n") == 1
    assert ": corrupted: its contents hash to SHA-256" in err  # the bytes sit inside the payload


@pytest.mark.parametrize(
    "content, message",
    [
        ({"epoch": 3, "net": {}}, "not a checkpoint of this example"),  # a foreign torch.save file
        ("payload without rng", "an incomplete checkpoint: it lacks rng"),
        ("payload without args", "an incomplete checkpoint: its flags lack T"),
    ],
)
def test_foreign_and_partial_checkpoints_are_refused(reference, data_dir, tmp_path, capsys, content, message):  # noqa: F811
    from flashspike.examples.checkpoint import checkpoint_bytes

    folder, _ = reference
    path = tmp_path / "checkpoint.pth"
    if isinstance(content, dict):
        torch.save(content, path)
    else:
        payload = load_checkpoint(folder / run_log.LATEST)
        if "rng" in content:
            del payload["rng"]
        else:
            payload["args"] = {}
        path.write_bytes(checkpoint_bytes(payload))
    assert cli.main(flags(data_dir, tmp_path, "-resume", str(path))) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: -resume {path}: ") and message in err and err.count("\n") == 1


def test_stale_temporaries_are_removed_and_only_those(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has ended
    stale = tmp_path / f".checkpoint_latest.pth.tmp{dead_pid}"
    live = tmp_path / f".checkpoint_max.pth.tmp{os.getppid()}"  # a running process's write in progress
    own = tmp_path / f".metrics.jsonl.tmp{os.getpid()}"
    foreign = tmp_path / f".notes.txt.tmp{dead_pid}"
    not_a_pid = tmp_path / ".checkpoint_latest.pth.tmpx"
    for path in (stale, live, own, foreign, not_a_pid):
        path.write_bytes(b"half")
    assert remove_stale_temporaries(tmp_path, (run_log.METRICS, run_log.LATEST, run_log.BEST)) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live, own, foreign, not_a_pid))


def test_a_run_removes_the_temporaries_a_killed_write_left(data_dir, tmp_path, capsys):  # noqa: F811
    folder = tmp_path / FOLDER
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = folder / f".checkpoint_latest.pth.tmp{int(dead.stdout)}"
    stale.write_bytes(b"half a checkpoint")
    assert cli.main(flags(data_dir, tmp_path, "-epochs", "1", "-max_batches", "1")) == 0
    assert not stale.exists() and f"removed {stale.name}" in capsys.readouterr().out


# ------------------------------------------------------------------ resume flags, the same folder twice

def test_resume_refuses_changed_run_flags_and_takes_left_out_ones(reference, data_dir, tmp_path, capsys):  # noqa: F811
    copy = copy_of(reference[0], tmp_path)
    latest = str(copy / run_log.LATEST)
    for changed, message in ((["-lr", "0.05"], "-lr 0.1 (given: 0.05)"), (["-T_max", "8"], "-T_max 64 (given: 8)")):
        assert cli.main(flags(data_dir, tmp_path, "-resume", latest, *changed)) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: -resume {latest}: the run was trained with {message}")
    assert not (tmp_path / "T_4_b_32_SGD_lr_0.05_CosALR_64_c4").exists()
    # Only -resume and -epochs: the rest (-channels 4, -b 32, -max_batches 2) comes from the checkpoint.
    argv = ["-device", "cpu", "-data_dir", str(data_dir), "-resume", latest, "-epochs", "3"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"resumed {latest}: epochs 0 to 1 done" in out and "continuing at epoch 2 of 3" in out
    assert "-channels 4" in out and "-max_batches 2" in out
    # the flags as they would be typed: no "-amp False", no value that was never set
    (resumed_line,) = [line for line in out.splitlines() if line.startswith("resumed ")]
    flags_text = resumed_line.split("with the run's flags ")[1]
    assert "False" not in flags_text and "None" not in flags_text and "True" not in flags_text
    assert cli.parse_args(["-device", "cpu", *flags_text.split()]).channels == 4
    assert [line["epoch"] for line in epoch_lines(out)] == [2]
    assert [r["epoch"] for r in read_metrics(copy)] == [0, 1, 2]


def test_the_same_command_twice_is_refused_unless_overwriting(data_dir, tmp_path, capsys):  # noqa: F811
    argv = flags(data_dir, tmp_path, "-epochs", "1", "-max_batches", "1")
    assert cli.main(argv) == 0
    before = read_metrics(tmp_path / FOLDER)
    capsys.readouterr()
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert "already holds a run" in err and "-resume" in err and "-overwrite" in err
    assert out == ""  # refused before the start-up header, let alone the flags or the network
    assert read_metrics(tmp_path / FOLDER) == before  # untouched
    assert cli.main(argv + ["-overwrite"]) == 0
    assert len(read_metrics(tmp_path / FOLDER)) == 1
    assert len(list((tmp_path / FOLDER).glob("events.out.tfevents.*"))) == 1


# ------------------------------------------------------------------ bad input: one line, no traceback

@pytest.mark.parametrize(
    "extra, message",
    [
        (["-lr", "-1"], "-lr must be a finite number above 0, got -1.0"),
        (["-lr=nan"], "-lr must be a finite number above 0, got nan"),
        (["-lr=inf"], "-lr must be a finite number above 0, got inf"),
        (["-momentum", "-1"], "-momentum must be a finite number from 0 to 1, got -1.0"),
        (["-device", "foo"], "-device foo: not a device flashspike trains on"),
        (["-b", "700"], "-b 700 is more than the 640 training images of each process"),
        (["-seed", str(2**70)], f"-seed must be a whole number from -2**63 to 2**64 - 1 (what torch.manual_seed "
                                f"takes), got {2**70}"),
        (["-seed", str(-2**63 - 1)], "-seed must be a whole number from -2**63 to 2**64 - 1"),
        (["-threads", "-2"], "-threads must be 0 (PyTorch's choice) or more, got -2"),
        (["-T", "10000000"], "-T 10000000, -b 32 and -channels 4 need at least 14.4 TiB for a training step, and "
                             "cpu has "),
        (["-channels", "100000"], "-channels 100000 needs about 86.5 TiB for the network's weights, gradients and "
                                  "optimizer state alone, and cpu has "),
    ],
)
def test_bad_values_are_one_error_line(data_dir, tmp_path, capsys, extra, message):  # noqa: F811
    assert cli.main(flags(data_dir, tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_an_abbreviated_or_unknown_flag_is_refused(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.parse_args(["-bogus", "1"])  # argparse alone reads it as -b ogus
    assert caught.value.code == 2
    assert "unrecognized flag -bogus" in capsys.readouterr().err
    assert cli.parse_args(["-seed", "-3", "-b", "8"]).seed == -3  # a negative number is a value, not a flag


@pytest.mark.parametrize("out_dir", ["/proc/no-such-folder", "a-file", "bad\0name"])
def test_an_unwritable_out_dir_fails_before_the_data_loads(tmp_path, capsys, monkeypatch, out_dir):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.chdir(tmp_path)
    loaded = []
    monkeypatch.setattr(cli, "load_fashion_mnist", lambda *a, **k: loaded.append(1))
    assert cli.main(["-device", "cpu", "-channels", "4", "-out_dir", out_dir]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the run's log folder") and err.count("\n") == 1
    assert not loaded


def test_a_folder_that_becomes_unwritable_mid_run_keeps_the_printed_results(data_dir, tmp_path, capsys,  # noqa: F811
                                                                           monkeypatch):
    def read_only(self, name, data):  # what a folder made read-only does to the next file written
        raise PermissionError(13, "Permission denied", str(self.folder / name))

    monkeypatch.setattr(run_log.RunLog, "_save", read_only)
    assert cli.main(flags(data_dir, tmp_path)) == 1
    captured = capsys.readouterr()
    assert [line["epoch"] for line in epoch_lines(captured.out)] == [0]  # printed before the failure
    assert captured.err.startswith("error: epoch 0's results (printed above) could not be recorded in ")
    assert "Permission denied" in captured.err and captured.err.count("\n") == 1


@pytest.mark.parametrize("case", ["100 images", "no images", "2-D label file"])
def test_odd_data_files_are_one_error_line(tmp_path, capsys, case):
    generator = torch.Generator().manual_seed(1)
    images, labels = synthetic_split(100, generator)
    for split in ("train", "t10k"):
        fm.write_idx(tmp_path / f"{split}-images-idx3-ubyte", images)
        fm.write_idx(tmp_path / f"{split}-labels-idx1-ubyte", labels)
    if case == "no images":
        fm.write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:0])
        fm.write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:0])
    if case == "2-D label file":
        fm.write_idx(tmp_path / "train-labels-idx1-ubyte", labels.view(10, 10))
    code = cli.main(["-device", "cpu", "-channels", "4", "-data_dir", str(tmp_path), "-out_dir", str(tmp_path / "logs"),
                     "-epochs", "1"])
    err = capsys.readouterr().err
    expected = {
        "100 images": (2, "-b 128 is more than the 100 training images of each process"),
        "no images": (1, "t10k-images-idx3-ubyte: holds no images"),
        "2-D label file": (1, "magic number 2050 (0x00000802), but an IDX label file starts with 2049"),
    }[case]
    assert (code, expected[1] in err) == (expected[0], True), err
    assert err.startswith("error: ") and err.count("\n") == 1


# ------------------------------------------------------------------ one run holds its folder

HOLD = ("import sys\nfrom pathlib import Path\nfrom flashspike.examples import run_log\n"
        "folder = Path(sys.argv[1]); folder.mkdir(parents=True, exist_ok=True)\n"
        "run_log.hold_folder(folder); print('held', flush=True); sys.stdin.read()\n")


def test_a_held_folder_is_refused_naming_the_holder_until_it_dies(reference, data_dir, tmp_path, capsys):  # noqa: F811
    """Another process holds the run's folder (as a run that trains there does): a new run, -overwrite
    and -resume on it are refused in one line naming that process, and touch nothing; once the holder
    is killed (no cleanup), the folder is free again."""
    folder = tmp_path / FOLDER
    shutil.copytree(reference[0], folder)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        for extra in (["-overwrite"], ["-epochs", "3", "-resume", str(folder / run_log.LATEST)], []):
            assert cli.main(flags(data_dir, tmp_path, *extra)) == 2, extra
            err = capsys.readouterr().err
            assert err == f"error: {folder} is in use by another run (process {holder.pid}), which writes its " \
                          "record there; wait for it to end, or give another -out_dir\n", extra
        assert {path.name: path.read_bytes() for path in folder.iterdir() if path.name != run_log.HOLDER} == before
    finally:
        holder.kill()  # SIGKILL: the lock goes with the process
        holder.wait()
    assert cli.main(flags(data_dir, tmp_path, "-epochs", "3", "-resume", str(folder / run_log.LATEST))) == 0
    assert [r["epoch"] for r in read_metrics(folder)] == [0, 1, 2]
    assert not (folder / run_log.HOLDER).exists()  # a run that ends leaves its folder free and clean


def test_a_training_run_holds_its_folder(data_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    second = []
    original = run_log.RunLog._save

    def save_and_try_a_second_run(self, name, data):
        if not second:  # while the first run records its first epoch
            second.append("started")
            second[:] = [cli.main(flags(data_dir, tmp_path, "-overwrite")), capsys.readouterr().err]
        original(self, name, data)

    monkeypatch.setattr(run_log.RunLog, "_save", save_and_try_a_second_run)
    assert cli.main(flags(data_dir, tmp_path)) == 0
    assert second[0] == 2 and f"is in use by another run (process {os.getpid()})" in second[1]
    assert [r["epoch"] for r in read_metrics(tmp_path / FOLDER)] == [0, 1]  # one run's record, unmixed


# ------------------------------------------------------------------ resume on the run's own data

def other_data(tmp_path, seed=7):
    directory = tmp_path / f"other-data-{seed}"
    directory.mkdir()
    generator = torch.Generator().manual_seed(seed)
    for split, n in (("train", 640), ("t10k", 160)):
        images, labels = synthetic_split(n, generator)
        fm.write_idx(directory / f"{split}-images-idx3-ubyte", images)
        fm.write_idx(directory / f"{split}-labels-idx1-ubyte", labels)
    return directory


def test_a_checkpoint_records_its_data_and_resume_reads_it_by_default(reference, data_dir, tmp_path,  # noqa: F811
                                                                      monkeypatch, capsys):
    """The README's resume command carries no -data_dir: the run goes on with the data it was trained on
    (the checkpoint's record), not with the data found by default elsewhere, and ends as the run that
    never stopped."""
    expected_folder, _ = reference
    recorded = load_checkpoint(expected_folder / run_log.LATEST)["data"]
    assert recorded == {"dir": str(data_dir.resolve()),
                        "fingerprint": fm.fingerprint(fm.load_fashion_mnist(data_dir, allow_download=False))}
    copy = copy_of(expected_folder, tmp_path)
    cut = load_checkpoint(copy / run_log.BEST)  # epoch 0: resume from it as if the run had stopped there
    (copy / run_log.LATEST).write_bytes((copy / run_log.BEST).read_bytes())
    assert cut["epoch"] == 0
    monkeypatch.setattr(fm, "DEBIAN_DIR", other_data(tmp_path))  # what the default would find
    monkeypatch.chdir(tmp_path)
    assert cli.main(["-device", "cpu", "-resume", str(copy / run_log.LATEST), "-epochs", "2"]) == 0
    assert f"from {data_dir.resolve()}" in capsys.readouterr().out
    assert without_times(read_metrics(copy)) == without_times(read_metrics(expected_folder))


def test_resume_refuses_other_data_unless_allowed(reference, data_dir, tmp_path, capsys):  # noqa: F811
    copy = copy_of(reference[0], tmp_path)
    latest = str(copy / run_log.LATEST)
    other = other_data(tmp_path)
    assert cli.main(["-device", "cpu", "-resume", latest, "-epochs", "3", "-data_dir", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: -resume {latest}: the run was trained on the data in {data_dir.resolve()} ")
    assert f"and {other.resolve()} holds other data" in err and "-allow_other_data" in err and err.count("\n") == 1
    assert [r["epoch"] for r in read_metrics(copy)] == [0, 1]  # untouched
    # The same data elsewhere, uncompressed: the same fingerprint, taken.
    same = tmp_path / "same-data"
    same.mkdir()
    for path in data_dir.iterdir():
        fm.write_idx(same / path.name.removesuffix(".gz"), fm.read_idx(path)[1])
    assert cli.main(["-device", "cpu", "-resume", latest, "-epochs", "3", "-data_dir", str(same)]) == 0
    capsys.readouterr()
    assert cli.main(["-device", "cpu", "-resume", latest, "-epochs", "4", "-data_dir", str(other),
                     "-allow_other_data"]) == 0
    assert load_checkpoint(copy / run_log.LATEST)["data"]["dir"] == str(other.resolve())  # recorded from now on


# ------------------------------------------------------------------ checkpoints that are not ours, or damaged inside

class _Code:
    """A pickled object whose loading would run a command (creating a file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _damaged(payload, case, tmp_path):
    from flashspike.examples.checkpoint import checkpoint_bytes

    if case == "epoch as text":
        payload["epoch"] = "1"
    elif case == "no shuffle state":
        del payload["rng"]["shuffle"]
    elif case == "short history":
        payload["history"] = payload["history"][:1]
    elif case == "another network":
        payload["net"] = {**payload["net"], "static_conv.0.weight": torch.zeros(8, 1, 3, 3)}
    elif case == "random bytes":
        return bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).to(torch.uint8).tolist())
    elif case == "code":
        payload = {"net": _Code(tmp_path / "ran")}
    return checkpoint_bytes(payload)


@pytest.mark.parametrize("case, message", [
    ("epoch as text", "its epoch is '1', not a whole number >= 0"),
    ("no shuffle state", "its random generators' states lack shuffle"),
    ("short history", "its history holds 1 epochs' metrics, but it covers epochs 0 to 1"),
    ("another network", "does not fit this network and optimizer: its network is another: 1 tensors of other "
                        "shapes (e.g. static_conv.0.weight: [8, 1, 3, 3] saved, [4, 1, 3, 3] here)"),
    ("random bytes", "not a readable checkpoint of this example (UnpicklingError: "),
    ("code", "not a readable checkpoint of this example (UnpicklingError: Trying to load unsupported GLOBAL"),
])
def test_a_checkpoint_damaged_inside_or_not_ours_is_one_error_line(reference, data_dir, tmp_path, capsys,  # noqa: F811
                                                                  case, message):
    path = tmp_path / "checkpoint_latest.pth"
    path.write_bytes(_damaged(load_checkpoint(reference[0] / run_log.LATEST), case, tmp_path))
    assert cli.main(flags(data_dir, tmp_path, "-epochs", "3", "-resume", str(path))) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: -resume {path}: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "ran").exists()  # nothing in the file ran


# ------------------------------------------------------------------ Ctrl-C

def test_ctrl_c_says_what_was_saved_and_how_to_resume(reference, data_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    from flashspike.examples import trainer

    original = trainer.Trainer.train_epoch
    epochs = []

    def interrupted_in_epoch_1(self, *args):
        epochs.append(1)
        if len(epochs) == 2:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(trainer.Trainer, "train_epoch", interrupted_in_epoch_1)
    assert cli.main(flags(data_dir, tmp_path)) == 130
    err = capsys.readouterr().err
    latest = tmp_path / FOLDER / run_log.LATEST
    assert err.count("\n") == 1 and err.startswith(f"interrupted: {latest} holds epochs 0 to 0"), err
    command = shlex.split(err.split("continue with: ")[1])
    assert command[:3] == ["python", "-m", "flashspike.examples.conv_fashion_mnist"]
    monkeypatch.undo()
    assert cli.main(command[3:]) == 0  # the printed command continues the run to the uninterrupted record
    assert without_times(read_metrics(tmp_path / FOLDER)) == without_times(read_metrics(reference[0]))


def test_ctrl_c_before_any_epoch_says_nothing_was_saved(data_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    from flashspike.examples import trainer

    def interrupt(self, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.Trainer, "train_epoch", interrupt)
    assert cli.main(flags(data_dir, tmp_path)) == 130
    err = capsys.readouterr().err
    assert err == f"interrupted: no epoch of this run was recorded in {tmp_path / FOLDER}; start it again (with " \
                  "-overwrite if it says the folder holds a run)\n"


def test_a_real_ctrl_c_prints_one_line(data_dir, tmp_path):  # noqa: F811
    """SIGINT, as a terminal's Ctrl-C sends it, to a process training: one line, no traceback."""
    # Unbuffered: each epoch's line arrives as it is printed, so the interrupt comes early in the run
    # (a pipe's buffer could hold the lines of many epochs, on a slow machine of all of them).
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    # Python leaves SIGINT ignored when it starts with it ignored (a child of a background job in a shell
    # without job control): the example runs with the handler a terminal's Python has.
    main = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "sys.argv[0] = 'conv_fashion_mnist'; runpy.run_module('flashspike.examples.conv_fashion_mnist', "
            "run_name='__main__', alter_sys=True)")
    process = subprocess.Popen([sys.executable, "-c", main, *flags(data_dir, tmp_path, "-epochs", "1000")], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        latest = tmp_path / FOLDER / run_log.LATEST
        for line in process.stdout:
            if line.startswith("epoch=") and latest.exists():
                break
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130
    assert re.fullmatch(rf"interrupted: {re.escape(str(latest))} holds epochs 0 to \d+, recorded whole \(the epoch "
                        r"under way is lost\); continue with: python -m flashspike\.examples\.conv_fashion_mnist "
                        rf"-resume {re.escape(str(latest))} -epochs 1000 -device cpu\n", err), err


def test_threads_sets_pytorchs_cpu_threads(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)
    argv = ["-device", "cpu", "-channels", "4", "-b", "8", "-bench_steps", "1", "-data_dir", "/nonexistent"]
    assert cli.main(argv) == 0 and chosen == []  # by default PyTorch keeps its own choice
    assert cli.main(argv + ["-threads", "1"]) == 0 and chosen == [1]
