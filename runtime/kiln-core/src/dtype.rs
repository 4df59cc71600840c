//! Element types, and the Rust scalars that map to them ([`Element`]). Trainable state is f32;
//! frozen weights keep their stored type (f16/bf16, and block-quantized types once the GGUF work
//! lands). f64 exists on the CPU only, for gradient checks.

use half::{bf16, f16};

use crate::quant::GgmlType;

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    /// Token ids, positions, targets (-100 = ignore) and segment ids.
    I32,
    /// A ggml block type (frozen weights only): values come in blocks, dequantized in the op.
    Quant(GgmlType),
}

impl DType {
    /// Bytes per element; for block types, the alignment unit of their bytes (1).
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F64 => 8,
            DType::F16 | DType::BF16 => 2,
            DType::Quant(_) => 1,
        }
    }

    /// Bytes that `n` values take (block types: `n` must be whole blocks; rounded down otherwise).
    pub fn bytes(self, n: usize) -> usize {
        match self {
            DType::Quant(t) => {
                let (bs, ts) = t.block();
                n / bs * ts
            }
            d => n * d.size(),
        }
    }

    /// Lower-case name as in safetensors/PyTorch docs.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::Quant(t) => t.name(),
        }
    }
}

/// `x` rounded to bf16, to nearest even. half 2.7's `bf16::from_f64` drops the low 32 bits of
/// the f64 mantissa before rounding, so values of f32 precision whose low bits decide the
/// rounding round the wrong way; those (every f32) go through the exact f32 conversion.
pub fn round_bf16(x: f64) -> half::bf16 {
    let f = x as f32;
    if f as f64 == x || x.is_nan() { half::bf16::from_f32(f) } else { half::bf16::from_f64(x) }
}

/// `x` rounded to f16, to nearest even (see [`round_bf16`] for why f32 values go through f32).
pub fn round_f16(x: f64) -> half::f16 {
    let f = x as f32;
    if f as f64 == x || x.is_nan() { half::f16::from_f32(f) } else { half::f16::from_f64(x) }
}

/// A Rust scalar type that maps to a [`DType`].
pub trait Element: bytemuck::Pod + Send + Sync + 'static {
    /// The dtype of this element type.
    const DTYPE: DType;
    /// Widens to f64 (exact for every supported type).
    fn to_f64(self) -> f64;
    /// Narrows from f64 with round-to-nearest.
    fn from_f64(v: f64) -> Self;
}
macro_rules! element {
    ($t:ty, $d:expr, $to:expr, $from:expr) => {
        impl Element for $t {
            const DTYPE: DType = $d;
            fn to_f64(self) -> f64 {
                $to(self)
            }
            fn from_f64(v: f64) -> Self {
                $from(v)
            }
        }
    };
}
element!(f32, DType::F32, |x: f32| x as f64, |v: f64| v as f32);
element!(f64, DType::F64, |x: f64| x, |v: f64| v);
element!(f16, DType::F16, |x: f16| x.to_f64(), round_f16);
element!(bf16, DType::BF16, |x: bf16| x.to_f64(), round_bf16);
element!(i32, DType::I32, |x: i32| x as f64, |v: f64| v as i32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_bit_rounding_keeps_the_sticky_bits() {
        // 0x3f228007: above the bf16 halfway point only by its lowest mantissa bits.
        let x = f32::from_bits(0x3f22_8007) as f64;
        assert_eq!(round_bf16(x).to_f32(), 0.636_718_75);
        assert_eq!(half::bf16::from_f32(x as f32), round_bf16(x));
        // An exact tie rounds to even; f64 values beyond f32 precision still round.
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0).to_f32(), 1.0);
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0).to_f32(), 1.015_625);
        let y = f32::from_bits(0x3f80_1001) as f64; // f16: above the halfway point by one low bit
        assert_eq!(round_f16(y), half::f16::from_f32(y as f32));
        assert_eq!(round_f16(65520.0), half::f16::INFINITY);
        assert!(round_bf16(f64::NAN).is_nan());
    }
}
