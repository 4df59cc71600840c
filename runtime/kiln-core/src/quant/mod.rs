//! Block-quantized formats, bit-exact with ggml's layouts (the CPU reference for the GPU
//! dequantization kernels). A block of `block_size` values is stored in `type_size` bytes.
//!
//! | type | block | bytes | layout |
//! |---|---|---|---|
//! | Q8_0 | 32 | 34 | f16 d, 32 × i8 q; x = d·q |
//! | Q4_0 | 32 | 18 | f16 d, 16 bytes: q[j] low nibble, q[j+16] high; x = d·(q − 8) |
//! | Q4_1 | 32 | 20 | f16 d, f16 m, 16 bytes as Q4_0; x = d·q + m |
//! | Q5_0 | 32 | 22 | f16 d, u32 high bits, 16 bytes low nibbles as Q4_0; x = d·(q − 16) |
//! | Q4_K | 256 | 144 | f16 d, f16 dmin, 12 bytes of 6-bit scales/mins for 8 sub-blocks of 32, 128 bytes of nibbles; x = d·sc·q − dmin·m |
//! | Q5_K | 256 | 176 | as Q4_K plus 32 bytes of fifth bits |
//! | Q6_K | 256 | 210 | 128 bytes low nibbles, 64 bytes high 2-bit pairs, 16 × i8 scales, f16 d; x = d·sc·(q − 32) |
//! | NF4 | 64 | 36 | f32 absmax, 32 bytes of 4-bit indices into the NF4 table (QLoRA; kiln-only) |
//! | NF4_DQ | 64 | 33 | u8 scale code 2^((c−192)/12), 32 bytes as NF4 (double quantization; kiln-only) |
//!
//! Q4_K, Q5_K and Q6_K are quantized with ggml's reference searches (`q4k`, `q6k`), byte for
//! byte as llama.cpp's `quantize_row_q*_K_ref` (fixtures from tools/make_kquant_fixtures.py).
//!
//! Quantization follows ggml's reference (and the `gguf` package's numpy port) operation for
//! operation in f32, so the bytes match.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::{Error, Result};

pub mod nf4;
mod q4k;
mod q6k;

/// ggml tensor types (ids as stored in GGUF).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    BF16,
    /// QLoRA's NF4 (kiln-only: never read from or written to GGUF).
    NF4,
    /// NF4 with 8-bit scales (QLoRA's double quantization; kiln-only).
    NF4DQ,
}

