//! Outputs are owned and never destroyed: every subcommand that writes (`train`, `export`
//! merged / gguf / gguf-lora, `demo`, `kernels build`, `eval --predictions-out`), run through
//! the binary with `--out .` and `..` (the current folder full of the user's files), an existing
//! folder kiln did not write, an existing file and a folder holding the model: each is refused
//! naming the path, with nothing touched and no temporaries left, `--overwrite` or not. And the
//! cases that must work: a kiln output replaced with `--overwrite` (the old one intact until the
//! new one is complete), a finished run resumed or replaced, a stale lock taken over, leftovers
//! of dead processes swept.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

mod common;

/// A pid no process has: above the kernel's largest (4194304).
const DEAD_PID: u32 = 4_194_999;

struct Fixture {
    dir: PathBuf,
    model: PathBuf,
    data: PathBuf,
    adapter: PathBuf,
}

/// The tiny model, its data and an adapter trained once for all tests.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("outputs");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let model = common::tiny_model(&dir, 7);
        let data = dir.join("data.jsonl");
        let rows: String = (0..16)
            .map(|i| {
                format!(
                    "{}\n",
                    serde_json::json!({"prompt": format!("item {i}?"), "completion": format!("blue {}", i % 3)})
                )
            })
            .collect();
        std::fs::write(&data, rows).unwrap();
        let run = dir.join("run");
        ok(&kiln(&dir, &train_args(&model, &data, &run, &[])));
        Fixture { adapter: run.join("adapter"), dir, model, data }
    })
}

/// A fresh folder for one test.
fn scratch(name: &str) -> PathBuf {
    let d = fixture().dir.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn kiln(cwd: &Path, args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).current_dir(cwd).args(args).output().unwrap()
}

fn s(p: impl AsRef<Path>) -> String {
    p.as_ref().display().to_string()
}

fn strs(a: &[&str]) -> Vec<String> {
    a.iter().map(|x| x.to_string()).collect()
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{}\n{err}", String::from_utf8_lossy(&o.stdout));
    err
}

/// The command failed cleanly, its message naming `path`.
fn refused(o: &Output, path: &str, what: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{what}: accepted\n{err}");
    assert_eq!(o.status.code(), Some(1), "{what}: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert!(err.contains(path), "{what}: the error does not name {path}: {err}");
    err
}

fn train_args(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = strs(&["train", "--batch-size", "4", "--eval-split", "0", "--lora-r", "4"]);
    if !extra.contains(&"--max-steps") {
        a.extend(strs(&["--max-steps", "2"]));
    }
    a.extend([
        "--backend".into(),
        "cpu".into(),
        "--max-seq-len".into(),
        "256".into(),
        "--model".into(),
        s(model),
        "--data".into(),
        s(data),
    ]);
    a.extend(["--out".into(), s(out)]);
    a.extend(strs(extra));
    a
}

/// Every subcommand that writes, as (name, args before `--out`-ish, whether the output is a file).
fn commands(out: &str) -> Vec<(&'static str, Vec<String>, bool)> {
    let f = fixture();
    let m = s(&f.model);
    vec![
        ("train", train_args(&f.model, &f.data, Path::new(out), &[]), false),
        ("export merged", vec!["export".into(), "--model".into(), m.clone(), "--out".into(), out.into()], false),
        ("export gguf", strs(&["export", "--format", "gguf", "--quant", "f16", "--model", &m, "--out", out]), true),
        (
            "export gguf-lora",
            strs(&["export", "--format", "gguf-lora", "--model", &m, "--adapter", &s(&f.adapter), "--out", out]),
            true,
        ),
        ("demo", strs(&["demo", "--tiny", "--steps", "2", "--seq-len", "16", "--eval-rows", "2", "--out", out]), false),
        ("kernels build", strs(&["kernels", "build", "--arch", "sm_80", "--out", out]), false),
        (
            "eval --predictions-out",
            strs(&[
                "eval",
                "--model",
                &m,
                "--data",
                &s(&f.data),
                "--metrics",
                "accuracy",
                "--eval-samples",
                "2",
                "--max-new-tokens",
                "2",
                "--predictions-out",
                out,
            ]),
            true,
        ),
    ]
}

fn sentinels(dir: &Path) {
    std::fs::create_dir_all(dir.join("notes")).unwrap();
    std::fs::write(dir.join("thesis.txt"), "years of work").unwrap();
    std::fs::write(dir.join("notes/todo.md"), "- keep this").unwrap();
}

/// The sentinels are intact and nothing else appeared (no temporaries, no marker).
fn intact(dir: &Path, what: &str) {
    assert_eq!(std::fs::read_to_string(dir.join("thesis.txt")).ok().as_deref(), Some("years of work"), "{what}");
    assert_eq!(std::fs::read_to_string(dir.join("notes/todo.md")).ok().as_deref(), Some("- keep this"), "{what}");
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["notes", "thesis.txt"], "{what}: {dir:?} changed");
}

