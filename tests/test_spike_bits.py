"""Spike inputs kept in one bit: packing, which inputs count as spikes, and gradients bit for bit equal
to PyTorch's own backward (CPU through Triton's interpreter, CUDA on both kernel backends)."""

import copy

import pytest
import torch
from torch import nn

from flashspike import functional, layer, neuron, surrogate
from flashspike.backends import autograd
from flashspike.memory import spike_bits
from conftest import kernel_device


@pytest.mark.parametrize("width", spike_bits.WIDTHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "odd"])
def test_pack_and_unpack_restore_values_and_strides(dtype, layout, width):
    g = torch.Generator().manual_seed(width)
    shape = (3, 5, 7) if layout == "odd" else (4, 3, 5, 6)
    x = torch.randint(0, 1 << width, shape, generator=g).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    order = spike_bits.memory_order(x)
    packed = spike_bits.pack(x, order, width)
    per_byte = 8 // width
    assert packed.dtype == torch.uint8 and packed.numel() == -(-x.numel() // per_byte)
    back = spike_bits.unpack(packed, x.shape, x.stride(), order, dtype, width)
    assert back.stride() == x.stride() and back.dtype == dtype and torch.equal(back, x)
    # the first element in memory is the lowest field of the first byte
    first = x.permute(order).reshape(-1)[:per_byte]
    assert int(packed[0]) == sum(int(v) << (i * width) for i, v in enumerate(first.tolist()))


def test_widths_are_the_fewest_bits_for_a_bound():
    assert [spike_bits.width_for(b) for b in (1, 2, 3, 4, 15, 16, 255)] == [1, 2, 2, 4, 4, 8, 8]


def test_views_with_gaps_or_repeats_are_not_packed():
    x = torch.zeros(4, 6)
    assert spike_bits.memory_order(x[:, :3]) is None
    assert spike_bits.memory_order(torch.zeros(6).expand(4, 6)) is None


def _spikes(backend, device, **kwargs):
    node = neuron.MultiStepIFNode(backend=backend, **kwargs).to(device)
    x = (torch.rand(3, 2, 4, 6, 6, device=device) * 2).requires_grad_()
    return node, x, node(x)


def test_spike_outputs_are_recognised_through_views_pools_and_casts():
    device = kernel_device("triton")
    _, x, spikes = _spikes("triton", device)
    flat = spikes.flatten(0, 1)
    assert spike_bits.is_spike_input(spikes) and spike_bits.is_spike_input(flat)
    assert spike_bits.is_spike_input(nn.functional.max_pool2d(flat, 2))
    assert spike_bits.is_spike_input(flat.to(torch.bfloat16))
    # anything that may hold other values than 0 and 1, or has no history to prove it
    assert not spike_bits.is_spike_input(spikes + spikes)  # SEW's ADD
    assert not spike_bits.is_spike_input(nn.functional.dropout(flat, 0.5))
    assert not spike_bits.is_spike_input(nn.functional.avg_pool2d(flat, 2))
    assert not spike_bits.is_spike_input(spikes.detach())
    assert not spike_bits.is_spike_input(x)


def test_sums_of_spikes_are_bounded_integers_and_other_arithmetic_is_not():
    device = kernel_device("triton")
    _, x, spikes = _spikes("triton", device)
    _, _, others = _spikes("triton", device, v_threshold=0.5)
    bound = spike_bits.integer_bound
    assert bound(spikes) == 1 and bound(spikes + others) == 2
    chain = (spikes + others).flatten(0, 1)
    assert bound(nn.functional.max_pool2d(chain, 2) + others.flatten(0, 1)[:, :, ::2, ::2].contiguous()) == 3
    assert bound(chain.to(torch.float16) + chain.to(torch.float16)) == 4
    assert bound(spikes * 2) is None and bound(spikes + 1) is None and bound(spikes - others) is None
    assert bound(torch.add(spikes, others, alpha=2)) is None and bound(spikes + x) is None
    assert bound(spikes + spikes.detach()) is None  # a part with no history proves nothing
    deep = spikes
    for _ in range(300):  # sums beyond 255 are kept as they are
        deep = deep + spikes
    assert bound(deep) is None


def test_spikes_are_recognised_through_the_byte_position_max_pool(monkeypatch):
    from flashspike.memory import pooling

    device = kernel_device("triton")
    monkeypatch.setattr(pooling, "_runs_fused", lambda x: True)
    _, _, spikes = _spikes("triton", device)
    pooled = pooling.BytePositionMaxPool2d(3, 2, 1)(spikes.flatten(0, 1))
    assert pooling.is_max_pool_output(pooled.grad_fn) and not pooling.is_max_pool_output(spikes.grad_fn)
    assert spike_bits.is_spike_input(pooled)
    assert not spike_bits.is_spike_input(pooling.BytePositionMaxPool2d(2)((spikes + spikes).flatten(0, 1)))


def test_potentials_smooth_surrogates_and_the_reference_are_not_spikes():
    device = kernel_device("triton")
    node, _, _ = _spikes("triton", device, store_v_seq=True)
    assert not spike_bits.is_spike_input(node.v_seq)
    _, _, smooth = _spikes("triton", device, surrogate_function=surrogate.Sigmoid(spiking=False))
    assert not spike_bits.is_spike_input(smooth)
    _, _, reference = _spikes("torch", "cpu")
    assert not spike_bits.is_spike_input(reference)


def test_the_neuron_says_which_output_holds_its_spikes():
    device = kernel_device("triton")
    node, _, spikes = _spikes("triton", device, store_v_seq=True)
    assert autograd.is_spike_output(spikes.grad_fn, spikes.output_nr)
    assert not autograd.is_spike_output(spikes.grad_fn, 1)  # the potential
    assert not autograd.is_spike_output((spikes * 1).grad_fn, 0)


def test_a_surrogate_mode_fixed_at_construction_is_read_as_the_kernels_ran_it():
    # PiecewiseLeakyReLU keeps the mode it was built with: assigning spiking=True afterwards changes
    # nothing, so the neuron's output is the smooth primitive and must not be kept in bits.
    device = kernel_device("triton")
    sg = surrogate.PiecewiseLeakyReLU(spiking=False)
    sg.spiking = True
    _, _, smooth = _spikes("triton", device, surrogate_function=sg)
    assert not sg.in_spiking_mode and not torch.all((smooth == 0) | (smooth == 1))
    assert not spike_bits.is_spike_input(smooth)


def _net(backend):
    torch.manual_seed(3)
    return nn.Sequential(
        layer.SeqToANNContainer(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)),
        neuron.MultiStepIFNode(backend=backend),
        layer.SeqToANNContainer(nn.Conv2d(4, 6, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(6)),
        neuron.MultiStepLIFNode(tau=2.0, backend=backend),
        layer.SeqToANNContainer(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 2 * 2, 5)),
        neuron.MultiStepIFNode(backend=backend),
    )


