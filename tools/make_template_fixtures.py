#!/usr/bin/env python3
"""Chat-template and tokenizer fixtures: what transformers' apply_chat_template produces.

Setup: pip install transformers tokenizers
Run from the repository root: python3 tools/make_template_fixtures.py

Writes tests/fixtures/tokenizer/:
  tokenizer.json, tokenizer_config.json  a small byte-level BPE (like SmolLM2's / Llama 3's)
                                         trained on data/demo.txt, with the special tokens the
                                         templates use; bos <|begin_of_text|>, eos <|im_end|>
  templates.json   {"templates": {name: jinja}, "cases": [{"template", "messages",
                   "add_generation_prompt", "text" | "error", "ids"}]} — text and token ids from
                   transformers for kiln's built-in templates (read from
                   runtime/kiln/src/data/templates/*.jinja) and real-world ones that use
                   Python-isms (.strip(), .startswith(), namespace, raise_exception).
"""
import glob
import json
import os

from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import PreTrainedTokenizerFast

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
SPECIAL = ["<|endoftext|>", "<|begin_of_text|>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>",
           "<|end_header_id|>", "<|eot_id|>", "<s>", "</s>"]

REAL_WORLD = {
    # SmolLM2-Instruct: ChatML with a default system prompt.
    "smollm2": "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    # Zephyr-style: .strip() and eos after every turn.
    "zephyr": "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'].strip() + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'].strip() + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'].strip() + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}",
    # Qwen-style: namespace, attribute access, .startswith(), whitespace control, raise_exception.
    "qwen_like": "{%- set ns = namespace(found_system=false) -%}{%- for m in messages -%}{%- if m.role == 'system' -%}{%- set ns.found_system = true -%}{%- endif -%}{%- endfor -%}{%- if not ns.found_system -%}{{ '<|im_start|>system\nYou are Qwen, a helpful assistant.<|im_end|>\n' }}{%- endif -%}{%- for m in messages -%}{%- if m.content.startswith('!') -%}{{ raise_exception('Messages may not start with !') }}{%- endif -%}{{ '<|im_start|>' + m.role + '\n' + m.content.strip() + '<|im_end|>\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}",
}

CONVERSATIONS = [
    [{"role": "user", "content": "What fires hotter, stoneware or earthenware?"},
     {"role": "assistant", "content": "Stoneware, at about 1280 °C."}],
    [{"role": "system", "content": "You are a potter.  "},
     {"role": "user", "content": "Why cool slowly?"},
     {"role": "assistant", "content": " Quartz changes form at 573 degrees. "},
     {"role": "user", "content": "And glaze?"},
     {"role": "assistant", "content": "Silica, alumina and flux."}],
    [{"role": "user", "content": "Hello\n\nthere"}],
    [{"role": "user", "content": "!bang"}, {"role": "assistant", "content": "ok"}],
]


def main():
    os.makedirs(OUT, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([os.path.join(ROOT, "data", "demo.txt")], trainer)
    tok.save(os.path.join(OUT, "tokenizer.json"))
    hf = PreTrainedTokenizerFast(tokenizer_file=os.path.join(OUT, "tokenizer.json"),
                                 bos_token="<|begin_of_text|>", eos_token="<|im_end|>",
                                 pad_token="<|endoftext|>")
    templates = dict(REAL_WORLD)
    for path in sorted(glob.glob(os.path.join(ROOT, "runtime/kiln/src/data/templates/*.jinja"))):
        templates[os.path.basename(path)[:-6]] = open(path).read()
    hf.chat_template = templates["smollm2"]
    hf.save_pretrained(OUT)
    for extra in ["special_tokens_map.json", "chat_template.jinja"]:
        p = os.path.join(OUT, extra)
        if os.path.exists(p) and extra == "special_tokens_map.json":
            os.remove(p)
    cases = []
    for name, tpl in templates.items():
        for conv in CONVERSATIONS:
            for gen in (False, True):
                case = {"template": name, "messages": conv, "add_generation_prompt": gen}
                try:
                    text = hf.apply_chat_template(conv, chat_template=tpl, tokenize=False,
                                                  add_generation_prompt=gen)
                    ids = hf.apply_chat_template(conv, chat_template=tpl, tokenize=True,
                                                 add_generation_prompt=gen, return_dict=False)
                    case.update(text=text, ids=list(ids))
                except Exception as e:  # a template's own raise_exception
                    case["error"] = str(e)
                cases.append(case)
    with open(os.path.join(OUT, "templates.json"), "w") as f:
        json.dump({"templates": templates, "cases": cases}, f, indent=1, ensure_ascii=False)
    print(len(cases), "cases;", sum("error" in c for c in cases), "raise errors")


if __name__ == "__main__":
    main()
