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


def tiny_model(model_dir, family="llama", seed=0):
    """`tiny_llama`, or a small random model of another family kiln trains (transformers' own
    classes, the fixture BPE tokenizer beside it): `gemma2` (soft-caps, sandwich norms),
    `gemma3` (q/k norms, sliding layers of window 8 between global ones), `phi3` (fused
    qkv/gate_up, LongRoPE), `phi4-mini` (phi3 with partial_rotary_factor 0.75, tied head)."""
    if family == "llama":
        return tiny_llama(model_dir, seed)
    import torch
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    common = dict(vocab_size=709, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  initializer_range=0.1, bos_token_id=1, eos_token_id=3, pad_token_id=0)
    if family in ("gemma2", "gemma3"):
        if family == "gemma2":
            from transformers import Gemma2Config as C
            extra = dict(attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
        else:
            from transformers import Gemma3TextConfig as C
            extra = dict(layer_types=["sliding_attention", "full_attention"], rope_local_base_freq=10000.0)
        cfg = C(**common, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                hidden_activation="gelu_pytorch_tanh", **extra)
    elif family in ("phi3", "phi4-mini"):
        from transformers import Phi3Config
        rot = 12 if family == "phi4-mini" else 16
        rope = {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 64,
                "short_factor": [1.0 + 0.05 * i for i in range(rot // 2)],
                "long_factor": [1.5 + 0.3 * i for i in range(rot // 2)]}
        extra = dict(partial_rotary_factor=0.75, tie_word_embeddings=True) if family == "phi4-mini" else {}
        if extra:
            rope["partial_rotary_factor"] = 0.75
        cfg = Phi3Config(**common, rope_parameters=rope, original_max_position_embeddings=64, **extra)
    else:
        raise SystemExit(f"unknown family {family}")
    AutoModelForCausalLM.from_config(cfg).save_pretrained(model_dir)
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
        shutil.copy(os.path.join(ROOT, "tests/fixtures/tokenizer", f), model_dir)
    return model_dir
