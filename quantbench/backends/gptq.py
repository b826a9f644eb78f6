"""GPTQ through GPTQModel (AutoGPTQ is archived and transformers v5 dropped it). The shared
GPTQModel flow (calibrate on text windows, quantize, save, reload with the inference kernel
GPTQModel picks for this machine) lives here; awq.py reuses it."""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Literal

import torch
from pydantic import PositiveInt, field_validator

from quantbench import models
from quantbench.backends.base import (
    Availability,
    Backend,
    MethodParams,
    QuantizedModel,
    TorchModel,
    calibration_windows,
    check_group_size,
    int_choice,
    meta_model,
    weight_count,
)
from quantbench.corpora import Corpus
from quantbench.models import ResolvedModel


class GptqModelParams(MethodParams):
    """What GPTQ and AWQ share: groups, calibration size, and the dtype the kernels compute in."""

    # 64, not the customary 128: it divides the widths of the default model (SmolLM2-135M: 576)
    # as well as every multiple of 128. -1: one group per output row.
    group_size: int = 64
    # 32 windows of 256 tokens (the GPTQ paper used 128 × 2048): on a busy 2-core CPU GPTQModel
    # spent ~1.5 min per SmolLM2 layer on 128 windows, most of an hour for the default model.
    n_samples: PositiveInt = 32
    seq_len: PositiveInt = 256
    # The text the windows are drawn from, named as the perplexity eval's corpus is: builtin,
    # wikitext2[:split], or a .txt/.jsonl/.parquet file. The runner reads it before any trial starts.
    calibration: str = "builtin"
    # GPTQModel's CPU kernels (ATen int4pack, AWQ) compute in half precision
    compute_dtype: Literal["bfloat16", "float16"] = "bfloat16"

    @field_validator("group_size")
    @classmethod
    def _positive_or_per_row(cls, value: int) -> int:
        if value != -1 and value <= 0:
            raise ValueError("must be positive, or -1 for one group per output row")
        return value


class GptqParams(GptqModelParams):
    bits: int_choice(2, 3, 4, 8) = 4
    desc_act: bool = False  # quantize columns in order of decreasing activation size
    sym: bool = True
    damp: float = 0.05  # fraction of the Hessian's mean diagonal added for stability

    @field_validator("damp")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError("must be between 0 and 1")
        return value


