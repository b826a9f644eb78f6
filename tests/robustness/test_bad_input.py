"""Bad input through the real CLI: each case exits with its status, says what was wrong in one
line on stderr (no traceback), and writes nothing half-way.

CASES is also README's "Bad input" table: `test_readme_lists_every_case` fails when the two
differ, and `python tests/robustness/test_bad_input.py` prints the table to paste.
In a message, "…" stands for a path, a number or a library's own words.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # support.py, when run as a script
from cli_runs import hidden_entries, isolated_env, run_cli, synthetic_trial, tree
from support import ROOT

from quantbench.models import EMBEDDED
from quantbench.results.store import write_trial

GOOD_KEY = "00000000000000aa"  # a valid trial already in the store of every case


@dataclass
class Setup:
    """One case's scratch directory: a valid tiny model, a store holding one trial, an export dir."""

    tmp: Path
    model: Path

    @property
    def store(self) -> Path:
        return self.tmp / "store"

    @property
    def exports(self) -> Path:
        return self.tmp / "exports"

    def run(self, *extra: str, model: Path | str | None = None) -> list[str]:
        return ["run", "--model", str(model or self.model), "--seq-len", "32", "--max-tokens", "64",
                "--store", str(self.store), *extra]  # fmt: skip

    def model_copy(self, name: str = "model") -> Path:
        return shutil.copytree(self.model, self.tmp / name)

    def file(self, name: str, data: bytes | str) -> Path:
        path = self.tmp / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def sweep(self, text: str) -> list[str]:
        return ["sweep", str(self.file("sweep.yaml", text)), "--store", str(self.store)]

    def export(self, out: str) -> list[str]:
        return ["export", "--format", "csv", "--out", out, "--dir", str(self.exports), "--store", str(self.store)]


@dataclass(frozen=True)
class Case:
    id: str
    input: str  # README's "input" column
    message: str  # the error line after "quantbench: error: ", or the whole warning line
    args: Callable[[Setup], list[str]]
    exit: int = 2
    # before: checked before any trial starts; worker: needs the model's layer shapes, so the trial's
    # worker finds it and the trial's start and progress lines ("[1/1] …") come first;
    # store: a damaged file in the store is skipped with a warning, the command still works.
    found: str = "before"

    def expected_line(self) -> str:
        prefix = {"before": "quantbench: error: ", "worker": "[1/1] error in … s: ", "store": ""}[self.found]
        return prefix + self.message


def _no_weights(s: Setup) -> list[str]:
    model = s.model_copy()
    (model / "model.safetensors").unlink()
    return s.run(model=model)


def _truncated_safetensors(s: Setup) -> list[str]:
    model = s.model_copy()
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    return s.run(model=model)


def _garbled_safetensors(s: Setup) -> list[str]:
    model = s.model_copy()
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:16] = b"#garbage"
    weights.write_bytes(bytes(data))
    return s.run(model=model)


def _embedded_gguf() -> Path:
    dist_name, file_name = EMBEDDED["smollm2-135m"]
    dist = importlib.metadata.distribution(dist_name)
    return Path(dist.locate_file(next(f for f in dist.files if f.name == file_name)))


def _truncated_gguf(s: Setup) -> list[str]:
    # The real file cut inside its first tensor: header and vocabulary read fine, then the data ends.
    with _embedded_gguf().open("rb") as f:
        return s.run(model=s.file("cut.gguf", f.read(8_000_000)))


def _moe_gguf(s: Setup) -> list[str]:
    """A Mixtral-style GGUF (experts in `ffn_*_exps`), which transformers' loader reads as a dense Llama."""
    from support import build_tokenizer
    from tiny_gguf import write_tiny_gguf

    return s.run(model=write_tiny_gguf(s.tmp / "moe.gguf", build_tokenizer(), experts=4))


def _unknown_architecture(s: Setup) -> list[str]:
    model = s.model_copy()
    config = model / "config.json"
    config.write_text(config.read_text().replace('"llama"', '"nosucharch"'))
    return s.run(model=model)


