//! Transcript cues: pure functions that read a (partial) transcript and say
//! whether the words sound finished. The audio end-of-turn model hears
//! prosody; these read syntax. Together they catch what either misses: the
//! audio model scores "So the problem is that" as complete (p ~0.98), the
//! trailing "that" says it is not.
//!
//! Everything here works on borrowed text and allocates nothing.

/// What the words of a transcript say about the end of the turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cue {
    /// The words sound finished.
    Complete(CompleteCue),
    /// Nothing in the words either way (the audio model decides).
    Neutral,
    /// The words sound unfinished.
    Incomplete(IncompleteCue),
}

/// Why the words sound finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompleteCue {
    /// The transcript ends with a question mark.
    Question,
    /// The whole utterance is a short answer: "yes", "no", "okay", "thank you".
    ShortAnswer,
    /// The transcript ends with a full stop or an exclamation mark.
    TerminalPunctuation,
}

/// Why the words sound unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncompleteCue {
    /// The last word is a hesitation: "um", "uh", "er".
    TrailingFiller,
    /// The last word cannot end a sentence: a conjunction ("and", "but",
    /// "because"), an article or a possessive ("the", "my").
    TrailingConjunction,
    /// The transcript ends with a comma, an ellipsis, a dash or a colon.
    TrailingPunctuation,
    /// A phone number is being read and has fewer than 10 digits so far.
    PartialPhoneNumber,
    /// An email address or a name is being spelled letter by letter.
    SpelledEmail,
    /// The last word rarely ends a sentence ("that", "for", "to", "is") and
    /// the recognizer put no terminal punctuation after it.
    TrailingFunctionWord,
    /// As [`IncompleteCue::TrailingFunctionWord`], but the recognizer put a
    /// full stop after it. Weak: "That's what I'm looking for." is complete,
    /// so this only delays the end of the turn by a bounded hold.
    PunctuatedFunctionWord,
}

impl IncompleteCue {
    /// Whether the cue is strong enough to hold the turn open until the hard
    /// maximum wait, whatever the audio model says.
    pub fn is_strong(self) -> bool {
        !matches!(self, IncompleteCue::PunctuatedFunctionWord)
    }
}

/// The number of digits of a complete (North American) phone number.
pub const PHONE_NUMBER_DIGITS: u32 = 10;

/// Hesitations: the speaker is still thinking.
const FILLERS: &[&str] = &["um", "uh", "uhm", "umm", "uhh", "er", "erm", "hmm", "like"];

/// Words after which an English sentence cannot end, even when the
/// recognizer punctuated it.
const CONNECTIVES: &[&str] = &[
    "and", "but", "or", "nor", "because", "cause", "cuz", "plus", "the", "an", "my", "your", "our",
    "their", "his", "its",
];

/// Words after which a sentence rarely ends.
const FUNCTION_WORDS: &[&str] = &[
    "so", "to", "of", "for", "with", "that", "which", "who", "whose", "if", "then", "at", "in",
    "on", "from", "about", "than", "as", "when", "while", "where", "is", "was", "are", "were",
    "am", "be", "been", "i", "we", "they", "he", "she", "i'm", "it's", "we're", "they're",
    "there's", "i'd", "we'd", "also", "just", "really", "very", "some", "any", "into", "onto",
    "by", "this", "these", "those", "her",
];

/// Whole utterances that answer and end a turn.
const SHORT_ANSWERS: &[&str] = &[
    "yes",
    "no",
    "yeah",
    "yep",
    "yup",
    "nope",
    "okay",
    "ok",
    "sure",
    "correct",
    "right",
    "exactly",
    "thanks",
    "thank you",
    "that's right",
    "that's correct",
    "that's it",
    "that's all",
    "goodbye",
    "bye",
    "absolutely",
    "of course",
    "perfect",
    "great",
    "please",
    "sounds good",
    "hello",
    "hi",
    "not really",
];

/// Words that introduce a phone number.
const PHONE_CONTEXT: &[&str] = &[
    "number",
    "phone",
    "cell",
    "mobile",
    "call",
    "reach",
    "text",
    "digits",
    "extension",
];

/// Words that introduce an email address.
const EMAIL_CONTEXT: &[&str] = &["email", "mail", "address"];

/// Words said while spelling an address, besides single letters.
const SPELLING_WORDS: &[&str] = &["dot", "at", "underscore", "dash", "hyphen", "period"];

/// The digits a spelled digit word stands for.
const DIGIT_WORDS: &[&str] = &[
    "zero", "oh", "o", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

/// Spelled numbers of two digits ("twenty three" is still two digits).
const TENS_WORDS: &[&str] = &[
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
    "thirty",
    "forty",
    "fifty",
    "sixty",
    "seventy",
    "eighty",
    "ninety",
];

/// The words of `text`: runs of letters, digits and inner apostrophes.
/// Hyphens and punctuation separate words ("uh-huh" is "uh", "huh"), and
/// recognizer tags such as `[noise]`, `<unk>` or `(coughing)` are skipped.
pub fn words(text: &str) -> Words<'_> {
    Words { rest: text }
}

