//! Chat templates: the model's own Jinja template (HF's `chat_template`) rendered with minijinja
//! the way transformers renders it (`trim_blocks`, `lstrip_blocks`, loop controls, Python string
//! methods through minijinja-contrib's pycompat, a `raise_exception` function), plus built-ins by
//! name for models without one.

use minijinja::{Environment, ErrorKind, context};
use std::collections::BTreeMap;

use super::example::Message;
use crate::{KilnError, Result};

/// Built-in templates: `(name, source)`.
pub const BUILTIN: [(&str, &str); 4] = [
    ("chatml", include_str!("templates/chatml.jinja")),
    ("llama3", include_str!("templates/llama3.jinja")),
    ("mistral", include_str!("templates/mistral.jinja")),
    ("alpaca", include_str!("templates/alpaca.jinja")),
];

/// Output allowed to a render beyond [`EXPANSION`] × its messages' bytes: the template's own
/// markup (role headers, a default system prompt, date lines) is far smaller.
pub const OUTPUT_OVERHEAD: usize = 1 << 20;
/// How many times its messages' bytes a render may write: a template shows each message once
/// (a few show the last one twice); a template that writes more is broken or hostile
/// (`{{ 'x' * 100000000 }}` in a 60-byte file), and is stopped before it fills memory.
pub const EXPANSION: usize = 4;

/// A writer that stops the render once `limit` bytes are written.
struct CappedOut {
    out: Vec<u8>,
    limit: usize,
    over: bool,
}

impl std::io::Write for CappedOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.limit {
            self.over = true;
            return Err(std::io::Error::other("template output over its limit"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A compiled chat template.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where it came from ("chatml", "tokenizer_config.json", …), for messages.
    pub origin: String,
}

impl ChatTemplate {
    /// Compiles a template source.
    pub fn new(source: &str, origin: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| KilnError::Msg(format!("chat template syntax: {e}")))?;
        env.set_syntax(syntax);
        // Templates come inside model files: a bound on the work one render may do turns a
        // hostile or broken template's endless loop into an error (real templates use a few
        // thousand instructions per conversation).
        env.set_fuel(Some(50_000_000));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| KilnError::Msg(format!("chat template ({origin}): {e}")))?;
        Ok(ChatTemplate { env, origin: origin.to_string() })
    }

    /// The template to use: the built-in `name` when given, else the model's own `source`
    /// (`None` when it has none).
    pub fn choose(name: Option<&str>, source: Option<&str>) -> Result<Option<ChatTemplate>> {
        ChatTemplate::choose_for(name, source, None)
    }

    /// [`ChatTemplate::choose`], naming the model `model` in messages about its own template.
    pub fn choose_for(
        name: Option<&str>,
        source: Option<&str>,
        model: Option<&std::path::Path>,
    ) -> Result<Option<ChatTemplate>> {
        let origin = match model {
            Some(m) => format!("the chat_template of {}", m.display()),
            None => "the model's chat_template".to_string(),
        };
        Ok(match (name, source) {
            (Some(n), _) => Some(ChatTemplate::builtin(n)?),
            (None, Some(src)) => Some(ChatTemplate::new(src, &origin)?),
            (None, None) => None,
        })
    }

    /// A built-in template by name.
    pub fn builtin(name: &str) -> Result<ChatTemplate> {
        let src = BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, s)| *s).ok_or_else(|| {
            let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
            KilnError::Msg(format!("unknown chat template `{name}`; built-in: {}", names.join(", ")))
        })?;
        ChatTemplate::new(src, name)
    }

    /// Renders `messages` as transformers' `apply_chat_template(..., tokenize=False)` does.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool, bos: &str, eos: &str) -> Result<String> {
        let msgs: Vec<BTreeMap<&str, minijinja::Value>> = messages
            .iter()
            .map(|m| BTreeMap::from([("role", m.role.as_str().into()), ("content", m.content.as_str().into())]))
            .collect();
        let tpl = self.env.get_template("chat").map_err(|e| KilnError::Msg(e.to_string()))?;
        let input: usize = messages.iter().map(|m| m.content.len()).sum::<usize>() + bos.len() + eos.len();
        let limit = input.saturating_mul(EXPANSION).saturating_add(OUTPUT_OVERHEAD);
        let mut out = CappedOut { out: Vec::new(), limit, over: false };
        let res = tpl
            .render_captured_to(
                context! {
                    messages => msgs,
                    add_generation_prompt => add_generation_prompt,
                    bos_token => bos,
                    eos_token => eos,
                },
                &mut out,
            )
            .map(|_| ());
        if out.over {
            return Err(KilnError::Msg(format!(
                "chat template ({}): its output passed {limit} bytes for {} messages of {input} bytes ({EXPANSION} × the messages + {} KiB is the limit): a chat template writes each message about once, so this one is broken or hostile",
                self.origin,
                messages.len(),
                OUTPUT_OVERHEAD >> 10
            )));
        }
        res.and_then(|()| {
            String::from_utf8(out.out)
                .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("output is not UTF-8: {e}")))
        })
        .map_err(|e| {
            // raise_exception's message is the template author's explanation: show it as is.
            let detail = if e.kind() == ErrorKind::InvalidOperation {
                e.detail().unwrap_or("").to_string()
            } else {
                format!("{e:#}")
            };
            KilnError::Msg(format!("chat template ({}): {detail}", self.origin))
        })
    }
}
