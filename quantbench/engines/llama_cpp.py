"""The llama.cpp engine: a GGUF file run by llama.cpp's own kernels behind the model protocol.

Token ids come from the source model's Hugging Face tokenizer, so every method is scored on the
same ids; the GGUF holds the same vocabulary (tests/engines/test_llama_cpp.py checks that both
tokenize alike). The context is llama.cpp's: one KV cache of the model's training context,
shared by up to `MAX_SEQUENCES` sequences, so `generate` decodes a batch in lock step as
one llama_batch per step.

The divergence reference is the torch fp32 model, the one every other method is compared with
(one cached baseline pass, one reference for the whole table). llama.cpp's own F32 run of the
same weights differs from it by a mean KL of about 1e-6 nats (measured in the tests).
"""

from __future__ import annotations

import ctypes
import math
import shutil
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from quantbench.engines.coverage import Coverage
from quantbench.engines.kv_cache import KvCache, ggml_type
from quantbench.engines.torch_model import TorchModel, reference_model
from quantbench.errors import QuantbenchError
from quantbench.models import ResolvedModel

MAX_SEQUENCES = 64  # rows one generate may decode together (llama.cpp allows up to 256)
BATCH = 512  # tokens per llama_decode call (llama.cpp's default n_batch)


@dataclass(frozen=True)
class GgufFacts:
    """What the file holds: tensor bytes and weights, the type of each tensor, tied embeddings."""

    weight_bytes: int
    weights: int
    embedding_bytes: int
    tied: bool
    types: Counter = field(default_factory=Counter)
    matrices: tuple[tuple[str, int], ...] = ()  # (type, row width) of each tensor of two or more dimensions
    coverage: Coverage | None = None

    @classmethod
    def read(cls, path: Path) -> GgufFacts:
        import gguf

        try:
            tensors = gguf.GGUFReader(path).tensors
        except (ValueError, OSError) as exc:
            raise QuantbenchError(f"cannot read GGUF file {path}: {str(exc).splitlines()[0][:200]}") from None
        names = {t.name: t for t in tensors}
        embedding = names.get("token_embd.weight")
        return cls(
            weight_bytes=sum(int(t.n_bytes) for t in tensors),
            weights=sum(int(t.n_elements) for t in tensors),
            embedding_bytes=int(embedding.n_bytes) if embedding is not None else 0,
            tied="output.weight" not in names,
            types=Counter(t.tensor_type.name for t in tensors),
            # gguf-py lists a tensor's shape in ggml's order: the row width first
            matrices=tuple((t.tensor_type.name, int(t.shape[0])) for t in tensors if len(t.shape) >= 2),
            coverage=_coverage(tensors),
        )


FLOAT_TYPES = frozenset({"F32", "F16", "BF16", "F64"})


def _coverage(tensors: list) -> Coverage:
    """The block matrices (`blk.N.*` tensors of two or more dimensions; a third counts experts) and
    those of a quantized type, named by tensor type: llama.cpp stores what the GGUF file holds."""
    matrices = [t for t in tensors if t.name.startswith("blk.") and len(t.shape) >= 2]
    low = [t for t in matrices if t.tensor_type.name not in FLOAT_TYPES]

    def count(t) -> int:
        return int(math.prod(int(d) for d in t.shape[2:]))

    def types(ts: list) -> tuple[tuple[str, int], ...]:
        counts: Counter = Counter()
        for t in ts:
            counts[t.tensor_type.name] += count(t)
        return tuple(sorted(counts.items()))

    return Coverage(
        quantized_weights=sum(int(t.n_elements) for t in low),
        total_weights=sum(int(t.n_elements) for t in matrices),
        quantized_matrices=sum(count(t) for t in low),
        total_matrices=sum(count(t) for t in matrices),
        layers=types(matrices),
        left=types([t for t in matrices if t.tensor_type.name in FLOAT_TYPES]),
    )


