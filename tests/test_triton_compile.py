"""Every Triton kernel compiled for the GPU without one (CPU CI).

Triton's interpreter, which runs the kernels in the CPU tests, is lenient where the GPU compiler is
not (mixed integer widths, a dtype an operation does not take, a shape that does not broadcast): a
kernel can pass every interpreted test and fail to compile on the first GPU. So representative calls
of every kernel family (the neurons' forward and backward in each dtype and switch set, H computed
again from a normalized input, spike bits, byte-position max-pooling, the BatchNorm normalization,
Spikformer's attention product)
run here through the interpreter while each launch is recorded, and every distinct specialization is
then compiled by Triton for sm_90 (the H100 and H200), down to the binary ptxas makes.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from conftest import kernel_device

triton = pytest.importorskip("triton")

from triton.runtime.interpreter import InterpretedFunction  # noqa: E402 (after the importorskip)

from flashspike import functional, layer, neuron, surrogate  # noqa: E402

_POINTER_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
                  torch.uint8: "u8", torch.int8: "i8", torch.int32: "i32", torch.int64: "i64", torch.bool: "i1"}


def _argument_type(value):
    """(signature entry, constexpr value or None) of one argument, as Triton specializes it on a GPU."""
    if isinstance(value, torch.Tensor):
        return "*" + _POINTER_TYPES[value.dtype], None
    if value is None:
        return "constexpr", None
    if isinstance(value, bool):
        return "i1", None
    if isinstance(value, int):
        if value == 1:  # Triton makes an integer argument equal to 1 a constant
            return "constexpr", 1
        return ("i32" if -2**31 <= value < 2**31 else "i64"), None
    if isinstance(value, float):
        return "fp32", None
    raise TypeError(f"no Triton type for {value!r}")


class _Launches:
    """Records every interpreted launch: (the kernel's Python function, signature, constants)."""

    def __init__(self):
        self.seen = {}

    def record(self, kernel, args, kwargs):
        names = kernel.arg_names
        values = dict(zip(names, args)) | {name: value for name, value in kwargs.items() if name in names}
        constexprs = {param.name for param in kernel_params(kernel) if param.is_constexpr}
        signature, constants = {}, {}
        for name in names:
            value = values.get(name)
            if name in constexprs:
                signature[name], constants[name] = "constexpr", value
                continue
            kind, constant = _argument_type(value)
            signature[name] = kind
            if kind == "constexpr":
                constants[name] = constant
        key = (kernel.fn, tuple(signature.items()), tuple(sorted(constants.items())))
        self.seen.setdefault(key, (kernel.fn, signature, constants))


def kernel_params(kernel):
    return triton.runtime.jit.JITFunction(kernel.fn).params


@pytest.fixture(scope="module")
def launches():
    if kernel_device("triton") != "cpu":
        pytest.skip("records the launches that Triton's interpreter runs (a CPU run)")
    recorded = _Launches()
    run = InterpretedFunction.run

    def recording_run(self, *args, **kwargs):
        recorded.record(self, args, kwargs)
        return run(self, *args, **kwargs)

    from flashspike.memory import pooling, spike_bits
    from flashspike.model import token_attention
    from flashspike.optional_triton import optional_kernels

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(InterpretedFunction, "run", recording_run)
        # the memory family's and the attention's kernels run on CUDA tensors only: here, on the interpreter's
        patch.setattr(pooling, "_runs_fused", lambda x: True)
        patch.setattr(token_attention, "_runs_fused", lambda x: True)
        patch.setattr(spike_bits, "_fused", lambda device: optional_kernels("flashspike.memory.spike_bits_triton"))
        _run_every_family()
    return recorded


def _run_every_family():
    from flashspike.memory import batchnorm_recompute, pooling, spike_bits
    from flashspike.model import token_attention

    device = kernel_device("triton")
    neurons = [
        lambda: neuron.MultiStepLIFNode(tau=2.0, backend="triton"),
        lambda: neuron.MultiStepIFNode(v_reset=None, surrogate_function=surrogate.Sigmoid(), backend="triton"),
        lambda: neuron.MultiStepParametricLIFNode(backend="triton"),
        lambda: neuron.MultiStepEIFNode(backend="triton"),
    ]
    for make, dtype in itertools.product(neurons, (torch.float32, torch.float16, torch.bfloat16)):
        for store_v_seq, repeated in ((False, False), (True, False), (False, True)):
            node = make()
            node.store_v_seq = store_v_seq
            step = torch.rand(2, 8, 4, 4, device=device).to(dtype).requires_grad_()
            x = step.expand(3, *step.shape) if repeated else (step * 2).unsqueeze(0).repeat(3, 1, 1, 1, 1)
            out = node(x)
            loss = out.float().sum() + (node.v_seq.float().sum() if store_v_seq else node.v.float().sum())
            loss.backward()
            node.v = torch.rand(2, 8, 4, 4, device=device).to(dtype)  # a tensor initial state, then without grad
            with torch.no_grad():
                node(x)
    # H computed again from a switched BatchNorm's input, both layouts; spikes kept in bits (every
    # width through ADD sums); byte-position max-pooling
    for memory_format, dtype in itertools.product((torch.contiguous_format, torch.channels_last),
                                                  (torch.float32, torch.float16)):
        net = nn.Sequential(
            layer.SeqToANNContainer(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)),
            neuron.MultiStepLIFNode(tau=2.0, backend="triton"),
            layer.SeqToANNContainer(nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8, affine=False)),
            neuron.MultiStepIFNode(backend="triton"),
        ).to(device=device, memory_format=memory_format)
        batchnorm_recompute.recompute_h_after_batchnorm(net)
        spike_bits.store_spike_inputs_in_bits(net)
        pooling.store_pool_indices_in_bytes(net)
        x = torch.rand(2, 2, 3, 8, 8, device=device)
        if memory_format == torch.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            out = net(x.requires_grad_())
        out.float().sum().backward()
        functional.reset_net(net)
    for width, dtype in itertools.product(spike_bits.WIDTHS, (torch.float32, torch.float16, torch.bfloat16)):
        values = torch.randint(0, 1 << width, (100,), device=device).to(dtype)
        spike_bits.unpack(spike_bits.pack(values, [0], width), values.shape, values.stride(), [0], dtype, width)
    for shape in ((6, 5), (6, 5, 7), (3, 1500)):
        batchnorm = batchnorm_recompute.RecomputableBatchNorm1d(shape[1]).to(device)
        batchnorm(torch.randn(shape, device=device, requires_grad=True)).sum().backward()
    # Spikformer's fused attention product: CIFAR's 8x8 tokens and ImageNet's 14x14 (masked tiles)
    for (tokens, heads), dtype in itertools.product(((64, 2), (196, 3)), (torch.float32, torch.float16, torch.bfloat16)):
        spikes = (torch.rand(2, 1, tokens, 3 * 32 * heads, device=device) < 0.3).to(dtype).transpose(2, 3)
        token_attention.attention_product(spikes.requires_grad_(), heads, 0.125).float().sum().backward()


