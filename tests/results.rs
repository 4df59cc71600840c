//! `bench/RESULTS.md` reproduces: every command it quotes (in a code span of a table cell or of
//! prose, or in a shell block) still runs as written, checked without running its work.
//!
//! The rule for each kind of command:
//! - `kiln …`, `target/release/kiln …`, `cargo run [--release] -- …`: `kiln ARGS --help` parses
//!   (clap checks every flag and value before printing help), and a command with flags gives
//!   the flags its `Usage:` line marks required. Placeholders (`M`, `D`, `<gguf>`) stand for
//!   paths, which the parse does not open. A code span that is only `kiln SUBCOMMAND` names the
//!   subcommand (which must exist) and is not held to the required flags.
//! - `cargo test …`: every cargo flag is one cargo takes; each `--test X` names a test target of
//!   the package the command selects (`-p P`, every package with `--workspace`, the default
//!   member `kiln` otherwise); a filter matches the path of at least one `#[test]` function of
//!   those targets; and where those targets' sources print (`eprintln!`/`println!`: the
//!   figures), the command ends in `-- --nocapture`, or the figures would not show.
//! - `cargo bench …`: each `--bench X` names a bench target of the package, and a filter after
//!   `--` matches a benchmark name (a string literal of the bench's source).
//! - `cargo build …`: every flag is one cargo takes.
//! - `python3 tools/X.py ARGS`: the script's own argparse parses ARGS. The script runs under a
//!   hook that stops it right after `parse_args` returns and that refuses every import outside
//!   the standard library and `tools/` until then, so the check runs in CI without torch,
//!   transformers or gguf and fails where a script imports them before reading its arguments.
//! - `bash tools/X.sh …`: the script exists and `bash -n` reads it.
//! - `NAME=value` before a command: a `KILN_*` name is read somewhere in the sources.
//! - A `…` standing for a word of a command is refused: the command is written whole.
//! - Repository paths quoted alone (`tools/…`, `tests/…`) exist; the fuzz tables (first header
//!   cell "target") name binaries of `fuzz/Cargo.toml`; the `tools/gpu-check.sh` sections and
//!   flags quoted beside the script's name (`ops-cuda`, `generate-*`, `--smoke`) are in it.
//! - [`NOT_CHECKED`]: commands that cannot run in CI, each with the reason; the test prints them.
//!
//! Counts: the parity rows of the newest entry that has any give one count, the current one: twice
//! `kiln_core::selftest::TABLE_CASES` (two seeds); a parity count in an older entry says it is
//! the count "at the time".

use std::collections::BTreeSet;
use std::path::Path;

#[path = "common/shell.rs"]
#[allow(dead_code)] // `classify` serves the docs check
mod shell;
use shell::{check_bash, check_python, kiln_parses, root, shell_commands, simple_commands, split_env};

#[path = "common/cargo_targets.rs"]
mod cargo_targets;
use cargo_targets::{Package, packages};

/// Commands RESULTS.md quotes that no CI machine can run, by their first word(s), with why.
const NOT_CHECKED: &[(&str, &str)] = &[
    (
        "cargo +nightly fuzz",
        "needs a nightly toolchain and cargo-fuzz, which CI does not install (the fuzz targets' names are checked against fuzz/Cargo.toml)",
    ),
    ("duplicates", "the clone detector is a program of the development machine, not part of the repository or CI"),
    ("pip download", "fetches from PyPI over the network"),
    ("issues", "the issue tracker's client, not part of the repository or CI"),
];

