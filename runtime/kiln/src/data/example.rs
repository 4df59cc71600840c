//! Dataset formats, detection, and row validation into normalized examples.

use std::fmt;
use std::path::PathBuf;

use serde_json::{Map, Value};

/// The shapes of training data kiln reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// `{"prompt", "completion"}` (instruct style).
    PromptCompletion,
    /// `{"messages": [{"role", "content"}, …]}`.
    Messages,
    /// `{"conversations": [{"from", "value"}, …]}`, mapped onto messages.
    ShareGpt,
    /// `{"instruction", "input"?, "output"}`, mapped onto prompt/completion.
    Alpaca,
    /// `{"text"}` for continued pre-training.
    Text,
    /// `{"prompt", "chosen", "rejected"}` (strings or message lists), for preference tuning.
    Preference,
}

impl Format {
    /// All formats, for `--format` help and errors.
    pub const ALL: [Format; 6] = [
        Format::PromptCompletion,
        Format::Messages,
        Format::ShareGpt,
        Format::Alpaca,
        Format::Text,
        Format::Preference,
    ];

    /// The name used by `--format` and reports.
    pub fn name(self) -> &'static str {
        match self {
            Format::PromptCompletion => "prompt-completion",
            Format::Messages => "messages",
            Format::ShareGpt => "sharegpt",
            Format::Alpaca => "alpaca",
            Format::Text => "text",
            Format::Preference => "preference",
        }
    }

    /// Parses a `--format` value.
    pub fn parse(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == s || (s == "chat" && *f == Format::Messages))
    }

    /// Detects the format from a row's fields.
    pub fn detect(row: &Map<String, Value>) -> Option<Format> {
        let has = |k: &str| row.contains_key(k);
        Some(if has("messages") {
            Format::Messages
        } else if has("conversations") {
            Format::ShareGpt
        } else if has("chosen") || has("rejected") {
            Format::Preference
        } else if has("instruction") {
            Format::Alpaca
        } else if has("prompt") || has("completion") {
            Format::PromptCompletion
        } else if has("text") {
            Format::Text
        } else {
            return None;
        })
    }

    /// The fields a row of this format needs, for error messages.
    pub fn fields(self) -> &'static str {
        match self {
            Format::PromptCompletion => "prompt, completion",
            Format::Messages => "messages",
            Format::ShareGpt => "conversations",
            Format::Alpaca => "instruction, input (optional), output",
            Format::Text => "text",
            Format::Preference => "prompt, chosen, rejected",
        }
    }
}

/// A chat role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The role name chat templates expect.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One chat turn.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// A validated row, normalized across formats.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Example {
    Text(String),
    PromptCompletion {
        prompt: String,
        completion: String,
    },
    Chat(Vec<Message>),
    /// `prompt` ends with a user turn; `chosen`/`rejected` are assistant turns.
    Preference {
        prompt: Vec<Message>,
        chosen: Vec<Message>,
        rejected: Vec<Message>,
    },
}

impl Example {
    /// The row as JSON in its own format's fields (what `kiln eval` reads back).
    pub fn to_json(&self) -> Value {
        let msgs = |m: &[Message]| -> Value {
            Value::Array(m.iter().map(|m| serde_json::json!({"role": m.role.as_str(), "content": m.content})).collect())
        };
        match self {
            Example::Text(t) => serde_json::json!({ "text": t }),
            Example::PromptCompletion { prompt, completion } => {
                serde_json::json!({ "prompt": prompt, "completion": completion })
            }
            Example::Chat(m) => serde_json::json!({ "messages": msgs(m) }),
            Example::Preference { prompt, chosen, rejected } => {
                serde_json::json!({ "prompt": msgs(prompt), "chosen": msgs(chosen), "rejected": msgs(rejected) })
            }
        }
    }
}

/// Why a row was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    InvalidJson,
    InvalidCsv,
    NonUtf8,
    Io,
    UnknownFormat,
    MissingField,
    EmptyField,
    WrongType,
    UnknownRole,
    NoFinalAssistant,
    RoleOrder,
    /// Longer than the byte budget derived from `--max-seq-len`.
    TooLong,
}

