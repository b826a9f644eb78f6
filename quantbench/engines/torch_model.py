"""The torch engine: a transformers causal LM (quantized in place by its library) behind the model protocol."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from quantbench import models
from quantbench.engines.coverage import Coverage
from quantbench.engines.kv_cache import KvCache, transformers_cache
from quantbench.errors import QuantbenchError
from quantbench.models import ResolvedModel

# Config attributes that carry a context length, in the order lm-eval's `resolve_max_length` reads
# them, so the tasks eval truncates where lm-eval's HFLM did.
CONTEXT_ATTRIBUTES = ("n_positions", "max_position_embeddings", "n_ctx")
DEFAULT_CONTEXT_LENGTH = 2048  # lm-eval's, for a config that names none


@dataclass
class TorchModel:
    """`module`, a transformers causal LM, as the model protocol sees it. Only this class reads `module`."""

    module: torch.nn.Module
    tokenizer: object
    device: str
    weight_bytes: int
    bits_per_weight: float
    kernel: str
    coverage: Coverage | None = None  # None: built outside a backend (tests), which says nothing about it

    @classmethod
    def measured(
        cls,
        module: torch.nn.Module,
        tokenizer: object,
        device: str,
        kernel: str,
        weights: int,
        size: int | None = None,
        coverage: Coverage | None = None,
    ) -> TorchModel:
        """`module` with its footprint measured: `size` defaults to `weight_bytes(module)`, and
        `weights` is the number of weights before quantization (packing changes the parameter count);
        `coverage`, which of its matrices the backend found stored in low precision."""
        size = weight_bytes(module) if size is None else size
        return cls(module, tokenizer, device, size, 8 * size / weights, kernel, coverage)

    @torch.inference_mode()
    def logits(self, windows: torch.Tensor) -> torch.Tensor:
        return self._forward(windows).float().cpu()

    def _forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.module(input_ids=windows.to(self.device), use_cache=False).logits

    @cached_property
    def logits_dtype(self) -> torch.dtype:
        # What the module's forward yields (transformers no longer upcasts logits): one token shows it.
        with torch.inference_mode():
            return self._forward(torch.zeros(1, 1, dtype=torch.long)).dtype

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor) -> None:
        self.module(input_ids=ids, use_cache=True, **self._last_logits_only)

    @torch.inference_mode()
    def kv_logits(self, windows: torch.Tensor, context: int, step: int, kv: KvCache | None) -> torch.Tensor:
        """Logits (batch, seq - context, vocab), fp32 on the CPU, of positions `context`… of `windows`,
        read through a KV cache stored as `kv` says (engines/kv_cache.py): the first `context` tokens
        fill it in one forward, the rest follow `step` tokens per forward."""
        cache = transformers_cache(kv, self.module.config)
        ids = windows.to(self.device)
        try:
            self.module(input_ids=ids[:, :context], cache=cache, use_cache=True, **self._last_logits_only)
            out = [
                self.module(input_ids=ids[:, s : s + step], cache=cache, use_cache=True).logits
                for s in range(context, ids.shape[1], step)
            ]
        except ValueError as exc:  # the cache library refusing a shape, e.g. a group size that does not divide it
            if kv is None:
                raise
            reason = str(exc).strip().splitlines()[0]
            raise QuantbenchError(f"kv_cache {kv.label}: {reason}; try another kv_group_size") from None
        return torch.cat(out, dim=1).float().cpu()

    @cached_property
    def _last_logits_only(self) -> dict:
        return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(self.module.forward).parameters else {}

    @torch.inference_mode()
    def generate(self, ids: torch.Tensor, n_new: int, on_token: Callable[[], None]) -> torch.Tensor:
        tokenizer = self.tokenizer
        out = self.module.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            min_new_tokens=n_new,
            max_new_tokens=n_new,
            do_sample=False,
            logits_processor=[_OnScores(on_token)],
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
        return out[:, ids.shape[1] :]

    @property
    def context_length(self) -> int:
        config = self.module.config
        return next(
            (getattr(config, name) for name in CONTEXT_ATTRIBUTES if getattr(config, name, None)),
            DEFAULT_CONTEXT_LENGTH,
        )

    @property
    def vocab_size(self) -> int:
        return self.module.get_input_embeddings().num_embeddings

    @property
    def decode_weight_bytes(self) -> int:
        embeddings = self.module.get_input_embeddings().weight
        output = getattr(self.module.get_output_embeddings(), "weight", None)
        # A quantized output layer may keep its weight packed, behind a method: then it shares nothing.
        tied = isinstance(output, torch.Tensor) and output.data_ptr() == embeddings.data_ptr()
        return self.weight_bytes - (0 if tied else embeddings.numel() * embeddings.element_size())

    def save(self, directory: Path) -> None:
        self.module.save_pretrained(directory)

    def reference(self, source: ResolvedModel) -> TorchModel:
        return reference_model(source, self.tokenizer, self.device)


def reference_model(source: ResolvedModel, tokenizer: object, device: str) -> TorchModel:
    """The unquantized model behind `source` in fp32 through transformers: the reference divergence
    compares every method with, whichever engine runs the method."""
    module = models.load(source, dtype="float32", device=device)
    return TorchModel.measured(module, tokenizer, device, "torch float32 matmul", weight_count(module))


class _OnScores:
    """A logits processor that calls `on_token` each time generate has a new token's scores. A plain
    callable, so importing this module does not import transformers' generation code."""

    def __init__(self, on_token: Callable[[], None]) -> None:
        self.on_token = on_token

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.on_token()
        return scores


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of everything the module would save (parameters, persistent buffers, quantization
    state such as scales and zeros), counting tied/shared storage once."""
    seen: set[int] = set()
    total = 0
    for value in module.state_dict().values():
        if not isinstance(value, torch.Tensor):
            continue
        for tensor in _plain_tensors(value):
            ptr = tensor.untyped_storage().data_ptr()
            if ptr in seen:
                continue
            seen.add(ptr)
            total += tensor.numel() * tensor.element_size()
    return total


def _plain_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors that hold a tensor's data. Wrapper subclasses (torchao, quanto) report the
    logical shape and dtype of the unquantized weight; their packed codes and scales are inside."""
    if not hasattr(tensor, "__tensor_flatten__"):
        return [tensor]
    names, _ = tensor.__tensor_flatten__()
    inner = (getattr(tensor, name) for name in names)
    return [plain for t in inner if t is not None for plain in _plain_tensors(t)]


def weight_count(module: torch.nn.Module) -> int:
    """Number of distinct parameters (the model's weights before any quantization packing)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())
