"""CUDA C++ source of the fused multi-step kernels, generated per neuron; needs no CuPy and no GPU.

One module of source holds two kernel templates for one :class:`~flashspike.params.NeuronParams`:

``fs_forward<T, HAS_V_INIT, SAVE_H, STORE_V_SEQ, NORMALIZE, SPIKE_BITS, ADDEND, VEC, UNROLL>``
    one thread owns VEC neighbouring neurons and walks t = 0 .. T−1 with V in float32 registers,
    reading X[t] and writing S[t] (and H[t] when training, V[t] when storing v_seq). With SPIKE_BITS
    (VEC = 8) it also writes S[t] packed, one bit per neuron, its VEC spikes in one byte (the layout of
    :func:`flashspike.memory.spike_bits.pack`), for a layer after it that keeps its input in bits. With NORMALIZE,
    X[t] is a BatchNorm's input normalized as it is loaded (``x * scale[c] + shift[c]``, one fused
    multiply-add rounded to T, as the layer rounds it): with SAVE_H too, it computes H again for a
    backward pass and writes H only; without, it fires from that input (S, V and the bits written, H
    not), so the BatchNorm's output is never made. With ADDEND it writes A[t] + S[t] in place of S[t]
    (SEW-ResNet's ADD joining a block's shortcut A with its last spikes; one rounding to T, as torch's
    add rounds), so the sum is never a pass of its own.
``fs_backward<T, GRAD_SPIKE, GRAD_V, STORE_V_SEQ, GRAD_V_INIT, SUM_GRAD_X, NORMALIZE, VEC, UNROLL>``
    walks t = T−1 .. 0 carrying ∂L/∂V[t] in registers, reading H[t] and the output gradients,
    writing ∂L/∂X[t] (or, for one X repeated over T, their sum at the end) and ∂L/∂V[−1] at the end
    when the initial state needs a gradient. With NORMALIZE it first runs the forward from a
    BatchNorm's kept input as fs_forward's NORMALIZE does, writing H into ∂L/∂X's memory, where the
    walk back reads each H[t] just before it writes ∂L/∂X[t] over it.

``T`` is the storage type (``float``, ``fs_half`` or ``fs_bf16``): elements are loaded and stored in
it and converted to float32 in registers. The arithmetic of one step comes from
:mod:`flashspike.backends.step_code`; this file holds only the loop, the memory traffic and the
compile-time switches. Everything constant per layer (thresholds, tau, the surrogate and its alpha)
is baked into the source, so one source is one ``params.key`` (PLIF's decay k is the exception: the
kernels read it from ``decay_ptr`` at run time); the template arguments are the dtype,
the per-call switches and the vector width (UNROLL follows from the dtype and VEC), so the kernel cache key
is ``(params.key, dtype, switches)``.

EIF and PLIF rebuild V[t−1] in the backward pass from H[t−1] (see :mod:`.step_code`); the rows of
H a thread loads for one unrolled chunk then include one more, H[t−1] of the chunk's last step, and
their backward moves 8 bytes per access instead of 16 (:func:`backward_vector_width`), which keeps its
registers at LIF's level.
PLIF's ∂L/∂w is summed in a register per thread, over its VEC neurons and every t, and each thread
writes its sum to its own slot of ``grad_w_partials`` (N / VEC floats, summed by torch). That costs
one float per VEC·T elements of H read (under 0.1% of the traffic at T = 128), needs no barrier, no
shared memory and no atomics (the sum is the same on every run), and runs unchanged in the CPU
emulation of the template, where the threads of a block run one after another.

The source includes no header: half and bfloat16 conversions are written here with PTX and bit
operations, so NVRTC needs no include path (without one it cannot open ``cuda_fp16.h``; CuPy finds
it only where the CUDA headers are installed) and each compile stays short.
"""

from __future__ import annotations

import itertools
from string import Template

import torch

from ..codegen import CUDA
from ..params import NeuronParams
from .step_code import GRAD_ABSENT, GRAD_DENSE, GRAD_SCALAR, backward_step, forward_step, previous_v_step

