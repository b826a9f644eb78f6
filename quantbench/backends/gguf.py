"""GGUF k-quants made by llama.cpp's own quantizer and run by llama.cpp's own kernels.

The source must be a GGUF file (`embedded:NAME` or a `.gguf` path): its tensors are dequantized
once per (model fingerprint) into an F32 GGUF in the cache, with every metadata key copied, and
`llama_model_quantize` turns that into the requested type. A transformers directory would need
llama.cpp's `convert_hf_to_gguf.py`, which ships in the llama-cpp-python sdist but not in its
wheel, so it is refused in one line.

llama.cpp quantizes a tensor in blocks along its rows; a k-quant's super-block is 256 weights, and
a tensor whose row width is not a multiple of it gets an older type instead (`FALLBACK`, from
llama.cpp's `llama_tensor_get_type`). SmolLM2's 576-wide rows take the fallback on most tensors,
so the trial stores the types its file really holds (`tensors:<type>` rows, see
engines/llama_cpp.py) and a `fallback_tensors` row whose note says what llama.cpp wrote instead.

`quant_type=source` measures the source file as it is (no conversion, no quantizing): the embedded
model is itself a Q4_1 GGUF, and divergence compares it with its own dequantized fp32 weights.

No importance matrix: llama.cpp computes one in its `llama-imatrix` tool (tools/imatrix), which is
not part of libllama; llama-cpp-python's bindings only pass a finished one to the quantizer
(`llama_model_quantize_params.imatrix`), so the k-quants here are made without one.
"""

from __future__ import annotations

import ctypes
import json
import math
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from quantbench import models
from quantbench.backends.base import Availability, Backend, MethodParams
from quantbench.backends.layout import Layout
from quantbench.corpora import Corpus
from quantbench.engines.llama_cpp import GgufFacts, LlamaCppModel
from quantbench.engines.protocol import QuantizedModel
from quantbench.errors import QuantbenchError
from quantbench.files import atomic_path
from quantbench.models import ResolvedModel

SOURCE = "source"  # the quant_type that measures the source file as it is
# quant_type -> (the type of most quantized tensors, nominal bits); the _M mixes give some attn_v
# and ffn_down tensors a wider type, which the planner does not price.
TYPES = {
    "Q8_0": ("Q8_0", 8),
    "Q6_K": ("Q6_K", 6),
    "Q5_K_M": ("Q5_K", 5),
    "Q5_K_S": ("Q5_K", 5),
    "Q5_1": ("Q5_1", 5),
    "Q5_0": ("Q5_0", 5),
    "Q4_K_M": ("Q4_K", 4),
    "Q4_K_S": ("Q4_K", 4),
    "Q4_1": ("Q4_1", 4),
    "Q4_0": ("Q4_0", 4),
    "Q3_K_M": ("Q3_K", 3),
    "Q3_K_S": ("Q3_K", 3),
    "Q2_K": ("Q2_K", 2),
}
# The type llama.cpp writes instead when a row width is not a multiple of the type's block, as
# observed with the llama.cpp of llama-cpp-python 0.3.36 on SmolLM2 (older ones wrote IQ4_NL for Q2_K/Q3_K).
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


class GgufParams(MethodParams):
    quant_type: Literal[(*TYPES, SOURCE)] = Field(
        "Q4_K_M",
        description="llama.cpp file type: Q8_0 near-lossless, Q4_K_M the usual default, Q2_K extreme; "
        "_M/_S mixes give some tensors a wider/narrower type; source = the .gguf model file as it is",
    )

    @property
    def bits(self) -> float:
        """Nominal bits; NaN for `source`, whose types only the file knows (its trial stores them)."""
        return math.nan if self.quant_type == SOURCE else TYPES[self.quant_type][1]


class GgufBackend(Backend):
    name = "gguf"
    library = "llama-cpp-python"
    Params = GgufParams
    headline = ("quant_type",)
    is_serializable = True
    devices = ("cpu",)  # the CPU build; llama.cpp on CUDA needs a wheel built with -DGGML_CUDA=on
    note = "no importance matrix: llama.cpp computes one only in its llama-imatrix tool, which the bindings lack"

    def check(self, device: str) -> Availability:
        base = super().check(device)
        if base.ok or device != "cuda":
            return base
        reason = (
            "gguf runs llama.cpp's CPU build; on CUDA it needs llama-cpp-python built with CMAKE_ARGS=-DGGML_CUDA=on"
        )
        return Availability(False, reason)

    def layout(self, params: GgufParams, device: str) -> Layout:
        # The planner keeps embeddings in the layout's dtype; llama.cpp quantizes them too (Q4_K_M:
        # Q6_K or its fallback), so the plan overstates a GGUF model by about that table's savings.
        if params.quant_type == SOURCE:
            raise QuantbenchError("gguf:quant_type=source keeps the types of the file given, which no layout prices")
        base, bits = TYPES[params.quant_type]
        return Layout(
            self.name, f"gguf {params.quant_type}", bits, "float32", lambda rows, cols: tensor_bytes(base, rows, cols)
        )

    def refusal(self, model: ResolvedModel, params: GgufParams, device: str) -> str:
        """A transformers directory, whatever its architecture (see the module docstring); a GGUF file
        holds whichever tensors llama.cpp's converter wrote, and its coverage reads them from the file."""
        return directory_refusal(model)

    def quantize(
        self, model: ResolvedModel, params: GgufParams, device: str, calibration: Corpus | None = None
    ) -> QuantizedModel:
        tokenizer = models.load_tokenizer(model)
        if params.quant_type == SOURCE:
            path = source_gguf(model)
            return LlamaCppModel.open(path, tokenizer, f"llama.cpp {file_type(path)} file as given")
        source = unquantized_gguf(model)
        target = models.cache_dir() / "gguf" / f"{source.stem.removesuffix('-F32')}-{params.quant_type}.gguf"
        quantize_file(source, target, params.quant_type)
        note = fallback_note(GgufFacts.read(target), params.quant_type)
        return LlamaCppModel.open(target, tokenizer, f"llama.cpp {params.quant_type}", notes=note)


