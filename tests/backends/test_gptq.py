"""GPTQ and AWQ through GPTQModel (7.6, in the main environment)."""

import os
import re
import subprocess
import sys

import pytest
import torch
from support import INPUT_IDS, build_tiny_llama

from quantbench import models
from quantbench.backends.awq import AwqBackend, AwqParams
from quantbench.backends.gptq import GptqBackend
from quantbench.errors import QuantbenchError
from quantbench.runner.trial import plan_trial, prepare_trial
from quantbench.spec import EvalSpec, MethodSpec, ModelRef, validate_params

# tiny calibration: the tiny model has 2 layers and hidden 64, so groups of 32
SMALL = {"group_size": 32, "n_samples": 8, "seq_len": 64}


@pytest.fixture(scope="module")
def resolved(tiny_model_dir):
    pytest.importorskip("gptqmodel")
    return models.resolve(ModelRef(str(tiny_model_dir)))


def quantize(backend, resolved, **raw):
    return backend.quantize(resolved, validate_params(backend.Params, {**SMALL, **raw}, backend.name), "cpu")


def expected_bytes(base: torch.nn.Module, bits: int, g_idx: bool) -> int:
    """The GPTQ/AWQ packed format: bits/8 bytes per weight in int32 words, per group of 32 a
    bf16 scale and a bits-wide zero point per output column, GPTQ's int32 group index per input
    column. Layers left unquantized stay in bf16."""
    linears = {n: m for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    total = 0
    for layer in linears.values():
        out, inp = layer.weight.shape
        groups = inp // SMALL["group_size"]
        total += inp * out * bits // 8 + groups * out * (2 + bits / 8) + (4 * inp if g_idx else 0)
    quantized = {id(m.weight) for m in linears.values()}
    return int(total) + sum(2 * p.numel() for p in base.parameters() if id(p) not in quantized)


def test_gptq_bytes_kernel_and_8bit_closer_than_4bit(resolved, baseline):
    errors = {}
    for bits in (8, 4):
        q = quantize(GptqBackend(), resolved, bits=bits)
        assert q.weight_bytes == expected_bytes(baseline[0], bits, g_idx=True)
        assert q.kernel.startswith("GPTQModel ")
        logits = q.logits(INPUT_IDS)
        assert torch.isfinite(logits).all()
        errors[bits] = (logits - baseline[1]).pow(2).mean().item()
    assert q.kernel in ("GPTQModel TorchAtenLinear", "GPTQModel TorchFusedLinear", "GPTQModel TorchLinear")
    assert 0 < errors[8] < errors[4]


# What the trial worker does, in a fresh interpreter: GPTQModel prints its banner as it is imported.
QUIET_QUANTIZE = """
import sys
from quantbench.runner.environment import quiet_library_logs
quiet_library_logs()
from quantbench import models
from quantbench.backends.gptq import GptqBackend
from quantbench.spec import ModelRef, validate_params
backend = GptqBackend()
params = validate_params(backend.Params, {"group_size": 32, "n_samples": 8, "seq_len": 64}, "gptq")
print("kernel:", backend.quantize(models.resolve(ModelRef(sys.argv[1])), params, "cpu").kernel)
"""


def test_quiet_library_logs_silences_gptqmodel_but_keeps_its_warnings(tiny_model_dir):
    """The worker's stdout is the user's terminal: GPTQModel's banner, INFO lines, tables and
    progress bars drowned quantbench's own output there."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}  # GPTQModel hides its bars under pytest
    env["LOGBAR_DISABLE_HEADLESS_DETECTION"] = "1"  # ...and logbar its own in CI: draw them as on a terminal
    run = subprocess.run(
        [sys.executable, "-c", QUIET_QUANTIZE, str(tiny_model_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "kernel: GPTQModel " in out
    for chatter in (
        "GPT-QModel",
        "INFO",
        "Estimated Quantization BPW",
        "Quantizing layer",
        "Loading checkpoint tensors",
        "Python GIL is enabled",
        "Files in directory",  # save() prints the files it wrote...
        "Content of saved",  # ...and whole config files
    ):
        assert chatter not in out, f"{chatter!r} in GPTQModel's output:\n{out[:3000]}"
    assert "Calibration dataset size should be more than 256" in out  # 8 windows: a warning, kept
    assert "INFO:tokenicer" not in run.stderr


def test_awq_bytes_and_kernel(tmp_path, tiny_tokenizer):
    """AWQ is 4-bit only in GPTQModel, so it is compared with the unquantized model alone. Its clip
    search needs output widths divisible by 64: the tiny model's k/v projections (32) are too narrow.

    On the embedded model (SmolLM2-135M, 30 layers) AWQ with the default calibration takes most of
    an hour on this 2-core CPU (its CI trial uses 2 × 32 tokens: tests/integration): GPTQModel's clip search
    (AWQProcessor._compute_best_clip) tries 10 clip ratios for every linear but q/k_proj, each one
    materializing the broadcast product of up to 512 calibration tokens with a 64-row weight block
    (64 × 512 × 1536 elements per block of down_proj): ~1.7e10 bf16 multiply-adds per layer, which
    no GPTQModel option turns off (AWQProcessor.__init__ sets apply_clip = True). Measured: ~1.7
    min per layer in a quiet moment, 15 min for layer 0 at load average 15-20."""
    pytest.importorskip("gptqmodel")
    build_tiny_llama(vocab_size=len(tiny_tokenizer), hidden_size=128, intermediate_size=256).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    resolved = models.resolve(ModelRef(str(tmp_path)))
    base = models.load(resolved)
    q = quantize(AwqBackend(), resolved)
    assert q.weight_bytes == expected_bytes(base, 4, g_idx=False)
    assert q.kernel == "GPTQModel TorchAtenAwqLinear"
    logits = q.logits(INPUT_IDS)
    with torch.inference_mode():
        reference = base(input_ids=INPUT_IDS).logits
    assert torch.isfinite(logits).all()
    assert (logits - reference).pow(2).mean() < reference.pow(2).mean() / 10


def test_awq_rejects_narrow_layers(resolved):
    narrow = (
        r"^awq cannot quantize LlamaForCausalLM: its Linear model\.layers\.0\.self_attn\.k_proj has 32 outputs, "
        r"and GPTQModel's AWQ clip search needs a multiple of 64$"
    )
    assert re.match(narrow, AwqBackend().refusal(resolved, AwqParams(), "cpu"))
    with pytest.raises(QuantbenchError, match=narrow):
        quantize(AwqBackend(), resolved)


def test_group_size_must_divide_in_features(resolved):
    with pytest.raises(QuantbenchError, match="group_size 48 does not divide in_features 64"):
        quantize(GptqBackend(), resolved, group_size=48)


@pytest.mark.parametrize(
    ("backend", "raw", "needle"),
    [
        (GptqBackend, {"bits": 5}, "bits: Input should be 2, 3, 4 or 8"),
        (GptqBackend, {"damp": 1.5}, "damp: Value error, must be between 0 and 1"),
        (GptqBackend, {"group_size": 0}, "group_size: Value error, must be positive, or -1"),
        (GptqBackend, {"compute_dtype": "float32"}, "compute_dtype: Input should be 'bfloat16' or 'float16'"),
        (AwqBackend, {"bits": 8}, "bits: Input should be 4"),
        (AwqBackend, {"desc_act": True}, "unknown parameter"),
    ],
)
def test_invalid_params_fail_in_one_line(backend, raw, needle):
    with pytest.raises(QuantbenchError, match=needle) as err:
        validate_params(backend.Params, raw, f"method {backend.name}")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("method", "params"), [("gptq", {}), ("awq", {}), ("quanto", {"activations": "int8"})])
def test_missing_calibration_file_fails_before_any_trial(tiny_model_dir, tiny_tokenizer, tmp_path, method, params):
    """The calibration corpus is read while the runner checks a trial's inputs, as eval corpora are
    (quanto's int8 activations calibrate through the same parameter). AWQ refuses the tiny model's
    32-wide k/v projections before that, so it gets a wider one."""
    model_dir = tiny_model_dir
    if method == "awq":
        model_dir = tmp_path / "wide"
        wide = build_tiny_llama(vocab_size=len(tiny_tokenizer), hidden_size=128, intermediate_size=256)
        wide.save_pretrained(model_dir)
        tiny_tokenizer.save_pretrained(model_dir)
    spec = MethodSpec(method, {**params, "calibration": str(tmp_path / "absent.txt")})
    trial = plan_trial(ModelRef(str(model_dir)), spec, [EvalSpec("perplexity")])
    with pytest.raises(QuantbenchError, match=r"^corpus '.*absent\.txt' not found") as err:
        prepare_trial(trial, tmp_path / "store")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def test_calibration_corpus_is_keyed_read_up_front_and_used(tiny_model_dir, tmp_path):
    corpus = tmp_path / "calib.txt"
    corpus.write_text("GPTQ calibrates on whatever text the user names.\n")
    model, evals = ModelRef(str(tiny_model_dir)), [EvalSpec("perplexity")]
    builtin = plan_trial(model, MethodSpec.parse("gptq"), evals)
    named = plan_trial(model, MethodSpec.parse(f"gptq:calibration={corpus}"), evals)
    assert named.method.params == {"calibration": str(corpus)}
    assert named.key != builtin.key
    # The runner reads the corpus the parameter names...
    prepared = prepare_trial(named, tmp_path / "store")
    assert prepared.calibration.name == str(corpus)
    assert prepare_trial(builtin, tmp_path / "store").calibration.name == "builtin"
    # ...and the adapter calibrates on it: one sentence cannot fill 32 windows of 256 tokens.
    params = validate_params(GptqBackend.Params, named.method.params, "gptq")
    with pytest.raises(QuantbenchError, match=r"calibration corpus '.*calib\.txt' has \d+ tokens, fewer than"):
        GptqBackend().quantize(prepared.model, params, "cpu", prepared.calibration)
    with pytest.raises(QuantbenchError, match=r"calibration corpus '.*calib\.txt' has \d+ tokens, fewer than"):
        GptqBackend().quantize(prepared.model, params, "cpu")  # direct use reads params.calibration itself


@pytest.mark.parametrize("backend", [GptqBackend, AwqBackend])
def test_available_in_the_main_environment(backend):
    assert backend().check("cpu").ok