impl GgmlType {
    /// From the id stored in a GGUF tensor info.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            30 => BF16,
            _ => return None,
        })
    }

    /// The id stored in GGUF.
    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2K => 10,
            Q3K => 11,
            Q4K => 12,
            Q5K => 13,
            Q6K => 14,
            Q8K => 15,
            BF16 => 30,
            // Outside ggml's id space; `from_id` never returns NF4.
            NF4 => 0xFFFF_0004,
            NF4DQ => 0xFFFF_0005,
        }
    }

    /// `(values per block, bytes per block)`.
    pub fn block(self) -> (usize, usize) {
        use GgmlType::*;
        match self {
            F32 => (1, 4),
            F16 | BF16 => (1, 2),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 36),
            Q2K => (256, 84),
            Q3K => (256, 110),
            Q4K => (256, 144),
            Q5K => (256, 176),
            Q6K => (256, 210),
            Q8K => (256, 292),
            NF4 => (64, 36),
            NF4DQ => (64, 33),
        }
    }

    /// Name as ggml prints it.
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2K => "Q2_K",
            Q3K => "Q3_K",
            Q4K => "Q4_K",
            Q5K => "Q5_K",
            Q6K => "Q6_K",
            Q8K => "Q8_K",
            BF16 => "BF16",
            NF4 => "NF4",
            NF4DQ => "NF4_DQ",
        }
    }

    /// Bytes for `n` values, or `None` when `n` is not a whole number of blocks or the size
    /// does not fit in 64 bits (a corrupt header's absurd dimensions).
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let (bs, ts) = self.block();
        if !n.is_multiple_of(bs as u64) {
            return None;
        }
        (n / bs as u64).checked_mul(ts as u64)
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `bytes` of type `t` into `out` (whose length is the value count).
pub fn dequantize(t: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let (bs, ts) = t.block();
    if !out.len().is_multiple_of(bs) || bytes.len() != out.len() / bs * ts {
        return Err(Error::Msg(format!("dequantize {}: {} bytes for {} values", t.name(), bytes.len(), out.len())));
    }
    match t {
        GgmlType::NF4 => nf4::dequantize(bytes, out),
        GgmlType::NF4DQ => nf4::dequantize_dq(bytes, out),
        GgmlType::F32 => out
            .iter_mut()
            .zip(bytes.chunks_exact(4))
            .for_each(|(o, c)| *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        GgmlType::F16 => widen::<f16>(bytes, out, |b| f16::from_le_bytes(b).to_f32()),
        GgmlType::BF16 => widen::<bf16>(bytes, out, |b| bf16::from_le_bytes(b).to_f32()),
        GgmlType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(34)) {
                let d = f16_at(b, 0);
                o.iter_mut().zip(&b[2..]).for_each(|(o, &q)| *o = q as i8 as f32 * d);
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let q41 = t == GgmlType::Q4_1;
            let qs_at = if q41 { 4 } else { 2 };
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(ts)) {
                let d = f16_at(b, 0);
                let m = if q41 { f16_at(b, 2) } else { 0.0 };
                for j in 0..16 {
                    let (lo, hi) = ((b[qs_at + j] & 0x0F) as f32, (b[qs_at + j] >> 4) as f32);
                    if q41 {
                        o[j] = d * lo + m;
                        o[j + 16] = d * hi + m;
                    } else {
                        o[j] = d * (lo - 8.0);
                        o[j + 16] = d * (hi - 8.0);
                    }
                }
            }
        }
        GgmlType::Q5_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(22)) {
                let d = f16_at(b, 0);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                for j in 0..16 {
                    let lo = (b[6 + j] & 0x0F) as u32 | (((qh >> j) & 1) << 4);
                    let hi = (b[6 + j] >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4);
                    o[j] = d * (lo as f32 - 16.0);
                    o[j + 16] = d * (hi as f32 - 16.0);
                }
            }
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            let q5 = t == GgmlType::Q5K;
            let qs_at = if q5 { 48 } else { 16 };
            for (o, b) in out.chunks_exact_mut(256).zip(bytes.chunks_exact(ts)) {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let (sc, mn) = k_scale_min(&b[4..16]);
                for s in 0..8 {
                    let (c, shift) = (s / 2, 4 * (s % 2));
                    let (ds, ms) = (d * sc[s] as f32, dmin * mn[s] as f32);
                    for l in 0..32 {
                        let mut q = (b[qs_at + c * 32 + l] >> shift) & 0x0F;
                        if q5 {
                            q |= ((b[16 + l] >> s) & 1) << 4;
                        }
                        o[s * 32 + l] = ds * q as f32 - ms;
                    }
                }
            }
        }
        GgmlType::Q6K => {
            // ggml's loop: each byte of low nibbles and of high pairs serves four outputs.
            for (o, b) in out.chunks_exact_mut(256).zip(bytes.chunks_exact(210)) {
                let d = f16_at(b, 208);
                for h in 0..2 {
                    let (ql, qh, sc) =
                        (&b[64 * h..64 * h + 64], &b[128 + 32 * h..160 + 32 * h], &b[192 + 8 * h..200 + 8 * h]);
                    let y = &mut o[128 * h..128 * h + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q = |lo: u8, hi: u8| (lo | (hi << 4)) as i32 - 32;
                        let q1 = q(ql[l] & 0xF, qh[l] & 3);
                        let q2 = q(ql[l + 32] & 0xF, (qh[l] >> 2) & 3);
                        let q3 = q(ql[l] >> 4, (qh[l] >> 4) & 3);
                        let q4 = q(ql[l + 32] >> 4, (qh[l] >> 6) & 3);
                        y[l] = d * sc[is] as i8 as f32 * q1 as f32;
                        y[l + 32] = d * sc[is + 2] as i8 as f32 * q2 as f32;
                        y[l + 64] = d * sc[is + 4] as i8 as f32 * q3 as f32;
                        y[l + 96] = d * sc[is + 6] as i8 as f32 * q4 as f32;
                    }
                }
            }
        }
        other => return Err(Error::Msg(format!("dequantization of {} is not implemented yet", other.name()))),
    }
    Ok(())
}