impl Reason {
    /// Short name used in reports and `--skip-invalid` counts.
    pub fn name(self) -> &'static str {
        match self {
            Reason::InvalidJson => "invalid JSON",
            Reason::InvalidCsv => "invalid CSV",
            Reason::NonUtf8 => "not UTF-8",
            Reason::Io => "read error",
            Reason::UnknownFormat => "unknown format",
            Reason::MissingField => "missing field",
            Reason::EmptyField => "empty field",
            Reason::WrongType => "wrong type",
            Reason::UnknownRole => "unknown role",
            Reason::NoFinalAssistant => "does not end with an assistant turn",
            Reason::RoleOrder => "role order",
            Reason::TooLong => "too long",
        }
    }
}

/// A rejected row: `file:line: field: reason (detail)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowError {
    pub file: PathBuf,
    pub line: usize,
    pub field: String,
    pub reason: Reason,
    pub detail: String,
    /// The file cannot be read past this error (a read error, a CSV record over its budget):
    /// `--skip-invalid` does not skip it, since the rows after it would be lost silently.
    pub fatal: bool,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}: {}", self.file.display(), self.line, self.field, self.reason.name())?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// Validates rows of one file.
pub struct Validator {
    pub file: PathBuf,
    /// Chat rows must end with an assistant turn (true for supervised training).
    pub need_final_assistant: bool,
}

type R<T> = std::result::Result<T, RowError>;

impl Validator {
    fn err(&self, line: usize, field: impl Into<String>, reason: Reason, detail: impl Into<String>) -> RowError {
        RowError { file: self.file.clone(), line, field: field.into(), reason, detail: detail.into(), fatal: false }
    }

    fn string(&self, line: usize, row: &Map<String, Value>, key: &str, allow_empty: bool) -> R<String> {
        match row.get(key) {
            None => Err(self.err(line, key, Reason::MissingField, "")),
            Some(Value::String(s)) if s.trim().is_empty() && !allow_empty => {
                Err(self.err(line, key, Reason::EmptyField, ""))
            }
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => {
                Err(self.err(line, key, Reason::WrongType, format!("expected a string, got {}", kind(other))))
            }
        }
    }

