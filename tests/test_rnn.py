"""flashspike.rnn: cells by hand, stacks against their cells, SpikingJelly's single-layer numbers."""

import pytest
import torch

from flashspike import rnn, surrogate


def _sj():
    sj_rnn = pytest.importorskip("spikingjelly.clock_driven.rnn")
    from spikingjelly.clock_driven import surrogate as sj_surrogate
    return sj_rnn, sj_surrogate


def test_lstm_cell_by_hand():
    cell = rnn.SpikingLSTMCell(1, 1, bias=False, surrogate_function1=surrogate.ATan())
    with torch.no_grad():
        cell.linear_ih.weight.copy_(torch.tensor([[1.0], [1.0], [1.0], [-1.0]]))  # i, f, g fire on x > 0; o never
        cell.linear_hh.weight.zero_()
    h, c = cell(torch.tensor([[2.0]]), (torch.zeros(1, 1), torch.tensor([[3.0]])))
    assert c.item() == 3.0 * 1 + 1 * 1 and h.item() == 0.0
    h, c = cell(torch.tensor([[-1.0]]))  # zeros for hc; x < 0: i, f, g are 0, o fires
    assert (h.item(), c.item()) == (0.0, 0.0)


def test_gru_and_vanilla_cells_by_hand():
    gru = rnn.SpikingGRUCell(1, 1, bias=False, surrogate_function1=surrogate.ATan())
    with torch.no_grad():
        gru.linear_ih.weight.copy_(torch.tensor([[1.0], [-1.0], [1.0]]))  # r = 1, z = 0, n = 1 for x > 0
        gru.linear_hh.weight.zero_()
    assert gru(torch.tensor([[1.0]]), torch.tensor([[5.0]])).item() == 1.0  # (1 - z)·n + z·h
    vanilla = rnn.SpikingVanillaRNNCell(2, 1, bias=False, surrogate_function=surrogate.ATan())
    with torch.no_grad():
        vanilla.linear_ih.weight.copy_(torch.tensor([[1.0, -1.0]]))
        vanilla.linear_hh.weight.fill_(1.0)
    assert vanilla(torch.tensor([[0.2, 0.5]])).item() == 0.0
    assert vanilla(torch.tensor([[0.2, 0.5]]), torch.tensor([[1.0]])).item() == 1.0
    assert vanilla.weight_ih() is vanilla.linear_ih.weight and vanilla.bias_hh() is None


def test_cell_parameters_are_uniform_in_the_hidden_bound():
    cell = rnn.SpikingLSTMCell(3, 16, surrogate_function1=surrogate.ATan())
    for p in cell.parameters():
        assert p.abs().max() <= 0.25
    with pytest.raises(ValueError, match="spiking"):
        rnn.SpikingGRUCell(2, 2, surrogate_function1=surrogate.ATan(), surrogate_function2=surrogate.ATan(spiking=False))


@pytest.mark.parametrize("cls, extra", [(rnn.SpikingLSTM, 2), (rnn.SpikingGRU, 2), (rnn.SpikingVanillaRNN, 1)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_stack_equals_its_cells_step_by_step(cls, extra, bidirectional):
    torch.manual_seed(0)
    sgs = [surrogate.ATan(spiking=False)] * extra
    net = cls(3, 4, 2, True, 0, False, bidirectional, *sgs).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    y, states = net(x)
    D = 2 if bidirectional else 1
    assert y.shape == (5, 2, 4 * D)
    # Reference: layer by layer, each direction its own loop over t.
    inp = x
    finals = []
    for layer in range(2):
        outs = []
        for cells, steps in [(net.cells, range(5))] + ([(net.cells_reverse, range(4, -1, -1))] if bidirectional else []):
            s, seq = None, {}
            for t in steps:
                s = cells[layer](inp[t], s)
                seq[t] = s[0] if isinstance(s, tuple) else s
            outs.append(torch.stack([seq[t] for t in range(5)]))
            finals.append(s)
        inp = torch.cat(outs, -1)
    torch.testing.assert_close(y, inp)
    # States: forward cells of every layer first, then the reverse cells.
    order = [0, 2, 1, 3] if bidirectional else [0, 1]
    h = states[0] if isinstance(states, tuple) else states
    assert h.shape == (2 * D, 2, 4)
    for k, i in enumerate(order):
        want = finals[i][0] if isinstance(finals[i], tuple) else finals[i]
        torch.testing.assert_close(h[k], want)
    # Feeding the states back is accepted.
    net(x, states)
    with pytest.raises(ValueError, match="num_layers"):
        net(x, torch.zeros(1, 2, 4, dtype=torch.float64) if extra == 1 else (torch.zeros(1), torch.zeros(1)))
    with pytest.raises(ValueError, match=r"\[T, N, input_size\]"):
        net(x[0])


def test_dropout_between_layers():
    torch.manual_seed(0)
    net = rnn.SpikingVanillaRNN(3, 50, 2, dropout_p=0.5, invariant_dropout_mask=True,
                                surrogate_function=surrogate.ATan(spiking=False))
    x = torch.randn(4, 2, 3)
    net.eval()
    y_eval, _ = net(x)
    net.train()
    y_train, _ = net(x)
    assert not torch.equal(y_eval, y_train)
    with pytest.raises(ValueError, match="dropout_p"):
        rnn.SpikingGRU(3, 4, 1, dropout_p=1.0, surrogate_function1=surrogate.ATan())


def test_default_surrogate_is_erf():
    cell = rnn.SpikingLSTMCell(2, 3)
    assert isinstance(cell.surrogate_function1, surrogate.Erf) and cell.surrogate_function1.alpha == 2.0


@pytest.mark.parametrize("name, n_sg", [("SpikingLSTM", 2), ("SpikingGRU", 2), ("SpikingVanillaRNN", 1)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_single_layer_matches_spikingjelly(name, n_sg, bidirectional):
    sj_rnn, sj_surrogate = _sj()
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    results = []
    for lib, sg in ((sj_rnn, sj_surrogate), (rnn, surrogate)):
        torch.manual_seed(7)
        sgs = [sg.ATan(), sg.ATan()][:n_sg]
        net = getattr(lib, name)(4, 5, 1, True, 0, False, bidirectional, *sgs).double()
        xi = x.clone().requires_grad_()
        y, _ = net(xi)
        (y * torch.linspace(-1, 1, y.shape[-1], dtype=torch.float64)).sum().backward()
        results.append((y, xi.grad, list(net.state_dict())))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])
    assert results[1][2] == results[0][2]
