"""Bytes each quantization method stores for one linear layer, and what it leaves unquantized.

Every layout below was checked against the tensors the installed libraries actually keep in a
quantized `nn.Linear(512, 1024)` in bf16 (state_dict sizes, 2026-11: bitsandbytes 0.50.2,
hqq 0.2.8, optimum-quanto 0.2.7, torchao 0.18.0); GPTQ/AWQ follow GPTQModel's packed checkpoint
format; `rtn` and `triton` the project's own format (kernels/format.py, the same count as
backends/rtn.py `packed_bytes`). `n = rows × cols` weights, `g` the group
size along cols (in_features), `a` the compute dtype's bytes.

| method  | codes                        | per-group / per-row metadata                          |
|---------|------------------------------|-------------------------------------------------------|
| baseline| n·a                          | —                                                     |
| bnb 8   | n int8                       | fp32 scale per row (SCB) + 1-byte format flag         |
| bnb 4   | n/2 (2 codes per uint8)      | fp32 absmax per 64 weights; double quant: uint8 absmax|
|         |                              | per 64 + fp32 per 256 blocks + 256-entry fp32 code map|
| gptq    | n·bits/8 in int32            | fp16 scale + packed zero per group, int32 g_idx per col|
| awq     | n·bits/8 in int32            | fp16 scale + packed zero per group                    |
| hqq     | packed in uint8 (3-bit: int32, 10 per word; 5/6-bit: one byte each) | scale + zero per group in a |
| quanto  | int8: n; int4/int2 packed    | int8: scale per row in a; int4/2: scale+shift per group ≤ 128 |
| torchao | int8: n; int4: n/2           | int8: fp32 scale + int8 zero per row; int4: bf16      |
|         | intx (CPU): one int8 per code| scale + zero per group; intx: a scale + int8 zero     |
| rtn, triton | n·bits/8 packed in int32 along K | fp16 scale (+ fp16 zero unless symmetric) per group |

All methods keep embeddings, the output head (transformers passes lm_head in
`modules_to_not_convert`), norms, biases and MoE routers in the compute dtype.
Per-tensor serialized metadata of under 200 bytes (bnb's JSON quant_state, hqq's meta) is left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quantbench.errors import QuantbenchError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
BNB_BLOCK = 64  # bitsandbytes 4-bit blocksize used by transformers' BitsAndBytesConfig
BNB_NESTED_BLOCK = 256  # double quant: absmax values are quantized again in blocks of 256
QUANTO_GROUP = 128  # optimum-quanto's fixed group size for int4/int2 weights


@dataclass(frozen=True)
class WeightFormat:
    """One method at one setting. `bits` is 16/32 for the unquantized baseline."""

    method: str
    bits: int
    group_size: int  # weights per scale along in_features; -1 = one group per output row
    dtype: str  # compute dtype: unquantized tensors and activations
    quant_type: str = ""  # bnb 4-bit: nf4 | fp4
    double_quant: bool = False
    symmetric: bool = False  # rtn/triton: no zero points
    packing: str = ""  # torchao 4-bit: int4 (packed, CUDA) | intx (one int8 per code, CPU)

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def is_quantized(self) -> bool:
        return self.method != "baseline"

    @property
    def dequantizes_weights(self) -> bool:
        """True when a prefill matmul first rebuilds a dense copy of the weight in the compute
        dtype (bnb 4-bit, hqq's torch backend, quanto and torchao's intx fall back to this; the
        fused GPTQ/AWQ/triton/int8 kernels read the packed codes directly)."""
        return self.method in ("hqq", "quanto") or (
            (self.method == "bnb" and self.bits == 4) or (self.method == "torchao" and self.packing == "intx")
        )

    @property
    def label(self) -> str:
        if not self.is_quantized:
            return f"baseline {self.dtype}"
        parts = [self.method, f"{self.bits}-bit"]
        if self.quant_type:
            parts.append(self.quant_type + (" + double quant" if self.double_quant else ""))
        if self.packing:
            parts.append(self.packing)
        # quanto and torchao keep one scale per row at 8 bits, whatever the group size says
        if self.method in GROUPED and (self.bits != 8 or self.method not in ("quanto", "torchao")):
            parts.append("per row" if self.group_size == -1 else f"group {self.group_size}")
        if self.symmetric:
            parts.append("symmetric")
        return " ".join(parts)

    def linear_bytes(self, rows: int, cols: int) -> int:
        """Bytes of one quantized `nn.Linear(cols, rows)` weight in this format (no bias)."""
        return LAYOUTS[self.method](self, rows, cols)


def _groups_per_row(fmt: WeightFormat, cols: int) -> int:
    return 1 if fmt.group_size == -1 else math.ceil(cols / fmt.group_size)


def _dense(fmt: WeightFormat, rows: int, cols: int) -> int:
    return rows * cols * fmt.dtype_bytes


def _int32_words(values: int, bits: int) -> int:
    return math.ceil(values * bits / 32)


def _project_packed(fmt: WeightFormat, rows: int, cols: int) -> int:
    # kernels/format.py: codes packed in int32 along K, fp16 scales (+ fp16 zeros) per group.
    per_group = 1 if fmt.symmetric else 2
    return math.ceil(rows * cols * fmt.bits / 8) + rows * _groups_per_row(fmt, cols) * per_group * 2


def _bnb(fmt: WeightFormat, rows: int, cols: int) -> int:
    n = rows * cols
    if fmt.bits == 8:
        return n + rows * 4 + 1  # int8 codes, fp32 SCB per row, uint8 `weight_format` buffer
    blocks = math.ceil(n / BNB_BLOCK)
    meta = 16 * 4  # quant_map: the 16 fp32 values of the nf4/fp4 code book
    if fmt.double_quant:
        meta += blocks + math.ceil(blocks / BNB_NESTED_BLOCK) * 4 + 256 * 4
    else:
        meta += blocks * 4
    return math.ceil(n / 2) + meta


def _gptq(fmt: WeightFormat, rows: int, cols: int) -> int:
    # GPTQModel: qweight (cols·bits/32, rows) int32, qzeros (groups, rows·bits/32) int32,
    # scales (groups, rows) fp16, g_idx (cols,) int32 (kept even without act-order).
    groups = _groups_per_row(fmt, cols)
    codes = rows * _int32_words(cols, fmt.bits) * 4
    return codes + groups * _int32_words(rows, fmt.bits) * 4 + groups * rows * 2 + cols * 4


def _awq(fmt: WeightFormat, rows: int, cols: int) -> int:
    # AWQ GEMM: qweight (cols, rows·bits/32) int32, qzeros (groups, rows·bits/32) int32, scales fp16.
    groups = _groups_per_row(fmt, cols)
    return cols * _int32_words(rows, fmt.bits) * 4 + groups * (_int32_words(rows, fmt.bits) * 4 + rows * 2)


def _hqq(fmt: WeightFormat, rows: int, cols: int) -> int:
    # HQQ views the weight as (n/g, g) and packs along the first axis: 8/bits groups per uint8
    # row, or for 3-bit 10 groups per int32 row.
    groups = rows * _groups_per_row(fmt, cols)
    g = cols if fmt.group_size == -1 else fmt.group_size
    if fmt.bits == 3:
        codes = math.ceil(groups / 10) * g * 4
    elif fmt.bits in (5, 6):  # hqq 0.2 has no 5/6-bit packing: one uint8 per code
        codes = groups * g
    else:
        codes = math.ceil(groups * fmt.bits / 8) * g
    return codes + groups * 2 * fmt.dtype_bytes


def _quanto(fmt: WeightFormat, rows: int, cols: int) -> int:
    n = rows * cols
    scalars = 2 * fmt.dtype_bytes  # input_scale and output_scale buffers of every QLinear
    if fmt.bits == 8:
        return n + rows * fmt.dtype_bytes + scalars
    # quanto shrinks the group to the largest divisor of in_features up to 128 (576 -> 96)
    group = max(d for d in range(1, QUANTO_GROUP + 1) if cols % d == 0)
    return math.ceil(n * fmt.bits / 8) + n // group * 2 * fmt.dtype_bytes + scalars


def _torchao(fmt: WeightFormat, rows: int, cols: int) -> int:
    n = rows * cols
    if fmt.bits == 8:
        return n + rows * (4 + 1)  # Int8WeightOnlyConfig: fp32 scale + int8 zero point per row
    groups = rows * _groups_per_row(fmt, cols)
    if fmt.packing == "intx":  # IntxWeightOnlyConfig: unpacked int8 codes, dtype scale, int8 zero
        return n + groups * (fmt.dtype_bytes + 1)
    return math.ceil(n / 2) + groups * 2 * 2  # Int4WeightOnlyConfig: bf16 scale and zero per group


LAYOUTS = {
    "baseline": _dense,
    "rtn": _project_packed,
    "bnb": _bnb,
    "gptq": _gptq,
    "awq": _awq,
    "hqq": _hqq,
    "quanto": _quanto,
    "torchao": _torchao,
    "triton": _project_packed,
}

# Per method: allowed bit widths (first = default), default group size (None = not a parameter).
BITS = {
    "baseline": (),
    "rtn": (4, 2, 3, 5, 6, 7, 8),
    "bnb": (4, 8),
    "gptq": (4, 2, 3, 8),
    "awq": (4,),
    "hqq": (4, 1, 2, 3, 5, 6, 8),
    "quanto": (8, 2, 4),
    "torchao": (8, 4),
    "triton": (4, 2, 8),
}
# Defaults follow quantbench/backends (rtn, triton, bnb, torchao, hqq, quanto), except gptq/awq: their
# backends default to group 64 so the embedded model's 576-wide layers divide; plans keep the usual 128.
GROUPED = {"rtn": 64, "gptq": 128, "awq": 128, "hqq": 64, "torchao": 32, "triton": 64, "quanto": QUANTO_GROUP}
EXTRA = {"bnb": ("quant_type", "double_quant"), "torchao": ("packing",), "rtn": ("symmetric",)}
EXTRA["triton"] = EXTRA["rtn"]
CHOICES = {"quant_type": ("nf4", "fp4"), "packing": ("int4", "intx"), "dtype": tuple(DTYPE_BYTES)}
PER_ROW_OK = ("rtn", "triton", "gptq", "awq", "hqq")  # accept group_size -1: one group per row
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _int(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise QuantbenchError(f"{what} must be an integer, got {value!r}") from None


def _flag(params: Mapping[str, Any], key: str, what: str) -> bool:
    text = str(params.get(key, False)).lower()
    if text not in TRUE + FALSE:
        raise QuantbenchError(f"{what}: {key} must be true or false, got {params[key]!r}")
    return text in TRUE


def _choice(value: Any, key: str, what: str) -> str:
    text = str(value).lower()
    if text not in CHOICES[key]:
        raise QuantbenchError(f"{what}: {key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
    return text


def format_parameters(method: str) -> tuple[str, ...]:
    """The parameters that change `method`'s bytes (a method's other settings do not)."""
    if method not in LAYOUTS:
        raise QuantbenchError(f"unknown method {method!r} for the planner; methods: {', '.join(LAYOUTS)}")
    bits = ("bits",) if BITS[method] else ()
    return ("dtype", *bits, *(("group_size",) if method in GROUPED else ()), *EXTRA.get(method, ()))


def weight_format(method: str, params: Mapping[str, Any] | None = None) -> WeightFormat:
    """Validate `method` and its parameters (strings from the CLI or typed values) into a format.

    Parameters: dtype (all), bits (all but baseline), group_size (grouped methods; -1 = per row
    for gptq/awq), quant_type and double_quant (bnb), packing (torchao).
    """
    params = dict(params or {})
    what = f"method {method}"
    allowed = format_parameters(method)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise QuantbenchError(f"{what}: unknown parameter {', '.join(unknown)} (valid: {', '.join(allowed)})")
    dtype = _choice(params.get("dtype", "bfloat16"), "dtype", what)
    if method == "baseline":
        return WeightFormat("baseline", 8 * DTYPE_BYTES[dtype], 0, dtype)
    bits = _int(params.get("bits", BITS[method][0]), f"{what}: bits")
    if bits not in BITS[method]:
        raise QuantbenchError(f"{what}: bits must be one of {', '.join(map(str, BITS[method]))}, got {bits}")
    group = _int(params.get("group_size", GROUPED.get(method, 0)), f"{what}: group_size")
    if method in GROUPED and group <= 0 and not (group == -1 and method in PER_ROW_OK):
        raise QuantbenchError(f"{what}: group_size must be a positive integer (or -1 for per-row), got {group}")
    if method == "quanto" and group != QUANTO_GROUP:
        raise QuantbenchError(f"{what}: optimum-quanto uses a fixed group_size of {QUANTO_GROUP}, got {group}")
    quant_type, double_quant, packing = "", False, ""
    if method == "bnb" and bits == 4:
        quant_type = _choice(params.get("quant_type", "nf4"), "quant_type", what)
        double_quant = _flag(params, "double_quant", what)
    elif method == "bnb" and ({"quant_type", "double_quant"} & set(params)):
        raise QuantbenchError(f"{what}: quant_type and double_quant apply to bits=4 only (LLM.int8 has neither)")
    if method == "torchao" and bits == 4:
        packing = _choice(params.get("packing", "int4"), "packing", what)
    symmetric = _flag(params, "symmetric", what) if method in ("rtn", "triton") else False
    return WeightFormat(method, bits, group, dtype, quant_type, double_quant, symmetric, packing)
