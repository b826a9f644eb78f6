import pytest
import torch
from packing_loops import gptq_pack_3bit_rows

from quantbench.errors import QuantbenchError
from quantbench.kernels import reference
from quantbench.kernels.format import (
    PACKABLE_BITS,
    PackedWeight,
    dequantize_codes,
    pack_codes,
    pack_linear_weight,
    pack_multiple,
    quantize_rtn,
    resolve_group_size,
    unpack_codes,
)


@pytest.mark.parametrize("bits", PACKABLE_BITS)
@pytest.mark.parametrize("shape", [(32, 1), (32, 7), (64, 130), (96, 3), (256, 512)])
def test_pack_unpack_round_trip_is_exact(bits, shape, rng):
    codes = torch.randint(0, 2**bits, shape, generator=rng, dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.int32
    assert packed.shape == (shape[0] * bits // 32, shape[1])
    assert torch.equal(unpack_codes(packed, bits), codes)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_code_k_sits_at_bits_times_k_mod_per_word(bits, rng):
    """The documented layout, checked bit by bit (GPTQ's packing loop, written out)."""
    per_word = 32 // bits
    codes = torch.randint(0, 2**bits, (4 * per_word, 3), generator=rng, dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    for k in range(codes.shape[0]):
        word = packed[k // per_word].to(torch.int64) & 0xFFFFFFFF
        assert torch.equal((word >> (bits * (k % per_word))) & (2**bits - 1), codes[k].to(torch.int64))


def test_all_ones_8bit_word_wraps_to_minus_one():
    assert pack_codes(torch.full((4, 1), 255, dtype=torch.uint8), 8).item() == -1


def test_3bit_is_gptqs_layout(rng):
    codes = torch.randint(0, 8, (96, 5), generator=rng, dtype=torch.uint8)
    assert torch.equal(pack_codes(codes, 3), gptq_pack_3bit_rows(codes))


def test_3bit_code_straddling_two_words():
    """Code 10 of a run: its low two bits are the top of word 0, its high bit the bottom of word 1."""
    codes = torch.zeros(32, 1, dtype=torch.uint8)
    codes[10] = 0b101
    words = pack_codes(codes, 3).to(torch.int64) & 0xFFFFFFFF
    assert words[:, 0].tolist() == [0b01 << 30, 0b1, 0]


def test_pack_multiple():
    assert {bits: pack_multiple(bits) for bits in PACKABLE_BITS} == {2: 16, 3: 32, 4: 8, 8: 4}


@pytest.mark.parametrize(
    ("codes", "bits", "message"),
    [
        (torch.zeros(8, 2, dtype=torch.uint8), 5, r"bits=5 cannot be packed; packed formats exist for \(2, 3, 4, 8\)"),
        (torch.zeros(12, 2, dtype=torch.uint8), 4, "in_features 12 is not a multiple of 8"),
        (torch.zeros(48, 2, dtype=torch.uint8), 3, r"in_features 48 is not a multiple of 32 \(3-bit packing\)"),
        (torch.full((8, 2), 16, dtype=torch.uint8), 4, r"codes must lie in \[0, 16\)"),
    ],
)
def test_pack_rejects_what_it_cannot_hold(codes, bits, message):
    with pytest.raises(QuantbenchError, match=message):
        pack_codes(codes, bits)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [16, 64, -1])
@pytest.mark.parametrize("symmetric", [True, False])
def test_rtn_is_round_to_nearest(bits, group_size, symmetric, rng):
    weight = torch.randn(48, 128, generator=rng)
    codes, scales, zeros = quantize_rtn(weight, bits, group_size, symmetric)
    groups = 128 // resolve_group_size(group_size, 128)
    assert codes.shape == (128, 48) and codes.dtype == torch.uint8
    assert int(codes.max()) < 2**bits
    assert scales.shape == (groups, 48) and scales.dtype == torch.float16
    assert (zeros is None) == symmetric
    if zeros is not None:
        assert zeros.shape == (groups, 48) and torch.equal(zeros, zeros.round())
    # Unclipped weights land within half a step; the extremes may clip by up to one step, since the
    # fp16 scale and the integer zero point are both rounded.
    error = (dequantize_codes(codes, scales, zeros, bits) - weight.T).abs()
    step = scales.float().repeat_interleave(128 // groups, dim=0)
    inside = (codes > 0) & (codes < 2**bits - 1)
    assert (error[inside] <= step[inside] / 2 + 1e-6).all()
    assert (error <= step + 1e-6).all()


def test_all_zero_group_dequantizes_to_zero():
    weight = torch.zeros(4, 32)
    weight[:, 16:] = torch.linspace(-1, 1, 16)
    codes, scales, zeros = quantize_rtn(weight, 4, 16, symmetric=False)
    assert torch.equal(dequantize_codes(codes, scales, zeros, 4)[:16], torch.zeros(16, 4))


@pytest.mark.parametrize("group_size", [48, 0])
def test_group_size_must_divide_in_features(group_size):
    with pytest.raises(QuantbenchError, match=f"group_size {group_size} does not divide in_features 128"):
        resolve_group_size(group_size, 128)


def test_rtn_rejects_bits_outside_2_to_8():
    with pytest.raises(QuantbenchError, match="bits must be between 2 and 8, got 9"):
        quantize_rtn(torch.ones(4, 16), 9, 16, True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_converted_scales_keep_their_dtype(dtype):
    weight = pack_linear_weight(torch.randn(8, 32), 4, 32, symmetric=False)
    packed = PackedWeight(weight.qweight, weight.scales.to(dtype), weight.zeros.to(dtype) + 0.25, 4, 32)
    assert packed.nbytes() == 32 * 8 // 2 + 2 * 8 * dtype.itemsize


def test_scales_of_another_dtype_are_rejected():
    weight = pack_linear_weight(torch.randn(8, 32), 4, 32, symmetric=True)
    with pytest.raises(QuantbenchError, match=r"scales must be float16, bfloat16 or float32, got torch\.float64"):
        PackedWeight(weight.qweight, weight.scales.double(), None, 4, 32)


@pytest.mark.parametrize("symmetric", [True, False])
def test_reference_dequantize_and_matmul(symmetric, rng):
    weight = torch.randn(64, 256, generator=rng)
    packed = pack_linear_weight(weight, 4, 32, symmetric)
    dense = reference.dequantize(packed)
    assert torch.equal(dense, dequantize_codes(*quantize_rtn(weight, 4, 32, symmetric), 4))
    x = torch.randn(5, 256, generator=rng)
    torch.testing.assert_close(reference.matmul(x, packed), x @ dense)
    assert reference.matmul(x.half(), packed).dtype == torch.float16
    assert packed.nbytes() == 256 * 64 // 2 + (256 // 32) * 64 * 2 * (1 if symmetric else 2)