/// The code spans of a markdown text outside fenced blocks, with the line each starts on; a
/// span may run over line breaks within a paragraph (they read as spaces).
fn code_spans(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_fence = false;
    let mut para: Vec<(usize, &str)> = Vec::new();
    let mut flush = |para: &mut Vec<(usize, &str)>| {
        let joined: String = para.iter().map(|(_, l)| *l).collect::<Vec<_>>().join("\n");
        let starts: Vec<usize> = para
            .iter()
            .scan(0, |off, (_, l)| {
                let s = *off;
                *off += l.len() + 1;
                Some(s)
            })
            .collect();
        let line_of = |pos: usize| para[starts.iter().rposition(|&s| s <= pos).unwrap_or(0)].0;
        let b = joined.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'`' {
                i += 1;
                continue;
            }
            let n = b[i..].iter().take_while(|&&c| c == b'`').count();
            let body = i + n;
            let close = (body..b.len())
                .find(|&j| b[j..].iter().take_while(|&&c| c == b'`').count() == n && (j == 0 || b[j - 1] != b'`'));
            match close {
                Some(j) => {
                    out.push((line_of(i), joined[body..j].replace('\n', " ").trim().to_string()));
                    i = j + n;
                }
                None => i = body,
            }
        }
        para.clear();
    };
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            flush(&mut para);
            in_fence = !in_fence;
        } else if in_fence {
        } else if t.is_empty() || t.starts_with('|') || t.starts_with('#') {
            // Table rows and headings are paragraphs of their own.
            flush(&mut para);
            if !t.is_empty() {
                para.push((i + 1, line));
                flush(&mut para);
            }
        } else {
            para.push((i + 1, line));
        }
    }
    flush(&mut para);
    out
}

fn results() -> String {
    std::fs::read_to_string(root().join("bench/RESULTS.md")).expect("bench/RESULTS.md")
}

/// Every command of RESULTS.md as (line, the span or shell line it is in, the command's
/// words), from code spans and shell blocks. In a code span `<x>` is a placeholder, not a
/// redirection.
fn commands(text: &str) -> Vec<(usize, String, Vec<String>)> {
    let spans = code_spans(text).into_iter().map(|(line, s)| (line, s.replace('<', "'<").replace('>', ">'"), s));
    let blocks = shell_commands(text).into_iter().map(|(line, s)| (line, s.clone(), s));
    spans
        .chain(blocks)
        .flat_map(|(line, words, s)| simple_commands(&words).into_iter().map(move |w| (line, s.clone(), w)))
        .collect()
}

/// What a command's words (after the environment and wrappers) are.
#[derive(Debug, PartialEq)]
enum Kind {
    Kiln(Vec<String>),
    CargoTest(Vec<String>),
    CargoBench(Vec<String>),
    CargoBuild(Vec<String>),
    Python(String, Vec<String>),
    Bash(String),
    NotChecked(&'static str),
    /// Not a command (a Rust path, a flag quoted alone, a value).
    Prose,
}

fn kind(words: &[String]) -> Kind {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let rest = |i: usize| words[i.min(words.len())..].to_vec();
    for (prefix, why) in NOT_CHECKED {
        let p: Vec<&str> = prefix.split(' ').collect();
        if w.len() >= p.len() && w[..p.len()] == p[..] {
            return Kind::NotChecked(why);
        }
    }
    match w.as_slice() {
        [k, ..] if *k == "kiln" || k.ends_with("/kiln") => Kind::Kiln(rest(1)),
        ["cargo", "run", ..] => match w.iter().position(|&x| x == "--") {
            Some(sep) => Kind::Kiln(rest(sep + 1)),
            None => Kind::Kiln(Vec::new()),
        },
        ["cargo", "test", ..] => Kind::CargoTest(rest(2)),
        ["cargo", "bench", ..] => Kind::CargoBench(rest(2)),
        ["cargo", "build", ..] => Kind::CargoBuild(rest(2)),
        ["python3" | "python", script, ..] if script.ends_with(".py") => Kind::Python(script.to_string(), rest(2)),
        ["bash" | "sh", script, ..] if script.ends_with(".sh") => Kind::Bash(script.to_string()),
        _ => Kind::Prose,
    }
}

/// A cargo command line: packages, targets, the filter, what follows `--`; or why not.
#[derive(Debug, Default)]
struct CargoArgs {
    packages: Vec<String>,
    workspace: bool,
    tests: Vec<String>,
    benches: Vec<String>,
    lib: bool,
    filter: Option<String>,
    after: Vec<String>,
}

fn cargo_args(args: &[String]) -> Result<CargoArgs, String> {
    let mut c = CargoArgs::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().cloned().ok_or(format!("{flag} without a value"));
        match a.as_str() {
            "--" => {
                c.after = it.by_ref().cloned().collect();
            }
            "-p" | "--package" => c.packages.push(value(a)?),
            "--test" => c.tests.push(value(a)?),
            "--bench" => c.benches.push(value(a)?),
            "--features" | "-F" | "--target-dir" | "-j" | "--jobs" | "--profile" => {
                value(a)?;
            }
            "--workspace" | "--all" => c.workspace = true,
            "--lib" => c.lib = true,
            "--locked"
            | "--release"
            | "--no-run"
            | "--all-targets"
            | "--benches"
            | "--tests"
            | "-q"
            | "--quiet"
            | "--no-default-features"
            | "--all-features"
            | "--frozen"
            | "--offline"
            | "--no-fail-fast" => {}
            f if f.starts_with('-') => return Err(format!("cargo takes no flag {f} here")),
            f if c.filter.is_none() => c.filter = Some(f.to_string()),
            f => return Err(format!("a second filter {f}")),
        }
    }
    Ok(c)
}

