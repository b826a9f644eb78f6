"""KV cache, activations, totals and fits, against hand-computed numbers."""

from __future__ import annotations

import math

import pytest

from quantbench.errors import QuantbenchError
from quantbench.planner.config import architecture_from_config
from quantbench.planner.estimate import (
    CPU_HEAP_FACTOR,
    CPU_RUNTIME_BYTES,
    CUDA_RUNTIME_BYTES,
    Workload,
    activation_bytes,
    estimate,
    fits,
    kv_cache_bytes,
    largest_batch,
    largest_context,
    weight_bytes,
)
from quantbench.planner.formats import weight_format
from quantbench.planner.gpus import CATALOG, GIB, Gpu, find_gpu
from quantbench.planner.presets import PRESETS, preset

BF16 = weight_format("baseline", {"dtype": "bfloat16"})
GPTQ4 = weight_format("gptq", {"bits": 4, "group_size": 128})


@pytest.mark.parametrize(
    ("name", "context", "kv_dtype", "expected"),
    [
        # GQA: 32 layers × 2 (K, V) × 8 KV heads × 128 × 8192 tokens × 2 bytes = 1 GiB
        ("llama-3.1-8b", 8192, "fp16", 32 * 2 * 8 * 128 * 8192 * 2),
        ("llama-3.1-8b", 8192, "fp8", 32 * 2 * 8 * 128 * 8192 * 1),
        ("llama-3.1-8b", 8192, "int4", 32 * 2 * 8 * 128 * 8192 * 9 // 16),  # 0.5 B + fp16 scale/zero per 64
        ("llama-3.1-8b", 8192, "int8", 32 * 2 * 8 * 128 * 8192 * 17 // 16),
        # MHA (Phi-3: 32 KV heads × 96) under its 2047-token window
        ("phi-3-mini", 2000, "fp16", 32 * 2 * 32 * 96 * 2000 * 2),
        ("phi-3-mini", 4096, "fp16", 32 * 2 * 32 * 96 * 2047 * 2),  # every layer capped at the window
        # Mistral 7B v0.1: every layer keeps at most 4096 tokens, however long the context
        ("mistral-7b", 32768, "fp16", 32 * 2 * 8 * 128 * 4096 * 2),
        ("mistral-7b", 1000, "fp16", 32 * 2 * 8 * 128 * 1000 * 2),
        # Gemma 2 9B: 21 global layers hold 8192 tokens, 21 sliding layers 4096; 8 KV heads × 256
        ("gemma-2-9b", 8192, "bf16", (21 * 8192 + 21 * 4096) * 2 * 8 * 256 * 2),
        # Mixtral: experts do not change the cache; no sliding window in its config
        ("mixtral-8x7b", 32768, "fp16", 32 * 2 * 8 * 128 * 32768 * 2),
        # MLA: one latent of 512 + a 64-wide rope key per token and layer, shared by all heads
        ("deepseek-v2-lite", 4096, "bf16", 27 * (512 + 64) * 4096 * 2),
    ],
)
def test_kv_cache_by_hand(name, context, kv_dtype, expected):
    assert kv_cache_bytes(preset(name), Workload(context, kv_dtype=kv_dtype)) == expected


def test_gqa_cache_is_heads_over_kv_heads_smaller_than_mha():
    gqa = preset("llama-3.1-8b")
    mha = architecture_from_config({**PRESETS["llama-3.1-8b"], "num_key_value_heads": 32}, "mha")
    mqa = architecture_from_config({**PRESETS["llama-3.1-8b"], "num_key_value_heads": 1}, "mqa")
    work = Workload(4096, batch=3)
    assert kv_cache_bytes(mha, work) == 4 * kv_cache_bytes(gqa, work) == 32 * kv_cache_bytes(mqa, work)


def test_mla_expanded_cache_as_transformers_keeps_it():
    work = Workload(4096, kv_dtype="bf16", mla_cache="expanded")
    assert kv_cache_bytes(preset("deepseek-v2-lite"), work) == 27 * 16 * (128 + 64 + 128) * 4096 * 2


def test_batch_scales_the_cache_linearly():
    arch = preset("qwen2.5-7b")
    assert kv_cache_bytes(arch, Workload(1000, batch=7)) == 7 * kv_cache_bytes(arch, Workload(1000))


def test_weights_split_quantized_and_kept():
    w = weight_bytes(preset("mixtral-8x7b"), GPTQ4)
    # kept: embeddings + lm_head (2 × 32000 × 4096), routers (32 × 8 × 4096), norms (65 × 4096)
    assert w.kept_params == 2 * 32000 * 4096 + 32 * 8 * 4096 + 65 * 4096
    assert w.kept == 2 * w.kept_params
    assert w.quantized_params == 46_702_792_704 - w.kept_params
    base = weight_bytes(preset("mixtral-8x7b"), BF16)
    assert (base.quantized, base.total) == (0, 2 * 46_702_792_704)


def test_llama_8b_gptq_weights_by_hand():
    arch = preset("llama-3.1-8b")

    def gptq(rows, cols):  # g128: codes + 4-bit zeros + fp16 scales per group + int32 g_idx
        groups = cols // 128
        return rows * cols // 2 + groups * rows // 2 + groups * rows * 2 + cols * 4

    per_layer = 2 * gptq(4096, 4096) + 2 * gptq(1024, 4096) + 2 * gptq(14336, 4096) + gptq(4096, 14336)
    assert weight_bytes(arch, GPTQ4).quantized == 32 * per_layer


@pytest.mark.parametrize(
    ("fmt", "workload", "expected"),
    [
        # MLP stage dominates: (2 × hidden + 3 × intermediate) per token, bf16
        (BF16, Workload(32768), 32768 * (2 * 4096 + 3 * 14336) * 2),
        (BF16, Workload(32768, batch=8, prefill_chunk=2048), 8 * 2048 * (2 * 4096 + 3 * 14336) * 2),
        # eager attention adds heads × q × kv scores: dtype scores, fp32 softmax, dtype probs
        (BF16, Workload(1024, attention="eager"), 1024 * 51200 * 2 + 32 * 1024 * 1024 * (2 + 4 + 2)),
        # every position's logits (a perplexity pass): the upcast (dtype + fp32 logits); scoring
        # takes the log-softmax in place in the fp32 copy
        (BF16, Workload(2048, all_logits=True), 2048 * 128256 * (2 + 4)),
        (BF16, Workload(2048, batch=3, all_logits=True), 2048 * 128256 * 3 * (2 + 4)),
        # on CPU, blocks under glibc's 32 MiB mmap threshold stay resident after being freed: the
        # layer's (× the heap factor 2.49); larger ones are returned
        (BF16, Workload(64, all_logits=True, device="cpu"), math.ceil(64 * 51200 * 2 * 2.49) + 64 * 128256 * 6),
        (BF16, Workload(2048, all_logits=True, device="cpu"), 2048 * 51200 * 2 + 2048 * 128256 * (2 + 4)),
        # short prompts: last-token logits (dtype, fp32, processed fp32) outweigh the layer
        (BF16, Workload(8), 128256 * (2 + 8)),
        # bnb 4-bit rebuilds the largest matrix (14336 × 4096) in bf16 before its matmul
        (weight_format("bnb"), Workload(1024), 1024 * 51200 * 2 + 14336 * 4096 * 2),
    ],
)
def test_activations_by_hand(fmt, workload, expected):
    assert activation_bytes(preset("llama-3.1-8b"), fmt, workload) == expected


def test_estimate_components_and_runtime():
    arch = preset("llama-3.1-8b")
    est = estimate(arch, GPTQ4, Workload(8192))
    names = [c.name for c in est.components]
    assert names == ["weights quantized", "weights kept", "KV cache", "activations", "runtime"]
    assert est.part("runtime") == CUDA_RUNTIME_BYTES
    assert est.allocated == est.total - CUDA_RUNTIME_BYTES
    assert est.part("KV cache") == GIB
    cpu = estimate(arch, GPTQ4, Workload(8192, device="cpu"))
    assert cpu.part("runtime") == CPU_RUNTIME_BYTES
    assert "weights quantized" not in [c.name for c in estimate(arch, BF16, Workload(8)).components]


def test_sliding_layers_named_in_the_kv_note():
    est = estimate(preset("gemma-2-9b"), BF16, Workload(8192))
    assert "21 sliding layers capped at 4096 tokens" in next(c.note for c in est.components if c.name == "KV cache")


def test_fits_lists_every_gpu_with_headroom():
    est = estimate(preset("llama-3.1-8b"), GPTQ4, Workload(32768))  # 12.96 GiB
    results = fits(est)
    assert len(results) == len(CATALOG)
    rtx4090 = next(f for f in results if f.gpu.name == "RTX 4090")
    assert rtx4090.headroom == 24 * GIB - est.total and rtx4090.fits
    assert not next(f for f in results if f.gpu.name == "RTX 4060").fits


@pytest.mark.parametrize("name", ["llama-3.1-8b", "gemma-2-9b", "mistral-7b"])
def test_largest_context_and_batch_are_the_boundary(name):
    arch, gpu = preset(name), find_gpu("RTX 4090")
    work = Workload(4096, batch=2)
    context = largest_context(arch, GPTQ4, work, gpu)
    assert estimate(arch, GPTQ4, Workload(context, batch=2)).total <= gpu.memory_bytes
    if context < arch.max_context:
        assert estimate(arch, GPTQ4, Workload(context + 1, batch=2)).total > gpu.memory_bytes
    batch = largest_batch(arch, GPTQ4, work, gpu)
    assert estimate(arch, GPTQ4, Workload(4096, batch=batch)).total <= gpu.memory_bytes
    assert estimate(arch, GPTQ4, Workload(4096, batch=batch + 1)).total > gpu.memory_bytes


def test_largest_context_is_capped_by_the_model_and_zero_when_nothing_fits():
    arch = preset("gemma-2-9b")
    assert largest_context(arch, GPTQ4, Workload(1), find_gpu("H200")) == 8192
    assert largest_context(arch, BF16, Workload(1), Gpu("tiny", 8, "consumer")) == 0
    assert largest_batch(arch, BF16, Workload(1), Gpu("tiny", 8, "consumer")) == 0


@pytest.mark.parametrize(
    ("workload", "message"),
    [
        (Workload(0), "context must be a positive integer, got 0"),
        (Workload(-5), "context must be a positive integer, got -5"),
        (Workload(8, batch=0), "batch must be a positive integer, got 0"),
        (Workload(8, batch=True), "batch must be a positive integer, got True"),
        (Workload(8, prefill_chunk=-1), "prefill_chunk must be a positive integer"),
        (Workload(8, kv_dtype="fp2"), "kv_dtype must be one of fp32, fp16, bf16, fp8, int8, int4, int2, got 'fp2'"),
        (Workload(8, attention="flash3"), "attention must be one of sdpa, eager"),
        (Workload(8, device="tpu"), "device must be one of cuda, cpu, got 'tpu'"),
        (Workload(8, mla_cache="zip"), "mla_cache must be one of latent, expanded"),
    ],
)
def test_bad_workloads(workload, message):
    with pytest.raises(QuantbenchError, match=message) as err:
        estimate(preset("llama-3.1-8b"), BF16, workload)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("name", "gpu", "gib"),
    [
        ("RTX 4090", "RTX 4090", 24),
        ("rtx4090", "RTX 4090", 24),
        ("NVIDIA GeForce RTX 4090", "RTX 4090", 24),
        ("h100-80gb", "H100 80GB", 80),
        ("A100 40GB", "A100 40GB", 40),
    ],
)
def test_find_gpu(name, gpu, gib):
    found = find_gpu(name)
    assert (found.name, found.memory_gib) == (gpu, gib)


def test_gpu_memory_is_binary_gib():
    assert find_gpu("RTX 4090").memory_bytes == 25_769_803_776  # 24 GiB, not 24 × 10⁹
    assert find_gpu("H100 80GB").memory_bytes == 80 * 2**30


def test_unknown_gpu_lists_the_catalog():
    with pytest.raises(QuantbenchError, match=r"unknown GPU '4090'; known GPUs: RTX 3060, .*RTX 4090, .*H200") as err:
        find_gpu("4090")
    assert "\n" not in str(err.value)


def test_cpu_activations_keep_heap_temporaries_resident():
    # SmolLM2 at 2048 tokens: the largest activation (2048 × 1536 × 2 B = 6 MiB) stays under glibc's
    # 32 MiB mmap threshold, so RSS holds CPU_HEAP_FACTOR × the live peak, plus the logits on top.
    arch, work = preset("smollm2-135m"), Workload(2048, device="cpu")
    layer = 2048 * (2 * 576 + 3 * 1536) * 2
    assert activation_bytes(arch, BF16, work) == math.ceil(layer * CPU_HEAP_FACTOR) + 49152 * (2 + 4 + 4)


def test_cpu_activations_above_the_mmap_threshold_count_once():
    # Llama 8B at 2048 tokens: 2048 × 14336 × 2 B = 56 MiB per MLP tensor, mmapped and returned on free
    work = Workload(2048, device="cpu")
    layer = 2048 * (2 * 4096 + 3 * 14336) * 2
    assert activation_bytes(preset("llama-3.1-8b"), BF16, work) == layer + 128256 * (2 + 4 + 4)


def test_fp32_logits_need_no_upcast_copy():
    fp32 = weight_format("baseline", {"dtype": "float32"})
    assert activation_bytes(preset("llama-3.1-8b"), fp32, Workload(1)) == 128256 * (4 + 4)


def test_scoring_pass_keeps_no_cache():
    est = estimate(preset("llama-3.1-8b"), BF16, Workload(4096, use_cache=False))
    assert est.part("KV cache") == 0
    assert "use_cache=False" in next(c.note for c in est.components if c.name == "KV cache")
