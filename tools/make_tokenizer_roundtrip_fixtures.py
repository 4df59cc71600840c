#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer_roundtrip/: the oracle side of tests/tokenizer_roundtrip.rs,
the round trip of every tokenizer family through kiln's GGUF export.

For each family a transformers tokenizer folder is made the way a user gets one: transformers
5.25 loads a GGUF vocabulary (llama.cpp's `models/ggml-vocab-*.gguf` from the llama-cpp-python
0.3.36 sdist, or a committed tiny one) and `save_pretrained`s it. Its ids on hard texts (digits,
code, CJK, emoji, whitespace runs, newlines, the family's special tokens) are the reference.
Then kiln exports each folder's tokenizer to GGUF (the test itself, run with
KILN_ROUNDTRIP_WRITE=DIR, writes the files and the digest of the tokenizer metadata it wrote)
and transformers loads those GGUFs: their ids must equal the folder's. expected.json keeps the
ids, the digests, and the folders: whole for the tiny vocabularies; for llama.cpp's (MBs) the
tokenizer.json without its vocabulary and merges, which the test rebuilds from the fetched
vocabulary GGUF and checks against the digests of transformers' own lists.

    python3 tools/make_tokenizer_roundtrip_fixtures.py [LLAMA_CPP_SRC]

LLAMA_CPP_SRC (or KILN_LLAMA_CPP_SRC) is the sdist's vendor/llama.cpp. Needs transformers,
gguf, and cargo (it runs the Rust test twice: to write the exports, then to check everything).
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import gguf
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/fixtures/tokenizer_roundtrip"
SPM = ROOT / "tests/fixtures/spm"

HARD = (
    "Hello world! 12345 1234567 3.14159 $9,999.99 0x1F\n"
    "def f(x):\n    return x**2  # square\n\tif x >= 10: print(f\"{x:>8}\")\n"
    "我想在apple工作1314151天～ 日本語のテキスト 한국어 нещо на Български\n"
    "🚀 🦙🦙 ✅ 😶\u200d🌫\ufe0f  three   spaces\n\n\nnewlines\r\n  I've 'told he's there, 'RE you sure?"
)

# (family, source, control tokens to put in the text)
FAMILIES = [
    ("llama-spm", "llama-cpp", ["<s>", "</s>"]),
    ("phi-3", "llama-cpp", ["<s>", "<|user|>", "<|end|>", "<|assistant|>"]),
    ("llama-bpe", "llama-cpp", ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    ("qwen2", "llama-cpp", ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]),
    ("tiny-gemma", "fixture", ["<s>", "<start_of_turn>", "<|end|>", "<tool>"]),
]


