#!/usr/bin/env python3
"""Attention fixture: transformers' eager attention with a sliding window and logit soft-capping,
forward and backward, on random inputs (what kiln's attention must match).

Setup (once): pip install torch transformers. Run from the repository root:
    python3 tools/make_attention_fixtures.py

Writes tests/fixtures/attention/window_softcap.bin, one case of grouped-query attention
(B = 2, T = 11, 4 query heads over 2 kv heads, head dim 5, window 4, soft-cap 1.5, scale 1/√5,
queries doubled so the cap bends the scores). The scores, capping, masking and softmax are
transformers' own `eager_attention_forward` of Gemma 2 (cap·tanh(s/cap), then the mask, softmax
in f32), the mask its `sliding_window_causal_mask_function` (key j visible to query i when
j ≤ i and i − j < window); the gradients are autograd's for the output gradient `d_o`.

Format (little-endian), a sequence of records:
    u8 name length, name (ASCII), u8 rank, rank × u32 dims, f32 values (row-major)
Records: params [3] (window, softcap, scale); q [B,T,Hq,D], k, v [B,T,Hkv,D], d_o [B,T,Hq,D]
(kiln's layout); o [B,T,Hq,D], lse [B,T,Hq] (the log-sum-exp of the capped, masked scores), and
dq, dk, dv.
"""
import struct
from pathlib import Path

import torch
from transformers.masking_utils import sliding_window_causal_mask_function
from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "attention"
B, T, HQ, HKV, D = 2, 11, 4, 2, 5
WINDOW, SOFTCAP = 4, 1.5
SCALE = D ** -0.5


class Module(torch.nn.Module):
    """What eager_attention_forward reads of its attention module."""

    def __init__(self):
        super().__init__()
        self.num_key_value_groups = HQ // HKV
        self.head_dim = D


def main():
    g = torch.Generator().manual_seed(25)
    # kiln's layout [B, T, H, D]; transformers' is [B, H, T, D].
    q = (2.0 * torch.randn(B, T, HQ, D, generator=g)).requires_grad_()
    k = torch.randn(B, T, HKV, D, generator=g).requires_grad_()
    v = torch.randn(B, T, HKV, D, generator=g).requires_grad_()
    d_o = torch.randn(B, T, HQ, D, generator=g)

    visible = sliding_window_causal_mask_function(WINDOW)
    idx = torch.arange(T)
    allowed = visible(torch.tensor(0), torch.tensor(0), idx[:, None], idx[None, :])
    # Spot checks of the convention: the window holds the query itself and WINDOW − 1 earlier keys.
    assert allowed[10, 10] and allowed[10, 7] and not allowed[10, 6] and not allowed[3, 4]
    mask = torch.zeros(T, T).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]

    module = Module().eval()
    o, _ = eager_attention_forward(module, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask,
                                   dropout=0.0, scaling=SCALE, softcap=SOFTCAP)
    # o comes back as [B, T, Hq, D] (transformers transposes it for the output projection).
    assert o.shape == (B, T, HQ, D)
    (dq, dk, dv) = torch.autograd.grad(o, (q, k, v), d_o)

    with torch.no_grad():
        kk = k.repeat_interleave(HQ // HKV, dim=2)
        s = torch.einsum("bihd,bjhd->bhij", q, kk) * SCALE
        s = SOFTCAP * torch.tanh(s / SOFTCAP) + mask
        lse = torch.logsumexp(s, dim=-1).permute(0, 2, 1)  # [B, T, Hq]

    OUT.mkdir(parents=True, exist_ok=True)
    records = [
        ("params", torch.tensor([WINDOW, SOFTCAP, SCALE])),
        ("q", q), ("k", k), ("v", v), ("d_o", d_o),
        ("o", o), ("lse", lse), ("dq", dq), ("dk", dk), ("dv", dv),
    ]
    buf = bytearray()
    for name, t in records:
        t = t.detach().float().contiguous()
        buf += struct.pack("<B", len(name)) + name.encode()
        buf += struct.pack("<B", t.dim()) + struct.pack(f"<{t.dim()}I", *t.shape)
        buf += struct.pack(f"<{t.numel()}f", *t.flatten().tolist())
    path = OUT / "window_softcap.bin"
    path.write_bytes(bytes(buf))
    print(f"wrote {path} ({len(buf)} bytes)")


if __name__ == "__main__":
    main()
