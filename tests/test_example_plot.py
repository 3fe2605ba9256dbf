"""The curves command: reading metrics.jsonl and TensorBoard files, and drawing the PNGs."""

import json
import re
from pathlib import Path

import pytest

from flashspike.examples import plot

RECORDS = [
    {"epoch": 0, "train_loss": 0.05, "train_acc": 0.6, "test_loss": 0.04, "test_acc": 0.7, "total_time": 1.0},
    {"epoch": 1, "train_loss": 0.03, "train_acc": 0.8, "test_loss": 0.035, "test_acc": 0.75, "total_time": 1.0},
    # a resumed run repeats epoch 1: the later record is the one that counts
    {"epoch": 1, "train_loss": 0.02, "train_acc": 0.85, "test_loss": 0.03, "test_acc": 0.8, "total_time": 1.0},
]


def metrics_run(folder, records=RECORDS):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_reads_metrics_with_the_last_record_of_each_epoch(tmp_path):
    curves = plot.read_run(metrics_run(tmp_path / "run"))
    assert curves["test_acc"] == [(0, 0.7), (1, 0.8)]
    assert curves["train_loss"] == [(0, 0.05), (1, 0.02)]


def test_reads_tensorboard_files_when_there_is_no_metrics_file(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for epoch, acc in enumerate((0.25, 0.5, 0.75)):
        for key in plot.CURVES:
            writer.add_scalar(key, acc if "acc" in key else 1 - acc, epoch)
    writer.close()
    curves = plot.read_run(tmp_path)
    assert curves["train_acc"] == [(0, 0.25), (1, 0.5), (2, 0.75)]
    assert curves["test_loss"] == [(0, 0.75), (1, 0.5), (2, 0.25)]


def test_draws_two_runs_into_pngs(tmp_path, capsys):
    first = metrics_run(tmp_path / "multi")
    second = metrics_run(tmp_path / "single", RECORDS[:2])
    assert plot.main([str(first), str(second), "-o", str(tmp_path / "out"), "--labels", "m", "s"]) == 0
    written = [line.removeprefix("wrote ") for line in capsys.readouterr().out.splitlines()]
    assert written == [str(tmp_path / "out" / "accuracy.png"), str(tmp_path / "out" / "loss.png")]
    for path in written:
        data = Path(path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000  # a drawn figure, not an empty file


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d, "no such log folder"),
        (lambda d: d.mkdir() or d, "neither metrics.jsonl nor a TensorBoard event file"),
        (lambda d: metrics_run(d, [{"epoch": 0}]), r"metrics.jsonl, line 1: not a metrics record"),
    ],
)
def test_a_folder_without_curves_is_a_clear_error(tmp_path, capsys, make, message):
    folder = make(tmp_path / "run")
    assert plot.main([str(folder), "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(folder) in err
    assert re.search(message, err)


def test_labels_must_match_the_folders(tmp_path):
    run = metrics_run(tmp_path / "run")
    with pytest.raises(SystemExit) as caught:
        plot.main([str(run), "--labels", "a", "b"])
    assert caught.value.code == 2
    with pytest.raises(SystemExit):
        plot.main([str(run), str(run)])  # the same name twice: the legend could not tell them apart


def test_one_run_goes_into_its_own_folder_with_markers(tmp_path, capsys, monkeypatch):
    """A one-epoch run is a point per curve: drawn as a marker (a line through one point is blank), and
    by default into the run's folder, whose paths are printed."""
    import matplotlib.figure

    run = metrics_run(tmp_path / "run", RECORDS[:1])
    drawn = []
    original = matplotlib.figure.Figure.savefig

    limits = []

    def savefig(figure, *args, **kwargs):
        drawn.extend((line.get_marker(), len(line.get_xdata())) for axes in figure.axes for line in axes.lines)
        limits.extend(axes.get_xlim() for axes in figure.axes)
        return original(figure, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    monkeypatch.chdir(tmp_path)
    assert plot.main([str(run)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {run / 'accuracy.png'}", f"wrote {run / 'loss.png'}"]
    assert drawn and all(marker not in (None, "None", "", " ") and points == 1 for marker, points in drawn), drawn
    assert drawn[0][0] != drawn[1][0], "train and test points must differ by more than their (invisible) lines"
    assert limits == [(-1.0, 1.0)] * 2, "epoch 0 alone gets an axis of whole epochs around it"
    assert not (tmp_path / "accuracy.png").exists()