/// The packages a cargo command selects.
fn selected<'a>(all: &'a [Package], c: &CargoArgs) -> Result<Vec<&'a Package>, String> {
    if c.workspace {
        return Ok(all.iter().collect());
    }
    let names: Vec<String> = if c.packages.is_empty() { vec!["kiln".into()] } else { c.packages.clone() };
    names.iter().map(|n| all.iter().find(|p| &p.name == n).ok_or(format!("no package {n} in the workspace"))).collect()
}

fn check_cargo_test(all: &[Package], args: &[String]) -> Result<(), String> {
    let c = cargo_args(args)?;
    let pkgs = selected(all, &c)?;
    let mut targets = Vec::new();
    for t in &c.tests {
        let hit = pkgs.iter().find_map(|p| p.tests.iter().find(|x| &x.name == t));
        targets.push(hit.ok_or_else(|| {
            let names: Vec<&str> = pkgs.iter().map(|p| p.name.as_str()).collect();
            format!("no test target {t} in {}", names.join(", "))
        })?);
    }
    if c.lib {
        targets.extend(pkgs.iter().filter_map(|p| p.lib.as_ref()));
    }
    if c.tests.is_empty() && !c.lib {
        // No target named: the libraries and every test target of the packages.
        targets.extend(pkgs.iter().flat_map(|p| p.lib.iter().chain(&p.tests)));
    }
    let binary_filter = c.after.iter().find(|a| !a.starts_with('-')).cloned();
    for f in c.filter.iter().chain(&binary_filter) {
        if !targets.iter().any(|t| t.test_names().iter().any(|n| n.contains(f.as_str()))) {
            return Err(format!("the filter {f} matches no #[test] function of the targets"));
        }
    }
    for a in c.after.iter().filter(|a| a.starts_with('-')) {
        let known =
            ["--nocapture", "--show-output", "--exact", "--ignored", "--include-ignored", "--test-threads", "--quiet"];
        if !known.iter().any(|k| a == k || a.starts_with(&format!("{k}="))) {
            return Err(format!("the test harness takes no flag {a}"));
        }
    }
    let printing: Vec<&str> = targets.iter().filter(|t| t.prints()).map(|t| t.name.as_str()).collect();
    if !printing.is_empty() && !c.after.iter().any(|a| a == "--nocapture") {
        return Err(format!(
            "{} print(s) the figures with eprintln!/println!, which cargo test hides: end the command with `-- --nocapture`",
            printing.join(", ")
        ));
    }
    Ok(())
}

