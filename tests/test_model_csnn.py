"""flashspike.model.csnn: the Fashion-MNIST tutorial's network, one definition for the example and
the training benchmark."""

import pytest
import torch

from flashspike.model.csnn import CSNN


def test_it_rates_each_class_from_static_images():
    net = CSNN(T=2, channels=4, num_classes=7)
    rates = net(torch.rand(3, 1, 28, 28))
    assert rates.shape == (3, 7)
    assert torch.all((rates >= 0) & (rates <= 1))  # a firing rate: spikes averaged over T
    assert CSNN(T=2, channels=4)(torch.rand(1, 1, 28, 28)).shape == (1, 10)  # Fashion-MNIST's ten by default


@pytest.mark.parametrize("num_classes", [0, -1, "10", 10.0, True])
def test_a_bad_num_classes_is_named(num_classes):
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        CSNN(T=2, channels=4, num_classes=num_classes)


def test_the_example_and_the_benchmark_build_this_class():
    from flashspike.benchmarks import train_worker
    from flashspike.examples import conv_fashion_mnist

    assert conv_fashion_mnist.CSNN is CSNN
    built = train_worker.build_flashspike({"model": "fmnist", "T": 2, "backend": "torch",
                                           "memory_format": "contiguous"}, 10)
    assert type(built) is CSNN
