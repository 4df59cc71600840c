//! Exporting to GGUF for llama.cpp / Ollama: the (merged) weights under llama.cpp's tensor
//! names, quantized per tensor (matrices to the chosen type, norms and biases f32), Llama q/k
//! rows permuted back to llama.cpp's rotary layout, and the metadata llama.cpp reads: copied
//! from a GGUF source, or written from `config.json` + `tokenizer.json` (byte-level BPE or
//! SentencePiece, as llama.cpp's converter writes them: [`super::gguf_tokenizer`]).

use std::path::Path;

use kiln_core::DType;
use kiln_core::quant::{GgmlType, quantize};

use crate::adapters::LoraSet;
use crate::data::tokenizer::TextTokenizer;
use crate::formats::gguf::{GgufFile, MetaArray, MetaValue};
use crate::formats::gguf_write::{OutTensor, write_gguf};
use crate::model::gemma::gguf_name_for;
use crate::model::{Arch, Llama, ModelConfig};
use crate::{KilnError, Result};

/// The `--quant` names and their block types.
pub fn quant_type(name: &str) -> Result<GgmlType> {
    Ok(match name {
        "f32" => GgmlType::F32,
        "f16" => GgmlType::F16,
        "bf16" => GgmlType::BF16,
        "q8_0" => GgmlType::Q8_0,
        "q4_0" => GgmlType::Q4_0,
        "q4_1" => GgmlType::Q4_1,
        "q5_0" => GgmlType::Q5_0,
        // q4_k_m (q5_k_m) is Q4_K (Q5_K) with Q6_K where llama.cpp spends more bits (see
        // `mixed_type`).
        "q4_k" | "q4_k_m" => GgmlType::Q4K,
        "q5_k" | "q5_k_m" => GgmlType::Q5K,
        "q6_k" => GgmlType::Q6K,
        other => {
            return Err(KilnError::Msg(format!(
                "--quant {other}: one of f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q4_k, q4_k_m, q5_k, q5_k_m, q6_k"
            )));
        }
    })
}

/// llama.cpp's Q4_K_M / Q5_K_M recipe (`llama_tensor_get_type`): the LM head (or a tied
/// embedding) and, in the first and last eighth of the layers and every third layer between,
/// `attn_v` and `ffn_down` get Q6_K; everything else `base` (Q4_K or Q5_K).
fn mixed_type(gguf: &str, n_layers: usize, tied: bool, base: GgmlType) -> GgmlType {
    let more_bits = |i: usize| i < n_layers / 8 || i >= 7 * n_layers / 8 || (i - n_layers / 8) % 3 == 2;
    if gguf == "output.weight" || (tied && gguf == "token_embd.weight") {
        return GgmlType::Q6K;
    }
    let layer = gguf.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|i| i.parse::<usize>().ok());
    match layer {
        Some(i) if (gguf.ends_with("attn_v.weight") || gguf.ends_with("ffn_down.weight")) && more_bits(i) => {
            GgmlType::Q6K
        }
        _ => base,
    }
}

/// llama.cpp's `general.file_type` for a whole-model type.
pub(super) fn file_type(t: GgmlType) -> u32 {
    match t {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::BF16 => 32,
        GgmlType::Q4K => 14, // MOSTLY_Q4_K_S (15 when mixed: MOSTLY_Q4_K_M)
        GgmlType::Q5K => 16, // MOSTLY_Q5_K_S (17 when mixed: MOSTLY_Q5_K_M)
        GgmlType::Q6K => 18,
        _ => 0,
    }
}

/// HF rotary layout → llama.cpp's (interleaved pairs), the inverse of the loader's un-permute.
/// Puts the rows of a Llama/Mistral q or k matrix (or a LoRA B that adds to one) named `gguf`
/// back into llama.cpp's rotary layout; other tensors and architectures are left as they are.
pub(super) fn permute_qk(c: &ModelConfig, gguf: &str, shape: &[usize], v: &mut Vec<f32>) {
    if !matches!(c.arch, Arch::Llama | Arch::Mistral) || shape.len() != 2 {
        return;
    }
    if gguf.ends_with("attn_q.weight") {
        *v = permute_rows(v, shape[0], shape[1], c.num_heads);
    } else if gguf.ends_with("attn_k.weight") {
        *v = permute_rows(v, shape[0], shape[1], c.num_kv_heads);
    }
}

