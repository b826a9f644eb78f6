"""What a result must carry to be reproduced: hardware, library versions, the code's git sha."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
from functools import cache
from pathlib import Path

import psutil
import torch

CORE_LIBRARIES = ("quantbench", "torch", "transformers")


@cache
def hardware(device: str) -> str:
    """A human-readable description of the machine the trial ran on."""
    cpu = _cpu_model()
    text = f"{cpu}, {psutil.cpu_count(logical=True)} threads, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        text += f"; {props.name} {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    return text


def hardware_fingerprint(device: str) -> str:
    return hashlib.sha256(f"{platform.machine()}|{hardware(device)}".encode()).hexdigest()[:16]


def versions(extra_library: str | None = None) -> dict[str, str]:
    names = [*CORE_LIBRARIES, *([extra_library] if extra_library else [])]
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


@cache
def git_sha() -> str:
    """The commit of the quantbench checkout in use, or "" when installed from a wheel."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return ""
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def quiet_library_logs() -> None:
    """Progress bars for every weight shard drown the results; keep warnings and errors, except
    import-time notices about optional GPU kernels and deprecations that say nothing about a run."""
    import logging

    from transformers.utils import logging as hf_logging

    logging.getLogger("torchao").setLevel(logging.ERROR)  # "Failed to load _C_cutlass_90a" on CPU
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    # GPTQModel prints through logbar, not through this logger: backends/gptq.py carries the level
    # over as it imports GPTQModel, so processes that never quantize with it never load logbar.
    logging.getLogger("gptqmodel").setLevel(logging.WARNING)
    # GPTQModel's tokenizer wrapper: "Auto fixed pad_token_id" on every load, to stderr, as its
    # import sets the root logger to INFO (logging.basicConfig).
    logging.getLogger("tokenicer").setLevel(logging.WARNING)

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