fn check_cargo_bench(all: &[Package], args: &[String]) -> Result<(), String> {
    let c = cargo_args(args)?;
    let pkgs = selected(all, &c)?;
    let mut sources = Vec::new();
    for b in &c.benches {
        let hit = pkgs.iter().find_map(|p| p.benches.iter().find(|x| &x.name == b));
        sources.push(hit.ok_or(format!("no bench target {b}"))?);
    }
    if c.benches.is_empty() {
        sources.extend(pkgs.iter().flat_map(|p| &p.benches));
    }
    for f in c.filter.iter().chain(c.after.iter().find(|a| !a.starts_with('-'))) {
        if !sources.iter().any(|t| t.string_literals().iter().any(|s| s.contains(f.as_str()))) {
            return Err(format!("the filter {f} matches no benchmark name of the bench targets"));
        }
    }
    Ok(())
}

/// Whether `name` is read somewhere in the sources (as the string literal `"name"`).
fn env_var_is_read(name: &str) -> bool {
    fn walk(dir: &Path, needle: &str) -> bool {
        let Ok(entries) = std::fs::read_dir(dir) else { return false };
        entries.filter_map(|e| e.ok()).any(|e| {
            let p = e.path();
            if p.is_dir() {
                p.file_name().is_some_and(|n| n != "target") && walk(&p, needle)
            } else {
                p.extension().is_some_and(|x| x == "rs" || x == "py" || x == "sh")
                    && std::fs::read_to_string(&p).is_ok_and(|s| s.contains(needle))
            }
        })
    }
    let root = root();
    ["runtime", "tools"].iter().any(|d| walk(&root.join(d), &format!("\"{name}\"")))
}

#[test]
fn every_results_command_still_runs_as_written() {
    let text = results();
    let all = packages();
    let (mut failures, mut not_checked) = (Vec::new(), Vec::new());
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for (line, cmd, words) in commands(&text) {
        if words.first().is_some_and(|w| w == "…") && words.len() > 1 || words.iter().skip(1).any(|w| w == "…") {
            failures.push(format!("RESULTS.md:{line}: `{cmd}`: a word elided with …: write the command whole"));
            continue;
        }
        let (env, rest) = split_env(&words);
        let k = kind(&rest);
        if k != Kind::Prose {
            for (name, _) in env.iter().filter(|(n, _)| n.starts_with("KILN_")) {
                if !env_var_is_read(name) {
                    failures.push(format!("RESULTS.md:{line}: `{cmd}`: nothing reads {name}"));
                }
            }
        }
        let (label, result) = match &k {
            Kind::Kiln(args) => ("kiln", kiln_parses(args)),
            Kind::CargoTest(args) => ("cargo test", check_cargo_test(&all, args)),
            Kind::CargoBench(args) => ("cargo bench", check_cargo_bench(&all, args)),
            Kind::CargoBuild(args) => ("cargo build", cargo_args(args).map(|_| ())),
            Kind::Python(script, args) => ("python3", check_python(script, args)),
            Kind::Bash(script) => ("bash", check_bash(script)),
            Kind::NotChecked(why) => {
                not_checked.push(format!("RESULTS.md:{line}: `{cmd}`: {why}"));
                continue;
            }
            Kind::Prose => continue,
        };
        *counts.entry(label).or_default() += 1;
        if let Err(why) = result {
            failures.push(format!("RESULTS.md:{line}: `{cmd}`: {why}"));
        }
    }
    eprintln!("RESULTS.md commands checked: {counts:?}");
    for n in &not_checked {
        eprintln!("not checked (cannot run in CI): {n}");
    }
    assert!(failures.is_empty(), "RESULTS.md commands that no longer run as written:\n{}", failures.join("\n"));
    // The collector must not silently find nothing (a changed quoting style, say).
    for (label, least) in [("kiln", 20), ("cargo test", 15), ("cargo bench", 4), ("python3", 5)] {
        let n = counts.get(label).copied().unwrap_or(0);
        assert!(n >= least, "only {n} `{label}` commands found in RESULTS.md (expected at least {least})");
    }
}

