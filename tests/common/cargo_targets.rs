//! The workspace's packages and their lib, test and bench targets as cargo sees them (the
//! `[[test]]`/`[[bench]]` entries of each `runtime/*/Cargo.toml` plus the files cargo finds by
//! itself in `tests/` and `benches/`), with the source files of each target (its root file and
//! the `mod` files it pulls in), so a quoted `cargo test --test X filter` can be checked.

use std::path::{Path, PathBuf};

use super::shell::root;

pub struct Package {
    pub name: String,
    pub lib: Option<Target>,
    pub tests: Vec<Target>,
    pub benches: Vec<Target>,
}

pub struct Target {
    pub name: String,
    /// The target's root file (a library's tests are named by module path from it:
    /// `quant::q4k::tests::…`).
    pub path: PathBuf,
}

/// Every package of the workspace.
pub fn packages() -> Vec<Package> {
    let root = root();
    let ws: toml::Table = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml").parse().expect("toml");
    let members = ws["workspace"]["members"].as_array().expect("workspace members");
    members
        .iter()
        .filter_map(|m| m.as_str())
        .map(|m| {
            let dir = root.join(m);
            let manifest: toml::Table = std::fs::read_to_string(dir.join("Cargo.toml"))
                .unwrap_or_else(|e| panic!("{m}/Cargo.toml: {e}"))
                .parse()
                .unwrap_or_else(|e| panic!("{m}/Cargo.toml: {e}"));
            let name = manifest["package"]["name"].as_str().expect("package name").to_string();
            let lib = dir.join("src/lib.rs");
            Package {
                name,
                lib: lib.is_file().then(|| Target { name: "lib".into(), path: lib }),
                tests: targets(&dir, &manifest, "test", "tests"),
                benches: targets(&dir, &manifest, "bench", "benches"),
            }
        })
        .collect()
}

/// The `[[kind]]` entries (name, path or `folder/name.rs`) and the files of `folder/`.
fn targets(dir: &Path, manifest: &toml::Table, kind: &str, folder: &str) -> Vec<Target> {
    let mut out: Vec<Target> = manifest
        .get(kind)
        .and_then(|t| t.as_array())
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let name = t.get("name")?.as_str()?.to_string();
            let path = match t.get("path").and_then(|p| p.as_str()) {
                Some(p) => dir.join(p),
                None => dir.join(folder).join(format!("{name}.rs")),
            };
            Some(Target { name, path })
        })
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir.join(folder)) {
        for e in entries.filter_map(|e| e.ok()) {
            let p = e.path();
            let Some(stem) = p.file_stem().map(|s| s.to_string_lossy().into_owned()) else { continue };
            if p.extension().is_some_and(|x| x == "rs") && !out.iter().any(|t| t.name == stem) {
                out.push(Target { name: stem, path: p });
            }
        }
    }
    out
}

impl Target {
    /// The target's source files with the module path of each (`""` for the root file).
    pub fn sources(&self) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        let dir = self.path.parent().unwrap_or(Path::new("")).to_path_buf();
        collect(&self.path, &dir, String::new(), &mut out);
        out
    }

    /// The full names cargo's filter is matched against: `module::path::fn` of every
    /// `#[test]` function (each inline `mod` of its file tried as a step of the path).
    pub fn test_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for (module, path) in self.sources() {
            let Ok(src) = std::fs::read_to_string(&path) else { continue };
            let inline: Vec<String> = src
                .lines()
                .filter_map(|l| {
                    let t = l.trim_start().trim_start_matches("pub ");
                    let rest = t.strip_prefix("mod ")?;
                    rest.trim_end().ends_with('{').then(|| rest.trim_end_matches(['{', ' ']).to_string())
                })
                .collect();
            let mut lines = src.lines();
            while let Some(l) = lines.next() {
                if !l.trim_start().starts_with("#[test]") {
                    continue;
                }
                let Some(f) = lines.by_ref().find_map(|l| {
                    let at = l.find("fn ")?;
                    Some(l[at + 3..].split(|c: char| !(c.is_alphanumeric() || c == '_')).next()?.to_string())
                }) else {
                    continue;
                };
                let prefix = |m: &str| if m.is_empty() { String::new() } else { format!("{m}::") };
                names.push(format!("{}{f}", prefix(&module)));
                for m in &inline {
                    names.push(format!("{}{m}::{f}", prefix(&module)));
                }
            }
        }
        names
    }

    /// Whether the target's sources print (`eprintln!`/`println!`).
    pub fn prints(&self) -> bool {
        self.sources()
            .iter()
            .any(|(_, p)| std::fs::read_to_string(p).is_ok_and(|s| s.contains("eprintln!") || s.contains("println!")))
    }

    /// The string literals of the target's root file (a bench's benchmark and group names).
    pub fn string_literals(&self) -> Vec<String> {
        let src = std::fs::read_to_string(&self.path).unwrap_or_default();
        src.split('"').skip(1).step_by(2).map(String::from).collect()
    }
}

/// `file` (module path `module`, whose `mod x;` children live in `dir`) and its children.
fn collect(file: &Path, dir: &Path, module: String, out: &mut Vec<(String, PathBuf)>) {
    let Ok(src) = std::fs::read_to_string(file) else { return };
    out.push((module.clone(), file.to_path_buf()));
    let mut path_attr: Option<String> = None;
    for l in src.lines() {
        let t = l.trim();
        if let Some(p) = t.strip_prefix("#[path = \"") {
            path_attr = p.split('"').next().map(String::from);
            continue;
        }
        let decl = t.trim_start_matches("pub(crate) ").trim_start_matches("pub ");
        let Some(name) = decl.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) else {
            if !t.starts_with("#[") {
                path_attr = None;
            }
            continue;
        };
        let child_module = if module.is_empty() { name.to_string() } else { format!("{module}::{name}") };
        let (child, child_dir) = match path_attr.take() {
            Some(p) => {
                let f = file.parent().unwrap_or(Path::new("")).join(p);
                let d = f.parent().unwrap_or(Path::new("")).join(name);
                (f, d)
            }
            None if dir.join(format!("{name}.rs")).is_file() => (dir.join(format!("{name}.rs")), dir.join(name)),
            None => (dir.join(name).join("mod.rs"), dir.join(name)),
        };
        collect(&child, &child_dir, child_module, out);
    }
}
