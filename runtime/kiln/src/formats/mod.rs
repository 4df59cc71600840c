//! File formats: safetensors (single and sharded).

pub mod gguf;
pub mod gguf_write;
pub mod safetensors;

use std::io::Write;
use std::path::Path;

pub use self::safetensors::{WeightStore, write_safetensors};
use crate::{KilnError, Result};

/// Writes `bytes` to `path` through a temp file in the same directory, synced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    // Created and registered in one step, so a command that removes its temporaries on a
    // signal (export) finds this one, and never sees its folder made again after removing it.
    let (mut f, _on_signal) = crate::outdir::create_temp_file(dir, &tmp).map_err(|e| KilnError::io(&tmp, e))?;
    let res = (|| {
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(KilnError::io(path, e));
    }
    Ok(())
}
