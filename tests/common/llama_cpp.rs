//! llama.cpp's tokenizer test vocabularies (`models/ggml-vocab-*.gguf` with the `.inp`/`.out`
//! token vectors of its `test-tokenizer-0`), from the llama-cpp-python sdist on PyPI, which
//! vendors llama.cpp. Fetched once with python3's standard library (CI has python3, not the
//! packages), only the vocabulary files extracted and cached under the target folder, the
//! 77 MB tarball removed. Shared by `tests/gguf_vocab.rs` (BPE) and `tests/gguf_spm.rs`
//! (SentencePiece).

use std::path::PathBuf;
use std::process::Command;

/// The llama-cpp-python release whose `vendor/llama.cpp` is the reference.
pub const VERSION: &str = "0.3.36";

/// The sdist's `vendor/llama.cpp` with its `models/ggml-vocab-*` files: `KILN_LLAMA_CPP_SRC`,
/// else a cached extraction of `KILN_LLAMA_SDIST` (a local tarball) or of the sdist downloaded
/// from PyPI. `None` (with the reason printed) only outside CI: under CI a failed fetch fails.
pub fn llama_cpp_src() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_LLAMA_CPP_SRC") {
        return Some(PathBuf::from(p));
    }
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("llama-src");
    let src = cache.join(format!("llama_cpp_python-{VERSION}/vendor/llama.cpp"));
    // Written after a whole extraction, so an interrupted one is redone.
    let done = src.join("models/.kiln-extracted");
    if done.is_file() {
        return Some(src);
    }
    // The project listing, not the per-version JSON address (which some PyPI mirrors lack).
    let script = r#"
import json, os, sys, tarfile, urllib.parse, urllib.request
cache, local, version, done = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
os.makedirs(cache, exist_ok=True)
if local and not os.path.exists(local):
    sys.exit(f"KILN_LLAMA_SDIST={local}: no such file")
path = local or os.path.join(cache, f"llama_cpp_python-{version}.tar.gz")
if not os.path.exists(path):
    api = "https://pypi.org/pypi/llama-cpp-python/json"
    meta = json.load(urllib.request.urlopen(api, timeout=60))
    files = meta["releases"][version]
    url = urllib.parse.urljoin(api, next(u["url"] for u in files if u["packagetype"] == "sdist"))
    urllib.request.urlretrieve(url, path + ".part")
    os.replace(path + ".part", path)
with tarfile.open(path) as tar:
    names = [m for m in tar.getmembers() if "/vendor/llama.cpp/models/ggml-vocab-" in m.name]
    tar.extractall(cache, members=names, filter="data")
open(done, "w").close()
if not local:
    os.remove(path)
"#;
    let local = std::env::var("KILN_LLAMA_SDIST").unwrap_or_default();
    let t0 = std::time::Instant::now();
    let out = Command::new("python3").arg("-c").arg(script).arg(&cache).arg(&local).arg(VERSION).arg(&done).output();
    let why = match out {
        Ok(o) if o.status.success() && done.is_file() => {
            eprintln!("llama.cpp vocabularies fetched and unpacked in {:.1} s", t0.elapsed().as_secs_f64());
            return Some(src);
        }
        Ok(o) => format!(
            "fetching the llama-cpp-python {VERSION} sdist failed: {}",
            String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")
        ),
        Err(e) => format!("cannot run python3: {e}"),
    };
    assert!(std::env::var_os("CI").is_none(), "{why}: CI must run the llama.cpp vocabulary tests");
    eprintln!("SKIP llama.cpp vocabulary checks: {why}");
    None
}
