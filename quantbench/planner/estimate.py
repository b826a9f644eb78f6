"""Peak memory of running a model: weights + KV cache + prefill activations + runtime overhead.

The runtime modelled is transformers' `generate` (what quantbench runs): the whole prompt goes
through one forward pass (unless `prefill_chunk` says otherwise), the KV cache holds `context`
tokens per sequence, and only the last position's logits are computed (`logits_to_keep=1`).
Every constant says where it comes from; the calibration module checks the sum against
measured peaks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from quantbench.backends.layout import Layout
from quantbench.errors import QuantbenchError
from quantbench.planner.config import Architecture
from quantbench.planner.gpus import CATALOG, Gpu
from quantbench.planner.weights import KINDS, weight_groups

MIB = 2**20

# Bytes per cached element. fp8 caches (vLLM, transformers' fp8 cache) keep one per-tensor scale,
# which is negligible. int8/int4 follow transformers' QuantizedCache (quanto or HQQ backend,
# q_group_size=64): codes plus an fp16 scale and zero per 64 elements. Its residual window of 128
# recent tokens kept unquantized is not counted (< 0.4% of a 32k cache).
KV_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1 + 4 / 64, "int4": 0.5 + 4 / 64,
            "int2": 0.25 + 4 / 64}  # fmt: skip

# GPU memory used outside torch's allocator: the CUDA context (driver state, kernel images of
# torch/cuBLAS/cuDNN). The PyTorch forums report ~700+ MiB on first CUDA use with eager module
# loading (discuss.pytorch.org/t/81330, /t/73021); CUDA_MODULE_LOADING=LAZY, the Linux default
# since CUDA 12.2 (NVIDIA forums /t/290090), loads kernels on demand and brings it near 400-500 MiB.
# gpu_poor assumes 650 MB. Not measured here (this task had no GPU): 512 MiB, to be replaced
# by the NVML process figure of a real run through calibrate.py.
CUDA_RUNTIME_BYTES = 512 * MIB

# Process RSS of a quantbench trial worker before any real weights: torch + transformers, the
# runner/results/evals imports (pandas, pyarrow, duckdb), the resolved model's tokenizer, the
# method's library, and one forward through a tiny model quantized by it (its weights subtracted),
# after the freed heap is released as before each eval. bench/planner_overhead.py --runtime-only,
# median of 3 fresh interpreters per method, then the median of the six CPU methods (629.3-640.8
# MiB), 2026-11-23, torch 2.13.0+cpu, transformers 5.23.0, Python 3.11.7 -> 633.1 MiB.
CPU_RUNTIME_BYTES = 663852304
# Of it, the resident pages of code files (libtorch_cpu.so, libtriton.so, ...), same runs: 232.2 MiB
# (230.4-233.2). Not a property of the code: it depends on how the files entered the page cache
# (190-298 MiB for the same imports on this machine, docs/planner.md), so calibrate.py also compares
# peaks without it.
CPU_RUNTIME_CODE_BYTES = 243456000

KIND_LABELS = {
    "linear": "linears",
    "experts": "experts",
    "embedding": "embeddings",
    "lm_head": "lm_head",
    "norm": "norms",
    "bias": "biases",
    "router": "routers",
}
# glibc serves allocations above its dynamic mmap threshold (at most 32 MiB on 64-bit,
# DEFAULT_MMAP_THRESHOLD_MAX in malloc.c) with mmap and returns them on free; smaller freed
# blocks stay in the heap and in RSS. CPU_HEAP_FACTOR is peak-RSS growth of a prefill divided by
# layer_activation_bytes, for activations under that threshold: bench/planner_overhead.py,
# median of 3 shapes × 3 runs (random 156M Llama, 2048/4096 tokens bf16, 2048 fp32), 2026-11-23.
GLIBC_MMAP_THRESHOLD_MAX = 32 * MIB
CPU_HEAP_FACTOR = 2.49  # measured factors 2.49, 2.38, 2.52

ATTENTION = ("sdpa", "eager")
DEVICES = ("cuda", "cpu")
MLA_CACHES = ("latent", "expanded")


@dataclass(frozen=True)
class Workload:
    """What runs: `context` tokens per sequence held in the KV cache (prompt + generated),
    `batch` sequences, the cache dtype, and how prefill runs.

    `prefill_chunk` (tokens per forward) bounds activations as chunked prefill does; None means the
    whole context in one pass. `use_cache=False` is a scoring pass that keeps no KV cache.
    `attention="eager"` materializes the score matrix; `sdpa` (flash /
    memory-efficient kernels) does not. `all_logits` computes logits for every position, as a
    perplexity eval does. `mla_cache="expanded"` counts the per-head keys and values transformers'
    DeepSeek-V2 code caches instead of the compressed latent that vLLM/SGLang keep.
    """

    context: int
    batch: int = 1
    kv_dtype: str = "fp16"
    prefill_chunk: int | None = None
    attention: str = "sdpa"
    all_logits: bool = False
    device: str = "cuda"
    mla_cache: str = "latent"
    use_cache: bool = True

    def validate(self) -> None:
        for name in ("context", "batch", "prefill_chunk"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise QuantbenchError(f"{name} must be a positive integer, got {value!r}")
        for name, valid in (
            ("kv_dtype", tuple(KV_BYTES)),
            ("attention", ATTENTION),
            ("device", DEVICES),
            ("mla_cache", MLA_CACHES),
        ):
            if getattr(self, name) not in valid:
                raise QuantbenchError(f"{name} must be one of {', '.join(valid)}, got {getattr(self, name)!r}")

    @property
    def prefill_tokens(self) -> int:
        """Tokens of one sequence in the largest single forward pass."""
        return min(self.context, self.prefill_chunk or self.context)


@dataclass(frozen=True)
class Component:
    name: str
    bytes: int
    note: str


@dataclass(frozen=True)
class Estimate:
    arch: Architecture
    fmt: Layout
    workload: Workload
    components: tuple[Component, ...]

    @property
    def total(self) -> int:
        return sum(c.bytes for c in self.components)

    def part(self, name: str) -> int:
        return next(c.bytes for c in self.components if c.name == name)

    @property
    def allocated(self) -> int:
        """What torch's allocator sees (cuda max_memory_allocated): everything but the runtime."""
        return self.total - self.part("runtime")


