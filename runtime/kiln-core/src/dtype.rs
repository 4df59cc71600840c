//! Element types. Trainable state is f32; frozen weights keep their stored type (f16/bf16, and
//! block-quantized types once the GGUF work lands). f64 exists on the CPU only, for gradient checks.

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
