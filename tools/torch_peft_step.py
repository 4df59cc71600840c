"""transformers + PEFT LoRA training step on the GPU (bf16, SDPA attention), the reference for
`kiln bench train --backend cuda`: batch 4 of random tokens, r 8 on every linear layer, median
step time of 3 after a warm-up, tokens/s and peak GPU memory as one JSON line.

    python3 tools/torch_peft_step.py MODEL_DIR SEQ_LEN
"""
import json, sys, time, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

model, seq = sys.argv[1], int(sys.argv[2])
m = AutoModelForCausalLM.from_pretrained(model, torch_dtype=torch.bfloat16, attn_implementation="sdpa").cuda()
m = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
ids = torch.randint(0, m.config.vocab_size, (4, seq), device="cuda")
torch.cuda.reset_peak_memory_stats()
times = []
for i in range(4):
    torch.cuda.synchronize(); t = time.perf_counter()
    loss = m(input_ids=ids, labels=ids).loss
    loss.backward(); opt.step(); opt.zero_grad()
    torch.cuda.synchronize()
    if i: times.append(time.perf_counter() - t)
step = sorted(times)[len(times) // 2]
print(json.dumps({"backend": "torch+peft (bf16, sdpa)", "batch_size": 4, "seq_len": seq, "step_s": step,
                  "tokens_per_s": 4 * seq / step, "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20}))