fn permute_rows(v: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let (d, half) = (rows / heads, rows / heads / 2);
    let mut out = vec![0f32; v.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let (src, dst) = (h * d + j * half + i, h * d + 2 * i + j);
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&v[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

pub(super) fn arch_name(c: &ModelConfig) -> &'static str {
    match c.arch {
        Arch::Llama | Arch::Mistral => "llama",
        Arch::Qwen2 => "qwen2",
        Arch::Qwen3 => "qwen3",
        Arch::Phi3 => "phi3",
        Arch::Gemma2 => "gemma2",
        Arch::Gemma3 => "gemma3",
    }
}

pub(super) fn s(v: &str) -> MetaValue {
    MetaValue::Str(v.into())
}

/// Model metadata from the config (for a source that is not a GGUF file).
fn config_meta(c: &ModelConfig, name: &str) -> Result<Vec<(String, MetaValue)>> {
    let a = arch_name(c);
    let k = |x: &str| format!("{a}.{x}");
    let mut m = vec![
        ("general.architecture".into(), s(a)),
        ("general.name".into(), s(name)),
        (k("context_length"), MetaValue::U32(c.max_position_embeddings as u32)),
        (k("embedding_length"), MetaValue::U32(c.hidden_size as u32)),
        (k("block_count"), MetaValue::U32(c.num_layers as u32)),
        (k("feed_forward_length"), MetaValue::U32(c.intermediate_size as u32)),
        (k("attention.head_count"), MetaValue::U32(c.num_heads as u32)),
        (k("attention.head_count_kv"), MetaValue::U32(c.num_kv_heads as u32)),
        (k("attention.layer_norm_rms_epsilon"), MetaValue::F32(c.rms_norm_eps as f32)),
        (k("rope.freq_base"), MetaValue::F32(c.rope_theta as f32)),
        (k("rope.dimension_count"), MetaValue::U32(c.head_dim as u32)),
        (k("vocab_size"), MetaValue::U32(c.vocab_size as u32)),
    ];
    if c.head_dim * c.num_heads != c.hidden_size && c.gemma.is_none() {
        m.push((k("attention.key_length"), MetaValue::U32(c.head_dim as u32)));
        m.push((k("attention.value_length"), MetaValue::U32(c.head_dim as u32)));
    }
    m.extend(crate::model::gguf::rope_meta(c, a)?);
    if c.arch == Arch::Phi3 {
        // Replaces the rope.dimension_count above (the rotated dims of a head).
        m.retain(|(key, _)| key != "phi3.rope.dimension_count");
        m.extend(crate::model::phi3::gguf_meta(c));
    }
    m.extend(crate::model::gemma::gguf_meta(c, a));
    Ok(m)
}

/// [`export_gguf_with_tokenizer`] with the source's own tokenizer (no tokens added).
pub fn export_gguf(
    model: &Llama,
    lora: Option<&LoraSet>,
    source: &Path,
    ty: GgmlType,
    mixed: bool,
    out: &Path,
) -> Result<()> {
    export_gguf_with_tokenizer(model, lora, None, None, source, ty, mixed, out)
}

/// Writes `model` (with `lora` merged) as a GGUF file of type `ty`. `source` is the model's
/// path: a GGUF's metadata (tokenizer, chat template) is carried over; a directory's
/// `config.json`/`tokenizer.json` are converted. `tokenizer` is the one the model runs with:
/// tokens added in training (a vocabulary grown with `--add-special-tokens`) are written into
/// the token list, so its length stays the embedding's row count. `pre` names the
/// `tokenizer.ggml.pre` to write for a directory's tokenizer instead of the one found from it
/// (see [`super::pre_hash`]); a GGUF source keeps its own, and a different `pre` is refused.
#[allow(clippy::too_many_arguments)]
pub fn export_gguf_with_tokenizer(
    model: &Llama,
    lora: Option<&LoraSet>,
    tokenizer: Option<&TextTokenizer>,
    pre: Option<&str>,
    source: &Path,
    ty: GgmlType,
    mixed: bool,
    out: &Path,
) -> Result<()> {
    let c = &model.config;
    let mut meta: Vec<(String, MetaValue)> = if source.extension().is_some_and(|e| e == "gguf") {
        let g = GgufFile::open(source)?;
        let mut m: Vec<(String, MetaValue)> = g
            .metadata
            .into_iter()
            .filter(|(k, _)| !matches!(k.as_str(), "general.file_type" | "general.alignment"))
            .collect();
        let own = m.iter().find(|(k, _)| k == "tokenizer.ggml.pre").and_then(|(_, v)| v.as_str());
        if let Some(p) = pre.filter(|p| Some(*p) != own) {
            return Err(KilnError::Msg(format!(
                "{}: a GGUF source keeps its own tokenizer.ggml.pre ({}); --gguf-pre `{p}` applies to a transformers folder",
                source.display(),
                own.unwrap_or("none")
            )));
        }
        grow_token_list(&mut m, c, tokenizer, source)?;
        m
    } else {
        let name = source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut m = config_meta(c, &name)?;
        match tokenizer {
            Some(t) => m.extend(super::gguf_tokenizer::tokenizer_metadata(t, c.vocab_size, pre)?),
            None => m.extend(super::gguf_tokenizer::tokenizer_metadata_of_dir(source, c.vocab_size, pre)?),
        }
        m
    };
    meta.push(("general.file_type".into(), MetaValue::U32(file_type(ty) + mixed as u32)));
    let mut tensors = Vec::new();
    for (name, w) in super::merged::merged_weights(model, lora, DType::F32)? {
        let g =
            gguf_name_for(c.arch, &name).ok_or_else(|| KilnError::Msg(format!("export: no GGUF name for `{name}`")))?;
        let shape = w.dims().to_vec();
        let mut v = w.to_vec_f32()?;
        // The loader un-permutes Llama q/k rows; writing puts them back.
        permute_qk(c, &g, &shape, &mut v);
        // Vectors (norms, biases) stay f32, as llama.cpp keeps them; a matrix whose rows are not
        // whole blocks of `ty` falls back to Q8_0 (rows of 32s; e.g. 576-wide rows under
        // Q4_K's 256), else f16 — llama.cpp's quantizer falls back the same way.
        let row = shape.last().copied().unwrap_or(1);
        let ty = if mixed { mixed_type(&g, c.num_layers, c.tie_word_embeddings, ty) } else { ty };
        let t = if shape.len() < 2 {
            GgmlType::F32
        } else if row.is_multiple_of(ty.block().0) {
            ty
        } else if row.is_multiple_of(32) && ty.block().0 > 32 {
            GgmlType::Q8_0
        } else {
            GgmlType::F16
        };
        tensors.push(OutTensor { name: g, ty: t, shape, data: quantize(t, &v)? });
    }
    // llama3 scaling (or a GGUF source's table) lives in this tensor, not in the metadata:
    // without it the export would rotate with unscaled frequencies.
    if let Some(f) = crate::model::gguf::rope_freqs_of(c)? {
        let data = f.iter().flat_map(|x| x.to_le_bytes()).collect();
        tensors.push(OutTensor { name: "rope_freqs.weight".into(), ty: GgmlType::F32, shape: vec![f.len()], data });
    }
    for (name, f) in crate::model::phi3::gguf_rope_tensors(c) {
        let data = f.iter().flat_map(|x| x.to_le_bytes()).collect();
        tensors.push(OutTensor { name, ty: GgmlType::F32, shape: vec![f.len()], data });
    }
    write_gguf(out, &meta, &tensors)
}

/// Extends a GGUF source's per-token arrays (`tokens`, `token_type`, `scores`) to the model's
/// vocabulary when training added tokens: their text from `tokenizer`, control type for special
/// tokens (matched whole, as llama.cpp and kiln's loader treat them), score 0.
fn grow_token_list(
    meta: &mut [(String, MetaValue)],
    c: &ModelConfig,
    tokenizer: Option<&TextTokenizer>,
    source: &Path,
) -> Result<()> {
    let rows = c.vocab_size;
    let Some(n) =
        meta.iter().find(|(k, _)| k == "tokenizer.ggml.tokens").and_then(|(_, v)| v.as_array()).map(MetaArray::len)
    else {
        return Ok(());
    };
    if n == rows {
        return Ok(());
    }
    if n > rows {
        return Err(KilnError::Msg(format!(
            "{}: tokenizer.ggml.tokens has {n} tokens but the model's embedding has {rows} rows",
            source.display()
        )));
    }
    let added: std::collections::HashMap<u32, (String, bool)> =
        tokenizer.map(|t| t.added_tokens().into_iter().map(|(id, s, sp)| (id, (s, sp))).collect()).unwrap_or_default();
    let new: Vec<(String, i32)> = (n..rows)
        .map(|i| match added.get(&(i as u32)) {
            Some((text, special)) => (text.clone(), if *special { 3 } else { 4 }),
            None => match tokenizer.and_then(|t| t.id_to_token(i as u32)) {
                Some(text) => (text, 1),
                // Rows without a token (an embedding padded past the tokenizer): unused.
                None => (format!("[PAD{i}]"), 5),
            },
        })
        .collect();
    let vocab_key = meta
        .iter()
        .find(|(k, _)| k == "general.architecture")
        .and_then(|(_, v)| v.as_str())
        .map(|a| format!("{a}.vocab_size"));
    for (k, v) in meta.iter_mut() {
        match (k.as_str(), v) {
            ("tokenizer.ggml.tokens", MetaValue::Array(MetaArray::Str(a))) => new.iter().for_each(|(t, _)| a.push(t)),
            ("tokenizer.ggml.token_type", MetaValue::Array(a)) => {
                let mut types: Vec<i32> = a.to_f64s().unwrap_or_default().into_iter().map(|x| x as i32).collect();
                types.extend(new.iter().map(|(_, ty)| *ty));
                *a = MetaArray::I32(types);
            }
            ("tokenizer.ggml.scores", MetaValue::Array(a)) => {
                let mut scores: Vec<f32> = a.to_f64s().unwrap_or_default().into_iter().map(|x| x as f32).collect();
                scores.resize(rows, 0.0);
                *a = MetaArray::F32(scores);
            }
            (k, v) if Some(k) == vocab_key.as_deref() => *v = MetaValue::U32(rows as u32),
            _ => {}
        }
    }
    Ok(())
}
