//! The processes behind an output: the lock a run holds in its folder (host, pid and start
//! time, so a stale lock is told from a live one), and the sweep of temporaries whose
//! process is gone.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{LOCK, beside, is_empty_dir, refuse, remove_any, utc_now};
use crate::{KilnError, Result};

/// What a lock file records.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub(super) struct LockInfo {
    host: String,
    pid: u32,
    /// /proc/PID/stat field 22 (clock ticks after boot): tells a reused pid apart.
    start: Option<u64>,
    since: String,
}

impl LockInfo {
    fn mine() -> LockInfo {
        let pid = std::process::id();
        LockInfo { host: host_name(), pid, start: start_time(pid), since: utc_now() }
    }

    pub(super) fn is_me(&self) -> bool {
        let me = LockInfo::mine();
        self.host == me.host && self.pid == me.pid && self.start == me.start
    }
}

pub(super) fn read_lock(path: &Path) -> Option<LockInfo> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Creates `path` holding `info`, whole or not at all (a hard link of a complete temporary):
/// `Ok(false)` when it exists.
fn create_lock(path: &Path, info: &LockInfo) -> Result<bool> {
    let tmp = beside(path, "tmp");
    let text = serde_json::to_string_pretty(info).map_err(|e| KilnError::Msg(e.to_string()))?;
    std::fs::write(&tmp, text.as_bytes()).map_err(|e| KilnError::io(&tmp, e))?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        // A filesystem without hard links: exclusive creation (a crash may leave it empty,
        // which the next run reports).
        Err(_) => match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(mut f) => {
                f.write_all(text.as_bytes()).map_err(|e| KilnError::io(path, e))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(KilnError::io(path, e)),
        },
    }
}

/// Takes `dir/.kiln-lock`; a stale one (this host, its process gone or its pid reused) is taken
/// over with a note; a live one, or one from another host, refuses.
pub(super) fn acquire_lock(dir: &Path, notes: &mut Vec<String>) -> Result<PathBuf> {
    let path = dir.join(LOCK);
    let me = LockInfo::mine();
    for _ in 0..4 {
        if create_lock(&path, &me)? {
            return Ok(path);
        }
        let Some(held) = read_lock(&path) else {
            if !path.exists() {
                continue;
            }
            return Err(refuse(
                &path,
                format!(
                    "is not a lock kiln can read; if no kiln run is using {}, delete {} and retry",
                    dir.display(),
                    path.display()
                ),
            ));
        };
        if held.is_me() {
            return Ok(path);
        }
        if held.host != me.host {
            return Err(refuse(
                dir,
                format!(
                    "in use by kiln process {} on host {} since {} (lock {}); if that run is gone, delete {} and retry",
                    held.pid,
                    held.host,
                    held.since,
                    path.display(),
                    path.display()
                ),
            ));
        }
        let live = pid_alive(held.pid) && (held.start.is_none() || start_time(held.pid) == held.start);
        if live {
            return Err(refuse(
                dir,
                format!(
                    "in use by kiln process {} on this host since {} (lock {}): wait for it to finish or stop it; two runs on one folder would destroy each other's files",
                    held.pid,
                    held.since,
                    path.display()
                ),
            ));
        }
        // Stale: moved aside under our own name and checked, so two takers cannot both win.
        let grave = beside(&path, "stale");
        if std::fs::rename(&path, &grave).is_ok() {
            if read_lock(&grave).as_ref() == Some(&held) {
                let _ = std::fs::remove_file(&grave);
                notes.push(format!(
                    "took over the stale lock {} of kiln process {} (no longer running)",
                    path.display(),
                    held.pid
                ));
            } else {
                // Someone else's fresh lock: put back unless it was already replaced.
                let _ = std::fs::hard_link(&grave, &path);
                let _ = std::fs::remove_file(&grave);
            }
        }
    }
    Err(refuse(&path, "could not take the lock (other kiln processes keep taking it); retry"))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Field 22 of /proc/PID/stat: the process start time in clock ticks after boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(22 - 3).and_then(|f| f.parse().ok())
}

/// Whether process `pid` exists; without /proc, assumed alive (nothing is deleted on a guess).
pub fn pid_alive(pid: u32) -> bool {
    if !Path::new("/proc/self").exists() {
        return true;
    }
    Path::new("/proc").join(pid.to_string()).exists()
}

/// The pid in a temporary name `….tmp-PID` / `….old-PID` / `….stale-PID`.
fn leftover_pid(name: &str) -> Option<(&str, u32)> {
    for kind in ["tmp", "old", "stale"] {
        if let Some((head, pid)) = name.rsplit_once(&format!(".{kind}-"))
            && let Ok(pid) = pid.parse::<u32>()
        {
            return Some((head, pid));
        }
    }
    None
}

