#!/usr/bin/env python3
"""Writes the hostile model, tokenizer and adapter files of tests/bad_inputs/ (prefix `models-`),
each a few KB, with plain `struct` (no gguf package): GGUFs whose counts or meaning are wrong,
HF config.json folders with impossible values, and PEFT/bottleneck adapter folders whose
adapter_config.json disagrees with their safetensors. Each is used by a case of
tests/bad_inputs/catalogue-models.json.

    python3 tools/make_bad_models.py            # rewrites tests/bad_inputs/models-*
    python3 tools/make_bad_models.py --valid X  # also writes the valid base GGUF to X
"""

import json
import os
import shutil
import struct
import sys

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "bad_inputs")
ALIGN = 32

# GGUF value types.
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q",
       I64: "<q", F64: "<d"}


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gval(ty, v):
    if ty == STR:
        return gstr(v)
    if ty == ARR:
        item, items = v
        out = struct.pack("<IQ", item, len(items))
        return out + b"".join(gval(item, x) for x in items)
    return struct.pack(FMT[ty], v)


class Rng:
    """A small LCG: the same weights on every machine, no numpy."""

    def __init__(self, seed):
        self.s = seed

    def uniform(self):
        self.s = (self.s * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        return ((self.s >> 11) / float(1 << 53)) * 2 - 1


H, FF, HEADS, KV, VOCAB = 8, 16, 2, 1, 4
HD = H // HEADS


def base_meta():
    """Metadata of a valid 1-block llama with a 4-token byte-level BPE tokenizer."""
    return [
        ("general.architecture", STR, "llama"),
        ("general.name", STR, "kiln-bad-base"),
        ("llama.block_count", U32, 1),
        ("llama.context_length", U32, 64),
        ("llama.embedding_length", U32, H),
        ("llama.feed_forward_length", U32, FF),
        ("llama.attention.head_count", U32, HEADS),
        ("llama.attention.head_count_kv", U32, KV),
        ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
        ("llama.rope.freq_base", F32, 10000.0),
        ("llama.rope.dimension_count", U32, HD),
        ("tokenizer.ggml.model", STR, "gpt2"),
        ("tokenizer.ggml.tokens", ARR, (STR, ["a", "b", "ab", "<|end|>"])),
        ("tokenizer.ggml.token_type", ARR, (I32, [1, 1, 1, 3])),
        ("tokenizer.ggml.merges", ARR, (STR, ["a b"])),
        ("tokenizer.ggml.bos_token_id", U32, 3),
        ("tokenizer.ggml.eos_token_id", U32, 3),
    ]


def base_tensors():
    """(name, ggml dims (fastest first), f32 values) of the valid base."""
    rng = Rng(7)
    mat = lambda cols, rows: [rng.uniform() * 0.3 for _ in range(cols * rows)]
    t = [("token_embd.weight", [H, VOCAB], mat(H, VOCAB))]
    t += [
        ("blk.0.attn_norm.weight", [H], [1.0] * H),
        ("blk.0.attn_q.weight", [H, H], mat(H, H)),
        ("blk.0.attn_k.weight", [H, KV * HD], mat(H, KV * HD)),
        ("blk.0.attn_v.weight", [H, KV * HD], mat(H, KV * HD)),
        ("blk.0.attn_output.weight", [H, H], mat(H, H)),
        ("blk.0.ffn_norm.weight", [H], [1.0] * H),
        ("blk.0.ffn_gate.weight", [H, FF], mat(H, FF)),
        ("blk.0.ffn_up.weight", [H, FF], mat(H, FF)),
        ("blk.0.ffn_down.weight", [FF, H], mat(FF, H)),
        ("output_norm.weight", [H], [1.0] * H),
    ]
    return t


def gguf(meta, tensors, n_tensors=None, offsets=None):
    """GGUF v3 bytes; `n_tensors` overrides the count written, `offsets` the data offsets."""
    datas = [struct.pack(f"<{len(v)}f", *v) for _, _, v in tensors]
    offs, o = [], 0
    for d in datas:
        offs.append(o)
        o += (len(d) + ALIGN - 1) // ALIGN * ALIGN
    offs = offsets or offs
    n = len(tensors) if n_tensors is None else n_tensors
    head = b"GGUF" + struct.pack("<IQQ", 3, n, len(meta))
    for k, ty, v in meta:
        head += gstr(k) + struct.pack("<I", ty) + gval(ty, v)
    for (name, dims, _), off in zip(tensors, offs):
        head += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        head += struct.pack("<IQ", 0, off)
    head += b"\0" * (-len(head) % ALIGN)
    body = b""
    for d in datas:
        body += d + b"\0" * (-len(d) % ALIGN)
    return head + body


def with_meta(key, ty, value):
    """The base metadata with `key` set (replaced in place, or appended)."""
    m = [x for x in base_meta()]
    for i, (k, _, _) in enumerate(m):
        if k == key:
            m[i] = (key, ty, value)
            return m
    return m + [(key, ty, value)]


def safetensors(tensors):
    """safetensors bytes of `[(name, shape, f32 values)]`."""
    header, data = {}, b""
    for name, shape, vals in tensors:
        b = struct.pack(f"<{len(vals)}f", *vals)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def folder(name, files):
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for f, data in files.items():
        with open(os.path.join(d, f), "wb") as fh:
            fh.write(data if isinstance(data, bytes) else json.dumps(data, indent=1).encode())


# The adapters are for tests/common tiny_model: hidden 64, 4 heads of 16, 2 kv heads, MLP 128,
# 2 layers.
TH, TLAYERS = 64, 2


def lora(r, modules, layers=TLAYERS, a_rows=None, b_cols=None):
    out = []
    dims = {"q_proj": (TH, TH), "k_proj": (TH, 32), "v_proj": (TH, 32), "o_proj": (TH, TH)}
    for i in range(layers):
        for m in modules:
            fin, fout = dims[m]
            p = f"base_model.model.model.layers.{i}.self_attn.{m}"
            ra, rb = a_rows or r, b_cols or r
            out.append((f"{p}.lora_A.weight", [ra, fin], [0.01] * (ra * fin)))
            out.append((f"{p}.lora_B.weight", [fout, rb], [0.0] * (fout * rb)))
    return safetensors(out)


def peft_config(**kw):
    c = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "bias": "none"}
    c.update(kw)
    return c