__all__ = [
    "STORAGE_TYPES",
    "GRAD_ABSENT",
    "GRAD_DENSE",
    "GRAD_SCALAR",
    "BLOCK",
    "SPIKE_BITS_VEC",
    "PRELUDE",
    "kernel_source",
    "module_source",
    "vector_width",
    "backward_vector_width",
    "forward_name",
    "backward_name",
    "forward_flag_sets",
    "backward_flag_sets",
]

#: torch dtype -> the CUDA storage type the kernels load and store.
STORAGE_TYPES = {torch.float32: "float", torch.float16: "fs_half", torch.bfloat16: "fs_bf16"}
_ELEMENT_SIZE = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}

#: Threads per block; each block covers BLOCK * VEC neurons.
BLOCK = 256

#: The vector width of a forward that writes spike bits: a thread's neurons fill one byte.
SPIKE_BITS_VEC = 8

# Time steps whose loads a thread issues together before computing them (the template argument
# UNROLL): more bytes in flight per thread, which a streaming kernel needs to approach the copy
# bandwidth. Keyed by (kernel, element size, VEC); a VEC missing here takes the kernel's element-size
# default. Measured on an H200 at T=128, N=2^20 (`python -m flashspike.benchmarks.neuron`): 2 suits
# float32 both ways (88-96% of the copy bandwidth); the 16-bit forward reached 91% with 4 against 82%
# with 2, while the 16-bit backward did best with 2 (75-87%; 61% with 4). The float32 backward of
# EIF and PLIF moves 8 bytes per access (backward_vector_width): 4 steps keep as many bytes in flight
# as LIF's 2 steps of 16 bytes, which brought every PLIF surrogate pair from 0.92-0.97 ms to 0.90-0.94
# (forward + backward, T = 128).
UNROLL = {("forward", 4): 2, ("forward", 2): 4, ("backward", 4): 2, ("backward", 2): 2,
          ("backward", 4, 2): 4}