def _train_step(net, x, autocast_dtype):
    device_type = x.device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        out = net(x)
    (out.float().mean(0) * torch.arange(5.0, device=x.device)).sum().backward()
    functional.reset_net(net)
    return out, {name: p.grad.clone() for name, p in net.named_parameters()}


def _compare_paths(backend, device, autocast_dtype, memory_format=torch.contiguous_format):
    plain = _net(backend).to(device, memory_format=memory_format)
    bits = copy.deepcopy(plain)
    again = copy.deepcopy(plain)
    assert spike_bits.store_spike_inputs_in_bits(bits) == 3  # two convolutions and the linear layer
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(3, 4, 2, 8, 8, generator=g) * 3).to(device)
    saved = []

    def keep(tensor):
        saved.append(tensor)
        return tensor

    out_plain, grads_plain = _train_step(plain, x, autocast_dtype)
    # the control: PyTorch's own path, twice, agrees with itself
    assert all(torch.equal(grads_plain[n], g) for n, g in _train_step(again, x, autocast_dtype)[1].items())
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        out_bits, grads_bits = _train_step(bits, x, autocast_dtype)
    assert torch.equal(out_plain, out_bits)
    assert grads_plain.keys() == grads_bits.keys()
    for name in grads_plain:
        assert torch.equal(grads_plain[name], grads_bits[name]), name
    # the second convolution's input [12, 4, 8, 8] and the linear layer's [12, 24] (max-pooled spikes)
    # kept as bits; the first convolution's input is no spike train and is kept as it is
    # (cuDNN's BatchNorm keeps an empty uint8 reserve of its own)
    packed = sorted(t.numel() for t in saved if t.dtype == torch.uint8 and t.numel())
    assert packed == [12 * 24 // 8, 12 * 4 * 8 * 8 // 8]
    return plain, bits


@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16], ids=["float32", "autocast-bf16"])
def test_gradients_equal_pytorchs_own_bit_for_bit(autocast_dtype, reproducible):
    _compare_paths("triton", kernel_device("triton"), autocast_dtype)