def _gpt2(s: Setup) -> list[str]:
    """A tiny GPT-2 (Conv1D layers, which quanto does not quantize) beside the tiny model's tokenizer."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(s.model)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=256)
    model = s.tmp / "gpt2"
    GPT2LMHeadModel(config).save_pretrained(model)
    tokenizer.save_pretrained(model)
    return s.run("--method", "quanto", model=model)


# Every weight matrix of the tiny Llama (2 layers of 7 projections), so rtn is left nothing to quantize.
EVERY_LAYER = "+".join(f"model.layers.{i}.{p}" for i in range(2) for p in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
    "mlp.down_proj"))  # fmt: skip


def _unwritable_store(s: Setup) -> list[str]:
    args = s.run()
    args[args.index("--store") + 1] = str(s.file("a-file", "") / "store")
    return args


def _outside_symlink(s: Setup) -> list[str]:
    (s.tmp / "outside").mkdir()
    (s.exports / "link").symlink_to(s.tmp / "outside")
    return s.export("link/table.csv")


def _foreign_parquet(s: Setup) -> list[str]:
    pq.write_table(pa.table({"a": [1]}), s.store / "foreign.parquet")
    return ["results", "--store", str(s.store)]


def _truncated_parquet(s: Setup) -> list[str]:
    (s.store / "truncated.parquet").write_bytes((s.store / f"{GOOD_KEY}.parquet").read_bytes()[:200])
    return ["results", "--store", str(s.store)]


CORPUS_MISSING = "corpus '…' not found: not 'builtin', not 'wikitext2[:split]', not an existing file"
SHORT = "corpus '…' has … tokens, fewer than one window of seq_len 32; use a smaller --seq-len or a larger corpus"
SWEEP_KEYS = "models, methods, evals, device, repeats, timeout_s, trust_remote_code"

CASES = [
    Case("model-missing", "model path that does not exist",
         "model '…' not found: not an embedded:NAME (smollm2-135m), not an existing path, "
         "not a hub id of the form org/name", lambda s: s.run(model=s.tmp / "no-such-dir")),
    Case("gguf-missing", "`.gguf` file that does not exist", "model file … does not exist",
         lambda s: s.run(model=s.tmp / "no-such.gguf")),
    Case("hub-offline", "hub id not in the local cache, offline",
         "model 'nobody/no-such-model' is not a local path, not in the Hugging Face cache, and could not be "
         "downloaded (…)", lambda s: s.run(model="nobody/no-such-model")),
    Case("embedded-unknown", "unknown embedded model", "unknown embedded model 'gpt-5'; available: smollm2-135m",
         lambda s: s.run(model="embedded:gpt-5")),
    Case("no-config", "directory without config.json",
         "directory … has no config.json: not a transformers model directory",
         lambda s: s.run(model=s.tmp)),
    Case("no-weights", "directory without weights", "directory … holds no model weights (*.safetensors or *.bin)",
         _no_weights),
    Case("safetensors-truncated", "truncated safetensors", "corrupt safetensors file …: truncated (… bytes, needs …)",
         _truncated_safetensors),
    Case("safetensors-garbled", "safetensors with a garbled header",
         "corrupt safetensors file …: header is not valid JSON", _garbled_safetensors),
    Case("gguf-truncated", "truncated GGUF", "cannot read GGUF file …: …", _truncated_gguf),
    Case("gguf-garbage", "GGUF that is not one", "cannot read GGUF file …: … does not start with the GGUF magic "
         "bytes, so it is not a GGUF file.", lambda s: s.run(model=s.file("noise.gguf", bytes(range(256)) * 64))),
    Case("gguf-method-truncated", "truncated GGUF to quantize with `gguf`", "cannot read GGUF file …: …",
         lambda s: [*_truncated_gguf(s), "--method", "gguf:quant_type=Q8_0"]),
    Case("gguf-moe", "GGUF whose tensors transformers cannot all place (a Mixtral-style MoE)",
         "transformers' GGUF loader cannot read 6 tensors of … (e.g. model.layers.0.mlp.down_proj.weight): "
         "this model's GGUF layout is not supported as a source", _moe_gguf),
    Case("gguf-type-unknown", "unknown `gguf` quant_type", "method 'gguf': quant_type: Input should be 'Q8_0', "
         "'Q6_K', … or 'source'", lambda s: s.run("--method", "gguf:quant_type=Q4_K_X")),
    Case("architecture-unknown", "architecture transformers cannot build as a causal LM",
         "…/config.json: model_type 'nosucharch' is not a causal language model architecture that transformers … "
         "knows (a model that ships its own code needs --trust-remote-code)", _unknown_architecture),
    Case("group-size-vs-layers", "group size that does not divide the model's layer width",
         "group_size 128 does not divide in_features 64 of layer model.layers.0.self_attn.q_proj",
         lambda s: s.run("--method", "rtn:group_size=128"), found="worker"),
    Case("architecture-unsupported", "architecture unsupported by this library (quanto on GPT-2's Conv1D)",
         "quanto cannot quantize GPT2LMHeadModel: its weight matrices are in Conv1D layers, and quanto quantizes only "
         "nn.Linear layers", _gpt2),
    Case("quantized-nothing", "method that quantized nothing (rtn with every layer skipped)",
         "rtn quantized 0 of 14 weight matrices: the model's layers are Linear ×14",
         lambda s: s.run("--method", f"rtn:skip={EVERY_LAYER}"), found="worker"),
    Case("method-unknown", "unknown method", "unknown method 'gptq-turbo'; valid methods: …",
         lambda s: s.run("--method", "gptq-turbo")),
    Case("param-unknown", "unknown method parameter",
         "method 'baseline': colour: unknown parameter (valid: compute_dtype)",
         lambda s: s.run("--method", "baseline:colour=red")),
    Case("param-type", "parameter of the wrong type", "method 'baseline': dtype: Input should be …",
         lambda s: s.run("--method", "baseline:dtype=int4")),
    Case("bits-range", "bits out of range", "method 'rtn': bits: Input should be less than or equal to 8",
         lambda s: s.run("--method", "rtn:bits=9")),
    Case("group-size-range", "group size out of range",
         "method 'rtn': group_size: Value error, must be -1 (per channel) or a power of two ≥ 16, got 12",
         lambda s: s.run("--method", "rtn:group_size=12")),
    Case("device-absent", "method unavailable on this device (cuda without a GPU)",
         "method 'baseline' is unavailable on cuda: no CUDA device visible to torch",
         lambda s: s.run("--device", "cuda")),
    Case("env-missing", "method whose environment was never created",
         "method 'llmcompressor' runs in the 'llmcompressor' environment, which does not exist yet: "
         "quantbench env create llmcompressor",
         lambda s: s.run("--method", "llmcompressor")),
    Case("seq-len", "`--seq-len 1`", "eval 'perplexity': seq_len: Input should be greater than or equal to 2",
         lambda s: s.run("--seq-len", "1")),
    Case("protocol-stride", "`--protocol llamacpp` with `--stride`", "eval 'perplexity': params: Value error, "
         "stride is for the gptq protocol: llama-perplexity's chunks do not overlap",
         lambda s: s.run("--protocol", "llamacpp", "--stride", "16")),
    Case("corpus-missing", "corpus file that does not exist", CORPUS_MISSING,
         lambda s: s.run("--corpus", str(s.tmp / "no-such.txt"))),
    Case("corpus-empty", "empty corpus", "corpus '…' is empty", lambda s: s.run("--corpus", str(s.file("e.txt", "")))),
    Case("corpus-binary", "binary corpus", "corpus file … looks binary (NUL bytes), not text",
         lambda s: s.run("--corpus", str(s.file("b.txt", b"text\x00\x01\x02")))),
    Case("corpus-encoding", "corpus that is not UTF-8", "corpus file … is not UTF-8 text (byte …)",
         lambda s: s.run("--corpus", str(s.file("latin1.txt", "café crème".encode("latin-1"))))),
    Case("corpus-short", "corpus shorter than one window", SHORT,
         lambda s: s.run("--corpus", str(s.file("short.txt", "too short")))),
    Case("store-unwritable", "store that cannot be written", "store directory … is not writable: …",
         _unwritable_store),
    Case("sweep-syntax", "sweep YAML with a syntax error", "…sweep.yaml: line 3 expected ',' or ']', but got …",
         lambda s: s.sweep(f"models: [{s.model}]\nmethods: [baseline\n")),
    Case("sweep-unknown-key", "sweep YAML with an unknown key", f"…sweep.yaml: modelz: unknown parameter (valid: "
         f"{SWEEP_KEYS})", lambda s: s.sweep(f"models: [{s.model}]\nmethods: [baseline]\nmodelz: [x]\n")),
    Case("sweep-wrong-type", "sweep YAML with a value of the wrong type",
         "…sweep.yaml: repeats: Input should be a valid integer, unable to parse string as an integer",
         lambda s: s.sweep(f"models: [{s.model}]\nmethods: [baseline]\nrepeats: two\n")),
    Case("sweep-not-mapping", "sweep YAML that is not a mapping",
         "…sweep.yaml: expected a mapping with models, methods and evals at the top level",
         lambda s: s.sweep("- just\n- a list\n")),
    Case("export-dotdot", "export path with `..`", "export path '../escape.csv' must not contain '..'",
         lambda s: s.export("../escape.csv")),
    Case("export-absolute", "export path outside `--dir`", "export path '…' is outside the export directory …",
         lambda s: s.export(str(s.tmp / "escape.csv"))),
    Case("export-symlink", "export path through a symlink that leaves `--dir`",
         "export path 'link/table.csv' is outside the export directory …", _outside_symlink),
    Case("store-foreign", "Parquet file of a foreign schema in the store", "warning: skipped foreign.parquet: not a "
         "quantbench result file (missing columns: trial_key, status, metric, value)", _foreign_parquet, exit=0,
         found="store"),
    Case("store-truncated", "truncated Parquet file in the store",
         "warning: skipped truncated.parquet: not a readable Parquet file (…)", _truncated_parquet, exit=0,
         found="store"),
]  # fmt: skip


def pattern(message: str) -> re.Pattern:
    return re.compile(".+?".join(re.escape(part) for part in message.split("…")))


@dataclass
class Result:
    exit: int
    stdout: str
    stderr: str
    new_files: list[str]  # created or changed anywhere under the case's scratch dir (content-hash memos aside)
    hidden: list[str]  # writers' temporaries left behind


def run_case(case: Case, tmp: Path, model: Path) -> Result:
    setup = Setup(tmp, model)
    setup.store.mkdir()
    setup.exports.mkdir()
    write_trial(setup.store, GOOD_KEY, synthetic_trial(GOOD_KEY))
    args = case.args(setup)
    before = tree(tmp)
    done = run_cli(args, isolated_env(tmp), cwd=tmp)
    after = tree(tmp)
    # A memo of a file's content hash (cache/hashes) is the one thing reading a model may keep.
    changed = [p for p, stamp in after.items() if before.get(p) != stamp and not p.startswith("cache/hashes/")]
    return Result(done.returncode, done.stdout, done.stderr, changed, hidden_entries(tmp / "cache"))


@pytest.fixture(scope="session")
def case_results(request, tmp_path_factory, tiny_model_dir) -> dict[str, Result]:
    """Every selected case's CLI run, three at a time: each is a fresh Python process importing torch,
    and running them one by one would spend most of the test waiting on imports."""
    # Other modules have tests of this name too: select by the parameter's type.
    ids = {item.callspec.params["case"].id for item in request.session.items
           if hasattr(item, "callspec") and isinstance(item.callspec.params.get("case"), Case)}  # fmt: skip
    cases = [c for c in CASES if c.id in ids]
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {c.id: pool.submit(run_case, c, tmp_path_factory.mktemp(c.id), tiny_model_dir) for c in cases}
        return {case_id: future.result() for case_id, future in futures.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line(case: Case, case_results):
    result = case_results[case.id]
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert result.exit == case.exit, result.stderr
    if case.found == "worker":  # the trial's start and progress lines, then the error
        assert lines and all(line.startswith("[1/1] ") and " error " not in line for line in lines[:-1]), result.stderr
        lines = lines[-1:]
    assert len(lines) == 1, result.stderr
    assert pattern(case.expected_line()).fullmatch(lines[0]), f"{lines[0]!r} !~ {case.expected_line()!r}"
    assert result.new_files == [] and result.hidden == [], "written half-way"
    if case.found == "store":  # the damaged file is skipped, the good trial still listed
        assert GOOD_KEY in result.stdout


def readme_table() -> str:
    head = "| input | exit | message (one line on stderr; `…`: a path, a number or a library's words) |\n"
    head += "|---|---|---|\n"
    return head + "".join(f"| {c.input} | {c.exit} | `{c.expected_line()}` |\n" for c in CASES)


def test_readme_lists_every_case():
    readme = (ROOT / "README.md").read_text()
    assert readme_table() in readme, "README's bad-input table differs from CASES; paste the output of " \
                                     "`python tests/robustness/test_bad_input.py`"  # fmt: skip


def test_every_case_is_distinct():
    assert len({c.id for c in CASES}) == len(CASES)
    assert len({(c.input, c.message) for c in CASES}) == len(CASES)


if __name__ == "__main__":
    print(readme_table(), end="")
