//! Reading rows from JSONL, JSON arrays and CSV. JSONL and CSV are streamed row by row; a JSON
//! array is parsed whole (it has no row boundaries to stream on).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::example::{Reason, RowError};
use crate::{KilnError, Result};

/// How a file stores its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Jsonl,
    JsonArray,
    Csv,
}

/// One raw row: its 1-based line (or record) number and the parsed object, or why it failed.
pub type RawRow = (usize, std::result::Result<Map<String, Value>, RowError>);

/// Picks the file kind from the extension, else from the first non-blank byte.
pub fn detect_kind(path: &Path) -> Result<FileKind> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "jsonl" | "ndjson" => return Ok(FileKind::Jsonl),
        "csv" => return Ok(FileKind::Csv),
        _ => {}
    }
    let mut f = File::open(path).map_err(|e| KilnError::io(path, e))?;
    let mut head = [0u8; 4096];
    let n = f.read(&mut head).map_err(|e| KilnError::io(path, e))?;
    let first = head[..n].iter().find(|b| !b.is_ascii_whitespace() && **b != 0xEF && **b != 0xBB && **b != 0xBF);
    Ok(match first {
        Some(b'[') => FileKind::JsonArray,
        Some(b'{') => FileKind::Jsonl,
        _ if ext == "json" => FileKind::JsonArray,
        _ => FileKind::Csv,
    })
}

fn row_err(path: &Path, line: usize, field: &str, reason: Reason, detail: impl Into<String>) -> RowError {
    RowError { file: path.to_path_buf(), line, field: field.into(), reason, detail: detail.into() }
}

fn object(path: &Path, line: usize, v: Value) -> std::result::Result<Map<String, Value>, RowError> {
    match v {
        Value::Object(m) => Ok(m),
        other => {
            Err(row_err(path, line, "(row)", Reason::WrongType, format!("expected an object, got {}", kind(&other))))
        }
    }
}

/// JSON type name for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Streams the rows of `path`.
pub fn rows(path: &Path, kind: FileKind) -> Result<Box<dyn Iterator<Item = RawRow>>> {
    let file = File::open(path).map_err(|e| KilnError::io(path, e))?;
    let p: PathBuf = path.to_path_buf();
    Ok(match kind {
        FileKind::Jsonl => {
            let mut r = BufReader::with_capacity(1 << 16, file);
            let mut line = 0usize;
            let mut buf = Vec::new();
            Box::new(std::iter::from_fn(move || {
                loop {
                    buf.clear();
                    line += 1;
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) => return None,
                        Ok(_) => {}
                        Err(e) => return Some((line, Err(row_err(&p, line, "(row)", Reason::Io, e.to_string())))),
                    }
                    let text = match std::str::from_utf8(&buf) {
                        Ok(t) => t,
                        Err(e) => {
                            return Some((
                                line,
                                Err(row_err(
                                    &p,
                                    line,
                                    "(row)",
                                    Reason::NonUtf8,
                                    format!("invalid UTF-8 at byte {}", e.valid_up_to()),
                                )),
                            ));
                        }
                    };
                    let text = text.trim_start_matches('\u{feff}').trim();
                    if text.is_empty() {
                        continue;
                    }
                    let parsed = serde_json::from_str::<Value>(text)
                        .map_err(|e| row_err(&p, line, "(row)", Reason::InvalidJson, e.to_string()))
                        .and_then(|v| object(&p, line, v));
                    return Some((line, parsed));
                }
            }))
        }
        FileKind::JsonArray => {
            let mut bytes = Vec::new();
            BufReader::new(file).read_to_end(&mut bytes).map_err(|e| KilnError::io(path, e))?;
            let text = std::str::from_utf8(&bytes).map_err(|e| {
                KilnError::Msg(format!("{}: invalid UTF-8 at byte {}", path.display(), e.valid_up_to()))
            })?;
            let v: Value = serde_json::from_str(text.trim_start_matches('\u{feff}'))
                .map_err(|e| KilnError::Msg(format!("{}:{}: (file): invalid JSON: {e}", path.display(), e.line())))?;
            let Value::Array(items) = v else {
                return Err(KilnError::Msg(format!("{}: a .json dataset must be an array of objects", path.display())));
            };
            // Rows are numbered by position in the array (1-based), the closest thing to a line.
            Box::new(items.into_iter().enumerate().map(move |(i, v)| (i + 1, object(&p, i + 1, v))))
        }
        FileKind::Csv => {
            let mut r = csv::ReaderBuilder::new().flexible(false).from_reader(BufReader::new(file));
            let headers: Vec<String> = r
                .headers()
                .map_err(|e| KilnError::Msg(format!("{}: CSV header: {e}", path.display())))?
                .iter()
                .map(|h| h.trim_start_matches('\u{feff}').trim().to_string())
                .collect();
            Box::new(r.into_byte_records().map(move |rec| {
                let line = rec.as_ref().ok().and_then(|r| r.position()).map(|pos| pos.line() as usize).unwrap_or(0);
                let rec = match rec {
                    Ok(r) => r,
                    Err(e) => {
                        let line = e.position().map(|pos| pos.line() as usize).unwrap_or(line);
                        return (line, Err(row_err(&p, line, "(row)", Reason::InvalidCsv, e.to_string())));
                    }
                };
                let mut m = Map::new();
                for (h, field) in headers.iter().zip(rec.iter()) {
                    match std::str::from_utf8(field) {
                        Ok(s) => {
                            m.insert(h.clone(), Value::String(s.to_string()));
                        }
                        Err(e) => {
                            return (
                                line,
                                Err(row_err(
                                    &p,
                                    line,
                                    h,
                                    Reason::NonUtf8,
                                    format!("invalid UTF-8 at byte {}", e.valid_up_to()),
                                )),
                            );
                        }
                    }
                }
                (line, Ok(m))
            }))
        }
    })
}
