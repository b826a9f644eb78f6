"""Memory: the peak of a block of code (process RSS sampled in a background thread, and on CUDA
the allocator's own peaks), and the `memory` eval, which measures the quantized model's
checkpoint on disk. Bytes throughout; convert only for display.

Checkpoint bytes (`--eval memory`, sweep `memory: {checkpoint: true}`): the model's own `save`
writes it to a temporary directory and every file there is counted. Only a checkpoint that
reloads as the same model counts, so a model offers `save` only then; its backend says why not
otherwise. For the torch engine (transformers' `save_pretrained`), checked on a tiny Llama
(transformers 5.23, 2026-11-23), save -> from_pretrained -> logits: baseline, bnb int8 / nf4
(bitsandbytes 0.50.2) and torchao int8 / int4-intx (torchao 0.18.0) reload exactly (max |Δlogit|
0). quanto (optimum-quanto 0.2.7) and hqq (0.2.8) quantize the module in place: `save_pretrained`
writes a file without a quantization_config, which reloads as a different model (max |Δlogit|
1.44 and 1.16); rtn is fake quantization (dense dequantized weights; the packed format has no
saver). For those no metric is stored, only the reason, once, in the row's note.
"""

from __future__ import annotations

import ctypes
import gc
import math
import resource
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from pydantic import BaseModel, ConfigDict

from quantbench.corpora import Corpus
from quantbench.engines.protocol import QuantizedModel
from quantbench.models import ResolvedModel


@dataclass
class MemoryPeak:
    rss_bytes: int = 0
    # Of rss_bytes, the pages mapped from files (library code, mmapped weights) at the peak sample:
    # shared with other processes and dropped by the kernel under pressure, unlike the private rest.
    rss_file_bytes: int = 0
    # Of rss_file_bytes, the pages of code files (shared libraries, the interpreter), read once when
    # the block ends. How many pages a library keeps resident depends on how its file entered the
    # page cache, not on the model: docs/planner.md, "Why the test leaves code pages out".
    rss_code_bytes: int = 0
    cuda_allocated_bytes: int = 0
    cuda_reserved_bytes: int = 0


class PeakMemory:
    """Context manager recording the peak RSS seen while it is open, and how much of that
    peak sample was mapped from files.

    Sampling can miss a spike shorter than the interval, so the sample is raised to the
    kernel's own high-water mark (ru_maxrss) when that mark was set inside the block.
    """

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.peak = MemoryPeak()
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        self._maxrss_before = _maxrss_bytes()
        self._record(*_rss_and_file_bytes())
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._record(*_rss_and_file_bytes())  # a block shorter than one interval still gets a sample inside
        self.peak.rss_code_bytes = sum(code_file_rss().values())
        maxrss = _maxrss_bytes()
        if maxrss > self._maxrss_before:
            self.peak.rss_bytes = max(self.peak.rss_bytes, maxrss)
        if torch.cuda.is_available():
            self.peak.cuda_allocated_bytes = torch.cuda.max_memory_allocated()
            self.peak.cuda_reserved_bytes = torch.cuda.max_memory_reserved()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._record(*_rss_and_file_bytes())

    def _record(self, rss: int, file: int) -> None:
        if rss >= self.peak.rss_bytes:
            self.peak.rss_bytes, self.peak.rss_file_bytes = rss, file


def release_freed_heap() -> None:
    """Collect garbage and hand the C heap's free pages back to the OS (glibc `malloc_trim`).

    glibc keeps freed blocks below its mmap threshold resident, so without this a block measured
    after another (an eval after quantizing) would carry the first one's freed temporaries in its
    RSS: RTN's quantization left ~600 MiB behind on SmolLM2-135M. No-op without glibc.
    """
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.malloc_trim(0)


def _rss_and_file_bytes() -> tuple[int, int]:
    """Resident bytes of this process and the file-backed part of them (Linux /proc/self/status;
    elsewhere psutil's RSS and 0)."""
    try:
        with open("/proc/self/status", "rb") as f:
            lines = [line.split(b":", 1) for line in f if line.startswith((b"VmRSS:", b"RssFile:"))]
    except OSError:
        return psutil.Process().memory_info().rss, 0
    kib = {name: int(value.split()[0]) for name, value in lines}
    return kib[b"VmRSS"] * 1024, kib[b"RssFile"] * 1024


def code_file_rss() -> dict[str, int]:
    """Resident file-backed bytes per code file mapped into this process: every file with an
    executable mapping (shared libraries, the interpreter), all its mappings counted, less their
    copy-on-write pages, which are private memory. Empty where /proc/self/smaps does not exist."""
    rss: dict[str, int] = {}
    code: set[str] = set()
    path = ""
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                if not fields[0].endswith(":"):  # a mapping's header: range perms offset dev inode [path]
                    path = fields[5].rstrip("\n") if len(fields) == 6 and fields[5].startswith("/") else ""
                    if path and "x" in fields[1]:
                        code.add(path)
                elif path and fields[0] in ("Rss:", "Anonymous:"):
                    sign = 1 if fields[0] == "Rss:" else -1
                    rss[path] = rss.get(path, 0) + sign * int(fields[1]) * 1024
    except OSError:
        return {}
    return {p: b for p, b in rss.items() if p in code}


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class MemoryParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: bool = True  # save the model to a temp dir and count its bytes (costs one write of the weights)


Params = MemoryParams


def check_inputs(source: ResolvedModel, params: MemoryParams, corpus: Corpus | None) -> None:
    """Nothing to check before quantizing: whether a method can save is known only after."""


def checkpoint_bytes(save: Callable[[Path], None], directory: Path) -> int:
    """Write a model with its `save` into `directory` and return the bytes of every file written."""
    save(directory)
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def run(
    model: QuantizedModel, params: MemoryParams, corpus: Corpus | None, source: ResolvedModel
) -> list[tuple[str, float, str] | tuple[str, float, str, str]]:
    """The eval-registry entry point: `checkpoint_bytes`, or no value and the reason in its note."""
    if not params.checkpoint:
        return []
    save = model.save
    if save is None:
        return [("checkpoint_bytes", math.nan, "bytes", model.unsavable_reason)]
    with tempfile.TemporaryDirectory(prefix="quantbench-checkpoint-") as tmp:
        return [("checkpoint_bytes", checkpoint_bytes(save, Path(tmp)), "bytes")]
