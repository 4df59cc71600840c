#!/usr/bin/env python3
"""Partial rotary RoPE fixtures (Phi-4-mini's `partial_rotary_factor` 0.75, and others):
transformers rotates only the first rotary_dim = int(head_dim · factor) dims of each head,
pairing dim i with i + rotary_dim/2 (`rotate_half` on the rotary slice), and passes the rest
through unchanged.

Setup (once): pip install torch transformers. Run from the repository root:
    python3 tools/make_partial_rope_fixtures.py

Writes tests/fixtures/rope/partial.txt: for each case, the inverse frequencies of
transformers' rotary embedding (Phi3RotaryEmbedding with the factor in the config), random
f32 inputs x [B, T, H, D] (kiln's layout), their positions, and transformers'
`apply_rotary_pos_emb` (modeling_phi3) of them, computed in f32 as the model does. The text
format is one record a line, `<key> <values…>`, each case opening with
`case <name> B T H D theta factor`; values are f32 written with 9 significant digits (they
read back exactly).
"""
from pathlib import Path

import torch
from transformers import Phi3Config
from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding, apply_rotary_pos_emb

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "rope" / "partial.txt"

# (name, B, T, H, head_dim, theta, partial_rotary_factor, positions per row)
CASES = [
    # Phi-4-mini's factor at a small head: 12 of 16 dims rotate, 4 pass; a fresh row and one
    # continuing after a cached prefix.
    ("phi4mini", 2, 3, 3, 16, 10000.0, 0.75, [[0, 1, 2], [37, 38, 39]]),
    # Half the dims (GPT-NeoX-style models, Phi-2's 0.4 rounds to a similar split), gaps.
    ("half", 1, 4, 1, 12, 500000.0, 0.5, [[3, 0, 9, 50]]),
    # A fifth: 4 of 20 dims rotate (2 pairs), 16 pass.
    ("quarter", 1, 2, 3, 20, 10000.0, 0.2, [[7, 11]]),
    # Every dim (the factor 1.0): the ordinary rotation.
    ("full", 1, 3, 2, 8, 10000.0, 1.0, [[0, 1, 2]]),
]


def fmt(t):
    return " ".join(format(float(v), ".9g") for v in t.reshape(-1).tolist())


def main():
    g = torch.Generator().manual_seed(25)
    lines = ["# partial rotary RoPE: transformers' apply_rotary_pos_emb (modeling_phi3); "
             "written by tools/make_partial_rope_fixtures.py"]
    for name, b, t, h, d, theta, factor, pos in CASES:
        cfg = Phi3Config(hidden_size=h * d, num_attention_heads=h, num_key_value_heads=h,
                         max_position_embeddings=128,
                         rope_parameters={"rope_type": "default", "rope_theta": theta,
                                          "partial_rotary_factor": factor})
        emb = Phi3RotaryEmbedding(cfg)
        x = torch.randn(b, t, h, d, generator=g, dtype=torch.float32)
        position_ids = torch.tensor(pos, dtype=torch.int64)
        cos, sin = emb(x, position_ids)  # [B, T, rotary_dim]
        rotary = int(d * factor)
        assert cos.shape[-1] == rotary and emb.inv_freq.numel() == rotary // 2, (cos.shape, rotary)
        # transformers' layout is [B, H, T, D]; kiln's [B, T, H, D].
        q = x.transpose(1, 2)
        y, _ = apply_rotary_pos_emb(q, q, cos, sin)
        y = y.transpose(1, 2).contiguous()
        # The pass-through dims are the input's, bit for bit.
        assert torch.equal(y[..., rotary:], x[..., rotary:])
        lines.append(f"case {name} {b} {t} {h} {d} {theta:g} {factor:g}")
        lines.append("pos " + " ".join(str(p) for row in pos for p in row))
        lines.append("inv_freq " + fmt(emb.inv_freq))
        lines.append("x " + fmt(x))
        lines.append("y " + fmt(y))
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
