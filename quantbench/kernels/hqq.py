"""Convert an HQQ layer (the `hqq` library, 0.2.x) into quantbench's packed format.

HQQ quantizes a weight W (N, K) in groups of g. With axis=1 it views W as (N·K/g, g): row
r = n·(K/g) + j is group j of output n, g consecutive inputs, exactly our groups along K. (axis=0
views W as (g, N·K/g) and groups every (N·K/g)-th element, which runs across outputs; our format
cannot hold that, so only axis=1 converts.) Per group it keeps a float scale and a float zero
point, cast to the layer's compute dtype, and dequantizes as

    W = (W_q - zero) * scale          (hqq.core.quantize.Quantizer.dequantize)

which is our formula with a fractional zero point. W_q is packed with hqq's own bit-packing
(`meta["packing"]`: "4bit_u8" keeps the first half of the rows in the high nibbles, "3bit_32"
puts 10 codes in an int32 and pads the rows to a multiple of 10, ...); we unpack with hqq's own
`Quantizer.unpack` table and trim the padding as hqq does, so codes follow whatever hqq wrote.

Scale and zero can also be stored quantized themselves (`quant_scale` / `quant_zero`: deprecated in
hqq 0.2 and ignored when quantizing, but older checkpoints load them), or stacked in
`meta["zero_scale"]` (`offload_meta`); they are dequantized the way `HQQLinear.dequantize` does.

The conversion keeps the scales' and zeros' dtype, so it is exact: with a float32 compute dtype
hqq computes (W_q - zero) * scale in float32 as our reference does, and the weights agree bit for
bit; with bf16/fp16 hqq rounds after each of the two operations and our fp32 arithmetic does not.
"""

from __future__ import annotations

import torch

from quantbench.errors import QuantbenchError
from quantbench.kernels.format import PACKABLE_BITS, PackedWeight, pack_codes


def _scale_and_zero(meta: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The float scale and zero per group, (N·K/g, 1), however the layer stores them."""
    from hqq.core.quantize import Quantizer

    meta = dict(meta)  # the unstacking below must not touch the layer
    if "zero_scale" in meta:
        stacked = meta["zero_scale"]
        keys = ("zero_q", "scale_q") if stacked.dtype == torch.uint8 else ("zero", "scale")
        meta[keys[0]], meta[keys[1]] = stacked[0], stacked[1]
    zero = Quantizer.dequantize(meta["zero_q"], meta["meta_zero"]) if meta["quant_zero"] else meta["zero"]
    scale = Quantizer.dequantize(meta["scale_q"], meta["meta_scale"]) if meta["quant_scale"] else meta["scale"]
    return scale, zero


def convert_hqq(layer: torch.nn.Module) -> PackedWeight:
    """The packed weight an `hqq.core.quantize.HQQLinear` stands for (see the module docstring)."""
    from hqq.core.quantize import Quantizer

    meta = layer.meta
    if meta["axis"] != 1:
        raise QuantbenchError(
            f"hqq axis={meta['axis']} groups run across output rows; only axis=1 (groups along the inputs) converts"
        )
    bits = meta["nbits"]
    if bits not in PACKABLE_BITS:
        raise QuantbenchError(f"hqq nbits={bits} not supported; the packed format has {PACKABLE_BITS}")
    n_out, k_in = meta["shape"]
    group = meta["group_size"] or k_in
    w_q = layer.W_q.data
    if meta["packing"] is None:  # quantized with bitpack=False: the codes themselves, as floats
        codes = w_q.round()
    else:
        if meta["view_as_float"]:
            w_q = w_q.view(meta["unpack_view_dtype"])
        codes = Quantizer.unpack[meta["packing"]](w_q, dtype=torch.uint8)
    codes = codes[: n_out * k_in // group].reshape(n_out, k_in).T.to(torch.uint8).contiguous()
    scale, zero = _scale_and_zero(meta)
    per_group = (n_out, k_in // group)
    scales = scale.reshape(per_group).T.contiguous()
    zeros = zero.reshape(per_group).T.contiguous()
    return PackedWeight(pack_codes(codes, bits), scales, zeros, bits, group)
