"""Architectures from config dicts and presets: parameter counts, windows, and every bad-input error."""

from __future__ import annotations

import json

import pytest

from quantbench.errors import QuantbenchError
from quantbench.planner.config import architecture_from_config, read_config_file
from quantbench.planner.presets import PRESETS, find_preset, preset
from quantbench.planner.weights import parameter_count, weight_groups

LLAMA_8B = PRESETS["llama-3.1-8b"]
DROP = object()  # marks a field to remove from a config


# Published totals: the model cards / safetensors metadata on the Hugging Face Hub.
@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("llama-2-7b", 6_738_415_616),
        ("llama-2-13b", 13_015_864_320),
        ("llama-2-70b", 68_976_648_192),
        ("llama-3.1-8b", 8_030_261_248),
        ("llama-3.1-70b", 70_553_706_496),
        ("qwen2.5-7b", 7_615_616_512),
        ("qwen2.5-32b", 32_763_876_352),
        ("qwen2.5-72b", 72_706_203_648),
        ("mistral-7b", 7_241_732_096),
        ("mixtral-8x7b", 46_702_792_704),
        ("gemma-2-9b", 9_241_705_984),
        ("gemma-2-27b", 27_227_128_320),
        ("phi-3-mini", 3_821_079_552),
        ("smollm2-135m", 134_515_008),
        ("deepseek-v2-lite", 15_706_484_224),
    ],
)
def test_preset_parameter_counts_match_published_totals(name, params):
    assert parameter_count(preset(name)) == params


def test_llama_8b_by_hand():
    # embed + lm_head: 2 × 128256 × 4096; per layer q,o 4096² each, k,v 4096×1024 each,
    # MLP 3 × 4096 × 14336, two norms of 4096; final norm 4096.
    layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert parameter_count(preset("llama-3.1-8b")) == 2 * 128256 * 4096 + 32 * layer + 4096


def test_mixtral_experts_and_router_by_hand():
    groups = {g.name: g for g in weight_groups(preset("mixtral-8x7b"))}
    assert groups["layers.mlp.experts.gate_proj"].count == 32 * 8
    assert groups["layers.mlp.experts.down_proj"].rows == 4096
    assert groups["layers.mlp.experts.down_proj"].cols == 14336
    assert groups["layers.mlp.router"].numel == 32 * 8 * 4096
    assert groups["layers.mlp.router"].kind == "router"
    assert "layers.mlp.gate_proj" not in groups  # no dense MLP in Mixtral


def test_deepseek_mla_groups_by_hand():
    groups = {g.name: g for g in weight_groups(preset("deepseek-v2-lite"))}
    assert (groups["layers.kv_a_proj_with_mqa"].rows, groups["layers.kv_a_proj_with_mqa"].cols) == (512 + 64, 2048)
    assert (groups["layers.kv_b_proj"].rows, groups["layers.kv_b_proj"].cols) == (16 * (128 + 128), 512)
    assert groups["layers.q_proj"].rows == 16 * (128 + 64)  # q_lora_rank is null: one q_proj
    assert groups["layers.mlp.gate_proj"].count == 1  # first_k_dense_replace = 1 dense layer
    assert groups["layers.mlp.experts.up_proj"].count == 26 * 64
    assert groups["layers.mlp.shared_experts.up_proj"].rows == 2 * 1408


def test_q_lora_adds_bottleneck():
    cfg = {**PRESETS["deepseek-v2-lite"], "q_lora_rank": 1536}
    names = {g.name for g in weight_groups(architecture_from_config(cfg, "x"))}
    assert {"layers.q_a_proj", "layers.q_a_layernorm", "layers.q_b_proj"} <= names
    assert "layers.q_proj" not in names


def test_tied_embeddings_count_once():
    tied = preset("gemma-2-9b")
    untied = architecture_from_config({**PRESETS["gemma-2-9b"], "tie_word_embeddings": False}, "g")
    assert parameter_count(untied) - parameter_count(tied) == 256000 * 3584
    assert "lm_head" not in {g.name for g in weight_groups(tied)}


@pytest.mark.parametrize(
    ("model_type", "tied"), [("gemma2", True), ("gemma", True), ("llama", False), ("mistral", False)]
)
def test_tie_default_follows_the_config_class(model_type, tied):
    cfg = {k: v for k, v in LLAMA_8B.items() if k != "tie_word_embeddings"}
    assert architecture_from_config({**cfg, "model_type": model_type}, "x").tie_embeddings is tied


