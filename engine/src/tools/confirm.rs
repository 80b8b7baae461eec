//! The `confirm_first_write` policy: how the engine judges that the caller
//! gave "a clear yes on the previous turn" (the API leaves this open).
//!
//! A write tool may run in a turn only when both hold:
//! 1. the agent's previous reply, as the caller heard it (an interrupted
//!    reply counts only up to where it was cut), asked a question: it
//!    contains a `?`;
//! 2. the caller's answer (the user turn being answered now) is a clear yes:
//!    after lower-casing and dropping punctuation it starts with an
//!    affirmative phrase (yes, yeah, yep, yup, sure, correct, right, okay,
//!    ok, confirm(ed), absolutely, definitely, go ahead, please do, do it,
//!    that's right/correct) and contains no negation or hesitation word
//!    (no, not, don't, never, wait, hold, stop, cancel, but).
//!
//! One yes allows one write: after a write tool ran in a turn, a second one
//! in the same turn needs a new confirmation. Otherwise the model gets a
//! `confirmation_required` envelope instead of the result, and asks again.

/// Phrases that start a clear yes (matched on whole words).
const AFFIRMATIVE: &[&str] = &[
    "yes",
    "yeah",
    "yep",
    "yup",
    "sure",
    "correct",
    "right",
    "okay",
    "ok",
    "confirm",
    "confirmed",
    "absolutely",
    "definitely",
    "go ahead",
    "please do",
    "do it",
    "thats right",
    "thats correct",
    "that is right",
    "that is correct",
];

/// Words that make a yes unclear.
const NEGATIONS: &[&str] = &[
    "no", "not", "dont", "never", "wait", "hold", "stop", "cancel", "but", "nope",
];

/// `text` lower-cased with punctuation dropped (apostrophes vanish, other
/// marks become spaces) and whitespace collapsed.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\'' || c == '\u{2019}' {
            continue;
        }
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else {
            out.push(' ');
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `user_text` is a clear yes.
pub fn is_clear_yes(user_text: &str) -> bool {
    let text = normalize(user_text);
    let words: Vec<&str> = text.split(' ').collect();
    if words.iter().any(|w| NEGATIONS.contains(w)) {
        return false;
    }
    AFFIRMATIVE.iter().any(|phrase| {
        text == *phrase
            || text
                .strip_prefix(phrase)
                .is_some_and(|rest| rest.starts_with(' '))
    })
}

/// Whether the agent's reply asked the caller something.
pub fn asked_a_question(agent_text: &str) -> bool {
    agent_text.contains('?')
}

/// Whether a write tool may run: the agent asked and the caller clearly said yes.
pub fn write_confirmed(previous_agent_text: &str, user_text: &str) -> bool {
    asked_a_question(previous_agent_text) && is_clear_yes(user_text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_yes_only() {
        for yes in [
            "Yes.",
            "yeah, go for it",
            "Yes please",
            "Go ahead!",
            "That's right",
            "ok",
            "Correct.",
        ] {
            assert!(is_clear_yes(yes), "{yes:?} should be a yes");
        }
        for not in [
            "No.",
            "yes, but not at three",
            "wait",
            "yesterday was fine",
            "I don't know",
            "",
            "okay no",
            "sure... hold on",
        ] {
            assert!(!is_clear_yes(not), "{not:?} should not be a yes");
        }
    }

    #[test]
    fn needs_a_question_before_the_yes() {
        assert!(write_confirmed("Shall I book 3 pm for you?", "yes"));
        assert!(!write_confirmed("I can book 3 pm.", "yes"));
        assert!(!write_confirmed("Shall I book 3 pm?", "hmm"));
    }
}
