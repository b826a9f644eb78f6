"""What tests (and bench scripts) share: paths to the real data beside the repo, and a tiny random
Llama with a real, small tokenizer trained in-process. Fixtures built from these live in conftest.py."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import torch

# Two rows of 16 token ids: what the adapter tests feed every model.
INPUT_IDS = torch.arange(1, 33).reshape(2, 16)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
WIKITEXT_TEST = SHARED_DATA / "wikitext2" / "wiki.test.raw"


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on CPython's help texts: fast, offline, real offsets."""
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(topics.values())[:20], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def build_tiny_llama(vocab_size: int = 512, seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    config.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**config)).eval()


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving_ui(args: list[str], env: dict[str, str], start_timeout_s: float) -> Iterator[tuple[str, list[str]]]:
    """`quantbench ui ARGS` in its own session (so stopping it also stops the trial workers it
    started): yields its URL once it prints it, and the lines it has written so far (a live list)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "quantbench.app.cli", "ui", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def relay() -> None:
        for line in proc.stdout:
            log.append(line)
            lines.put(line)

    threading.Thread(target=relay, daemon=True).start()
    url, deadline = None, time.monotonic() + start_timeout_s
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line.startswith("quantbench ui: http://"):
            url = line.split()[2]
    try:
        if url is None:
            raise RuntimeError("quantbench ui did not start:\n" + "".join(log[-40:]))
        yield url, log
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class LogitsFreedBeforeNextForward:
    """A logits function that fails when the batch it returned last is still alive as it is called
    again: a consumer of `scored_windows` keeping a window past its turn holds that window's whole
    batch beside the next forward's logits (one batch more peak memory than the planner counts)."""

    def __init__(self, fn):
        self.fn, self.last, self.calls = fn, None, 0

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        assert self.last is None or self.last() is None, "the last batch of logits is alive during the next forward"
        array = self.fn(ids).detach().float().numpy().copy()  # the tensor's storage holds the only reference
        self.last, self.calls = weakref.ref(array), self.calls + 1
        return torch.from_numpy(array)


def noisy_model(source, noise: float = 0.0):
    """The tiny model of `source` behind the protocol, every weight moved by `noise` standard
    deviations of seeded Gaussian noise (0: the model itself), as a stand-in quantized model."""
    from quantbench import models
    from quantbench.engines.torch_model import TorchModel

    module = models.load(source)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(noise * p.std() * torch.randn_like(p))
    return TorchModel(module, models.load_tokenizer(source), "cpu", 0, 32.0, "test")