def test_qwen2_biases_and_gemma2_norms():
    qwen = {g.name: g for g in weight_groups(preset("qwen2.5-7b"))}
    assert qwen["layers.k_proj.bias"].numel == 28 * 4 * 128
    gemma = {g.name: g for g in weight_groups(preset("gemma-2-9b"))}
    assert gemma["layers.norms"].numel == 42 * 4 * 3584


@pytest.mark.parametrize(
    ("name", "windows"),
    [
        ("llama-3.1-8b", (None,) * 32),
        ("mistral-7b", (4096,) * 32),
        ("mixtral-8x7b", (None,) * 32),  # sliding_window null
        ("qwen2.5-7b", (None,) * 28),  # use_sliding_window false
        ("phi-3-mini", (2047,) * 32),
        ("gemma-2-9b", (4096, None) * 21),  # even layers slide
    ],
)
def test_layer_windows_of_presets(name, windows):
    assert preset(name).layer_windows == windows


@pytest.mark.parametrize(
    ("extra", "windows"),
    [
        ({"layer_types": ["full_attention", "sliding_attention"] * 2}, (None, 512, None, 512)),
        ({"sliding_window_pattern": 2}, (512, None, 512, None)),
        ({"model_type": "qwen2", "use_sliding_window": True, "max_window_layers": 2}, (None, None, 512, 512)),
        ({"use_sliding_window": False}, (None,) * 4),
    ],
)
def test_layer_windows_from_config_fields(extra, windows):
    cfg = {**LLAMA_8B, "num_hidden_layers": 4, "sliding_window": 512, **extra}
    assert architecture_from_config(cfg, "x").layer_windows == windows


def test_defaults_kv_heads_and_head_dim():
    cfg = {k: v for k, v in LLAMA_8B.items() if k not in ("num_key_value_heads", "head_dim")}
    arch = architecture_from_config(cfg, "x")
    assert (arch.num_kv_heads, arch.head_dim) == (32, 128)  # MHA, hidden / heads


def test_text_config_of_multimodal_wrapper():
    arch = architecture_from_config({"model_type": "wrapper", "text_config": LLAMA_8B}, "x")
    assert arch.num_layers == 32 and arch.model_type == "llama"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_hidden_layers": DROP}, "config lacks num_hidden_layers"),
        ({"vocab_size": DROP, "hidden_size": DROP}, "config lacks hidden_size, vocab_size"),
        ({"hidden_size": 0}, "hidden_size must be a positive integer, got 0"),
        ({"intermediate_size": -5}, "intermediate_size must be a positive integer, got -5"),
        ({"num_hidden_layers": 2.5}, "num_hidden_layers must be a positive integer"),
        ({"num_attention_heads": True}, "num_attention_heads must be a positive integer"),
        ({"num_key_value_heads": 0}, "num_key_value_heads must be a positive integer"),
        ({"num_key_value_heads": 5}, "not a multiple of KV heads 5"),
        ({"head_dim": DROP, "hidden_size": 4001}, "not divisible by 32 heads"),
        ({"head_dim": -1}, "head_dim must be a positive integer"),
        ({"sliding_window": -1}, "sliding_window must be a positive integer"),
        ({"sliding_window": 4, "layer_types": ["full_attention"]}, "layer_types has 1 entries for 32 layers"),
        ({"num_local_experts": 8, "num_experts_per_tok": 0}, "num_experts_per_tok must be a positive integer"),
        ({"kv_lora_rank": 512}, "qk_nope_head_dim, qk_rope_head_dim and v_head_dim are needed"),
    ],
)
def test_bad_configs_raise_one_line(change, message):
    cfg = {k: v for k, v in {**LLAMA_8B, **change}.items() if v is not DROP}
    with pytest.raises(QuantbenchError, match=message) as err:
        weight_groups(architecture_from_config(cfg, "bad"))
    assert "\n" not in str(err.value)


def test_read_config_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_8B))
    assert read_config_file(tmp_path) == LLAMA_8B
    assert read_config_file(tmp_path / "config.json") == LLAMA_8B


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no config.json at"), ("{not json", "is not valid JSON"), ("[1, 2]", "holds a JSON list")],
)
def test_read_config_file_errors(tmp_path, content, message):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    with pytest.raises(QuantbenchError, match=message):
        read_config_file(tmp_path)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("llama-3.1-8b", "llama-3.1-8b"),
        ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b"),
        ("mistralai/Mistral-7B-v0.1", "mistral-7b"),
        ("Qwen/Qwen2.5-72B-Instruct", "qwen2.5-72b"),
        ("gpt2", None),
    ],
)
def test_find_preset(name, key):
    assert find_preset(name) == key


def test_unknown_preset_lists_presets():
    with pytest.raises(QuantbenchError, match=r"unknown preset 'nope'; presets: llama-3\.1-8b, "):
        preset("nope")