class GptqModelBackend(Backend):
    """GPTQModel-based methods: subclasses give the method's GPTQModel config."""

    library = "gptqmodel"
    requires_calibration = True
    is_serializable = True
    headline = ("bits", "group_size")

    def check(self, device: str) -> Availability:
        base = super().check(device)
        if self.library_version() is None and base.reason.startswith(f"{self.library} is not installed"):
            return Availability(
                False,
                f"gptqmodel is not installed: it needs torch >= 2.14.1 (found {torch.__version__}) and pillow >= 13 "
                "(gradio 6 refuses it), so it lives in its own environment (make gptq-env; .venv-gptq/bin/quantbench)",
            )
        return base

    def gptqmodel_config(self, params: GptqModelParams) -> object:
        raise NotImplementedError

    def check_shapes(self, skeleton: torch.nn.Module, params: GptqModelParams) -> None:
        """Raise QuantbenchError, before any weight is read, for layers the method cannot quantize."""
        if params.group_size > 0:
            check_group_size(skeleton, params.group_size)

    def quantize(
        self, model: ResolvedModel, params: GptqModelParams, device: str, calibration: Corpus | None = None
    ) -> QuantizedModel:
        """`calibration`: the corpus `params.calibration` names, when the runner has read it already."""
        skeleton = meta_model(model)
        dtype = models.DTYPES[params.compute_dtype]
        # Reloading the saved checkpoint selects the inference kernel for this device (quantize
        # leaves the packing kernel in place), so measurements see what a user would deploy.
        with tempfile.TemporaryDirectory(prefix="quantbench-gptqmodel-") as tmp:
            self.save_checkpoint(model, params, tmp, calibration)
            _quiet_gptqmodel()
            from gptqmodel import GPTQModel

            trust = model.ref.trust_remote_code
            module = GPTQModel.load(tmp, device=device, dtype=dtype, trust_remote_code=trust).model.eval()
        layer = next(m for m in module.modules() if type(m).__module__.startswith("gptqmodel.nn_modules.qlinear"))
        return TorchModel.measured(
            module,
            models.load_tokenizer(model),
            device,
            f"GPTQModel {type(layer).__name__}",
            weights=weight_count(skeleton),
        )

    def save_checkpoint(
        self, model: ResolvedModel, params: GptqModelParams, directory: str, calibration: Corpus | None = None
    ) -> None:
        """Calibrate, quantize and save `model` as a GPTQModel checkpoint (safetensors and
        quantize_config.json) in `directory`: what `quantize` reloads and triton:source=gptq|awq converts."""
        self.check_shapes(meta_model(model), params)
        tokenizer = models.load_tokenizer(model)
        corpus = calibration if calibration is not None else params.calibration
        windows = calibration_windows(corpus, tokenizer, params.n_samples, params.seq_len)
        texts = tokenizer.batch_decode(windows)  # GPTQModel takes text, never a dataset name
        # GPTQModel's loader asks for 2 CPU workers but by default grants (cores + 1) // 2, which
        # fails on machines with 2 cores or fewer; it reads this variable when first imported.
        if ((os.cpu_count() or 1) + 1) // 2 < 2:
            os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
        _quiet_gptqmodel()
        from gptqmodel import GPTQModel

        dtype = models.DTYPES[params.compute_dtype]
        trust = model.ref.trust_remote_code
        work = GPTQModel.load(str(model.path), self.gptqmodel_config(params), dtype=dtype, trust_remote_code=trust)
        work.quantize(texts, batch_size=1)
        work.save(directory)


def _quiet_gptqmodel() -> None:
    """Give GPTQModel's terminal output the level set for the `gptqmodel` logger (quiet_library_logs
    sets WARNING): its banner, INFO lines, per-layer tables and progress bars go to stdout, which in
    a trial worker is the user's terminal. Call it before GPTQModel is first imported."""
    level = logging.getLogger("gptqmodel").level
    if level == logging.NOTSET:
        return
    # GPTQModel logs through logbar's shared logger, outside the `gptqmodel` hierarchy, and prints
    # its banner while being imported. That logger is created at INFO on first use, so its level
    # (logbar's documented setLevel) can only be set once it exists: here, rather than in
    # quiet_library_logs, since creating it prints a blank line and starts two threads.
    from logbar import LogBar

    LogBar.shared().setLevel(level)
    if level <= logging.INFO:
        return
    # Progress bars ignore the level, and logbar turns them off only in what it takes for CI (CI=1,
    # TERM=dumb...), which would mean faking that for the whole process. GPTQModel has a switch of
    # its own, for pytest runs without a terminal: while this returns True its logger hands out
    # no-op bars (and reports progress as INFO lines, silenced above). It is private, so a
    # GPTQModel without it keeps its bars rather than failing.
    import gptqmodel.utils.logger as gptqmodel_logger

    if hasattr(gptqmodel_logger, "_suppress_live_renderables"):
        gptqmodel_logger._suppress_live_renderables = lambda: True


class GptqBackend(GptqModelBackend):
    name = "gptq"
    Params = GptqParams

    def gptqmodel_config(self, params: GptqParams) -> object:
        from gptqmodel import GPTQConfig

        return GPTQConfig(
            bits=params.bits,
            group_size=params.group_size,
            desc_act=params.desc_act,
            act_group_aware=not params.desc_act,  # GPTQModel's default; it excludes desc_act
            sym=params.sym,
            damp_percent=params.damp,
        )
