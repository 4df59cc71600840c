//! When decoding stops: a stop id (EOS), a user stop string, the token budget, or the caller;
//! and the part of a streamed text held back because it may grow into a stop string.

use crate::{KilnError, Result};

/// Checks user stop strings: an empty one would match before the first token and stop every
/// answer empty.
pub fn validate_stops(stops: &[String]) -> Result<()> {
    if stops.iter().any(|s| s.is_empty()) {
        return Err(KilnError::Msg(
            "--stop \"\": an empty stop string matches everywhere, so nothing would be generated; give the text to stop at"
                .into(),
        ));
    }
    Ok(())
}

/// Why decoding stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A stop id (EOS).
    Eos,
    /// A user stop string appeared in the text.
    StopString,
    /// `max_new_tokens` reached.
    Length,
    /// The caller asked to stop.
    Interrupted,
}

impl StopReason {
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::StopString => "stop_string",
            StopReason::Length => "length",
            StopReason::Interrupted => "interrupted",
        }
    }
}

/// The longest suffix of `text` that is a proper prefix of some stop string (held back while
/// streaming, since the next token may complete the stop string).
pub(super) fn pending_stop_prefix(text: &str, stops: &[String]) -> usize {
    let mut keep = 0;
    for s in stops {
        for (i, _) in s.char_indices().skip(1) {
            if text.ends_with(&s[..i]) {
                keep = keep.max(i);
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_prefixes_are_held_back() {
        let stops = vec!["\nUser:".to_string()];
        assert_eq!(pending_stop_prefix("answer\nUs", &stops), 3);
        assert_eq!(pending_stop_prefix("answer", &stops), 0);
        assert!(validate_stops(&["".to_string()]).is_err());
    }
}
