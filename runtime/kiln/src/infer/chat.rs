//! A conversation over a [`Session`]: the turns so far, answered through the chat template,
//! with the KV cache kept between turns. What `kiln chat` (and a server's conversation) holds.

use super::{GenOptions, Request, Session, TextOutput, fit_context};
use crate::Result;
use crate::data::{Message, Role};

/// The turns of one conversation with one model.
pub struct Conversation {
    pub session: Session,
    history: Vec<Message>,
}

/// What a turn gave.
pub enum Turn {
    Answered(TextOutput),
    /// The conversation with this message does not fit the context: the message was dropped
    /// and the conversation is as it was (a reset starts over).
    Refused(String),
}

impl Conversation {
    pub fn new(session: Session) -> Conversation {
        Conversation { session, history: Vec::new() }
    }

    /// Forgets the turns and the cache.
    pub fn reset(&mut self) {
        self.history.clear();
        self.session.clear();
    }

    /// Forgets the turns, keeping the cache (the next prompt shares what it can with it).
    pub fn forget_turns(&mut self) {
        self.history.clear();
    }

    /// Answers `msg` after the turns so far (under `system`), streaming the answer to
    /// `on_text`. `on_start` runs once the turn fits, before the first token, with a note when
    /// `max_new_tokens` was clamped to the context left.
    pub fn turn(
        &mut self,
        system: Option<&str>,
        msg: &str,
        opts: &GenOptions,
        stops: &[String],
        on_start: &mut dyn FnMut(Option<&str>),
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Turn> {
        self.history.push(Message { role: Role::User, content: msg.to_string() });
        let ids = self.session.prompt(&Request::Chat { system, turns: &self.history })?;
        // A conversation that outgrew the context is refused turn by turn.
        let mut turn = opts.clone();
        let note = match fit_context(self.session.context_len(), ids.len(), &mut turn) {
            Ok(note) => note,
            Err(e) => {
                self.history.pop();
                return Ok(Turn::Refused(e.to_string()));
            }
        };
        on_start(note.as_deref());
        let output = self.session.generate(&ids, &turn, stops, on_text)?;
        self.history.push(Message { role: Role::Assistant, content: output.text.trim().to_string() });
        Ok(Turn::Answered(output))
    }
}