def hf_config(**kw):
    c = {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": H, "intermediate_size": FF,
         "num_hidden_layers": 1, "num_attention_heads": HEADS, "num_key_value_heads": KV,
         "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True}
    c.update(kw)
    return c


def hf_weights(layers):
    """safetensors of the base model's weights (transformers names) for `layers` layers."""
    rng = Rng(11)
    mat = lambda r, c: ([r, c], [rng.uniform() * 0.3 for _ in range(r * c)])
    t = [("model.embed_tokens.weight", *mat(VOCAB, H)), ("model.norm.weight", [H], [1.0] * H)]
    for i in range(layers):
        p = f"model.layers.{i}"
        t += [(f"{p}.input_layernorm.weight", [H], [1.0] * H), (f"{p}.post_attention_layernorm.weight", [H], [1.0] * H)]
        for m, (o, n) in {"self_attn.q_proj": (H, H), "self_attn.k_proj": (KV * HD, H), "self_attn.v_proj": (KV * HD, H),
                          "self_attn.o_proj": (H, H), "mlp.gate_proj": (FF, H), "mlp.up_proj": (FF, H),
                          "mlp.down_proj": (H, FF)}.items():
            t.append((f"{p}.{m}.weight", *mat(o, n)))
    return safetensors(t)


def fuzz_seeds():
    """Seeds of the adapter_files fuzz target (config JSON, NUL, safetensors) for an 8-wide,
    2-layer model: one valid adapter, one whose rank disagrees with its tensors."""
    d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fuzz", "seeds", "adapter_files")
    os.makedirs(d, exist_ok=True)
    def st(r, layers=2):
        t = []
        for i in range(layers):
            p = f"base_model.model.model.layers.{i}.self_attn.q_proj"
            t += [(f"{p}.lora_A.weight", [r, 8], [0.01] * (r * 8)), (f"{p}.lora_B.weight", [8, r], [0.0] * (8 * r))]
        return safetensors(t)
    for name, cfg, data in [("valid", peft_config(), st(2)), ("rank-mismatch", peft_config(r=4), st(2))]:
        with open(os.path.join(d, name), "wb") as f:
            f.write(json.dumps(cfg).encode() + b"\0" + data)


def main():
    fuzz_seeds()
    if "--valid" in sys.argv:
        with open(sys.argv[sys.argv.index("--valid") + 1], "wb") as f:
            f.write(gguf(base_meta(), base_tensors()))
    for old in os.listdir(OUT):
        if old.startswith("models-"):
            p = os.path.join(OUT, old)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    t = base_tensors()
    # Counts against the bytes and the tensors present.
    write("models-block-count-huge.gguf", gguf(with_meta("llama.block_count", U64, 1 << 40), t))
    write("models-array-length-huge.gguf", gguf(with_meta("kiln.bytes", ARR, (U8, [1, 2, 3])), t).replace(
        struct.pack("<IQ", U8, 3) + bytes([1, 2, 3]), struct.pack("<IQ", U8, 1 << 40) + bytes([1, 2, 3])))
    # Meaning: duplicates, data layout.
    write("models-duplicate-key.gguf", gguf(base_meta() + [("llama.rope.freq_base", F32, 500000.0)], t))
    write("models-duplicate-tensor.gguf", gguf(base_meta(), t[:-1] + [("blk.0.ffn_norm.weight", [H], [1.0] * H)]))
    write("models-tensor-count-low.gguf", gguf(base_meta(), t, n_tensors=len(t) - 1))
    write("models-overlapping-tensors.gguf", gguf(base_meta(), t, offsets=[0] * len(t)))
    # Meaning: RoPE, norm, heads, special tokens, per-token arrays.
    write("models-theta-zero.gguf", gguf(with_meta("llama.rope.freq_base", F32, 0.0), t))
    write("models-eps-negative.gguf", gguf(with_meta("llama.attention.layer_norm_rms_epsilon", F32, -1e-5), t))
    write("models-head-dims.gguf", gguf(with_meta("llama.attention.key_length", U32, HD * 2), t))
    write("models-bos-outside-vocab.gguf", gguf(with_meta("tokenizer.ggml.bos_token_id", U32, 4000), t))
    write("models-token-type-long.gguf", gguf(with_meta("tokenizer.ggml.token_type", ARR, (I32, [1, 1, 1, 3, 1, 1])), t))
    write("models-scores-short.gguf", gguf(with_meta("tokenizer.ggml.scores", ARR, (F32, [0.0, 0.0])), t))
    write("models-tokens-short.gguf", gguf(with_meta("tokenizer.ggml.tokens", ARR, (STR, ["a", "b", "ab"])), t))
    write("models-duplicate-token.gguf", gguf(with_meta("tokenizer.ggml.tokens", ARR, (STR, ["a", "b", "a", "<|end|>"])), t))
    write("models-merge-one-token.gguf", gguf(with_meta("tokenizer.ggml.merges", ARR, (STR, ["ab"])), t))
    # HF config.json folders.
    folder("models-hf-theta-negative", {"config.json": hf_config(rope_theta=-10000.0)})
    folder("models-hf-eps-negative", {"config.json": hf_config(rms_norm_eps=-1e-6)})
    folder("models-hf-rope-factor-zero", {"config.json": hf_config(rope_scaling={"rope_type": "linear", "factor": 0.0})})
    folder("models-hf-layers-huge", {"config.json": hf_config(num_hidden_layers=1 << 40)})
    folder("models-hf-eos-outside-vocab", {"config.json": hf_config(eos_token_id=[3, 70000])})
    folder("models-hf-layers-mismatch", {"config.json": hf_config(num_hidden_layers=3), "model.safetensors": hf_weights(1)})
    # Adapters for the tiny model.
    folder("models-adapter-huge-r", {"adapter_config.json": peft_config(r=65536), "adapter_model.safetensors": lora(2, ["q_proj"])})
    folder("models-adapter-r-zero", {"adapter_config.json": peft_config(r=0), "adapter_model.safetensors": lora(2, ["q_proj"])})
    folder("models-adapter-r-negative", {"adapter_config.json": peft_config(r=-4), "adapter_model.safetensors": lora(2, ["q_proj"])})
    folder("models-adapter-alpha-nan", {"adapter_config.json": peft_config(lora_alpha="nan"), "adapter_model.safetensors": lora(2, ["q_proj"])})
    folder("models-adapter-missing-module", {"adapter_config.json": peft_config(target_modules=["q_proj", "v_proj"]),
                                             "adapter_model.safetensors": lora(2, ["q_proj"])})
    folder("models-adapter-extra-layer", {"adapter_config.json": peft_config(), "adapter_model.safetensors": lora(2, ["q_proj"], layers=3)})
    folder("models-adapter-b-shape", {"adapter_config.json": peft_config(), "adapter_model.safetensors": lora(2, ["q_proj"], b_cols=3)})
    folder("models-bottleneck-huge-size", {
        "adapter_config.json": {"adapter_type": "bottleneck", "adapter_size": 1 << 24, "non_linearity": "silu"},
        "adapter_model.safetensors": safetensors([(f"model.layers.{i}.{s}.{w}", shp, [0.0] * (shp[0] * (shp[1] if len(shp) > 1 else 1)))
                                                  for i in range(TLAYERS) for s in ("attn_adapter", "mlp_adapter")
                                                  for w, shp in (("down.weight", [4, TH]), ("down.bias", [4]),
                                                                 ("up.weight", [TH, 4]), ("up.bias", [TH]))])})


if __name__ == "__main__":
    main()