/// No `*.tmp-*` / `*.old-*` left in `dir`.
fn no_temporaries(dir: &Path, what: &str) {
    for e in std::fs::read_dir(dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.contains(".tmp") && !n.contains(".old-"), "{what}: left {n} in {dir:?}");
    }
}

#[test]
fn out_dot_dotdot_and_the_current_folder_are_refused_by_every_command() {
    let d = scratch("dot");
    let cwd = d.join("work");
    sentinels(&cwd);
    std::fs::create_dir_all(cwd.join("sub")).unwrap();
    let canon = s(cwd.canonicalize().unwrap());
    for out in [".", "./", "..", "sub/.."] {
        for (name, args, _) in commands(out) {
            for overwrite in [false, true] {
                let mut args = args.clone();
                if overwrite {
                    args.push("--overwrite".into());
                }
                let what = format!("{name} --out {out} (overwrite {overwrite})");
                let err = refused(&kiln(&cwd, &args), out, &what);
                assert!(err.contains("current directory"), "{what}: {err}");
                assert!(out == ".." || err.contains(&canon), "{what}: names the folder itself: {err}");
            }
        }
    }
    std::fs::remove_dir_all(cwd.join("sub")).unwrap();
    intact(&cwd, "after every --out . / ..");
    no_temporaries(&d, "beside the current folder");
}

#[test]
fn an_existing_folder_kiln_did_not_write_is_never_replaced() {
    let d = scratch("foreign");
    let victim = d.join("victim");
    sentinels(&victim);
    for (name, mut args, file) in commands(&s(&victim)) {
        for overwrite in [false, true] {
            if overwrite {
                args.push("--overwrite".into());
            }
            let what = format!("{name} into a foreign folder (overwrite {overwrite})");
            let err = refused(&kiln(&d, &args), &s(&victim), &what);
            let why = if file { "is a folder" } else { "not written by kiln" };
            assert!(err.contains(why), "{what}: {err}");
            intact(&victim, &what);
            no_temporaries(&d, &what);
        }
    }
}

#[test]
fn an_existing_file_is_refused_or_replaced_whole_with_overwrite() {
    let d = scratch("file");
    let f = d.join("precious.bin");
    for (name, args, file) in commands(&s(&f)) {
        std::fs::write(&f, "keep me").unwrap();
        let what = format!("{name} onto an existing file");
        let err = refused(&kiln(&d, &args), &s(&f), &what);
        assert!(err.contains(if file { "--overwrite" } else { "is a file" }), "{what}: {err}");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "keep me", "{what}");
        no_temporaries(&d, &what);
        let mut args = args;
        args.push("--overwrite".into());
        let o = kiln(&d, &args);
        if file {
            // Replaced by a complete output.
            ok(&o);
            let bytes = std::fs::read(&f).unwrap();
            assert!(bytes.starts_with(b"GGUF") || bytes.starts_with(b"{\""), "{what}: {:?}", &bytes[..8]);
        } else {
            refused(&o, &s(&f), &format!("{what} --overwrite"));
            assert_eq!(std::fs::read_to_string(&f).unwrap(), "keep me", "{what} --overwrite");
        }
        no_temporaries(&d, &what);
    }
}

#[test]
fn a_folder_holding_an_input_is_refused_even_with_overwrite() {
    let f = fixture();
    let d = scratch("inputs");
    // The model folder itself, the folder holding it, and the model folder marked as a kiln output.
    let model = d.join("model");
    common::tiny_model(&d, 7);
    let data = d.join("data.jsonl");
    std::fs::copy(&f.data, &data).unwrap();
    let m = s(&model);
    for out in [model.clone(), d.clone()] {
        let o = s(&out);
        let cases: Vec<(&str, Vec<String>)> = vec![
            ("train", train_args(&model, &data, &out, &["--overwrite"])),
            ("export merged", strs(&["export", "--model", &m, "--out", &o, "--overwrite"])),
            ("export gguf", strs(&["export", "--format", "gguf", "--model", &m, "--out", &o, "--overwrite"])),
        ];
        std::fs::write(model.join(".kiln-output"), "{}").unwrap();
        for (name, args) in cases {
            let what = format!("{name} --out {o}");
            let err = refused(&kiln(&f.dir, &args), &o, &what);
            assert!(err.contains("input") || err.contains("is a folder"), "{what}: {err}");
            assert!(model.join("model.safetensors").is_file() && data.is_file(), "{what}: the model is gone");
        }
        std::fs::remove_file(model.join(".kiln-output")).unwrap();
    }
    // The data file as the predictions file.
    let args = strs(&["eval", "--model", &m, "--data", &s(&data), "--predictions-out", &s(&data), "--overwrite"]);
    let err = refused(&kiln(&f.dir, &args), &s(&data), "eval onto its own data");
    assert!(err.contains("an input"), "{err}");
}

