//! The README and `docs/` stay true. Every `kiln …` command in their fenced shell blocks (also
//! written `cargo run --release [-p kiln] -- …` or `target/release/kiln …`) is run with its
//! arguments and `--help` appended: clap checks every flag name and parses every value before
//! it prints help, so a renamed flag, a dropped subcommand or a value of the wrong type fails
//! here, naming the file, the line and the command. `--help` rather than `--dry-run`: it needs no
//! model, no data file and no network, so every command of the docs is checked in a second.
//! The scripts the blocks run (`bash tools/….sh`, `python3 tools/….py`) must exist, and every
//! relative link (and its `#anchor`) must point to a file (and a heading) that exists.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

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

/// Whether a fence's info string marks a shell block (untagged blocks count too: a command
/// written without a tag is still a command a reader copies).
fn is_shell(info: &str) -> bool {
    matches!(info.split_whitespace().next().unwrap_or(""), "" | "sh" | "bash" | "shell" | "console" | "zsh")
}

/// The command lines of the shell blocks of `text`: (1-based line of the command's start, the
/// line with its `\` continuations joined). Comment lines, a `$ ` prompt and here-document
/// bodies are skipped.
fn shell_commands(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fence: Option<(String, bool)> = None; // (the fence's backticks or tildes, shell?)
    let mut pending: Option<(usize, String)> = None;
    let mut heredoc: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        let marker: String = trimmed.chars().take_while(|&c| c == '`' || c == '~').collect();
        match &fence {
            None if marker.len() >= 3 => {
                fence = Some((marker.clone(), is_shell(&trimmed[marker.len()..])));
                continue;
            }
            None => continue,
            Some((open, _)) if marker.len() >= open.len() && trimmed[marker.len()..].trim().is_empty() => {
                fence = None;
                pending = None;
                heredoc = None;
                continue;
            }
            Some((_, false)) => continue,
            Some((_, true)) => {}
        }
        if let Some(end) = &heredoc {
            if raw.trim() == end {
                heredoc = None;
            }
            continue;
        }
        let line = trimmed.strip_prefix("$ ").unwrap_or(trimmed);
        if pending.is_none() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        let (start, mut joined) = pending.take().unwrap_or((i + 1, String::new()));
        if let Some(body) = line.strip_suffix('\\') {
            joined.push_str(body);
            joined.push(' ');
            pending = Some((start, joined));
            continue;
        }
        joined.push_str(line);
        if let Some(pos) = joined.find("<<") {
            let tag: String = joined[pos + 2..]
                .trim_start_matches('-')
                .trim()
                .trim_matches(|c| c == '\'' || c == '"')
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !tag.is_empty() {
                heredoc = Some(tag);
            }
        }
        out.push((start, joined));
    }
    out
}

/// Splits a command line into words the way a shell would for our purposes (quotes,
/// backslash escapes, `$(…)`/`<(…)` kept whole) and cuts it into the simple commands of a
/// pipeline or list (`|`, `||`, `&&`, `;`, `&`). A `#` word starts a comment; redirections and
/// their targets are dropped.
fn simple_commands(line: &str) -> Vec<Vec<String>> {
    let mut cmds = vec![Vec::new()];
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let mut skip_next = false; // the next word is a redirection's target
    let finish = |word: &mut String, in_word: &mut bool, cmds: &mut Vec<Vec<String>>, skip: &mut bool| {
        if *in_word {
            if *skip {
                *skip = false;
            } else {
                cmds.last_mut().expect("one command").push(std::mem::take(word));
            }
        }
        word.clear();
        *in_word = false;
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    word.push(q);
                }
            }
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => {
                            if let Some(n) = chars.next() {
                                word.push(n);
                            }
                        }
                        _ => word.push(q),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            '$' | '<' if chars.peek() == Some(&'(') => {
                // Command or process substitution: one opaque word.
                in_word = true;
                word.push(c);
                let mut depth = 0;
                for q in chars.by_ref() {
                    word.push(q);
                    match q {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
            '#' if !in_word => break,
            '|' | ';' | '&' => {
                finish(&mut word, &mut in_word, &mut cmds, &mut skip_next);
                while chars.peek().is_some_and(|&n| n == '|' || n == '&') {
                    chars.next();
                }
                cmds.push(Vec::new());
            }
            '>' | '<' => {
                // `2>`, `>>`, `<`: drop the redirection and the file it names.
                if in_word && word.chars().all(|d| d.is_ascii_digit()) {
                    word.clear();
                    in_word = false;
                }
                finish(&mut word, &mut in_word, &mut cmds, &mut skip_next);
                while chars.peek().is_some_and(|&n| n == '>' || n == '<' || n == '&') {
                    chars.next();
                }
                skip_next = true;
            }
            c if c.is_whitespace() => finish(&mut word, &mut in_word, &mut cmds, &mut skip_next),
            _ => {
                in_word = true;
                word.push(c);
            }
        }
    }
    finish(&mut word, &mut in_word, &mut cmds, &mut skip_next);
    cmds.retain(|c| !c.is_empty());
    cmds
}

