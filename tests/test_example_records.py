"""The example's run record under failure: a process stopped between any two writes of an epoch's
record, a corrupted checkpoint, temporaries a killed write left behind, a resumed run given other
flags, a second run into the same folder, and every bad input answered by one `error:` line.

Training runs here are tiny (4 channels, 2 batches of 32 synthetic images an epoch) and in-process.
"""

import os
import shutil
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
    assert [line["epoch"] for line in epoch_lines(out)] == [2]
    assert [r["epoch"] for r in read_metrics(copy)] == [0, 1, 2]


def test_the_same_command_twice_is_refused_unless_overwriting(data_dir, tmp_path, capsys):  # noqa: F811
    argv = flags(data_dir, tmp_path, "-epochs", "1", "-max_batches", "1")
    assert cli.main(argv) == 0
    before = read_metrics(tmp_path / FOLDER)
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "-resume" in err and "-overwrite" in err
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
        (["-device", "foo"], "-device foo: not a device this example trains on"),
        (["-b", "700"], "-b 700 is more than the 640 training images of each process"),
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
