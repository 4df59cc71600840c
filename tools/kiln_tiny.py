"""Shared by the tools/check_*.py scripts: a small random Llama (transformers) with the fixture
BPE tokenizer beside it, the model kiln's own tests use, so both sides read the same files."""
import os
import shutil

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def tiny_llama(model_dir, seed=0):
    """Writes the model folder `model_dir` (config.json, model.safetensors, tokenizer files)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=709, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      initializer_range=0.1, bos_token_id=1, eos_token_id=3)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(model_dir)
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
        shutil.copy(os.path.join(ROOT, "tests/fixtures/tokenizer", f), model_dir)
    return model_dir
