//! Signals during commands that have nothing worth saving midway: the temporaries registered
//! here are removed (and a folder moved aside put back) before the process exits 128+n.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::remove_any;
use crate::{KilnError, Result};

/// What a signal undoes.
#[derive(Debug, Clone)]
pub(super) enum Cleanup {
    Remove(PathBuf),
    /// The new output is removed and the old one, moved aside, put back.
    Restore {
        aside: PathBuf,
        out: PathBuf,
    },
}

pub(super) static CLEANUP: Mutex<Vec<Cleanup>> = Mutex::new(Vec::new());

pub(super) fn on_signal(c: Cleanup) {
    if let Ok(mut v) = CLEANUP.lock() {
        v.push(c);
    }
}

pub(super) fn forget_signal(p: &Path) {
    if let Ok(mut v) = CLEANUP.lock() {
        v.retain(|c| match c {
            Cleanup::Remove(x) => x != p,
            Cleanup::Restore { aside, .. } => aside != p,
        });
    }
}

/// Creates `dir` and the temporary file `tmp` in it (`formats::write_atomic`), registered for
/// removal on a signal — all under the registry's lock, so a signal handler removing
/// temporaries runs wholly before (this then waits for the exit) or after (and removes it).
pub(crate) fn create_temp_file(dir: &Path, tmp: &Path) -> std::io::Result<(std::fs::File, TempGuard)> {
    let mut held = CLEANUP.lock();
    std::fs::create_dir_all(dir)?;
    let f = std::fs::File::create(tmp)?;
    if let Ok(list) = held.as_mut() {
        list.push(Cleanup::Remove(tmp.to_path_buf()));
    }
    Ok((f, TempGuard(tmp.to_path_buf())))
}

/// Forgets a registered temporary when dropped.
pub(crate) struct TempGuard(PathBuf);

impl Drop for TempGuard {
    fn drop(&mut self) {
        forget_signal(&self.0);
    }
}

/// SIGINT, SIGTERM and SIGHUP remove the registered temporary outputs (and put back a folder
/// moved aside) and exit with 128+n. For commands whose work has nothing worth saving midway
/// (`export`, `kernels build`, `demo`); `train` checkpoints instead.
pub fn remove_on_signals() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| KilnError::Msg(format!("installing the signal handlers: {e}")))?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            // Held to the end: the main thread cannot start a rename meanwhile.
            let held = CLEANUP.lock();
            if let Ok(list) = &held {
                for c in list.iter().rev() {
                    undo(c);
                }
            }
            eprintln!("interrupted (signal {sig}): temporary output removed");
            std::process::exit(128 + sig);
        }
    });
    Ok(())
}

fn undo(c: &Cleanup) {
    match c {
        Cleanup::Remove(p) => {
            // The writer may still be creating files inside: a few tries.
            for _ in 0..3 {
                if !remove_any(p) || !p.exists() {
                    break;
                }
            }
        }
        Cleanup::Restore { aside, out } => {
            let _ = std::fs::remove_dir_all(out);
            let _ = std::fs::rename(aside, out);
        }
    }
}