/// The iterator returned by [`words`].
#[derive(Debug, Clone)]
pub struct Words<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        'scan: loop {
            let mut chars = self.rest.char_indices();
            let start = loop {
                let (index, c) = chars.next()?;
                if c.is_alphanumeric() {
                    break index;
                }
                let close = match c {
                    '[' => ']',
                    '<' => '>',
                    // "(555)" is digits, "(coughing)" is a tag.
                    '(' if self.rest[index + 1..].starts_with(char::is_alphabetic) => ')',
                    _ => continue,
                };
                let after_open = index + c.len_utf8();
                match self.rest[after_open..].find(close) {
                    Some(offset) => {
                        self.rest = &self.rest[after_open + offset + close.len_utf8()..];
                        continue 'scan;
                    }
                    None => {
                        self.rest = "";
                        return None;
                    }
                }
            };
            let mut end = self.rest.len();
            for (index, c) in chars {
                if !(c.is_alphanumeric() || c == '\'' || c == '’') {
                    end = index;
                    break;
                }
            }
            let word = self.rest[start..end].trim_end_matches(['\'', '’']);
            self.rest = &self.rest[end..];
            return Some(word);
        }
    }
}

/// Whether two words are the same, ignoring case and the apostrophe style.
pub fn same_word(a: &str, b: &str) -> bool {
    let normalize = |c: char| if c == '’' { '\'' } else { c };
    a.chars()
        .flat_map(char::to_lowercase)
        .map(normalize)
        .eq(b.chars().flat_map(char::to_lowercase).map(normalize))
}

fn is_one_of(word: &str, list: &[&str]) -> bool {
    list.iter().any(|candidate| same_word(word, candidate))
}

/// Whether the transcript holds any word (not just punctuation or noise tags).
pub fn has_words(text: &str) -> bool {
    words(text).next().is_some()
}

/// Whether the whole utterance is made of the given phrases, each phrase one
/// or more words ("mm-hmm", "got it"). An utterance without words is not.
pub fn consists_of<S: AsRef<str>>(text: &str, phrases: &[S]) -> bool {
    let mut rest = words(text);
    let mut matched_any = false;
    loop {
        if rest.clone().next().is_none() {
            return matched_any;
        }
        let advanced = phrases
            .iter()
            .find_map(|phrase| match_phrase(rest.clone(), phrase.as_ref()));
        match advanced {
            Some(after) => {
                rest = after;
                matched_any = true;
            }
            None => return false,
        }
    }
}

/// If `text` starts with the words of `phrase`, the words after it.
fn match_phrase<'a>(mut text: Words<'a>, phrase: &str) -> Option<Words<'a>> {
    let mut phrase_words = words(phrase).peekable();
    // An empty phrase would match without consuming: never let it.
    phrase_words.peek()?;
    for expected in phrase_words {
        if !same_word(text.next()?, expected) {
            return None;
        }
    }
    Some(text)
}

/// Whether the whole utterance is a backchannel: only phrases from
/// `phrases` (see `TurnConfig::backchannel_phrases`).
pub fn is_backchannel<S: AsRef<str>>(text: &str, phrases: &[S]) -> bool {
    consists_of(text, phrases)
}

/// The last character of the text that is not white space or a closing quote.
fn last_mark(text: &str) -> Option<char> {
    text.trim_end_matches(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '”' | '’'))
        .chars()
        .next_back()
}

fn ends_with_continuation_mark(text: &str) -> bool {
    let trimmed = text.trim_end();
    matches!(
        last_mark(text),
        Some(',' | ';' | ':' | '-' | '–' | '—' | '…')
    ) || trimmed.ends_with("..")
}

/// The digits a word stands for when a number is read out: "555" is 3,
/// "five" is 1, "twenty" is 2. `None` if the word is not a number.
fn digit_count(word: &str) -> Option<u32> {
    if !word.is_empty() && word.bytes().all(|b| b.is_ascii_digit()) {
        return u32::try_from(word.len()).ok();
    }
    if is_one_of(word, DIGIT_WORDS) {
        Some(1)
    } else if is_one_of(word, TENS_WORDS) {
        Some(2)
    } else {
        None
    }
}

