"""The transformers' training step in the training benchmark's layout (weights and input channels_last,
fp16 autocast) moves no activation into another layout, except the few copies a spiking self-attention
cannot do without.

Seen from PyTorch's dispatcher, one forward and backward is audited for what costs a CUDA run a layout
change: a copy whose output is laid out unlike its input (``.contiguous()``, a ``reshape`` that cannot
be a view, a neuron's gradient copied to its input's layout); an element-wise op whose operands of one
shape lie in different layouts (an add across layouts runs element by element, not vectorized); a
convolution or batch norm whose operands PyTorch copies inside the op on CUDA (a permuted Conv1d input,
a gradient unlike its input, a 3-d batch-norm input that is not channel-major), or that hands cuDNN an
input and a weight of different layouts (cuDNN then converts between NCHW and NHWC). The rules for those
ops are PyTorch's, stated beside them; on the CPU they are checked, on CUDA they would cost time.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from flashspike import functional
from flashspike.benchmarks import train_worker
from flashspike.model import token_attention
from conftest import kernel_device

aten = torch.ops.aten
# The benchmark's models at a size the CPU runs in seconds, with every kind of layer the CIFAR-10
# configurations have (4x4 patches: two pooled stem stages; the Spike-Driven Transformer's '0011' stem).
SMALL_CONFIGS = {
    "spikformer": dict(img_size_h=32, img_size_w=32, patch_size=4, embed_dims=32, num_heads=2, mlp_ratio=4.0,
                       depths=2),
    "spike_driven_transformer": dict(embed_dims=32, num_heads=2, mlp_ratio=4.0, depths=2, pooling_stat="0011"),
}
ELEMENTWISE = {aten.add.Tensor, aten.add_.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.mul_.Tensor,
               aten.div.Tensor, aten.where.self}
BATCH_NORMS = {aten.native_batch_norm.default, aten._native_batch_norm_legit.default,
               aten._native_batch_norm_legit_functional.default, aten.cudnn_batch_norm.default}
BATCH_NORM_BACKWARDS = {aten.native_batch_norm_backward.default, aten.cudnn_batch_norm_backward.default}


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Elements at the same places: equal strides wherever a dimension has more than one element."""
    return all(x == y or size == 1 for x, y, size in zip(a.stride(), b.stride(), a.shape))


def _channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)


def _layout_of_pair(x: torch.Tensor, weight: torch.Tensor):
    """The memory format a CUDA convolution of 4-d ``x`` and ``weight`` runs in (channels_last when
    either is channels_last, as ``cudnn_conv_suggest_memory_format`` has it), or None when one of them
    is in neither (PyTorch copies it)."""
    if not all(t.is_contiguous() or _channels_last(t) for t in (x, weight)):
        return None
    if all(_channels_last(t) for t in (x, weight)):
        return torch.channels_last
    return torch.contiguous_format if all(t.is_contiguous() for t in (x, weight)) else None


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _where() -> str:
    node = torch._C._current_autograd_node()
    return f"in the backward's {node.name()}" if node is not None else "in the forward"