#[test]
fn a_kiln_output_is_replaced_with_overwrite_only_once_the_new_one_is_complete() {
    let f = fixture();
    let d = scratch("replace");
    let out = d.join("merged");
    let m = s(&f.model);
    let export = |extra: &[&str]| {
        let mut a = strs(&["export", "--model", &m, "--out", &s(&out)]);
        a.extend(strs(extra));
        kiln(&d, &a)
    };
    ok(&export(&[]));
    assert!(out.join(".kiln-output").is_file() && out.join("model.safetensors").is_file());
    let marker = std::fs::read_to_string(out.join(".kiln-output")).unwrap();
    assert!(marker.contains("kiln export") && marker.contains(env!("CARGO_PKG_VERSION")), "{marker}");
    std::fs::write(out.join("old.txt"), "from the first export").unwrap();
    // Without --overwrite: refused, intact.
    let err = refused(&export(&[]), &s(&out), "a second export");
    assert!(err.contains("--overwrite"), "{err}");
    assert!(out.join("old.txt").is_file());
    // A replacement that fails after it started (the adapter does not load): the old output stays.
    let bad = d.join("bad-adapter");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("adapter_config.json"), "{ not json").unwrap();
    let o = export(&["--overwrite", "--adapter", &s(&bad)]);
    refused(&o, "adapter_config.json", "a failing replacement");
    assert!(out.join("old.txt").is_file() && out.join("model.safetensors").is_file(), "the old output was lost");
    no_temporaries(&d, "after a failed replacement");
    // With --overwrite: the new output in place, the old one gone.
    ok(&export(&["--overwrite", "--dtype", "bf16"]));
    assert!(
        !out.join("old.txt").exists() && out.join("model.safetensors").is_file() && out.join(".kiln-output").is_file()
    );
    no_temporaries(&d, "after the replacement");
    // Leftovers of killed exports beside it are swept; a live process's are kept.
    std::fs::create_dir_all(d.join(format!(".merged.tmp-{DEAD_PID}/x"))).unwrap();
    std::fs::create_dir_all(d.join(format!("merged.tmp-{DEAD_PID}"))).unwrap();
    std::fs::write(d.join(format!("merged.tmp-{DEAD_PID}/config.json")), "{}").unwrap();
    std::fs::create_dir_all(d.join(".merged.tmp-1")).unwrap();
    ok(&export(&["--overwrite"]));
    assert!(!d.join(format!(".merged.tmp-{DEAD_PID}")).exists() && !d.join(format!("merged.tmp-{DEAD_PID}")).exists());
    assert!(d.join(".merged.tmp-1").exists(), "pid 1 is alive: its temporary is not ours to delete");
}

#[test]
fn a_second_train_on_a_finished_run_is_refused_unless_resume_or_overwrite() {
    let f = fixture();
    let d = scratch("second");
    let out = d.join("run");
    ok(&kiln(&d, &train_args(&f.model, &f.data, &out, &["--save-steps", "1", "--max-steps", "4"])));
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let err =
        refused(&kiln(&d, &train_args(&f.model, &f.data, &out, &["--max-steps", "4"])), &s(&out), "a second fresh run");
    assert!(err.contains("--resume") && err.contains("--overwrite") && err.contains("checkpoint"), "{err}");
    assert_eq!(std::fs::read_to_string(out.join("metrics.jsonl")).unwrap(), metrics, "the refused run touched metrics");
    assert!(!out.join(".kiln-lock").exists(), "a refused run leaves no lock");
    // --resume continues it (here from its last checkpoint: nothing left to do).
    ok(&kiln(&d, &train_args(&f.model, &f.data, &out, &["--resume", "--max-steps", "4"])));
    let steps: Vec<u64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3, 4]);
    assert_eq!(kiln::train::checkpoint::list(&out).len(), 4);
    // --overwrite replaces it: old checkpoints gone, not mixed with the new ones.
    std::fs::write(out.join("old.txt"), "x").unwrap();
    ok(&kiln(&d, &train_args(&f.model, &f.data, &out, &["--overwrite"])));
    assert!(!out.join("old.txt").exists());
    let cks: Vec<usize> = kiln::train::checkpoint::list(&out).into_iter().map(|c| c.0).collect();
    assert_eq!(cks, [2], "only the new run's checkpoint");
    no_temporaries(&d, "after the replaced run");
    assert!(!out.join(".kiln-lock").exists(), "the lock is released at the end");
    // Both at once make no sense.
    let o = kiln(&d, &train_args(&f.model, &f.data, &out, &["--resume", "--overwrite"]));
    assert!(!o.status.success());
}

