"""A model engine that is not torch: numpy arrays drive a tiny causal LM, quantized or not.

The model: token t's hidden state is tanh(E[x_t] + mean(E[x_0..x_t])) and its logits are that
state times W. The running mean is the whole "KV cache": decoding carries one sum per row. With
`bits`, E and W are rounded to symmetric per-row integer codes (round to nearest) and the model
runs the dequantized codes; `weight_bytes` then counts the int8 codes and fp32 scales it holds.

Its files: `weights.npz` (the fp32 arrays) and a tokenizer, in one directory; `save` writes the
arrays it runs (codes and scales) and the tokenizer, and `load` reads either form back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from quantbench.engines.coverage import Coverage
from quantbench.models import ResolvedModel
from quantbench.spec import ModelRef

CONTEXT_LENGTH = 256


def write_model(directory: Path, tokenizer, hidden: int = 16, seed: int = 0) -> ResolvedModel:
    """Random fp32 weights for `tokenizer`'s vocabulary, saved with it: the unquantized source."""
    rng = np.random.default_rng(seed)
    vocab = len(tokenizer)
    np.savez(
        directory / "weights.npz",
        E=rng.normal(0, 1, (vocab, hidden)).astype(np.float32),
        W=rng.normal(0, 1, (hidden, vocab)).astype(np.float32),
    )
    tokenizer.save_pretrained(directory)
    return source_of(directory)


def source_of(directory: Path) -> ResolvedModel:
    fingerprint = hashlib.sha256((directory / "weights.npz").read_bytes()).hexdigest()
    return ResolvedModel(ModelRef(str(directory)), directory, "local", fingerprint)


def quantize_rows(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row codes (int8) and fp32 scales: w ≈ codes × scales."""
    top = 2 ** (bits - 1) - 1
    scales = (np.abs(w).max(axis=1, keepdims=True) / top).astype(np.float32)
    codes = np.clip(np.rint(w / scales), -top, top).astype(np.int8)
    return codes, scales


@dataclass
class NumpyModel:
    """The model protocol over numpy arrays. `arrays` maps "E" and "W" to fp32 weights, or "E_codes",
    "E_scales", "W_codes", "W_scales" to their quantized form."""

    arrays: dict[str, np.ndarray]
    tokenizer: object
    device: str = "cpu"
    kernel: str = "numpy float32 matmul"
    context_length: int = CONTEXT_LENGTH
    logits_dtype: torch.dtype = torch.float32

    @classmethod
    def load(cls, directory: Path, bits: int | None = None) -> NumpyModel:
        from transformers import AutoTokenizer

        with np.load(directory / "weights.npz") as f:
            arrays = dict(f)
        if bits is not None:
            for name in ("E", "W"):
                w = arrays.pop(name)
                # W is (hidden, vocab): one scale per output token, as per-row over its transpose
                codes, scales = quantize_rows(w.T if name == "W" else w, bits)
                arrays[f"{name}_codes"], arrays[f"{name}_scales"] = codes, scales
        kernel = f"numpy float32 matmul on int{bits} codes" if bits else "numpy float32 matmul"
        return cls(arrays, AutoTokenizer.from_pretrained(directory), kernel=kernel)

    def weight(self, name: str) -> np.ndarray:
        if name in self.arrays:
            return self.arrays[name]
        w = self.arrays[f"{name}_codes"].astype(np.float32) * self.arrays[f"{name}_scales"]
        return w.T if name == "W" else w

    @property
    def weight_bytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    @property
    def coverage(self) -> Coverage:
        """W, its one matrix outside the embedding, in integer codes or in fp32."""
        n = self.weight("W").size
        low = "W_codes" in self.arrays
        return Coverage(n * low, n, int(low), 1, (("W", 1),), () if low else (("W", 1),))

    @property
    def bits_per_weight(self) -> float:
        weights = sum(a.size for name, a in self.arrays.items() if not name.endswith("_scales"))
        return 8 * self.weight_bytes / weights

    @property
    def vocab_size(self) -> int:
        return self.weight("E").shape[0]

    @property
    def decode_weight_bytes(self) -> int:
        embedding = sum(a.nbytes for name, a in self.arrays.items() if name.startswith("E"))
        return self.weight_bytes - embedding  # a step reads one row of E per sequence, all of W

    def _hidden(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hidden states (batch, seq, hidden) and the running sums after the last position."""
        x = self.weight("E")[ids]
        sums = np.cumsum(x, axis=1)
        means = sums / np.arange(1, ids.shape[1] + 1, dtype=np.float32)[None, :, None]
        return np.tanh(x + means), sums[:, -1]

    def logits(self, windows: torch.Tensor) -> torch.Tensor:
        hidden, _ = self._hidden(windows.numpy())
        return torch.from_numpy(hidden @ self.weight("W"))

    def prefill(self, ids: torch.Tensor) -> None:
        hidden, _ = self._hidden(ids.numpy())
        _ = hidden[:, -1] @ self.weight("W")  # the first token's logits, as a real prefill computes them

    def generate(self, ids: torch.Tensor, n_new: int, on_token: Callable[[], None]) -> torch.Tensor:
        E, W = self.weight("E"), self.weight("W")
        hidden, sums = self._hidden(ids.numpy())
        step_hidden, count = hidden[:, -1], ids.shape[1]
        out = []
        for _ in range(n_new):
            token = (step_hidden @ W).argmax(axis=-1)
            on_token()
            out.append(token)
            x = E[token]
            sums, count = sums + x, count + 1
            step_hidden = np.tanh(x + sums / count)
        return torch.from_numpy(np.stack(out, axis=1)).long()

    def save(self, directory: Path) -> None:
        np.savez(directory / "weights.npz", **self.arrays)
        self.tokenizer.save_pretrained(directory)

    def reference(self, source: ResolvedModel) -> NumpyModel:
        return NumpyModel.load(source.path)