    /// A list of turns under `key` (`role`/`content`, or ShareGPT's `from`/`value`).
    fn turns(&self, line: usize, v: &Value, key: &str, sharegpt: bool) -> R<Vec<Message>> {
        let Value::Array(items) = v else {
            return Err(self.err(line, key, Reason::WrongType, format!("expected an array of turns, got {}", kind(v))));
        };
        if items.is_empty() {
            return Err(self.err(line, key, Reason::EmptyField, "no turns"));
        }
        let (rk, ck) = if sharegpt { ("from", "value") } else { ("role", "content") };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let at = |f: &str| format!("{key}[{i}].{f}");
            let Value::Object(m) = item else {
                return Err(self.err(
                    line,
                    format!("{key}[{i}]"),
                    Reason::WrongType,
                    format!("expected an object, got {}", kind(item)),
                ));
            };
            let role = match m.get(rk) {
                None => return Err(self.err(line, at(rk), Reason::MissingField, "")),
                Some(Value::String(s)) => s.as_str(),
                Some(o) => {
                    return Err(self.err(
                        line,
                        at(rk),
                        Reason::WrongType,
                        format!("expected a string, got {}", kind(o)),
                    ));
                }
            };
            let role = match role {
                "system" => Role::System,
                "user" | "human" => Role::User,
                "assistant" | "gpt" | "model" => Role::Assistant,
                other => {
                    return Err(self.err(
                        line,
                        at(rk),
                        Reason::UnknownRole,
                        format!("`{other}` (expected system, user or assistant)"),
                    ));
                }
            };
            let content = match m.get(ck) {
                None => return Err(self.err(line, at(ck), Reason::MissingField, "")),
                Some(Value::String(s)) if s.trim().is_empty() => {
                    return Err(self.err(line, at(ck), Reason::EmptyField, ""));
                }
                Some(Value::String(s)) => s.clone(),
                Some(o) => {
                    return Err(self.err(
                        line,
                        at(ck),
                        Reason::WrongType,
                        format!("expected a string, got {}", kind(o)),
                    ));
                }
            };
            out.push(Message { role, content });
        }
        Ok(out)
    }

    /// An optional system turn first, then strictly alternating user/assistant turns starting
    /// with user — the order every common chat template (and most forbid otherwise) expects.
    fn check_order(&self, line: usize, key: &str, turns: &[Message], final_assistant: bool) -> R<()> {
        let start = usize::from(turns.first().is_some_and(|m| m.role == Role::System));
        for (i, m) in turns.iter().enumerate().skip(start) {
            let want = if (i - start) % 2 == 0 { Role::User } else { Role::Assistant };
            if m.role != want {
                let detail = if m.role == Role::System {
                    "a system turn may only come first".to_string()
                } else {
                    format!(
                        "expected a {} turn, got {} (turns must alternate user/assistant)",
                        want.as_str(),
                        m.role.as_str()
                    )
                };
                return Err(self.err(line, format!("{key}[{i}]"), Reason::RoleOrder, detail));
            }
        }
        let last = turns.last().map(|m| m.role);
        if final_assistant && last != Some(Role::Assistant) {
            return Err(self.err(
                line,
                key,
                Reason::NoFinalAssistant,
                "the last turn must be the assistant's to train on",
            ));
        }
        if turns.len() == start {
            return Err(self.err(line, key, Reason::EmptyField, "only a system turn"));
        }
        Ok(())
    }

    /// A preference side: a string (one assistant turn) or a list of assistant turns.
    fn side(&self, line: usize, row: &Map<String, Value>, key: &str) -> R<Vec<Message>> {
        match row.get(key) {
            None => Err(self.err(line, key, Reason::MissingField, "")),
            Some(Value::String(_)) => {
                Ok(vec![Message { role: Role::Assistant, content: self.string(line, row, key, false)? }])
            }
            Some(v @ Value::Array(_)) => {
                let t = self.turns(line, v, key, false)?;
                if let Some((i, _)) = t.iter().enumerate().find(|(_, m)| m.role != Role::Assistant) {
                    return Err(self.err(
                        line,
                        format!("{key}[{i}]"),
                        Reason::RoleOrder,
                        "chosen/rejected hold assistant turns only",
                    ));
                }
                Ok(t)
            }
            Some(o) => {
                Err(self.err(line, key, Reason::WrongType, format!("expected a string or turns, got {}", kind(o))))
            }
        }
    }

    /// Validates one row of `format`.
    pub fn example(&self, line: usize, row: &Map<String, Value>, format: Format) -> R<Example> {
        match format {
            Format::Text => Ok(Example::Text(self.string(line, row, "text", false)?)),
            Format::PromptCompletion => Ok(Example::PromptCompletion {
                prompt: self.string(line, row, "prompt", false)?,
                completion: self.string(line, row, "completion", false)?,
            }),
            Format::Alpaca => {
                let instruction = self.string(line, row, "instruction", false)?;
                let input = match row.get("input") {
                    None | Some(Value::Null) => String::new(),
                    Some(_) => self.string(line, row, "input", true)?,
                };
                let output = self.string(line, row, "output", false)?;
                let prompt = if input.trim().is_empty() { instruction } else { format!("{instruction}\n\n{input}") };
                Ok(Example::PromptCompletion { prompt, completion: output })
            }
            Format::Messages | Format::ShareGpt => {
                let key = if format == Format::Messages { "messages" } else { "conversations" };
                let v = row.get(key).ok_or_else(|| self.err(line, key, Reason::MissingField, ""))?;
                let turns = self.turns(line, v, key, format == Format::ShareGpt)?;
                self.check_order(line, key, &turns, self.need_final_assistant)?;
                Ok(Example::Chat(turns))
            }
            Format::Preference => {
                let prompt = match row.get("prompt") {
                    None => return Err(self.err(line, "prompt", Reason::MissingField, "")),
                    Some(Value::String(_)) => {
                        vec![Message { role: Role::User, content: self.string(line, row, "prompt", false)? }]
                    }
                    Some(v) => {
                        let t = self.turns(line, v, "prompt", false)?;
                        self.check_order(line, "prompt", &t, false)?;
                        if t.last().map(|m| m.role) != Some(Role::User) {
                            return Err(self.err(
                                line,
                                "prompt",
                                Reason::RoleOrder,
                                "the prompt must end with a user turn",
                            ));
                        }
                        t
                    }
                };
                Ok(Example::Preference {
                    prompt,
                    chosen: self.side(line, row, "chosen")?,
                    rejected: self.side(line, row, "rejected")?,
                })
            }
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
