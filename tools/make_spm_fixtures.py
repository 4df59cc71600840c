#!/usr/bin/env python3
"""Writes the SentencePiece (GGUF `tokenizer.ggml.model = llama`) fixtures under tests/fixtures/spm/
that tests/gguf_spm.rs compares kiln against.

1. Two tiny SentencePiece GGUF files (about 1000 tokens cut from llama.cpp's
   ggml-vocab-llama-spm.gguf with their scores: the 3 specials, the 256 byte-fallback tokens
   <0x00>..<0xFF>, the best-scored pieces and every ASCII letter, plus a control token `<|end|>`
   and a user-defined token `<tool>`): `tiny-spm.gguf` with `add_space_prefix` true and
   `tiny-spm-noprefix.gguf` with it false. `tiny-spm.gguf` also holds a random one-block Llama
   (hidden size 8, f16) so that kiln loads it as a model. `tiny-gemma.gguf`: the same vocabulary
   as a Gemma file (`general.architecture = gemma`) stores it, runs of spaces as real spaces.
2. `expected.json`: for each vocabulary (the tiny ones, and llama.cpp's llama-spm, phi-3 and
   baichuan vocabularies, from the llama-cpp-python sdist) the ids of a set of hard texts as
   transformers 5.25 gives them, loading the GGUF with `AutoTokenizer.from_pretrained(dir,
   gguf_file=...)`, and the ids and decoded text of the SentencePiece layout (the model's own
   `tokenizer.json` layout, which llama.cpp follows: every space is `▁` and each run of text
   gains one leading `▁` when `add_space_prefix` is true). transformers builds Phi-3 files in that
   layout, other `llama` files with a `Metaspace` that adds no `▁` before a text already starting
   with a space, nor after a special token; both are recorded so the Rust test sees where they
   part. For `add_space_prefix = false` (which transformers ignores) the layout drops the prefix.

Usage: python3 tools/make_spm_fixtures.py [path/to/vendor/llama.cpp]  (default: the extracted
llama-cpp-python 0.3.36 sdist under target/tmp/llama-src, fetched as tools/make_kquant_fixtures.py
fetches it). Needs gguf, transformers 5.25 and tokenizers.
"""

import json
import os
import sys
import tarfile
import tempfile

import gguf
import numpy as np
from tokenizers import normalizers, decoders
from transformers import AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "spm")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Digits, code, CJK, emoji, whitespace runs, special tokens written in text, leading spaces,
# newlines, a byte token's spelling written as text.
TEXTS = [
    "Hello world",
    " Hello world",
    "   three leading spaces",
    "trailing spaces   ",
    "a  b   c\t\td \u3000e",
    "four    spaces\t\tand tabs <start_of_turn>user",
    "\n\nnewlines first\n",
    "digits 0123456789 3.14159 -42 1e10",
    "fn main() {\n    println!(\"hi {}\", x[0] + 1);\n}\n",
    "def f(x):\n\treturn x**2  # square\n",
    "日本語の文章です。中文也可以。한국어",
    "emoji 🦙🔥👩‍💻 and ½ Äpfel",
    "<s>hello</s> world",
    "text<|end|>after <|end|> spaced",
    "call <tool>{\"a\": 1}</tool><tool>x",
    "<0x41> is not a byte token in text",
    "<unk> as text",
    "",
    " ",
    "  ",
    "\t",
    "Ⅻ ﬁ ＡＢＣ ｶﾞ",
]


def vocab(name: str, src: str) -> str:
    return os.path.join(src, "models", f"ggml-vocab-{name}.gguf")


