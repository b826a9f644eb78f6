import shutil

import pytest

from quantbench import models
from quantbench.errors import QuantbenchError
from quantbench.spec import ModelRef


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


def test_local_directory_resolves_and_loads(tiny_model_dir):
    resolved = models.resolve(ModelRef(str(tiny_model_dir)))
    assert resolved.source == "local"
    module = models.load(resolved, dtype="bfloat16")
    assert next(module.parameters()).dtype.is_floating_point
    assert str(next(module.parameters()).dtype) == "torch.bfloat16"
    assert not module.training


def test_fingerprint_follows_the_weights(model_copy, monkeypatch, tmp_path):
    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path / "cache"))
    before = models.resolve(ModelRef(str(model_copy))).fingerprint
    weights = model_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one weight byte differs
    weights.write_bytes(bytes(data))
    assert models.resolve(ModelRef(str(model_copy))).fingerprint != before


def test_file_hash_is_memoized_but_notices_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 10)
    first = models.file_sha256(f)
    assert models.file_sha256(f) == first
    assert any((tmp_path / "cache" / "hashes").iterdir())
    f.write_bytes(b"b" * 11)
    assert models.file_sha256(f) != first


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def _garble_header(path):
    data = bytearray(path.read_bytes())
    data[8:16] = b"#garbage"
    path.write_bytes(bytes(data))


def _tiny_file(path):
    path.write_bytes(b"\x01\x02")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_truncate, "truncated"),
        (_garble_header, "header is not valid JSON"),
        (_tiny_file, "shorter than its 8-byte header length"),
    ],
)
def test_corrupt_safetensors_is_rejected_before_loading(model_copy, damage, message):
    damage(model_copy / "model.safetensors")
    with pytest.raises(QuantbenchError, match=f"corrupt safetensors file .*{message}") as err:
        models.resolve(ModelRef(str(model_copy)))
    assert "\n" not in str(err.value)


def test_directory_without_weights(model_copy):
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(QuantbenchError, match="holds no model weights"):
        models.resolve(ModelRef(str(model_copy)))


def test_directory_without_config(tmp_path):
    with pytest.raises(QuantbenchError, match=r"has no config\.json"):
        models.resolve(ModelRef(str(tmp_path)))


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("embedded:gpt-5", "unknown embedded model 'gpt-5'; available: smollm2-135m"),
        ("/no/such/model.gguf", "model file /no/such/model.gguf does not exist"),
        ("./no-such-dir", "not an embedded:NAME"),
    ],
)
def test_unknown_models_say_what_was_tried(ref, message):
    with pytest.raises(QuantbenchError, match=message):
        models.resolve(ModelRef(ref))


def test_hub_id_offline_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(QuantbenchError, match="not in the Hugging Face cache, and could not be downloaded") as err:
        models.resolve(ModelRef("nobody/no-such-model"))
    assert "\n" not in str(err.value)


def test_corrupt_gguf_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTBENCH_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(QuantbenchError, match="cannot read GGUF file") as err:
        models.resolve(ModelRef(str(bad)))
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "cache" / "models").iterdir())  # nothing half-written
