"""Spikformer's fused attention product against the per-head matmuls it replaces: the same values and
gradients (bit for bit where every sum is exact), token-major outputs and gradients, and the matmul
path wherever the fused one does not apply."""

import pytest
import torch

from flashspike import functional, neuron
from flashspike.model import token_attention
from conftest import kernel_device


@pytest.fixture
def fused_on_this_device(monkeypatch):
    device = kernel_device("triton")
    monkeypatch.setattr(token_attention, "_runs_fused", lambda x: True)
    return device


def _spikes(T, N, C, L, heads, dtype, device, seed=0):
    """Token-major spikes ``[T, N, 3·C, L]`` (memory ``[T, N, L, 3·C]``), about one in three firing."""
    g = torch.Generator().manual_seed(seed)
    spikes = (torch.rand(T, N, L, 3 * C, generator=g) < 0.35).to(dtype).to(device)
    return spikes.transpose(2, 3).requires_grad_()


def _dyadic(shape, dtype, device, seed=1):
    """Multiples of 1/8 in [-2, 2]: their sums of products with spikes are exact in every float type."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-16, 17, shape, generator=g) / 8).to(dtype).to(device)


def _fused(out: torch.Tensor) -> bool:
    """Whether ``out`` (a view of the product) came from the fused product."""
    node = out.grad_fn
    while node is not None and type(node).__name__ in ("TransposeBackward0", "ViewBackward0"):
        node = node.next_functions[0][0]
    return node is not None and type(node).__name__.startswith("_FusedProduct")


CASES = [  # T, N, C, L, heads: CIFAR's 8x8 tokens; tokens and head widths that are not powers of two
    (2, 3, 64, 64, 2), (1, 2, 48, 49, 3), (2, 1, 32, 10, 1), (1, 2, 72, 16, 3),
]


@pytest.mark.parametrize("T, N, C, L, heads", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_the_fused_product_equals_the_per_head_matmuls(fused_on_this_device, T, N, C, L, heads, dtype):
    device = fused_on_this_device
    fused_in = _spikes(T, N, C, L, heads, dtype, device)
    reference_in = fused_in.detach().clone().requires_grad_()  # (the same strides)
    fused = token_attention.attention_product(fused_in, heads, 0.125)
    expected = token_attention.reference_product(reference_in, heads, 0.125)
    assert _fused(fused) and not _fused(expected)
    assert fused.shape == (T, N, C, L) and fused.stride() == expected.stride()  # token-major
    torch.testing.assert_close(fused, expected, rtol=0, atol=0)
    grad = _dyadic(fused.shape, dtype, device).transpose(2, 3).contiguous().transpose(2, 3)  # token-major
    fused.backward(grad)
    expected.backward(grad)
    assert fused_in.grad.stride() == fused_in.stride()
    if dtype == torch.float32:  # every product and sum exact: bit for bit
        torch.testing.assert_close(fused_in.grad, reference_in.grad, rtol=0, atol=0)
    else:  # rounded where matmul rounds, each product's float32 sum in its own order
        torch.testing.assert_close(fused_in.grad, reference_in.grad, rtol=1e-2, atol=1e-2)


def test_a_gradient_of_another_layout_gives_the_same_gradients(fused_on_this_device):
    device = fused_on_this_device
    spikes = _spikes(2, 2, 32, 16, 2, torch.float32, device)
    out = token_attention.attention_product(spikes, 2, 0.125)
    grad = _dyadic(out.shape, torch.float32, device)  # channel-major
    out.backward(grad)
    reference_in = spikes.detach().clone().requires_grad_()
    token_attention.reference_product(reference_in, 2, 0.125).backward(grad)
    torch.testing.assert_close(spikes.grad, reference_in.grad, rtol=0, atol=0)


def test_the_matmul_path_serves_what_the_kernels_do_not(fused_on_this_device, monkeypatch):
    device = fused_on_this_device
    called = []
    monkeypatch.setattr(token_attention, "reference_product", lambda *args: called.append(args) or "matmul")
    channel_major = _spikes(1, 2, 32, 16, 2, torch.float32, device).detach().contiguous()
    too_many_tokens = _spikes(1, 1, 32, 257, 2, torch.float32, device)
    integers = _spikes(1, 1, 32, 16, 2, torch.float32, device).detach().to(torch.int32)
    for qkv in (channel_major, too_many_tokens, integers):
        assert token_attention.attention_product(qkv, 2, 0.125) == "matmul"
    assert len(called) == 3


def test_without_the_kernels_device_the_matmul_path_runs():
    # (CPU tensors are not the fused kernels' unless a test says so)
    spikes = _spikes(1, 2, 32, 16, 2, torch.float32, "cpu")
    out = token_attention.attention_product(spikes, 2, 0.125)
    assert not _fused(out)


def test_spikes_kept_in_bits_give_the_same_values_and_gradients(fused_on_this_device):
    # Q, K and V a neuron's token-major spikes: kept in one bit each (the only tensor the product keeps
    # is uint8, an eighth of their count), unpacked for the backward; everything else as kept whole.
    device = fused_on_this_device
    T, N, C, L, heads = 2, 3, 32, 16, 2
    node = neuron.MultiStepIFNode(backend="triton", v_threshold=0.5)
    drive = torch.rand(T, N, L, 3 * C, generator=torch.Generator().manual_seed(4)).to(device)
    results = []
    for in_bits in (False, True):
        x = drive.transpose(2, 3).requires_grad_()
        spikes = node(x)
        functional.reset_net(node)
        assert spikes.transpose(2, 3).is_contiguous()  # token-major, as the kernels take them
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = token_attention.attention_product(spikes, heads, 0.125, in_bits=in_bits)
        assert _fused(out)
        out.backward(_dyadic(out.shape, torch.float32, device))
        results.append((out, x.grad))
        kept = [(t.dtype, t.numel()) for t in saved]
        assert kept == ([(torch.uint8, spikes.numel() // 8)] if in_bits else [(torch.float32, spikes.numel())])
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_in_bits_keeps_whole_what_no_history_proves_spikes(fused_on_this_device):
    spikes = _spikes(1, 2, 32, 16, 2, torch.float32, fused_on_this_device)  # a leaf: no neuron made it
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = token_attention.attention_product(spikes, 2, 0.125, in_bits=True)
    assert _fused(out) and [t.dtype for t in saved] == [torch.float32]


@pytest.mark.parametrize("in_bits", [False, True], ids=["spikes kept", "spikes in bits"])
def test_the_neuron_on_the_product_computes_it_again_instead_of_keeping_h(fused_on_this_device, monkeypatch,
                                                                            in_bits):
    device = fused_on_this_device
    T, N, C, L, heads = 2, 3, 32, 16, 2
    drive = torch.rand(T, N, L, 3 * C, generator=torch.Generator().manual_seed(5)).to(device)
    weights = _dyadic((T, N, C, L), torch.float32, device)
    qkv_neuron = neuron.MultiStepIFNode(backend="triton", v_threshold=0.5)
    attention_neuron = neuron.MultiStepLIFNode(tau=2.0, v_threshold=0.5, backend="triton")

    unpacked = []
    unpack = token_attention.spike_bits.unpack
    monkeypatch.setattr(token_attention.spike_bits, "unpack", lambda *args: unpacked.append(1) or unpack(*args))

    def train_step():
        x = drive.transpose(2, 3).requires_grad_()
        product = token_attention.attention_product(qkv_neuron(x), heads, 0.125, in_bits=in_bits)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            fired = attention_neuron(product)
        unpacked.clear()
        (fired * weights).sum().backward()
        functional.reset_net(qkv_neuron)
        functional.reset_net(attention_neuron)
        h_sized = [t for t in saved if t.is_floating_point() and t.numel() == product.numel()]
        return fired, x.grad, h_sized

    fired, grad, h_sized = train_step()
    assert h_sized == []  # the product's own kept spikes (or bits) instead
    # in bits: unpacked once, for the product computed again, and that serves the product's backward
    assert len(unpacked) == in_bits
    monkeypatch.setattr(token_attention.recompute, "mark", lambda *args: None)  # the neuron keeps H
    fired_kept, grad_kept, h_sized = train_step()
    assert len(h_sized) == 1 and len(unpacked) == in_bits  # (the product's backward unpacks)
    assert fired.sum() > 0 and grad.abs().sum() > 0
    assert torch.equal(fired, fired_kept) and torch.equal(grad, grad_kept)