# Compiles the recorded kernels in a process of its own: the interpreter (on in this one) replaces
# triton.language's functions while it runs, so the compiler must run where it never was.
_COMPILER = r"""
import importlib, json, linecache, sys
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

target = GPUTarget("cuda", 90, 32)
failures = []
for index, (where, name, signature, constants) in enumerate(json.load(sys.stdin)):
    if where["module"] is not None:
        kernel = getattr(importlib.import_module(where["module"]), name)
    else:  # generated source, registered as flashspike's backend registers it
        filename = f"<flashspike-compile-test {index}>"
        linecache.cache[filename] = (len(where["source"]), None, where["source"].splitlines(True), filename)
        scope = {"tl": tl, "triton": triton}
        exec(compile(where["source"], filename, "exec"), scope)
        kernel = JITFunction(scope[name])
    constexprs = {(kernel.arg_names.index(key),): value for key, value in constants.items()}
    try:
        compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=target)
        assert compiled.asm.get("cubin"), "no binary"
    except Exception as error:
        failures.append(f"{name} {signature} {constants}: {type(error).__name__}: {error}")
print(json.dumps(failures))
"""


def _where(fn):
    """How the compiling process finds a kernel: its module, or (generated kernels) its source."""
    import inspect
    import sys

    module = sys.modules.get(fn.__module__)
    defined = getattr(module, fn.__name__, None)
    if getattr(defined, "fn", None) is fn:
        return {"module": fn.__module__, "source": None}
    return {"module": None, "source": inspect.getsource(fn)}


def test_every_recorded_kernel_compiles_for_the_gpu(launches):
    import json
    import os
    import subprocess
    import sys

    items = [(_where(fn), fn.__name__, signature, constants) for fn, signature, constants in launches.seen.values()]
    # kernels with 64-bit offsets for tensors past 2**31 elements, which no test here is large enough to launch
    items += [(where, name, signature, {**constants, "WIDE": True})
              for where, name, signature, constants in items if constants.get("WIDE") is False]
    names = {name for _, name, _, _ in items}
    # every family was launched: the neurons' two kernels, packing both ways, pooling both ways,
    # the normalization and its per-channel terms
    assert {"flashspike_forward", "flashspike_backward", "_pack_bits", "_unpack_bits", "_normalize",
            "_affine_terms", "_partial_moments", "_merge_moments", "_partial_gradient_sums", "_gradient_terms",
            "_grad_input"} <= names, names
    assert sum("pool" in name for name in names) >= 2, names
    assert len(items) >= 40, len(items)
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    environment["TRITON_DEFAULT_FP_FUSION"] = "1"  # (Triton 3.6's default, said explicitly)
    done = subprocess.run([sys.executable, "-c", _COMPILER], input=json.dumps(items), capture_output=True,
                          text=True, env=environment, timeout=900)
    assert done.returncode == 0, done.stderr[-5000:]
    failures = json.loads(done.stdout.strip().splitlines()[-1])
    assert not failures, "\n\n".join(failures)