#[test]
fn quoted_paths_fuzz_targets_and_gpu_check_sections_exist() {
    let text = results();
    let root = root();
    let mut failures = Vec::new();
    let dirs = ["tools/", "tests/", "data/", "kernels/", "runtime/", "fuzz/", "bench/", "docs/", "shaders/"];
    for (line, span) in code_spans(&text) {
        let placeholder = span.contains(['<', '…', '*', ' ']);
        if dirs.iter().any(|d| span.starts_with(d)) && !placeholder && !root.join(&span).exists() {
            failures.push(format!("RESULTS.md:{line}: {span} does not exist"));
        }
    }
    let fuzz: toml::Table = std::fs::read_to_string(root.join("fuzz/Cargo.toml"))
        .expect("fuzz/Cargo.toml")
        .parse()
        .expect("fuzz/Cargo.toml parses");
    let bins: BTreeSet<String> = fuzz
        .get("bin")
        .and_then(|b| b.as_array())
        .into_iter()
        .flatten()
        .filter_map(|b| b.get("name")?.as_str().map(String::from))
        .collect();
    let mut named = 0;
    let mut in_fuzz_table = false;
    for (i, line) in text.lines().enumerate() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
        if !line.trim_start().starts_with('|') {
            in_fuzz_table = false;
        } else if cells.first() == Some(&"target") {
            in_fuzz_table = true;
        } else if in_fuzz_table && !cells[0].starts_with("---") {
            let name = cells[0].split_whitespace().next().unwrap_or("");
            named += 1;
            if !bins.contains(name) {
                failures.push(format!("RESULTS.md:{}: fuzz target {name} is not a [[bin]] of fuzz/Cargo.toml", i + 1));
            }
        }
    }
    // The sections of tools/gpu-check.sh quoted beside its name (`ops-cuda`, `generate-*`) and
    // its flags (`--smoke`) exist in the script.
    let script = std::fs::read_to_string(root.join("tools/gpu-check.sh")).expect("tools/gpu-check.sh");
    let sections: Vec<String> = script
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("section "))
        .filter_map(|l| l.split_whitespace().next())
        .map(|n| n.trim_matches('"').split('$').next().unwrap_or("").to_string())
        .collect();
    let near: Vec<usize> =
        text.lines().enumerate().filter(|(_, l)| l.contains("gpu-check.sh")).map(|(i, _)| i + 1).collect();
    let mut quoted = 0;
    for (line, span) in code_spans(&text) {
        if !near.iter().any(|&n| (n..=n + 3).contains(&line)) {
            continue;
        }
        let is_name = span.starts_with(|c: char| c.is_ascii_lowercase())
            && span.contains('-')
            && span.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '*');
        if is_name {
            quoted += 1;
            let (stem, glob) = span.strip_suffix('*').map_or((span.as_str(), false), |s| (s, true));
            let found = sections.iter().any(|s| {
                if glob { s.starts_with(stem) } else { s == stem || stem.starts_with(s.as_str()) && s.ends_with('-') }
            });
            if !found {
                failures.push(format!("RESULTS.md:{line}: tools/gpu-check.sh has no section {span}"));
            }
        } else if span.starts_with("--") && !span.contains(' ') && !script.contains(&format!("{span})")) {
            failures.push(format!("RESULTS.md:{line}: tools/gpu-check.sh takes no {span}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(named >= 5, "only {named} fuzz targets found in RESULTS.md's fuzz tables");
    assert!(quoted >= 5, "only {quoted} tools/gpu-check.sh sections found quoted in RESULTS.md");
}

#[test]
fn the_reading_of_results_finds_commands_in_spans_and_cells() {
    let md = "intro `kiln info` and `cargo test\n--test parity -- --nocapture` wrap\n\n| a | `python3 tools/x.py --n 2` |\n```sh\nkiln demo\n```\n";
    let spans = code_spans(md);
    assert_eq!(
        spans,
        vec![
            (1, "kiln info".to_string()),
            (1, "cargo test --test parity -- --nocapture".into()),
            (4, "python3 tools/x.py --n 2".into())
        ]
    );
    let w = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    assert_eq!(kind(&w("cargo run --release -- demo --epochs 1")), Kind::Kiln(w("demo --epochs 1")));
    assert_eq!(kind(&w("cargo +nightly fuzz run x")), Kind::NotChecked(NOT_CHECKED[0].1));
    assert_eq!(kind(&w("kiln_cuda::GemmVariant::full_name()")), Kind::Prose);
    let c = cargo_args(&w("-p kiln-cuda --test cuda_emu parity -- --nocapture")).expect("parses");
    assert_eq!(
        (c.packages, c.tests, c.filter, c.after),
        (w("kiln-cuda"), w("cuda_emu"), Some("parity".into()), w("--nocapture"))
    );
    assert!(cargo_args(&w("--tset cuda_emu")).is_err(), "a misspelt flag is refused");
    let all = packages();
    assert!(
        check_cargo_test(&all, &w("--workspace --locked --test parity no_such_test_anywhere -- --nocapture")).is_err()
    );
    assert!(
        check_cargo_test(&all, &w("--workspace --locked --test parity")).is_err(),
        "parity prints: needs --nocapture"
    );
    assert!(check_cargo_test(&all, &w("--test parity -- --nocapture")).is_err(), "parity is not in the default member");
    assert!(check_cargo_bench(&all, &w("-p kiln --bench data_pipeline -- no_such_bench")).is_err());
    assert!(check_python("tools/bench_gemm.py", &w("--threads two")).is_err(), "argparse types are applied");
    assert!(check_python("tools/bench_gemm.py", &w("--no-such-flag")).is_err());
    let row =
        "| CPU parity table | 168 cases | TABLE_CASES_NOW cases: 190 passed, 4 skipped | 146/146 | `cargo test` |";
    assert_eq!(parity_counts(row), Some(w("168 TABLE_CASES_NOW 146")), "table sizes, not pass counts");
    assert_eq!(parity_counts("| RoPE rows alone | 12 cases |"), None, "only rows that name parity");
}

/// The parity case counts of a table row whose first cell names parity, from the other cells:
/// `N/N` or `N cases` (the table's size; `N passed` is a part of it where allow-listed cases
/// are skipped), or the placeholder `TABLE_CASES_NOW` (not filled in yet).
fn parity_counts(row: &str) -> Option<Vec<String>> {
    let cells: Vec<&str> = row.trim().trim_matches('|').split('|').map(str::trim).collect();
    if cells.len() < 2 || !cells[0].to_lowercase().contains("parity") || cells[0].starts_with("---") {
        return None;
    }
    let re = regex::Regex::new(r"\b(\d+|TABLE_CASES_NOW)(?:/\d+| cases)").expect("regex");
    let rest = cells[1..].join(" | ");
    Some(re.captures_iter(&rest).map(|c| c[1].to_string()).collect())
}

#[test]
fn the_newest_parity_count_is_the_tables_and_older_ones_say_at_the_time() {
    let text = results();
    let now = 2 * kiln_core::selftest::TABLE_CASES; // two seeds
    // The newest entry that gives parity counts gives the current one; every entry after it
    // is history and says so.
    let (mut entry, mut current) = (0, None);
    let (mut newest, mut failures) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("## ") {
            entry += 1;
            continue;
        }
        let Some(counts) = parity_counts(line).filter(|c| !c.is_empty()) else { continue };
        if *current.get_or_insert(entry) == entry {
            newest.extend(counts.into_iter().map(|c| (i + 1, c)));
        } else if !line.contains("at the time") {
            failures.push(format!("RESULTS.md:{}: an older entry's parity count without \"at the time\"", i + 1));
        }
    }
    assert!(!newest.is_empty(), "no entry of RESULTS.md gives a parity count");
    for (line, count) in &newest {
        if count.parse::<usize>().ok() != Some(now) {
            failures.push(format!(
                "RESULTS.md:{line}: the newest parity count is {count}, the table has {now} cases (2 × TABLE_CASES)"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("RESULTS.md's newest entry: {} parity rows, {now} cases each", newest.len());
}
