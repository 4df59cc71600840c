//! The bad-input catalogue (tests/bad_inputs/catalogue*.json): every broken file goes through
//! the CLI command that would meet it. Each must exit non-zero with an error naming the file and
//! what is wrong, print no panic, stay inside an address-space limit (`mem_mb`, default 4096:
//! a tiny hostile file must not make kiln allocate gigabytes) and a wall-clock limit
//! (`timeout_s`, default 60), and leave no half-written output behind.
//!
//! An entry: `{"file": NAME or an absolute path such as /dev/zero, "cmd": [...], "expect": [...],
//! "mem_mb": N, "timeout_s": N}`; `{file}`, `{model}`, `{out}` and `{dir}` are substituted.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

/// Files under `dir` (recursively) whose names mark them as temporary or partial.
fn partial_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(partial_files(&p));
        } else if p.file_name().is_some_and(|n| n.to_string_lossy().contains(".tmp")) {
            out.push(p);
        }
    }
    out
}

#[test]
fn every_bad_input_fails_cleanly() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/bad_inputs");
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bad-inputs");
    let _ = std::fs::remove_dir_all(&work);
    let model = common::tiny_model(&work, 1);
    let mut cases = Vec::new();
    let mut catalogues: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("catalogue")))
        .collect();
    catalogues.sort();
    for cat in &catalogues {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(cat).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", cat.display()));
        cases.extend(v.as_array().unwrap().iter().cloned());
    }
    let mut listed = std::collections::HashSet::new();
    for (i, c) in cases.iter().enumerate() {
        let file = c["file"].as_str().unwrap();
        listed.insert(file.to_string());
        let path = if file.starts_with('/') { PathBuf::from(file) } else { root.join(file) };
        assert!(path.exists(), "catalogue entry {i}: {file} is missing");
        let out = work.join(format!("out-{i}"));
        let args: Vec<String> = c["cmd"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                a.as_str()
                    .unwrap()
                    .replace("{file}", &path.display().to_string())
                    .replace("{model}", &model.display().to_string())
                    .replace("{out}", &out.display().to_string())
                    .replace("{dir}", &root.display().to_string())
            })
            .collect();
        let mem_mb = c["mem_mb"].as_u64().unwrap_or(4096);
        let timeout = Duration::from_secs(c["timeout_s"].as_u64().unwrap_or(60));
        let o = run_limited(&args, &work, mem_mb, timeout);
        let err = String::from_utf8_lossy(&o.stderr);
        let what = format!("case {i} ({file}: kiln {})", args.join(" "));
        assert!(!o.status.success(), "{what}: exited 0\n{err}");
        assert!(o.status.code().is_some(), "{what}: killed by a signal ({:?})\n{err}", o.status);
        assert!(!err.contains("memory allocation of"), "{what}: ran out of its {mem_mb} MiB address space\n{err}");
        assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{what}: panicked\n{err}");
        let name = Path::new(file).file_name().unwrap().to_string_lossy();
        assert!(err.contains(name.as_ref()), "{what}: the error should name {name}\n{err}");
        for e in c["expect"].as_array().unwrap() {
            assert!(err.contains(e.as_str().unwrap()), "{what}: expected `{e}` in\n{err}");
        }
        assert!(partial_files(&out).is_empty(), "{what}: partial files left: {:?}", partial_files(&out));
        assert!(partial_files(&root).is_empty(), "{what}: partial files in the catalogue");
    }
    // Every file of the catalogue is exercised.
    for e in std::fs::read_dir(&root).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let helper = n.starts_with("catalogue") || n == "two-lines.txt" || n.ends_with(".md");
        assert!(helper || listed.contains(&n), "tests/bad_inputs/{n} is in no catalogue entry");
    }
}

/// Runs kiln with `args` under an address-space limit of `mem_mb` MiB (`ulimit -v`) and kills it
/// after `timeout`: a case that allocates without bound fails its allocation instead of taking
/// the machine, and one that runs without bound fails the test.
fn run_limited(args: &[String], work: &Path, mem_mb: u64, timeout: Duration) -> std::process::Output {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {}; exec \"$0\" \"$@\"", mem_mb * 1024))
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_MODELS", work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain both pipes on threads so a chatty child never blocks on a full pipe.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let ho = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut so, &mut b).ok();
        b
    });
    let he = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut se, &mut b).ok();
        b
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kiln {} ran past {timeout:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output { status, stdout: ho.join().unwrap(), stderr: he.join().unwrap() }
}
