"""flashspike.encoding: hand-computed trains, cycling and reset, SpikingJelly's outputs and random stream."""

import pytest
import torch
from torch import nn

from flashspike import encoding, functional


def _sj():
    return pytest.importorskip("spikingjelly.clock_driven.encoding")


def _train(encoder, x, T):
    return torch.stack([encoder(x) for _ in range(T)])


def test_latency_linear_by_hand():
    enc = encoding.LatencyEncoder(5)
    x = torch.tensor([1.0, 0.0, 0.5, 0.74])
    # t_f = round(4 * (1 - x)) = 0, 4, 2, 1
    assert _train(enc, x, 5).t().tolist() == [[1, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 1, 0, 0], [0, 1, 0, 0, 0]]
    assert enc(x).tolist() == [1, 0, 0, 0]  # step 0 again: the train cycles
    assert repr(enc) == "LatencyEncoder(T=5)"


def test_latency_log_spikes_large_values_first():
    enc = encoding.LatencyEncoder(4, "log")
    spikes = _train(enc, torch.tensor([1.0, 0.0]), 4)
    assert spikes[:, 0].tolist() == [1, 0, 0, 0] and spikes[:, 1].tolist() == [0, 0, 0, 1]
    with pytest.raises(NotImplementedError, match="'linear' or 'log'"):
        encoding.LatencyEncoder(4, "exp")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        encoding.LatencyEncoder(4)(torch.tensor([1.5]))


def test_stateful_encoder_ignores_later_inputs_until_reset():
    enc = encoding.LatencyEncoder(3)
    first = enc(torch.tensor([1.0]))
    assert first.item() == 1.0 and enc(torch.tensor([0.0])).item() == 0.0  # still the first input's train
    functional.reset_net(nn.Sequential(enc))
    assert enc.spike is None and enc.t == 0
    assert enc(torch.tensor([0.0])).item() == 0.0
    enc.reset()
    with pytest.raises(ValueError, match="needs the input"):
        enc()
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="positive int"):
            encoding.LatencyEncoder(bad)


def test_periodic_encoder_repeats_and_keeps_its_pattern_over_reset():
    pattern = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    enc = encoding.PeriodicEncoder(pattern)
    out = [enc().tolist() for _ in range(4)]
    assert out == [[1, 0], [0, 1], [1, 1], [1, 0]] and enc.T == 3
    functional.reset_net(nn.Sequential(enc))
    assert enc().tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"\[T, \*\]"):
        encoding.PeriodicEncoder(torch.tensor(1.0))


def test_weighted_phase_encoder_by_hand():
    enc = encoding.WeightedPhaseEncoder(3)
    x = torch.tensor([0.0, 0.5, 0.625, 0.875])
    # binary digits: 0.000, 0.100, 0.101, 0.111
    assert _train(enc, x, 3).t().tolist() == [[0, 0, 0], [1, 0, 0], [1, 0, 1], [1, 1, 1]]
    with pytest.raises(ValueError, match="1 - 2"):
        encoding.WeightedPhaseEncoder(3)(torch.tensor([0.9]))


def test_poisson_encoder_rate_and_extremes():
    torch.manual_seed(0)
    enc = encoding.PoissonEncoder()
    x = torch.tensor([0.0, 1.0, 0.3]).repeat(20000, 1)
    s = enc(x)
    assert s.dtype == x.dtype and s[:, 0].sum() == 0 and s[:, 1].sum() == 20000
    assert abs(s[:, 2].mean().item() - 0.3) < 0.02
    with pytest.raises(NotImplementedError):
        encoding.StatelessEncoder()(x)


@pytest.mark.parametrize("make", [
    lambda e: e.LatencyEncoder(6), lambda e: e.LatencyEncoder(6, "log"), lambda e: e.WeightedPhaseEncoder(4),
])
def test_stateful_encoders_match_spikingjelly(make):
    sj = _sj()
    x = torch.rand(3, 5) * (1 - 2 ** -4)
    theirs, ours = make(sj), make(encoding)
    assert torch.equal(_train(ours, x, 8), _train(theirs, x, 8))


def test_poisson_encoder_matches_spikingjelly_random_stream():
    sj = _sj()
    x = torch.rand(4, 7, dtype=torch.float64)
    torch.manual_seed(3)
    want = _train(sj.PoissonEncoder(), x, 5)
    torch.manual_seed(3)
    assert torch.equal(_train(encoding.PoissonEncoder(), x, 5), want)


def test_periodic_encoder_matches_spikingjelly():
    sj = _sj()
    pattern = (torch.rand(4, 3) > 0.5).float()
    assert torch.equal(_train(encoding.PeriodicEncoder(pattern), None, 9), _train(sj.PeriodicEncoder(pattern), None, 9))


def test_periodic_encoder_pattern_moves_with_the_module_and_stays_out_of_state_dict():
    enc = encoding.PeriodicEncoder(torch.ones(2, 3))
    assert enc.state_dict() == {}
    enc.double()
    assert enc().dtype == torch.float64 and enc.spike.dtype == torch.float64
    enc.encode(torch.zeros(4, 1))
    assert enc.T == 4 and enc().tolist() == [0.0]


@pytest.mark.parametrize("dtype", [torch.long, torch.uint8, torch.bool])
def test_poisson_encoder_names_an_input_that_is_no_probability(dtype):
    with pytest.raises(TypeError, match=r"PoissonEncoder's input \(firing probabilities\) must be a floating-point "
                                        rf"tensor .*got {dtype}; convert it first"):
        encoding.PoissonEncoder()(torch.ones(3, dtype=dtype))
