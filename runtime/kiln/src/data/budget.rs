//! Byte budgets derived from `--max-seq-len`: how long a data line, a rendered row or a prompt
//! may be before it is refused or cut, so a hostile or mistaken input costs bounded time and
//! memory. Reading, rendering and the prompt readers of generate and chat all size from here.

/// Bytes of rendered text kept per token of `--max-seq-len` before tokenizing: far more than any
/// real token spans (about 4 bytes on average in English, a few dozen for the longest runs of
/// spaces in code vocabularies), so cutting a row's text there keeps every token that the
/// token-level truncation keeps.
pub const BYTES_PER_TOKEN: usize = 64;

/// The largest data line (JSONL) or record (CSV) read for a context of `max_seq_len` tokens:
/// 8 × [`BYTES_PER_TOKEN`] per token (JSON escapes such as `\u4e00` take 6 bytes for one
/// character, and a preference row holds three texts), at least 16 KiB: 1 MiB at the default
/// 2048 tokens. A longer row could only be truncated away; it is refused before it is parsed.
pub fn line_budget(max_seq_len: usize) -> usize {
    max_seq_len.saturating_mul(LINE_BYTES_PER_TOKEN).max(LINE_FLOOR)
}

/// Line bytes allowed per token of `--max-seq-len` (see [`line_budget`]).
pub const LINE_BYTES_PER_TOKEN: usize = 8 * BYTES_PER_TOKEN;
/// The smallest line budget, whatever `--max-seq-len`.
pub const LINE_FLOOR: usize = 16 << 10;

/// The largest rendered row (template output) tokenized for a context of `max_seq_len` tokens:
/// [`BYTES_PER_TOKEN`] per token, at least 4 KiB. A longer rendering is cut there (keeping its
/// start, as the token-level truncation does) before tokenizing.
pub fn render_budget(max_seq_len: usize) -> usize {
    max_seq_len.saturating_mul(BYTES_PER_TOKEN).max(4 << 10)
}
