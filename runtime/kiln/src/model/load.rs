//! Opening a model for use: weights and tokenizer from a `.gguf` file or a model folder, and an
//! adapter folder applied. Every command that runs a model (generate, chat, eval, export,
//! train) loads through here, so an adapter means the same thing everywhere.

use std::path::{Path, PathBuf};

use super::gguf::{GgufWeights, config_from_gguf};
use super::{Llama, ModelConfig};
use crate::adapters::LoraSet;
use crate::data::template::ChatTemplate;
use crate::data::tokenizer::TextTokenizer;
use crate::formats::gguf::GgufFile;
use crate::{KilnError, Result};

/// The config of a `.gguf` file or a model folder, without loading weights.
pub fn config_of(path: &Path) -> Result<ModelConfig> {
    if path.extension().is_some_and(|e| e == "gguf") {
        config_from_gguf(&GgufFile::open(path)?)
    } else {
        ModelConfig::load(path)
    }
}

/// A model and its tokenizer from a `.gguf` file (opened once for both) or a model directory
/// with `tokenizer.json`; `trainable` makes the base weights f32 parameters (full fine-tuning).
pub fn load_with_tokenizer(path: &Path, trainable: bool) -> Result<(Llama, TextTokenizer)> {
    if path.extension().is_some_and(|e| e == "gguf") {
        let (src, config) = GgufWeights::open(path)?;
        let tok = TextTokenizer::from_gguf(&src.file)?;
        return Ok((Llama::from_source(config, &src, trainable)?, tok));
    }
    Ok((Llama::load(path, trainable)?, TextTokenizer::load(path)?))
}

/// Applies an adapter folder to `model`: a bottleneck adapter is attached to the model; a PEFT
/// LoRA adapter is returned (applied unmerged by the caller) after its fully trained modules
/// (`modules_to_save`: embedding, LM head), if any, replace the model's.
pub fn load_adapter(model: &mut Llama, dir: &Path) -> Result<Option<LoraSet>> {
    if let Some(size) = crate::adapters::bottleneck::size_of(dir)? {
        model.load_bottlenecks(dir, size)?;
        return Ok(None);
    }
    let lora = LoraSet::load_peft(dir, &model.config)?;
    for (name, t) in LoraSet::peft_full_modules(dir)? {
        // An adapter trained with added tokens carries a larger embedding.
        if t.dims().first().is_some_and(|&rows| rows > model.config.vocab_size) {
            model.resize_vocab(t.dims()[0])?;
        }
        let slot = match name.as_str() {
            "model.embed_tokens.weight" => &mut model.embed,
            _ => model.lm_head.as_mut().ok_or_else(|| {
                KilnError::Msg(format!("{}: the adapter has an lm_head but the model ties it", dir.display()))
            })?,
        };
        if t.dims() != slot.value().dims() {
            return Err(KilnError::Msg(format!(
                "{}: {name} is {:?}, the model's is {:?}",
                dir.display(),
                t.dims(),
                slot.value().dims()
            )));
        }
        *slot = crate::core::Var::constant(t.to_dtype(crate::core::DType::F32)?);
    }
    Ok(Some(lora))
}

/// The tokenizer an adapter folder carries (one trained with added special tokens), if any.
pub fn adapter_tokenizer(dir: &Path) -> Result<Option<TextTokenizer>> {
    if dir.join("tokenizer.json").is_file() { Ok(Some(TextTokenizer::load(dir)?)) } else { Ok(None) }
}

/// A frozen model and its tokenizer with an adapter folder applied (when given): a LoRA adapter
/// comes back to apply unmerged, a bottleneck adapter is attached, and an adapter that carries
/// its own tokenizer (trained with added tokens) replaces the model's.
pub fn load_with_adapter(path: &Path, adapter: Option<&Path>) -> Result<(Llama, TextTokenizer, Option<LoraSet>)> {
    let (mut model, mut tok) = load_with_tokenizer(path, false)?;
    let Some(dir) = adapter else { return Ok((model, tok, None)) };
    if let Some(t) = adapter_tokenizer(dir)? {
        tok = t;
    }
    let lora = load_adapter(&mut model, dir)?;
    Ok((model, tok, lora))
}

/// What to load: a model path (`None`: the default model) and an adapter folder.
#[derive(Clone, Debug, Default)]
pub struct LoadSpec {
    pub model: Option<PathBuf>,
    pub adapter: Option<PathBuf>,
}

/// A frozen model ready to run: the resolved path, the weights, the tokenizer it runs with and
/// the LoRA adapter applied unmerged (a bottleneck adapter is attached to the model itself).
pub struct Loaded {
    pub path: PathBuf,
    pub model: Llama,
    pub tokenizer: TextTokenizer,
    pub lora: Option<LoraSet>,
}

impl Loaded {
    /// The chat template: `name` (a built-in) when given, else the tokenizer's own or one found
    /// beside the model.
    pub fn template(&self, name: Option<&str>) -> Result<Option<ChatTemplate>> {
        ChatTemplate::choose_for(name, self.tokenizer.chat_template.as_deref(), Some(&self.path))
    }
}

/// Resolves and loads `spec`: the model (fetched on first use when none is named) with its
/// adapter applied.
pub fn load(spec: &LoadSpec) -> Result<Loaded> {
    let path = super::resolve(spec.model.as_deref())?;
    let (model, tokenizer, lora) = load_with_adapter(&path, spec.adapter.as_deref())?;
    Ok(Loaded { path, model, tokenizer, lora })
}