@dataclass(frozen=True)
class WeightBytes:
    quantized: int  # bytes of the quantized linears (codes + scales + zeros + indices)
    kept: int  # bytes of tensors left in the compute dtype
    quantized_params: int
    kept_params: int

    @property
    def total(self) -> int:
        return self.quantized + self.kept

    @property
    def bits_per_quantized_weight(self) -> float:
        return 8 * self.quantized / self.quantized_params if self.quantized_params else 0.0


def weight_bytes(arch: Architecture, fmt: Layout) -> WeightBytes:
    quantized = kept = q_params = k_params = 0
    for g in weight_groups(arch):
        if fmt.quantizes(g.kind):
            if fmt.unit_bits:  # layer_bits: each tensor at its own unit's bits
                quantized += sum(fmt.module_bytes(name, g.rows, g.cols) for name in g.module_names())
            else:
                quantized += fmt.linear_bytes(g.rows, g.cols) * g.count
            q_params += g.numel
        else:
            kept += g.numel * fmt.dtype_bytes
            k_params += g.numel
    return WeightBytes(quantized, kept, q_params, k_params)


def _cached_tokens(arch: Architecture, context: int) -> list[int]:
    # A sliding-window layer never needs more than its window (transformers' sliding cache layers
    # and vLLM's hybrid allocator both drop older tokens); global layers keep the whole context.
    return [context if w is None else min(context, w) for w in arch.layer_windows]


