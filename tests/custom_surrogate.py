"""A user-defined surrogate, written as the flashspike.surrogate docstring tells users to: the tests run
it on every backend and compile its CUDA."""

import math

from flashspike import surrogate


class Gaussian(surrogate.SurrogateFunction):
    """g'(x) = exp(−x²/(2σ²)) / (σ·√(2π)); g(x) = (1 + erf(x / (σ·√2))) / 2."""

    hyperparameters = {"sigma": surrogate.POSITIVE}

    def __init__(self, sigma: float = 0.5, spiking: bool = True):
        super().__init__(spiking, sigma=sigma)

    @staticmethod
    def primitive(x, sigma, m):
        return 0.5 * (1.0 + m.erf(x / (sigma * math.sqrt(2.0))))

    @staticmethod
    def derivative(x, sigma, m):
        return m.exp(-(x * x) / (2 * sigma * sigma)) / (sigma * math.sqrt(2 * math.pi))


def every_surrogate(spiking: bool):
    """One instance of every built-in surrogate, off its defaults, and the user-defined one."""
    return [surrogate.PiecewiseQuadratic(1.5, spiking), surrogate.PiecewiseExp(2.0, spiking),
            surrogate.Sigmoid(3.0, spiking), surrogate.SoftSign(1.5, spiking), surrogate.ATan(2.5, spiking),
            surrogate.NonzeroSignLogAbs(1.5, spiking), surrogate.Erf(1.5, spiking),
            surrogate.PiecewiseLeakyReLU(0.7, 0.05, spiking), surrogate.SquarewaveFourierSeries(3, 6.0, spiking),
            surrogate.S2NN(3.0, 0.7, spiking), surrogate.QPseudoSpike(2.5, spiking), Gaussian(0.6, spiking)]


def surrogate_id(sg) -> str:
    return type(sg).__name__ + ("" if sg.spiking else "-smooth")