def tensor_bytes(type_name: str, rows: int, cols: int) -> int:
    """Bytes of a (rows, cols) tensor that llama.cpp quantizes to `type_name`, falling back where
    `cols` is not a multiple of the type's block."""
    import gguf

    kind = gguf.GGMLQuantizationType[type_name]
    block, size = gguf.GGML_QUANT_SIZES[kind]
    if cols % block and type_name in FALLBACK:
        return tensor_bytes(FALLBACK[type_name], rows, cols)
    return rows * -(-cols // block) * size


def fallback_note(facts: GgufFacts, quant_type: str) -> tuple[tuple, ...]:
    """A `fallback_tensors` row when some matrices could not take `quant_type`'s main type: how many,
    and in its note which types llama.cpp wrote for them instead (read from the file, not predicted)."""
    import gguf

    base = TYPES[quant_type][0]
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[base]][0]
    narrow = [(kind, width) for kind, width in facts.matrices if width % block]
    if not narrow:
        return ()
    written = ", ".join(f"{kind}×{n}" for kind, n in Counter(kind for kind, _ in narrow).most_common())
    widths = ", ".join(str(w) for w in sorted({width for _, width in narrow}))
    note = (
        f"{len(narrow)} of {len(facts.matrices)} matrices have rows of {widths} weights, not a multiple of "
        f"{base}'s {block}-weight block: llama.cpp wrote {written} for them"
    )
    return (("fallback_tensors", len(narrow), "tensors", note),)


def file_type(path: Path) -> str:
    """The file type a GGUF declares (`general.file_type`, e.g. MOSTLY_Q4_1), as its label says it."""
    import gguf

    field = gguf.GGUFReader(path).fields.get(gguf.Keys.General.FILE_TYPE)
    if field is None:
        return "untyped"
    try:
        return gguf.LlamaFileType(int(field.contents())).name.removeprefix("MOSTLY_")
    except ValueError:
        return f"file type {field.contents()}"


def directory_refusal(model: ResolvedModel) -> str:
    """Why `model` cannot be a gguf source (a transformers directory), or ""."""
    if models.gguf_file(model) is not None:
        return ""
    architectures = json.loads((model.path / "config.json").read_text()).get("architectures") or ["a model"]
    return (
        f"gguf needs a GGUF source (embedded:NAME or a .gguf file), not {architectures[0]}'s transformers directory "
        f"{model.path}: convert it with llama.cpp's convert_hf_to_gguf.py (not in the llama-cpp-python wheel)"
    )


def source_gguf(model: ResolvedModel) -> Path:
    """The GGUF file `model` was given as; QuantbenchError for a transformers directory."""
    reason = directory_refusal(model)
    if reason:
        raise QuantbenchError(reason)
    return models.gguf_file(model)


def unquantized_gguf(model: ResolvedModel) -> Path:
    """The F32 GGUF of `model`, converted once per fingerprint into the cache."""
    source = source_gguf(model)
    target = models.cache_dir() / "gguf" / f"{model.fingerprint[:16]}-F32.gguf"
    if not target.is_file():
        with atomic_path(target) as tmp:
            write_f32(source, tmp)
    return target


def write_f32(source: Path, target: Path) -> None:
    """`source` with every tensor dequantized to F32 and every metadata key kept (file type: F32)."""
    import gguf

    try:
        reader = gguf.GGUFReader(source)
        arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    except (ValueError, KeyError, OSError) as exc:
        raise QuantbenchError(f"cannot read GGUF file {source}: {str(exc).splitlines()[0][:200]}") from None
    writer = gguf.GGUFWriter(target, arch)
    for field in reader.fields.values():
        if field.name in (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE) or field.name.startswith(
            "GGUF."
        ):
            continue  # written by GGUFWriter itself, or no longer true
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for tensor in reader.tensors:
        weights = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        writer.add_tensor(tensor.name, np.ascontiguousarray(weights, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantize_file(source: Path, target: Path, quant_type: str) -> None:
    """`llama_model_quantize` from `source` into `target` (written beside it, then renamed)."""
    import llama_cpp
    from llama_cpp import _logger

    _logger.set_verbose(False)  # one log line per tensor otherwise
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant_type}")
    params.nthread = torch.get_num_threads()
    with atomic_path(target) as tmp:
        if llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params)):
            raise QuantbenchError(f"llama.cpp could not quantize {source} to {quant_type}")