/// The digits read so far when the transcript ends in the middle of a
/// phone number: the trailing run of number words, if it is introduced by
/// a phone word ("my number is ...") or is at least three digits in two or
/// more words ("five five five"). `None` if the text does not end in one.
pub fn trailing_phone_digits(text: &str) -> Option<u32> {
    let mut run_digits = 0u32;
    let mut run_words = 0u32;
    let mut run_has_context = false;
    // Words since the last phone word; "number is five" counts "is".
    let mut since_context = u32::MAX;
    let mut multiplier = 1u32;
    let mut after_tens = false;
    let mut last_in_run = false;
    for word in words(text) {
        if is_one_of(word, &["double"]) || is_one_of(word, &["triple"]) {
            multiplier = if is_one_of(word, &["double"]) { 2 } else { 3 };
            if run_words == 0 {
                run_has_context = since_context <= 2;
            }
            run_words += 1;
            last_in_run = true;
            continue;
        }
        if let Some(digits) = digit_count(word) {
            if run_words == 0 {
                run_has_context = since_context <= 2;
            }
            // "twenty three" is two digits, not three.
            let merged = after_tens && digits == 1 && is_one_of(word, DIGIT_WORDS);
            if !merged {
                run_digits = run_digits.saturating_add(digits.saturating_mul(multiplier));
            }
            after_tens = is_one_of(word, TENS_WORDS);
            multiplier = 1;
            run_words += 1;
            last_in_run = true;
            continue;
        }
        if is_one_of(word, &["hundred"]) && run_words > 0 {
            run_digits = run_digits.saturating_add(2);
            last_in_run = true;
            continue;
        }
        run_digits = 0;
        run_words = 0;
        multiplier = 1;
        after_tens = false;
        last_in_run = false;
        since_context = if is_one_of(word, PHONE_CONTEXT) {
            0
        } else {
            since_context.saturating_add(1)
        };
    }
    let looks_like_phone = run_has_context || (run_words >= 2 && run_digits >= 3);
    (last_in_run && looks_like_phone).then_some(run_digits)
}

/// Whether the transcript ends while an email address (or a name) is being
/// spelled: "my email is A N N A dot", "anna at example dot".
pub fn is_spelling_email(text: &str) -> bool {
    // A recognizer that formats emails: "anna@example" is unfinished until a
    // dotted domain follows the '@'.
    if let Some(at) = text.rfind('@') {
        let domain = text[at + 1..].trim_end_matches(|c: char| !c.is_alphanumeric());
        if !domain.contains('.') {
            return true;
        }
    }
    let mut email_context = false;
    let mut run_letters = 0u32;
    let mut last_is_spelling = false;
    for word in words(text) {
        let is_letter = word.chars().count() == 1 && word.chars().all(char::is_alphabetic);
        if is_letter {
            run_letters += 1;
            last_is_spelling = true;
        } else if is_one_of(word, SPELLING_WORDS) {
            last_is_spelling = true;
        } else {
            if is_one_of(word, EMAIL_CONTEXT) {
                email_context = true;
            }
            run_letters = 0;
            last_is_spelling = false;
        }
    }
    last_is_spelling && (run_letters >= 2 || email_context)
}

/// What the words of `text` say about the end of the turn. Signals that the
/// speaker is not done win over signals that they are: "five five five." is
/// a phone number still being read, whatever the full stop says.
pub fn classify(text: &str) -> Cue {
    let Some(last) = words(text).last() else {
        return Cue::Neutral;
    };
    let mark = last_mark(text);
    if is_one_of(last, FILLERS) {
        return Cue::Incomplete(IncompleteCue::TrailingFiller);
    }
    // A lower-case "a" is an article; "plan A" ends with a letter.
    if is_one_of(last, CONNECTIVES) || last == "a" {
        return Cue::Incomplete(IncompleteCue::TrailingConjunction);
    }
    if ends_with_continuation_mark(text) {
        return Cue::Incomplete(IncompleteCue::TrailingPunctuation);
    }
    if trailing_phone_digits(text).is_some_and(|digits| digits < PHONE_NUMBER_DIGITS) {
        return Cue::Incomplete(IncompleteCue::PartialPhoneNumber);
    }
    if is_spelling_email(text) {
        return Cue::Incomplete(IncompleteCue::SpelledEmail);
    }
    if is_one_of(last, FUNCTION_WORDS) {
        match mark {
            Some('?' | '!') => {}
            Some('.') => return Cue::Incomplete(IncompleteCue::PunctuatedFunctionWord),
            _ => return Cue::Incomplete(IncompleteCue::TrailingFunctionWord),
        }
    }
    if consists_of(text, SHORT_ANSWERS) {
        return Cue::Complete(CompleteCue::ShortAnswer);
    }
    match mark {
        Some('?') => Cue::Complete(CompleteCue::Question),
        Some('.' | '!') => Cue::Complete(CompleteCue::TerminalPunctuation),
        _ => Cue::Neutral,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_hyphens_and_skip_tags() {
        let got: Vec<&str> = words("Uh-huh, [noise] I'm (coughing) at (555) 234…").collect();
        assert_eq!(got, ["Uh", "huh", "I'm", "at", "555", "234"]);
        assert!(!has_words("[noise] <unk> ... (breathing)"));
    }

    #[test]
    fn empty_phrases_never_loop() {
        assert!(!consists_of("okay", &["", "  "]));
        assert!(consists_of("okay okay", &["", "okay"]));
    }
}
