//! Output paths: the one place that decides whether a command may write where `--out` points,
//! and how. The rules are those of careful tools (git, rsync, initdb):
//!
//! - never `/`, `$HOME` (or a folder holding it), the current directory or any folder holding it,
//!   nor a folder holding the command's own inputs (model, adapter, data) — not even with
//!   `--overwrite`; paths are compared canonicalized, so `.`, `..` and symlinks do not slip by;
//! - an existing non-empty folder is replaced only with `--overwrite` and only when it holds
//!   kiln's marker file [`MARKER`] (written into every folder kiln creates): the old one is
//!   renamed aside and deleted once the new output is complete, and restored if the new one fails;
//! - an existing file is replaced only with `--overwrite`, atomically (renamed over), and never
//!   when it is a folder;
//! - temporary names are built beside the output (`.NAME.tmp-PID`, `.NAME.old-PID` in the same
//!   parent), and those of dead processes are swept at the next start;
//! - a run writing into its folder for its whole length (`train`, `demo`) holds a lock file
//!   [`LOCK`] naming host, pid and the process start time, so a stale lock is recognised and a
//!   live one — or one from another host on a shared filesystem — refuses the second run.
//!
//! Signals: [`remove_on_signals`] makes SIGINT, SIGTERM and SIGHUP remove whatever temporary
//! output is registered at that moment (and restore a folder moved aside) before exiting 128+n.

use std::fmt::Display;
use std::path::{Component, Path, PathBuf};

use self::process::{acquire_lock, read_lock, sweep_inside};
pub use self::process::{pid_alive, sweep_beside};
pub(crate) use self::signal::create_temp_file;
pub use self::signal::remove_on_signals;
use self::signal::{CLEANUP, Cleanup, forget_signal, on_signal};
use crate::{KilnError, Result};

mod process;
mod signal;

/// The marker kiln writes into every output folder it creates.
pub const MARKER: &str = ".kiln-output";
/// The lock file a run holds in its output folder.
pub const LOCK: &str = ".kiln-lock";

fn refuse(path: &Path, detail: impl Display) -> KilnError {
    KilnError::Msg(format!("{}: {detail}", path.display()))
}

/// What the output must not clobber: the paths a command reads.
#[derive(Clone, Debug, Default)]
pub struct Inputs(Vec<PathBuf>);

impl Inputs {
    /// Adds an input path; one that does not exist (yet) is ignored.
    pub fn with(mut self, p: impl AsRef<Path>) -> Self {
        let p = p.as_ref();
        if p.exists() {
            self.0.push(p.to_path_buf());
        }
        self
    }

    /// Adds `--data` specs, `FILE` or `FILE:WEIGHT`.
    pub fn with_data_specs(mut self, specs: &[String]) -> Self {
        for s in specs {
            let p = Path::new(s);
            if p.exists() {
                self.0.push(p.to_path_buf());
            } else if let Some((f, _)) = s.rsplit_once(':') {
                self = self.with(f);
            }
        }
        self
    }
}

/// `p` made absolute, with `.` and `..` resolved and every existing prefix canonicalized (so a
/// symlink resolves as the OS would), for a path that need not exist yet.
pub fn resolve(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).map_err(|e| KilnError::io(p, e))?;
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            // `out` is canonical wherever it exists, so popping is what the OS does with `..`.
            Component::ParentDir => {
                out.pop();
            }
            other => {
                out.push(other);
                if let Ok(canon) = out.canonicalize() {
                    out = canon;
                }
            }
        }
    }
    Ok(out)
}

