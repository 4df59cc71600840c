//! Models named as `org/name[@revision]`, read from the Hugging Face cache that transformers,
//! `huggingface-cli` and every peer tool share (`models--org--name/refs/<revision>` holds a
//! commit; `snapshots/<commit>/` holds the files), and downloaded into it through the `hf-hub`
//! crate when absent (the `hub-download` feature; never when `HF_HUB_OFFLINE` is set).
//! [`super::resolve`] tries a name only when no local path of that spelling exists.

use std::path::{Path, PathBuf};

use crate::{KilnError, Result};

/// A model named on the hub: `org/name` and an optional revision (branch, tag or commit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubName {
    pub repo: String,
    pub revision: Option<String>,
}

impl HubName {
    /// `org/name[@revision]` as the hub spells repository ids (letters, digits, `.`, `_`, `-`;
    /// neither part starting with `.` or `-`), or `None` for anything else (a path).
    pub fn parse(s: &str) -> Option<HubName> {
        let (repo, revision) = match s.split_once('@') {
            Some((r, rev)) => (r, Some(rev)),
            None => (s, None),
        };
        let (org, name) = repo.split_once('/')?;
        let part = |p: &str| {
            !p.is_empty()
                && p.len() <= 96
                && !p.starts_with(['.', '-'])
                && !p.contains("..")
                && !p.contains("--")
                && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        // A revision is a ref name (may hold `/`, as `refs/pr/1`) or a commit: never a way out
        // of the repository's folder.
        let rev_ok = |r: &str| {
            !r.is_empty()
                && !r.starts_with('/')
                && r.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
                && r.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
        };
        if !part(org) || !part(name) || !revision.is_none_or(rev_ok) {
            return None;
        }
        Some(HubName { repo: repo.to_string(), revision: revision.map(str::to_string) })
    }

    /// The revision asked for, `main` when none.
    pub fn rev(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    /// The repository's folder in the cache: `models--org--name`.
    pub fn folder(&self, cache: &Path) -> PathBuf {
        cache.join(format!("models--{}", self.repo.replace('/', "--")))
    }
}

impl std::fmt::Display for HubName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.revision {
            Some(r) => write!(f, "{}@{r}", self.repo),
            None => f.write_str(&self.repo),
        }
    }
}

fn env(k: &str) -> Option<PathBuf> {
    std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The hub cache folder as huggingface_hub finds it: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
pub fn cache_root() -> PathBuf {
    if let Some(p) = env("HF_HUB_CACHE") {
        return p;
    }
    if let Some(p) = env("HF_HOME") {
        return p.join("hub");
    }
    let base = env("XDG_CACHE_HOME").or_else(|| env("HOME").map(|h| h.join(".cache"))).unwrap_or_default();
    base.join("huggingface").join("hub")
}

/// Whether `HF_HUB_OFFLINE` forbids the network (`1`, `true`, `yes`, `on`, as huggingface_hub reads it).
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// The snapshot folder of `name` in `cache`, `None` when the cache does not hold that revision.
/// A ref naming a snapshot that is not there (an interrupted or pruned download) is an error
/// naming the ref's file, not a silent fall-through to the network.
pub fn snapshot(cache: &Path, name: &HubName) -> Result<Option<PathBuf>> {
    let repo = name.folder(cache);
    if !repo.is_dir() {
        return Ok(None);
    }
    let snaps = repo.join("snapshots");
    let rev = name.rev();
    let ref_file = repo.join("refs").join(rev);
    if ref_file.is_file() {
        let commit = std::fs::read_to_string(&ref_file).map_err(|e| KilnError::io(&ref_file, e))?;
        let commit = commit.trim();
        let snap = snaps.join(commit);
        if commit.is_empty() || commit.contains(['/', '\\']) || !snap.is_dir() {
            return Err(KilnError::Msg(format!(
                "{}: the ref `{rev}` names snapshot `{commit}`, but {} does not exist (an interrupted or pruned download): delete {} and download {} again",
                ref_file.display(),
                snap.display(),
                repo.display(),
                name.repo
            )));
        }
        return Ok(Some(snap));
    }
    // A commit hash: whole, or a unique prefix of at least 7 hex digits as git accepts it.
    if snaps.join(rev).is_dir() {
        return Ok(Some(snaps.join(rev)));
    }
    if rev.len() >= 7 && rev.chars().all(|c| c.is_ascii_hexdigit()) {
        let found: Vec<PathBuf> = std::fs::read_dir(&snaps)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(rev))
            .map(|e| e.path())
            .collect();
        if found.len() > 1 {
            return Err(KilnError::Msg(format!(
                "{}: the revision `{rev}` matches {} snapshots; give more digits of the commit",
                snaps.display(),
                found.len()
            )));
        }
        return Ok(found.into_iter().next());
    }
    Ok(None)
}

