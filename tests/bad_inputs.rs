//! The bad-input catalogue (tests/bad_inputs/catalogue.json): every broken file goes through
//! the CLI command that would meet it. Each must exit non-zero with an error naming the file and
//! what is wrong, print no panic, and leave no half-written output behind.

use std::path::{Path, PathBuf};
use std::process::Command;

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
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("catalogue.json")).unwrap()).unwrap();
    let cases = cases.as_array().unwrap();
    let mut listed = std::collections::HashSet::new();
    for (i, c) in cases.iter().enumerate() {
        let file = c["file"].as_str().unwrap();
        listed.insert(file.to_string());
        let path = root.join(file);
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
        let o = Command::new(env!("CARGO_BIN_EXE_kiln")).args(&args).env("KILN_MODELS", &work).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        let what = format!("case {i} ({file}: kiln {})", args.join(" "));
        assert!(!o.status.success(), "{what}: exited 0\n{err}");
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
        let helper = n == "catalogue.json" || n == "two-lines.txt" || n.ends_with(".md");
        assert!(helper || listed.contains(&n), "tests/bad_inputs/{n} is in no catalogue entry");
    }
}