/// Refuses the paths no command may write to, whatever the flags: `/`, `$HOME` or a folder
/// holding it, the current directory or a folder holding it, an input itself, or a folder
/// holding an input.
pub fn check_not_precious(out: &Path, inputs: &Inputs) -> Result<PathBuf> {
    let abs = resolve(out)?;
    let named = if abs.as_os_str() == out.as_os_str() {
        out.display().to_string()
    } else {
        format!("{} ({})", out.display(), abs.display())
    };
    let say = |what: String| {
        KilnError::Msg(format!(
            "--out {named} is {what}; kiln never writes over it, even with --overwrite: choose a new folder such as {}",
            suggestion(out)
        ))
    };
    if abs.parent().is_none() {
        return Err(say("the root folder".into()));
    }
    if let Ok(cwd) = std::env::current_dir().and_then(|c| c.canonicalize())
        && cwd.starts_with(&abs)
    {
        let what = if cwd == abs {
            "the current directory".to_string()
        } else {
            format!("a folder holding the current directory {}", cwd.display())
        };
        return Err(say(what));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty())
        && let Ok(home) = resolve(Path::new(&home))
        && home.starts_with(&abs)
    {
        let what = if home == abs {
            "the home folder".to_string()
        } else {
            format!("a folder holding the home folder {}", home.display())
        };
        return Err(say(what));
    }
    for input in &inputs.0 {
        let r = resolve(input)?;
        if r == abs {
            return Err(say(format!("an input of this command ({})", input.display())));
        }
        let folder = if r.is_dir() { r.as_path() } else { r.parent().unwrap_or(&r) };
        if folder.starts_with(&abs) {
            return Err(say(format!("a folder holding the input {}", input.display())));
        }
    }
    Ok(abs)
}

fn suggestion(out: &Path) -> String {
    let name =
        out.file_name().map(|n| n.to_string_lossy().into_owned()).filter(|n| !n.is_empty() && n != "." && n != "..");
    format!("./{}", name.unwrap_or_else(|| "kiln-out".into()))
}

/// The `.NAME.tmp-PID` / `.NAME.old-PID` path beside `out`.
fn beside(out: &Path, kind: &str) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    out.with_file_name(format!(".{name}.{kind}-{}", std::process::id()))
}

/// Whether `dir` is an output kiln wrote: its marker, or (runs from before the marker existed)
/// a train run's `config.toml` beside its metrics or checkpoints.
pub fn is_kiln_output(dir: &Path) -> bool {
    dir.join(MARKER).is_file()
        || (dir.join("config.toml").is_file()
            && (dir.join("metrics.jsonl").is_file() || dir.join("checkpoints").is_dir()))
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).map(|mut r| r.next().is_none()).unwrap_or(false)
}

/// Writes kiln's marker into `dir`: the command, kiln's version and the time.
pub fn write_marker(dir: &Path, command: &str) -> Result<()> {
    let text = serde_json::json!({
        "command": command,
        "version": env!("CARGO_PKG_VERSION"),
        "time": utc_now(),
        "note": "written by kiln: `--overwrite` may replace this folder",
    });
    crate::formats::write_atomic(&dir.join(MARKER), format!("{text:#}\n").as_bytes())
}

/// A file output (`export --format gguf`, `eval --predictions-out`): refused when it is a folder
/// (always) or an existing file (unless `overwrite`); the writer replaces it atomically.
pub fn check_file(out: &Path, overwrite: bool, inputs: &Inputs) -> Result<()> {
    check_not_precious(out, inputs)?;
    sweep_beside(out);
    match std::fs::metadata(out) {
        Ok(m) if m.is_dir() => Err(refuse(
            out,
            "is a folder; this output is a file: name a file path (kiln never replaces a folder with a file)",
        )),
        Ok(_) if !overwrite => Err(refuse(
            out,
            "exists; pass --overwrite to replace it (it is replaced only once the new file is complete)",
        )),
        _ => Ok(()),
    }
}