PRELUDE = r"""
// ---- storage types: elements live in memory as T and in registers as float ----
struct fs_half { unsigned short bits; };  // IEEE binary16 (a tag type: only its size and name matter)
struct fs_bf16 { unsigned short bits; };  // bfloat16, the upper half of a float32

// The bits of one element (in the low bits of a word) <-> its float value.
template <typename T> __device__ __forceinline__ float fs_bits_to_float(unsigned int bits);
template <typename T> __device__ __forceinline__ unsigned int fs_float_to_bits(float f);

#ifndef FS_HOST_EMULATION  // (the CPU test of this source supplies host versions of these six)
template <> __device__ __forceinline__ float fs_bits_to_float<float>(unsigned int bits) {
    return __uint_as_float(bits);
}
template <> __device__ __forceinline__ float fs_bits_to_float<fs_half>(unsigned int bits) {
    const unsigned short half = (unsigned short)bits;
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(half));
    return f;
}
template <> __device__ __forceinline__ float fs_bits_to_float<fs_bf16>(unsigned int bits) {
    return __uint_as_float(bits << 16);
}
template <> __device__ __forceinline__ unsigned int fs_float_to_bits<float>(float f) {
    return __float_as_uint(f);
}
template <> __device__ __forceinline__ unsigned int fs_float_to_bits<fs_half>(float f) {
    unsigned short half;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(half) : "f"(f));
    return half;
}
template <> __device__ __forceinline__ unsigned int fs_float_to_bits<fs_bf16>(float f) {
    // Round to nearest even, as torch does; a NaN stays a NaN.
#if __CUDA_ARCH__ >= 800
    unsigned short bf16;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(bf16) : "f"(f));
    return bf16;
#else
    const unsigned int u = __float_as_uint(f);
    return (u & 0x7fffffffu) > 0x7f800000u ? ((u >> 16) | 0x40u)  // quiet NaN
                                           : ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
#endif
}
#endif

// A float rounded to the storage type T and back: what a value becomes when it is stored as T.
template <typename T> __device__ __forceinline__ float fs_round(float f) {
    return fs_bits_to_float<T>(fs_float_to_bits<T>(f));
}

// ---- VEC neighbouring elements moved as one aligned access of 2, 4, 8 or 16 bytes ----
// The elements travel packed in 32-bit words (two 16-bit elements a word), assembled with shifts:
// type punning through a union or the stack would cost local memory.
template <typename T> struct fs_lanes {
    enum { per_word = 4 / sizeof(T), shift = 8 * sizeof(T) };
    static __device__ __forceinline__ unsigned int mask() { return sizeof(T) == 4 ? 0xffffffffu : 0xffffu; }
};

template <typename T, int VEC>
__device__ __forceinline__ void fs_load(const T* p, float (&out)[VEC]) {
    const int bytes = sizeof(T) * VEC;
    unsigned int words[4] = {0u, 0u, 0u, 0u};  // (the compiler keeps only the words in use)
    if (bytes == 16) {
        const uint4 w = *reinterpret_cast<const uint4*>(p);
        words[0] = w.x; words[1] = w.y; words[2] = w.z; words[3] = w.w;
    } else if (bytes == 8) {
        const uint2 w = *reinterpret_cast<const uint2*>(p);
        words[0] = w.x; words[1] = w.y;
    } else if (bytes == 4) {
        words[0] = *reinterpret_cast<const unsigned int*>(p);
    } else {
        words[0] = *reinterpret_cast<const unsigned short*>(p);
    }
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
        const int word = k / fs_lanes<T>::per_word, lane = k % fs_lanes<T>::per_word;
        out[k] = fs_bits_to_float<T>((words[word] >> (fs_lanes<T>::shift * lane)) & fs_lanes<T>::mask());
    }
}

template <typename T, int VEC>
__device__ __forceinline__ void fs_store(T* p, const float (&in)[VEC]) {
    const int bytes = sizeof(T) * VEC;
    unsigned int words[4] = {0u, 0u, 0u, 0u};
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
        const int word = k / fs_lanes<T>::per_word, lane = k % fs_lanes<T>::per_word;
        words[word] |= fs_float_to_bits<T>(in[k]) << (fs_lanes<T>::shift * lane);
    }
    if (bytes == 16) {
        uint4 w;
        w.x = words[0]; w.y = words[1]; w.z = words[2]; w.w = words[3];
        *reinterpret_cast<uint4*>(p) = w;
    } else if (bytes == 8) {
        uint2 w;
        w.x = words[0]; w.y = words[1];
        *reinterpret_cast<uint2*>(p) = w;
    } else if (bytes == 4) {
        *reinterpret_cast<unsigned int*>(p) = words[0];
    } else {
        *reinterpret_cast<unsigned short*>(p) = (unsigned short)words[0];
    }
}

template <typename T>
__device__ __forceinline__ float fs_load_one(const T* p) {
    float value[1];
    fs_load<T, 1>(p, value);
    return value[0];
}

// ---- how an output gradient arrives (step_code.GRAD_*) ----
""" + "".join(f"#define FS_{name} {value}\n" for name, value in (
    ("GRAD_ABSENT", GRAD_ABSENT), ("GRAD_DENSE", GRAD_DENSE), ("GRAD_SCALAR", GRAD_SCALAR)))