def kv_cache_bytes(arch: Architecture, workload: Workload) -> int:
    """KV cache: per layer, tokens × batch × elements per token × dtype bytes, where elements per
    token = 2 × KV heads × head_dim (GQA/MQA share K/V across query heads), or for MLA the latent
    (kv_lora_rank) + the shared rope key (qk_rope_head_dim), one copy for all heads."""
    if not workload.use_cache:
        return 0
    if arch.is_mla and workload.mla_cache == "latent":
        per_token = arch.kv_lora_rank + arch.qk_rope_head_dim
    elif arch.is_mla:
        per_token = arch.num_heads * (arch.qk_nope_head_dim + arch.qk_rope_head_dim + arch.v_head_dim)
    else:
        per_token = 2 * arch.num_kv_heads * arch.head_dim
    tokens = sum(_cached_tokens(arch, workload.context))
    return math.ceil(tokens * workload.batch * per_token * KV_BYTES[workload.kv_dtype])


def _widest_mlp(arch: Architecture) -> int:
    return max(g.rows for g in weight_groups(arch) if g.name.endswith("up_proj"))


def layer_activation_bytes(arch: Architecture, fmt: Layout, workload: Workload) -> int:
    """Tensors alive at once inside one decoder layer during prefill, in the compute dtype.

    Per token (transformers' Llama code): attention holds residual + normed input (2H), q, rotated
    q and the attention output (3 × q width), k and rotated k (2 × k width), v; the MLP holds
    residual + normed input (2H), act(gate), up and their product (3 × intermediate). Layers run
    one after another, so only the larger stage counts. MoE layers are sized as if one expert
    received every token (the upper bound of HF's per-expert loop). Eager attention adds the
    score matrix (dtype scores, fp32 softmax, dtype probabilities).
    """
    a = fmt.dtype_bytes
    h, b, tq = arch.hidden_size, workload.batch, workload.prefill_tokens
    if arch.is_mla:  # transformers expands the latent to per-head keys and values for attention
        q_w = k_w = arch.num_heads * (arch.qk_nope_head_dim + arch.qk_rope_head_dim)
        v_w = arch.num_heads * arch.v_head_dim
    else:
        q_w, k_w = arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
        v_w = k_w
    attn = 2 * h + 3 * q_w + 2 * k_w + v_w
    mlp = 2 * h + 3 * _widest_mlp(arch)
    layer = max(attn, mlp) * b * tq * a
    if workload.attention == "eager":
        layer += b * arch.num_heads * tq * workload.context * (2 * a + 4)
    return layer


def activation_bytes(arch: Architecture, fmt: Layout, workload: Workload) -> int:
    """Peak transient memory of the prefill pass.

    After the last layer come the logits: for the last position the dtype logits, an fp32 copy
    (none when the dtype is fp32 already) and one processed fp32 copy when sampling; for every
    position (all_logits) the dtype logits and the fp32 copy, which quantbench's perplexity eval
    turns into log-probabilities in place. On CUDA the caching allocator
    reuses the layers' blocks for the logits, so the larger of the two counts. On CPU, RSS keeps
    what glibc's heap held: activations under its 32 MiB mmap threshold stay resident after being
    freed (× CPU_HEAP_FACTOR, measured), larger ones are mmapped and returned, and the logits come
    on top. Methods that dequantize a weight before the matmul add one dense copy of the largest
    matrix.
    """
    a = fmt.dtype_bytes
    layer = layer_activation_bytes(arch, fmt, workload)
    upcast = 0 if a == 4 else 4
    if workload.all_logits:
        # The dtype logits live while they are upcast (QuantizedModel.logits), and scoring adds
        # nothing beside the fp32 copy, so that moment is the peak.
        logits = workload.batch * (a + upcast) * workload.prefill_tokens * arch.vocab_size
    else:
        logits = workload.batch * arch.vocab_size * (a + upcast + 4)
    dequant = 0
    if fmt.dequantizes_weights:
        dequant = max(g.rows * g.cols for g in weight_groups(arch) if fmt.quantizes(g.kind)) * a
    if workload.device == "cuda":
        return max(layer, logits) + dequant
    largest = workload.batch * workload.prefill_tokens * _widest_mlp(arch) * a
    heap = CPU_HEAP_FACTOR if largest < GLIBC_MMAP_THRESHOLD_MAX else 1.0
    return math.ceil(layer * heap) + logits + dequant