/// What an existing output folder is.
fn check_folder(out: &Path, overwrite: bool) -> Result<bool> {
    match std::fs::metadata(out) {
        Err(_) => Ok(false),
        Ok(m) if !m.is_dir() => Err(refuse(out, "exists and is a file; this output is a folder: name a new folder")),
        Ok(_) if is_empty_dir(out) => Ok(false),
        Ok(_) if !is_kiln_output(out) => Err(refuse(
            out,
            format!(
                "is not empty and was not written by kiln (no {MARKER}); kiln replaces only its own outputs, even with --overwrite: remove it yourself or choose another --out"
            ),
        )),
        Ok(_) if !overwrite => Err(refuse(
            out,
            "holds an earlier kiln output; pass --overwrite to replace it (the old one is deleted only once the new one is complete)",
        )),
        Ok(_) => Ok(true),
    }
}

/// A folder output built under a temporary name beside it and renamed into place when complete
/// (`export --format merged`, `kernels build`); dropped uncommitted, the temporary is removed.
pub struct StagedDir {
    out: PathBuf,
    tmp: PathBuf,
    command: String,
    done: bool,
}

impl StagedDir {
    /// Checks `out` (see the module rules) and creates the temporary folder beside it.
    pub fn begin(out: &Path, command: &str, overwrite: bool, inputs: &Inputs) -> Result<StagedDir> {
        check_not_precious(out, inputs)?;
        sweep_beside(out);
        check_folder(out, overwrite)?;
        let tmp = beside(out, "tmp");
        if let Some(parent) = tmp.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| KilnError::io(parent, e))?;
        }
        let _ = std::fs::remove_dir_all(&tmp);
        {
            // Made and registered in one step: a signal finds it or finds nothing.
            let mut held = CLEANUP.lock();
            std::fs::create_dir(&tmp).map_err(|e| KilnError::io(&tmp, e))?;
            if let Ok(list) = held.as_mut() {
                list.push(Cleanup::Remove(tmp.clone()));
            }
        }
        Ok(StagedDir { out: out.to_path_buf(), tmp, command: command.into(), done: false })
    }

    /// Where to write the output's files.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Marks the output and moves it into place; an old output is moved aside first and
    /// deleted after, so an interruption leaves the old or the new one whole.
    pub fn commit(mut self) -> Result<()> {
        write_marker(&self.tmp, &self.command)?;
        // The state may have changed while the output was written: checked again.
        let replace = check_folder(&self.out, true)?;
        let aside = beside(&self.out, "old");
        {
            // A signal waits for the renames, so it finds either the temporary or the result.
            let mut hold = CLEANUP.lock();
            if replace {
                std::fs::rename(&self.out, &aside).map_err(|e| KilnError::io(&self.out, e))?;
            } else if self.out.is_dir() {
                std::fs::remove_dir(&self.out).map_err(|e| KilnError::io(&self.out, e))?;
            }
            if let Err(e) = std::fs::rename(&self.tmp, &self.out) {
                if replace {
                    let _ = std::fs::rename(&aside, &self.out);
                }
                return Err(KilnError::io(&self.out, e));
            }
            self.done = true;
            // From here a signal has only the old output to delete.
            if let Ok(list) = hold.as_mut() {
                list.retain(|c| !matches!(c, Cleanup::Remove(p) if *p == self.tmp));
                if replace {
                    list.push(Cleanup::Remove(aside.clone()));
                }
            }
        }
        if replace {
            std::fs::remove_dir_all(&aside).map_err(|e| KilnError::io(&aside, e))?;
            forget_signal(&aside);
        }
        Ok(())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
            forget_signal(&self.tmp);
        }
    }
}

/// How a run folder is claimed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RunMode {
    /// A new run: refused where an earlier run left results.
    Fresh,
    /// `--resume`: continues the run in the folder.
    Resume,
    /// `--overwrite`: replaces an earlier kiln run.
    Overwrite,
}

/// A folder a run writes into for its whole length (`train`, `demo`): checked, marked, locked.
/// Dropped without [`RunDir::finish`] (an error), the lock is released and a folder replaced
/// with `--overwrite` comes back in place of the failed run.
pub struct RunDir {
    out: PathBuf,
    lock: Option<PathBuf>,
    aside: Option<PathBuf>,
    /// The folder did not exist (or was empty) before this run.
    created: bool,
    /// The outermost folder this run created (`out` or one of its parents), removed again
    /// when a failed run leaves nothing in it.
    topmost_new: Option<PathBuf>,
    /// Lines for the user (a stale lock taken over, leftovers swept, a fresh start).
    pub notes: Vec<String>,
}

