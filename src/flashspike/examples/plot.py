"""Accuracy and loss curves of one or more training runs, drawn into PNGs.

    python -m flashspike.examples.plot logs/T_4_b_128_SGD_lr_0.1_CosALR_64_amp_cupy logs/..._s -o curves

Each LOGDIR is a run's log folder from :mod:`flashspike.examples.conv_fashion_mnist`. Its per-epoch
numbers come from metrics.jsonl, or from the TensorBoard event files when that is absent. Writes
accuracy.png and loss.png (train dashed with hollow circles, test solid with squares, one colour per run) into
``-o DIR``: by default the LOGDIR itself when there is one, else the current folder; it prints the
paths it wrote.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import __version__

__all__ = ["CURVES", "read_run", "plot_runs", "main"]

CURVES = ("train_acc", "test_acc", "train_loss", "test_loss")


def _from_metrics(path: Path) -> dict[str, dict[int, float]]:
    curves = {key: {} for key in CURVES}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            epoch = int(record["epoch"])
            for key in CURVES:
                curves[key][epoch] = float(record[key])  # a resumed run's repeat replaces the earlier one
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}, line {number}: not a metrics record ({error!r})") from None
    return curves


def _from_tensorboard(log_dir: Path) -> dict[str, dict[int, float]]:
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as error:
        raise ImportError(
            f"{log_dir} has only TensorBoard event files, and reading them needs the 'tensorboard' package "
            f"({error}); pip install tensorboard"
        ) from None
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every point
    accumulator.Reload()
    available = set(accumulator.Tags().get("scalars", []))
    # Events come in file order, so a resumed run's later value for an epoch wins.
    return {key: {e.step: e.value for e in accumulator.Scalars(key)} if key in available else {} for key in CURVES}


def read_run(log_dir) -> dict[str, list[tuple[int, float]]]:
    """``{curve: [(epoch, value), ...]}`` sorted by epoch, for each name in :data:`CURVES`."""
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        raise FileNotFoundError(f"{log_dir}: no such log folder")
    metrics = log_dir / "metrics.jsonl"
    if metrics.is_file():
        curves = _from_metrics(metrics)
    elif any(log_dir.glob("events.out.tfevents.*")):
        curves = _from_tensorboard(log_dir)
    else:
        raise FileNotFoundError(f"{log_dir}: neither metrics.jsonl nor a TensorBoard event file is there")
    return {key: sorted(points.items()) for key, points in curves.items()}


def plot_runs(runs: dict[str, dict], out_dir) -> list[Path]:
    """Draw ``{label: read_run(...)}`` into out_dir/accuracy.png and out_dir/loss.png."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(f"plotting needs matplotlib ({error}); pip install matplotlib") from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for quantity, ylabel in (("acc", "accuracy"), ("loss", "loss (MSE)")):
        figure, axes = plt.subplots(figsize=(7, 4.5))
        drawn_epochs = set()
        for index, (label, curves) in enumerate(runs.items()):
            colour = f"C{index % 10}"
            # markers: a run of one epoch is one point, which a line alone would not draw; train's are
            # hollow circles and test's filled squares, so the two splits differ without their lines
            for split, style, marker, face in (("train", "--", "o", "none"), ("test", "-", "s", colour)):
                points = curves[f"{split}_{quantity}"]
                if points:
                    epochs, values = zip(*points)
                    drawn_epochs.update(epochs)
                    axes.plot(epochs, values, style, marker=marker, markersize=4, color=colour,
                              markerfacecolor=face, label=f"{label} ({split})")
        if len(drawn_epochs) == 1:  # matplotlib would span a few hundredths of an epoch around it
            (epoch,) = drawn_epochs
            axes.set_xlim(epoch - 1, epoch + 1)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("epoch")
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        figure.tight_layout()
        path = out_dir / ("accuracy.png" if quantity == "acc" else "loss.png")
        figure.savefig(path, dpi=120)
        plt.close(figure)
        written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flashspike.examples.plot",
        description="Draw train/test accuracy and loss per epoch of one or more runs into accuracy.png and loss.png.",
    )
    parser.add_argument("--version", action="version", version=f"flashspike {__version__}")
    parser.add_argument("log_dirs", nargs="+", metavar="LOGDIR", help="a run's log folder (metrics.jsonl or TensorBoard files)")
    parser.add_argument("-o", "--out", default=None,
                        help="folder for the PNGs (default: the LOGDIR when there is one, else the current folder)")
    parser.add_argument("--labels", nargs="+", default=None, help="one legend label per LOGDIR (default: the folder names)")
    args = parser.parse_args(argv)
    labels = args.labels or [Path(d).resolve().name for d in args.log_dirs]
    if len(labels) != len(args.log_dirs):
        parser.error(f"{len(labels)} labels for {len(args.log_dirs)} log folders")
    if len(set(labels)) != len(labels):
        parser.error("two runs would share a legend label; give --labels")
    try:
        runs = {label: read_run(d) for label, d in zip(labels, args.log_dirs)}
        out = args.out or (args.log_dirs[0] if len(args.log_dirs) == 1 else ".")
        for path in plot_runs(runs, out):
            print(f"wrote {path.resolve()}")
    except (OSError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