# The kernels of one neuron. $forward_step and $backward_step are the generated statements of one
# step; $v_rest is the potential of a neuron without an initial state. Offsets are 64-bit
# (long long): a sequence may hold more than 2^31 elements.
_KERNELS = Template(r"""
// NORMALIZE: the BatchNorm scale and shift of a thread's VEC neurons (element i onwards), whose channel
// is the same at every step: two divisions per thread, then its next neurons step through the plane.
template <bool NORMALIZE, int VEC>
__device__ __forceinline__ void fs_channel_terms(long long i, const float* scale, const float* shift,
                                                 long long channel_stride, long long channels,
                                                 float (&scale_reg)[VEC], float (&shift_reg)[VEC]) {
    if (NORMALIZE) {
        const long long plane = i / channel_stride;
        long long within = i - plane * channel_stride, channel = plane % channels;
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            scale_reg[k] = scale[channel];
            shift_reg[k] = shift[channel];
            if (++within == channel_stride) {
                within = 0;
                if (++channel == channels) channel = 0;
            }
        }
    } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            scale_reg[k] = 1.0f;
            shift_reg[k] = 0.0f;
        }
    }
}

template <typename T, bool HAS_V_INIT, bool SAVE_H, bool STORE_V_SEQ, bool NORMALIZE, bool SPIKE_BITS, bool ADDEND,
          int VEC, int UNROLL>
__global__ void fs_forward(
    const T* __restrict__ x_seq,   // [T, N] input X: T blocks of N (layouts.sequence_layout)
    const T* __restrict__ v_init,  // [N] V before step 0 (read only when HAS_V_INIT, else V = v_rest)
    T* __restrict__ spike_seq,     // [T, N] output S, 0 or 1
    T* __restrict__ v_out,         // [T, N] every V when STORE_V_SEQ, else [N] the last V
    T* __restrict__ h_seq,         // [T, N] pre-reset potential H for backward (written when SAVE_H)
    const float* __restrict__ decay_ptr,  // PLIF's k = sigmoid(w), one float (read by PLIF only)
    const float* __restrict__ scale,  // NORMALIZE: per channel; X = x * scale[c] + shift[c], rounded to T
    const float* __restrict__ shift,
    unsigned char* __restrict__ spike_bits,  // SPIKE_BITS: [T * N / 8] out, bit k of byte j is S's element 8j + k
    const T* __restrict__ addend,  // ADDEND: [T, N] A, laid out like S; spike_seq gets A[t] + S[t]
    const long long steps,         // T
    const long long n,             // N, neurons per step; a multiple of VEC
    const long long x_step,        // from X[t] to X[t+1]: N, or 0 for one X repeated over T
    const long long channel_stride,  // NORMALIZE: element i of a step is in channel (i / channel_stride) % channels
    const long long channels)
{
    constexpr bool H_ONLY = NORMALIZE && SAVE_H;  // H computed again for a backward pass: nothing else written
    static_assert(!SPIKE_BITS || (VEC == 8 && !H_ONLY), "spike bits: one byte per thread and step");
    static_assert(!ADDEND || (!SPIKE_BITS && !H_ONLY), "a sum is no spike, and H alone writes no spike");
    const long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * VEC;
    if (i >= n) return;
    float scale_reg[VEC], shift_reg[VEC];  // NORMALIZE: each neuron's channel is the same at every step
    fs_channel_terms<NORMALIZE, VEC>(i, scale, shift, channel_stride, channels, scale_reg, shift_reg);
    float v_reg[VEC];
    if (HAS_V_INIT) {
        fs_load<T, VEC>(v_init + i, v_reg);
    } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) v_reg[k] = $v_rest;
    }
$decay_load
    for (long long t0 = 0; t0 < steps; t0 += UNROLL) {
        float x_reg[UNROLL][VEC];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            if (t0 + u < steps) fs_load<T, VEC>(x_seq + (t0 + u) * x_step + i, x_reg[u]);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            if (t0 + u >= steps) break;
            const long long at = (t0 + u) * n + i;
            float spike_reg[VEC], h_reg[VEC];
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
                const float x = NORMALIZE ? fs_round<T>(__fmaf_rn(x_reg[u][k], scale_reg[k], shift_reg[k]))
                                          : x_reg[u][k];
                const float v = v_reg[k];
$forward_step
                spike_reg[k] = spike;
                h_reg[k] = h;
                v_reg[k] = v_next;
            }
            if (ADDEND) {
                float sum_reg[VEC];
                fs_load<T, VEC>(addend + at, sum_reg);
#pragma unroll
                for (int k = 0; k < VEC; ++k) sum_reg[k] += spike_reg[k];
                fs_store<T, VEC>(spike_seq + at, sum_reg);
            } else if (!H_ONLY) {
                fs_store<T, VEC>(spike_seq + at, spike_reg);
            }
            if (SPIKE_BITS) {
                unsigned int byte = 0u;
#pragma unroll
                for (int k = 0; k < VEC; ++k) byte |= (spike_reg[k] != 0.0f ? 1u : 0u) << k;
                spike_bits[at / 8] = (unsigned char)byte;
            }
            if (SAVE_H) fs_store<T, VEC>(h_seq + at, h_reg);
            if (STORE_V_SEQ) fs_store<T, VEC>(v_out + at, v_reg);
        }
    }
    if (!STORE_V_SEQ && !H_ONLY) fs_store<T, VEC>(v_out + i, v_reg);
}

template <typename T, int GRAD_SPIKE, int GRAD_V, bool STORE_V_SEQ, bool GRAD_V_INIT, bool SUM_GRAD_X, bool NORMALIZE,
          int VEC, int UNROLL>
__global__ void fs_backward(
    const T* __restrict__ h_seq,           // [T, N] H saved by the forward pass
    const T* __restrict__ grad_spike_seq,  // dL/dS: [T, N] (DENSE), one value (SCALAR), unread (ABSENT)
    const T* __restrict__ grad_v_out,      // dL/dv_out, shaped like fs_forward's v_out; same modes
    T* __restrict__ grad_x_seq,            // [T, N] dL/dX[t], or [N] their sum over t (SUM_GRAD_X: one X for all t)
    T* __restrict__ grad_v_init,           // [N] dL/dV[-1] (written when GRAD_V_INIT)
    const T* __restrict__ v_init,          // [N] V[-1] as the forward got it, or null for v_rest (read by EIF, PLIF)
    const float* __restrict__ decay_ptr,   // PLIF's k = sigmoid(w), one float (read by PLIF only)
    float* __restrict__ grad_w_partials,   // [N / VEC] out, PLIF only: each thread's share of dL/dw
    const T* __restrict__ x_seq,           // NORMALIZE: X as the forward's, normalized as it is read
    const float* __restrict__ scale,       // NORMALIZE: per channel, as fs_forward's
    const float* __restrict__ shift,
    const long long steps,                 // T
    const long long n,                     // N, a multiple of VEC
    const long long x_step,                // NORMALIZE: from X[t] to X[t+1]
    const long long channel_stride,        // NORMALIZE: as fs_forward's
    const long long channels)
{
    const long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * VEC;
    if (i >= n) return;
    // A SCALAR gradient is the same for every element: read it once.
    const float grad_spike_all = GRAD_SPIKE == FS_GRAD_SCALAR ? fs_load_one(grad_spike_seq) : 0.0f;
    const float grad_v_all = GRAD_V == FS_GRAD_SCALAR ? fs_load_one(grad_v_out) : 0.0f;
    float carry[VEC];  // dL/dV[t] through the steps after t
    float grad_v_last[VEC];  // dL/dV[T-1] from the last-V output (when not STORE_V_SEQ)
    float grad_x_sum[VEC];  // SUM_GRAD_X: dL/dX summed over the steps so far, in float32
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
        carry[k] = 0.0f;
        grad_v_last[k] = grad_v_all;
        grad_x_sum[k] = 0.0f;
    }
    if (!STORE_V_SEQ && GRAD_V == FS_GRAD_DENSE) fs_load<T, VEC>(grad_v_out + i, grad_v_last);
$backward_prologue
    // NORMALIZE: the forward first, from the normalized input, H into grad_x_seq; the loop below reads
    // H[t] there just before it writes dL/dX[t] in its place (the same thread, the same pointer).
    const T* h_source = NORMALIZE ? grad_x_seq : h_seq;
    if (NORMALIZE) {
        float scale_reg[VEC], shift_reg[VEC], v_reg[VEC];
        fs_channel_terms<NORMALIZE, VEC>(i, scale, shift, channel_stride, channels, scale_reg, shift_reg);
        if (v_init != nullptr) {
            fs_load<T, VEC>(v_init + i, v_reg);
        } else {
#pragma unroll
            for (int k = 0; k < VEC; ++k) v_reg[k] = $v_rest;
        }
        for (long long t = 0; t < steps; ++t) {
            float x_reg[VEC], h_out[VEC];
            fs_load<T, VEC>(x_seq + t * x_step + i, x_reg);
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
                const float x = fs_round<T>(__fmaf_rn(x_reg[k], scale_reg[k], shift_reg[k]));
                const float v = v_reg[k];
$forward_step
                (void)spike;
                h_out[k] = h;
                v_reg[k] = v_next;
            }
            fs_store<T, VEC>(grad_x_seq + t * n + i, h_out);
        }
    }
    for (long long r0 = 0; r0 < steps; r0 += UNROLL) {
        // With READS_V_PREV, row u + 1 holds H[t - 1] for row u (the last one is the next chunk's first).
        float h_reg[UNROLL + READS_V_PREV][VEC], grad_spike_reg[UNROLL][VEC], grad_v_reg[UNROLL][VEC];
#pragma unroll
        for (int u = 0; u < UNROLL + READS_V_PREV; ++u) {
            const long long t = steps - 1 - (r0 + u);
            if (t < 0) break;
            fs_load<T, VEC>(h_source + t * n + i, h_reg[u]);
            if (u == UNROLL) break;
            if (GRAD_SPIKE == FS_GRAD_DENSE) fs_load<T, VEC>(grad_spike_seq + t * n + i, grad_spike_reg[u]);
            if (STORE_V_SEQ && GRAD_V == FS_GRAD_DENSE) fs_load<T, VEC>(grad_v_out + t * n + i, grad_v_reg[u]);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const long long t = steps - 1 - (r0 + u);
            if (t < 0) break;
            float grad_x_reg[VEC];
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
                const float h = h_reg[u][k];
                const float grad_spike = GRAD_SPIKE == FS_GRAD_DENSE ? grad_spike_reg[u][k] : grad_spike_all;
                float grad_v = carry[k];
                if (STORE_V_SEQ) {
                    grad_v += GRAD_V == FS_GRAD_DENSE ? grad_v_reg[u][k] : grad_v_all;
                } else if (t == steps - 1) {
                    grad_v += grad_v_last[k];
                }
$v_prev_step
$backward_step
                (void)grad_h;  // defined by every backward step; this loop needs only its products
                if (SUM_GRAD_X) {
                    grad_x_sum[k] += grad_x;
                } else {
                    grad_x_reg[k] = grad_x;
                }
                carry[k] = grad_v_prev;
$grad_w_add
            }
            if (!SUM_GRAD_X) fs_store<T, VEC>(grad_x_seq + t * n + i, grad_x_reg);
        }
    }
    if (SUM_GRAD_X) fs_store<T, VEC>(grad_x_seq + i, grad_x_sum);
    if (GRAD_V_INIT) fs_store<T, VEC>(grad_v_init + i, carry);
$grad_w_store
}
""")