/// What a simple command asks of the docs check.
#[derive(Debug, PartialEq)]
enum Check {
    /// `kiln` with these arguments.
    Kiln(Vec<String>),
    /// A script of the repository that must exist.
    Script(String),
    /// Anything else (cargo test, cat, …): not checked.
    Other,
}

fn classify(words: &[String]) -> Check {
    // Leading `NAME=value` environment assignments.
    let words: Vec<&str> = words
        .iter()
        .map(String::as_str)
        .skip_while(|w| {
            w.split_once('=')
                .is_some_and(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        })
        .collect();
    let Some(&first) = words.first() else { return Check::Other };
    if first == "kiln" || first.ends_with("/kiln") {
        return Check::Kiln(words[1..].iter().map(|s| s.to_string()).collect());
    }
    if first == "cargo" && words.get(1) == Some(&"run") {
        let Some(sep) = words.iter().position(|&w| w == "--") else { return Check::Other };
        let cargo = &words[2..sep];
        let package = cargo
            .iter()
            .position(|&w| w == "-p" || w == "--package" || w == "--bin")
            .and_then(|i| cargo.get(i + 1))
            .copied()
            .unwrap_or("kiln");
        if package == "kiln" {
            return Check::Kiln(words[sep + 1..].iter().map(|s| s.to_string()).collect());
        }
        return Check::Other;
    }
    if matches!(first, "bash" | "sh" | "python3" | "python")
        && let Some(script) = words.get(1).filter(|w| !w.starts_with('-') && w.contains('/'))
    {
        return Check::Script(script.to_string());
    }
    Check::Other
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
    let md = "text\n```sh\n# a comment\nkiln train --data a.jsonl \\\n    --epochs 1\ncat > f <<'EOF'\nkiln not-a-command\nEOF\n```\n```json\nkiln x\n```\n";
    assert_eq!(
        shell_commands(md),
        vec![(4, "kiln train --data a.jsonl  --epochs 1".to_string()), (6, "cat > f <<'EOF'".to_string())]
    );
}

#[test]
fn every_documented_command_still_parses() {
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let root = root();
    let (mut checked, mut failures) = (0, Vec::new());
    for (file, text) in doc_files() {
        for (line, cmd) in shell_commands(&text) {
            for words in simple_commands(&cmd) {
                match classify(&words) {
                    Check::Kiln(args) => {
                        checked += 1;
                        let out = Command::new(kiln)
                            .args(&args)
                            .arg("--help")
                            .current_dir(&root)
                            .stdin(Stdio::null())
                            .output()
                            .expect("kiln runs");
                        if !out.status.success() || out.stdout.is_empty() {
                            let err = String::from_utf8_lossy(&out.stderr);
                            let why = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("no help printed");
                            failures.push(format!("{file}:{line}: `kiln {}`: {why}", args.join(" ")));
                        }
                    }
                    Check::Script(path) => {
                        if !root.join(&path).is_file() {
                            failures.push(format!("{file}:{line}: `{cmd}`: {path} does not exist"));
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