fn dead(pid: u32) -> bool {
    pid != std::process::id() && !pid_alive(pid)
}

/// Removes the leftovers of dead processes beside `out`: `.NAME.tmp-PID`, `.NAME.old-PID` (put
/// back in place when `out` itself is gone: the crash fell between the two renames of a
/// replacement), and the `STEM.tmp-PID` folders older kiln exports left.
pub fn sweep_beside(out: &Path) -> usize {
    let Some(name) = out.file_name().map(|n| n.to_string_lossy().into_owned()) else { return 0 };
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let stem = out.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut n = 0;
    for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some((head, pid)) = leftover_pid(&file) else { continue };
        let ours = head == format!(".{name}");
        // Only a folder that looks like an old export (or is empty) is taken for one.
        let legacy = head == stem
            && file.contains(".tmp-")
            && e.path().is_dir()
            && (is_empty_dir(&e.path())
                || ["config.json", "model.safetensors"].iter().any(|f| e.path().join(f).exists()));
        if !(ours || legacy) || !dead(pid) {
            continue;
        }
        if ours && file.contains(".old-") && !out.exists() && std::fs::rename(e.path(), out).is_ok() {
            continue;
        }
        if remove_any(&e.path()) {
            n += 1;
        }
    }
    n
}

/// Removes `.NAME.tmp-PID` files of dead processes in a run folder and its `adapter/`, `model/`
/// (the checkpoints folder sweeps its own).
pub(super) fn sweep_inside(out: &Path) -> usize {
    let mut n = 0;
    for dir in [out.to_path_buf(), out.join("adapter"), out.join("model")] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            if file.starts_with('.')
                && let Some((_, pid)) = leftover_pid(&file)
                && dead(pid)
                && remove_any(&e.path())
            {
                n += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outdir::tests::tmp;

    #[test]
    fn lock_is_exclusive_stale_is_taken_over_foreign_host_refused() {
        let d = tmp("lock");
        let mut notes = Vec::new();
        let l = acquire_lock(&d, &mut notes).unwrap();
        // Ours again: re-entrant.
        acquire_lock(&d, &mut notes).unwrap();
        // A live process of this host (pid 1 always exists under /proc).
        let live = LockInfo { host: host_name(), pid: 1, start: start_time(1), since: "then".into() };
        std::fs::write(&l, serde_json::to_string(&live).unwrap()).unwrap();
        let e = acquire_lock(&d, &mut notes).unwrap_err().to_string();
        assert!(e.contains("in use by kiln process 1"), "{e}");
        // pid 1 with another start time: reused, stale.
        let reused = LockInfo { start: start_time(1).map(|s| s + 1), ..live.clone() };
        std::fs::write(&l, serde_json::to_string(&reused).unwrap()).unwrap();
        acquire_lock(&d, &mut notes).unwrap();
        assert!(notes.iter().any(|n| n.contains("stale lock")), "{notes:?}");
        assert!(read_lock(&l).unwrap().is_me());
        let foreign = LockInfo { host: "elsewhere".into(), ..live };
        std::fs::write(&l, serde_json::to_string(&foreign).unwrap()).unwrap();
        let e = acquire_lock(&d, &mut notes).unwrap_err().to_string();
        assert!(e.contains("on host elsewhere") && e.contains("delete"), "{e}");
        std::fs::write(&l, b"").unwrap();
        assert!(acquire_lock(&d, &mut notes).unwrap_err().to_string().contains("not a lock"));
    }

    #[test]
    fn leftovers_of_dead_processes_are_swept_live_ones_kept() {
        let d = tmp("sweep");
        let out = d.join("merged");
        // A pid that is not running: beyond the kernel's limit.
        let gone = 4_194_999u32;
        std::fs::create_dir_all(d.join(format!(".merged.tmp-{gone}"))).unwrap();
        std::fs::create_dir_all(d.join(format!("merged.tmp-{gone}"))).unwrap();
        std::fs::create_dir_all(d.join(".merged.tmp-1")).unwrap();
        std::fs::create_dir_all(d.join(format!(".other.tmp-{gone}"))).unwrap();
        // An old output moved aside whose replacement never landed comes back.
        std::fs::create_dir_all(d.join(format!(".merged.old-{gone}"))).unwrap();
        std::fs::write(d.join(format!(".merged.old-{gone}/config.json")), b"{}").unwrap();
        assert_eq!(sweep_beside(&out), 2);
        assert!(out.join("config.json").is_file());
        assert!(d.join(".merged.tmp-1").exists() && d.join(format!(".other.tmp-{gone}")).exists());
    }
}
