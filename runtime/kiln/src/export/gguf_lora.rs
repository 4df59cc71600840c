//! Exporting a LoRA adapter alone to llama.cpp's adapter GGUF (for `--lora`), without the
//! base weights.

use std::path::Path;

use kiln_core::quant::{GgmlType, quantize};

use super::gguf::{arch_name, file_type, permute_qk, s};
use crate::adapters::LoraSet;
use crate::formats::gguf::MetaValue;
use crate::formats::gguf_write::{OutTensor, write_gguf};
use crate::model::ModelConfig;
use crate::model::gguf::gguf_name;
use crate::{KilnError, Result};

/// Writes a LoRA adapter alone as a llama.cpp adapter GGUF (`general.type = adapter`,
/// `adapter.type = lora`, `adapter.lora.alpha`; tensors `blk.N.attn_q.weight.lora_a` `[r, in]`
/// and `.lora_b` `[out, r]`), loadable with llama.cpp's `--lora`. For Llama the B rows of q/k
/// are permuted like the base rows they add to. rsLoRA's scale is folded into alpha.
pub fn export_gguf_lora(config: &ModelConfig, lora: &LoraSet, ty: GgmlType, out: &Path) -> Result<()> {
    if !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        return Err(KilnError::Msg(format!("gguf-lora: adapters are written as f32, f16 or bf16, not {}", ty.name())));
    }
    let c = &lora.config;
    // llama.cpp scales by alpha / r; an rsLoRA adapter's alpha / √r becomes the equivalent alpha.
    let alpha = lora.config.scale() * c.r as f64;
    let meta = vec![
        ("general.architecture".to_string(), s(arch_name(config))),
        ("general.type".into(), s("adapter")),
        ("adapter.type".into(), s("lora")),
        ("adapter.lora.alpha".into(), MetaValue::F32(alpha as f32)),
        ("general.file_type".into(), MetaValue::U32(file_type(ty))),
    ];
    let mut tensors = Vec::new();
    for (name, t) in lora.peft_tensors()? {
        // model.layers.N.self_attn.q_proj.lora_A.weight → blk.N.attn_q.weight.lora_a
        let (module, which) = name
            .rsplit_once(".lora_")
            .ok_or_else(|| KilnError::Msg(format!("gguf-lora: unexpected adapter tensor `{name}`")))?;
        let base = gguf_name(&format!("{module}.weight"))
            .ok_or_else(|| KilnError::Msg(format!("gguf-lora: no GGUF name for `{module}`")))?;
        let ab = if which.starts_with('A') { "lora_a" } else { "lora_b" };
        let shape = t.dims().to_vec();
        let mut x = t.to_vec_f32()?;
        if ab == "lora_b" {
            permute_qk(config, &base, &shape, &mut x);
        }
        tensors.push(OutTensor { name: format!("{base}.{ab}"), ty, shape, data: quantize(ty, &x)? });
    }
    write_gguf(out, &meta, &tensors)
}