def _indent(lines: list[str], spaces: int = 16) -> str:
    return "\n".join(" " * spaces + line for line in lines)


def _v_prev_text(p: NeuronParams) -> str:
    """The statements that give a backward step its V[t−1] (EIF, PLIF): rebuilt from H[t−1] (the next
    row of h_reg), or the initial state at t = 0."""
    if not p.backward_reads_v_prev:
        return ""
    lines = ["const float h_prev = t > 0 ? h_reg[u + 1][k] : 0.0f;", *previous_v_step(p, CUDA),
             "const float v_prev = t > 0 ? v_rebuilt : v_start[k];"]
    return _indent(lines)


_V_START = """\
    float v_start[VEC];  // V[-1]: the initial state, for the backward step at t = 0
    if (v_init != nullptr) {
        fs_load<T, VEC>(v_init + i, v_start);
    } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) v_start[k] = $v_rest;
    }"""
_DECAY = "    const float decay = *decay_ptr;  // PLIF's k, read at run time"


def kernel_source(p: NeuronParams) -> str:
    """The two kernel templates of one neuron (without :data:`PRELUDE`)."""
    v_rest = CUDA.const(float(p.v_rest))
    prologue = [f"    constexpr int READS_V_PREV = {int(p.backward_reads_v_prev)};"]
    if p.backward_reads_v_prev:
        prologue.append(Template(_V_START).substitute(v_rest=v_rest))
    else:
        prologue.append("    (void)v_init;")
    if p.parametric:
        prologue += [_DECAY, "    float grad_w_sum = 0.0f;  // this thread's share of dL/dw, over its VEC neurons and every t"]
    else:
        prologue.append("    (void)decay_ptr; (void)grad_w_partials;")
    return _KERNELS.substitute(
        v_rest=v_rest,
        decay_load=_DECAY if p.parametric else "    (void)decay_ptr;",
        forward_step=_indent(forward_step(p, CUDA)),
        backward_prologue="\n".join(prologue),
        v_prev_step=_v_prev_text(p),
        backward_step=_indent(backward_step(p, CUDA)),
        grad_w_add=_indent(["grad_w_sum += grad_w;"]) if p.parametric else "",
        grad_w_store="    grad_w_partials[i / VEC] = grad_w_sum;" if p.parametric else "",
    )