def test_per_token_conv1d_projections_keep_their_spike_inputs_in_bits(reproducible):
    # A transformer block's projections (Spikformer's): kernel-1 Conv1d layers on [T·B, C, tokens] spikes.
    device = kernel_device("triton")
    torch.manual_seed(4)
    plain = nn.Sequential(
        neuron.MultiStepLIFNode(tau=2.0, backend="triton"),
        layer.SeqToANNContainer(nn.Conv1d(6, 8, kernel_size=1, bias=False), nn.BatchNorm1d(8)),
        neuron.MultiStepLIFNode(tau=2.0, backend="triton"),
        layer.SeqToANNContainer(nn.Conv1d(8, 6, kernel_size=3, padding=1, stride=2)),
    ).to(device)
    bits = copy.deepcopy(plain)
    assert spike_bits.store_spike_inputs_in_bits(bits) == 2
    assert repr(bits) == repr(plain)
    x = (torch.rand(3, 4, 6, 10, generator=torch.Generator().manual_seed(2)) * 3).to(device)
    saved = []
    results = []
    for net in (plain, bits):
        leaf = x.clone().requires_grad_()  # (spikes that need no gradient are not switched)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = net(leaf)
        (out * torch.linspace(-1, 1, out.numel(), device=device).view_as(out)).sum().backward()
        functional.reset_net(net)
        results.append((out, [p.grad for p in net.parameters()] + [leaf.grad]))
        if net is plain:
            saved.clear()
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))
    packed = sorted(t.numel() for t in saved if t.dtype == torch.uint8 and t.numel())
    assert packed == [12 * 6 * 10 // 8, 12 * 8 * 10 // 8]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cupy", "triton"])
def test_gradients_equal_pytorchs_own_bit_for_bit_gpu(backend, reproducible):
    device = kernel_device(backend)
    for autocast_dtype in (None, torch.float16):
        _compare_paths(backend, device, autocast_dtype, torch.channels_last)


def test_compiled_layers_take_their_ordinary_path(reproducible):
    # With every memory switch on, a compiled kernel-backend net is one graph (no switch breaks it) and
    # trains exactly as the same net compiled without the switches: in a graph, each switched layer
    # is its ordinary self.
    from flashspike.memory import batchnorm_recompute, pooling

    torch._dynamo.reset()
    device = kernel_device("triton")
    plain = _net("triton").to(device)
    lean, compiled_plain = copy.deepcopy(plain), copy.deepcopy(plain)
    spike_bits.store_spike_inputs_in_bits(lean)
    pooling.store_pool_indices_in_bytes(lean)
    batchnorm_recompute.recompute_h_after_batchnorm(lean)
    x = (torch.rand(3, 4, 2, 8, 8) * 3).to(device)
    out_plain, grads_plain = _train_step(plain, x, None)
    out_lean, grads_lean = _train_step(torch.compile(lean, backend="aot_eager", fullgraph=True), x, None)
    out_compiled, grads_compiled = _train_step(torch.compile(compiled_plain, backend="aot_eager", fullgraph=True), x,
                                               None)
    assert torch.equal(out_lean, out_compiled) and torch.equal(out_lean, out_plain)
    assert list(grads_lean) == list(grads_compiled) == ["_orig_mod." + name for name in grads_plain]
    for name, grad in grads_plain.items():
        assert torch.equal(grads_lean["_orig_mod." + name], grads_compiled["_orig_mod." + name]), name
        # against the eager net: the traced BatchNorm is not cuDNN's on a GPU, so its rounding differs there
        tolerance = dict(rtol=1e-4, atol=1e-5) if device == "cuda" else dict(rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(grads_lean["_orig_mod." + name], grad, **tolerance, msg=name)


@pytest.mark.parametrize("width", spike_bits.WIDTHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("count", [1, 13, 8 * 1024, 8 * 1024 + 5])
def test_triton_kernels_pack_as_the_pytorch_operations_do(dtype, count, width):
    device = kernel_device("triton")
    from flashspike.memory import spike_bits_triton

    g = torch.Generator().manual_seed(count)
    flat = torch.randint(0, 1 << width, (count,), generator=g).to(dtype).to(device)
    packed = spike_bits_triton.pack(flat, width)
    expected = spike_bits.pack(flat.cpu(), [0], width)  # the PyTorch operations (on the CPU)
    assert torch.equal(packed.cpu(), expected)
    back = torch.full_like(flat, float("nan"))
    spike_bits_triton.unpack_into(packed, back, width)
    assert torch.equal(back, flat)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cupy", "triton"])
def test_a_captured_training_step_keeps_spikes_in_bits_and_recomputes_h_gpu(backend, reproducible):
    # The packing kernels, the BatchNorm and neuron forwards run again in the backward, and their
    # buffers are captured with the step; replays train as the same steps run eagerly do.
    from flashspike import CapturedStep
    from flashspike.memory import batchnorm_recompute

    device = kernel_device(backend)
    eager, captured = _net(backend).to(device), _net(backend).to(device)
    for net in (eager, captured):
        spike_bits.store_spike_inputs_in_bits(net)
        assert batchnorm_recompute.recompute_h_after_batchnorm(net) == 2
    batches = [(torch.rand(3, 4, 2, 8, 8, device=device) * 3, torch.randint(0, 5, (4,), device=device))
               for _ in range(6)]

    def stepper(net, capture):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, fused=True)
        return CapturedStep(net, lambda out, y: nn.functional.cross_entropy(out.mean(0), y), optimizer,
                            warmup_steps=2, capture=capture)

    eager_step, replayed = stepper(eager, False), stepper(captured, True)
    for x, y in batches:
        torch.testing.assert_close(replayed(x, y), eager_step(x, y), rtol=1e-5, atol=1e-6)
    assert replayed.captured
    for (name, a), b in zip(eager.named_parameters(), captured.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_without_triton_the_pytorch_operations_pack(monkeypatch):
    # A CUDA tensor finds no Triton: None, and pack/unpack take the PyTorch operations. An error inside
    # flashspike's own kernel module, by contrast, is raised rather than taken for a missing Triton.
    from flashspike import optional_triton

    monkeypatch.setattr(optional_triton, "_kernel_modules", {})

    def no_triton():
        raise ImportError("no triton here")

    monkeypatch.setattr(optional_triton, "import_triton", no_triton)
    assert spike_bits._fused(torch.device("cuda", 0)) is None
    assert optional_triton.optional_kernels("flashspike.memory.pooling_triton") is None
    monkeypatch.setattr(optional_triton, "import_triton", lambda: None)
    with pytest.raises(ModuleNotFoundError):
        optional_triton.optional_kernels("flashspike.memory.no_such_kernels")


def test_a_spiking_self_attention_keeps_q_k_and_v_in_bits(reproducible):
    # The product Q (Kᵀ V) of spikes: Q, K and V (views with gaps of one neuron's output) kept in one
    # bit through that output, packed once; Kᵀ V, counts that no history proves bounded, as it is;
    # every output and gradient PyTorch's own.
    from flashspike.model.spikformer import SpikingSelfAttention

    device = kernel_device("triton")
    torch.manual_seed(6)
    plain = SpikingSelfAttention(8, num_heads=2, backend="triton").to(device)
    bits = copy.deepcopy(plain)
    assert spike_bits.store_spike_inputs_in_bits(bits) == 2 + 1  # two projections and the attention
    assert bits.keeps_spike_operands_in_bits and not plain.keeps_spike_operands_in_bits
    x = (torch.rand(3, 2, 8, 5, generator=torch.Generator().manual_seed(3)) > 0.6).float().to(device)
    saved, results = [], []
    for net in (plain, bits):
        saved.clear()
        leaf = x.clone().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = net(leaf)
        (out * torch.linspace(-1, 1, out.numel(), device=device).view_as(out)).sum().backward()
        functional.reset_net(net)
        results.append((out, [p.grad for p in net.parameters()] + [leaf.grad]))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))
    packed = {t.untyped_storage().data_ptr(): t.numel() for t in saved if t.dtype == torch.uint8 and t.numel()}
    # the neuron output that Q, K and V are views of ([3·2, 3·8, 5]), once; the output projection's input
    # (the input of the first projection is no neuron's output)
    assert sorted(packed.values()) == [6 * 8 * 5 // 8, 6 * 24 * 5 // 8]
    assert spike_bits.store_spike_inputs_in_bits(bits, enabled=False) == 3 and not bits.keeps_spike_operands_in_bits


def test_matmul_of_other_shapes_or_of_no_spikes_is_torchs():
    a, b = torch.randn(2, 3, 4, requires_grad=True), torch.randn(4, 5, requires_grad=True)
    assert spike_bits.matmul(a, b).grad_fn.name() == torch.matmul(a, b).grad_fn.name()  # broadcast: not taken
    c = torch.randn(2, 4, 5, requires_grad=True)
    assert spike_bits.matmul(a, c).grad_fn.name() == torch.matmul(a, c).grad_fn.name()  # no spikes


@pytest.mark.parametrize("backend", ["triton", "cupy"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "odd"])
def test_a_neuron_told_to_writes_its_spikes_bits_as_pack_packs_them(backend, dtype, layout):
    from flashspike.backends.packed_bits import kept_bits

    device = kernel_device(backend)
    shape = (3, 2, 3, 5, 5) if layout == "odd" else (3, 2, 4, 5, 6)  # 150 neurons a step (no whole bytes), or 240
    x = torch.rand(shape, generator=torch.Generator().manual_seed(7)) * 3
    if layout == "channels_last":
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(shape)
    x = x.to(dtype).to(device).requires_grad_()
    told, plain = (neuron.MultiStepLIFNode(tau=2.0, backend=backend).to(device) for _ in range(2))
    told.writes_spike_bits = True
    spikes, expected = told(x), plain(x)
    assert kept_bits(expected, 1) is None
    assert torch.equal(spikes, expected) and spikes.stride() == x.stride()
    bits = kept_bits(spikes, 1)
    # CUDA kernels write a byte per thread of eight 16-bit neurons; Triton's programs, whole bytes of any dtype
    writes = layout != "odd" and (backend == "triton" or dtype != torch.float32)
    if not writes:
        assert bits is None
        return
    fired = spikes.detach().cpu()
    assert 0 < fired.sum() < fired.numel()
    assert torch.equal(bits.cpu(), spike_bits.pack(fired, spike_bits.memory_order(fired), 1))
    # a view of all the spikes has them too; a view of a part, another width, a tensor changed since: none
    assert kept_bits(spikes.flatten(0, 1), 1) is bits
    assert kept_bits(spikes[1:], 1) is None and kept_bits(spikes, 2) is None
    with torch.no_grad():
        spikes.mul_(1)
    assert kept_bits(spikes, 1) is None
    # nothing is written where nothing is differentiated
    told.reset()
    with torch.no_grad():
        assert kept_bits(told(x), 1) is None


def test_layers_keep_the_bits_their_neuron_wrote(monkeypatch, reproducible):
    # The second convolution reads the first neuron's spikes, which that neuron packed as it wrote them:
    # only the linear layer's max-pooled spikes are packed by the layer itself. Outputs and gradients
    # stay PyTorch's own (_compare_paths).
    packed = []
    pack = spike_bits.pack
    monkeypatch.setattr(spike_bits, "pack", lambda x, order, width=1: packed.append(tuple(x.shape)) or pack(x, order,
                                                                                                             width))
    _compare_paths("triton", kernel_device("triton"), None)
    assert packed == [(12, 24)]


def test_a_sum_of_spikes_read_by_two_layers_is_packed_once(monkeypatch, reproducible):
    # SEW's ADD output read by a block's first convolution and by its downsampling one: one packing
    packed = []
    pack = spike_bits.pack
    monkeypatch.setattr(spike_bits, "pack", lambda x, order, width=1: packed.append(width) or pack(x, order, width))
    device = kernel_device("triton")
    torch.manual_seed(8)
    first, second = neuron.MultiStepIFNode(backend="triton"), neuron.MultiStepIFNode(backend="triton")
    convs = nn.ModuleList([nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, 1, stride=2)]).to(device)
    spike_bits.store_spike_inputs_in_bits(convs)
    x = (torch.rand(3, 2, 4, 6, 6, generator=torch.Generator().manual_seed(4)) * 2).to(device).requires_grad_()
    total = first(x) + second(x * 0.7)
    outs = [conv(total.flatten(0, 1)) for conv in convs]
    sum(out.sum() for out in outs).backward()
    assert packed == [2]
    plain = [nn.functional.conv2d(total.detach().flatten(0, 1), conv.weight, conv.bias, conv.stride, conv.padding)
             for conv in convs]
    assert all(torch.equal(a, b) for a, b in zip(outs, plain))