def write_tiny(src: str) -> None:
    r = gguf.GGUFReader(vocab("llama-spm", src))
    f = r.fields
    tokens = f["tokenizer.ggml.tokens"].contents()
    scores = f["tokenizer.ggml.scores"].contents()
    types = f["tokenizer.ggml.token_type"].contents()
    keep = list(range(3 + 256))  # <unk> <s> </s> and the byte tokens
    ascii1 = [i for i, t in enumerate(tokens) if i >= 259 and len(t) == 1 and (t.isascii() and t.isalnum() or t == "▁")]
    best = [i for i in sorted(range(259, len(tokens)), key=lambda i: -scores[i])
            if all(c.isascii() or c == "▁" for c in tokens[i])]
    chosen = set(ascii1)
    for i in best:
        if len(chosen) >= 1000 - len(keep) - 2:
            break
        chosen.add(i)
    keep += sorted(chosen)
    toks = [tokens[i] for i in keep] + ["<|end|>", "<tool>"]
    scs = [float(scores[i]) for i in keep] + [0.0, 0.0]
    tys = [int(types[i]) for i in keep] + [3, 4]
    for prefix, fname in ((True, "tiny-spm.gguf"), (False, "tiny-spm-noprefix.gguf")):
        w = gguf.GGUFWriter(os.path.join(OUT, fname), "llama")
        w.add_name("tiny-spm")
        # transformers reads these to make a config even when only the tokenizer is wanted.
        w.add_block_count(1)
        w.add_context_length(64)
        w.add_embedding_length(8)
        w.add_feed_forward_length(16)
        w.add_head_count(1)
        w.add_head_count_kv(1)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_dimension_count(8)
        w.add_vocab_size(len(toks))
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(toks)
        w.add_token_scores(scs)
        w.add_token_types(tys)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        w.add_add_space_prefix(prefix)
        if prefix:
            # A one-block random Llama (hidden 8) around the vocabulary, so that `kiln info`
            # and generation load it as a model.
            rng = np.random.default_rng(0)
            mat = lambda *shape: (rng.standard_normal(shape) * 0.2).astype(np.float16)
            w.add_tensor("token_embd.weight", mat(len(toks), 8))
            w.add_tensor("blk.0.attn_norm.weight", np.ones(8, np.float32))
            for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
                w.add_tensor(f"blk.0.{name}.weight", mat(8, 8))
            w.add_tensor("blk.0.ffn_norm.weight", np.ones(8, np.float32))
            w.add_tensor("blk.0.ffn_gate.weight", mat(16, 8))
            w.add_tensor("blk.0.ffn_up.weight", mat(16, 8))
            w.add_tensor("blk.0.ffn_down.weight", mat(8, 16))
            w.add_tensor("output_norm.weight", np.ones(8, np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def write_gemma() -> None:
    """`tiny-gemma.gguf`: the no-prefix vocabulary as a Gemma file stores it, its `▁▁`-style
    tokens written as real spaces (and one of tabs, which stays as it is)."""
    r = gguf.GGUFReader(os.path.join(OUT, "tiny-spm-noprefix.gguf"))
    f = r.fields
    rows = [(t, float(s), int(y)) for t, s, y in zip(f["tokenizer.ggml.tokens"].contents(),
            f["tokenizer.ggml.scores"].contents(), f["tokenizer.ggml.token_type"].contents())
            if not (len(t) > 1 and set(t) == {"▁"})]
    # Scores that disagree with the token order: Gemma's merges follow the order.
    rows += [("  ", 5.0, 1), ("   ", 4.0, 1), ("    ", 3.0, 1), ("\t\t", 0.0, 1), ("<start_of_turn>", 0.0, 4)]
    w = gguf.GGUFWriter(os.path.join(OUT, "tiny-gemma.gguf"), "gemma")
    w.add_tokenizer_model("llama")
    w.add_token_list([t for t, _, _ in rows])
    w.add_token_scores([s for _, s, _ in rows])
    w.add_token_types([y for _, _, y in rows])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_space_prefix(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gemma_records(path: str) -> dict:
    """transformers 5.25 has no Gemma GGUF model config: its tokenizer builder is called
    directly, as `AutoTokenizer` calls it for the files it loads."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer
    arch, td, cfg = get_gguf_tokenizer(path)
    b, _ = convert_gguf_tokenizer(arch, td)
    ids = [b.encode(t, add_special_tokens=False).ids for t in TEXTS]
    return {
        "file": os.path.basename(path),
        "bos": b.token_to_id(cfg["bos_token"]),
        "eos": b.token_to_id(cfg["eos_token"]),
        "add_bos": bool(cfg.get("add_bos_token", True)),
        "transformers": ids,
        # The Gemma build is the SentencePiece layout without the prefix space.
        "sentencepiece": ids,
        "decoded": [b.decode(i, skip_special_tokens=False) for i in ids],
    }


def records(path: str, prefix: bool, builder_only: bool = False) -> dict:
    d, f = os.path.split(path)
    if builder_only:
        # No transformers model config for this architecture (Baichuan): its tokenizer builder
        # is called directly, as `AutoTokenizer` calls it for the files it loads.
        from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer
        arch, td, cfg = get_gguf_tokenizer(path)
        b, _ = convert_gguf_tokenizer(arch, td)
        as_is = [b.encode(t, add_special_tokens=False).ids for t in TEXTS]
        bos, eos, add_bos = b.token_to_id(cfg["bos_token"]), b.token_to_id(cfg["eos_token"]), cfg["add_bos_token"]
    else:
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        as_is = [tok.encode(t, add_special_tokens=False) for t in TEXTS]
        bos, eos, add_bos = tok.bos_token_id, tok.eos_token_id, getattr(tok, "add_bos_token", True)
        b = tok.backend_tokenizer
    # The SentencePiece layout: what transformers builds for Phi-3, and without the prefix `▁`
    # when the file says add_space_prefix = false.
    steps = [normalizers.Replace(pattern=" ", content="▁")]
    dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.insert(0, normalizers.Prepend(prepend="▁"))
        dec.append(decoders.Strip(content=" ", left=1))
    b.normalizer = normalizers.Sequence(steps)
    b.pre_tokenizer = None
    b.decoder = decoders.Sequence(dec)
    spm = [b.encode(t, add_special_tokens=False).ids for t in TEXTS]
    return {
        "file": os.path.basename(path),
        "bos": bos,
        "eos": eos,
        "add_bos": bool(add_bos),
        "transformers": as_is,
        "sentencepiece": spm,
        "decoded": [b.decode(ids, skip_special_tokens=False) for ids in spm],
    }


def main() -> None:
    if len(sys.argv) > 1:
        src = sys.argv[1]
    else:
        from make_kquant_fixtures import CACHE, VERSION, sdist
        src = os.path.join(CACHE, f"llama_cpp_python-{VERSION}", "vendor", "llama.cpp")
        if not os.path.exists(vocab("phi-3", src)):
            with tarfile.open(sdist()) as tar:
                names = [m for m in tar.getmembers() if "/models/ggml-vocab-" in m.name]
                tar.extractall(CACHE, members=names, filter="data")
    os.makedirs(OUT, exist_ok=True)
    write_tiny(src)
    out = {"texts": TEXTS, "vocabs": {}}
    out["vocabs"]["tiny-spm"] = records(os.path.join(OUT, "tiny-spm.gguf"), True)
    out["vocabs"]["tiny-spm-noprefix"] = records(os.path.join(OUT, "tiny-spm-noprefix.gguf"), False)
    write_gemma()
    out["vocabs"]["tiny-gemma"] = gemma_records(os.path.join(OUT, "tiny-gemma.gguf"))
    for name in ("llama-spm", "phi-3"):
        out["vocabs"][name] = records(vocab(name, src), True)
    out["vocabs"]["baichuan"] = records(vocab("baichuan", src), True, builder_only=True)
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as fh:
        json.dump(out, fh, ensure_ascii=False, indent=None, separators=(",", ":"))
        fh.write("\n")
    for k, v in out["vocabs"].items():
        same = sum(a == b for a, b in zip(v["transformers"], v["sentencepiece"]))
        print(f"{k}: transformers and the SentencePiece layout agree on {same}/{len(TEXTS)} texts")


if __name__ == "__main__":
    main()