/// Whether the run folder holds results a fresh run would destroy, and which.
fn run_results(out: &Path) -> Option<String> {
    let cks = crate::train::checkpoint::list(out);
    if let Some((step, _)) = cks.last() {
        return Some(format!("{} checkpoint(s), the newest at step {step}", cks.len()));
    }
    ["adapter", "model", "loss.svg", "demo.json"]
        .iter()
        .find(|f| out.join(f).exists())
        .map(|f| format!("a finished run ({f})"))
}

impl RunDir {
    /// Claims `out` for a run of `command`.
    pub fn claim(out: &Path, command: &str, mode: RunMode, inputs: &Inputs) -> Result<RunDir> {
        check_not_precious(out, inputs)?;
        sweep_beside(out);
        let mut notes = Vec::new();
        let existing = check_folder(out, true)?;
        let mut aside = None;
        if existing {
            // The lock first: a live run's folder is neither resumed nor moved.
            let old_lock = acquire_lock(out, &mut notes)?;
            match (mode, run_results(out)) {
                (RunMode::Overwrite, _) => {
                    let a = beside(out, "old");
                    let mut hold = CLEANUP.lock();
                    std::fs::rename(out, &a).map_err(|e| KilnError::io(out, e))?;
                    // Registered under the same lock as the rename: a signal puts it back.
                    if let Ok(list) = hold.as_mut() {
                        list.push(Cleanup::Restore { aside: a.clone(), out: out.to_path_buf() });
                    }
                    let _ = std::fs::remove_file(a.join(LOCK));
                    notes.push(format!(
                        "replacing the earlier run in {} (deleted once this run completes)",
                        out.display()
                    ));
                    aside = Some(a);
                }
                (RunMode::Fresh, Some(what)) => {
                    let _ = std::fs::remove_file(&old_lock);
                    // Only `train` can continue a run; `demo` starts over or goes elsewhere.
                    let resume = if command.contains("train") { "continue it with --resume, " } else { "" };
                    return Err(refuse(
                        out,
                        format!(
                            "holds an earlier run ({what}): {resume}replace it with --overwrite, or choose another --out"
                        ),
                    ));
                }
                (RunMode::Fresh, None) => notes
                    .push(format!("starting afresh in {} (the earlier run there left no checkpoint)", out.display())),
                (RunMode::Resume, _) => {}
            }
        }
        let created = !existing && (!out.exists() || is_empty_dir(out));
        let topmost_new =
            out.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).last().map(Path::to_path_buf);
        // Built first, so an error from here on puts a replaced run back (Drop).
        let mut dir = RunDir { out: out.to_path_buf(), lock: None, aside, created, topmost_new, notes };
        std::fs::create_dir_all(out).map_err(|e| KilnError::io(out, e))?;
        dir.lock = Some(acquire_lock(out, &mut dir.notes)?);
        if !out.join(MARKER).is_file() {
            write_marker(out, command)?;
        }
        let swept = sweep_inside(out);
        if swept > 0 {
            dir.notes.push(format!("removed {swept} temporary file(s) of dead kiln processes in {}", out.display()));
        }
        Ok(dir)
    }

    /// For commands with nothing worth keeping midway ([`remove_on_signals`]): a signal removes
    /// the folder when this run created it, or puts back the run it replaces.
    pub fn remove_on_signal(&self) {
        if self.created {
            on_signal(Cleanup::Remove(self.out.clone()));
        }
    }

    /// The run completed: the replaced run (if any) is deleted and the lock released.
    pub fn finish(mut self) -> Result<()> {
        self.release();
        self.created = false;
        forget_signal(&self.out);
        if let Some(a) = self.aside.take() {
            forget_signal(&a);
            std::fs::remove_dir_all(&a).map_err(|e| KilnError::io(&a, e))?;
        }
        Ok(())
    }

    /// The run stopped on a signal after saving a checkpoint: the run is the one to resume, so
    /// a replaced run is deleted, and the lock released.
    pub fn interrupted(self) -> Result<()> {
        self.finish()
    }

    fn release(&mut self) {
        if let Some(l) = self.lock.take() {
            // Only a lock still ours is removed (a takeover may have replaced it).
            if read_lock(&l).is_some_and(|i| i.is_me()) {
                let _ = std::fs::remove_file(&l);
            }
        }
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        self.release();
        if self.created {
            // A folder this failed run created and left with nothing but the marker goes too.
            forget_signal(&self.out);
            let only_marker =
                std::fs::read_dir(&self.out).map(|r| r.flatten().all(|e| e.file_name() == MARKER)).unwrap_or(false);
            if only_marker {
                let _ = std::fs::remove_file(self.out.join(MARKER));
                let _ = std::fs::remove_dir(&self.out);
                // And the parents this run created, as far as they are empty.
                if let Some(top) = &self.topmost_new {
                    for a in self.out.ancestors().skip(1).take_while(|a| a.starts_with(top)) {
                        if std::fs::remove_dir(a).is_err() {
                            break;
                        }
                    }
                }
            }
        }
        if let Some(a) = self.aside.take() {
            forget_signal(&a);
            let _ = std::fs::remove_dir_all(&self.out);
            let _ = std::fs::rename(&a, &self.out);
        }
    }
}