/// What to load from a snapshot folder: the folder itself when it holds `config.json`, else its
/// one `.gguf` file (a GGUF-only repository).
pub fn model_in(snap: &Path, name: &HubName) -> Result<PathBuf> {
    if snap.join("config.json").is_file() {
        return Ok(snap.to_path_buf());
    }
    let mut ggufs: Vec<PathBuf> = std::fs::read_dir(snap)
        .map_err(|e| KilnError::io(snap, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    ggufs.sort();
    match ggufs.len() {
        1 => Ok(ggufs.remove(0)),
        0 => Err(KilnError::Msg(format!(
            "{name}: the cached snapshot {} holds neither config.json nor a .gguf file",
            snap.display()
        ))),
        _ => Err(KilnError::Msg(format!(
            "{name}: the cached snapshot {} holds {} .gguf files ({}); pass the one to use as --model PATH",
            snap.display(),
            ggufs.len(),
            ggufs.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Prints `line` on stderr once per process: a command may resolve its `--model` more than once
/// (export, then load), and says which model it used once.
pub fn say_once(line: String) {
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if !said.contains(&line) {
        eprintln!("{line}");
        said.push(line);
    }
}

/// `name` resolved from the cache (printing which snapshot on stderr), or downloaded into it
/// when absent and the network is allowed.
pub fn resolve_name(name: &HubName) -> Result<PathBuf> {
    let cache = cache_root();
    if let Some(snap) = snapshot(&cache, name)? {
        let path = model_in(&snap, name)?;
        say_once(format!("kiln: --model {name}: the Hugging Face cache's {}", path.display()));
        return Ok(path);
    }
    let looked = format!("{} (revision `{}`)", name.folder(&cache).display(), name.rev());
    if offline() {
        return Err(KilnError::Msg(format!(
            "--model {name}: no such file or folder, and the Hugging Face cache has no {looked}; HF_HUB_OFFLINE is set, so nothing is downloaded: fetch it with `huggingface-cli download {} --revision {}` (or unset HF_HUB_OFFLINE)",
            name.repo,
            name.rev()
        )));
    }
    download(name, &cache, &looked)
}

/// The files kiln reads from a model repository: the config, tokenizer and safetensors weights
/// (a GGUF-only repository: its one `.gguf`).
#[cfg(feature = "hub-download")]
fn wanted(files: &[String]) -> Vec<String> {
    let keep = |f: &str| {
        !f.contains('/')
            && (f.ends_with(".safetensors")
                || f.ends_with(".safetensors.index.json")
                || matches!(
                    f,
                    "config.json"
                        | "generation_config.json"
                        | "tokenizer.json"
                        | "tokenizer_config.json"
                        | "special_tokens_map.json"
                        | "chat_template.jinja"
                        | "chat_template.json"
                ))
    };
    let mut out: Vec<String> = files.iter().filter(|f| keep(f)).cloned().collect();
    let ggufs: Vec<&String> = files.iter().filter(|f| f.ends_with(".gguf")).collect();
    if !out.iter().any(|f| f == "config.json") && ggufs.len() == 1 {
        out = vec![ggufs[0].clone()];
    }
    out
}

/// Downloads `name` into `cache` through `hf-hub` (token from `HF_TOKEN`, a progress bar per
/// file). Not exercised by the tests: they run without a network.
#[cfg(feature = "hub-download")]
fn download(name: &HubName, cache: &Path, looked: &str) -> Result<PathBuf> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};
    let fail = |e: hf_hub::api::sync::ApiError| {
        KilnError::Msg(format!(
            "--model {name}: not in the Hugging Face cache ({looked}), and downloading it failed: {e}"
        ))
    };
    let mut api = ApiBuilder::from_env().with_cache_dir(cache.to_path_buf()).with_progress(true);
    if let Ok(token) = std::env::var("HF_TOKEN")
        && !token.is_empty()
    {
        api = api.with_token(Some(token));
    }
    let api = api.build().map_err(fail)?;
    let repo = api.repo(Repo::with_revision(name.repo.clone(), RepoType::Model, name.rev().to_string()));
    let info = repo.info().map_err(fail)?;
    let files = wanted(&info.siblings.into_iter().map(|s| s.rfilename).collect::<Vec<_>>());
    if files.is_empty() {
        return Err(KilnError::Msg(format!(
            "--model {name}: the repository holds no config.json, safetensors or .gguf file kiln reads"
        )));
    }
    eprintln!("kiln: --model {name}: downloading {} files into {}", files.len(), cache.display());
    for f in &files {
        repo.get(f).map_err(fail)?;
    }
    let snap = cache.join(format!("models--{}", name.repo.replace('/', "--"))).join("snapshots").join(&info.sha);
    model_in(&snap, name)
}

#[cfg(not(feature = "hub-download"))]
fn download(name: &HubName, cache: &Path, looked: &str) -> Result<PathBuf> {
    let _ = cache;
    Err(KilnError::Msg(format!(
        "--model {name}: no such file or folder, and the Hugging Face cache has no {looked}; this kiln was built without the `hub-download` feature: fetch it with `huggingface-cli download {} --revision {}`",
        name.repo,
        name.rev()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_as_the_hub_spells_them() {
        let n = HubName::parse("Qwen/Qwen2.5-0.5B-Instruct@v1.0").unwrap();
        assert_eq!((n.repo.as_str(), n.rev()), ("Qwen/Qwen2.5-0.5B-Instruct", "v1.0"));
        assert_eq!(HubName::parse("HuggingFaceTB/SmolLM2-135M").unwrap().rev(), "main");
        assert_eq!(HubName::parse("a/b@refs/pr/1").unwrap().rev(), "refs/pr/1");
        for bad in [
            "gpt2",
            "./a/b",
            "/a/b",
            "a/b/c",
            "a/../b",
            "../a",
            "a/b@",
            "a/b@../x",
            "a/b@x/../y",
            "a b/c",
            "a/.b",
            "a/b--c",
        ] {
            assert_eq!(HubName::parse(bad), None, "{bad}");
        }
    }
}