def estimate(arch: Architecture, fmt: Layout, workload: Workload) -> Estimate:
    """The breakdown for one model, format and workload; raises QuantbenchError on bad input."""
    workload.validate()
    w = weight_bytes(arch, fmt)
    kinds = {g.kind for g in weight_groups(arch) if not fmt.quantizes(g.kind)}
    kept_what = ", ".join(KIND_LABELS[k] for k in KINDS if k in kinds)
    components = []
    if fmt.is_quantized:
        components.append(
            Component(
                "weights quantized",
                w.quantized,
                f"{w.quantized_params / 1e9:.3f} B {'linear and expert' if fmt.quantizes('experts') else 'linear'} "
                f"weights at {w.bits_per_quantized_weight:.3f} bits",
            )
        )
    components.append(Component("weights kept", w.kept, f"{w.kept_params / 1e9:.3f} B ({kept_what}) in {fmt.dtype}"))
    tokens = _cached_tokens(arch, workload.context)
    capped = sum(t < workload.context for t in tokens)
    per_token = "MLA latent" if arch.is_mla and workload.mla_cache == "latent" else f"{arch.num_kv_heads} KV heads"
    kv_note = f"{arch.num_layers} layers, {per_token}, {workload.kv_dtype}"
    if not workload.use_cache:
        kv_note = "none: a scoring pass (use_cache=False)"
    elif capped:
        kv_note += f", {capped} sliding layers capped at {min(tokens)} tokens"
    components.append(Component("KV cache", kv_cache_bytes(arch, workload), kv_note))
    components.append(
        Component(
            "activations",
            activation_bytes(arch, fmt, workload),
            f"prefill of {workload.batch} × {workload.prefill_tokens} tokens, {workload.attention} attention",
        )
    )
    if workload.device == "cuda":
        components.append(Component("runtime", CUDA_RUNTIME_BYTES, "CUDA context (outside torch's allocator)"))
    else:
        code_mib = CPU_RUNTIME_CODE_BYTES / MIB
        note = f"python+torch RSS, {code_mib:.0f} MiB of it library code (varies with the page cache)"
        components.append(Component("runtime", CPU_RUNTIME_BYTES, note))
    return Estimate(arch, fmt, workload, tuple(components))


@dataclass(frozen=True)
class Fit:
    gpu: Gpu
    headroom: int  # bytes left after the estimate's total; negative = does not fit

    @property
    def fits(self) -> bool:
        return self.headroom >= 0


def fits(est: Estimate, gpus: tuple[Gpu, ...] = CATALOG) -> list[Fit]:
    """Every GPU with its headroom, smallest memory first."""
    return sorted((Fit(g, g.memory_bytes - est.total) for g in gpus), key=lambda f: (f.gpu.memory_gib, f.gpu.name))


def _largest(fits_at, upper: int) -> int:
    """Largest n in [1, upper] with fits_at(n), for a monotone predicate; 0 if even 1 does not fit."""
    if not fits_at(1):
        return 0
    lo, hi = 1, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits_at(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


# Search bounds where the model sets none: 1M tokens of context, 4096 sequences per batch.
MAX_SEARCH_CONTEXT = 2**20
MAX_SEARCH_BATCH = 4096


# What prices a workload: `estimate` for inference, a fine-tune step's estimate bound to its adapters.
Pricer = Callable[[Architecture, Layout, Workload], Estimate]


def largest_context(arch: Architecture, fmt: Layout, workload: Workload, gpu: Gpu, price: Pricer | None = None) -> int:
    """Largest context (up to the model's max_position_embeddings) that fits `gpu` at this batch."""
    upper = arch.max_context or MAX_SEARCH_CONTEXT
    price = price or estimate

    def fits_at(context: int) -> bool:
        return price(arch, fmt, replace(workload, context=context)).total <= gpu.memory_bytes

    return _largest(fits_at, upper)


def largest_batch(arch: Architecture, fmt: Layout, workload: Workload, gpu: Gpu, price: Pricer | None = None) -> int:
    """Largest batch that fits `gpu` at this context."""
    price = price or estimate

    def fits_at(batch: int) -> bool:
        return price(arch, fmt, replace(workload, batch=batch)).total <= gpu.memory_bytes

    return _largest(fits_at, MAX_SEARCH_BATCH)
