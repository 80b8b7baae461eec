//! Maps "how much of the reply the caller heard" back to text, so an
//! interrupted reply stays in the history only as far as it was played.

use std::time::Duration;

/// One clause as the speaker handled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClauseAudio {
    /// The clause text.
    pub text: String,
    /// The audio handed to the transport for it so far.
    pub pushed: Duration,
    /// Whether all of its audio was pushed (so `pushed` is its whole length).
    pub complete: bool,
}

/// The longest prefix of `text` no longer than `chars` characters that ends
/// on a word boundary (a cut word is not kept: the caller did not hear it).
pub fn cut_at_word(text: &str, chars: usize) -> &str {
    let total = text.chars().count();
    if chars >= total {
        return text;
    }
    let byte_end = text
        .char_indices()
        .nth(chars)
        .map_or(text.len(), |(i, _)| i);
    let head = &text[..byte_end];
    // Keep the head whole only if the cut falls on whitespace.
    if text[byte_end..].starts_with(char::is_whitespace) {
        return head.trim_end();
    }
    match head.rfind(char::is_whitespace) {
        Some(space) => head[..space].trim_end(),
        None => "",
    }
}

/// The played part of each clause, given `played` of the reply's audio.
///
/// Audio maps to text linearly within a clause. A clause not yet fully
/// pushed has an unknown length; it is estimated from `per_char` (the
/// pace of the finished clauses, or the voice's nominal pace), and never
/// taken as shorter than what was already pushed.
pub fn played_parts(clauses: &[ClauseAudio], played: Duration, per_char: Duration) -> Vec<String> {
    let mut left = played;
    let mut parts = Vec::with_capacity(clauses.len());
    for clause in clauses {
        let chars = clause.text.chars().count();
        let length = if clause.complete {
            clause.pushed
        } else {
            clause.pushed.max(per_char * chars as u32)
        };
        if left >= length && clause.complete {
            parts.push(clause.text.clone());
            left -= length;
            continue;
        }
        let heard = left.min(clause.pushed);
        let fraction = if length.is_zero() {
            0.0
        } else {
            heard.as_secs_f64() / length.as_secs_f64()
        };
        let keep = (chars as f64 * fraction).floor() as usize;
        parts.push(cut_at_word(&clause.text, keep).to_owned());
        left = Duration::ZERO;
    }
    parts
}

/// The pace of the finished clauses (audio per character), if any finished.
pub fn pace(clauses: &[ClauseAudio]) -> Option<Duration> {
    let (audio, chars) = clauses
        .iter()
        .filter(|c| c.complete)
        .fold((Duration::ZERO, 0u32), |(a, n), c| {
            (a + c.pushed, n + c.text.chars().count() as u32)
        });
    (chars > 0).then(|| audio / chars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clause(text: &str, ms: u64, complete: bool) -> ClauseAudio {
        ClauseAudio {
            text: text.into(),
            pushed: Duration::from_millis(ms),
            complete,
        }
    }

    #[test]
    fn cuts_on_word_boundaries() {
        assert_eq!(cut_at_word("Hello there friend", 5), "Hello");
        assert_eq!(cut_at_word("Hello there friend", 8), "Hello");
        assert_eq!(cut_at_word("Hello there friend", 3), "");
        assert_eq!(cut_at_word("Hello there friend", 100), "Hello there friend");
        assert_eq!(cut_at_word("héllo wörld", 6), "héllo");
    }

    #[test]
    fn maps_played_audio_to_clauses() {
        let clauses = [
            clause("Sure thing.", 600, true),
            clause("Your table is booked for three.", 2000, true),
            clause("Anything else?", 800, false),
        ];
        let per = Duration::from_millis(60);
        let parts = played_parts(&clauses, Duration::from_millis(1600), per);
        // 1000 of 2000 ms of the second clause: 15 of 31 characters.
        assert_eq!(parts, vec!["Sure thing.", "Your table is", ""]);
        let all = played_parts(&clauses, Duration::from_secs(10), per);
        // Synthesis unfinished: 800 ms of an estimated 840 ms, the last word is cut.
        assert_eq!(all[2], "Anything");
        assert_eq!(played_parts(&clauses, Duration::ZERO, per)[0], "");
    }
}
