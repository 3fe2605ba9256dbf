"""The user-defined surrogate of flashspike.surrogate's docstring, run from the docstring itself, so
that the tests hold the documented example on every backend (and nvcc compiles its CUDA)."""

import re
import textwrap

from flashspike import surrogate


def _documented_example() -> type:
    """The class defined by the code block (after ``::``) of the surrogate module's docstring."""
    block = re.search(r"::\n\n((?:    .*\n|\n)+)", surrogate.__doc__).group(1)
    scope = {"__name__": __name__}
    exec(compile(textwrap.dedent(block), "<flashspike.surrogate docstring>", "exec"), scope)
    return scope["Gaussian"]


Gaussian = _documented_example()


def every_surrogate(spiking: bool):
    """One instance of every built-in surrogate, off its defaults, and the user-defined one."""
    return [surrogate.PiecewiseQuadratic(1.5, spiking), surrogate.PiecewiseExp(2.0, spiking),
            surrogate.Sigmoid(3.0, spiking), surrogate.SoftSign(1.5, spiking), surrogate.ATan(2.5, spiking),
            surrogate.NonzeroSignLogAbs(1.5, spiking), surrogate.Erf(1.5, spiking),
            surrogate.PiecewiseLeakyReLU(0.7, 0.05, spiking), surrogate.SquarewaveFourierSeries(3, 6.0, spiking),
            surrogate.S2NN(3.0, 0.7, spiking), surrogate.QPseudoSpike(2.5, spiking), Gaussian(0.6, spiking)]


def surrogate_id(sg) -> str:
    return type(sg).__name__ + ("" if sg.spiking else "-smooth")
