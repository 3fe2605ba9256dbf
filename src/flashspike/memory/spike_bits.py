"""Spike inputs kept in one bit for the backward pass, sums of spikes in a few.

A convolution or linear layer saves its input for the weight gradient. When that input is a neuron's
spike output, every element is 0 or 1, and the 2 or 4 bytes autograd keeps per element carry one bit
of information. :func:`store_spike_inputs_in_bits` switches a network's ``nn.Conv1d``, ``nn.Conv2d`` and
``nn.Linear`` layers to versions that, for such an input, save it packed eight elements to a byte and unpack it in
the backward pass; the gradients are the ones PyTorch's own backward computes (the same operations on
the same values), bit for bit. A sum of spike trains (SEW-ResNet's ADD connection: 0, 1 or 2, and
more down a chain of blocks) is kept the same way in 2, 4 or 8 bits per element.

An input counts only when its autograd history proves its values (:func:`integer_bound`): the spike
output of a flashspike neuron running a kernel backend ('cupy', 'triton') with a spiking surrogate (as
the neuron tells it: :func:`flashspike.backends.autograd.is_spike_output`), reached through views,
slices, max-pooling or dtype casts only (each keeps small integers exact), or a sum of such inputs
(also where a neuron adds its spikes to one in its own kernel: :func:`~flashspike.backends.autograd.added_to_spikes`).
Anything else (dropout, a product, a scaled sum, the 'torch' reference's output, an input that needs no
gradient) takes the layer's ordinary path, so nothing is ever stored lossily. Eager mode only: under
``torch.compile`` the layers run their ordinary forward.

On CUDA, packing and unpacking are one Triton kernel each
(:mod:`flashspike.memory.spike_bits_triton`); elsewhere, or without Triton, a few PyTorch operations
give the same bytes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ..backends.autograd import added_to_spikes, is_spike_output
from ..backends.packed_bits import keep_bits, kept_bits
from ..base import autocast_dtype
from ..functional import switch_module_classes
from ..optional_triton import optional_kernels
from .pooling import is_max_pool_output

__all__ = ["store_spike_inputs_in_bits", "pack", "unpack", "memory_order", "is_spike_input", "integer_bound",
           "width_for", "BitSavingConv1d", "BitSavingConv2d", "BitSavingLinear", "matmul"]

_fields_on: dict = {}  # (device, width) -> each field's shift in a byte, uint8 there (made once)
# PyTorch's autograd nodes (by ``Node.name()``, the only name PyTorch gives them) whose output holds
# some of their input's values and no others: views, reshapes and slices, max-pooling, dtype casts
# (the integers here are at most 255: exact in every floating dtype). flashspike's own max-pool is
# recognized by :func:`.pooling.is_max_pool_output`.
_VALUE_KEEPING = frozenset((
    "ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "PermuteBackward0", "TransposeBackward0",
    "SqueezeBackward0", "SqueezeBackward1", "UnsqueezeBackward0", "CloneBackward0", "ToCopyBackward0",
    "SliceBackward0", "SelectBackward0", "ExpandBackward0", "UnbindBackward0",
    "MaxPool2DWithIndicesBackward0", "MaxPool1DWithIndicesBackward0", "MaxPool3DWithIndicesBackward0",
))
_LARGEST = 255  # the largest integer kept in bits (8 of them); larger bounds take the ordinary path
WIDTHS = (1, 2, 4, 8)  # bits per element: fields that tile a byte


def _node_bound(node, output, bounds: dict):
    """The largest value the ``output``-th output of autograd node ``node`` can hold, when its history
    proves the output holds only integers 0 .. that bound; else None. ``bounds`` memoizes nodes."""
    while node is not None and (node.name() in _VALUE_KEEPING or is_max_pool_output(node)):
        node, output = node.next_functions[0]
    if node is None:
        return None
    key = (id(node), output)
    if key in bounds:
        return bounds[key]
    bound = None
    if is_spike_output(node, output):  # what the neuron says of its own output
        bound = 1
    elif node.name() == "AddBackward0" and node._saved_alpha == 1:  # SEW's ADD: a sum of spikes
        parts = [_node_bound(n, o, bounds) for n, o in node.next_functions]
        if None not in parts and sum(parts) <= _LARGEST:
            bound = sum(parts)
    else:  # the same ADD, joined in the neuron's call: its spikes added to a tensor
        addend = added_to_spikes(node, output)
        part = None if addend is None else _node_bound(*addend, bounds)
        if part is not None and part + 1 <= _LARGEST:
            bound = part + 1
    bounds[key] = bound
    return bound


def integer_bound(x: torch.Tensor):
    """The largest value of ``x`` when its autograd history proves that it holds only integers from 0
    to that bound (at most 255): a neuron's spike output (bound 1), through views, max-pooling and
    casts, or a sum of such tensors (SEW's ADD); else None. See the module's text."""
    return _node_bound(x.grad_fn, x.output_nr, {})


def is_spike_input(x: torch.Tensor) -> bool:
    """Whether ``x``'s autograd history makes it a neuron's spike output (see the module's text)."""
    return integer_bound(x) == 1


def width_for(bound: int) -> int:
    """The fewest bits per element, of :data:`WIDTHS`, that hold the integers 0 .. ``bound``."""
    return next(width for width in WIDTHS if bound < 1 << width)


def memory_order(x: torch.Tensor):
    """The permutation that lays ``x`` out contiguously (its dimensions by falling stride), or None
    when ``x`` is no dense tensor without overlaps (an expanded view, a slice)."""
    order = sorted(range(x.dim()), key=lambda d: (-x.stride(d), -x.shape[d]))
    permuted = x.permute(order)
    return order if permuted.is_contiguous() else None


def _fields(device: torch.device, width: int) -> torch.Tensor:
    fields = _fields_on.get((device, width))
    if fields is None:
        fields = _fields_on[(device, width)] = torch.arange(0, 8, width, dtype=torch.uint8, device=device)
    return fields


def _fused(device: torch.device):
    """The Triton kernels for tensors on ``device`` (CUDA), or None: then a few PyTorch operations do
    the same packing."""
    if device.type != "cuda":
        return None
    return optional_kernels("flashspike.memory.spike_bits_triton")


def pack(x: torch.Tensor, order, width: int = 1) -> torch.Tensor:
    """The elements of ``x`` (integers 0 .. 2**width - 1) in memory order (``order``:
    :func:`memory_order`), ``width`` bits each, ``8 // width`` to a uint8, the first element in the
    lowest bits."""
    flat = x.permute(order).reshape(-1)
    fused = _fused(x.device)
    if fused is not None:
        return fused.pack(flat, width)
    per_byte = 8 // width
    codes = flat.to(torch.uint8) & ((1 << width) - 1)
    padding = -codes.numel() % per_byte
    if padding:
        codes = torch.cat((codes, codes.new_zeros(padding)))
    # the fields of a byte do not overlap, so their sum is their bitwise or
    return (codes.view(-1, per_byte) << _fields(x.device, width)).sum(1, dtype=torch.uint8)


def _packed(x: torch.Tensor, order, width: int) -> torch.Tensor:
    """:func:`pack`'s bytes of ``x``: those kept for it (written by the neuron that made it, or packed
    for another layer that read it), else packed now and kept for the next layer that reads it."""
    bits = kept_bits(x, width)
    if bits is None:
        bits = pack(x, order, width)
        keep_bits(x, width, bits)
    return bits


def unpack(packed: torch.Tensor, shape, strides, order, dtype: torch.dtype, width: int = 1) -> torch.Tensor:
    """The tensor :func:`pack` packed: ``shape`` and ``strides`` as it had, its integers in ``dtype``."""
    x = torch.empty_strided(shape, strides, dtype=dtype, device=packed.device)
    flat = x.permute(order).view(-1)
    fused = _fused(packed.device)
    if fused is not None:
        fused.unpack_into(packed, flat, width)
        return x
    values = ((packed.unsqueeze(1) >> _fields(packed.device, width)) & ((1 << width) - 1)).view(-1)
    flat.copy_(values[:flat.numel()])
    return x


class _SavedInBits(torch.autograd.Function):
    """``op`` ('conv1d', 'conv2d' or 'linear') of an input ``x`` of small integers, keeping ``x`` packed for the
    backward (``packing``: memory order and bits per element).

    Autocast's casts happen here, as autocast does them (input, weight and bias to its dtype, each
    gradient cast back), so the backward repeats PyTorch's own operations on the same values."""

    @staticmethod
    def forward(ctx, x, weight, bias, op, conv_args, packing):
        order, width = packing
        dtype = autocast_dtype(x)
        cast = (lambda t: t if t is None else t.to(dtype)) if dtype is not None else (lambda t: t)
        xc, wc, bc = cast(x), cast(weight), cast(bias)
        with torch.autocast(x.device.type, enabled=False):
            y = _FORWARD[op](xc, wc, bc, *conv_args) if conv_args is not None else F.linear(xc, wc, bc)
        ctx.save_for_backward(_packed(xc, order, width), wc)  # a cast keeps x's strides, so x's order
        ctx.meta = (op, conv_args, xc.shape, xc.stride(), order, width, xc.dtype, x.dtype, weight.dtype,
                    None if bias is None else (bias.dtype, bias.shape))
        return y

    @staticmethod
    @once_differentiable  # a gradient of the gradient raises instead of silently missing
    def backward(ctx, grad):
        packed, wc = ctx.saved_tensors
        op, conv_args, shape, strides, order, width, dtype, x_dtype, w_dtype, bias_meta = ctx.meta
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        xc = unpack(packed, shape, strides, order, dtype, width)
        if op != "linear":
            stride, padding, dilation, groups = conv_args
            grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad, xc, wc, None if bias_meta is None else list(bias_meta[1]), list(stride), list(padding),
                list(dilation), False, [0] * len(stride), groups, [need_x, need_w, need_b and bias_meta is not None])
        else:  # the operations of linear's (addmm's) derivative for a 2-d input
            grad_x = grad.mm(wc) if need_x else None
            grad_w = grad.t().mm(xc) if need_w else None
            grad_b = grad.sum(0) if need_b and bias_meta is not None else None
        grad_x = None if grad_x is None else grad_x.to(x_dtype)
        grad_w = None if grad_w is None else grad_w.to(w_dtype)
        grad_b = None if grad_b is None else grad_b.to(bias_meta[0])
        return grad_x, grad_w, grad_b, None, None, None


def _pack_operand(t: torch.Tensor, width: int):
    """(bits, how to rebuild ``t``) for a matmul operand of integers below 2**width: ``t`` itself packed
    when it is dense; else, for a view with gaps of a dense tensor (Q, K and V are views of one
    neuron's output), that whole tensor, packed once for all its views (the bits are kept with it);
    None when neither is dense."""
    order = memory_order(t)
    if order is not None:
        return _packed(t, order, width), (t.shape, t.stride(), order, t.dtype, width, None)
    base = t._base
    order = None if base is None else memory_order(base)
    if order is None:
        return None
    view = (t.shape, t.stride(), t.storage_offset() - base.storage_offset())
    return _packed(base, order, width), (base.shape, base.stride(), order, base.dtype, width, view)


def _unpack_operand(bits: torch.Tensor, how) -> torch.Tensor:
    shape, strides, order, dtype, width, view = how
    t = unpack(bits, shape, strides, order, dtype, width)
    return t if view is None else t.as_strided(view[0], view[1], t.storage_offset() + view[2])


class _MatmulSavedInBits(torch.autograd.Function):
    """``a @ b`` for operands of one batch shape (``[..., m, k] @ [..., k, n]``), keeping each operand
    of integers below ``2**width`` (``widths``; None: kept as it is) in bits for the backward.
    Autocast's casts happen here as it does them; the backward is PyTorch's own (the batch folded into
    one bmm, whose two products it repeats on the same values)."""

    @staticmethod
    def forward(ctx, a, b, widths):
        dtype = autocast_dtype(a)
        ac, bc = (a.to(dtype), b.to(dtype)) if dtype is not None else (a, b)
        with torch.autocast(a.device.type, enabled=False):
            y = torch.matmul(ac, bc)
        kept, hows = [], []
        for t, width in zip((ac, bc), widths):
            packed = None if width is None else _pack_operand(t, width)
            kept.append(t if packed is None else packed[0])
            hows.append(None if packed is None else packed[1])
        ctx.save_for_backward(*kept)
        ctx.hows, ctx.dtypes = hows, (a.dtype, b.dtype)
        return y

    @staticmethod
    @once_differentiable  # a gradient of the gradient raises instead of silently missing
    def backward(ctx, grad):
        a, b = (saved if how is None else _unpack_operand(saved, how)
                for saved, how in zip(ctx.saved_tensors, ctx.hows))
        need_a, need_b = ctx.needs_input_grad[:2]
        m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
        if a.dim() == 2:
            grad_a = grad.mm(b.t()) if need_a else None
            grad_b = a.t().mm(grad) if need_b else None
        else:
            a3, b3, grad3 = a.reshape(-1, m, k), b.reshape(-1, k, n), grad.reshape(-1, m, n)
            grad_a = grad3.bmm(b3.transpose(1, 2)).view(a.shape) if need_a else None
            grad_b = a3.transpose(1, 2).bmm(grad3).view(b.shape) if need_b else None
        return (None if grad_a is None else grad_a.to(ctx.dtypes[0]),
                None if grad_b is None else grad_b.to(ctx.dtypes[1]), None)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` that keeps an operand of spikes, or of sums of spikes (:func:`integer_bound`), in as few
    bits per element as it needs for the backward: the products of a spiking self-attention's Q, K and
    V (views of one neuron's output, which is packed once for all of them). Operands of one batch
    shape (``[..., m, k]`` and ``[..., k, n]``) only; anything else, or no operand to pack, is
    ``torch.matmul``. Gradients are PyTorch's own, bit for bit."""
    if (a.dim() < 2 or a.dim() != b.dim() or a.shape[:-2] != b.shape[:-2] or not torch.is_grad_enabled()
            or torch.compiler.is_compiling()):
        return torch.matmul(a, b)
    widths = tuple(None if bound is None else width_for(bound) for bound in (integer_bound(a), integer_bound(b)))
    if widths == (None, None):
        return torch.matmul(a, b)
    return _MatmulSavedInBits.apply(a, b, widths)


def _packing(x: torch.Tensor):
    """(memory order, bits per element) that :func:`pack` takes ``x`` in, when ``x`` is to be kept in
    bits; else None."""
    if not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return None
    bound = integer_bound(x)
    order = None if bound is None else memory_order(x)
    return None if order is None else (order, width_for(bound))


class _BitSavingConv:
    """The forward of the bit-saving convolutions (mixed in before the torch class, whose ``op`` it names)."""

    op: str

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packing = None if self.padding_mode != "zeros" or isinstance(self.padding, str) else _packing(x)
        if packing is None:
            return super().forward(x)
        args = (self.stride, self.padding, self.dilation, self.groups)
        return _SavedInBits.apply(x, self.weight, self.bias, self.op, args, packing)

    def _get_name(self):
        return type(self).__mro__[2].__name__


class BitSavingConv1d(_BitSavingConv, nn.Conv1d):
    """``nn.Conv1d`` that keeps an input of spikes, or of sums of spikes (:func:`integer_bound`), in as
    few bits per element as they need for its backward (a transformer's per-token projections are
    kernel-1 Conv1d layers on spikes). Same parameters, state_dict keys and results as ``nn.Conv1d``."""

    op = "conv1d"


class BitSavingConv2d(_BitSavingConv, nn.Conv2d):
    """``nn.Conv2d`` that keeps an input of spikes, or of sums of spikes (:func:`integer_bound`), in as
    few bits per element as they need for its backward. Same parameters, state_dict keys and results
    as ``nn.Conv2d``."""

    op = "conv2d"


class BitSavingLinear(nn.Linear):
    """``nn.Linear`` that keeps a 2-d input of spikes, or of sums of spikes (:func:`integer_bound`), in
    as few bits per element as they need for its backward. Same parameters, state_dict keys and
    results as ``nn.Linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packing = _packing(x) if x.dim() == 2 else None
        if packing is None:
            return super().forward(x)
        return _SavedInBits.apply(x, self.weight, self.bias, "linear", None, packing)

    def _get_name(self):
        return "Linear"


_BIT_SAVING = {nn.Conv1d: BitSavingConv1d, nn.Conv2d: BitSavingConv2d, nn.Linear: BitSavingLinear}
_FORWARD = {"conv1d": F.conv1d, "conv2d": F.conv2d}


# A module that multiplies spikes itself (a spiking self-attention) declares this attribute and, while it
# is True, multiplies with :func:`matmul`; the switch sets it.
KEEPS_SPIKE_OPERANDS = "keeps_spike_operands_in_bits"
# A flashspike multi-step neuron declares this one: while it is True, its kernel backend writes the spikes
# packed beside them as it makes them (the bits the layers above would pack), where it can.
WRITES_SPIKE_BITS = "writes_spike_bits"


def store_spike_inputs_in_bits(net: nn.Module, enabled: bool = True) -> int:
    """Switch every ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.Linear`` of ``net`` (exactly those classes, not
    subclasses) to its bit-saving version, and every module that declares ``keeps_spike_operands_in_bits``
    (flashspike's spiking self-attentions) to :func:`matmul`, or back with ``enabled=False``; returns how
    many modules were switched.

    flashspike's multi-step neurons in ``net`` are told too (not counted): on a kernel backend they
    then write their spikes' bits in the pass that writes the spikes, and a layer reading those spikes
    (or a view of all of them) keeps these bytes instead of reading the spikes again to pack them.

    The switch changes the class (or those attributes) only: parameters, hooks, ``state_dict`` keys and
    printed names stay.
    """
    switched = switch_module_classes(net, _BIT_SAVING, enabled)
    for module in net.modules():
        if hasattr(module, KEEPS_SPIKE_OPERANDS) and getattr(module, KEEPS_SPIKE_OPERANDS) != enabled:
            setattr(module, KEEPS_SPIKE_OPERANDS, enabled)
            switched += 1
        if hasattr(module, WRITES_SPIKE_BITS):
            setattr(module, WRITES_SPIKE_BITS, enabled)
    return switched
