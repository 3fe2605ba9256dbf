"""What the benchmarks' charts share: matplotlib, imported only when a chart is drawn."""

from __future__ import annotations

import sys


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend, or None (with a notice on stderr) where
    matplotlib is missing: a benchmark's numbers never depend on its charts."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        print(f"charts skipped: matplotlib is not importable ({error}); pip install matplotlib", file=sys.stderr)
        return None
    return plt
