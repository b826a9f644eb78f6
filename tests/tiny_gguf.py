"""A tiny random Llama written as an F32 GGUF file, with the tests' tiny byte-level BPE tokenizer.

Rows are 256 wide by default, a multiple of the k-quants' super-block, so llama.cpp quantizes every
tensor to the type asked for (no fallback); a narrower `hidden` makes it fall back, as SmolLM2's 576
does. With `experts`, each block's feed-forward is Mixtral's, as llama.cpp's converter writes it for the
`llama` architecture: a router (`ffn_gate_inp`) and every expert's matrices stacked in one 3-D tensor
per projection (`ffn_{gate,up,down}_exps`), two experts per token. The tokenizer goes into the file
as GPT-2-style metadata (tokens, merges): transformers and llama.cpp both read it from there, as they
do for a real model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, CONTEXT = 256, 512, 2, 4, 2, 512


def write_tiny_gguf(path: Path, tokenizer, seed: int = 0, hidden: int = HIDDEN, experts: int = 0) -> Path:
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = sorted(spec["model"]["vocab"], key=spec["model"]["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    special = {t["content"] for t in spec["added_tokens"]}
    vocab = len(tokens)
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("tiny-random-llama")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(hidden)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(hidden // HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    if experts:
        writer.add_expert_count(experts)
        writer.add_expert_used_count(2)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.eos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_add_bos_token(False)

    def normal(*shape: int) -> np.ndarray:
        return rng.normal(0, 0.05, shape).astype(np.float32)

    head_dim = hidden // HEADS
    writer.add_tensor("token_embd.weight", normal(vocab, hidden))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    for i in range(LAYERS):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", normal(hidden, hidden))
        writer.add_tensor(f"blk.{i}.attn_k.weight", normal(KV_HEADS * head_dim, hidden))
        writer.add_tensor(f"blk.{i}.attn_v.weight", normal(KV_HEADS * head_dim, hidden))
        writer.add_tensor(f"blk.{i}.attn_output.weight", normal(hidden, hidden))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        if experts:
            writer.add_tensor(f"blk.{i}.ffn_gate_inp.weight", normal(experts, hidden))
            writer.add_tensor(f"blk.{i}.ffn_gate_exps.weight", normal(experts, FFN, hidden))
            writer.add_tensor(f"blk.{i}.ffn_up_exps.weight", normal(experts, FFN, hidden))
            writer.add_tensor(f"blk.{i}.ffn_down_exps.weight", normal(experts, hidden, FFN))
        else:
            writer.add_tensor(f"blk.{i}.ffn_gate.weight", normal(FFN, hidden))
            writer.add_tensor(f"blk.{i}.ffn_up.weight", normal(FFN, hidden))
            writer.add_tensor(f"blk.{i}.ffn_down.weight", normal(hidden, FFN))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
