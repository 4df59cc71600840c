//! Reading rows from JSONL, JSON arrays and CSV. JSONL and CSV are streamed row by row; a JSON
//! array is parsed whole (it has no row boundaries to stream on).

use std::cell::Cell;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde_json::{Map, Value};

use super::budget::{LINE_BYTES_PER_TOKEN, LINE_FLOOR};
use super::example::{Reason, RowError, kind};
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

/// Bytes read ahead to recognise a file's kind when its extension does not say.
const SNIFF: usize = 4096;

/// The largest JSON-array dataset read (a JSON array is parsed whole; JSONL streams any size).
pub const MAX_JSON_ARRAY_BYTES: u64 = 1 << 30;

/// Picks the file kind from the extension, else from the first non-blank byte of `head`.
pub fn kind_of(path: &Path, head: &[u8]) -> FileKind {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "jsonl" | "ndjson" => return FileKind::Jsonl,
        "csv" => return FileKind::Csv,
        _ => {}
    }
    let first = head.iter().find(|b| !b.is_ascii_whitespace() && **b != 0xEF && **b != 0xBB && **b != 0xBF);
    match first {
        Some(b'[') => FileKind::JsonArray,
        Some(b'{') => FileKind::Jsonl,
        _ if ext == "json" => FileKind::JsonArray,
        _ => FileKind::Csv,
    }
}

/// A file's sniffed head followed by the rest of the same handle.
type Reopened = BufReader<std::io::Chain<std::io::Cursor<Vec<u8>>, File>>;

/// Opens `path` once and reads its head: the kind is sniffed from those bytes, and the rows are
/// then read from the head followed by the rest of the same handle — never by reopening, so
/// pipes (`--data <(cmd)`, `/dev/stdin`) and FIFOs lose nothing. A NUL byte in the head marks a
/// binary file (such as `/dev/zero`), refused at once.
fn open_once(path: &Path) -> Result<(FileKind, Reopened)> {
    let mut f = File::open(path).map_err(|e| KilnError::io(path, e))?;
    let mut head = Vec::with_capacity(SNIFF);
    let mut chunk = [0u8; SNIFF];
    // A pipe hands over what its writer has written so far: read until a non-blank byte shows,
    // the sniff window is full, or the input ends.
    while head.len() < SNIFF {
        let n = match f.read(&mut chunk[..SNIFF - head.len()]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(KilnError::io(path, e)),
        };
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
        if head.iter().any(|b| !b.is_ascii_whitespace()) {
            break;
        }
    }
    if let Some(at) = head.iter().position(|&b| b == 0) {
        return Err(KilnError::Msg(format!(
            "{}: a NUL byte at offset {at}: this is a binary file, not JSONL, JSON or CSV text",
            path.display()
        )));
    }
    let kind = kind_of(path, &head);
    Ok((kind, BufReader::with_capacity(1 << 16, std::io::Cursor::new(head).chain(f))))
}

/// How one bounded line read ended.
enum Line {
    Eof,
    /// A whole line (with its newline, unless the input ended first) is in the buffer.
    Done,
    /// The line passed the budget; the buffer holds its first `max` bytes and the rest is unread.
    TooLong,
}

/// `read_until(b'\n')` that stops storing after `max` bytes, so one endless line cannot fill
/// memory.
fn read_line_bounded(r: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Line> {
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(if buf.is_empty() { Line::Eof } else { Line::Done });
        }
        let (take, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        let room = max.saturating_sub(buf.len());
        if take > room {
            buf.extend_from_slice(&avail[..room]);
            r.consume(room);
            return Ok(Line::TooLong);
        }
        buf.extend_from_slice(&avail[..take]);
        r.consume(take);
        if done {
            return Ok(Line::Done);
        }
    }
}

/// Discards the rest of the current line (a too-long row being skipped): the bounded reader
/// over a scratch buffer emptied after each piece, so nothing of the line is kept.
fn skip_line(r: &mut impl BufRead) -> std::io::Result<()> {
    let mut scratch = Vec::new();
    loop {
        scratch.clear();
        if !matches!(read_line_bounded(r, &mut scratch, 64 << 10)?, Line::TooLong) {
            return Ok(());
        }
    }
}

