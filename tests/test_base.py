"""base.MemoryModule: memories registered, reset, detached, moved with the module, never in state_dict."""

import copy

import pytest
import torch
from torch import nn

from flashspike import base, functional, layer, neuron


class Counter(base.MemoryModule):
    """A stateful module as a user writes one: counts the spikes it has seen."""

    def __init__(self):
        super().__init__()
        self.register_memory("count", 0.0)
        self.register_memory("steps", 0)

    def forward(self, x):
        self.count = self.count + x
        self.steps += 1
        return x


def test_register_reset_and_list_memories():
    m = Counter()
    assert m.count == 0.0 and m.steps == 0
    m(torch.ones(3))
    m(torch.ones(3))
    assert m.count.tolist() == [2.0] * 3 and m.steps == 2
    assert [name for name, _ in m.named_memories()] == ["count", "steps"]
    assert list(m.memories())[1] == 2
    m.reset()
    assert m.count == 0.0 and m.steps == 0
    m.set_reset_value("steps", 10)
    m.reset()
    assert m.steps == 10


def test_a_tensor_reset_value_is_copied_each_reset():
    m = base.MemoryModule()
    m.register_memory("h", torch.zeros(2))
    m.h.add_(1.0)  # in place: must not change what reset() restores
    m.reset()
    assert m.h.tolist() == [0.0, 0.0]
    m.h.add_(1.0)
    m.reset()
    assert m.h.tolist() == [0.0, 0.0]


def test_registering_a_name_twice_is_refused():
    m = Counter()
    with pytest.raises(ValueError, match="'count'"):
        m.register_memory("count", 1.0)
    m.lin = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="'lin'"):
        m.register_memory("lin", 1.0)


def test_memories_are_not_in_state_dict():
    m = Counter()
    m(torch.ones(3))
    assert m.state_dict() == {} and list(m.buffers()) == []
    node = neuron.MultiStepLIFNode(store_v_seq=True)
    node(torch.rand(3, 2))
    assert node.state_dict() == {}
    assert [name for name, _ in node.named_memories()] == ["v", "v_threshold", "v_reset", "v_seq"]
    assert [name for name, _ in neuron.IFNode().named_memories()] == ["v", "v_threshold", "v_reset"]


def test_memory_names_match_spikingjelly():
    sj_neuron = pytest.importorskip("spikingjelly.clock_driven.neuron")
    for ours, theirs in [(neuron.IFNode(), sj_neuron.IFNode()), (neuron.MultiStepLIFNode(), sj_neuron.MultiStepLIFNode())]:
        assert dict(ours.named_memories()) == dict(theirs.named_memories())


def test_reset_net_resets_memory_modules():
    net = nn.Sequential(Counter(), layer.SeqToANNContainer(nn.Linear(3, 3)), neuron.MultiStepIFNode())
    net(torch.rand(2, 4, 3))
    functional.reset_net(net)
    assert net[0].count == 0.0 and net[0].steps == 0 and net[2].v == 0.0


@pytest.mark.parametrize("make", [lambda: neuron.MultiStepLIFNode(store_v_seq=True), lambda: neuron.LIFNode()])
def test_detach_cuts_the_graph_but_keeps_the_value(make):
    node = make()
    x1 = (torch.rand(3, 4) * 2).requires_grad_()
    x2 = (torch.rand(3, 4) * 2).requires_grad_()
    if isinstance(node, neuron.LIFNode):  # single-step: one step per call
        x1, x2 = x1[0].detach().requires_grad_(), x2[0].detach().requires_grad_()
    node(x1)
    v = node.v.detach().clone()
    assert node.v.requires_grad
    node.detach()
    assert not node.v.requires_grad and torch.equal(node.v, v)
    node(x2).sum().backward()
    assert x1.grad is None and x2.grad is not None


def test_state_follows_the_module_to_another_dtype():
    node = neuron.MultiStepIFNode(store_v_seq=True)
    node(torch.rand(3, 2))
    net = nn.Sequential(node)
    net.double()
    assert node.v.dtype == node.v_seq.dtype == torch.float64
    net.half()
    assert node.v.dtype == torch.float16
    m = base.MemoryModule()
    m.register_memory("h", torch.zeros(2))
    m.double()
    m.reset()
    assert m.h.dtype == torch.float64  # the reset value moved as well
    node.reset()
    net.float()
    assert node.v == 0.0  # a float memory stays a float


@pytest.mark.gpu
def test_state_follows_the_module_to_cuda():
    node = neuron.MultiStepIFNode(backend="torch", store_v_seq=True)
    node(torch.rand(3, 2))
    node.cuda()
    assert node.v.is_cuda and node.v_seq.is_cuda
    node(torch.rand(3, 2, device="cuda"))  # continues from the moved state, no reset needed
    node.cpu()
    assert node.v.device.type == "cpu"


def test_every_neuron_has_detach():
    for cls in (neuron.IFNode, neuron.LIFNode, neuron.MultiStepIFNode, neuron.MultiStepLIFNode, neuron.QIFNode):
        node = cls()
        assert isinstance(node, base.MemoryModule)
        node.detach()  # a float state: nothing to do, no error


def test_deepcopy_after_a_forward_under_autograd_copies_the_state_detached():
    net = nn.Sequential(layer.SeqToANNContainer(nn.Linear(3, 3)), neuron.MultiStepLIFNode(store_v_seq=True))
    net(torch.rand(2, 4, 3)).sum().backward()
    assert net[1].v.grad_fn is not None
    twin = copy.deepcopy(net)
    assert torch.equal(twin[1].v, net[1].v) and twin[1].v.grad_fn is None
    assert torch.equal(twin[1].v_seq, net[1].v_seq) and twin[1].v_seq.grad_fn is None
    assert twin[1].v is not net[1].v
    assert twin[0][0].weight is not net[0][0].weight
    assert torch.equal(twin[0][0].weight, net[0][0].weight)
    assert twin[1].surrogate_function is not net[1].surrogate_function
    assert twin[1].params().surrogate is twin[1].surrogate_function
    # The copy runs on its own.
    twin[1].v_threshold = 0.3
    assert net[1].v_threshold == 1.0
    functional.reset_net(twin)
    assert twin[1].v == 0.0 and net[1].v.shape == (4, 3)


def test_pickling_a_node_keeps_its_state_detached():
    import io

    node = neuron.MultiStepIFNode(store_v_seq=True)
    node((torch.rand(3, 2) * 2).requires_grad_())
    buffer = io.BytesIO()
    torch.save(node, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(loaded.v, node.v) and loaded.v.grad_fn is None and loaded.v_seq.shape == (3, 2)
    assert repr(loaded) == repr(node)