def digest(x):
    """SHA-256 of the compact JSON of `x`, as serde_json writes it."""
    return hashlib.sha256(json.dumps(x, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def texts_for(specials):
    a, b = specials[0], specials[-1]
    mid = " ".join(specials)
    return [
        HARD,
        " leading space, then  two and a tab\tend ",
        f"{a}Hello{b} {mid}\nafter{a} x {b}\n\n{HARD[:60]}",
    ]


def load_gguf(path):
    """transformers' tokenizer of a GGUF file: `AutoTokenizer`, or for an architecture it has no
    model config for (Gemma 1), its tokenizer builder called as `AutoTokenizer` calls it."""
    path = Path(path)
    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except ValueError as e:
        if "not supported" not in str(e):
            raise
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer
    arch, td, cfg = get_gguf_tokenizer(str(path))
    b, extra = convert_gguf_tokenizer(arch, td)
    names = {k: cfg[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if cfg.get(k) is not None}
    return PreTrainedTokenizerFast(tokenizer_object=b, **names)


def source_path(src, name, kind):
    if kind == "fixture":
        return SPM / f"{name}.gguf"
    return Path(src) / f"models/ggml-vocab-{name}.gguf"


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "KILN_LLAMA_CPP_SRC", "/tmp/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp")
    tmp = Path(tempfile.mkdtemp(prefix="kiln-roundtrip-"))
    OUT.mkdir(parents=True, exist_ok=True)
    fams = {}
    for name, kind, specials in FAMILIES:
        path = source_path(src, name, kind)
        tok = load_gguf(path)
        folder = tmp / "hf" / name
        tok.save_pretrained(str(folder))
        tok = AutoTokenizer.from_pretrained(str(folder))
        tj = json.loads((folder / "tokenizer.json").read_text())
        vocab = sorted(tj["model"]["vocab"].items(), key=lambda kv: kv[1])
        assert [i for _, i in vocab] == list(range(len(vocab))), name
        tokens = [t for t, _ in vocab]
        merges = [m if isinstance(m, list) else m.split(" ", 1) for m in tj["model"]["merges"]]
        r = gguf.GGUFReader(str(path))
        gg_tokens = r.fields["tokenizer.ggml.tokens"].contents()
        texts = texts_for(specials)
        for s in specials:
            assert s in tokens or s in [a["content"] for a in tj["added_tokens"]], f"{name}: no {s}"
        fam = {
            "source": kind,
            "arch": r.fields["general.architecture"].contents(),
            "texts": texts,
            "hf": [tok.encode(t, add_special_tokens=False) for t in texts],
            "hf_bos": tok.bos_token_id,
            "hf_eos": tok.eos_token_id,
            "vocab_digest": digest(tokens),
            "merges_digest": digest(merges),
        }
        files = {f.name: f.read_text() for f in sorted(folder.iterdir()) if f.name != "tokenizer.json"}
        if kind == "llama-cpp":
            # Rebuilt by the test: the vocabulary is the GGUF's token list (checked here), the
            # merges the GGUF's (BPE) or those its scores imply (SentencePiece; checked there).
            assert tokens == gg_tokens, f"{name}: transformers' vocabulary is not the GGUF's token list"
            tj["model"]["vocab"] = {}
            tj["model"]["merges"] = []
        fam["tokenizer_json"] = tj
        fam["files"] = files
        fams[name] = fam
        print(f"{name}: {len(tokens)} tokens, {len(merges)} merges, ids {[len(x) for x in fam['hf']]}")

    expected = OUT / "expected.json"
    expected.write_text(json.dumps({"families": fams}, ensure_ascii=False, indent=1) + "\n")

    # kiln's exports of the folders, and the digests of what it wrote.
    exports = tmp / "exports"
    exports.mkdir()
    env = dict(os.environ, KILN_ROUNDTRIP_WRITE=str(exports), KILN_LLAMA_CPP_SRC=src)
    cargo = ["cargo", "test", "--workspace", "--locked", "--test", "tokenizer_roundtrip", "--", "--nocapture"]
    # The built test binary, where given (cargo's own run rebuilds under another environment).
    if os.environ.get("KILN_ROUNDTRIP_TEST_BIN"):
        cargo = [os.environ["KILN_ROUNDTRIP_TEST_BIN"], "--nocapture"]
    subprocess.run(cargo, cwd=ROOT, env=env, check=True)
    for name, fam in fams.items():
        kiln = json.loads((exports / f"{name}.json").read_text())
        tok = load_gguf(exports / f"{name}.gguf")
        ids = [tok.encode(t, add_special_tokens=False) for t in fam["texts"]]
        for i, (a, b) in enumerate(zip(ids, fam["hf"])):
            assert a == b, f"{name}: transformers on kiln's GGUF differs from the folder on text {i}:\n{a}\n{b}"
        assert (tok.bos_token_id, tok.eos_token_id) == (fam["hf_bos"], fam["hf_eos"]), name
        fam["gguf_transformers"] = ids
        fam["export_digest"] = kiln["digest"]
        fam["kiln_gguf_differs"] = kiln["differs"]
        print(f"{name}: transformers on kiln's GGUF = the folder on {len(ids)} texts; kiln's GGUF reading differs on {kiln['differs']}")
    expected.write_text(json.dumps({"families": fams}, ensure_ascii=False, indent=1) + "\n")
    env.pop("KILN_ROUNDTRIP_WRITE")
    subprocess.run(cargo, cwd=ROOT, env=env, check=True)


if __name__ == "__main__":
    main()