/// Little-endian 16-bit floats to f32: half's slice conversion (F16C/AVX where the CPU has
/// them, checked at run time) when the bytes are aligned for it, else value by value.
fn widen<H>(bytes: &[u8], out: &mut [f32], one: impl Fn([u8; 2]) -> f32)
where
    H: bytemuck::Pod,
    [H]: HalfFloatSliceExt,
{
    match bytemuck::try_cast_slice::<u8, H>(bytes) {
        Ok(h) if cfg!(target_endian = "little") => h.convert_to_f32_slice(out),
        _ => out.iter_mut().zip(bytes.chunks_exact(2)).for_each(|(o, c)| *o = one([c[0], c[1]])),
    }
}

/// The eight 6-bit scales and mins of a Q4_K/Q5_K super-block, unpacked from 12 bytes.
pub(crate) fn k_scale_min(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for i in 0..4 {
        sc[i] = s[i] & 0x3F;
        mn[i] = s[4 + i] & 0x3F;
        sc[4 + i] = (s[8 + i] & 0x0F) | ((s[i] >> 2) & 0x30);
        mn[4 + i] = (s[8 + i] >> 4) | ((s[4 + i] >> 2) & 0x30);
    }
    (sc, mn)
}

/// Quantizes `x` (a whole number of blocks) to `t`, as ggml's reference quantizer does.
pub fn quantize(t: GgmlType, x: &[f32]) -> Result<Vec<u8>> {
    let (bs, ts) = t.block();
    if !x.len().is_multiple_of(bs) {
        return Err(Error::Msg(format!("quantize {}: {} values is not a multiple of {bs}", t.name(), x.len())));
    }
    let mut out = Vec::with_capacity(x.len() / bs * ts);
    match t {
        GgmlType::NF4 => nf4::quantize(x, &mut out),
        GgmlType::NF4DQ => nf4::quantize_dq(x, &mut out).map_err(|a| {
            Error::Msg(format!(
                "quantize NF4_DQ: a block's absmax {a} is beyond the 8-bit scale's range (≤ {}); use NF4",
                nf4::dq_max()
            ))
        })?,
        GgmlType::Q4K => q4k::quantize(x, &mut out, false),
        GgmlType::Q5K => q4k::quantize(x, &mut out, true),
        GgmlType::Q6K => q6k::quantize(x, &mut out),
        GgmlType::F32 => x.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => x.iter().for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        GgmlType::BF16 => x.iter().for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
        GgmlType::Q8_0 => {
            for b in x.chunks_exact(32) {
                let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d == 0.0 { 0.0 } else { 1.0 / d };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                // Round half away from zero, as roundf.
                out.extend(b.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        GgmlType::Q4_0 => {
            for b in x.chunks_exact(32) {
                // The value of largest magnitude, with its sign, maps to −8.
                let max = b.iter().fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                let d = max / -8.0;
                let id = if d == 0.0 { 0.0 } else { 1.0 / d };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                let q = |v: f32| ((v * id + 8.5).trunc() as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
            }
        }
        GgmlType::Q5_0 => {
            for b in x.chunks_exact(32) {
                let max = b.iter().fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                let d = max / -16.0;
                let id = if d == 0.0 { 0.0 } else { 1.0 / d };
                let q: Vec<u8> = b.iter().map(|&v| ((v * id + 16.5).trunc() as i32).clamp(0, 31) as u8).collect();
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                let qh = q.iter().enumerate().fold(0u32, |a, (j, &v)| a | (((v >> 4) as u32 & 1) << j));
                out.extend_from_slice(&qh.to_le_bytes());
                out.extend((0..16).map(|j| (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4)));
            }
        }
        GgmlType::Q4_1 => {
            for b in x.chunks_exact(32) {
                let (min, max) =
                    b.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                let d = (max - min) / 15.0;
                let id = if d == 0.0 { 0.0 } else { 1.0 / d };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                let q = |v: f32| (((v - min) * id + 0.5).trunc() as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
            }
        }
        other => return Err(Error::Msg(format!("quantization to {} is not implemented yet", other.name()))),
    }
    Ok(out)
}
