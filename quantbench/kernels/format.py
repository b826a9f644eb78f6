"""quantbench's packed low-bit weight format, round-to-nearest group quantization, and packing.

A linear layer y = x @ W.T with W of shape (N, K) = (out_features, in_features) is stored
transposed, K-major, so a kernel walks down K for a tile of output columns:

    codes    (K, N)  unsigned integers in [0, 2**bits)             one per weight
    qweight  (K * bits / 32, N) int32   codes packed along K       see below
    scales   (K / g, N)  float          one per group of g consecutive rows of K
    zeros    (K / g, N)  float          zero point in code units; None = symmetric (zero 2**(bits-1))

    w[k, n] = (codes[k, n] - zeros[k // g, n]) * scales[k // g, n]

Packing: each column of codes is a little-endian bit stream along K. Code k occupies stream bits
[bits·k, bits·(k+1)), and stream bit b is bit (b mod 32) of word b // 32. For 2, 4 and 8 bits a
code never crosses a word: code k sits at bit bits·(k mod 32/bits) of word k // (32/bits), the
same layout as GPTQ's and gemlite's qweight. Shown for bits = 4 (8 codes per word):

    qweight[j, n] (int32)   bit 31 ............................................ bit 0
                            | k=8j+7 | k=8j+6 | ....................... | k=8j+0 |

For bits = 3, 32 codes fill 3 words and two codes straddle a word boundary (GPTQ's 3-bit
layout, so GPTQ 3-bit checkpoints convert without repacking; hqq's 10 codes per word would store
3.2 bits per code, and the kernels read a straddling code from two words at little cost).
Words 3j..3j+2, with c = 32j:

    word 3j     | c+10 bits 1-0 | c+9  | ... | c+1  | c+0                 |
    word 3j+1   | c+21 bit 0    | c+20 | ... | c+11 | c+10 bit 2          |
    word 3j+2   | c+31          | c+30 | ... | c+22 | c+21 bits 2-1       |

K must be a multiple of `pack_multiple(bits)`: 16, 32, 8 and 4 rows for 2, 3, 4 and 8 bits.

Group size g = -1 means one group per output channel (g = K). Scales and zeros are fp16 when
quantbench quantizes (RTN): scales are rounded to fp16 *before* the codes are chosen, so
dequantizing the codes reproduces exactly what a kernel computes from the stored scales.
Converters keep the source's float dtype (fp16, bf16 or fp32): HQQ's zero points are floats
(not integers), and rounding them to fp16 would change the weights they stand for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from quantbench.errors import QuantbenchError

PACKABLE_BITS = (2, 3, 4, 8)
STORAGE_DTYPE = torch.float16  # scales and zeros chosen by RTN
SCALE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # what the kernels read (converters keep the source's)
# The Triton kernels read K in tiles that stay inside one group, and tl.dot needs tiles of ≥ 16 rows
# (fp16 on NVIDIA), so they take group sizes that are multiples of 16.
KERNEL_GROUP_MULTIPLE = 16


@dataclass(frozen=True)
class PackedWeight:
    """A packed weight and the facts needed to read it back (see the module docstring)."""

    qweight: torch.Tensor  # (K * bits // 32, N) int32
    scales: torch.Tensor  # (K // group_size, N), one of SCALE_DTYPES
    zeros: torch.Tensor | None  # (K // group_size, N), or None for symmetric
    bits: int
    group_size: int  # resolved: K for per-channel

    def __post_init__(self) -> None:
        for name in ("scales", "zeros"):
            tensor = getattr(self, name)
            if tensor is not None and tensor.dtype not in SCALE_DTYPES:
                raise QuantbenchError(f"{name} must be float16, bfloat16 or float32, got {tensor.dtype}")

    @property
    def in_features(self) -> int:
        return self.qweight.shape[0] * 32 // self.bits

    @property
    def out_features(self) -> int:
        return self.qweight.shape[1]

    def nbytes(self) -> int:
        tensors = [self.qweight, self.scales] + ([self.zeros] if self.zeros is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)


def resolve_group_size(group_size: int, in_features: int) -> int:
    """The group size in rows of K; raise a one-line error if it does not split `in_features`."""
    if group_size == -1:
        return in_features
    if group_size <= 0 or in_features % group_size:
        raise QuantbenchError(f"group_size {group_size} does not divide in_features {in_features}; use -1 or a divisor")
    return group_size


def packed_bytes(n_out: int, k_in: int, bits: int, group_size: int, symmetric: bool) -> int:
    """Bytes of one (n_out, k_in) weight stored as RTN stores it: codes at `bits` each, an fp16 scale
    per group (and an fp16 zero unless symmetric). A last group that `group_size` leaves partial
    counts whole, so the planner can price layers a group size does not divide."""
    groups = 1 if group_size == -1 else -(-k_in // group_size)
    return -(-n_out * k_in * bits // 8) + n_out * groups * (1 if symmetric else 2) * STORAGE_DTYPE.itemsize


def int32_words(values: int, bits: int) -> int:
    """int32 words that hold `values` codes of `bits` each as one bit stream (GPTQ's and AWQ's
    qweight/qzeros rows, and this format's columns)."""
    return -(-values * bits // 32)


def quantize_rtn(
    weight: torch.Tensor, bits: int, group_size: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Round-to-nearest group quantization of an nn.Linear weight (N, K).

    Returns codes (K, N) uint8 in [0, 2**bits), scales (K/g, N) fp16 and zeros (K/g, N) fp16
    (None when symmetric). Symmetric: scale = absmax / (2**(bits-1) - 1), zero = 2**(bits-1), so
    ±absmax is representable and one code (0) is unused. Asymmetric: the range [min, max] is
    widened to include 0 (as GPTQ does) so zero weights stay exact, and the zero point is an integer.
    """
    if not 2 <= bits <= 8:
        raise QuantbenchError(f"bits must be between 2 and 8, got {bits}")
    n_out, k_in = weight.shape
    g = resolve_group_size(group_size, k_in)
    maxq = 2**bits - 1
    w = weight.detach().float().T.reshape(k_in // g, g, n_out)
    if symmetric:
        scale = w.abs().amax(dim=1) / (2 ** (bits - 1) - 1)
    else:
        wmin = w.amin(dim=1).clamp(max=0)
        wmax = w.amax(dim=1).clamp(min=0)
        scale = (wmax - wmin) / maxq
    scales = scale.to(STORAGE_DTYPE)
    # An all-zero group (or one whose scale underflows fp16) gets scale 1: every code is the zero point.
    scales = torch.where(scales == 0, torch.ones_like(scales), scales)
    s = scales.float().unsqueeze(1)
    if symmetric:
        zeros = None
        z = torch.full_like(s, 2 ** (bits - 1))
    else:
        zeros = torch.round(-wmin / scales.float()).clamp(0, maxq).to(STORAGE_DTYPE)
        z = zeros.float().unsqueeze(1)
    codes = torch.clamp(torch.round(w / s) + z, 0, maxq).to(torch.uint8).reshape(k_in, n_out)
    return codes, scales, zeros


def dequantize_codes(
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bits: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Weights (K, N) from unpacked codes (K, N): (code - zero) * scale, computed in fp32."""
    k_in, n_out = codes.shape
    g = k_in // scales.shape[0]
    q = codes.float().reshape(-1, g, n_out)
    z = zeros.float().unsqueeze(1) if zeros is not None else 2 ** (bits - 1)
    return ((q - z) * scales.float().unsqueeze(1)).reshape(k_in, n_out).to(dtype)


def pack_multiple(bits: int) -> int:
    """The fewest rows of K that fill whole int32 words: 32 / gcd(bits, 32)."""
    return 32 // math.gcd(bits, 32)


def _stream_positions(k_in: int, bits: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row k of K: the word its code starts in and the bit it starts at, as int64 (K,)."""
    bit = torch.arange(k_in, device=device, dtype=torch.int64) * bits
    return bit // 32, bit % 32


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack codes (K, N) along K into int32 words (K * bits / 32, N); see the module docstring."""
    if bits not in PACKABLE_BITS:
        raise QuantbenchError(f"bits={bits} cannot be packed; packed formats exist for {PACKABLE_BITS}")
    multiple = pack_multiple(bits)
    k_in, n_out = codes.shape
    if k_in % multiple:
        raise QuantbenchError(f"in_features {k_in} is not a multiple of {multiple} ({bits}-bit packing)")
    # int64 arithmetic so the top code of a word can reach bit 31, then wrap to int32.
    wide = codes.to(torch.int64)
    if wide.min() < 0 or wide.max() >= 2**bits:
        raise QuantbenchError(f"codes must lie in [0, {2**bits}) for {bits}-bit packing")
    n_words = k_in * bits // 32
    if 32 % bits == 0:
        shifts = torch.arange(32 // bits, device=codes.device, dtype=torch.int64) * bits
        words = (wide.reshape(n_words, -1, n_out) << shifts[None, :, None]).sum(dim=1)
    else:
        # Codes that straddle a word put their low bits in one word and the rest in the next;
        # bit ranges never overlap, so adding the pieces is OR-ing them.
        word, shift = _stream_positions(k_in, bits, codes.device)
        words = torch.zeros(n_words + 1, n_out, dtype=torch.int64, device=codes.device)
        words.index_add_(0, word, (wide << shift[:, None]) & 0xFFFFFFFF)
        words.index_add_(0, word + 1, wide >> (32 - shift[:, None]))
        words = words[:n_words]  # K fills whole words, so the spill row stays empty
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32)


def unpack_codes(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of `pack_codes`: codes (K, N) as uint8."""
    mask = 2**bits - 1
    if 32 % bits == 0:
        per_word = 32 // bits
        shifts = torch.arange(per_word, device=qweight.device, dtype=torch.int32) * bits
        # >> on int32 is arithmetic (sign-extending), so the mask is what keeps the top code unsigned.
        codes = (qweight.unsqueeze(1) >> shifts[None, :, None]) & mask
        return codes.reshape(-1, qweight.shape[1]).to(torch.uint8)
    # Straddling codes: read each code from its word and the next one as one 64-bit value.
    n_words, n_out = qweight.shape
    words = torch.cat([qweight.to(torch.int64) & 0xFFFFFFFF, qweight.new_zeros(1, n_out, dtype=torch.int64)])
    word, shift = _stream_positions(n_words * 32 // bits, bits, qweight.device)
    both = words[word] | (words[word + 1] << 32)
    return ((both >> shift[:, None]) & mask).to(torch.uint8)


def pack_linear_weight(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> PackedWeight:
    """RTN-quantize an nn.Linear weight (N, K) and pack it."""
    if bits not in PACKABLE_BITS:
        raise QuantbenchError(f"bits={bits} cannot be packed; packed formats exist for {PACKABLE_BITS}")
    codes, scales, zeros = quantize_rtn(weight, bits, group_size, symmetric)
    g = resolve_group_size(group_size, weight.shape[1])
    return PackedWeight(pack_codes(codes, bits), scales, zeros, bits, g)