class LayoutAudit(TorchDispatchMode):
    """Everything of one step that changes a tensor's layout or mixes layouts (see the module's text):
    ``copies`` (op, shape, bytes, where), ``mixed`` (description, bytes written) and ``converted``
    (description, bytes of the tensor converted)."""

    def __init__(self):
        super().__init__()
        self.copies, self.mixed, self.converted = [], [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._audit(func, args, out)
        return out

    def _copy(self, func, source: torch.Tensor) -> None:
        self.copies.append((func.__name__, tuple(source.shape), _bytes(source), _where()))

    def _audit(self, func, args, out) -> None:
        if func is aten.copy_.default:
            target, source = args[0], args[1]
            if (isinstance(source, torch.Tensor) and source.shape == target.shape and source.numel() > 1
                    and 0 not in source.stride() and not _same_layout(source, target)):
                self._copy(func, source)
        elif func in (aten.clone.default, aten._to_copy.default):
            if args[0].numel() > 1 and not _same_layout(args[0], out):
                self._copy(func, args[0])
        elif func in ELEMENTWISE:
            dense = [a for a in args if isinstance(a, torch.Tensor) and a.numel() > 1 and 0 not in a.stride()]
            if len(dense) == 2 and dense[0].shape == dense[1].shape and not _same_layout(*dense):
                self.mixed.append((f"{func.__name__} of {tuple(dense[0].shape)}, strides {dense[0].stride()} and "
                                   f"{dense[1].stride()}, {_where()}", _bytes(out)))
        elif func is aten.convolution.default:
            self._convolution(args[0], args[1], None)
        elif func is aten.convolution_backward.default:
            self._convolution(args[1], args[2], args[0])
        elif func in BATCH_NORMS:
            self._batch_norm(args[0], None)
        elif func in BATCH_NORM_BACKWARDS:
            self._batch_norm(args[1], args[0])

    def _convolution(self, x, weight, grad) -> None:
        where = f"convolution of {tuple(x.shape)} {_where()}"
        if x.dim() == 3:
            # PyTorch's _convolution: "avoid accidentally going through NHWC for permuted 3d input",
            # input.contiguous(); then the 1-d convolution runs as a 2-d one of [N, C, 1, L].
            if not x.is_contiguous():
                self.converted.append((f"{where}: a permuted Conv1d input, copied to channel-major", _bytes(x)))
            x, weight = x.contiguous().unsqueeze(2), weight.unsqueeze(2)
            grad = None if grad is None else grad.unsqueeze(2)
        layout = _layout_of_pair(x, weight)
        if layout is None:
            self.converted.append((f"{where}: input strides {x.stride()} and weight strides {weight.stride()} "
                                   "in different layouts", _bytes(x)))
        elif grad is not None and not grad.is_contiguous(memory_format=layout):
            self.converted.append((f"{where}: its gradient, strides {grad.stride()}, unlike its input", _bytes(grad)))

    def _batch_norm(self, x, grad) -> None:
        where = f"batch norm of {tuple(x.shape)} {_where()}"
        # cuDNN's batch norm (3-d and 4-d inputs) gets input.contiguous(input.suggest_memory_format()),
        # and its backward the gradient in the input's format: channel-major, or channels_last in 4-d.
        if not (x.is_contiguous() or _channels_last(x)):
            self.converted.append((f"{where}: input strides {x.stride()}, copied to channel-major", _bytes(x)))
        elif grad is not None and not _same_layout(grad, x):
            self.converted.append((f"{where}: its gradient, strides {grad.stride()}, unlike its input", _bytes(grad)))


def _audited_training_step(model_name: str, device: str):
    """The audit of one training step of ``model_name`` as the training benchmark builds and feeds it
    (channels_last), and the spec it was built from."""
    spec = dict(model=model_name, T=2, B=2, backend="triton", input="cifar", model_config=SMALL_CONFIGS[model_name],
                memory_format="channels_last")
    torch.manual_seed(0)
    model = train_worker.build_flashspike(spec, 10)
    train_worker.adapt_stem(model, 3)
    model = model.to(device, memory_format=torch.channels_last).train()
    batches, _, _ = train_worker.make_batches(spec, torch.device(device), torch.channels_last)
    x, labels = batches[0]
    audit = LayoutAudit()
    with audit, torch.autocast(torch.device(device).type, dtype=torch.float16):
        loss = F.cross_entropy(train_worker.class_scores(model(x)), labels)
    with audit:
        loss.backward()
    functional.reset_net(model)
    return audit, spec


@pytest.mark.parametrize("model_name, attention", [("spikformer", "fused"), ("spikformer", "matmul"),
                                                    ("spike_driven_transformer", None)])
def test_a_training_step_in_the_benchmark_layout_copies_no_activation(model_name, attention, monkeypatch):
    if attention is not None:  # Spikformer's attention product: fused (on CUDA), or per-head matmuls
        monkeypatch.setattr(token_attention, "_runs_fused", lambda x: attention == "fused")
    audit, spec = _audited_training_step(model_name, kernel_device("triton"))
    assert audit.converted == []
    assert audit.mixed == []
    if attention != "matmul":
        assert audit.copies == []
        return
    # What per-head matmuls cannot do without: Q, K and V gathered per head for the batched products,
    # the heads' outputs merged into tokens, and that merge undone for the gradient; each a per-head
    # tensor ([.., L, head_dim] or [.., head_dim, L]) of T·N·C·L float16 values. Nothing else.
    config = spec["model_config"]
    head_dim = config["embed_dims"] // config["num_heads"]
    values = spec["T"] * spec["B"] * config["embed_dims"] * (32 // config["patch_size"]) ** 2
    assert all(head_dim in shape[-2:] for _op, shape, _size, _where in audit.copies), audit.copies
    assert [size for _op, _shape, size, _where in audit.copies] == [values * 2] * 5 * config["depths"], audit.copies


# ---- layouts that PyTorch reads one way while the memory is another ----
# A tensor with a dimension of size 1 is often contiguous and channels_last at once; PyTorch then picks a
# layout from its strides, and cuDNN's convolution backward copies a gradient (``.to(layout of the input)``)
# whose strides read as channel-major. These copies happen inside the operator, out of the audit's sight:
# the tests check the strides that decide them.

def _reads_as_channels_last(t: torch.Tensor) -> bool:
    return t.to(memory_format=torch.channels_last) is t


def test_token_rows_hand_the_convolution_a_gradient_it_reads_as_nhwc():
    from flashspike import layer
    from flashspike.model.spikformer import pointwise_on_tokens
    from torch import nn

    layers = layer.SeqToANNContainer(nn.Conv1d(6, 10, kernel_size=1, bias=False), nn.BatchNorm1d(10))
    tokens = torch.randn(2, 3, 5, 6).transpose(2, 3).requires_grad_()  # [T, N, C, L], token-major
    seen = {}

    def watch(module, args, out):
        out.register_hook(lambda grad: seen.setdefault("grad", grad))

    layers[0].register_forward_hook(watch)
    out = pointwise_on_tokens(layers, tokens)
    out.backward(torch.randn_like(out))
    grad = seen["grad"]  # [T·N·L, C', 1], as the convolution's backward views it: [T·N·L, C', 1, 1]
    assert grad.stride() == (10, 1, 10) and _reads_as_channels_last(grad.unsqueeze(2))


def test_the_fashion_mnist_nets_image_reads_as_channels_last():
    from flashspike.model.csnn import CSNN

    net = CSNN(T=2, channels=4, memory_format=torch.channels_last)
    seen = {}
    net.static_conv[0].register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0]))
    images = torch.rand(3, 1, 28, 28)
    net(images)
    assert _reads_as_channels_last(seen["x"]) and torch.equal(seen["x"], images)
    plain = CSNN(T=2, channels=4)  # the contiguous net gets the image as it is
    plain.static_conv[0].register_forward_pre_hook(lambda module, args: seen.__setitem__("x", args[0]))
    plain(images)
    assert seen["x"].stride() == images.stride()
