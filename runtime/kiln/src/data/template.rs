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
        Ok(match (name, source) {
            (Some(n), _) => Some(ChatTemplate::builtin(n)?),
            (None, Some(src)) => Some(ChatTemplate::new(src, "the model's chat_template")?),
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
        tpl.render(context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos,
            eos_token => eos,
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