/// A reader that fails once it has read `limit` bytes; the CSV rows move the limit forward after
/// each record, so one record (which may span lines inside quotes) is bounded.
struct Capped<R> {
    inner: R,
    read: Rc<Cell<u64>>,
    limit: Rc<Cell<u64>>,
    max: usize,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.limit.get().saturating_sub(self.read.get());
        if left == 0 {
            return Err(std::io::Error::other(format!("a record longer than {} bytes", self.max)));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

fn row_err(path: &Path, line: usize, field: &str, reason: Reason, detail: impl Into<String>) -> RowError {
    RowError {
        file: path.to_path_buf(),
        line,
        field: field.into(),
        reason,
        detail: detail.into(),
        fatal: reason == Reason::Io,
    }
}

fn object(path: &Path, line: usize, v: Value) -> std::result::Result<Map<String, Value>, RowError> {
    match v {
        Value::Object(m) => Ok(m),
        other => {
            Err(row_err(path, line, "(row)", Reason::WrongType, format!("expected an object, got {}", kind(&other))))
        }
    }
}

/// Bytes of the strings (keys and values) in `v`.
fn text_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(a) => a.iter().map(text_bytes).sum(),
        Value::Object(m) => m.iter().map(|(k, v)| k.len() + text_bytes(v)).sum(),
        _ => 8,
    }
}