def module_source(p: NeuronParams) -> str:
    """A complete translation unit for NVRTC: the prelude and the neuron's kernels."""
    return PRELUDE + kernel_source(p)


def vector_width(dtype: torch.dtype) -> int:
    """Elements per 16-byte load for ``dtype``: the VEC of the vectorized kernels."""
    return 16 // _ELEMENT_SIZE[dtype]


def backward_vector_width(dtype: torch.dtype, p: NeuronParams) -> int:
    """The VEC of the vectorized backward kernel of ``p``: 16-byte accesses, or 8-byte ones for a neuron
    that rebuilds V[t−1] (EIF, PLIF). Their extra row of H, V[−1] and PLIF's dL/dw term hold more values
    per element: at 16 bytes ptxas (sm_90) gives PLIF's backward 40 registers in float32 and 64 in
    float16 against LIF's 32 and 39, so fewer threads fit on a multiprocessor; at 8 bytes, 32 and 40."""
    return vector_width(dtype) // 2 if p.backward_reads_v_prev else vector_width(dtype)


def _cpp_bool(flag: bool) -> str:
    return "true" if flag else "false"


def _unroll(kernel: str, dtype: torch.dtype, vec: int) -> int:
    size = _ELEMENT_SIZE[dtype]
    return UNROLL.get((kernel, size, vec), UNROLL[(kernel, size)])


