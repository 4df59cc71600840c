//! Reading the commands out of markdown, shared by the docs and RESULTS checks: the shell
//! blocks' command lines, a shell-like split into simple commands, what kind of command each
//! is; and the checks that a command still parses without doing its work: `kiln … --help`, a
//! Python tool's own argparse, `bash -n`.

use std::path::PathBuf;
use std::process::{Command, Stdio};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether a fence's info string marks a shell block (untagged blocks count too: a command
/// written without a tag is still a command a reader copies).
pub fn is_shell(info: &str) -> bool {
    matches!(info.split_whitespace().next().unwrap_or(""), "" | "sh" | "bash" | "shell" | "console" | "zsh")
}

/// The command lines of the shell blocks of `text`: (1-based line of the command's start, the
/// line with its `\` continuations joined). Comment lines, a `$ ` prompt and here-document
/// bodies are skipped.
pub fn shell_commands(text: &str) -> Vec<(usize, String)> {
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
pub fn simple_commands(line: &str) -> Vec<Vec<String>> {
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
pub enum Check {
    /// `kiln` with these arguments.
    Kiln(Vec<String>),
    /// A script of the repository that must exist.
    Script(String),
    /// Anything else (cargo test, cat, …): not checked.
    Other,
}

pub fn classify(words: &[String]) -> Check {
    let (_, words) = split_env(words);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
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

/// Splits leading `NAME=value` environment assignments and a timing wrapper (`/usr/bin/time`
/// or `time` with its `-f FORMAT`/`-o FILE`/`-v`/`-p` options, `env`) off a command: the
/// assignments as (name, value), and the command they apply to.
pub fn split_env(words: &[String]) -> (Vec<(String, String)>, Vec<String>) {
    let mut env = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = words[i].as_str();
        if let Some((k, v)) = w.split_once('=')
            && !k.is_empty()
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            env.push((k.to_string(), v.to_string()));
            i += 1;
        } else if w == "/usr/bin/time" || w == "time" {
            i += 1;
            while let Some(o) = words.get(i).map(String::as_str) {
                match o {
                    "-f" | "--format" | "-o" | "--output" => i += 2,
                    "-v" | "--verbose" | "-p" | "--portability" | "-a" | "--append" => i += 1,
                    _ => break,
                }
            }
        } else if w == "env" {
            i += 1;
        } else {
            break;
        }
    }
    (env, words[i..].to_vec())
}

/// Runs `kiln ARGS --help`: clap checks every flag name and parses every value before it
/// prints help. Where ARGS hold a flag (a command, not just a subcommand's name), the
/// arguments the help's `Usage:` line marks required (`--data <DATA>` outside brackets) must be
/// among them too, since `--help` alone would let a command that cannot run pass.
pub fn kiln_parses(args: &[String]) -> Result<(), String> {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .arg("--help")
        .current_dir(root())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("kiln does not run: {e}"))?;
    let help = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || help.is_empty() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err.lines().find(|l| !l.trim().is_empty()).unwrap_or("no help printed").to_string());
    }
    if !args.iter().any(|a| a.starts_with('-')) {
        return Ok(());
    }
    let missing: Vec<String> = required_flags(&help)
        .into_iter()
        .filter(|f| !args.iter().any(|a| a == f || a.starts_with(&format!("{f}="))))
        .collect();
    if missing.is_empty() { Ok(()) } else { Err(format!("missing the required {}", missing.join(", "))) }
}

/// The flags a clap help's `Usage:` line lists outside brackets (required ones).
pub fn required_flags(help: &str) -> Vec<String> {
    let Some(usage) = help.lines().find_map(|l| l.trim().strip_prefix("Usage:")) else { return Vec::new() };
    let mut depth = 0i32;
    let mut out = Vec::new();
    for word in usage.split_whitespace() {
        if depth == 0 && word.starts_with("--") {
            out.push(word.trim_end_matches([']', '>']).to_string());
        }
        depth += word.matches('[').count() as i32 - word.matches(']').count() as i32;
    }
    out
}

/// The hook `python3 -c` runs a tool under (see [`check_python`]): argv is the script and its
/// arguments.
const PY_HOOK: &str = r#"
import argparse, importlib.abc, json, os, runpy, sys
script, args = sys.argv[1], sys.argv[2:]
tools = os.path.dirname(os.path.abspath(script))
if not hasattr(sys, "stdlib_module_names"):
    sys.exit("python3 is older than 3.10: it cannot tell the standard library's modules")
allowed = set(sys.stdlib_module_names) | {f[:-3] for f in os.listdir(tools) if f.endswith(".py")}
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in allowed:
            raise ImportError(f"`import {name}` runs before the arguments are parsed (CI has no {name})")
        return None
sys.meta_path.insert(0, Refuse())
parse = argparse.ArgumentParser.parse_args
def parse_and_stop(self, a=None, ns=None):
    print(json.dumps(vars(parse(self, a, ns)), default=str))
    sys.exit(0)
argparse.ArgumentParser.parse_args = parse_and_stop
sys.argv = [script] + args
sys.path.insert(0, tools)
runpy.run_path(script, run_name="__main__")
sys.exit("the script returned without calling parse_args")
"#;

/// Whether `python3 SCRIPT ARGS` parses its arguments: the script runs under [`PY_HOOK`], which
/// stops it right after argparse's `parse_args` returns and refuses every import outside the
/// standard library and `tools/` until then, so it is checked without torch, transformers or
/// gguf installed and fails where a script imports them before reading its arguments.
pub fn check_python(script: &str, args: &[String]) -> Result<(), String> {
    let path = root().join(script);
    let src = std::fs::read_to_string(&path).map_err(|e| format!("{script}: {e}"))?;
    if !src.contains("parse_args(") {
        // Without a parser the hook could not stop it: it would run its work.
        return Err(format!("{script} has no argparse parser to check the arguments with"));
    }
    let out = Command::new("python3")
        .arg("-c")
        .arg(PY_HOOK)
        .arg(&path)
        .args(args)
        .current_dir(root())
        .output()
        .map_err(|e| format!("python3 does not run: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("failed").to_string())
}

/// Whether `bash SCRIPT` names a script that exists and that `bash -n` reads.
pub fn check_bash(script: &str) -> Result<(), String> {
    let path = root().join(script);
    if !path.is_file() {
        return Err(format!("{script} does not exist"));
    }
    let out = Command::new("bash").arg("-n").arg(&path).output().map_err(|e| format!("bash: {e}"))?;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).trim().to_string()) }
}
