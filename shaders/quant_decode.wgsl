// quant_decode.wgsl — decoding of GGUF block types, QLoRA's NF4 and f16/bf16 to f32, shared
// by the dequantization kernel (quant.wgsl) and the fused dequant-GEMM (matmul_q.wgsl), which
// each declare the byte array `wq: array<u32>` and append this file (bit-exact with
// kiln_core::quant, itself byte-exact with ggml; layouts in runtime/kiln-core/src/quant/mod.rs).
// The bytes arrive as words (blocks of 18, 20, 22, 33… bytes are not word-aligned) and are read a
// byte at a time.

const NF4 = array<f32, 16>(
    -1.0, -0.6961928, -0.52507305, -0.3949175, -0.28444138, -0.18477343, -0.091050036, 0.0,
    0.0795803, 0.1609302, 0.2461123, 0.33791524, 0.44070983, 0.562617, 0.72295684, 1.0);
const SEMITONES = array<f32, 12>(
    1.0, 1.0594631, 1.122462, 1.1892071, 1.259921, 1.3348399, 1.4142135, 1.4983071, 1.587401,
    1.6817928, 1.7817974, 1.8877486);

fn byte(i: u32) -> u32 {
    return (wq[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu;
}

fn f16at(i: u32) -> f32 {
    return unpack2x16float(byte(i) | (byte(i + 1u) << 8u)).x;
}

fn u32at(i: u32) -> u32 {
    return byte(i) | (byte(i + 1u) << 8u) | (byte(i + 2u) << 16u) | (byte(i + 3u) << 24u);
}

fn i8of(u: u32) -> f32 {
    return f32(i32(u) - select(0, 256, u >= 128u));
}

// The 6-bit scale (which = 0) or min (which = 1) of sub-block s of a Q4_K/Q5_K super-block
// whose 12 scale bytes start at `at` (ggml's get_scale_min_k4).
fn k_scale(at: u32, s: u32, which: u32) -> f32 {
    if (s < 4u) {
        return f32(byte(at + s + 4u * which) & 0x3fu);
    }
    let lo = byte(at + s + 4u);
    let hi = byte(at + s - 4u + 4u * which) >> 6u;
    if (which == 0u) { return f32((lo & 0x0fu) | (hi << 4u)); }
    return f32((lo >> 4u) | (hi << 4u));
}

// Value k of a tensor of type `ty` (blocks of `block` values in `bytes` bytes) whose first block
// starts at byte `base` of `wq`.
fn decode(base: u32, k: u32, ty: u32, block: u32, bytes: u32) -> f32 {
    let b = base + (k / block) * bytes;
    let j = k % block;
    var x = 0.0;
    switch ty {
        // Q8_0
        case 8u: { x = f16at(b) * i8of(byte(b + 2u + j)); }
        // Q4_0, Q4_1: values j and j + 16 share byte j % 16 (low, high nibble).
        case 2u, 3u: {
            let at = select(b + 2u, b + 4u, ty == 3u);
            let v = byte(at + j % 16u);
            let nib = f32(select(v & 0x0fu, v >> 4u, j >= 16u));
            if (ty == 3u) { x = f16at(b) * nib + f16at(b + 2u); } else { x = f16at(b) * (nib - 8.0); }
        }
        // Q5_0: the fifth bit of value j is bit j of the u32 after the scale.
        case 6u: {
            let v = byte(b + 6u + j % 16u);
            let lo = select(v & 0x0fu, v >> 4u, j >= 16u);
            let hi = (u32at(b + 2u) >> j) & 1u;
            x = f16at(b) * (f32(lo | (hi << 4u)) - 16.0);
        }
        // Q4_K, Q5_K: 8 sub-blocks of 32; sub-block s uses nibble (s % 2) of bytes 32·(s/2)…
        case 12u, 13u: {
            let s = j / 32u;
            let l = j % 32u;
            let q5 = ty == 13u;
            let at = select(b + 16u, b + 48u, q5);
            var v = (byte(at + (s / 2u) * 32u + l) >> (4u * (s % 2u))) & 0x0fu;
            if (q5) { v |= ((byte(b + 16u + l) >> s) & 1u) << 4u; }
            x = f16at(b) * k_scale(b + 4u, s, 0u) * f32(v) - f16at(b + 2u) * k_scale(b + 4u, s, 1u);
        }
        // Q6_K: two halves of 128; in each, quarter r of 32 takes low/high nibbles of ql and
        // bit pairs 2r of qh, with scale is + 2r (ggml's dequantize_row_q6_K loop).
        case 14u: {
            let h = j / 128u;
            let w = j % 128u;
            let r = w / 32u;
            let l = w % 32u;
            let ql = b + 64u * h;
            let qh = byte(b + 128u + 32u * h + l);
            let lob = byte(ql + l + 32u * (r % 2u));
            let lo = select(lob & 0x0fu, lob >> 4u, r >= 2u);
            let hi = (qh >> (2u * r)) & 3u;
            let sc = i8of(byte(b + 192u + 8u * h + l / 16u + 2u * r));
            x = f16at(b + 208u) * sc * (f32(lo | (hi << 4u)) - 32.0);
        }
        // NF4: f32 absmax, then two values per byte, the first in the high nibble.
        case 1000u: {
            let v = byte(b + 4u + j / 2u);
            x = NF4[select(v >> 4u, v & 0x0fu, (j & 1u) == 1u)] * bitcast<f32>(u32at(b));
        }
        // NF4_DQ: a one-byte scale code c, 2^((c − 192)/12) (0: an all-zero block).
        case 1001u: {
            let c = byte(b);
            var a = 0.0;
            if (c != 0u) {
                let e = i32(c) - 192;
                let oct = select(e / 12, (e - 11) / 12, e < 0);
                a = SEMITONES[u32(e - oct * 12)] * exp2(f32(oct));
            }
            let v = byte(b + 1u + j / 2u);
            x = NF4[select(v >> 4u, v & 0x0fu, (j & 1u) == 1u)] * a;
        }
        // F16 and BF16 (frozen weights kept in 16 bits on the device), two bytes per value.
        case 1u: { x = f16at(b); }
        case 30u: { x = bitcast<f32>((byte(b) | (byte(b + 1u) << 8u)) << 16u); }
        default: { x = 0.0; }
    }
    return x;
}
