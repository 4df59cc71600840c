//! [`Session`]: the inference engine behind generate, chat and eval — a loaded model with its
//! adapter, tokenizer and chat template, and the KV cache it keeps between calls, so a chat's
//! next turn runs only its new tokens.

use std::path::{Path, PathBuf};

use super::{Cache, GenOptions, TextOutput, chat_prompt, context_len, generate_text, raw_prompt};
use crate::adapters::LoraSet;
use crate::data::budget::BYTES_PER_TOKEN;
use crate::data::template::ChatTemplate;
use crate::data::tokenizer::TextTokenizer;
use crate::data::{Message, Role};
use crate::model::{Llama, LoadSpec, Loaded};
use crate::{KilnError, Result};

/// What a session runs: the model (`None`: the default model), an adapter folder, and a
/// built-in chat template to use instead of the model's own.
#[derive(Clone, Debug, Default)]
pub struct SessionConfig {
    pub model: Option<PathBuf>,
    pub adapter: Option<PathBuf>,
    pub template: Option<String>,
}

/// What to answer: raw text to continue, or a conversation (an optional system message, then
/// the turns) to answer through the chat template.
#[derive(Clone, Copy, Debug)]
pub enum Request<'a> {
    Raw(&'a str),
    Chat { system: Option<&'a str>, turns: &'a [Message] },
}

/// A model ready to answer, with the KV cache of its last answer.
pub struct Session {
    loaded: Loaded,
    template: Option<ChatTemplate>,
    cache: Cache,
}

impl Session {
    /// Resolves and loads the model and adapter and chooses the chat template.
    pub fn open(cfg: &SessionConfig) -> Result<Session> {
        let spec = LoadSpec { model: cfg.model.clone(), adapter: cfg.adapter.clone() };
        Session::new(crate::model::load(&spec)?, cfg.template.as_deref())
    }

    /// A session over an already loaded model.
    pub fn new(loaded: Loaded, template: Option<&str>) -> Result<Session> {
        let template = loaded.template(template)?;
        let cache = Cache::new(&loaded.model);
        Ok(Session { loaded, template, cache })
    }

    /// The model's resolved path.
    pub fn path(&self) -> &Path {
        &self.loaded.path
    }
    pub fn model(&self) -> &Llama {
        &self.loaded.model
    }
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.loaded.tokenizer
    }
    pub fn lora(&self) -> Option<&LoraSet> {
        self.loaded.lora.as_ref()
    }
    pub fn template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    /// Moves the model and the adapter to `be` (the cache starts over).
    pub fn to_backend(&mut self, be: &'static dyn kiln_core::Backend) -> Result<()> {
        let name = be.name();
        let ctx = |what: &str, e: KilnError| KilnError::Msg(format!("moving the {what} to {name}: {e}"));
        self.loaded.model.to_backend(be).map_err(|e| ctx("model", e))?;
        if let Some(l) = self.loaded.lora.as_mut() {
            l.to_backend(be).map_err(|e| ctx("adapter", e))?;
        }
        self.cache = Cache::new(&self.loaded.model);
        Ok(())
    }

    /// The tokens the model attends over.
    pub fn context_len(&self) -> usize {
        context_len(&self.loaded.model)
    }

    /// The longest input text that could fit the context ([`BYTES_PER_TOKEN`] per token): a
    /// longer prompt or message is refused before it is read whole or tokenized.
    pub fn input_limit(&self) -> usize {
        self.context_len().saturating_mul(BYTES_PER_TOKEN)
    }

    /// The prompt ids of `req`.
    pub fn prompt(&self, req: &Request) -> Result<Vec<i32>> {
        match *req {
            Request::Raw(text) => raw_prompt(&self.loaded.tokenizer, text),
            Request::Chat { system, turns } => {
                let t = self.template.as_ref().ok_or_else(|| {
                    KilnError::Msg(format!("{}: no chat template; use --raw", self.loaded.path.display()))
                })?;
                let mut msgs: Vec<Message> =
                    system.iter().map(|s| Message { role: Role::System, content: s.to_string() }).collect();
                msgs.extend_from_slice(turns);
                chat_prompt(&self.loaded.tokenizer, t, &msgs)
            }
        }
    }

    /// Generates after `prompt`, reusing the cached prefix of the previous call, streaming
    /// final text to `on_text`; stops at EOS, any of `stops`, or `opts.max_new_tokens`.
    pub fn generate(
        &mut self,
        prompt: &[i32],
        opts: &GenOptions,
        stops: &[String],
        on_text: &mut dyn FnMut(&str),
    ) -> Result<TextOutput> {
        let l = &self.loaded;
        generate_text(&l.model, &mut self.cache, &l.tokenizer, prompt, opts, stops, l.lora.as_ref(), on_text)
    }

    /// Tokens whose keys and values are held.
    pub fn cached(&self) -> usize {
        self.cache.cached()
    }

    /// Forgets the cache (a new conversation).
    pub fn clear(&mut self) {
        self.cache.clear();
    }
}
