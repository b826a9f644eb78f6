"""The KV cache an engine reads when an eval asks for a quantized one, named `BACKEND-DTYPE`.

- `quanto-int4`, `quanto-int2`, `hqq-int4`, `hqq-int2`, ... (torch engine): transformers'
  `QuantizedCache` with that backend and `nbits`, grouped by `group_size`. Its residual length is
  set to 0: transformers keeps up to `residual_length` recent tokens in full precision (KIVI's
  design; its default, 128, would leave a 128-token scored step reading no quantized K/V at all),
  so with 0 every forward leaves the whole cache quantized and the next one reads it back
  dequantized. The forward that adds tokens still attends to its own new K/V in full precision.
  Each forward re-quantizes the whole dequantized cache, so a group must hold the same elements
  every time or the rounding compounds with every token. quanto's default axis groups consecutive
  elements (one head's channels of one token); hqq's default (axis 0) groups elements strided across
  the flattened cache, which move whenever a token is added: its int4 KLD grew with depth past
  quanto-int2's. hqq runs with axis 1 (consecutive elements, as quanto), and unpacked: its packing
  needs a row count that a cache growing one token at a time cannot keep even; the codes and the
  dequantized values are the same.
- `llama.cpp-q8_0`, `llama.cpp-q4_0`, ... (llama.cpp engine): the ggml types of `type_k` and
  `type_v`; llama.cpp writes a batch's K/V into the cache before attention reads it back, so every
  token reads quantized K/V, its own included.
- `none`: the engine's full-precision cache (torch: a DynamicCache in the model's dtype).
"""

from __future__ import annotations

from dataclasses import dataclass

from quantbench.errors import QuantbenchError

FULL_PRECISION = "none"
LLAMA_CPP = "llama.cpp"


@dataclass(frozen=True)
class KvCache:
    backend: str  # a transformers QuantizedCache backend, or "llama.cpp"
    dtype: str  # "int4" for transformers' backends; a ggml type name for llama.cpp's
    group_size: int  # elements per scale for transformers' backends (llama.cpp's types fix their own)

    @classmethod
    def parse(cls, text: str, group_size: int) -> KvCache | None:
        """`BACKEND-DTYPE` as a KvCache, or None for `none` (full precision)."""
        if text == FULL_PRECISION:
            return None
        backend, sep, dtype = text.rpartition("-")
        if not sep or not backend or not dtype:
            raise QuantbenchError(
                f"kv_cache {text!r}: expected BACKEND-DTYPE (quanto-int4, hqq-int2, llama.cpp-q8_0) or none"
            )
        if backend != LLAMA_CPP and not (dtype.startswith("int") and dtype[3:].isdigit()):
            raise QuantbenchError(
                f"kv_cache {text!r}: transformers' cache backends take intN (int4, int2), got {dtype!r}"
            )
        return cls(backend, dtype, group_size)

    @property
    def label(self) -> str:
        return f"{self.backend}-{self.dtype}"


def transformers_cache(kv: KvCache | None, config: object) -> object:
    """A transformers Cache for `config`'s model: quantized as `kv` says, or a DynamicCache for None."""
    import transformers
    from transformers import DynamicCache, QuantizedCache

    if kv is None:
        return DynamicCache(config=config)
    if kv.backend == LLAMA_CPP:
        raise QuantbenchError(
            f"kv_cache {kv.label} is a llama.cpp cache type, for GGUF trials; the torch engine takes "
            "transformers' backends (quanto-int4, hqq-int2, ...)"
        )
    axes = {"axis_key": 1, "axis_value": 1} if kv.backend == "hqq" else {}
    try:
        cache = QuantizedCache(
            backend=kv.backend,
            config=config,
            nbits=int(kv.dtype[3:]),
            q_group_size=kv.group_size,
            residual_length=0,
            **axes,
        )
    except (ValueError, ImportError) as exc:
        reason = str(exc).strip().splitlines()[0]
        version = transformers.__version__
        raise QuantbenchError(f"kv_cache {kv.label}: transformers {version} cannot build it: {reason}") from None
    if kv.backend == "hqq":
        unpacked = _unpacked_hqq()
        for layer in cache.layers:
            layer.quantizer = unpacked
    return cache


def _unpacked_hqq() -> type:
    """hqq's Quantizer, leaving the codes unpacked (one per element, in the tensor's dtype)."""
    from hqq.core.quantize import Quantizer

    class Unpacked(Quantizer):
        @classmethod
        def quantize(cls, tensor, **kwargs):
            return super().quantize(tensor, bitpack=False, **kwargs)

    return Unpacked


def ggml_type(kv: KvCache) -> int:
    """llama.cpp's enum value of `kv`'s ggml type (GGML_TYPE_Q8_0 for q8_0)."""
    import llama_cpp

    if kv.backend != LLAMA_CPP:
        raise QuantbenchError(
            f"kv_cache {kv.label} is a transformers cache, for torch trials; GGUF trials take llama.cpp's types "
            "(llama.cpp-q8_0, llama.cpp-q4_0, ...)"
        )
    value = getattr(llama_cpp, f"GGML_TYPE_{kv.dtype.upper()}", None)
    if value is None:
        version = llama_cpp.__version__
        raise QuantbenchError(f"kv_cache {kv.label}: llama-cpp-python {version} has no ggml type {kv.dtype!r}")
    return value