/// Opens `path` once, recognises its kind and streams its rows. A JSONL line or CSV record
/// longer than `max_line` bytes is a [`Reason::TooLong`] row (its bytes are never held whole):
/// a JSONL row is skipped to its newline under `--skip-invalid`; a CSV record cannot be resumed
/// and ends the file with a read error.
pub fn open(path: &Path, max_line: usize) -> Result<(FileKind, Box<dyn Iterator<Item = RawRow>>)> {
    let (kind, mut r) = open_once(path)?;
    let p: PathBuf = path.to_path_buf();
    let max_line = max_line.max(1);
    let too_long = move |p: &Path, line: usize| {
        row_err(
            p,
            line,
            "(row)",
            Reason::TooLong,
            format!(
                "longer than {max_line} bytes, the row budget ({LINE_BYTES_PER_TOKEN} bytes per token of --max-seq-len, at least {} KiB): nothing past it could be trained on",
                LINE_FLOOR >> 10
            ),
        )
    };
    Ok((
        kind,
        match kind {
            FileKind::Jsonl => {
                let mut line = 0usize;
                let mut buf = Vec::new();
                let (mut failed, mut skip_pending) = (false, false);
                Box::new(std::iter::from_fn(move || {
                    loop {
                        if failed {
                            return None;
                        }
                        // The rest of a too-long line is passed over only when the caller asks for
                        // the next row (it is skipping bad rows): a caller that stops at the error
                        // gets it at once, even when the line never ends.
                        if std::mem::take(&mut skip_pending)
                            && let Err(e) = skip_line(&mut r)
                        {
                            failed = true;
                            return Some((line, Err(row_err(&p, line, "(row)", Reason::Io, e.to_string()))));
                        }
                        buf.clear();
                        line += 1;
                        match read_line_bounded(&mut r, &mut buf, max_line) {
                            Ok(Line::Eof) => return None,
                            Ok(Line::Done) => {}
                            Ok(Line::TooLong) => {
                                buf.clear();
                                skip_pending = true;
                                return Some((line, Err(too_long(&p, line))));
                            }
                            Err(e) => {
                                // A read error is not a bad row: it ends the file.
                                failed = true;
                                return Some((line, Err(row_err(&p, line, "(row)", Reason::Io, e.to_string()))));
                            }
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
                r.take(MAX_JSON_ARRAY_BYTES + 1).read_to_end(&mut bytes).map_err(|e| KilnError::io(path, e))?;
                if bytes.len() as u64 > MAX_JSON_ARRAY_BYTES {
                    return Err(KilnError::Msg(format!(
                        "{}: a JSON array dataset over {} MiB is not read whole; write it as JSONL (one object per line), which streams",
                        path.display(),
                        MAX_JSON_ARRAY_BYTES >> 20
                    )));
                }
                let text = std::str::from_utf8(&bytes).map_err(|e| {
                    KilnError::Msg(format!("{}: invalid UTF-8 at byte {}", path.display(), e.valid_up_to()))
                })?;
                let v: Value = serde_json::from_str(text.trim_start_matches('\u{feff}')).map_err(|e| {
                    KilnError::Msg(format!("{}:{}: (file): invalid JSON: {e}", path.display(), e.line()))
                })?;
                let Value::Array(items) = v else {
                    return Err(KilnError::Msg(format!(
                        "{}: a .json dataset must be an array of objects",
                        path.display()
                    )));
                };
                // Rows are numbered by position in the array (1-based), the closest thing to a line.
                // The file is parsed whole, so a row's budget applies to its text: the same rule
                // as a JSONL line's.
                Box::new(items.into_iter().enumerate().map(move |(i, v)| {
                    if text_bytes(&v) > max_line {
                        return (i + 1, Err(too_long(&p, i + 1)));
                    }
                    (i + 1, object(&p, i + 1, v))
                }))
            }
            FileKind::Csv => {
                let (read, limit) = (Rc::new(Cell::new(0u64)), Rc::new(Cell::new(0u64)));
                // The CSV reader reads ahead of the record it parses by at most its buffer: the hard
                // limit allows for that; a record that parses whole is measured exactly below.
                const CSV_BUFFER: usize = 8 << 10;
                let slack = (CSV_BUFFER + max_line) as u64;
                limit.set(slack);
                let capped = Capped { inner: r, read: read.clone(), limit: limit.clone(), max: max_line };
                let mut r = csv::ReaderBuilder::new().flexible(false).buffer_capacity(CSV_BUFFER).from_reader(capped);
                let headers: Vec<String> = r
                    .headers()
                    .map_err(|e| {
                        let e = if e.is_io_error() && read.get() >= limit.get() {
                            format!("the header is longer than {max_line} bytes")
                        } else {
                            e.to_string()
                        };
                        KilnError::Msg(format!("{}: CSV header: {e}", path.display()))
                    })?
                    .iter()
                    .map(|h| h.trim_start_matches('\u{feff}').trim().to_string())
                    .collect();
                let mut failed = false;
                Box::new(std::iter::from_fn(move || {
                    if failed {
                        return None;
                    }
                    let start = r.position().byte();
                    limit.set(start + slack);
                    let mut rec = csv::ByteRecord::new();
                    let got = r.read_byte_record(&mut rec);
                    let line = rec.position().map(|pos| pos.line() as usize).unwrap_or(r.position().line() as usize);
                    match got {
                        Ok(false) => return None,
                        Ok(true) if r.position().byte() - start > max_line as u64 => {
                            return Some((line, Err(too_long(&p, line))));
                        }
                        Ok(true) => {}
                        Err(e) => {
                            let line = e.position().map(|pos| pos.line() as usize).unwrap_or(line);
                            if e.is_io_error() {
                                // The stream cannot be resumed after a read error: stop here.
                                failed = true;
                                let reason = if read.get() >= limit.get() { Reason::TooLong } else { Reason::Io };
                                let mut err = if reason == Reason::TooLong {
                                    too_long(&p, line)
                                } else {
                                    row_err(&p, line, "(row)", Reason::Io, e.to_string())
                                };
                                err.fatal = true;
                                return Some((line, Err(err)));
                            }
                            return Some((line, Err(row_err(&p, line, "(row)", Reason::InvalidCsv, e.to_string()))));
                        }
                    }
                    let mut m = Map::new();
                    for (h, field) in headers.iter().zip(rec.iter()) {
                        match std::str::from_utf8(field) {
                            Ok(s) => {
                                m.insert(h.clone(), Value::String(s.to_string()));
                            }
                            Err(e) => {
                                return Some((
                                    line,
                                    Err(row_err(
                                        &p,
                                        line,
                                        h,
                                        Reason::NonUtf8,
                                        format!("invalid UTF-8 at byte {}", e.valid_up_to()),
                                    )),
                                ));
                            }
                        }
                    }
                    Some((line, Ok(m)))
                }))
            }
        },
    ))
}

/// Reads a text file of at most `limit` bytes, refusing a longer one (`what` says why the
/// limit is there), or one holding a NUL byte (a binary file such as `/dev/zero`), as soon as
/// it shows, without holding the rest.
pub fn read_text(path: &Path, limit: usize, what: &str) -> Result<String> {
    let reading = |e: std::io::Error| KilnError::Msg(format!("reading {}: {e}", path.display()));
    let mut f = File::open(path).map_err(reading)?;
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = match f.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(reading(e)),
        };
        if let Some(i) = chunk[..n].iter().position(|&b| b == 0) {
            return Err(KilnError::Msg(format!(
                "{}: a NUL byte at offset {}: a binary file, not text",
                path.display(),
                bytes.len() + i
            )));
        }
        if bytes.len() + n > limit {
            return Err(KilnError::Msg(format!("{}: longer than {limit} bytes, {what}", path.display())));
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(bytes).map_err(|e| {
        KilnError::Msg(format!(
            "{}: not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}
