"""``python -m flashspike``: the version, what this machine can run, and the commands that come with it."""

from __future__ import annotations

import argparse
import sys

from . import __version__

COMMANDS = """commands:
  python -m flashspike.examples.conv_fashion_mnist --help   train the Fashion-MNIST example
  python -m flashspike.examples.plot --help                 draw the curves of training runs
  python -m flashspike.benchmarks.neuron --help             time the neuron backends
  python -m flashspike.benchmarks.train --help              time training steps of deep SNNs"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flashspike",
        description="Report flashspike's version and environment: PyTorch, the CUDA device, and which "
        "neuron backends run here (and, for those that do not, why).",
        epilog=COMMANDS, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"flashspike {__version__}")
    parser.parse_args(argv)
    from .environment import report  # after parsing: --help and --version need no torch probe

    print(report())
    print()
    print(COMMANDS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
