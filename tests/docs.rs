//! The README and `docs/` stay true. Every `kiln …` command in their fenced shell blocks (also
//! written `cargo run --release [-p kiln] -- …` or `target/release/kiln …`) is run with its
//! arguments and `--help` appended: clap checks every flag name and parses every value before
//! it prints help, so a renamed flag, a dropped subcommand or a value of the wrong type fails
//! here, naming the file, the line and the command; a command with flags must also give the
//! flags its `Usage:` line marks required. `--help` rather than `--dry-run`: it needs no
//! model, no data file and no network, so every command of the docs is checked in a second.
//! (The reading of commands is shared with `tests/results.rs`, in `tests/common/shell.rs`.)
//! The scripts the blocks run must exist and read their arguments: `bash -n` reads a
//! `bash tools/….sh`, and a `python3 tools/….py` parses its arguments with its own argparse
//! (without torch or the other heavy packages, as in CI). Every relative link (and its
//! `#anchor`) must point to a file (and a heading) that exists.

use std::path::{Path, PathBuf};

#[path = "common/shell.rs"]
mod shell;
use shell::{Check, check_bash, check_python, classify, kiln_parses, root, shell_commands, simple_commands};

/// README.md and every `docs/*.md`, as (path relative to the root, text).
fn doc_files() -> Vec<(String, String)> {
    let root = root();
    let mut names = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    names.extend(docs);
    names
        .into_iter()
        .map(|n| {
            let text = std::fs::read_to_string(root.join(&n)).unwrap_or_else(|e| panic!("{n}: {e}"));
            (n, text)
        })
        .collect()
}

#[test]
fn shell_parsing_finds_the_kiln_invocations() {
    let w = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    assert_eq!(
        simple_commands("echo 'a b' | kiln chat --system \"be brief\" > out.txt 2>&1 # note"),
        vec![
            vec!["echo".to_string(), "a b".into()],
            vec!["kiln".into(), "chat".into(), "--system".into(), "be brief".into()]
        ]
    );
    assert_eq!(
        classify(&w("KILN_CUDA_GEMM=v4 kiln selftest --backend cuda")),
        Check::Kiln(w("selftest --backend cuda"))
    );
    assert_eq!(classify(&w("cargo run --release -p kiln -- demo")), Check::Kiln(w("demo")));
    assert_eq!(classify(&w("cargo run --release -- demo --tiny")), Check::Kiln(w("demo --tiny")));
    assert_eq!(classify(&w("target/release/kiln info")), Check::Kiln(w("info")));
    assert_eq!(classify(&w("bash tools/test.sh")), Check::Script("tools/test.sh".into()));
    assert_eq!(classify(&w("cargo test --workspace --locked")), Check::Other);
    assert_eq!(
        classify(&w("/usr/bin/time -f %e KILN_X=1 kiln info --json")),
        Check::Kiln(w("info --json")),
        "a timing wrapper and environment assignments are not the command"
    );
    assert_eq!(
        shell::required_flags("Usage: kiln score [OPTIONS] --predictions <P> --references <R>\n"),
        vec!["--predictions".to_string(), "--references".into()]
    );
    assert!(shell::required_flags("Usage: kiln train [OPTIONS] [--resume [<C>]]").is_empty());
    let md = "text\n```sh\n# a comment\nkiln train --data a.jsonl \\\n    --epochs 1\ncat > f <<'EOF'\nkiln not-a-command\nEOF\n```\n```json\nkiln x\n```\n";
    assert_eq!(
        shell_commands(md),
        vec![(4, "kiln train --data a.jsonl  --epochs 1".to_string()), (6, "cat > f <<'EOF'".to_string())]
    );
}

#[test]
fn every_documented_command_still_parses() {
    let root = root();
    let (mut checked, mut failures) = (0, Vec::new());
    for (file, text) in doc_files() {
        for (line, cmd) in shell_commands(&text) {
            for words in simple_commands(&cmd) {
                match classify(&words) {
                    Check::Kiln(args) => {
                        checked += 1;
                        if let Err(why) = kiln_parses(&args) {
                            failures.push(format!("{file}:{line}: `kiln {}`: {why}", args.join(" ")));
                        }
                    }
                    Check::Script(path) => {
                        let args = &words[words.iter().position(|w| *w == path).map_or(words.len(), |i| i + 1)..];
                        let parsed = if path.ends_with(".py") {
                            check_python(&path, args)
                        } else if path.ends_with(".sh") {
                            check_bash(&path)
                        } else if root.join(&path).is_file() {
                            Ok(())
                        } else {
                            Err(format!("{path} does not exist"))
                        };
                        if let Err(why) = parsed {
                            failures.push(format!("{file}:{line}: `{cmd}`: {why}"));
                        }
                    }
                    Check::Other => {}
                }
            }
        }
    }
    assert!(failures.is_empty(), "commands in the docs that no longer parse:\n{}", failures.join("\n"));
    // The collector itself must not silently find nothing (a changed fence style, say).
    assert!(checked >= 30, "only {checked} kiln commands found in README.md and docs/");
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a markdown file's headings (outside code blocks).
fn anchors(text: &str) -> Vec<String> {
    let mut in_code = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            in_code = !in_code;
        } else if !in_code && t.starts_with('#') {
            out.push(slug(t.trim_start_matches('#')));
        }
    }
    out
}

/// The inline link targets `[text](target)` of a markdown file outside code blocks and code
/// spans, with their lines.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut in_code = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        // Drop code spans, whose brackets are not links.
        let plain: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = plain.as_str();
        while let Some(p) = rest.find("](") {
            let after = &rest[p + 2..];
            let Some(end) = after.find(')') else { break };
            out.push((i + 1, after[..end].trim().to_string()));
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn every_relative_link_points_to_a_file_that_exists() {
    let root = root();
    let mut failures = Vec::new();
    let mut count = 0;
    for (file, text) in doc_files() {
        let dir = Path::new(&file).parent().unwrap_or(Path::new("")).to_path_buf();
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            count += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let resolved = if path.is_empty() { PathBuf::from(&file) } else { dir.join(path) };
            let full = root.join(&resolved);
            if !full.exists() {
                failures.push(format!("{file}:{line}: link {target}: {} does not exist", resolved.display()));
                continue;
            }
            if !anchor.is_empty() && full.extension().is_some_and(|e| e == "md") {
                let text = std::fs::read_to_string(&full).unwrap_or_default();
                if !anchors(&text).iter().any(|a| a == anchor) {
                    failures
                        .push(format!("{file}:{line}: link {target}: no heading #{anchor} in {}", resolved.display()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "broken links in the docs:\n{}", failures.join("\n"));
    assert!(count >= 10, "only {count} relative links found in README.md and docs/");
}

/// The README is the way in: its two commands stay exactly as they are, and every page of
/// `docs/` is reachable from it.
#[test]
fn the_readme_keeps_its_two_commands_and_links_every_page() {
    let docs = doc_files();
    let (_, readme) = docs.iter().find(|(n, _)| n == "README.md").expect("README.md");
    let commands: Vec<String> = shell_commands(readme).into_iter().map(|(_, c)| c.trim().to_string()).collect();
    for want in ["cargo run --release -- demo", "bash tools/test.sh"] {
        assert!(commands.iter().any(|c| c == want), "README.md no longer shows `{want}` in a shell block");
    }
    let linked: Vec<String> =
        links(readme).into_iter().map(|(_, t)| t.split('#').next().unwrap_or("").to_string()).collect();
    for (name, _) in docs.iter().filter(|(n, _)| n.starts_with("docs/")) {
        assert!(linked.contains(name), "README.md does not link {name}");
    }
}