class LlamaCppModel:
    """A GGUF file loaded by llama.cpp (CPU) for evaluation."""

    device = "cpu"
    logits_dtype = torch.float32  # llama.cpp's output layer writes fp32 logits

    def __init__(self, path: Path, tokenizer: object, label: str, threads: int, notes: tuple[tuple, ...] = ()) -> None:
        import llama_cpp
        from llama_cpp import _internals, _logger

        _logger.set_verbose(False)  # llama.cpp logs every graph it reserves otherwise

        self._lib = llama_cpp
        self.path = path
        self.tokenizer = tokenizer
        self.threads = threads
        self.notes = notes
        self.facts = GgufFacts.read(path)
        model_params = llama_cpp.llama_model_default_params()
        # ggml's AMX matmul (an "extra buffer type") segfaults on the AMX Xeon this was built and
        # tested on; without extra buffers the weights stay in plain CPU buffers (no AMX, no repacking).
        model_params.use_extra_bufts = not has_amx()
        try:
            self._model = _internals.LlamaModel(path_model=str(path), params=model_params, verbose=False)
        except ValueError as exc:
            raise QuantbenchError(f"llama.cpp cannot load {path}: {exc}") from None
        self._ctx = self._context()
        self._kv_contexts: dict[KvCache, object] = {}
        self._batch = llama_cpp.llama_batch_init(BATCH, 0, MAX_SEQUENCES)
        weakref.finalize(self, llama_cpp.llama_batch_free, self._batch)
        self.context_length = self._ctx.n_ctx()
        self.vocab_size = self._model.n_vocab()
        types = " ".join(f"{name}×{n}" for name, n in self.facts.types.most_common())
        buffers = "" if model_params.use_extra_bufts else ", no AMX/repacking"
        self.kernel = f"{label} (llama.cpp CPU, {threads} threads{buffers}, f16 KV cache; tensors {types})"

    def _context(self, kv: KvCache | None = None) -> object:
        """A llama.cpp context of the model's training length. llama.cpp's defaults otherwise, as llama-cli
        and llama-perplexity run: an f16 KV cache and flash attention where the CPU build has it (both round
        K and V to f16; logits move ~1e-3); `kv`'s ggml type for K and V instead, with flash attention on,
        which llama.cpp needs to read a quantized V."""
        from llama_cpp import _internals

        params = self._lib.llama_context_default_params()
        params.n_ctx = self._model.n_ctx_train()
        params.n_batch = params.n_ubatch = BATCH
        params.n_seq_max = MAX_SEQUENCES
        params.kv_unified = True  # all sequences share the n_ctx cells, as one batch of prompts needs
        params.n_threads = params.n_threads_batch = self.threads
        if kv is not None:
            params.type_k = params.type_v = ggml_type(kv)
            params.flash_attn_type = self._lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
        try:
            return _internals.LlamaContext(model=self._model, params=params, verbose=False)
        except ValueError as exc:
            raise QuantbenchError(
                f"llama.cpp cannot make a context with KV cache {kv.label if kv else 'f16'}: {exc}"
            ) from None

    @classmethod
    def open(
        cls, path: Path, tokenizer: object, label: str, threads: int | None = None, notes: tuple[tuple, ...] = ()
    ) -> LlamaCppModel:
        """`path` on `threads` CPU threads (default: torch's, as the torch methods run); `label` opens
        the kernel string; `notes` are rows the backend adds to `trial_facts`."""
        return cls(path, tokenizer, label, threads or torch.get_num_threads(), notes)

    def trial_facts(self) -> list[tuple]:
        """What the trial stores beyond the protocol's facts, as (name, value, unit[, note]) rows: the
        file's exact bytes, the threads llama.cpp ran on, how many tensors got each ggml type
        (`tensors:Q5_0`), llama.cpp's build (in the note of `llama_cpp_build`), and the backend's notes."""
        rows = [("file_bytes", self.path.stat().st_size, "bytes"), ("threads", self.threads, "threads")]
        rows += [(f"tensors:{name}", n, "tensors") for name, n in sorted(self.facts.types.items())]
        rows.append(("llama_cpp_build", math.nan, "", build_info()))
        return rows + list(self.notes)

    @property
    def weight_bytes(self) -> int:
        return self.facts.weight_bytes

    @property
    def coverage(self) -> Coverage | None:
        return self.facts.coverage

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.facts.weight_bytes / self.facts.weights

    @property
    def decode_weight_bytes(self) -> int:
        return self.facts.weight_bytes - (0 if self.facts.tied else self.facts.embedding_bytes)

    def _decode(self, tokens: list[tuple[int, int, int, bool]], ctx: object = None) -> None:
        """One llama_decode of (token, position, sequence, wants logits) entries, in `ctx` (default: the
        model's own context)."""
        ctx = ctx or self._ctx
        batch = self._batch
        batch.n_tokens = len(tokens)
        for i, (token, pos, seq, wants) in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, wants
            batch.seq_id[i][0] = seq
        code = self._lib.llama_decode(ctx.ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code} (context {self.context_length} tokens)")

    def _outputs(self, n: int, ctx: object = None) -> np.ndarray:
        """The last decode's logits, (n, vocab) for the n tokens it asked for in batch order: a view of
        llama.cpp's buffer, valid until the next decode."""
        pointer = self._lib.llama_get_logits((ctx or self._ctx).ctx)
        return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), (n, self.vocab_size))

    def _feed(self, rows: list[list[int]], all_logits: bool, ctx: object = None, start: int = 0) -> np.ndarray:
        """Decode each row as its own sequence from position `start`, BATCH tokens per call; return the
        logits (tokens asked for, vocab), copied: every token's, or each row's last."""
        entries = [(token, start + pos, seq, all_logits or pos == len(row) - 1)
                   for seq, row in enumerate(rows) for pos, token in enumerate(row)]  # fmt: skip
        out = []
        for begin in range(0, len(entries), BATCH):
            chunk = entries[begin : begin + BATCH]
            self._decode(chunk, ctx)
            wanted = sum(entry[3] for entry in chunk)
            if wanted:
                out.append(self._outputs(wanted, ctx))
        return np.concatenate(out) if out else np.empty((0, self.vocab_size), np.float32)

    def kv_logits(self, windows: torch.Tensor, context: int, step: int, kv: KvCache | None) -> torch.Tensor:
        """The protocol's optional cached logits (engines/protocol.py `kv_logits_of`): each row's first
        `context` tokens fill a cache of `kv`'s ggml type (None: the f16 default), the rest follow `step`
        tokens per decode, each reading every cached K/V quantized, its own included."""
        if kv is not None and kv not in self._kv_contexts:
            ggml_type(kv)  # a torch cache named here is refused before a context is made
            self._kv_contexts[kv] = self._context(kv)
        ctx = self._ctx if kv is None else self._kv_contexts[kv]
        out = []
        for row in windows.tolist():
            ctx.kv_cache_clear()
            self._feed([row[:context]], all_logits=False, ctx=ctx)
            steps = [self._feed([row[s : s + step]], True, ctx, start=s) for s in range(context, len(row), step)]
            out.append(np.concatenate(steps))
        return torch.from_numpy(np.stack(out))

    def logits(self, windows: torch.Tensor) -> torch.Tensor:
        out = []
        for row in windows.tolist():
            self._ctx.kv_cache_clear()
            out.append(self._feed([row], all_logits=True))
        return torch.from_numpy(np.stack(out))

    def prefill(self, ids: torch.Tensor) -> None:
        self._check_rows(ids)
        self._ctx.kv_cache_clear()
        self._feed(ids.tolist(), all_logits=False)

    def generate(self, ids: torch.Tensor, n_new: int, on_token: Callable[[], None]) -> torch.Tensor:
        self._check_rows(ids)
        if ids.numel() + len(ids) * n_new > self.context_length:
            raise QuantbenchError(
                f"{len(ids)} rows of {ids.shape[1]} + {n_new} tokens exceed llama.cpp's context of "
                f"{self.context_length} cells"
            )
        self._ctx.kv_cache_clear()
        scores = self._feed(ids.tolist(), all_logits=False)
        out = []
        for step in range(n_new):
            tokens = scores.argmax(axis=-1).tolist()
            on_token()
            out.append(tokens)
            if step + 1 < n_new:
                position = ids.shape[1] + step
                self._decode([(token, position, seq, True) for seq, token in enumerate(tokens)])
                scores = self._outputs(len(tokens))
        return torch.tensor(out, dtype=torch.long).T.contiguous()

    def _check_rows(self, ids: torch.Tensor) -> None:
        if len(ids) > MAX_SEQUENCES:
            raise QuantbenchError(f"llama.cpp engine decodes at most {MAX_SEQUENCES} rows at once, got {len(ids)}")

    def save(self, directory: Path) -> None:
        """The GGUF file itself: it holds the tokenizer too, and reloads with `open` as this model."""
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path, directory / self.path.name)

    def reference(self, source: ResolvedModel) -> TorchModel:
        return reference_model(source, self.tokenizer, self.device)


def build_info() -> str:
    """llama.cpp's version, ggml's version and commit (where the shipped libggml-base exports them)
    and `llama_print_system_info`: the CPU features this build uses."""
    import llama_cpp

    parts = [f"llama.cpp {llama_cpp.llama_version().decode()}"]
    for path in sorted((Path(llama_cpp.__file__).parent / "lib").glob("*ggml-base.*"))[:1]:
        try:
            lib = ctypes.CDLL(str(path))
            lib.ggml_version.restype = lib.ggml_commit.restype = ctypes.c_char_p
            parts.append(f"ggml {lib.ggml_version().decode()} commit {lib.ggml_commit().decode()}")
        except (OSError, AttributeError):
            pass  # another build of the library: its version is all there is
    system = llama_cpp.llama_print_system_info().decode().strip(" |")
    return ", ".join(parts) + f"; {system}"


def has_amx() -> bool:
    """Whether the CPU has AMX tiles (Linux: /proc/cpuinfo's flags)."""
    try:
        return "amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
