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
    std::fs::create_dir_all(dir).map_err(|e| KilnError::io(dir, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    // A command that removes its temporaries on a signal (export) finds this one registered.
    let _on_signal = crate::outdir::temp_file(&tmp);
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(KilnError::io(path, e));
    }
    Ok(())
}
