//! Exporting a tuned model: LoRA adapters merged into the base weights (`W + s·B·A`), written
//! as a transformers model folder (`config.json`, `model.safetensors`, tokenizer files with the
//! chat template), loadable by `AutoModelForCausalLM.from_pretrained`.

use std::path::Path;

use kiln_core::{DType, Tensor};

use crate::adapters::{LoraSet, Target};
use crate::data::tokenizer::TextTokenizer;
use crate::model::Llama;
use crate::{KilnError, Result};

/// Every weight of `model` with the adapters of `lora` merged in, named as transformers names
/// them, in `dtype` (f32, bf16 or f16). Quantized bases are dequantized first.
pub fn merged_weights(model: &Llama, lora: Option<&LoraSet>, dtype: DType) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for (name, v) in model.named_weights() {
        let mut w = v.value().to_dtype(DType::F32)?;
        if let Some((layer, t)) = adapted(&name)
            && let Some(l) = lora.and_then(|s| s.get(layer, t))
        {
            let be = w.backend();
            let ba = be.matmul(l.b.value(), l.a.value(), false, false)?;
            w = be.add(&w, &be.scale(&ba, l.scale)?)?;
        }
        out.push((name, if dtype == DType::F32 { w } else { w.to_dtype(dtype)? }));
    }
    if model.config.arch == crate::model::Arch::Phi3 {
        // Phi-3 leaves kiln with its fused q/k/v and gate/up matrices, as transformers has them.
        return crate::model::phi3::fuse_named(&model.config, out);
    }
    Ok(out)
}

/// `model.layers.{i}.{module}.weight` → `(i, target)`.
fn adapted(name: &str) -> Option<(usize, Target)> {
    let rest = name.strip_prefix("model.layers.")?.strip_suffix(".weight")?;
    let (i, module) = rest.split_once('.')?;
    let t = Target::ALL.into_iter().find(|t| t.module() == module)?;
    Some((i.parse().ok()?, t))
}

/// Writes the merged model folder `dir`.
pub fn export_merged(
    model: &Llama,
    lora: Option<&LoraSet>,
    tokenizer: Option<&TextTokenizer>,
    dtype: DType,
    dir: &Path,
) -> Result<()> {
    if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
        return Err(KilnError::Msg(format!("export: merged weights are f32, bf16 or f16, not {dtype:?}")));
    }
    // Gemma's norms are held as 1 + w; transformers stores w. The offset comes off in f32,
    // before the narrowing to `dtype`.
    let c = &model.config;
    let mut tensors = Vec::new();
    for (name, w) in merged_weights(model, lora, DType::F32)? {
        let w = crate::model::gemma::to_hf_layout(c, &name, w)?;
        tensors.push((name, if dtype == DType::F32 { w } else { w.to_dtype(dtype)? }));
    }
    crate::formats::write_safetensors(&dir.join("model.safetensors"), &tensors)?;
    let mut cfg = model.config.to_hf_json();
    cfg["torch_dtype"] = match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
    .into();
    if let Some(t) = tokenizer {
        cfg["bos_token_id"] = t.bos.as_ref().map(|s| s.id).into();
        cfg["eos_token_id"] = t.eos.as_ref().map(|s| s.id).into();
        t.save_hf(dir)?;
    }
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| KilnError::Msg(e.to_string()))?;
    crate::formats::write_atomic(&dir.join("config.json"), text.as_bytes())
}