def forward_name(dtype: torch.dtype, has_v_init: bool, save_h: bool, store_v_seq: bool, normalize: bool,
                 spike_bits: bool, addend: bool, vec: int) -> str:
    """The C++ name of one forward instantiation (a name expression for NVRTC)."""
    flags = ", ".join(map(_cpp_bool, (has_v_init, save_h, store_v_seq, normalize, spike_bits, addend)))
    return f"fs_forward<{STORAGE_TYPES[dtype]}, {flags}, {vec}, {_unroll('forward', dtype, vec)}>"


def backward_name(dtype: torch.dtype, grad_spike: int, grad_v: int, store_v_seq: bool, grad_v_init: bool,
                  sum_grad_x: bool, normalize: bool, vec: int) -> str:
    """The C++ name of one backward instantiation; ``grad_spike``/``grad_v`` are GRAD_* modes."""
    return (f"fs_backward<{STORAGE_TYPES[dtype]}, {grad_spike}, {grad_v}, {_cpp_bool(store_v_seq)}, "
            f"{_cpp_bool(grad_v_init)}, {_cpp_bool(sum_grad_x)}, {_cpp_bool(normalize)}, {vec}, "
            f"{_unroll('backward', dtype, vec)}>")


def forward_flag_sets(dtype: torch.dtype):
    """Every (has_v_init, save_h, store_v_seq, normalize, spike_bits, addend, vec) a launcher may ask for:
    a normalizing launch that saves H computes H again (and stores no V, adds nothing); one that does
    not fires from a BatchNorm's input (and saves no H); spike bits are written a byte per thread, by
    the 16-bit dtypes' vectorized launches (VEC = 8), and never beside an addend (the sum is no spike)."""
    for has_v_init, save_h, store_v_seq, vec in itertools.product(
        (False, True), (False, True), (False, True), (1, vector_width(dtype))
    ):
        for normalize in (False, True):
            if normalize and save_h and store_v_seq:
                continue
            yield has_v_init, save_h, store_v_seq, normalize, False, False, vec
            if not (normalize and save_h):
                yield has_v_init, save_h, store_v_seq, normalize, False, True, vec
                if vec == SPIKE_BITS_VEC:
                    yield has_v_init, save_h, store_v_seq, normalize, True, False, vec


def backward_flag_sets(dtype: torch.dtype, p: NeuronParams):
    """Every (grad_spike, grad_v, store_v_seq, grad_v_init, sum_grad_x, normalize, vec) a launcher may
    ask for for ``p``; at least one output gradient is present (autograd.py calls no backward
    otherwise), and a normalizing backward (H first, into dL/dX) writes dL/dX of every step."""
    modes = (GRAD_ABSENT, GRAD_DENSE, GRAD_SCALAR)
    for gs, gv, store, gvi, summed, normalize, vec in itertools.product(
        modes, modes, (False, True), (False, True), (False, True), (False, True), (1, backward_vector_width(dtype, p))
    ):
        if (gs != GRAD_ABSENT or gv != GRAD_ABSENT) and not (normalize and summed):
            yield gs, gv, store, gvi, summed, normalize, vec
