"""Bytes per linear layer for every method, against hand counts of what each library stores.

The (1024 × 512) expectations are the state_dict sizes the libraries produced for a bf16
nn.Linear(512, 1024) on this machine (2026-11: bitsandbytes 0.50.2, hqq 0.2.8, optimum-quanto
0.2.7, torchao 0.18.0), minus per-tensor serialized metadata of < 200 bytes that the planner
leaves out; each is also spelled out as arithmetic.
"""

from __future__ import annotations

import sys
import types

import pytest

from quantbench.backends.base import Backend
from quantbench.errors import QuantbenchError
from quantbench.planner.formats import plan_methods, weight_format

ROWS, COLS = 1024, 512
N = ROWS * COLS


@pytest.mark.parametrize(
    ("method", "params", "expected"),
    [
        ("baseline", {"compute_dtype": "bfloat16"}, N * 2),
        ("baseline", {"dtype": "float32"}, N * 4),
        ("bnb", {"bits": 8}, N + ROWS * 4 + 1),  # int8 + fp32 SCB per row + format byte
        ("bnb", {}, N // 2 + N // 64 * 4 + 64),  # nf4: codes + fp32 absmax/64 + 16-entry map
        ("bnb", {"quant_type": "fp4"}, N // 2 + N // 64 * 4 + 64),
        # double quant: uint8 absmax per 64, fp32 per 256 blocks, 256-entry fp32 nested map
        ("bnb", {"double_quant": "true"}, N // 2 + 64 + N // 64 + N // 64 // 256 * 4 + 1024),
        # GPTQ g128: qweight + qzeros (4 groups × 1024·4/32 words) + fp16 scales + int32 g_idx
        ("gptq", {"bits": 4, "group_size": 128}, N // 2 + 4 * 128 * 4 + 4 * ROWS * 2 + COLS * 4),
        ("gptq", {"bits": 4, "group_size": -1}, N // 2 + 1 * 128 * 4 + 1 * ROWS * 2 + COLS * 4),
        ("gptq", {"bits": 3, "group_size": 128}, N * 3 // 8 + 4 * 96 * 4 + 4 * ROWS * 2 + COLS * 4),
        ("awq", {"group_size": 128}, N // 2 + 4 * 128 * 4 + 4 * ROWS * 2),  # no g_idx
        ("hqq", {"bits": 4}, N // 2 + (N // 64) * 2 * 2),  # bf16 scale + zero per 64
        ("hqq", {"bits": 3}, 820 * 64 * 4 + (N // 64) * 2 * 2),  # ceil(8192 groups / 10) int32 rows
        ("hqq", {"bits": 2}, N // 4 + (N // 64) * 2 * 2),
        ("hqq", {"bits": 1}, N // 8 + (N // 64) * 2 * 2),
        ("hqq", {"bits": 8}, N + (N // 64) * 2 * 2),
        ("hqq", {"bits": 5}, N + (N // 64) * 2 * 2),  # hqq 0.2 stores 5/6-bit codes one per byte
        ("quanto", {"weights": "int8"}, N + ROWS * 2 + 2 * 2),  # int8 + bf16 scale per row + in/out scales
        ("quanto", {"weights": "float8"}, N + ROWS * 2 + 2 * 2),  # the int8 layout with float8 codes
        ("quanto", {"weights": "int4"}, N // 2 + (N // 128) * 2 * 2 + 2 * 2),  # + bf16 scale, shift per 128
        ("quanto", {"weights": "int2"}, N // 4 + (N // 128) * 2 * 2 + 2 * 2),
        ("torchao", {"bits": 8}, N + ROWS * (4 + 1)),  # fp32 scale + int8 zero per row
        ("torchao", {"bits": 4, "group_size": 128}, N // 2 + (N // 128) * 2 * 2),  # bf16 scale + zero
        ("torchao", {"bits": 4}, N // 2 + (N // 32) * 2 * 2),  # default group 32, as backends/torchao.py
        ("rtn", {}, N // 2 + (N // 64) * 2 * 2),  # fp16 scale + fp16 zero per group of 64 (the default)
        ("rtn", {"symmetric": "true", "group_size": 128}, N // 2 + (N // 128) * 2),
        ("rtn", {"bits": 3, "group_size": 128}, N * 3 // 8 + (N // 128) * 2 * 2),
        ("triton", {"bits": 8, "group_size": -1}, N + ROWS * 2 * 2),
    ],
)
def test_linear_bytes_by_hand(method, params, expected):
    assert weight_format(method, params).linear_bytes(ROWS, COLS) == expected


def test_torchao_int4_off_cuda_stores_one_int8_per_code():
    """IntxWeightOnlyConfig, what the backend picks off CUDA: int8 codes, a bf16 scale and an int8 zero per group."""
    cpu = weight_format("torchao", {"bits": 4, "group_size": 128}, "cpu")
    assert (cpu.linear_bytes(ROWS, COLS), cpu.label) == (N + (N // 128) * (2 + 1), "torchao 4-bit intx group 128")


@pytest.mark.parametrize(
    ("rows", "cols", "expected"),
    # measured: nn.Linear(576, 1536) in bf16 -> 479,236 bytes of quanto int4 state; 576 = 6 × 96
    [(1536, 576, 1536 * 576 // 2 + 1536 * 6 * 2 * 2 + 4), (576, 1536, 576 * 1536 // 2 + 576 * 12 * 2 * 2 + 4)],
)
def test_quanto_group_is_the_largest_divisor_up_to_128(rows, cols, expected):
    assert (
        weight_format("quanto", {"weights": "int4"}).linear_bytes(rows, cols)
        == expected
        == (479_236 if cols == 576 else 470_020)
    )


@pytest.mark.parametrize(("bits", "group", "sym"), [(4, 128, False), (8, -1, True), (3, 64, False), (2, 32, True)])
def test_project_format_prices_what_quant_linear_stores(bits, group, sym):
    torch = pytest.importorskip("torch")
    from quantbench.kernels.quant_linear import QuantLinear

    layer = QuantLinear.from_linear(torch.nn.Linear(256, 96, bias=False), bits, group, sym)
    stored = sum(t.numel() * t.element_size() for t in layer.state_dict().values())
    assert weight_format("rtn", {"bits": bits, "group_size": group, "symmetric": sym}).linear_bytes(96, 256) == stored


@pytest.mark.parametrize(
    ("method", "params", "bits_per_weight"),
    [
        ("bnb", {}, 4.5),  # the textbook figure for nf4: 4 + 32/64
        ("gptq", {"group_size": 128}, 4 + 16 / 128 + 4 / 128 + 32 / 8192),  # scales, 4-bit zeros, g_idx
        ("hqq", {}, 4 + 32 / 64),
        ("bnb", {"double_quant": True}, 4 + 8 / 64 + 32 / 64 / 256),
    ],
)
def test_bits_per_weight_on_a_large_matrix(method, params, bits_per_weight):
    rows = cols = 8192
    got = 8 * weight_format(method, params).linear_bytes(rows, cols) / (rows * cols)
    assert got == pytest.approx(bits_per_weight, abs=0.001)


@pytest.mark.parametrize(
    ("method", "params", "label"),
    [
        ("baseline", {}, "baseline bfloat16"),
        ("gptq", {}, "gptq 4-bit group 128"),
        ("gptq", {"group_size": -1}, "gptq 4-bit per row"),
        ("bnb", {"double_quant": "yes"}, "bnb 4-bit nf4 + double quant"),
        ("bnb", {"bits": 8}, "bnb 8-bit"),
        ("torchao", {"bits": 4}, "torchao 4-bit int4 group 32"),
        ("rtn", {"symmetric": "1"}, "rtn 4-bit group 64 symmetric"),
    ],
)
def test_labels(method, params, label):
    assert weight_format(method, params).label == label


@pytest.mark.parametrize(
    ("method", "fused"),
    [("bnb", True), ("hqq", True), ("quanto", True), ("gptq", False), ("triton", False), ("baseline", False)],
)
def test_which_methods_dequantize_a_whole_weight(method, fused):
    assert weight_format(method).dequantizes_weights is fused


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("exl2", {}, "unknown method 'exl2'; valid methods: awq, baseline, bnb"),
        ("baseline", {"bits": 4}, r"method baseline: bits: unknown parameter \(valid: compute_dtype\)"),
        ("bnb", {"group_size": 64}, r"group_size: unknown parameter \(valid: bits, quant_type, double_quant"),
        ("awq", {"bits": 3}, "method awq: bits: Input should be 4"),
        ("gptq", {"bits": "four"}, "method gptq: bits: Input should be 2, 3, 4 or 8"),
        ("gptq", {"group_size": 0}, "group_size: Value error, must be positive, or -1 for one group per output row"),
        ("quanto", {"weights": "int3"}, "weights: Input should be 'int8', 'int4', 'int2' or 'float8'"),
        ("quanto", {"group_size": 128}, "method quanto: group_size: unknown parameter"),  # fixed by optimum-quanto
        ("bnb", {"quant_type": "nf3"}, "quant_type: Input should be 'nf4' or 'fp4'"),
        ("bnb", {"bits": 8, "double_quant": True}, "double_quant applies to bits=4 only"),
        ("bnb", {"double_quant": "maybe"}, "double_quant: Input should be a valid boolean"),
        ("rtn", {"symmetric": "sometimes"}, "symmetric: Input should be a valid boolean"),
        ("torchao", {"bits": 4, "packing": "intx"}, r"packing: unknown parameter \(valid: bits, activations"),
        ("hqq", {"compute_dtype": "int8"}, "compute_dtype: Input should be 'bfloat16', 'float16' or 'float32'"),
    ],
)
def test_bad_method_parameters_are_the_backends_one_line_errors(method, params, message):
    with pytest.raises(QuantbenchError, match=message) as err:
        weight_format(method, params)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("method", "shared", "stored"),
    [
        ("hqq", {"bits": 3}, {"nbits": 3}),
        ("baseline", {"compute_dtype": "float32"}, {"dtype": "float32"}),
        ("rtn", {"compute_dtype": "float16"}, {"dtype": "float16"}),
        ("triton", {"compute_dtype": "float32"}, {"dtype": "float32"}),
    ],
)
def test_plans_take_the_stored_spelling_too(method, shared, stored):
    new, old = weight_format(method, shared), weight_format(method, stored)
    assert (new.label, new.dtype, new.linear_bytes(ROWS, COLS)) == (old.label, old.dtype, old.linear_bytes(ROWS, COLS))
    default = weight_format(method)
    assert (new.dtype, new.linear_bytes(ROWS, COLS)) != (default.dtype, default.linear_bytes(ROWS, COLS))


class BareBackend(Backend):
    """A plugin adapter that runs but describes no layout."""

    name = "bare"


def test_plugins_are_planned_when_their_backend_describes_a_layout(monkeypatch):
    module = types.ModuleType("bare_plugin")
    module.BareBackend = BareBackend
    monkeypatch.setitem(sys.modules, "bare_plugin", module)
    plugins = "mine=quantbench.backends.rtn:RtnBackend;bare=bare_plugin:BareBackend;gone=nowhere.at_all:X"
    monkeypatch.setenv("QUANTBENCH_BACKENDS", plugins)
    methods = plan_methods()
    assert "mine" in methods and "rtn" in methods
    assert "bare" not in methods and "gone" not in methods
    with pytest.raises(QuantbenchError, match="method 'bare' describes no storage layout, so the planner cannot price"):
        weight_format("bare")