fn stat_start(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat[stat.rfind(')').unwrap() + 1..].split_whitespace().nth(19).unwrap().to_string()
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string()
}

#[test]
fn a_live_lock_refuses_a_stale_one_is_taken_over() {
    let f = fixture();
    let d = scratch("lock");
    let out = d.join("run");
    ok(&kiln(&d, &train_args(&f.model, &f.data, &out, &[])));
    let lock = out.join(".kiln-lock");
    let me = std::process::id();
    // This test process stands for a live run.
    let live = format!(r#"{{"host": "{}", "pid": {me}, "start": {}, "since": "earlier"}}"#, host(), stat_start(me));
    std::fs::write(&lock, &live).unwrap();
    let err = refused(
        &kiln(&d, &train_args(&f.model, &f.data, &out, &["--resume", "--max-steps", "3"])),
        &s(&out),
        "a live lock",
    );
    assert!(err.contains(&format!("in use by kiln process {me}")), "{err}");
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), live, "the live lock was touched");
    // The same pid with another start time (reused) and a dead pid: stale, taken over.
    for (pid, start) in [(me, "1".to_string()), (DEAD_PID, "5".to_string())] {
        let stale = format!(r#"{{"host": "{}", "pid": {pid}, "start": {start}, "since": "earlier"}}"#, host());
        std::fs::write(&lock, stale).unwrap();
        let err = ok(&kiln(&d, &train_args(&f.model, &f.data, &out, &["--overwrite"])));
        assert!(err.contains("stale lock") && err.contains(&pid.to_string()), "{err}");
        assert!(!lock.exists());
    }
    // Another host's lock: refused, saying how to clear it.
    std::fs::write(&lock, format!(r#"{{"host": "other-node", "pid": {DEAD_PID}, "start": 5, "since": "earlier"}}"#))
        .unwrap();
    let err =
        refused(&kiln(&d, &train_args(&f.model, &f.data, &out, &["--overwrite"])), "other-node", "a foreign lock");
    assert!(err.contains(&DEAD_PID.to_string()) && err.contains("delete"), "{err}");
}

#[test]
fn an_export_stopped_by_a_signal_at_any_moment_leaves_the_old_output_or_the_new_one_whole() {
    let f = fixture();
    let d = scratch("signal");
    let (merged, gguf) = (d.join("merged"), d.join("model.gguf"));
    let m = s(&f.model);
    let merged_args = strs(&["export", "--overwrite", "--model", &m, "--out", &s(&merged)]);
    let gguf_args =
        strs(&["export", "--overwrite", "--format", "gguf", "--quant", "f16", "--model", &m, "--out", &s(&gguf)]);
    ok(&kiln(&d, &merged_args));
    ok(&kiln(&d, &gguf_args));
    let gguf_bytes = std::fs::read(&gguf).unwrap();
    let mut rng = kiln::core::rng::Rng::new(5);
    let mut stopped = 0;
    for i in 0..12 {
        let (args, sig) = (if i % 2 == 0 { &merged_args } else { &gguf_args }, ["TERM", "HUP", "INT"][i % 3]);
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .current_dir(&d)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(rng.below(120) as u64));
        Command::new("kill").args([&format!("-{sig}"), &child.id().to_string()]).status().unwrap();
        let st = child.wait().unwrap();
        // Done, stopped by its handler (128+n), or killed before the handler was installed.
        let code = st.code();
        assert!(code.is_none() || [Some(0), Some(129), Some(130), Some(143)].contains(&code), "{sig}: {st:?}");
        stopped += usize::from(code.is_some_and(|c| c > 128));
        // Whatever the moment: the output is whole, and nothing temporary is left.
        assert!(merged.join(".kiln-output").is_file() && merged.join("model.safetensors").is_file(), "{i}: {sig}");
        assert_eq!(std::fs::read(&gguf).unwrap(), gguf_bytes, "{i}: {sig}");
        no_temporaries(&d, &format!("export {i} stopped by SIG{sig}"));
    }
    eprintln!("{stopped} of 12 exports stopped by their signal handler");
}

#[test]
fn a_failed_or_dry_run_leaves_no_folder_it_created() {
    let f = fixture();
    let d = scratch("failed");
    let out = d.join("new/parent/run");
    let bad = d.join("bad.jsonl");
    std::fs::write(&bad, "not json\n").unwrap();
    refused(&kiln(&d, &train_args(&f.model, &bad, &out, &[])), "bad.jsonl", "bad data");
    assert!(!d.join("new").exists(), "the failed run left {:?}", d.join("new"));
    ok(&kiln(&d, &train_args(&f.model, &f.data, &out, &["--dry-run"])));
    assert!(!d.join("new").exists(), "the dry run left {:?}", d.join("new"));
}