/// Claims a `train --out` folder: `inputs` (model, data, eval data) are what it must not hold;
/// `--resume` and `--overwrite` pick the mode. Notes are printed as they come.
pub fn claim_train(out: &Path, inputs: &Inputs, resume: bool, overwrite: bool) -> Result<RunDir> {
    let mode = match (resume, overwrite) {
        (true, true) => {
            return Err(refuse(out, "--resume continues the run here and --overwrite replaces it: choose one"));
        }
        (true, false) => RunMode::Resume,
        (false, true) => RunMode::Overwrite,
        (false, false) => RunMode::Fresh,
    };
    let dir = RunDir::claim(out, "kiln train", mode, inputs)?;
    for n in &dir.notes {
        eprintln!("note: {n}");
    }
    Ok(dir)
}

/// Removes a file or a folder with its contents; whether it went.
fn remove_any(p: &Path) -> bool {
    if p.is_dir() { std::fs::remove_dir_all(p).is_ok() } else { std::fs::remove_file(p).is_ok() }
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder for one test (also used by the tests of `process`).
    pub(super) fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-outdir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn resolve_handles_dots_and_missing_tails() {
        let d = tmp("resolve");
        let canon = d.canonicalize().unwrap();
        assert_eq!(resolve(&d.join("a/../b/./c")).unwrap(), canon.join("b/c"));
        assert_eq!(resolve(&d.join(".")).unwrap(), canon);
        assert_eq!(resolve(&d.join("x/..")).unwrap(), canon);
    }

    #[test]
    fn inputs_and_their_folders_are_refused() {
        let d = tmp("inputs");
        let model = d.join("m/model.gguf");
        std::fs::create_dir_all(model.parent().unwrap()).unwrap();
        std::fs::write(&model, b"x").unwrap();
        let inputs = Inputs::default().with(&model);
        for bad in [d.join("m"), d.clone(), model.clone(), d.join("m/sub/..")] {
            let e = check_not_precious(&bad, &inputs).unwrap_err().to_string();
            assert!(e.contains("never writes over it") && e.contains(&bad.display().to_string()), "{e}");
        }
        check_not_precious(&d.join("m/export"), &inputs).unwrap();
        assert!(check_not_precious(Path::new("/"), &Inputs::default()).is_err());
    }

    #[test]
    fn utc_time_format() {
        let t = utc_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
